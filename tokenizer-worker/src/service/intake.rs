//! What a request meets before it is tokenized: decoding (a malformed request is answered
//! with its id when that much can be read), the model's limits, and the checks of an
//! embedding request that need no tokenizer.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use common::subjects::is_publish_subject;
use common::wire::{self, EmbedRequest, ErrorCode, ErrorReply};

use crate::deadline::{self, Deadline, Receipt};

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

/// Reads the model's limits from `config.json` in `dir`.
pub(super) fn read_model_limits(dir: &Path) -> anyhow::Result<ModelLimits> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} lacks hidden_size", path.display()))
}

/// Decodes a request, answering a malformed one with its id when that much can be read.
pub(super) fn decode<T: serde::de::DeserializeOwned>(payload: &Bytes) -> Result<T, ErrorReply> {
    wire::decode(payload).map_err(|e| {
        let id = wire::decode::<IdOnly>(payload).ok().map(|only| only.id);
        ErrorReply::new(
            id,
            ErrorCode::InvalidRequest,
            format!("malformed request: {e}"),
        )
    })
}

/// Just the id of a request that failed to decode as a whole.
#[derive(serde::Deserialize)]
struct IdOnly {
    /// The requester's id.
    id: String,
}

/// Checks what can be checked of an embedding request without tokenizing, and its deadline
/// (the request arrived at `received`) against `max_age`, how long the work queue keeps a
/// batch; returns the request with its deadline on this worker's clock.
pub(super) fn check_embed(
    request: EmbedRequest,
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
        && !is_publish_subject(subject)
    {
        return fail(format!(
            "`bundle_to` must be a subject to publish on (dot-separated tokens, no wildcards \
             or spaces), got {subject:?}"
        ));
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
