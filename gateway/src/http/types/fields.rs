//! Readers of the scalar field kinds request bodies share: strings, flags, choices, positive
//! integers, `dimensions`; the text lists are in [`super::texts`]. JSON `null` counts as
//! absent everywhere.

use super::decode::{Field, Scalar, refuse};
use super::limits::Limits;
use crate::http::error::ApiError;

/// The value of a required field, or the refusal naming it.
pub fn required<T, E: serde::de::Error>(name: &str, value: Option<T>) -> Result<T, E> {
    value.ok_or_else(|| refuse(ApiError::field(name, format!("{name} is required"))))
}

/// An optional string, refused beyond `max_chars` characters when that is set.
pub struct Text {
    /// The field.
    pub name: &'static str,
    /// The length limit, if the field has one.
    pub max_chars: Option<Limits>,
}

impl Text {
    /// A string field without length limit (names, choices).
    pub fn named(name: &'static str) -> Self {
        Self {
            name,
            max_chars: None,
        }
    }

    /// A string field of at most `limits.max_chars` characters.
    pub fn limited(name: &'static str, limits: Limits) -> Self {
        Self {
            name,
            max_chars: Some(limits),
        }
    }
}

impl Field<'_> for Text {
    type Value = Option<String>;

    fn unexpected(&self, kind: &str) -> ApiError {
        let name = self.name;
        ApiError::field(name, format!("{name} must be a string, got {kind}"))
    }

    fn scalar(self, value: Scalar<'_>) -> Result<Option<String>, ApiError> {
        match value {
            Scalar::Null => Ok(None),
            Scalar::Text(text) => {
                if let Some(limits) = self.max_chars {
                    limits.check_text(|| self.name.to_string(), text)?;
                }
                Ok(Some(text.to_owned()))
            }
            other => Err(self.unexpected(other.kind())),
        }
    }
}

/// An optional `true` or `false`.
pub struct Flag(pub &'static str);

impl Field<'_> for Flag {
    type Value = Option<bool>;

    fn unexpected(&self, kind: &str) -> ApiError {
        let name = self.0;
        ApiError::field(name, format!("{name} must be true or false, got {kind}"))
    }

    fn scalar(self, value: Scalar<'_>) -> Result<Option<bool>, ApiError> {
        match value {
            Scalar::Null => Ok(None),
            Scalar::Bool(flag) => Ok(Some(flag)),
            other => Err(self.unexpected(other.kind())),
        }
    }
}

/// An optional string that must be one of `choices` (spelling, value).
pub struct Choice<T: 'static> {
    /// The field.
    pub name: &'static str,
    /// Accepted spellings and what each means.
    pub choices: &'static [(&'static str, T)],
    /// The accepted spellings as the message lists them (`` `float` or `base64` ``).
    pub expected: &'static str,
}

impl<T: Copy> Field<'_> for Choice<T> {
    type Value = Option<T>;

    fn unexpected(&self, kind: &str) -> ApiError {
        Text::named(self.name).unexpected(kind)
    }

    fn scalar(self, value: Scalar<'_>) -> Result<Option<T>, ApiError> {
        match value {
            Scalar::Null => Ok(None),
            Scalar::Text(text) => match self.choices.iter().find(|(name, _)| *name == text) {
                Some(&(_, choice)) => Ok(Some(choice)),
                None => {
                    let (name, expected) = (self.name, self.expected);
                    Err(ApiError::field(
                        name,
                        format!("{name} must be {expected}, got `{text}`"),
                    ))
                }
            },
            other => Err(self.unexpected(other.kind())),
        }
    }
}

/// An optional integer of at least 1 (`top_n`).
pub struct PositiveInteger(pub &'static str);

impl Field<'_> for PositiveInteger {
    type Value = Option<usize>;

    fn unexpected(&self, kind: &str) -> ApiError {
        let name = self.0;
        ApiError::field(name, format!("{name} must be an integer, got {kind}"))
    }

    fn scalar(self, value: Scalar<'_>) -> Result<Option<usize>, ApiError> {
        let name = self.0;
        let out_of_range = |number: &dyn std::fmt::Display| {
            ApiError::field(
                name,
                format!("{name} must be an integer of at least 1, got {number}"),
            )
        };
        match value {
            Scalar::Null => Ok(None),
            Scalar::Unsigned(0) => Err(out_of_range(&0)),
            Scalar::Unsigned(number) => Ok(Some(usize::try_from(number).unwrap_or(usize::MAX))),
            Scalar::Signed(number) => Err(out_of_range(&number)),
            Scalar::Float(number) => Err(out_of_range(&number)),
            other => Err(self.unexpected(other.kind())),
        }
    }
}

/// The optional `dimensions`: an integer of at least 1 (the upper bound is the model's).
pub struct Dimensions;

