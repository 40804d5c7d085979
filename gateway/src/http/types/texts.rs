//! Readers of the text fields whose size the limits bound while they are read: `input`
//! (OpenAI, seed), TEI's `inputs`, and document lists (`documents`, `texts`), each keeping at
//! most `max_inputs` texts of at most `max_chars` characters. JSON `null` counts as absent.

use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, SeqAccess};

use super::decode::{Field, Scalar, Take, refuse};
use super::limits::Limits;
use crate::http::error::ApiError;

/// `input`: one string or a list of strings, at most `max_inputs` of at most `max_chars`
/// characters each. Token id lists are refused (this API takes text).
pub struct Input(pub Limits);

impl<'de> Field<'de> for Input {
    type Value = Option<Vec<String>>;

    fn unexpected(&self, kind: &str) -> ApiError {
        ApiError::field(
            "input",
            format!("input must be a string or a list of strings, got {kind}"),
        )
    }

    fn scalar(self, value: Scalar<'_>) -> Result<Option<Vec<String>>, ApiError> {
        match value {
            Scalar::Null => Ok(None),
            Scalar::Text(text) => {
                self.0.check_text(|| "input[0]".into(), text)?;
                Ok(Some(vec![text.to_owned()]))
            }
            other => Err(self.unexpected(other.kind())),
        }
    }

    fn list<S: SeqAccess<'de>>(self, items: S) -> Result<Self::Value, S::Error> {
        bounded_list(items, self.0, "input", "texts", |index| InputItem {
            index,
            limits: self.0,
        })
        .map(Some)
    }
}

/// One item of an `input` list.
struct InputItem {
    index: usize,
    limits: Limits,
}

impl<'de> Field<'de> for InputItem {
    type Value = String;

    fn unexpected(&self, kind: &str) -> ApiError {
        let index = self.index;
        ApiError::field(
            format!("input[{index}]"),
            format!("input[{index}] must be a string, got {kind}"),
        )
    }

    fn scalar(self, value: Scalar<'_>) -> Result<String, ApiError> {
        match value {
            Scalar::Text(text) => {
                self.limits
                    .check_text(|| format!("input[{}]", self.index), text)?;
                Ok(text.to_owned())
            }
            Scalar::Unsigned(_) | Scalar::Signed(_) | Scalar::Float(_) => Err(token_ids()),
            other => Err(self.unexpected(other.kind())),
        }
    }

    fn list<S: SeqAccess<'de>>(self, items: S) -> Result<String, S::Error> {
        drop(items);
        Err(refuse(token_ids()))
    }
}

fn token_ids() -> ApiError {
    ApiError::field("input", "token id input is not supported; send text")
}

/// A field holding one string or a list of strings (TEI's `inputs`), within the limits:
/// the count, and the length of each text (the single string's too).
pub struct TextOrTexts {
    /// The field.
    pub name: &'static str,
    /// Count and length limits.
    pub limits: Limits,
}

impl<'de> Field<'de> for TextOrTexts {
    type Value = Option<Vec<String>>;

    fn unexpected(&self, kind: &str) -> ApiError {
        let name = self.name;
        ApiError::field(
            name,
            format!("{name} must be a string or a list of strings, got {kind}"),
        )
    }

    fn scalar(self, value: Scalar<'_>) -> Result<Self::Value, ApiError> {
        match value {
            Scalar::Null => Ok(None),
            Scalar::Text(text) => {
                self.limits
                    .check_text(|| format!("{}[0]", self.name), text)?;
                Ok(Some(vec![text.to_owned()]))
            }
            other => Err(self.unexpected(other.kind())),
        }
    }

    fn list<S: SeqAccess<'de>>(self, items: S) -> Result<Self::Value, S::Error> {
        Documents {
            name: self.name,
            limits: self.limits,
        }
        .list(items)
    }
}

/// A list of documents (`documents`, `texts`): strings, or objects with a string `text` (as
/// Cohere and Jina clients send them), within the limits. An empty list passes here; the
/// service refuses it.
pub struct Documents {
    /// The field.
    pub name: &'static str,
    /// Count and length limits.
    pub limits: Limits,
}

impl<'de> Field<'de> for Documents {
    type Value = Option<Vec<String>>;

    fn unexpected(&self, kind: &str) -> ApiError {
        let name = self.name;
        ApiError::field(
            name,
            format!("{name} must be a list of strings, got {kind}"),
        )
    }

    fn scalar(self, value: Scalar<'_>) -> Result<Self::Value, ApiError> {
        match value {
            Scalar::Null => Ok(None),
            other => Err(self.unexpected(other.kind())),
        }
    }

