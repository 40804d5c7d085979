//! Per-stage timings that travel with the work, so the gateway (the one process with a
//! metrics endpoint) can observe every stage of every request it serves.
//!
//! Every duration is measured by one process on its own monotonic clock: no two clocks are
//! ever compared, so machines whose clocks disagree still report true durations.
//!
//! - The tokenizer worker stamps each batch item with [`ItemTimings`]: how long the request
//!   took to tokenize, and how long it had been in the worker when its batch was sent (set
//!   anew on each send, like `budget_ms`), and whether the batch was offered on the direct
//!   path before it went to the work queue.
//! - The GPU worker copies those into every chunk it sends, with what it knows
//!   ([`StageTimings`]): its model name, the lane, how the batch reached it, the forward
//!   pass's duration and size.
//! - The gateway measures the request's round trip itself; the time in the work queue is
//!   what is left of it once the time in the tokenizer worker and the forward pass are taken
//!   out (NATS transit included, which is small beside a queue wait).
//!
//! Both types are optional fields of their messages: peers that predate them neither send
//! nor read them.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::Priority;

/// How a batch reached the GPU worker that computed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchPath {
    /// Offered on the direct subject and taken: it skipped the work queue.
    Direct,
    /// Offered on the direct subject, refused (busy, nobody listening, no answer in time),
    /// then pulled from the work queue.
    Fallback,
    /// Pulled from the work queue without an offer (bulk work, large batches, the direct
    /// path turned off).
    #[default]
    Queue,
}

impl BatchPath {
    /// The name used in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Fallback => "fallback",
            Self::Queue => "queue",
        }
    }
}

/// What the tokenizer worker measured about one batch item's request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ItemTimings {
    /// Milliseconds from the request's arrival at the tokenizer worker until its tokens were
    /// ready (waiting for a tokenizer thread included).
    pub tokenize_ms: f32,
    /// Milliseconds from the request's arrival until this send of the batch (tokenizing and
    /// waiting for a batch); stamped anew on every send.
    pub sent_ms: f32,
    /// Whether the batch was offered on the direct path before this send.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub offered: bool,
    /// When the request arrived, on the tokenizer worker's own monotonic clock: what
    /// `sent_ms` counts from. Never sent (an instant means nothing to another process).
    #[serde(skip)]
    pub received: Option<Instant>,
}

impl ItemTimings {
    /// Timings of a request that arrived at `received` and was tokenized by `ready`.
    pub fn tokenized(received: Instant, ready: Instant) -> Self {
        let tokenize_ms = millis(ready.saturating_duration_since(received));
        Self {
            tokenize_ms,
            sent_ms: tokenize_ms,
            offered: false,
            received: Some(received),
        }
    }

    /// Sets `sent_ms` for a send at `now` (no change when the arrival is unknown).
    pub fn stamp_sent(&mut self, now: Instant) {
        if let Some(received) = self.received {
            self.sent_ms = millis(now.saturating_duration_since(received));
        }
    }
}

/// Upper bound of the encoded size of an item's `timings` entry (its key included), for the
/// batch size bounds: a map of three keys, two `f32` at 5 bytes, a `bool`.
pub const ITEM_TIMINGS_BYTES: usize = (1 + "timings".len())
    + 1
    + (1 + "tokenize_ms".len())
    + 5
    + (1 + "sent_ms".len())
    + 5
    + (1 + "offered".len())
    + 1;

/// Where one chunk's request spent its time, as the workers measured it. The GPU worker
/// attaches one to every chunk of embeddings or scores it sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageTimings {
    /// The model that computed the chunk (the GPU worker's `model_name`).
    pub model: String,
    /// The lane the batch travelled in.
    pub lane: Priority,
    /// How the batch reached the GPU worker.
    pub path: BatchPath,
    /// Milliseconds the request took to tokenize ([`ItemTimings::tokenize_ms`]).
    pub tokenize_ms: f32,
    /// Milliseconds the request had spent in the tokenizer worker when the batch was sent
    /// ([`ItemTimings::sent_ms`]).
    pub tokenizer_ms: f32,
    /// Milliseconds of the forward pass that computed the chunk (a merged pass: all of it).
    pub forward_ms: f32,
    /// Sequences in that forward pass.
    pub batch_sequences: u32,
    /// Tokens in that forward pass.
    pub batch_tokens: u32,
}

impl StageTimings {
    /// Whether this chunk's batch was offered on the direct path (taken or not).
    pub fn offered(&self) -> bool {
        matches!(self.path, BatchPath::Direct | BatchPath::Fallback)
    }
}

/// A lane's name in metric labels and span attributes.
pub fn lane_label(lane: Priority) -> &'static str {
    match lane {
        Priority::Interactive => "interactive",
        Priority::Bulk => "bulk",
    }
}

