//! When to publish a request again: a tokenizer worker acknowledges a request once its
//! inputs are durably queued; a request not acknowledged within the acknowledgement timeout
//! (the worker that took it died, or the message was lost) is published again, with the same
//! id and reply subject, until it is acknowledged or its deadline passes. The wait doubles
//! after each resend, up to [`MAX_BACKOFF_FACTOR`] times the timeout, so an overloaded
//! tokenizer stage is not flooded with copies. Pure logic: no I/O, no clock of its own.
//!
//! Copies are harmless: every copy produces the same vectors for the same offsets, and the
//! assembly keeps one per offset.

use std::time::Duration;

use tokio::time::Instant;

/// Most the acknowledgement wait grows to, as a multiple of the configured timeout.
pub const MAX_BACKOFF_FACTOR: u32 = 4;

/// The resend schedule of one request.
#[derive(Debug, Clone)]
pub struct Resend {
    /// The acknowledgement timeout; `None` when acknowledgements are off.
    timeout: Option<Duration>,
    /// When to publish again if still unacknowledged; `None` once acknowledged (or off).
    due: Option<Instant>,
    /// Publications so far.
    sent: u32,
}

impl Resend {
    /// The schedule of a request first published at `sent_at`; `timeout` `None` never resends.
    pub fn new(timeout: Option<Duration>, sent_at: Instant) -> Self {
        let mut schedule = Self {
            timeout,
            due: None,
            sent: 0,
        };
        schedule.sent(sent_at);
        schedule
    }

    /// When the request is to be published again, unless acknowledged first.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Times the request was published.
    pub fn times_sent(&self) -> u32 {
        self.sent
    }

    /// A tokenizer worker acknowledged the request: no more resends (until [`Self::sent`]).
    pub fn acknowledged(&mut self) {
        self.due = None;
    }

    /// The request was published (again) at `at`: the next resend is one (growing) timeout
    /// later.
    pub fn sent(&mut self, at: Instant) {
        let factor = 1u32 << self.sent.min(MAX_BACKOFF_FACTOR.ilog2());
        self.sent += 1;
        self.due = self.timeout.map(|timeout| at + timeout * factor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn waits_double_up_to_the_cap() {
        let start = Instant::now();
        let mut schedule = Resend::new(Some(SECOND), start);
        let mut waits = Vec::new();
        let mut at = start;
        for _ in 0..5 {
            let due = schedule.due().expect("unacknowledged");
            waits.push((due - at).as_secs());
            at = due;
            schedule.sent(at);
        }
        assert_eq!(waits, [1, 2, 4, 4, 4]);
        assert_eq!(schedule.times_sent(), 6);
    }

    #[test]
    fn acknowledgement_stops_resends_until_the_next_publication() {
        let start = Instant::now();
        let mut schedule = Resend::new(Some(SECOND), start);
        schedule.acknowledged();
        assert_eq!(schedule.due(), None);
        // Published again (after a reconnection): an acknowledgement is awaited again.
        schedule.sent(start + SECOND);
        assert_eq!(schedule.due(), Some(start + SECOND * 3));
    }

    #[test]
    fn without_a_timeout_nothing_is_resent() {
        let schedule = Resend::new(None, Instant::now());
        assert_eq!(schedule.due(), None);
        assert_eq!(schedule.times_sent(), 1);
    }
}
