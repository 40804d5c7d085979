//! The bodies of the tokenize and decode routes: TEI's `POST /tokenize` and `POST /decode`,
//! vLLM's `POST /v1/tokenize` and `POST /v1/detokenize`.

use common::wire::InputType;
use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, SeqAccess};
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{Array, ObjectBuilder, OneOfBuilder, Schema, Type};

use super::decode::{Field, RequestBody, Scalar, Take, refuse};
use super::embeddings::INPUT_TYPES;
use super::fields::{Choice, Flag, Text, required};
use super::limits::Limits;
use super::schema;
use super::tei::{PROMPT_NAMES, prompt_name_field};
use super::texts::TextOrTexts;
use crate::http::error::ApiError;
use common::subjects::Task;

/// TEI's `POST /tokenize`: the ids the model reads for each text. Other fields are ignored;
/// `null` counts as absent.
#[derive(Debug, Clone, Default, ToSchema)]
pub struct TeiTokenizeRequest {
    /// The text, or the list of texts (at most `max_inputs_per_request` texts of at most
    /// `max_input_chars` characters each).
    #[schema(schema_with = schema::text_or_texts)]
    pub inputs: Vec<String>,
    /// Include the final `<|endoftext|>` the model reads (default true).
    pub add_special_tokens: Option<bool>,
    /// `query` (the ids of the instruction template and the text, as a query is embedded)
    /// or `document` (the text alone, the default).
    #[schema(schema_with = prompt_names)]
    pub prompt_name: Option<InputType>,
    /// The task description of queries; the worker's default when absent (an extension).
    pub instruction: Option<String>,
}

/// TEI's `POST /decode`: text back from ids. Other fields are ignored.
#[derive(Debug, Clone, Default, ToSchema)]
pub struct TeiDecodeRequest {
    /// One list of ids, or a list of such lists (one text answered per list).
    #[schema(schema_with = ids_or_id_lists)]
    pub ids: Vec<Vec<u32>>,
    /// Leave special tokens (`<|endoftext|>`) out of the text (default true).
    pub skip_special_tokens: Option<bool>,
}

/// vLLM's `POST /v1/tokenize` (the completion form; the chat form with `messages` is
/// refused). Other fields are ignored.
#[derive(Debug, Clone, Default, ToSchema)]
pub struct VllmTokenizeRequest {
    /// Whose tokenizer: a served embedding model's name, with or without its organisation;
    /// the configured default when absent; a name no model answers to gets 404.
    pub model: Option<String>,
    /// The text (at most `max_input_chars` characters).
    pub prompt: String,
    /// Include the final `<|endoftext|>` the model reads (default true).
    pub add_special_tokens: Option<bool>,
    /// Also answer each token's text in `token_strs` (default false).
    pub return_token_strs: Option<bool>,
    /// `query` (the instruction template is applied, as a query is embedded) or `document`
    /// (the default); an extension.
    #[schema(schema_with = input_types)]
    pub input_type: Option<InputType>,
    /// The task description of queries; the worker's default when absent (an extension).
    pub instruction: Option<String>,
}

/// vLLM's `POST /v1/detokenize`. Other fields are ignored.
#[derive(Debug, Clone, Default, ToSchema)]
pub struct VllmDetokenizeRequest {
    /// Whose tokenizer: a served embedding model's name, with or without its organisation;
    /// the configured default when absent; a name no model answers to gets 404.
    pub model: Option<String>,
    /// The ids to turn back into text (special tokens are left out).
    #[schema(schema_with = id_list)]
    pub tokens: Vec<u32>,
}

fn prompt_names() -> RefOr<Schema> {
    schema::choice(PROMPT_NAMES)
}

fn input_types() -> RefOr<Schema> {
    schema::choice(INPUT_TYPES)
}

/// A list of token ids (integers from 0).
fn id_list() -> Schema {
    Array::new(
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0)),
    )
    .into()
}

/// A list of token ids, or a list of such lists.
fn ids_or_id_lists() -> Schema {
    let id = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(0));
    Array::new(OneOfBuilder::new().item(id).item(id_list())).into()
}