/// A duration in milliseconds, as the timings carry it.
pub fn millis(duration: std::time::Duration) -> f32 {
    duration.as_secs_f32() * 1e3
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::wire::{self, BatchItem, EmbedChunk, RerankChunk, WorkerStatus};

    /// The field names of an encoded map.
    fn keys(bytes: &[u8]) -> std::collections::BTreeSet<String> {
        let map: std::collections::BTreeMap<String, serde::de::IgnoredAny> =
            rmp_serde::from_slice(bytes).unwrap();
        map.into_keys().collect()
    }

    fn timings() -> StageTimings {
        StageTimings {
            model: "qwen3-tiny".into(),
            lane: Priority::Bulk,
            path: BatchPath::Fallback,
            tokenize_ms: 0.5,
            tokenizer_ms: 1.25,
            forward_ms: 3.0,
            batch_sequences: 4,
            batch_tokens: 40,
        }
    }

    #[test]
    fn an_older_chunk_without_timings_decodes_and_none_is_not_written() {
        let old = serde_json::json!({
            "id": "r", "offset": 0, "count": 0, "total": 0, "dims": 2,
            "embeddings": [], "tokens": [],
        });
        let chunk: EmbedChunk = wire::decode(&rmp_serde::to_vec_named(&old).unwrap()).unwrap();
        assert_eq!(chunk.timings, None);
        let written = keys(&wire::encode(&chunk).unwrap());
        assert!(!written.contains("timings"), "{written:?}");

        let old = serde_json::json!({
            "id": "r", "offset": 0, "count": 0, "total": 0, "scores": [], "logit_yes": [],
            "logit_no": [], "tokens": [],
        });
        let rerank: RerankChunk = wire::decode(&rmp_serde::to_vec_named(&old).unwrap()).unwrap();
        assert_eq!(rerank.timings, None);
    }

    #[test]
    fn chunk_timings_round_trip_with_lowercase_names() {
        let chunk = EmbedChunk {
            id: "r".into(),
            offset: 0,
            count: 0,
            total: 0,
            dims: 2,
            embeddings: Vec::new(),
            tokens: Vec::new(),
            timings: Some(timings()),
        };
        let bytes = wire::encode(&chunk).unwrap();
        #[derive(Deserialize)]
        struct Written {
            timings: serde_json::Value,
        }
        let written: Written = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(written.timings["lane"], "bulk");
        assert_eq!(written.timings["path"], "fallback");
        assert_eq!(written.timings["model"], "qwen3-tiny");
        assert_eq!(wire::decode::<EmbedChunk>(&bytes).unwrap(), chunk);
        assert!(timings().offered());
    }

    #[test]
    fn item_timings_travel_without_the_local_instant() {
        let received = Instant::now();
        let mut stamped = ItemTimings::tokenized(received, received + Duration::from_millis(2));
        assert!((stamped.tokenize_ms - 2.0).abs() < 1e-3);
        stamped.stamp_sent(received + Duration::from_millis(7));
        assert!((stamped.sent_ms - 7.0).abs() < 1e-3);
        let item = BatchItem {
            timings: Some(stamped.clone()),
            ..BatchItem::default()
        };
        let bytes = wire::encode(&item).unwrap();
        let decoded: BatchItem = wire::decode(&bytes).unwrap();
        let sent = decoded.timings.expect("timings travel");
        assert_eq!(sent.received, None, "an instant is never sent");
        assert_eq!((sent.tokenize_ms, sent.sent_ms), (2.0, 7.0));
        assert!(!sent.offered);
        // Without an arrival, a stamp changes nothing.
        let mut foreign = sent.clone();
        foreign.stamp_sent(Instant::now());
        assert_eq!(foreign, sent);
        // An item of an older tokenizer worker has none.
        let old: BatchItem = wire::decode(&wire::encode(&BatchItem::default()).unwrap()).unwrap();
        assert_eq!(old.timings, None);
    }

    #[test]
    fn the_item_bound_covers_the_widest_timings() {
        let item = BatchItem {
            timings: Some(ItemTimings {
                tokenize_ms: f32::MAX,
                sent_ms: f32::MAX,
                offered: true,
                received: None,
            }),
            ..BatchItem::default()
        };
        let with = wire::encode(&item).unwrap().len();
        let without = wire::encode(&BatchItem::default()).unwrap().len();
        assert!(with - without <= ITEM_TIMINGS_BYTES, "{with} - {without}");
    }

    #[test]
    fn an_older_status_without_busy_time_decodes() {
        let old = serde_json::json!({
            "worker_id": "w", "kind": "gpu", "model": "m", "loaded": true, "batches": 0,
            "sequences": 0, "tokens": 0, "in_flight": 0, "started_ms": 0,
        });
        let status: WorkerStatus = wire::decode(&rmp_serde::to_vec_named(&old).unwrap()).unwrap();
        assert_eq!(status.device_busy_ms, None);
        let written: serde_json::Value =
            rmp_serde::from_slice(&wire::encode(&status).unwrap()).unwrap();
        assert!(written.get("device_busy_ms").is_none(), "{written}");
    }
}
