//! The bodies of `POST /v1/rerank` (Cohere and Jina's shape) and `POST /rerank`
//! (text-embeddings-inference's shape).

use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess};
use utoipa::ToSchema;

use super::decode::{RequestBody, Take};
use super::fields::{Flag, PositiveInteger, Text, required};
use super::limits::Limits;
use super::schema;
use super::texts::Documents;
use common::subjects::Task;

/// A request to rank documents against a query (`/v1/rerank`). Other fields are ignored;
/// `null` counts as absent.
#[derive(Debug, Clone, Default, ToSchema)]
pub struct RerankRequest {
    /// Which reranker scores: a served reranker's name, with or without its organisation;
    /// the configured default when absent; a name no reranker answers to gets 404.
    pub model: Option<String>,
    /// The query every document is judged against (may be empty; at most `max_input_chars`
    /// characters).
    pub query: String,
    /// The documents: strings, or objects with a string `text`; at most
    /// `max_inputs_per_request` of at most `max_input_chars` characters each.
    #[schema(schema_with = schema::documents)]
    pub documents: Vec<String>,
    /// Answer only the best `top_n` documents (at least 1); all when absent.
    #[schema(schema_with = schema::positive_integer)]
    pub top_n: Option<usize>,
    /// Include each document's text in its result (default false).
    pub return_documents: Option<bool>,
    /// The task description in the reranker's prompt; the worker's default when absent.
    pub instruction: Option<String>,
    /// Shorten over-long documents instead of refusing them.
    pub truncate: Option<bool>,
}

/// A request to rank texts against a query, in text-embeddings-inference's shape
/// (`/rerank`). Other fields are ignored; `null` counts as absent.
#[derive(Debug, Clone, Default, ToSchema)]
pub struct TeiRerankRequest {
    /// The query every text is judged against (may be empty).
    pub query: String,
    /// The texts: strings, or objects with a string `text` (limits as for `documents`).
    #[schema(schema_with = schema::documents)]
    pub texts: Vec<String>,
    /// Score with the logit difference `logit_yes - logit_no` instead of the probability
    /// (default false).
    pub raw_scores: Option<bool>,
    /// Include each text in its result (default false).
    pub return_text: Option<bool>,
    /// The task description in the reranker's prompt; the worker's default when absent.
    pub instruction: Option<String>,
    /// Shorten over-long texts instead of refusing them.
    pub truncate: Option<bool>,
}

/// The keys both rerank bodies read; others are skipped.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Key {
    Model,
    Query,
    Documents,
    Texts,
    TopN,
    ReturnDocuments,
    RawScores,
    ReturnText,
    Instruction,
    Truncate,
    #[serde(other)]
    Other,
}

impl RequestBody for RerankRequest {
    fn model_task() -> Option<Task> {
        Some(Task::Rerank)
    }

    fn read<'de, M: MapAccess<'de>>(mut fields: M, limits: Limits) -> Result<Self, M::Error> {
        let (mut query, mut documents) = (None, None);
        let mut request = Self::default();
        while let Some(key) = fields.next_key::<Key>()? {
            match key {
                Key::Model => request.model = fields.next_value_seed(Take(Text::named("model")))?,
                Key::Query => {
                    query = fields.next_value_seed(Take(Text::limited("query", limits)))?
                }
                Key::Documents => {
                    let name = "documents";
                    documents = fields.next_value_seed(Take(Documents { name, limits }))?;
                }
                Key::TopN => {
                    request.top_n = fields.next_value_seed(Take(PositiveInteger("top_n")))?
                }
                Key::ReturnDocuments => {
                    request.return_documents =
                        fields.next_value_seed(Take(Flag("return_documents")))?;
                }
                Key::Instruction => {
                    request.instruction =
                        fields.next_value_seed(Take(Text::named("instruction")))?;
                }
                Key::Truncate => {
                    request.truncate = fields.next_value_seed(Take(Flag("truncate")))?
                }
                Key::Texts | Key::RawScores | Key::ReturnText | Key::Other => {
                    fields.next_value::<IgnoredAny>().map(drop)?;
                }
            }
        }
        request.query = required("query", query)?;
        request.documents = required("documents", documents)?;
        Ok(request)
    }
}

impl RequestBody for TeiRerankRequest {
    fn read<'de, M: MapAccess<'de>>(mut fields: M, limits: Limits) -> Result<Self, M::Error> {
        let (mut query, mut texts) = (None, None);
        let mut request = Self::default();
        while let Some(key) = fields.next_key::<Key>()? {
            match key {
                Key::Query => {
                    query = fields.next_value_seed(Take(Text::limited("query", limits)))?
                }
                Key::Texts => {
                    let name = "texts";
                    texts = fields.next_value_seed(Take(Documents { name, limits }))?;
                }
                Key::RawScores => {
                    request.raw_scores = fields.next_value_seed(Take(Flag("raw_scores")))?
                }
                Key::ReturnText => {
                    request.return_text = fields.next_value_seed(Take(Flag("return_text")))?;
                }
                Key::Instruction => {
                    request.instruction =
                        fields.next_value_seed(Take(Text::named("instruction")))?;
                }
                Key::Truncate => {
                    request.truncate = fields.next_value_seed(Take(Flag("truncate")))?
                }
                Key::Model | Key::Documents | Key::TopN | Key::ReturnDocuments | Key::Other => {
                    fields.next_value::<IgnoredAny>().map(drop)?;
                }
            }
        }
        request.query = required("query", query)?;
        request.texts = required("texts", texts)?;
        Ok(request)
    }
}