/// The keys of the tokenize and decode bodies; each type reads its own and skips the rest.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Key {
    Inputs,
    AddSpecialTokens,
    PromptName,
    Instruction,
    Ids,
    SkipSpecialTokens,
    Model,
    Prompt,
    ReturnTokenStrs,
    InputType,
    Tokens,
    Messages,
    #[serde(other)]
    Other,
}

impl RequestBody for TeiTokenizeRequest {
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
                Key::AddSpecialTokens => {
                    request.add_special_tokens =
                        fields.next_value_seed(Take(Flag("add_special_tokens")))?;
                }
                Key::PromptName => {
                    request.prompt_name =
                        fields.next_value_seed(Take(prompt_name_field("prompt_name")))?;
                }
                Key::Instruction => {
                    request.instruction =
                        fields.next_value_seed(Take(Text::named("instruction")))?;
                }
                _ => fields.next_value::<IgnoredAny>().map(drop)?,
            }
        }
        request.inputs = required("inputs", inputs)?;
        Ok(request)
    }
}

impl RequestBody for TeiDecodeRequest {
    fn read<'de, M: MapAccess<'de>>(mut fields: M, limits: Limits) -> Result<Self, M::Error> {
        let mut ids = None;
        let mut request = Self::default();
        while let Some(key) = fields.next_key::<Key>()? {
            match key {
                Key::Ids => ids = fields.next_value_seed(Take(IdLists(limits)))?,
                Key::SkipSpecialTokens => {
                    request.skip_special_tokens =
                        fields.next_value_seed(Take(Flag("skip_special_tokens")))?;
                }
                _ => fields.next_value::<IgnoredAny>().map(drop)?,
            }
        }
        request.ids = required("ids", ids)?;
        Ok(request)
    }
}

impl RequestBody for VllmTokenizeRequest {
    fn model_task() -> Option<Task> {
        Some(Task::Embed)
    }

    fn read<'de, M: MapAccess<'de>>(mut fields: M, _: Limits) -> Result<Self, M::Error> {
        let mut prompt = None;
        let mut request = Self::default();
        while let Some(key) = fields.next_key::<Key>()? {
            match key {
                Key::Model => request.model = fields.next_value_seed(Take(Text::named("model")))?,
                Key::Prompt => prompt = fields.next_value_seed(Take(Text::named("prompt")))?,
                Key::AddSpecialTokens => {
                    request.add_special_tokens =
                        fields.next_value_seed(Take(Flag("add_special_tokens")))?;
                }
                Key::ReturnTokenStrs => {
                    request.return_token_strs =
                        fields.next_value_seed(Take(Flag("return_token_strs")))?;
                }
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
                Key::Messages => {
                    if fields.next_value::<Option<IgnoredAny>>()?.is_some() {
                        return Err(refuse(ApiError::field(
                            "messages",
                            "chat tokenization (`messages`) is not supported by this embedding \
                             model; send the text as `prompt`",
                        )));
                    }
                }
                _ => fields.next_value::<IgnoredAny>().map(drop)?,
            }
        }
        request.prompt = required("prompt", prompt)?;
        Ok(request)
    }
}

impl RequestBody for VllmDetokenizeRequest {
    fn model_task() -> Option<Task> {
        Some(Task::Embed)
    }

    fn read<'de, M: MapAccess<'de>>(mut fields: M, _: Limits) -> Result<Self, M::Error> {
        let mut tokens = None;
        let mut request = Self::default();
        while let Some(key) = fields.next_key::<Key>()? {
            match key {
                Key::Model => request.model = fields.next_value_seed(Take(Text::named("model")))?,
                Key::Tokens => {
                    tokens = fields.next_value_seed(Take(Ids {
                        name: "tokens".into(),
                    }))?;
                }
                _ => fields.next_value::<IgnoredAny>().map(drop)?,
            }
        }
        request.tokens = required("tokens", tokens)?;
        Ok(request)
    }
}

/// A list of token ids named `name` (`tokens`, `ids[2]`).
struct Ids {
    name: String,
}

