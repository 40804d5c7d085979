//! The bodies of `POST /v2/embed` and `POST /v2/rerank` (Cohere's v2 API).

use common::wire::{InputType, TruncationDirection};
use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, SeqAccess};
use utoipa::ToSchema;
use utoipa::openapi::schema::{Array, ObjectBuilder, Schema, Type};

use super::decode::{Field, RequestBody, Scalar, Take, refuse};
use super::fields::{Choice, Dimensions, PositiveInteger, Text, required};
use super::limits::Limits;
use super::schema;
use super::texts::Documents;
use crate::http::error::ApiError;
use common::subjects::Task;

/// Cohere's `input_type`s: `search_query` gets the query instruction, the others none.
pub const INPUT_TYPES: &[(&str, InputType)] = &[
    ("search_query", InputType::Query),
    ("search_document", InputType::Document),
    ("classification", InputType::Document),
    ("clustering", InputType::Document),
];

/// One way of writing the vectors (`embedding_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddingType {
    /// Numbers.
    Float,
    /// Signed bytes, see [`crate::quantize::int8`].
    Int8,
    /// Unsigned bytes, see [`crate::quantize::uint8`].
    Uint8,
    /// Packed sign bits as signed bytes, see [`crate::quantize::binary`].
    Binary,
    /// Packed sign bits as unsigned bytes, see [`crate::quantize::ubinary`].
    Ubinary,
    /// Little-endian f32 bytes in base64.
    Base64,
}

/// The spellings of `embedding_types`.
pub const EMBEDDING_TYPES: &[(&str, EmbeddingType)] = &[
    ("float", EmbeddingType::Float),
    ("int8", EmbeddingType::Int8),
    ("uint8", EmbeddingType::Uint8),
    ("binary", EmbeddingType::Binary),
    ("ubinary", EmbeddingType::Ubinary),
    ("base64", EmbeddingType::Base64),
];

/// Cohere's `truncate`: `NONE` refuses over-long texts, `START` cuts their start (keeps the
/// end), `END` cuts their end.
pub const TRUNCATES: &[(&str, Option<TruncationDirection>)] = &[
    ("NONE", None),
    ("START", Some(TruncationDirection::Left)),
    ("END", Some(TruncationDirection::Right)),
];

/// A request to embed texts in Cohere's v2 shape. Other fields (`max_tokens`, `images`,
/// `inputs`) are ignored; `null` counts as absent.
#[derive(Debug, Clone, Default, ToSchema)]
pub struct CohereEmbedRequest {
    /// Which embedding model embeds: a served model's name, with or without its organisation;
    /// the configured default when absent; a name no model answers to gets 404.
    pub model: Option<String>,
    /// The texts (limits as for `input` of `/v1/embeddings`).
    #[schema(schema_with = schema::documents)]
    pub texts: Vec<String>,
    /// `search_query` (the query instruction is applied), `search_document`,
    /// `classification` or `clustering` (no instruction; the default).
    #[schema(schema_with = input_types)]
    pub input_type: Option<InputType>,
    /// The encodings to answer, each at most once (default `["float"]`).
    #[schema(schema_with = embedding_types, required = false)]
    pub embedding_types: Vec<EmbeddingType>,
    /// Output size (Matryoshka truncation, then normalisation): at least 1, at most the
    /// model's hidden size.
    #[schema(minimum = 1)]
    pub output_dimension: Option<u32>,
    /// `NONE` (refuse over-long texts), `START` (cut their start) or `END` (cut their end;
    /// the default).
    #[schema(schema_with = truncates)]
    pub truncate: Option<Option<TruncationDirection>>,
}

fn input_types() -> utoipa::openapi::RefOr<Schema> {
    schema::choice(INPUT_TYPES)
}

fn truncates() -> utoipa::openapi::RefOr<Schema> {
    schema::choice(TRUNCATES)
}

fn embedding_types() -> Schema {
    Array::builder()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(EMBEDDING_TYPES.iter().map(|(name, _)| *name))),
        )
        .build()
        .into()
}

