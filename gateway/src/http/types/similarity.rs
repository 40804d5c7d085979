//! The body of `POST /similarity` (text-embeddings-inference's, and `huggingface_hub`'s
//! `InferenceClient.sentence_similarity`): one source sentence and the sentences compared
//! with it, with TEI's optional `parameters`.

use common::wire::{InputType, TruncationDirection};
use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess};
use utoipa::ToSchema;

use super::decode::{Field, RequestBody, Scalar, Take, refuse};
use super::fields::{Flag, Text, required};
use super::limits::Limits;
use super::tei::{
    PROMPT_NAMES, TRUNCATION_DIRECTIONS, prompt_name_field, truncation_direction_field,
};
use super::texts::Documents;
use crate::http::error::ApiError;

/// A request to compare sentences, in TEI's shape. Other fields are ignored; `null` counts as
/// absent.
#[derive(Debug, Clone, Default, ToSchema)]
pub struct TeiSimilarityRequest {
    /// The sentences.
    pub inputs: SimilarityInputs,
    /// How they are embedded.
    pub parameters: Option<SimilarityParameters>,
}

/// The sentences of a similarity request: the source and every sentence compared with it
/// count together against the limit on texts per request.
#[derive(Debug, Clone, Default, ToSchema)]
pub struct SimilarityInputs {
    /// The sentence the others are compared with.
    pub source_sentence: String,
    /// The sentences compared with it; the answer has one score for each, in this order.
    pub sentences: Vec<String>,
}

/// How the sentences of a similarity request are embedded.
#[derive(Debug, Clone, Default, ToSchema)]
pub struct SimilarityParameters {
    /// `query` (the query instruction is applied to every sentence) or `document` (no
    /// prompt, the default).
    #[schema(schema_with = prompt_names)]
    pub prompt_name: Option<InputType>,
    /// Shorten sentences over the model's token limit instead of refusing them; the
    /// gateway's `truncate` setting, then the worker's, when absent.
    pub truncate: Option<bool>,
    /// Which end truncation cuts: `Right` (the default) or `Left`.
    #[schema(schema_with = truncation_directions)]
    pub truncation_direction: Option<TruncationDirection>,
}

fn truncation_directions() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    super::schema::choice(TRUNCATION_DIRECTIONS)
}

fn prompt_names() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    super::schema::choice(PROMPT_NAMES)
}

/// The keys the request and its two objects read; others are skipped.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Key {
    Inputs,
    Parameters,
    SourceSentence,
    Sentences,
    PromptName,
    Truncate,
    TruncationDirection,
    #[serde(other)]
    Other,
}

impl RequestBody for TeiSimilarityRequest {
    fn read<'de, M: MapAccess<'de>>(mut fields: M, limits: Limits) -> Result<Self, M::Error> {
        let (mut inputs, mut parameters) = (None, None);
        while let Some(key) = fields.next_key::<Key>()? {
            match key {
                Key::Inputs => {
                    inputs = fields.next_value_seed(Take(SimilarityInputsField(limits)))?
                }
                Key::Parameters => {
                    parameters = fields.next_value_seed(Take(SimilarityParametersField))?
                }
                _ => fields.next_value::<IgnoredAny>().map(drop)?,
            }
        }
        Ok(Self {
            inputs: required("inputs", inputs)?,
            parameters,
        })
    }
}

/// Reads `inputs`: an object with `source_sentence` and `sentences` (also for `POST /`).
pub(super) struct SimilarityInputsField(pub(super) Limits);

impl<'de> Field<'de> for SimilarityInputsField {
    type Value = Option<SimilarityInputs>;

    fn unexpected(&self, kind: &str) -> ApiError {
        ApiError::field(
            "inputs",
            format!("inputs must be an object with source_sentence and sentences, got {kind}"),
        )
    }

    fn scalar(self, value: Scalar<'_>) -> Result<Self::Value, ApiError> {
        match value {
            Scalar::Null => Ok(None),
            other => Err(self.unexpected(other.kind())),
        }
    }

