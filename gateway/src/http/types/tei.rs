//! The body of `POST /embed` (text-embeddings-inference's shape).

use common::wire::{InputType, TruncationDirection};
use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess};
use utoipa::ToSchema;

use super::decode::{RequestBody, Take};
use super::fields::{Choice, Dimensions, Flag, required};
use super::limits::Limits;
use super::schema;
use super::texts::TextOrTexts;

/// The spellings of `truncation_direction` (TEI writes `Left`/`Right`, `huggingface_hub`
/// `left`/`right`).
pub const TRUNCATION_DIRECTIONS: &[(&str, TruncationDirection)] = &[
    ("Left", TruncationDirection::Left),
    ("left", TruncationDirection::Left),
    ("Right", TruncationDirection::Right),
    ("right", TruncationDirection::Right),
];

/// The prompt names `prompt_name` takes: the prompts of Qwen3-Embedding's
/// sentence-transformers configuration.
pub const PROMPT_NAMES: &[(&str, InputType)] = &[
    ("query", InputType::Query),
    ("document", InputType::Document),
];

/// A request to embed texts, in TEI's shape. Other fields are ignored; `null` counts as
/// absent.
#[derive(Debug, Clone, Default, ToSchema)]
pub struct TeiEmbedRequest {
    /// The text, or the list of texts (limits as for `input` of `/v1/embeddings`).
    #[schema(schema_with = schema::text_or_texts)]
    pub inputs: Vec<String>,
    /// L2-normalize the vectors (default true); `false` answers them as pooled.
    pub normalize: Option<bool>,
    /// Shorten texts over the model's token limit instead of refusing them; the gateway's
    /// `truncate` setting, then the worker's, when absent.
    pub truncate: Option<bool>,
    /// Which end truncation cuts: `Right` (the default: the start is kept) or `Left` (the end
    /// is kept).
    #[schema(schema_with = truncation_directions)]
    pub truncation_direction: Option<TruncationDirection>,
    /// `query` (the query instruction is applied) or `document` (no prompt, the default).
    #[schema(schema_with = prompt_names)]
    pub prompt_name: Option<InputType>,
    /// Output size (Matryoshka truncation, then normalisation): at least 1, at most the
    /// model's hidden size.
    #[schema(minimum = 1)]
    pub dimensions: Option<u32>,
}

fn truncation_directions() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    schema::choice(TRUNCATION_DIRECTIONS)
}

fn prompt_names() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    schema::choice(PROMPT_NAMES)
}

/// The keys [`TeiEmbedRequest`] reads; others are skipped.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Key {
    Inputs,
    Normalize,
    Truncate,
    TruncationDirection,
    PromptName,
    Dimensions,
    #[serde(other)]
    Other,
}

impl RequestBody for TeiEmbedRequest {
    fn read<'de, M: MapAccess<'de>>(mut fields: M, limits: Limits) -> Result<Self, M::Error> {
        let mut inputs = None;
        let mut request = Self::default();
        while let Some(key) = fields.next_key::<Key>()? {
            match key {
                Key::Inputs => {
                    inputs = fields.next_value_seed(Take(TextOrTexts {
                        name: "inputs",
                        limits,
                    }))?
                }
                Key::Normalize => {
                    request.normalize = fields.next_value_seed(Take(Flag("normalize")))?;
                }
                Key::Truncate => {
                    request.truncate = fields.next_value_seed(Take(Flag("truncate")))?;
                }
                Key::TruncationDirection => {
                    request.truncation_direction = fields.next_value_seed(Take(Choice {
                        name: "truncation_direction",
                        choices: TRUNCATION_DIRECTIONS,
                        expected: "`Left` or `Right`",
                    }))?;
                }
                Key::PromptName => {
                    request.prompt_name = fields.next_value_seed(Take(Choice {
                        name: "prompt_name",
                        choices: PROMPT_NAMES,
                        expected: "`query` or `document` (the prompts this model defines)",
                    }))?;
                }
                Key::Dimensions => request.dimensions = fields.next_value_seed(Take(Dimensions))?,
                Key::Other => fields.next_value::<IgnoredAny>().map(drop)?,
            }
        }
        request.inputs = required("inputs", inputs)?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::error::ApiError;
    use crate::http::types::decode;

    fn limits() -> Limits {
        Limits {
            max_inputs: 3,
            max_chars: 10,
        }
    }

    #[test]
    fn reads_a_string_or_a_list_and_the_options() {
        let body = br#"{"inputs": "hi", "normalize": false, "truncate": true,
            "truncation_direction": "left", "prompt_name": "query", "dimensions": 8}"#;
        let request: TeiEmbedRequest = decode(body, limits()).unwrap();
        assert_eq!(request.inputs, ["hi"]);
        assert_eq!(request.normalize, Some(false));
        assert_eq!(
            request.truncation_direction,
            Some(TruncationDirection::Left)
        );
        assert_eq!(request.prompt_name, Some(InputType::Query));
        assert_eq!(request.dimensions, Some(8));
        let request: TeiEmbedRequest = decode(br#"{"inputs": ["a", "b"]}"#, limits()).unwrap();
        assert_eq!(request.inputs, ["a", "b"]);
    }

    #[test]
    fn refusals_name_the_field() {
        let param = |body: &[u8]| match decode::<TeiEmbedRequest>(body, limits()) {
            Err(ApiError::InvalidField { param, .. }) => param,
            other => panic!("expected a field refusal, got {other:?}"),
        };
        assert_eq!(param(br#"{"inputs": 3}"#), "inputs");
        assert_eq!(param(br#"{"inputs": ["a", 3]}"#), "inputs[1]");
        assert_eq!(
            param(br#"{"inputs": "a", "prompt_name": "x"}"#),
            "prompt_name"
        );
        assert_eq!(param(br#"{"inputs": ["a","b","c","d"]}"#), "inputs");
        assert_eq!(param(br#"{}"#), "inputs");
    }
}
