//! The body of `POST /v1/embeddings` (OpenAI's fields plus `input_type`, `instruction`,
//! `truncate` and `truncation_direction`).

use common::wire::{InputType, Priority, TruncationDirection};
use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess};
use utoipa::ToSchema;

use super::decode::{RequestBody, Take};
use super::fields::{Choice, Dimensions, Flag, Text, required};
use super::limits::Limits;
use super::schema;
use super::tei::TRUNCATION_DIRECTIONS;
use super::texts::Input;
use common::subjects::Task;

/// How vectors are written in the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncodingFormat {
    /// A JSON list of numbers.
    #[default]
    Float,
    /// Little-endian f32 bytes, base64-encoded.
    Base64,
}

/// The spellings of `encoding_format`.
pub const ENCODING_FORMATS: &[(&str, EncodingFormat)] = &[
    ("float", EncodingFormat::Float),
    ("base64", EncodingFormat::Base64),
];

/// The spellings of `input_type` (`passage` means document).
pub const INPUT_TYPES: &[(&str, InputType)] = &[
    ("query", InputType::Query),
    ("document", InputType::Document),
    ("passage", InputType::Document),
];

/// A request to embed texts. Fields not listed here (such as OpenAI's `user`) are accepted
/// and ignored; `null` counts as absent.
#[derive(Debug, Clone, Default, ToSchema)]
pub struct EmbeddingsRequest {
    /// The text, or the list of texts, to embed: at most `max_inputs_per_request` texts
    /// (default 2048) of at most `max_input_chars` characters each (default 200000). Empty
    /// and whitespace-only texts are valid. Token id lists are refused.
    #[schema(schema_with = schema::text_or_texts)]
    pub input: Vec<String>,
    /// Which embedding model embeds: a served model's name, with or without its organisation
    /// (`Qwen/Qwen3-Embedding-0.6B` or `Qwen3-Embedding-0.6B`); the configured default when
    /// absent; a name no model answers to gets 404.
    pub model: Option<String>,
    /// `query` (the instruction is applied) or `document` (`passage` is the same); the
    /// gateway's `default_input_type` when absent.
    #[schema(schema_with = input_types)]
    pub input_type: Option<InputType>,
    /// The task description of queries; the worker's default when absent.
    pub instruction: Option<String>,
    /// Output size (Matryoshka truncation, then normalisation): at least 1, at most the
    /// model's hidden size; the full size when absent.
    #[schema(minimum = 1)]
    pub dimensions: Option<u32>,
    /// `float` (a list of numbers, the default) or `base64` (little-endian f32 bytes).
    #[schema(schema_with = encoding_formats)]
    pub encoding_format: Option<EncodingFormat>,
    /// Shorten texts over the model's token limit instead of refusing them; the gateway's
    /// `truncate` setting, then the worker's, when absent.
    pub truncate: Option<bool>,
    /// Which end truncation cuts: `right` (the default: the start is kept) or `left` (the end
    /// is kept; a query's instruction is never cut). TEI's `Left`/`Right` are accepted too.
    #[schema(schema_with = truncation_directions)]
    pub truncation_direction: Option<TruncationDirection>,
    /// The traffic class: `interactive` (latency first) or `bulk` (indexing jobs: queued in
    /// their own lane, behind interactive work). Absent: queries and small requests are
    /// interactive, large ones bulk.
    #[schema(schema_with = schema::priorities)]
    pub priority: Option<Priority>,
}

fn truncation_directions() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    schema::choice(TRUNCATION_DIRECTIONS)
}

fn input_types() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    schema::choice(INPUT_TYPES)
}

fn encoding_formats() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    schema::choice(ENCODING_FORMATS)
}

/// The keys [`EmbeddingsRequest`] reads; others are skipped.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Key {
    Input,
    Model,
    InputType,
    Instruction,
    Dimensions,
    EncodingFormat,
    Truncate,
    TruncationDirection,
    Priority,
    #[serde(other)]
    Other,
}

impl RequestBody for EmbeddingsRequest {
    fn model_task() -> Option<Task> {
        Some(Task::Embed)
    }

    fn read<'de, M: MapAccess<'de>>(mut fields: M, limits: Limits) -> Result<Self, M::Error> {
        let mut input = None;
        let mut request = Self::default();
        while let Some(key) = fields.next_key::<Key>()? {
            match key {
                Key::Input => input = fields.next_value_seed(Take(Input(limits)))?,
                Key::Model => request.model = fields.next_value_seed(Take(Text::named("model")))?,
                Key::InputType => {
                    request.input_type = fields.next_value_seed(Take(Choice {
                        name: "input_type",
                        choices: INPUT_TYPES,
                        expected: "`query` or `document`",
                    }))?;
                }
                Key::Instruction => {
                    request.instruction =
                        fields.next_value_seed(Take(Text::named("instruction")))?;
                }
                Key::Dimensions => request.dimensions = fields.next_value_seed(Take(Dimensions))?,
                Key::EncodingFormat => {
                    request.encoding_format = fields.next_value_seed(Take(Choice {
                        name: "encoding_format",
                        choices: ENCODING_FORMATS,
                        expected: "`float` or `base64`",
                    }))?;
                }
                Key::Truncate => {
                    request.truncate = fields.next_value_seed(Take(Flag("truncate")))?
                }
                Key::TruncationDirection => {
                    request.truncation_direction = fields.next_value_seed(Take(Choice {
                        name: "truncation_direction",
                        choices: TRUNCATION_DIRECTIONS,
                        expected: "`left` or `right`",
                    }))?;
                }
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