    fn object<M: MapAccess<'de>>(self, mut entries: M) -> Result<Self::Value, M::Error> {
        let limits = self.0;
        let (mut source, mut sentences) = (None, None);
        while let Some(key) = entries.next_key::<Key>()? {
            match key {
                Key::SourceSentence => {
                    source = entries
                        .next_value_seed(Take(Text::limited("inputs.source_sentence", limits)))?;
                }
                Key::Sentences => {
                    sentences = entries.next_value_seed(Take(Documents {
                        name: "inputs.sentences",
                        limits,
                    }))?;
                }
                _ => entries.next_value::<IgnoredAny>().map(drop)?,
            }
        }
        let source_sentence = required("inputs.source_sentence", source)?;
        let sentences: Vec<String> = required("inputs.sentences", sentences)?;
        // The source is embedded with the sentences: one more text against the limit.
        limits
            .check_count("inputs.sentences", "sentences", sentences.len() + 1)
            .map_err(refuse)?;
        Ok(Some(SimilarityInputs {
            source_sentence,
            sentences,
        }))
    }
}

/// Reads `parameters`: TEI's embedding options (also for `POST /`).
pub(super) struct SimilarityParametersField;

impl<'de> Field<'de> for SimilarityParametersField {
    type Value = Option<SimilarityParameters>;

    fn unexpected(&self, kind: &str) -> ApiError {
        ApiError::field(
            "parameters",
            format!("parameters must be an object, got {kind}"),
        )
    }

    fn scalar(self, value: Scalar<'_>) -> Result<Self::Value, ApiError> {
        match value {
            Scalar::Null => Ok(None),
            other => Err(self.unexpected(other.kind())),
        }
    }

    fn object<M: MapAccess<'de>>(self, mut entries: M) -> Result<Self::Value, M::Error> {
        let mut parameters = SimilarityParameters::default();
        while let Some(key) = entries.next_key::<Key>()? {
            match key {
                Key::PromptName => {
                    parameters.prompt_name = entries
                        .next_value_seed(Take(prompt_name_field("parameters.prompt_name")))?;
                }
                Key::Truncate => {
                    parameters.truncate =
                        entries.next_value_seed(Take(Flag("parameters.truncate")))?;
                }
                Key::TruncationDirection => {
                    parameters.truncation_direction = entries.next_value_seed(Take(
                        truncation_direction_field("parameters.truncation_direction"),
                    ))?;
                }
                _ => entries.next_value::<IgnoredAny>().map(drop)?,
            }
        }
        Ok(Some(parameters))
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
    fn reads_the_sentences_and_the_parameters() {
        let body = br#"{"inputs": {"source_sentence": "a", "sentences": ["b", "c"]},
            "parameters": {"prompt_name": "query", "truncate": true,
            "truncation_direction": "Left", "other": 1}, "extra": []}"#;
        let request: TeiSimilarityRequest = decode(body, limits()).unwrap();
        assert_eq!(request.inputs.source_sentence, "a");
        assert_eq!(request.inputs.sentences, ["b", "c"]);
        let parameters = request.parameters.unwrap();
        assert_eq!(parameters.prompt_name, Some(InputType::Query));
        assert_eq!(parameters.truncate, Some(true));
        assert_eq!(
            parameters.truncation_direction,
            Some(TruncationDirection::Left)
        );
        let body = br#"{"inputs": {"source_sentence": "a", "sentences": []}, "parameters": {}}"#;
        let request: TeiSimilarityRequest = decode(body, limits()).unwrap();
        assert!(request.inputs.sentences.is_empty());
    }

    #[test]
    fn refusals_name_the_field() {
        let param = |body: &[u8]| refused_param(decode::<TeiSimilarityRequest>(body, limits()));
        assert_eq!(param(br#"{}"#), "inputs");
        assert_eq!(param(br#"{"inputs": ["a"]}"#), "inputs");
        assert_eq!(
            param(br#"{"inputs": {"sentences": ["b"]}}"#),
            "inputs.source_sentence"
        );
        assert_eq!(
            param(br#"{"inputs": {"source_sentence": "a"}}"#),
            "inputs.sentences"
        );
        assert_eq!(
            param(br#"{"inputs": {"source_sentence": "a", "sentences": ["b", "c", "d"]}}"#),
            "inputs.sentences",
            "the source counts against the limit"
        );
        assert_eq!(
            param(br#"{"inputs": {"source_sentence": "much too long", "sentences": []}}"#),
            "inputs.source_sentence"
        );
        assert_eq!(
            param(br#"{"inputs": {"source_sentence": "a", "sentences": ["b"]}, "parameters": {"prompt_name": "x"}}"#),
            "parameters.prompt_name"
        );
    }
}