/// A request to rank documents in Cohere's v2 shape. Other fields (`max_tokens_per_doc`) are
/// ignored; `null` counts as absent.
#[derive(Debug, Clone, Default, ToSchema)]
pub struct CohereRerankRequest {
    /// Which reranker scores: a served reranker's name, with or without its organisation;
    /// the configured default when absent; a name no reranker answers to gets 404.
    pub model: Option<String>,
    /// The query every document is judged against.
    pub query: String,
    /// The documents (strings; objects with `text` are read too), limits as for
    /// `/v1/rerank`. Over-long documents are shortened.
    #[schema(schema_with = schema::documents)]
    pub documents: Vec<String>,
    /// Answer only the best `top_n` documents (at least 1); all when absent.
    #[schema(schema_with = schema::positive_integer)]
    pub top_n: Option<usize>,
}

/// The keys both bodies read; others are skipped.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Key {
    Model,
    Texts,
    InputType,
    EmbeddingTypes,
    OutputDimension,
    Truncate,
    Query,
    Documents,
    TopN,
    #[serde(other)]
    Other,
}

impl RequestBody for CohereEmbedRequest {
    fn model_task() -> Option<Task> {
        Some(Task::Embed)
    }

    fn read<'de, M: MapAccess<'de>>(mut fields: M, limits: Limits) -> Result<Self, M::Error> {
        let mut texts = None;
        let mut request = Self::default();
        while let Some(key) = fields.next_key::<Key>()? {
            match key {
                Key::Model => request.model = fields.next_value_seed(Take(Text::named("model")))?,
                Key::Texts => {
                    let name = "texts";
                    texts = fields.next_value_seed(Take(Documents { name, limits }))?;
                }
                Key::InputType => {
                    request.input_type = fields.next_value_seed(Take(Choice {
                        name: "input_type",
                        choices: INPUT_TYPES,
                        expected: "`search_query`, `search_document`, `classification` or `clustering`",
                    }))?;
                }
                Key::EmbeddingTypes => {
                    request.embedding_types = fields
                        .next_value_seed(Take(EmbeddingTypes))?
                        .unwrap_or_default();
                }
                Key::OutputDimension => {
                    request.output_dimension = fields.next_value_seed(Take(OutputDimension))?;
                }
                Key::Truncate => {
                    request.truncate = fields.next_value_seed(Take(Choice {
                        name: "truncate",
                        choices: TRUNCATES,
                        expected: "`NONE`, `START` or `END`",
                    }))?;
                }
                _ => fields.next_value::<IgnoredAny>().map(drop)?,
            }
        }
        request.texts = required("texts", texts)?;
        if request.embedding_types.is_empty() {
            request.embedding_types = vec![EmbeddingType::Float];
        }
        Ok(request)
    }
}

impl RequestBody for CohereRerankRequest {
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
                    query = fields.next_value_seed(Take(Text::limited("query", limits)))?;
                }
                Key::Documents => {
                    let name = "documents";
                    documents = fields.next_value_seed(Take(Documents { name, limits }))?;
                }
                Key::TopN => {
                    request.top_n = fields.next_value_seed(Take(PositiveInteger("top_n")))?;
                }
                _ => fields.next_value::<IgnoredAny>().map(drop)?,
            }
        }
        request.query = required("query", query)?;
        request.documents = required("documents", documents)?;
        Ok(request)
    }
}

/// `embedding_types`: a list of distinct spellings of [`EMBEDDING_TYPES`].
struct EmbeddingTypes;

impl<'de> Field<'de> for EmbeddingTypes {
    type Value = Option<Vec<EmbeddingType>>;

    fn unexpected(&self, kind: &str) -> ApiError {
        ApiError::field(
            "embedding_types",
            format!("embedding_types must be a list of strings, got {kind}"),
        )
    }

    fn scalar(self, value: Scalar<'_>) -> Result<Self::Value, ApiError> {
        match value {
            Scalar::Null => Ok(None),
            other => Err(self.unexpected(other.kind())),
        }
    }

