//! Reading a JSON request body with precise errors: content type, size, UTF-8, syntax, and
//! then each field by name (so every error names its field in `param`). Unknown fields
//! are ignored.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde_json::{Map, Value};

use super::AppState;
use super::error::ApiError;

/// The body of a JSON request: a JSON object whose fields are taken one by one.
#[derive(Debug)]
pub struct JsonBody(pub Fields);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        check_content_type(req.headers().get(header::CONTENT_TYPE))?;
        let limit = state.config.max_body_bytes;
        let body = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit }
            } else {
                ApiError::BodyRead(rejection.body_text())
            }
        })?;
        parse_object(&body).map(|map| Self(Fields(map)))
    }
}

fn check_content_type(value: Option<&header::HeaderValue>) -> Result<(), ApiError> {
    let Some(value) = value else {
        return Err(ApiError::UnsupportedMediaType("no Content-Type".into()));
    };
    let text = value.to_str().unwrap_or("");
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let is_json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!("`{text}`")))
    }
}

/// Parses `body` as one JSON object.
fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ApiError::InvalidUtf8 {
            offset: e.valid_up_to(),
        });
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::InvalidJson("the body is empty".into()));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::InvalidJson(format!(
            "expected an object, got {}",
            kind(&other)
        ))),
        Err(e) => Err(ApiError::InvalidJson(e.to_string())),
    }
}

/// The fields of a request object, taken by name with typed checks.
#[derive(Debug)]
pub struct Fields(pub Map<String, Value>);

impl Fields {
    /// Takes field `name`; JSON `null` counts as absent.
    fn take(&mut self, name: &str) -> Option<Value> {
        self.0.remove(name).filter(|value| !value.is_null())
    }

    /// The required `input`: one string or a non-empty list of strings.
    pub fn input(&mut self) -> Result<Vec<String>, ApiError> {
        match self.take("input") {
            None => Err(ApiError::field("input", "input is required")),
            Some(Value::String(text)) => Ok(vec![text]),
            Some(Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(index, item)| match item {
                    Value::String(text) => Ok(text),
                    Value::Number(_) | Value::Array(_) => Err(ApiError::field(
                        "input",
                        "token id input is not supported; send text",
                    )),
                    other => Err(ApiError::field(
                        format!("input[{index}]"),
                        format!("input[{index}] must be a string, got {}", kind(&other)),
                    )),
                })
                .collect(),
            Some(other) => Err(ApiError::field(
                "input",
                format!(
                    "input must be a string or a list of strings, got {}",
                    kind(&other)
                ),
            )),
        }
    }

    /// An optional string field.
    pub fn string(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(other) => Err(ApiError::field(
                name,
                format!("{name} must be a string, got {}", kind(&other)),
            )),
        }
    }

    /// An optional boolean field.
    pub fn boolean(&mut self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Bool(value)) => Ok(Some(value)),
            Some(other) => Err(ApiError::field(
                name,
                format!("{name} must be true or false, got {}", kind(&other)),
            )),
        }
    }

    /// A required string field (an empty string is valid).
    pub fn required_string(&mut self, name: &str) -> Result<String, ApiError> {
        self.string(name)?
            .ok_or_else(|| ApiError::field(name, format!("{name} is required")))
    }

    /// A required list of texts: strings, or objects with a string `text` (as Cohere and
    /// Jina clients send documents). An empty list passes here; the service refuses it.
    pub fn texts(&mut self, name: &str) -> Result<Vec<String>, ApiError> {
        let items = match self.take(name) {
            None => return Err(ApiError::field(name, format!("{name} is required"))),
            Some(Value::Array(items)) => items,
            Some(other) => {
                return Err(ApiError::field(
                    name,
                    format!("{name} must be a list of strings, got {}", kind(&other)),
                ));
            }
        };
        items
            .into_iter()
            .enumerate()
            .map(|(index, item)| match item {
                Value::String(text) => Ok(text),
                Value::Object(mut object) => match object.remove("text") {
                    Some(Value::String(text)) => Ok(text),
                    _ => Err(ApiError::field(
                        format!("{name}[{index}]"),
                        format!(
                            "{name}[{index}] must be a string or an object with a string `text`"
                        ),
                    )),
                },
                other => Err(ApiError::field(
                    format!("{name}[{index}]"),
                    format!("{name}[{index}] must be a string, got {}", kind(&other)),
                )),
            })
            .collect()
    }

    /// An optional integer field of at least 1.
    pub fn positive_integer(&mut self, name: &str) -> Result<Option<usize>, ApiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Number(number)) => match number.as_u64() {
                Some(value) if value >= 1 => Ok(Some(usize::try_from(value).unwrap_or(usize::MAX))),
                _ => Err(ApiError::field(
                    name,
                    format!("{name} must be an integer of at least 1, got {number}"),
                )),
            },
            Some(other) => Err(ApiError::field(
                name,
                format!("{name} must be an integer, got {}", kind(&other)),
            )),
        }
    }

    /// The optional `dimensions`: an integer of at least 1 (the upper bound is the model's).
    pub fn dimensions(&mut self) -> Result<Option<u32>, ApiError> {
        let name = "dimensions";
        match self.take(name) {
            None => Ok(None),
            Some(Value::Number(number)) => match number.as_i64() {
                Some(value) if value < 1 => Err(ApiError::field(
                    name,
                    format!("dimensions must be at least 1, got {value}"),
                )),
                Some(value) => u32::try_from(value)
                    .map(Some)
                    .map_err(|_| ApiError::field(name, format!("dimensions {value} is too large"))),
                None if number.is_u64() => Err(ApiError::field(
                    name,
                    format!("dimensions {number} is too large"),
                )),
                None => Err(ApiError::field(
                    name,
                    format!("dimensions must be an integer, got {number}"),
                )),
            },
            Some(other) => Err(ApiError::field(
                name,
                format!("dimensions must be an integer, got {}", kind(&other)),
            )),
        }
    }
}

