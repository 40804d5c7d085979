//! The recording rules of the per-stage metrics: one request's chunks, each with what its
//! workers measured ([`StageTimings`]), folded into one observation per stage
//! ([`RequestStages`]) when the answer is complete.
//!
//! - Durations: the longest over the request's chunks (a request split over several batches
//!   waited for its slowest one).
//! - Queue wait, per chunk: the time from the request's publication to the chunk's arrival
//!   here, less the time the request spent in the tokenizer worker and the forward pass. Each
//!   of the three durations is measured on one clock (this gateway's, the tokenizer
//!   worker's, the GPU worker's), so no two clocks are compared; what is left is the batch's
//!   wait for a device (work queue or direct offer, the GPU worker's turn) and NATS transit.
//! - Batch size: the largest pass that computed a part of the request.
//! - Path: direct only when every chunk came on the direct path; a fallback when one was
//!   offered and refused; queue otherwise.
//! - Model and lane: the first chunk's.
//! - A request none of whose chunks carried timings (workers that predate them) records
//!   nothing.

use std::time::{Duration, Instant};

use common::wire::{BatchPath, Priority, StageTimings};

use crate::metrics::RequestStages;

/// The timings of one request's chunks so far.
#[derive(Debug, Clone)]
pub struct StageTally {
    /// When the request was published (its round trip counts from here).
    published: Instant,
    /// When its first chunk arrived.
    first_chunk: Option<Instant>,
    /// Model and lane, from the first chunk with timings.
    origin: Option<(String, Priority)>,
    /// The worst path among the chunks.
    path: BatchPath,
    /// Longest tokenize time, ms.
    tokenize_ms: f32,
    /// Longest queue wait, ms.
    queue_wait_ms: f32,
    /// Longest forward pass, ms.
    forward_ms: f32,
    /// Largest pass, sequences.
    batch_sequences: u32,
    /// Largest pass, tokens.
    batch_tokens: u32,
}

impl StageTally {
    /// Nothing received yet of a request published at `published`.
    pub fn new(published: Instant) -> Self {
        Self {
            published,
            first_chunk: None,
            origin: None,
            path: BatchPath::Direct,
            tokenize_ms: 0.0,
            queue_wait_ms: 0.0,
            forward_ms: 0.0,
            batch_sequences: 0,
            batch_tokens: 0,
        }
    }

    /// Takes note of a chunk that arrived at `now` with `timings` (if its worker sent any).
    pub fn observe(&mut self, timings: Option<&StageTimings>, now: Instant) {
        self.first_chunk.get_or_insert(now);
        let Some(timings) = timings else {
            return;
        };
        self.origin
            .get_or_insert_with(|| (timings.model.clone(), timings.lane));
        self.path = worse(self.path, timings.path);
        let round_trip_ms = now.saturating_duration_since(self.published).as_secs_f32() * 1e3;
        let queue_wait_ms = round_trip_ms - timings.tokenizer_ms - timings.forward_ms;
        self.tokenize_ms = self.tokenize_ms.max(timings.tokenize_ms);
        self.queue_wait_ms = self.queue_wait_ms.max(queue_wait_ms);
        self.forward_ms = self.forward_ms.max(timings.forward_ms);
        self.batch_sequences = self.batch_sequences.max(timings.batch_sequences);
        self.batch_tokens = self.batch_tokens.max(timings.batch_tokens);
    }

    /// When the first chunk arrived, if one did.
    pub fn first_chunk(&self) -> Option<Instant> {
        self.first_chunk
    }

    /// The request's stages, complete at `done` with `input_tokens` tokens in all; `None`
    /// when no chunk carried timings.
    pub fn finish(&self, input_tokens: u64, done: Instant) -> Option<RequestStages> {
        let (model, lane) = self.origin.clone()?;
        let first = self.first_chunk.unwrap_or(done);
        Some(RequestStages {
            model,
            lane,
            path: self.path,
            tokenize: seconds(self.tokenize_ms),
            queue_wait: seconds(self.queue_wait_ms),
            forward: seconds(self.forward_ms),
            assembly: done.saturating_duration_since(first),
            batch_sequences: self.batch_sequences,
            batch_tokens: self.batch_tokens,
            input_tokens,
        })
    }
}

