//! The body of the seed's `POST {root_path}/embedding/api`.

use common::wire::Priority;
use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess};
use utoipa::ToSchema;

use super::decode::{RequestBody, Take};
use super::fields::{Dimensions, Flag, Text, required};
use super::limits::Limits;
use super::schema;
use super::texts::Input;

/// A request to embed texts, in the seed's shape. Other fields are ignored; `null` counts as
/// absent.
#[derive(Debug, Clone, Default, ToSchema)]
pub struct SeedRequest {
    /// The text, or the list of texts, to embed (limits as for `/v1/embeddings`).
    #[schema(schema_with = schema::text_or_texts)]
    pub input: Vec<String>,
    /// Embed the texts as queries, with the instruction (default false: documents).
    pub is_query: Option<bool>,
    /// The task description of queries; the worker's default when absent.
    pub instruction: Option<String>,
    /// Output size: at least 1, at most the model's hidden size.
    #[schema(minimum = 1)]
    pub dimensions: Option<u32>,
    /// The traffic class: `interactive` or `bulk` (as for `/v1/embeddings`).
    #[schema(schema_with = schema::priorities)]
    pub priority: Option<Priority>,
}

/// The keys [`SeedRequest`] reads; others are skipped.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Key {
    Input,
    IsQuery,
    Instruction,
    Dimensions,
    Priority,
    #[serde(other)]
    Other,
}

impl RequestBody for SeedRequest {
    fn read<'de, M: MapAccess<'de>>(mut fields: M, limits: Limits) -> Result<Self, M::Error> {
        let mut input = None;
        let mut request = Self::default();
        while let Some(key) = fields.next_key::<Key>()? {
            match key {
                Key::Input => input = fields.next_value_seed(Take(Input(limits)))?,
                Key::IsQuery => {
                    request.is_query = fields.next_value_seed(Take(Flag("is_query")))?
                }
                Key::Instruction => {
                    request.instruction =
                        fields.next_value_seed(Take(Text::named("instruction")))?;
                }
                Key::Dimensions => request.dimensions = fields.next_value_seed(Take(Dimensions))?,
                Key::Priority => {
                    request.priority = fields.next_value_seed(Take(schema::PRIORITY))?;
                }
                Key::Other => fields.next_value::<IgnoredAny>().map(drop)?,
            }
        }
        request.input = required("input", input)?;
        Ok(request)
    }
}
