//! What this worker measures of each request for the per-stage telemetry: its items carry
//! how long tokenizing took (and, stamped at each send of their batch, how long the request
//! had been here: [`crate::batcher::ReadyBatch::stamp_budgets`]) to the GPU worker, which
//! passes them on to the gateway in the request's chunks ([`common::wire::timings`]); and,
//! when traces are exported, one `tokenize` span per request ([`common::otlp`]).

use std::time::Instant;

use common::otlp::{self, KeyValue, StageSpan};
use common::trace::RequestTrace;
use common::wire::timings::lane_label;
use common::wire::{ItemTimings, Priority};

use crate::batcher::PendingSequence;

/// One tokenized request, as the telemetry sees it.
pub(super) struct Tokenize<'a> {
    /// When the request arrived here.
    pub(super) received: Instant,
    /// When its tokens were ready.
    pub(super) ready: Instant,
    /// The trace context it came with (its parent span is the sender's).
    pub(super) trace: Option<&'a RequestTrace>,
    /// The trace context its items carry on (whose span id is this stage's).
    pub(super) downstream: Option<&'a RequestTrace>,
    /// This worker's model name.
    pub(super) model: &'a str,
    /// The lane the request travels in.
    pub(super) lane: Priority,
    /// Tokens of all its sequences.
    pub(super) tokens: usize,
}

/// Stamps `sequences` (all of one request) with the request's tokenize timings and records
/// its `tokenize` span: from its arrival to its tokens being ready.
pub(super) fn tokenized(sequences: &mut [PendingSequence], stage: &Tokenize<'_>) {
    let timings = ItemTimings::tokenized(stage.received, stage.ready);
    for seq in sequences.iter_mut() {
        seq.item.timings = Some(timings.clone());
    }
    if !otlp::enabled() {
        return;
    }
    let (Some(parent), Some(own)) = (
        stage.trace.and_then(RequestTrace::parent),
        stage.downstream.and_then(RequestTrace::parent),
    ) else {
        return;
    };
    otlp::record(StageSpan {
        name: "tokenize",
        parent,
        span_id: own.parent_id,
        start: otlp::wall_time(stage.received),
        end: otlp::wall_time(stage.ready),
        attributes: vec![
            KeyValue::new("model", stage.model.to_string()),
            KeyValue::new("lane", lane_label(stage.lane)),
            KeyValue::new("sequences", sequences.len() as i64),
            KeyValue::new("tokens", stage.tokens as i64),
        ],
    });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use common::wire::BatchItem;

    use super::*;

    #[test]
    fn every_sequence_of_the_request_carries_its_tokenize_time() {
        let received = Instant::now();
        let seq = |index| {
            let item = BatchItem {
                request_id: "r".into(),
                index,
                ..BatchItem::default()
            };
            PendingSequence::new(item, vec![7; 3], None).unwrap()
        };
        let mut sequences = vec![seq(0), seq(1)];
        let stage = Tokenize {
            received,
            ready: received + Duration::from_millis(4),
            trace: None,
            downstream: None,
            model: "m",
            lane: Priority::Interactive,
            tokens: 6,
        };
        tokenized(&mut sequences, &stage);
        for seq in &sequences {
            let timings = seq.item.timings.as_ref().expect("stamped");
            assert!((timings.tokenize_ms - 4.0).abs() < 1e-3, "{timings:?}");
            assert_eq!(timings.sent_ms, timings.tokenize_ms);
            assert_eq!(timings.received, Some(received));
        }
    }
}
