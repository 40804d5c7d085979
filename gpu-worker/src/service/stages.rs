//! What this worker tells the per-stage telemetry about each pass: every chunk it sends
//! carries [`StageTimings`] (its model, the lane, how the batch came, the forward pass's
//! duration and size, and what the tokenizer worker measured), which the gateway turns into
//! its per-stage metrics; and, when traces are exported, each request of a pass gets a
//! `queue_wait` span (from the time its batch entered the work queue, on the server's clock,
//! or reached this worker directly, to the pass's start) and a `forward` span (the pass).

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use common::otlp::{self, KeyValue, StageSpan};
use common::wire::timings::{lane_label, millis};
use common::wire::{BatchItem, BatchPath, Priority, StageTimings, TokenBatch};

/// How a group of batches reached this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    /// Pulled from the work queue.
    Queue,
    /// Taken as a direct offer.
    Direct,
}

/// When the requests of a group of batches began to wait for this worker's device: per
/// request (reply subject and id), the earliest moment one of its batches entered the work
/// queue (the server's timestamp) or, taken directly, reached this worker.
pub(super) struct Waiting {
    /// How the group came.
    via: Via,
    /// Per request, since when.
    since: HashMap<(String, String), SystemTime>,
}

impl Waiting {
    /// Nothing known yet of a group that came `via`.
    pub(super) fn new(via: Via) -> Self {
        Self {
            via,
            since: HashMap::new(),
        }
    }

    /// The requests of `batch` wait since `since` (unless one of their batches waited longer).
    pub(super) fn add(&mut self, batch: &TokenBatch, since: SystemTime) {
        for item in &batch.items {
            let key = (item.reply_to.clone(), item.request_id.clone());
            let earliest = self.since.entry(key).or_insert(since);
            *earliest = (*earliest).min(since);
        }
    }

    /// How the group came.
    pub(super) fn via(&self) -> Via {
        self.via
    }

    /// Since when `item`'s request waits.
    fn since(&self, item: &BatchItem) -> Option<SystemTime> {
        self.since
            .get(&(item.reply_to.clone(), item.request_id.clone()))
            .copied()
    }
}

/// One forward pass that finished.
#[derive(Debug, Clone, Copy)]
pub(super) struct PassTiming {
    /// When the device started it.
    pub(super) started: Instant,
    /// When it was done.
    pub(super) ended: Instant,
    /// Its sequences.
    pub(super) sequences: usize,
    /// Its tokens.
    pub(super) tokens: usize,
}

/// What every chunk of one pass is stamped with.
pub(super) struct Stamp<'a> {
    /// This worker's model name.
    pub(super) model: &'a str,
    /// The pass's lane.
    pub(super) lane: Priority,
    /// How its batches came.
    pub(super) via: Via,
    /// The pass.
    pub(super) pass: PassTiming,
}

impl Stamp<'_> {
    /// The timings of a chunk holding `items` (all of one request).
    pub(super) fn timings<'i>(
        &self,
        items: impl IntoIterator<Item = &'i BatchItem>,
    ) -> StageTimings {
        let (mut tokenize_ms, mut tokenizer_ms, mut offered) = (0f32, 0f32, false);
        for timings in items.into_iter().filter_map(|item| item.timings.as_ref()) {
            tokenize_ms = tokenize_ms.max(timings.tokenize_ms);
            tokenizer_ms = tokenizer_ms.max(timings.sent_ms);
            offered |= timings.offered;
        }
        let path = match (self.via, offered) {
            (Via::Direct, _) => BatchPath::Direct,
            (Via::Queue, true) => BatchPath::Fallback,
            (Via::Queue, false) => BatchPath::Queue,
        };
        StageTimings {
            model: self.model.to_string(),
            lane: self.lane,
            path,
            tokenize_ms,
            tokenizer_ms,
            forward_ms: millis(self.pass.ended.saturating_duration_since(self.pass.started)),
            batch_sequences: u32::try_from(self.pass.sequences).unwrap_or(u32::MAX),
            batch_tokens: u32::try_from(self.pass.tokens).unwrap_or(u32::MAX),
        }
    }
}