/// The slower of two paths: queue over fallback over direct.
fn worse(a: BatchPath, b: BatchPath) -> BatchPath {
    let rank = |path| match path {
        BatchPath::Direct => 0,
        BatchPath::Fallback => 1,
        BatchPath::Queue => 2,
    };
    if rank(b) > rank(a) { b } else { a }
}

/// Milliseconds as a duration; a negative or unreadable value (clock rates apart, a worker's
/// nonsense) is zero.
fn seconds(ms: f32) -> Duration {
    Duration::try_from_secs_f32(ms / 1e3).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timings(path: BatchPath, tokenizer_ms: f32, forward_ms: f32, tokens: u32) -> StageTimings {
        StageTimings {
            model: "qwen3-tiny".into(),
            lane: Priority::Interactive,
            path,
            tokenize_ms: tokenizer_ms / 2.0,
            tokenizer_ms,
            forward_ms,
            batch_sequences: tokens / 10,
            batch_tokens: tokens,
        }
    }

    #[test]
    fn the_queue_wait_is_what_the_workers_did_not_measure() {
        let published = Instant::now();
        let mut tally = StageTally::new(published);
        let at = |ms| published + Duration::from_millis(ms);
        // 100 ms round trip: 10 in the tokenizer worker, 30 in the pass, so 60 waiting.
        tally.observe(Some(&timings(BatchPath::Queue, 10.0, 30.0, 40)), at(100));
        // A second chunk of a smaller pass: 150 ms, 5 + 20, so 125 waiting: the longest.
        tally.observe(Some(&timings(BatchPath::Direct, 5.0, 20.0, 20)), at(150));
        let stages = tally.finish(77, at(160)).expect("timed chunks");
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        assert!((ms(stages.queue_wait) - 125.0).abs() < 0.01, "{stages:?}");
        assert!((ms(stages.forward) - 30.0).abs() < 0.01, "{stages:?}");
        assert!((ms(stages.tokenize) - 5.0).abs() < 0.01, "{stages:?}");
        assert!((ms(stages.assembly) - 60.0).abs() < 0.01, "{stages:?}");
        assert_eq!((stages.batch_sequences, stages.batch_tokens), (4, 40));
        assert_eq!(stages.input_tokens, 77);
        assert_eq!(
            stages.path,
            BatchPath::Queue,
            "one queued chunk makes it a queued request"
        );
        assert_eq!(
            (stages.model.as_str(), stages.lane),
            ("qwen3-tiny", Priority::Interactive)
        );
    }

    #[test]
    fn paths_rank_queue_over_fallback_over_direct() {
        let published = Instant::now();
        let path_of = |paths: &[BatchPath]| {
            let mut tally = StageTally::new(published);
            for &path in paths {
                tally.observe(Some(&timings(path, 1.0, 1.0, 10)), published);
            }
            tally.finish(1, published).unwrap().path
        };
        assert_eq!(
            path_of(&[BatchPath::Direct, BatchPath::Direct]),
            BatchPath::Direct
        );
        assert_eq!(
            path_of(&[BatchPath::Direct, BatchPath::Fallback]),
            BatchPath::Fallback
        );
        assert_eq!(
            path_of(&[BatchPath::Fallback, BatchPath::Queue]),
            BatchPath::Queue
        );
    }

    #[test]
    fn untimed_chunks_record_nothing_and_nonsense_is_zero() {
        let published = Instant::now();
        let mut tally = StageTally::new(published);
        tally.observe(None, published);
        assert_eq!(tally.first_chunk(), Some(published));
        assert_eq!(tally.finish(3, published), None);
        // Workers that claim more time than the round trip took: no negative wait.
        tally.observe(
            Some(&timings(BatchPath::Queue, 500.0, 500.0, 10)),
            published,
        );
        let stages = tally.finish(3, published).unwrap();
        assert_eq!(stages.queue_wait, Duration::ZERO);
        assert_eq!(seconds(f32::NAN), Duration::ZERO);
    }
}