impl<'de> Field<'de> for Ids {
    type Value = Option<Vec<u32>>;

    fn unexpected(&self, kind: &str) -> ApiError {
        let name = &self.name;
        ApiError::field(
            name.clone(),
            format!("{name} must be a list of token ids, got {kind}"),
        )
    }

    fn scalar(self, value: Scalar<'_>) -> Result<Self::Value, ApiError> {
        match value {
            Scalar::Null => Ok(None),
            other => Err(self.unexpected(other.kind())),
        }
    }

    fn list<S: SeqAccess<'de>>(self, mut items: S) -> Result<Self::Value, S::Error> {
        let mut ids = Vec::new();
        while let Some(id) = items.next_element_seed(Take(Id {
            name: format!("{}[{}]", self.name, ids.len()),
        }))? {
            ids.push(id);
        }
        Ok(Some(ids))
    }
}

/// One token id: an integer from 0 to 2^32 - 1.
struct Id {
    name: String,
}

impl Field<'_> for Id {
    type Value = u32;

    fn unexpected(&self, kind: &str) -> ApiError {
        let name = &self.name;
        ApiError::field(
            name.clone(),
            format!("{name} must be a token id (an integer from 0), got {kind}"),
        )
    }

    fn scalar(self, value: Scalar<'_>) -> Result<u32, ApiError> {
        match value {
            Scalar::Unsigned(id) => u32::try_from(id).map_err(|_| {
                let name = &self.name;
                ApiError::field(name.clone(), format!("{name} is {id}, not a token id"))
            }),
            other => Err(self.unexpected(other.kind())),
        }
    }
}

/// TEI's `ids`: a list of ids (one sequence) or a list of id lists, at most `max_inputs`
/// lists.
struct IdLists(Limits);

impl<'de> Field<'de> for IdLists {
    type Value = Option<Vec<Vec<u32>>>;

    fn unexpected(&self, kind: &str) -> ApiError {
        ApiError::field(
            "ids",
            format!("ids must be a list of token ids or a list of such lists, got {kind}"),
        )
    }

    fn scalar(self, value: Scalar<'_>) -> Result<Self::Value, ApiError> {
        match value {
            Scalar::Null => Ok(None),
            other => Err(self.unexpected(other.kind())),
        }
    }

    fn list<S: SeqAccess<'de>>(self, mut items: S) -> Result<Self::Value, S::Error> {
        let mut flat = Vec::new();
        let mut nested = Vec::new();
        let mut index = 0;
        while let Some(item) = items.next_element_seed(Take(IdOrList { index }))? {
            match item {
                IdItem::Id(id) if nested.is_empty() => flat.push(id),
                IdItem::List(ids) if flat.is_empty() => nested.push(ids),
                _ => {
                    return Err(refuse(ApiError::field(
                        format!("ids[{index}]"),
                        "ids must be all token ids or all lists of token ids, not both",
                    )));
                }
            }
            index += 1;
        }
        self.0
            .check_count("ids", "lists", nested.len())
            .map_err(refuse)?;
        Ok(Some(if nested.is_empty() {
            vec![flat]
        } else {
            nested
        }))
    }
}

/// One item of TEI's `ids`.
enum IdItem {
    Id(u32),
    List(Vec<u32>),
}

/// Item `index` of TEI's `ids`: an id or a list of ids.
struct IdOrList {
    index: usize,
}

impl<'de> Field<'de> for IdOrList {
    type Value = IdItem;

    fn unexpected(&self, kind: &str) -> ApiError {
        let index = self.index;
        ApiError::field(
            format!("ids[{index}]"),
            format!("ids[{index}] must be a token id or a list of token ids, got {kind}"),
        )
    }

    fn scalar(self, value: Scalar<'_>) -> Result<IdItem, ApiError> {
        let name = format!("ids[{}]", self.index);
        Id { name }.scalar(value).map(IdItem::Id)
    }