/// Records the `queue_wait` and `forward` spans of every traced request among `items`
/// (once per request), children of the span its tokenizer worker passed on.
pub(super) fn record_spans(items: &[BatchItem], waiting: &Waiting, stamp: &Stamp<'_>) {
    if !otlp::enabled() {
        return;
    }
    let (started, ended) = (
        otlp::wall_time(stamp.pass.started),
        otlp::wall_time(stamp.pass.ended),
    );
    let mut seen = std::collections::HashSet::new();
    for item in items {
        if !seen.insert((item.reply_to.as_str(), item.request_id.as_str())) {
            continue;
        }
        let Some(parent) = item.trace.as_ref().and_then(|trace| trace.parent()) else {
            continue;
        };
        let attributes = || {
            vec![
                KeyValue::new("model", stamp.model.to_string()),
                KeyValue::new("lane", lane_label(stamp.lane)),
                KeyValue::new("path", stamp.timings([item]).path.as_str()),
                KeyValue::new("batch_sequences", stamp.pass.sequences as i64),
                KeyValue::new("batch_tokens", stamp.pass.tokens as i64),
            ]
        };
        let since = waiting.since(item).unwrap_or(started).min(started);
        otlp::record(StageSpan {
            name: "queue_wait",
            parent,
            span_id: 0,
            start: since,
            end: started,
            attributes: attributes(),
        });
        otlp::record(StageSpan {
            name: "forward",
            parent,
            span_id: 0,
            start: started,
            end: ended,
            attributes: attributes(),
        });
    }
}

/// A stamp for unit tests: model `qwen3-tiny`, interactive, a 12 ms pass of 3 sequences and
/// 30 tokens.
#[cfg(test)]
pub(super) fn stamp(via: Via) -> Stamp<'static> {
    let started = Instant::now();
    Stamp {
        model: "qwen3-tiny",
        lane: Priority::Interactive,
        via,
        pass: PassTiming {
            started,
            ended: started + std::time::Duration::from_millis(12),
            sequences: 3,
            tokens: 30,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use common::wire::ItemTimings;

    use super::*;

    fn timed(offered: bool, tokenize_ms: f32, sent_ms: f32) -> BatchItem {
        BatchItem {
            timings: Some(ItemTimings {
                tokenize_ms,
                sent_ms,
                offered,
                received: None,
            }),
            ..BatchItem::new("r", "_INBOX.r", 0, 1, 10)
        }
    }

    #[test]
    fn the_path_follows_how_the_batch_came_and_whether_it_was_offered() {
        let offered = [timed(true, 1.0, 2.0)];
        let not_offered = [timed(false, 1.0, 2.0)];
        assert_eq!(stamp(Via::Direct).timings(&offered).path, BatchPath::Direct);
        assert_eq!(
            stamp(Via::Queue).timings(&offered).path,
            BatchPath::Fallback
        );
        assert_eq!(
            stamp(Via::Queue).timings(&not_offered).path,
            BatchPath::Queue
        );
    }

    #[test]
    fn a_chunk_carries_its_pass_and_the_longest_tokenizer_times() {
        let items = [timed(false, 1.0, 5.0), timed(false, 3.0, 4.0)];
        let timings = stamp(Via::Queue).timings(&items);
        assert_eq!((timings.tokenize_ms, timings.tokenizer_ms), (3.0, 5.0));
        assert!((timings.forward_ms - 12.0).abs() < 1e-3, "{timings:?}");
        assert_eq!((timings.batch_sequences, timings.batch_tokens), (3, 30));
        assert_eq!(timings.model, "qwen3-tiny");
        // Items of an older tokenizer worker carry nothing: zero, not a failure.
        let old = stamp(Via::Queue).timings(&[BatchItem::new("r", "_INBOX.r", 0, 1, 10)]);
        assert_eq!((old.tokenize_ms, old.tokenizer_ms), (0.0, 0.0));
    }

    #[test]
    fn a_request_waits_since_its_earliest_batch() {
        let early = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        let late = early + Duration::from_secs(5);
        let batch = |id: &str| TokenBatch {
            token_ids: vec![1],
            items: vec![BatchItem::new(id, "_INBOX.r", 0, 1, 1)],
        };
        let mut waiting = Waiting::new(Via::Queue);
        waiting.add(&batch("a"), late);
        waiting.add(&batch("a"), early);
        waiting.add(&batch("b"), late);
        let probe = |id: &str| waiting.since(&BatchItem::new(id, "_INBOX.r", 0, 1, 1));
        assert_eq!(
            (probe("a"), probe("b"), probe("c")),
            (Some(early), Some(late), None)
        );
    }
}
