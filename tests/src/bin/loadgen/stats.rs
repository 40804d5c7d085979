//! Per-worker measurements, merged into one summary per run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::api::{Answer, Failure};

/// How often one error kind happened, with its first example.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorCount {
    /// Occurrences.
    pub count: u64,
    /// The first example's detail.
    pub example: String,
}

/// What one worker measured (only requests started inside the measured window).
#[derive(Debug, Default)]
pub struct Stats {
    /// Latencies of the successful requests, in microseconds.
    pub latencies_us: Vec<u32>,
    /// Successful requests.
    pub ok: u64,
    /// Texts embedded by the successful requests.
    pub inputs: u64,
    /// Tokens of the successful requests: `usage.total_tokens` when answered, else estimated.
    pub tokens: f64,
    /// Successful requests whose tokens came from `usage.total_tokens`.
    pub usage_ok: u64,
    /// Vector dimension of the answers (the first seen).
    pub dim: Option<usize>,
    /// Failed requests by kind.
    pub errors: BTreeMap<String, ErrorCount>,
    /// When the last measured request ended.
    pub last_end: Option<Instant>,
}

impl Stats {
    /// Records a successful request.
    pub fn record_ok(&mut self, latency: Duration, answer: &Answer, est_tokens: f64) {
        self.latencies_us.push(micros(latency));
        self.ok += 1;
        self.inputs += answer.vectors as u64;
        match answer.usage_tokens {
            Some(t) => {
                self.tokens += t as f64;
                self.usage_ok += 1;
            }
            None => self.tokens += est_tokens,
        }
        self.dim.get_or_insert(answer.dim);
    }

    /// Records a failed request.
    pub fn record_error(&mut self, failure: Failure) {
        self.errors
            .entry(failure.kind)
            .and_modify(|e| e.count += 1)
            .or_insert(ErrorCount {
                count: 1,
                example: failure.detail,
            });
    }

    /// Failed requests.
    pub fn error_total(&self) -> u64 {
        self.errors.values().map(|e| e.count).sum()
    }

    /// Adds `other`'s measurements to these.
    pub fn merge(&mut self, other: Stats) {
        self.latencies_us.extend(other.latencies_us);
        self.ok += other.ok;
        self.inputs += other.inputs;
        self.tokens += other.tokens;
        self.usage_ok += other.usage_ok;
        self.dim = self.dim.or(other.dim);
        for (kind, e) in other.errors {
            self.errors
                .entry(kind)
                .and_modify(|mine| mine.count += e.count)
                .or_insert(e);
        }
        self.last_end = self.last_end.max(other.last_end);
    }

    /// Where the token counts came from.
    pub fn tokens_source(&self) -> &'static str {
        match (self.ok, self.usage_ok) {
            (0, _) => "none",
            (ok, usage) if usage == ok => "usage",
            (_, 0) => "estimate",
            _ => "mixed",
        }
    }
}

/// A duration in whole microseconds, saturating at `u32::MAX` (71 minutes).
pub fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Latency summary, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Mean.
    pub mean: f64,
    /// Fastest.
    pub min: f64,
    /// Slowest.
    pub max: f64,
}

impl Latency {
    /// Summarizes microsecond latencies (sorts them); all zero when there are none.
    pub fn from_micros(latencies: &mut [u32]) -> Self {
        latencies.sort_unstable();
        let ms = |us: Option<u32>| f64::from(us.unwrap_or(0)) / 1000.0;
        let sum: u64 = latencies.iter().map(|&l| u64::from(l)).sum();
        Self {
            p50: ms(percentile(latencies, 50.0)),
            p90: ms(percentile(latencies, 90.0)),
            p99: ms(percentile(latencies, 99.0)),
            mean: if latencies.is_empty() {
                0.0
            } else {
                sum as f64 / latencies.len() as f64 / 1000.0
            },
            min: ms(latencies.first().copied()),
            max: ms(latencies.last().copied()),
        }
    }
}

/// The `p`-th percentile (0 < p <= 100) of sorted values by the nearest-rank method: the
/// smallest value with at least p% of the values at or below it.
pub fn percentile(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 90.0), Some(90));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 99.9), Some(100));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[1, 2, 3], 50.0), Some(2));
        assert_eq!(percentile(&[1, 2, 3, 4], 50.0), Some(2));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn latency_summary_sorts_and_converts_to_ms() {
        let mut us: Vec<u32> = (1..=1000).rev().map(|i| i * 1000).collect();
        let l = Latency::from_micros(&mut us);
        assert_eq!((l.p50, l.p90, l.p99), (500.0, 900.0, 990.0));
        assert_eq!((l.min, l.max, l.mean), (1.0, 1000.0, 500.5));
        assert_eq!(Latency::from_micros(&mut []), Latency::default());
    }

    #[test]
    fn merge_adds_counts_and_keeps_first_error_example() {
        let answer = Answer {
            vectors: 2,
            dim: 4,
            usage_tokens: Some(10),
        };
        let mut a = Stats::default();
        a.record_ok(Duration::from_millis(3), &answer, 99.0);
        a.record_error(Failure::new("http_500", "first"));
        let mut b = Stats::default();
        b.record_ok(
            Duration::from_millis(5),
            &Answer {
                usage_tokens: None,
                ..answer
            },
            7.5,
        );
        b.record_error(Failure::new("http_500", "second"));
        b.record_error(Failure::new("timeout", "t"));
        a.merge(b);
        assert_eq!((a.ok, a.inputs, a.tokens, a.usage_ok), (2, 4, 17.5, 1));
        assert_eq!(a.tokens_source(), "mixed");
        assert_eq!(a.error_total(), 3);
        assert_eq!(a.errors["http_500"].count, 2);
        assert_eq!(a.errors["http_500"].example, "first");
        assert_eq!(a.latencies_us, [3000, 5000]);
    }
}