    fn list<S: SeqAccess<'de>>(self, items: S) -> Result<IdItem, S::Error> {
        let name = format!("ids[{}]", self.index);
        Ids { name }
            .list(items)
            .map(|ids| IdItem::List(ids.unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::http::types::decode;
    use crate::http::types::decode::refused_param;

    const LIMITS: Limits = Limits {
        max_inputs: 2,
        max_chars: 100,
    };

    fn read<T: RequestBody>(body: serde_json::Value) -> Result<T, ApiError> {
        decode(body.to_string().as_bytes(), LIMITS)
    }

    #[test]
    fn tei_bodies_read_their_fields() {
        let request: TeiTokenizeRequest = read(json!({
            "inputs": "a", "add_special_tokens": false, "prompt_name": "query",
            "instruction": "find"
        }))
        .unwrap();
        assert_eq!(request.inputs, ["a"]);
        assert_eq!(request.add_special_tokens, Some(false));
        assert_eq!(request.prompt_name, Some(InputType::Query));
        assert_eq!(request.instruction.as_deref(), Some("find"));
        assert_eq!(
            refused_param(read::<TeiTokenizeRequest>(json!({"inputs": 1}))),
            "inputs"
        );
        assert_eq!(
            refused_param(read::<TeiTokenizeRequest>(
                json!({"inputs": ["a", "b", "c"]})
            )),
            "inputs"
        );
        assert_eq!(
            refused_param(read::<TeiTokenizeRequest>(
                json!({"inputs": "a", "prompt_name": "x"})
            )),
            "prompt_name"
        );
        // A text over the character limit is refused alone as in a list.
        let long = "x".repeat(101);
        assert_eq!(
            refused_param(read::<TeiTokenizeRequest>(json!({"inputs": long}))),
            "inputs[0]"
        );
        assert_eq!(
            refused_param(read::<TeiTokenizeRequest>(json!({"inputs": ["a", long]}))),
            "inputs[1]"
        );

        let flat: TeiDecodeRequest = read(json!({"ids": [1, 2]})).unwrap();
        assert_eq!(flat.ids, [[1, 2]]);
        let nested: TeiDecodeRequest =
            read(json!({"ids": [[1], [2, 3]], "skip_special_tokens": false})).unwrap();
        assert_eq!(nested.ids, vec![vec![1], vec![2, 3]]);
        assert_eq!(nested.skip_special_tokens, Some(false));
        for (body, expected) in [
            (json!({"ids": [1, [2]]}), "ids[1]"),
            (json!({"ids": [[1], 2]}), "ids[1]"),
            (json!({"ids": [1, -2]}), "ids[1]"),
            (json!({"ids": [[1, 2.5]]}), "ids[0][1]"),
            (json!({"ids": [4294967296u64]}), "ids[0]"),
            (json!({"ids": "1"}), "ids"),
            (json!({"ids": [[1], [2], [3]]}), "ids"),
            (json!({}), "ids"),
        ] {
            assert_eq!(
                refused_param(read::<TeiDecodeRequest>(body.clone())),
                expected,
                "{body}"
            );
        }
    }

    #[test]
    fn vllm_bodies_read_their_fields_and_refuse_chat() {
        let request: VllmTokenizeRequest = read(json!({
            "model": "m", "prompt": "hi", "add_special_tokens": false,
            "return_token_strs": true, "input_type": "query", "messages": null
        }))
        .unwrap();
        assert_eq!(request.prompt, "hi");
        assert_eq!(request.return_token_strs, Some(true));
        assert_eq!(request.input_type, Some(InputType::Query));
        assert_eq!(
            refused_param(read::<VllmTokenizeRequest>(
                json!({"messages": [{"role": "user", "content": "x"}]})
            )),
            "messages"
        );
        assert_eq!(
            refused_param(read::<VllmTokenizeRequest>(json!({}))),
            "prompt"
        );
        let request: VllmDetokenizeRequest = read(json!({"tokens": [5, 6]})).unwrap();
        assert_eq!(request.tokens, [5, 6]);
        assert_eq!(
            refused_param(read::<VllmDetokenizeRequest>(json!({"tokens": ["a"]}))),
            "tokens[0]"
        );
    }
}
