//! The body of `POST /embed` (text-embeddings-inference's shape).

use common::wire::{InputType, TruncationDirection};
use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, SeqAccess};
use utoipa::ToSchema;

use super::decode::{Field, RequestBody, Scalar, Take};
use super::fields::{Choice, Dimensions, Flag, required};
use super::limits::Limits;
use super::schema;
use super::similarity::{
    SimilarityInputs, SimilarityInputsField, SimilarityParametersField, TeiSimilarityRequest,
};
use super::texts::TextOrTexts;
use crate::http::error::ApiError;

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

/// Reads a prompt name (`query`, `document`) in the field called `name`.
pub fn prompt_name_field(name: &'static str) -> Choice<InputType> {
    Choice {
        name,
        choices: PROMPT_NAMES,
        expected: "`query` or `document` (the prompts this model defines)",
    }
}

/// Reads a truncation direction as TEI spells it (`Left`, `Right`; lower case too) in the
/// field called `name`.
pub fn truncation_direction_field(name: &'static str) -> Choice<TruncationDirection> {
    Choice {
        name,
        choices: TRUNCATION_DIRECTIONS,
        expected: "`Left` or `Right`",
    }
}

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
    Parameters,
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
                key => request.read_option(key, &mut fields)?,
            }
        }
        request.inputs = required("inputs", inputs)?;
        Ok(request)
    }
}

impl TeiEmbedRequest {
    /// Reads the value of `key`, one of the options (anything but `inputs`; unknown keys and
    /// `parameters` are skipped).
    fn read_option<'de, M: MapAccess<'de>>(
        &mut self,
        key: Key,
        fields: &mut M,
    ) -> Result<(), M::Error> {
        match key {
            Key::Normalize => self.normalize = fields.next_value_seed(Take(Flag("normalize")))?,
            Key::Truncate => self.truncate = fields.next_value_seed(Take(Flag("truncate")))?,
            Key::TruncationDirection => {
                self.truncation_direction = fields
                    .next_value_seed(Take(truncation_direction_field("truncation_direction")))?;
            }
            Key::PromptName => {
                self.prompt_name =
                    fields.next_value_seed(Take(prompt_name_field("prompt_name")))?;
            }
            Key::Dimensions => self.dimensions = fields.next_value_seed(Take(Dimensions))?,
            Key::Inputs | Key::Parameters | Key::Other => {
                fields.next_value::<IgnoredAny>().map(drop)?
            }
        }
        Ok(())
    }
}

/// The body of TEI's default route `POST /`: texts to embed, as `POST /embed` takes them, or
/// sentences to compare, as `POST /similarity` does (where `huggingface_hub`'s
/// `InferenceClient(base_url=...)` posts both), told apart by `inputs`: a string or a list
/// embeds, an object compares.
#[derive(Debug, Clone)]
pub enum TeiRootRequest {
    /// `inputs` is a string or a list of strings.
    Embed(TeiEmbedRequest),
    /// `inputs` is an object with `source_sentence` and `sentences`.
    Similarity(TeiSimilarityRequest),
}

impl RequestBody for TeiRootRequest {
    fn read<'de, M: MapAccess<'de>>(mut fields: M, limits: Limits) -> Result<Self, M::Error> {
        let (mut inputs, mut parameters) = (None, None);
        let mut embed = TeiEmbedRequest::default();
        while let Some(key) = fields.next_key::<Key>()? {
            match key {
                Key::Inputs => inputs = fields.next_value_seed(Take(RootInputs(limits)))?,
                Key::Parameters => {
                    parameters = fields.next_value_seed(Take(SimilarityParametersField))?;
                }
                key => embed.read_option(key, &mut fields)?,
            }
        }
        Ok(match required("inputs", inputs)? {
            Inputs::Texts(texts) => Self::Embed(TeiEmbedRequest {
                inputs: texts,
                ..embed
            }),
            Inputs::Sentences(sentences) => Self::Similarity(TeiSimilarityRequest {
                inputs: sentences,
                parameters,
            }),
        })
    }
}

/// What `inputs` of `POST /` holds.
enum Inputs {
    Texts(Vec<String>),
    Sentences(SimilarityInputs),
}

/// Reads `inputs` of `POST /`: texts as `/embed` reads them, or an object as `/similarity`
/// reads it.
struct RootInputs(Limits);

impl RootInputs {
    /// The reader of texts, as `/embed` reads `inputs`.
    fn texts(&self) -> TextOrTexts {
        TextOrTexts {
            name: "inputs",
            limits: self.0,
        }
    }
}

impl<'de> Field<'de> for RootInputs {
    type Value = Option<Inputs>;

    fn unexpected(&self, kind: &str) -> ApiError {
        ApiError::field(
            "inputs",
            format!(
                "inputs must be a string, a list of strings or an object with source_sentence \
                 and sentences, got {kind}"
            ),
        )
    }

    fn scalar(self, value: Scalar<'_>) -> Result<Self::Value, ApiError> {
        match value {
            Scalar::Null | Scalar::Text(_) => Ok(self.texts().scalar(value)?.map(Inputs::Texts)),
            other => Err(self.unexpected(other.kind())),
        }
    }

    fn list<S: SeqAccess<'de>>(self, items: S) -> Result<Self::Value, S::Error> {
        Ok(self.texts().list(items)?.map(Inputs::Texts))
    }

    fn object<M: MapAccess<'de>>(self, entries: M) -> Result<Self::Value, M::Error> {
        Ok(SimilarityInputsField(self.0)
            .object(entries)?
            .map(Inputs::Sentences))
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
    fn the_root_route_embeds_texts_and_compares_sentences() {
        let body = br#"{"normalize": false, "inputs": ["a", "b"], "prompt_name": "query"}"#;
        let Ok(TeiRootRequest::Embed(request)) = decode(body, limits()) else {
            panic!("texts are embedded");
        };
        assert_eq!(request.inputs, ["a", "b"]);
        assert_eq!(request.normalize, Some(false));
        assert_eq!(request.prompt_name, Some(InputType::Query));
        let Ok(TeiRootRequest::Embed(request)) = decode(br#"{"inputs": "a"}"#, limits()) else {
            panic!("a text is embedded");
        };
        assert_eq!(request.inputs, ["a"]);
        let body = br#"{"parameters": {"prompt_name": "query"},
            "inputs": {"source_sentence": "a", "sentences": ["b"]}}"#;
        let Ok(TeiRootRequest::Similarity(request)) = decode(body, limits()) else {
            panic!("sentences are compared");
        };
        assert_eq!(request.inputs.source_sentence, "a");
        assert_eq!(request.inputs.sentences, ["b"]);
        assert_eq!(
            request.parameters.unwrap().prompt_name,
            Some(InputType::Query)
        );

        let param = |body: &[u8]| refused_param(decode::<TeiRootRequest>(body, limits()));
        assert_eq!(param(br#"{}"#), "inputs");
        assert_eq!(param(br#"{"inputs": 3}"#), "inputs");
        assert_eq!(param(br#"{"inputs": ["a", "b", "c", "d"]}"#), "inputs");
        assert_eq!(
            param(br#"{"inputs": {"sentences": ["b"]}}"#),
            "inputs.source_sentence"
        );
        assert_eq!(
            param(br#"{"inputs": {"source_sentence": "a", "sentences": ["b", "c", "d"]}}"#),
            "inputs.sentences"
        );
    }

    #[test]
    fn refusals_name_the_field() {
        let param = |body: &[u8]| refused_param(decode::<TeiEmbedRequest>(body, limits()));
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
