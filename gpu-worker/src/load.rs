//! How long the work in hand will take: tokens held (from the work queue and the direct
//! path together) and the time per token measured over recent forward passes. A GPU worker
//! takes a directly offered batch only when it expects to finish it soon; otherwise the
//! batch goes through the work queue, where whichever worker is free first pulls it.
//!
//! Pure bookkeeping, no I/O: the service updates it around every pass.

use std::time::Duration;

/// Weight of the newest pass in the time-per-token average.
const NEWEST_PASS_WEIGHT: f64 = 0.2;

/// The work a worker holds and how fast it has been going.
#[derive(Debug, Default)]
pub struct Load {
    /// Tokens of the batches in hand (computing or waiting for the device).
    pending_tokens: usize,
    /// Seconds per token over recent passes (an exponential average); `None` before the
    /// first pass.
    secs_per_token: Option<f64>,
}

impl Load {
    /// Whether a batch of `tokens` would be finished, after the work in hand, within
    /// `max_wait`. Before any pass has been timed only an idle worker takes one; a zero
    /// `max_wait` takes none.
    pub fn admits(&self, tokens: usize, max_wait: Duration) -> bool {
        if max_wait.is_zero() {
            return false;
        }
        match self.secs_per_token {
            None => self.pending_tokens == 0,
            Some(per_token) => {
                (self.pending_tokens + tokens) as f64 * per_token <= max_wait.as_secs_f64()
            }
        }
    }

    /// Counts a batch of `tokens` as in hand.
    pub fn take(&mut self, tokens: usize) {
        self.pending_tokens += tokens;
    }

    /// Counts `tokens` taken earlier as finished.
    pub fn finish(&mut self, tokens: usize) {
        self.pending_tokens = self.pending_tokens.saturating_sub(tokens);
    }

    /// Records that a pass over `tokens` took `elapsed`.
    pub fn observe(&mut self, tokens: usize, elapsed: Duration) {
        if tokens == 0 {
            return;
        }
        let newest = elapsed.as_secs_f64() / tokens as f64;
        self.secs_per_token = Some(match self.secs_per_token {
            None => newest,
            Some(average) => average + NEWEST_PASS_WEIGHT * (newest - average),
        });
    }

    /// Tokens in hand.
    pub fn pending_tokens(&self) -> usize {
        self.pending_tokens
    }

    /// Seconds per token over recent passes; `None` before the first pass.
    pub fn secs_per_token(&self) -> Option<f64> {
        self.secs_per_token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn before_any_pass_only_an_idle_worker_takes_a_batch() {
        let mut load = Load::default();
        assert!(load.admits(1_000_000, 100 * MS));
        load.take(10);
        assert!(!load.admits(1, 100 * MS));
        load.finish(10);
        assert!(load.admits(1, 100 * MS));
        assert!(!load.admits(1, Duration::ZERO), "a zero wait takes nothing");
    }

    #[test]
    fn batches_are_taken_while_the_expected_wait_fits() {
        let mut load = Load::default();
        // 1,000 tokens in 10 ms: 10 us a token.
        load.observe(1000, 10 * MS);
        assert!(load.admits(10_000, 100 * MS), "10,000 tokens take 100 ms");
        assert!(!load.admits(10_001, 100 * MS));
        load.take(9_000);
        assert_eq!(load.pending_tokens(), 9_000);
        assert!(load.admits(1_000, 100 * MS));
        assert!(!load.admits(1_001, 100 * MS));
        load.finish(20_000);
        assert_eq!(load.pending_tokens(), 0, "never below zero");
    }

    #[test]
    fn the_rate_follows_recent_passes() {
        let mut load = Load::default();
        load.observe(100, MS);
        load.observe(0, Duration::from_secs(60)); // an empty pass says nothing
        assert!(load.admits(10_000, 100 * MS));
        // The worker slows down 100-fold (a bigger model, a shared device): within a few
        // passes it stops taking what it can no longer finish in time.
        for _ in 0..20 {
            load.observe(100, 100 * MS);
        }
        assert!(!load.admits(1_000, 100 * MS));
        assert!(load.admits(90, 100 * MS));
    }
}
