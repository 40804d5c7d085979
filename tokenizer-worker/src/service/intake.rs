//! What a request meets before it is tokenized: decoding (a malformed request is answered
//! with its id when that much can be read), the caps on the lengths of its fields, the
//! model's limits, and the checks of an embedding request that need no tokenizer.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use common::wire::limits::{MAX_ID_BYTES, MAX_INSTRUCTION_CHARS, over_bytes, over_chars};
use common::wire::{self, EmbedRequest, ErrorCode, ErrorReply};

use crate::config::MAX_LENGTH_OF_MODEL;
use crate::deadline::{self, Deadline, Receipt};
use crate::routing::Route;

/// Limits of the served model that requests are checked against.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub(super) struct ModelLimits {
    /// Width of the model's vectors: bounds `dimensions`, reported in the status.
    pub(super) hidden_size: u32,
    /// Longest sequence the model reads: bounds the configured `max_length`.
    #[serde(default = "default_max_positions")]
    pub(super) max_position_embeddings: usize,
}

/// Qwen3's context length, for a `config.json` that does not name it.
fn default_max_positions() -> usize {
    32768
}

impl ModelLimits {
    /// The token limit of a worker configured with `max_length`: the model's
    /// `max_position_embeddings` for [`MAX_LENGTH_OF_MODEL`], the configured value when it
    /// is within them; refused (naming both) when it is not.
    pub(super) fn max_length(&self, configured: usize) -> anyhow::Result<usize> {
        let positions = self.max_position_embeddings;
        if configured == MAX_LENGTH_OF_MODEL {
            return Ok(positions);
        }
        anyhow::ensure!(
            configured <= positions,
            "max_length {configured} exceeds the model's {positions} positions \
             (max_position_embeddings in its config.json); set it to at most {positions}, or \
             leave it out to use the model's"
        );
        Ok(configured)
    }
}

/// Reads the model's limits from `config.json` in `dir`.
pub(super) fn read_model_limits(dir: &Path) -> anyhow::Result<ModelLimits> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} lacks hidden_size", path.display()))
}

/// Decodes a request, answering a malformed one with its id when that much can be read (and
/// is within its cap).
pub(super) fn decode<T: serde::de::DeserializeOwned>(payload: &Bytes) -> Result<T, ErrorReply> {
    wire::decode(payload).map_err(|e| {
        let id = id_of(payload).filter(|id| id.len() <= MAX_ID_BYTES);
        ErrorReply::new(
            id,
            ErrorCode::InvalidRequest,
            format!("malformed request: {e}"),
        )
    })
}

/// The id of a request, when its payload holds one: for the replies and log lines about a
/// request that is not decoded (or not served) as a whole.
pub(super) fn id_of(payload: &Bytes) -> Option<String> {
    wire::decode::<IdOnly>(payload).ok().map(|only| only.id)
}

/// Just the id of a request that failed to decode as a whole.
#[derive(serde::Deserialize)]
struct IdOnly {
    /// The requester's id.
    id: String,
}

/// Checks the caps on a request's `id` and `instruction` (either task), which every batch
/// item copies or every input is tokenized with. An id over its cap is not echoed.
pub(super) fn check_lengths(id: &str, instruction: Option<&str>) -> Result<(), ErrorReply> {
    if let Some(message) = over_bytes("id", id, MAX_ID_BYTES) {
        return Err(ErrorReply::new(None, ErrorCode::InvalidRequest, message));
    }
    if let Some(message) =
        instruction.and_then(|text| over_chars("instruction", text, MAX_INSTRUCTION_CHARS))
    {
        return Err(ErrorReply::new(
            Some(id.to_string()),
            ErrorCode::InvalidRequest,
            message,
        ));
    }
    Ok(())
}