impl Field<'_> for Dimensions {
    type Value = Option<u32>;

    fn unexpected(&self, kind: &str) -> ApiError {
        ApiError::field(
            "dimensions",
            format!("dimensions must be an integer, got {kind}"),
        )
    }

    fn scalar(self, value: Scalar<'_>) -> Result<Option<u32>, ApiError> {
        let refuse = |message: String| ApiError::field("dimensions", message);
        match value {
            Scalar::Null => Ok(None),
            Scalar::Unsigned(0) => Err(refuse("dimensions must be at least 1, got 0".into())),
            Scalar::Unsigned(number) => u32::try_from(number)
                .map(Some)
                .map_err(|_| refuse(format!("dimensions {number} is too large"))),
            Scalar::Signed(number) => Err(refuse(format!(
                "dimensions must be at least 1, got {number}"
            ))),
            Scalar::Float(number) => Err(refuse(format!(
                "dimensions must be an integer, got {number}"
            ))),
            other => Err(self.unexpected(other.kind())),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::{EmbeddingsRequest, SeedRequest, decode};
    use super::*;

    const LIMITS: Limits = Limits {
        max_inputs: 3,
        max_chars: 5,
    };

    fn embeddings(body: serde_json::Value) -> Result<EmbeddingsRequest, ApiError> {
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
    fn dimensions_must_be_a_positive_integer() {
        assert_eq!(
            embeddings(json!({"input": "a", "dimensions": 64}))
                .unwrap()
                .dimensions,
            Some(64)
        );
        assert_eq!(
            embeddings(json!({"input": "a", "dimensions": null}))
                .unwrap()
                .dimensions,
            None
        );
        for (bad, message) in [
            (json!(0), "dimensions must be at least 1, got 0"),
            (json!(-3), "dimensions must be at least 1, got -3"),
            (json!(1.5), "dimensions must be an integer, got 1.5"),
            (json!("8"), "dimensions must be an integer, got a string"),
            (json!(1u64 << 40), "dimensions 1099511627776 is too large"),
            (
                json!(u64::MAX),
                "dimensions 18446744073709551615 is too large",
            ),
        ] {
            let (param, got) = refusal(embeddings(json!({"input": "a", "dimensions": bad})));
            assert_eq!(
                (param.as_str(), got.as_str()),
                ("dimensions", message),
                "{bad}"
            );
        }
    }

    #[test]
    fn choices_flags_and_strings_name_their_field() {
        let request = embeddings(json!({
            "input": "a", "input_type": "passage", "encoding_format": "base64", "truncate": true,
            "model": "m", "user": "ignored", "extra": {"deep": [1, {"x": null}]},
        }))
        .unwrap();
        assert_eq!(request.input_type, Some(common::wire::InputType::Document));
        assert_eq!(request.truncate, Some(true));
        assert_eq!(request.model.as_deref(), Some("m"));
        for (body, param, message) in [
            (
                json!({"input": "a", "input_type": "question"}),
                "input_type",
                "input_type must be `query` or `document`, got `question`",
            ),
            (
                json!({"input": "a", "encoding_format": 1}),
                "encoding_format",
                "encoding_format must be a string, got a number",
            ),
            (
                json!({"input": "a", "truncate": "yes"}),
                "truncate",
                "truncate must be true or false, got a string",
            ),
            (
                json!({"input": "a", "model": 3}),
                "model",
                "model must be a string, got a number",
            ),
        ] {
            let (got_param, got) = refusal(embeddings(body));
            assert_eq!((got_param.as_str(), got.as_str()), (param, message));
        }
        let seed: Result<SeedRequest, _> =
            decode(br#"{"input": ["a"], "is_query": "yes"}"#, LIMITS);
        assert_eq!(
            refusal(seed).1,
            "is_query must be true or false, got a string"
        );
    }

    #[test]
    fn body_errors_are_precise() {
        let body = |bytes: &[u8]| decode::<EmbeddingsRequest>(bytes, LIMITS);
        assert!(matches!(
            body(b"{\"input\": \"\xff\"}"),
            Err(ApiError::InvalidUtf8 { offset: 11 })
        ));
        assert!(
            matches!(body(b"[1]"), Err(ApiError::InvalidJson(m)) if m == "expected an object, got a list")
        );
        assert!(matches!(body(b"  "), Err(ApiError::InvalidJson(m)) if m == "the body is empty"));
        assert!(matches!(
            body(b"{\"input\":"),
            Err(ApiError::InvalidJson(_))
        ));
        assert!(matches!(
            body(b"{\"input\": \"a\"} x"),
            Err(ApiError::InvalidJson(_))
        ));
        // Deep nesting in an ignored field is skipped without recursion (no stack overflow).
        let deep = format!(
            "{{\"input\": \"a\", \"x\": {}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(matches!(
            body(deep.as_bytes()),
            Ok(request) if request.input == ["a"]
        ));
        // A syntax error after a refusal-free prefix is not mistaken for a stale refusal.
        assert!(body(b"{\"input\": 5}").is_err());
        assert!(matches!(
            body(b"{\"input\": \"a\",}"),
            Err(ApiError::InvalidJson(_))
        ));
        // Duplicate keys: the last one counts, as with any JSON object.
        assert_eq!(
            body(br#"{"input": "a", "input": "b"}"#).unwrap().input,
            ["b"]
        );
    }
}
