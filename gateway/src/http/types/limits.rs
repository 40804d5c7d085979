//! The request limits that protect the service (`max_inputs_per_request`, `max_input_chars`)
//! and the one wording of their refusals, shared by body decoding and [`crate::service`].
//!
//! Bodies are read within [`Limits::for_bodies`]: the count limit, and no character limit
//! beyond the body's own size, because whether a text may be longer than `max_input_chars`
//! depends on fields that may come after it (`truncate`): a text that truncation will cut is
//! never refused for its length. The service applies the character limit once the whole
//! request is known ([`Limits::check_untruncated_text`]).

use crate::config::GatewayConfig;
use crate::http::error::ApiError;

/// How many texts a request may carry and how long each may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Texts (inputs or documents) per request.
    pub max_inputs: usize,
    /// Characters (Unicode scalar values) per text and query.
    pub max_chars: usize,
}

impl Limits {
    /// The limits `config` sets.
    pub fn from_config(config: &GatewayConfig) -> Self {
        Self {
            max_inputs: config.max_inputs_per_request,
            max_chars: config.max_input_chars,
        }
    }

    /// The limits bodies are read within: `config`'s count limit, and characters bounded only
    /// by `max_body_bytes` (no string in a body that size is longer), so that the length of a
    /// text is judged by the service, which knows whether it will be truncated.
    pub fn for_bodies(config: &GatewayConfig) -> Self {
        Self {
            max_inputs: config.max_inputs_per_request,
            max_chars: config.max_input_chars.max(config.max_body_bytes),
        }
    }

    /// Refuses `text`, to be embedded without truncation, when it has more than `max_chars`
    /// characters: the message names its length and the limit, and how to have it cut.
    pub fn check_untruncated_text(
        &self,
        param: impl FnOnce() -> String,
        text: &str,
    ) -> Result<(), ApiError> {
        self.check_text(param, text).map_err(|error| match error {
            ApiError::InvalidField { param, message } => ApiError::InvalidField {
                param,
                message: format!(
                    "{message}; send `truncate: true` to have it cut to the model's token limit"
                ),
            },
            other => other,
        })
    }

    /// Refuses `count` texts in `field` (counted as `noun`s) when over the limit.
    pub fn check_count(&self, field: &str, noun: &str, count: usize) -> Result<(), ApiError> {
        if count <= self.max_inputs {
            return Ok(());
        }
        Err(ApiError::field(
            field,
            format!(
                "{field} has {count} {noun}; at most {} are allowed per request",
                self.max_inputs
            ),
        ))
    }

    /// Refuses `text` when it has more than `max_chars` characters; `param` names it.
    pub fn check_text(&self, param: impl FnOnce() -> String, text: &str) -> Result<(), ApiError> {
        // Characters are never more than bytes: count only texts that could be over.
        if text.len() <= self.max_chars {
            return Ok(());
        }
        let chars = text.chars().count();
        if chars <= self.max_chars {
            return Ok(());
        }
        let param = param();
        Err(ApiError::field(
            param.clone(),
            format!(
                "{param} has {chars} characters; at most {} are allowed",
                self.max_chars
            ),
        ))
    }
}

impl Default for Limits {
    /// The limits of the default configuration.
    fn default() -> Self {
        Self::from_config(&GatewayConfig::default())
    }
}