    fn list<S: SeqAccess<'de>>(self, items: S) -> Result<Self::Value, S::Error> {
        let (name, limits) = (self.name, self.limits);
        bounded_list(items, limits, name, "documents", |index| Document {
            name,
            index,
            limits,
        })
        .map(Some)
    }
}

/// One item of a document list.
struct Document {
    name: &'static str,
    index: usize,
    limits: Limits,
}

impl Document {
    fn param(&self) -> String {
        format!("{}[{}]", self.name, self.index)
    }

    fn take(&self, text: &str) -> Result<String, ApiError> {
        self.limits.check_text(|| self.param(), text)?;
        Ok(text.to_owned())
    }

    fn not_text(&self) -> ApiError {
        let param = self.param();
        ApiError::field(
            param.clone(),
            format!("{param} must be a string or an object with a string `text`"),
        )
    }
}

impl<'de> Field<'de> for Document {
    type Value = String;

    fn unexpected(&self, kind: &str) -> ApiError {
        let param = self.param();
        ApiError::field(
            param.clone(),
            format!("{param} must be a string, got {kind}"),
        )
    }

    fn scalar(self, value: Scalar<'_>) -> Result<String, ApiError> {
        match value {
            Scalar::Text(text) => self.take(text),
            other => Err(self.unexpected(other.kind())),
        }
    }

    fn object<M: MapAccess<'de>>(self, mut entries: M) -> Result<String, M::Error> {
        let mut text = None;
        while let Some(key) = entries.next_key::<DocumentKey>()? {
            match key {
                DocumentKey::Text => {
                    text = Some(entries.next_value_seed(Take(DocumentText(&self)))?)
                }
                DocumentKey::Other => entries.next_value::<IgnoredAny>().map(drop)?,
            }
        }
        text.ok_or_else(|| refuse(self.not_text()))
    }
}

/// The keys of a document object: `text`, and others (ignored).
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum DocumentKey {
    Text,
    #[serde(other)]
    Other,
}

/// The `text` of a document object.
struct DocumentText<'a>(&'a Document);

impl Field<'_> for DocumentText<'_> {
    type Value = String;

    fn unexpected(&self, _kind: &str) -> ApiError {
        self.0.not_text()
    }

    fn scalar(self, value: Scalar<'_>) -> Result<String, ApiError> {
        match value {
            Scalar::Text(text) => self.0.take(text),
            other => Err(self.unexpected(other.kind())),
        }
    }
}