/// A JSON value's kind, for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(value: Value) -> Fields {
        match value {
            Value::Object(map) => Fields(map),
            _ => panic!("test bodies are objects"),
        }
    }

    #[test]
    fn input_accepts_string_or_list_and_names_bad_items() {
        assert_eq!(fields(json!({"input": "a"})).input().unwrap(), ["a"]);
        assert_eq!(
            fields(json!({"input": ["", " "]})).input().unwrap(),
            ["", " "]
        );
        let error = fields(json!({"input": ["a", {"x": 1}]}))
            .input()
            .unwrap_err();
        assert!(matches!(error, ApiError::InvalidField { ref param, .. } if param == "input[1]"));
        assert!(fields(json!({"input": [1, 2]})).input().is_err());
        assert!(fields(json!({})).input().is_err());
        assert!(fields(json!({"input": null})).input().is_err());
    }

    #[test]
    fn dimensions_must_be_a_positive_integer() {
        assert_eq!(
            fields(json!({"dimensions": 64})).dimensions().unwrap(),
            Some(64)
        );
        assert_eq!(
            fields(json!({"dimensions": null})).dimensions().unwrap(),
            None
        );
        for bad in [
            json!(0),
            json!(-3),
            json!(1.5),
            json!("8"),
            json!(1u64 << 40),
            json!(u64::MAX),
        ] {
            assert!(
                fields(json!({"dimensions": bad})).dimensions().is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn texts_take_strings_or_text_objects_and_name_bad_items() {
        assert_eq!(
            fields(json!({"documents": ["a", {"text": "b"}, ""]}))
                .texts("documents")
                .unwrap(),
            ["a", "b", ""]
        );
        let error = fields(json!({"documents": ["a", 3]}))
            .texts("documents")
            .unwrap_err();
        assert!(
            matches!(error, ApiError::InvalidField { ref param, .. } if param == "documents[1]")
        );
        assert!(
            fields(json!({"documents": "a"}))
                .texts("documents")
                .is_err()
        );
        assert!(fields(json!({})).texts("documents").is_err());
        assert!(
            fields(json!({"top_n": 0}))
                .positive_integer("top_n")
                .is_err()
        );
        assert!(
            fields(json!({"top_n": 1.5}))
                .positive_integer("top_n")
                .is_err()
        );
        assert_eq!(
            fields(json!({"top_n": 3}))
                .positive_integer("top_n")
                .unwrap(),
            Some(3)
        );
        assert!(fields(json!({})).required_string("query").is_err());
    }

    #[test]
    fn body_errors_are_precise() {
        assert!(matches!(
            parse_object(b"{\"input\": \"\xff\"}"),
            Err(ApiError::InvalidUtf8 { offset: 11 })
        ));
        assert!(matches!(
            parse_object(b"[1]"),
            Err(ApiError::InvalidJson(_))
        ));
        assert!(matches!(parse_object(b"  "), Err(ApiError::InvalidJson(_))));
        assert!(matches!(
            parse_object(b"{\"a\":"),
            Err(ApiError::InvalidJson(_))
        ));
        assert!(parse_object(b"{\"a\": 1}").is_ok());
    }

    #[test]
    fn content_type_must_be_json() {
        let value = |s: &'static str| header::HeaderValue::from_static(s);
        assert!(check_content_type(Some(&value("application/json; charset=utf-8"))).is_ok());
        assert!(check_content_type(Some(&value("application/vnd.api+json"))).is_ok());
        assert!(check_content_type(Some(&value("text/plain"))).is_err());
        assert!(check_content_type(None).is_err());
    }
}