    fn list<S: SeqAccess<'de>>(self, mut items: S) -> Result<Self::Value, S::Error> {
        let mut types = Vec::new();
        let choice = || Choice {
            name: "embedding_types",
            choices: EMBEDDING_TYPES,
            expected: "`float`, `int8`, `uint8`, `binary`, `ubinary` or `base64`",
        };
        while let Some(item) = items.next_element_seed(Take(choice()))? {
            let Some(kind) = item else {
                return Err(refuse(self.unexpected("null in the list")));
            };
            if types.contains(&kind) {
                return Err(refuse(ApiError::field(
                    "embedding_types",
                    "embedding_types names a type twice",
                )));
            }
            types.push(kind);
        }
        Ok(Some(types))
    }
}

/// `output_dimension`: `dimensions` under Cohere's name.
struct OutputDimension;

impl Field<'_> for OutputDimension {
    type Value = Option<u32>;

    fn unexpected(&self, kind: &str) -> ApiError {
        rename(Dimensions.unexpected(kind))
    }

    fn scalar(self, value: Scalar<'_>) -> Result<Option<u32>, ApiError> {
        Dimensions.scalar(value).map_err(rename)
    }
}

/// A `dimensions` refusal reworded for `output_dimension`.
fn rename(error: ApiError) -> ApiError {
    match error {
        ApiError::InvalidField { message, .. } => ApiError::field(
            "output_dimension",
            message.replace("dimensions", "output_dimension"),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::types::decode;
    use crate::http::types::decode::refused_param;

    fn limits() -> Limits {
        Limits {
            max_inputs: 3,
            max_chars: 10,
        }
    }

    #[test]
    fn embed_reads_cohere_fields_with_defaults() {
        let body = br#"{"model": "m", "texts": ["a"], "input_type": "search_query",
            "embedding_types": ["int8", "ubinary"], "output_dimension": 16, "truncate": "START"}"#;
        let request: CohereEmbedRequest = decode(body, limits()).unwrap();
        assert_eq!(request.input_type, Some(InputType::Query));
        assert_eq!(
            request.embedding_types,
            [EmbeddingType::Int8, EmbeddingType::Ubinary]
        );
        assert_eq!(request.output_dimension, Some(16));
        assert_eq!(request.truncate, Some(Some(TruncationDirection::Left)));
        let request: CohereEmbedRequest = decode(br#"{"texts": ["a"]}"#, limits()).unwrap();
        assert_eq!(request.embedding_types, [EmbeddingType::Float]);
        assert_eq!(request.truncate, None);
    }

    #[test]
    fn embed_refusals_name_the_field() {
        let param = |body: &[u8]| refused_param(decode::<CohereEmbedRequest>(body, limits()));
        assert_eq!(
            param(br#"{"texts": ["a"], "output_dimension": 0}"#),
            "output_dimension"
        );
        assert_eq!(
            param(br#"{"texts": ["a"], "output_dimension": "x"}"#),
            "output_dimension"
        );
        assert_eq!(
            param(br#"{"texts": ["a"], "embedding_types": ["x"]}"#),
            "embedding_types"
        );
        assert_eq!(
            param(br#"{"texts": ["a"], "embedding_types": ["int8", "int8"]}"#),
            "embedding_types"
        );
        assert_eq!(
            param(br#"{"texts": ["a"], "truncate": "MIDDLE"}"#),
            "truncate"
        );
        assert_eq!(param(br#"{"input_type": "search_query"}"#), "texts");
    }

    #[test]
    fn rerank_reads_query_documents_and_top_n() {
        let body =
            br#"{"model": "r", "query": "q", "documents": ["a", {"text": "b"}], "top_n": 1}"#;
        let request: CohereRerankRequest = decode(body, limits()).unwrap();
        assert_eq!(request.documents, ["a", "b"]);
        assert_eq!(request.top_n, Some(1));
    }
}