/// Reads a list's items with `item(index)`, keeping at most `limits.max_inputs`; beyond
/// that, the rest are only counted (not kept) for the refusal.
fn bounded_list<'de, S, F>(
    mut items: S,
    limits: Limits,
    field: &str,
    noun: &str,
    item: impl Fn(usize) -> F,
) -> Result<Vec<String>, S::Error>
where
    S: SeqAccess<'de>,
    F: Field<'de, Value = String>,
{
    let mut kept = Vec::new();
    while kept.len() < limits.max_inputs {
        match items.next_element_seed(Take(item(kept.len())))? {
            Some(text) => kept.push(text),
            None => return Ok(kept),
        }
    }
    // At the limit: whatever follows is only counted, for the refusal.
    let mut count = kept.len();
    while items.next_element::<IgnoredAny>()?.is_some() {
        count += 1;
    }
    limits.check_count(field, noun, count).map_err(refuse)?;
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::{EmbeddingsRequest, RerankRequest, TeiRerankRequest, decode};
    use super::*;

    const LIMITS: Limits = Limits {
        max_inputs: 3,
        max_chars: 5,
    };

    fn embeddings(body: serde_json::Value) -> Result<EmbeddingsRequest, ApiError> {
        decode(body.to_string().as_bytes(), LIMITS)
    }

    fn rerank(body: serde_json::Value) -> Result<RerankRequest, ApiError> {
        decode(body.to_string().as_bytes(), LIMITS)
    }

    /// The `param` and message of a field refusal.
    fn refusal<T: std::fmt::Debug>(result: Result<T, ApiError>) -> (String, String) {
        match result {
            Err(ApiError::InvalidField { param, message }) => (param, message),
            other => panic!("expected a field refusal, got {other:?}"),
        }
    }

    #[test]
    fn input_accepts_string_or_list_and_names_bad_items() {
        assert_eq!(embeddings(json!({"input": "a"})).unwrap().input, ["a"]);
        assert_eq!(
            embeddings(json!({"input": ["", " "]})).unwrap().input,
            ["", " "]
        );
        let (param, message) = refusal(embeddings(json!({"input": ["a", {"x": 1}]})));
        assert_eq!(param, "input[1]");
        assert_eq!(message, "input[1] must be a string, got an object");
        let (param, message) = refusal(embeddings(json!({"input": [[1, 2]]})));
        assert_eq!(
            (param.as_str(), message.as_str()),
            ("input", "token id input is not supported; send text")
        );
        assert_eq!(refusal(embeddings(json!({"input": [1, 2]}))).0, "input");
        assert_eq!(refusal(embeddings(json!({}))).1, "input is required");
        assert_eq!(
            refusal(embeddings(json!({"input": null}))).1,
            "input is required"
        );
        assert_eq!(
            refusal(embeddings(json!({"input": 5}))).1,
            "input must be a string or a list of strings, got a number"
        );
    }

    #[test]
    fn limits_apply_while_reading() {
        // At the limit: kept.
        assert_eq!(
            embeddings(json!({"input": ["a", "b", "c"]}))
                .unwrap()
                .input
                .len(),
            3
        );
        // Beyond it, the rest is only counted: the items past the limit are not read as texts
        // (a token list there would be refused otherwise).
        let (param, message) = refusal(embeddings(json!({"input": ["a", "b", "c", [1], 5]})));
        assert_eq!(param, "input");
        assert_eq!(
            message,
            "input has 5 texts; at most 3 are allowed per request"
        );
        // Characters, not bytes: five 2-byte characters pass, six do not.
        assert!(embeddings(json!({"input": "ééééé"})).is_ok());
        let (param, message) = refusal(embeddings(json!({"input": ["a", "éééééé"]})));
        assert_eq!(param, "input[1]");
        assert_eq!(message, "input[1] has 6 characters; at most 5 are allowed");
        assert_eq!(
            refusal(embeddings(json!({"input": "abcdef"}))).0,
            "input[0]"
        );
        // Escaped strings are counted once unescaped.
        assert!(decode::<EmbeddingsRequest>(br#"{"input": "\u00e9\n\t\"x"}"#, LIMITS).is_ok());
        // The instruction has no length limit of its own (the body limit bounds it).
        assert!(embeddings(json!({"input": "a", "instruction": "abcdefgh"})).is_ok());
        let (param, message) = refusal(rerank(
            json!({"query": "q", "documents": ["a", "b", "c", "d"]}),
        ));
        assert_eq!(param, "documents");
        assert_eq!(
            message,
            "documents has 4 documents; at most 3 are allowed per request"
        );
        let (param, _) = refusal(rerank(
            json!({"query": "q", "documents": ["a", {"text": "abcdef"}]}),
        ));
        assert_eq!(param, "documents[1]");
        assert_eq!(
            refusal(rerank(json!({"query": "abcdef", "documents": ["a"]}))).0,
            "query"
        );
    }

    #[test]
    fn documents_take_strings_or_text_objects_and_name_bad_items() {
        let request = rerank(
            json!({"query": "", "documents": ["a", {"text": "b", "id": 7}, ""], "top_n": 2}),
        )
        .unwrap();
        assert_eq!(request.documents, ["a", "b", ""]);
        assert_eq!(request.top_n, Some(2));
        assert_eq!(
            refusal(rerank(json!({"query": "q", "documents": ["a", 3]}))).0,
            "documents[1]"
        );
        assert_eq!(
            refusal(rerank(json!({"query": "q", "documents": [{"title": "x"}]}))).1,
            "documents[0] must be a string or an object with a string `text`"
        );
        assert_eq!(
            refusal(rerank(json!({"query": "q", "documents": "a"}))).0,
            "documents"
        );
        assert_eq!(
            refusal(rerank(json!({"documents": ["a"]}))).1,
            "query is required"
        );
        assert_eq!(
            refusal(rerank(json!({"query": "q"}))).1,
            "documents is required"
        );
        for bad in [json!(0), json!(-1), json!(1.5)] {
            assert_eq!(
                refusal(rerank(
                    json!({"query": "q", "documents": ["a"], "top_n": bad})
                ))
                .0,
                "top_n"
            );
        }
        let tei: TeiRerankRequest = decode(
            br#"{"query": "q", "texts": ["a"], "raw_scores": true, "documents": 5}"#,
            LIMITS,
        )
        .unwrap();
        assert_eq!(
            (tei.texts, tei.raw_scores),
            (vec!["a".to_string()], Some(true))
        );
    }
}