/// Checks what can be checked of an embedding request without tokenizing (its `bundle_to`
/// against `route`, the rule of the subject it came on), and its deadline (the request
/// arrived at `received`) against `max_age`, how long the work queue keeps a batch; returns
/// the request with its deadline on this worker's clock.
pub(super) fn check_embed(
    request: EmbedRequest,
    route: &Route,
    limits: &ModelLimits,
    received: Receipt,
    max_age: Duration,
) -> Result<(EmbedRequest, Deadline), ErrorReply> {
    let fail = |message: String| {
        Err(ErrorReply::new(
            Some(request.id.clone()),
            ErrorCode::InvalidRequest,
            message,
        ))
    };
    if request.input.is_empty() {
        return fail("`input` must hold at least one text".into());
    }
    if request.input.len() > u32::MAX as usize {
        return fail("`input` holds too many texts".into());
    }
    if let Some(dims) = request.dimensions
        && !(1..=limits.hidden_size).contains(&dims)
    {
        return fail(format!(
            "`dimensions` must be between 1 and {} for this model, got {dims}",
            limits.hidden_size
        ));
    }
    if let Some(subject) = &request.bundle_to
        && let Err(message) = route.check("bundle_to", subject)
    {
        return fail(message);
    }
    let deadline = deadline::check(
        &request.id,
        request.timeout_ms,
        request.deadline_ms,
        received,
        max_age,
    )?;
    Ok((request, deadline))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use common::wire::InputType;
    use common::wire::limits::MAX_SUBJECT_BYTES;

    use super::*;

    fn request(id: &str, bundle_to: Option<&str>) -> EmbedRequest {
        EmbedRequest {
            id: id.into(),
            input: vec!["text".into()],
            input_type: InputType::Query,
            instruction: None,
            dimensions: None,
            truncate: None,
            deadline_ms: None,
            timeout_ms: None,
            ack: false,
            bundle_to: bundle_to.map(String::from),
            ..Default::default()
        }
    }

    fn from_alice() -> Route {
        Route::Requester {
            identity: "alice".into(),
            prefix: "_INBOX.alice.".into(),
        }
    }

    fn check(request: EmbedRequest, route: &Route) -> Result<(), ErrorReply> {
        let limits = ModelLimits {
            hidden_size: 32,
            max_position_embeddings: 64,
        };
        check_embed(
            request,
            route,
            &limits,
            Receipt::now(),
            Duration::from_secs(60),
        )
        .map(drop)
    }

    #[test]
    fn max_length_defaults_to_the_model_and_may_not_exceed_it() {
        let limits = ModelLimits {
            hidden_size: 32,
            max_position_embeddings: 32768,
        };
        assert_eq!(limits.max_length(MAX_LENGTH_OF_MODEL).unwrap(), 32768);
        assert_eq!(limits.max_length(512).unwrap(), 512);
        assert_eq!(limits.max_length(32768).unwrap(), 32768);
        let error = limits.max_length(40000).unwrap_err().to_string();
        assert!(
            error.contains("max_length 40000 exceeds the model's 32768 positions"),
            "{error}"
        );
    }

    #[test]
    fn ids_and_instructions_over_their_caps_are_refused_by_name() {
        assert!(check_lengths(&"i".repeat(MAX_ID_BYTES), Some(&"t".repeat(4096))).is_ok());
        let error = check_lengths(&"i".repeat(MAX_ID_BYTES + 1), None).unwrap_err();
        assert_eq!(error.id, None, "an id over its cap is not echoed");
        assert_eq!(error.error.code, ErrorCode::InvalidRequest);
        assert!(
            error.error.message.contains("`id` is 257 bytes"),
            "{error:?}"
        );
        let error = check_lengths("r", Some(&"t".repeat(4097))).unwrap_err();
        assert_eq!(error.id.as_deref(), Some("r"));
        assert!(
            error
                .error
                .message
                .contains("`instruction` is 4097 characters"),
            "{error:?}"
        );
    }

    #[test]
    fn bundle_to_follows_the_reply_rule_of_the_subject() {
        let alice = from_alice();
        assert!(check(request("r", Some("_INBOX.alice.b")), &alice).is_ok());
        assert!(check(request("r", None), &alice).is_ok());
        let error = check(request("r", Some("_INBOX.gateway.x.bundle")), &alice).unwrap_err();
        assert_eq!(error.error.code, ErrorCode::InvalidRequest);
        assert_eq!(error.id.as_deref(), Some("r"));
        assert!(
            error
                .error
                .message
                .contains("`bundle_to` must start with `_INBOX.alice.`"),
            "{error:?}"
        );
        let long = format!("_INBOX.alice.{}", "b".repeat(MAX_SUBJECT_BYTES));
        let error = check(request("r", Some(&long)), &alice).unwrap_err();
        assert!(error.error.message.contains("`bundle_to` is"), "{error:?}");

        let open = Route::Open(Arc::from(vec!["_INBOX.".to_string()]));
        assert!(check(request("r", Some("_INBOX.gateway.x.bundle")), &open).is_ok());
        assert!(check(request("r", Some("evil.subject")), &open).is_err());
    }

    #[test]
    fn a_malformed_request_echoes_only_an_id_within_its_cap() {
        let payload = |id: &str| {
            let value = serde_json::json!({"id": id, "input": 5});
            Bytes::from(wire::encode(&value).unwrap())
        };
        let error = decode::<EmbedRequest>(&payload("r1")).unwrap_err();
        assert_eq!(error.id.as_deref(), Some("r1"));
        let error = decode::<EmbedRequest>(&payload(&"i".repeat(MAX_ID_BYTES + 1))).unwrap_err();
        assert_eq!(error.id, None);
    }
}
