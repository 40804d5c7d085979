//! When to retry a failed request, and how long to wait first.

use std::time::Duration;

/// Exponential backoff with jitter; a server's `Retry-After` replaces the computed wait.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Retries after the first attempt.
    pub retries: u32,
    /// Wait before the first retry (doubled for each further one).
    pub base: Duration,
    /// Longest wait between two attempts, `Retry-After` included.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            retries: 8,
            base: Duration::from_millis(250),
            max: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The wait before retry number `retry` (0 for the first), or `None` when the retries
    /// are spent. `retry_after` (the server's hint) replaces the exponential wait, plus up
    /// to a quarter more; `jitter` in `[0, 1)` spreads concurrent requests so they do not
    /// all come back at the same instant (the exponential wait is scaled by
    /// `0.5 + jitter / 2`, the hint by `1 + jitter / 4`).
    pub fn delay(
        &self,
        retry: u32,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Option<Duration> {
        if retry >= self.retries {
            return None;
        }
        let jitter = jitter.clamp(0.0, 1.0);
        let wait = match retry_after {
            Some(hint) => hint.mul_f64(1.0 + jitter / 4.0),
            None => {
                let exponential = self.base.saturating_mul(1u32 << retry.min(20));
                exponential.mul_f64(0.5 + jitter / 2.0)
            }
        };
        Some(wait.min(self.max))
    }
}

/// Parses a `Retry-After` header given in seconds (the form the gateway sends; an HTTP
/// date is ignored and the exponential wait applies).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(86_400.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_until_the_cap_and_stop_after_the_retries() {
        let backoff = Backoff {
            retries: 4,
            base: Duration::from_millis(100),
            max: Duration::from_millis(500),
        };
        let waits: Vec<_> = (0..5).map(|r| backoff.delay(r, None, 1.0)).collect();
        assert_eq!(
            waits,
            [100, 200, 400, 500]
                .map(|ms| Some(Duration::from_millis(ms)))
                .into_iter()
                .chain([None])
                .collect::<Vec<_>>()
        );
        assert_eq!(
            backoff.delay(1, None, 0.0),
            Some(Duration::from_millis(100))
        );
        assert_eq!(backoff.delay(30, None, 0.0), None);
    }

    #[test]
    fn retry_after_wins_but_is_capped() {
        let backoff = Backoff::default();
        let hint = Duration::from_secs(3);
        assert_eq!(backoff.delay(0, Some(hint), 0.0), Some(hint));
        assert_eq!(backoff.delay(0, Some(hint), 1.0), Some(hint.mul_f64(1.25)));
        assert_eq!(
            backoff.delay(0, Some(Duration::from_secs(3600)), 0.0),
            Some(backoff.max)
        );
        assert_eq!(parse_retry_after(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("NaN"), None);
    }
}
