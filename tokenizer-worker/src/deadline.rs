//! A request's deadline as this worker keeps it: on its own monotonic clock, counted from the
//! request's arrival ([`Receipt`]), so a wall clock that runs behind or ahead of the
//! requester's changes nothing. The request's budget is its `timeout_ms`; a requester that
//! sends only the absolute `deadline_ms` (one that predates `timeout_ms`) has it read once, on
//! this machine's wall clock, at arrival.
//!
//! The rules a request meets before it is tokenized ([`check`]): budget left, and not more
//! than the work queue keeps a batch (`[queue] max_age_s`). The server drops a batch at that
//! age without a word to anyone, so a request waiting past it would wait in vain until its
//! own deadline; it is refused at once instead, naming the setting.

use std::time::{Duration, Instant};

use common::wire::{ErrorCode, ErrorReply, remaining_ms};

/// When a request arrived, on both clocks.
#[derive(Debug, Clone, Copy)]
pub struct Receipt {
    /// On the monotonic clock: deadlines count from here.
    pub at: Instant,
    /// Unix milliseconds on this machine's wall clock: only to read a legacy `deadline_ms`
    /// (the one place this worker reads its wall clock for a deadline).
    pub unix_ms: u64,
}

impl Receipt {
    /// Now.
    pub fn now() -> Self {
        Self {
            at: Instant::now(),
            unix_ms: common::wire::now_ms(),
        }
    }
}

/// A checked request's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Deadline {
    /// When the answer stops being useful, on this process's monotonic clock; `None`: the
    /// request has no deadline.
    pub at: Option<Instant>,
    /// The requester's absolute deadline as it sent it (Unix milliseconds on its clock; 0:
    /// none, as for a request that gave only `timeout_ms`), passed on unchanged as the batch
    /// items' `deadline_ms`: for logs, and for GPU workers that predate `budget_ms`, which
    /// then treat the request exactly as before `timeout_ms` existed.
    pub unix_ms: u64,
}

/// What is left at `now` of a deadline (`at`, on the monotonic clock) as a batch item's
/// `budget_ms`: 0 for no deadline, and at least 1 otherwise (0 would read as none), so a
/// used-up budget still expires at once downstream.
pub fn budget_ms(at: Option<Instant>, now: Instant) -> u64 {
    at.map_or(0, |at| remaining_ms(at, now).max(1))
}

/// Checks request `id`'s deadline, which arrived at `received`: its `timeout_ms` when given
/// (0: used up), else its legacy `deadline_ms` (`None` or 0: no deadline) read on the wall
/// clock. Refuses a used-up budget with `deadline_exceeded`, and a budget longer than
/// `max_age` (the longest a batch stays in the work queue) with `invalid_request`.
pub fn check(
    id: &str,
    timeout_ms: Option<u64>,
    deadline_ms: Option<u64>,
    received: Receipt,
    max_age: Duration,
) -> Result<Deadline, ErrorReply> {
    let legacy_ms = deadline_ms.filter(|&ms| ms != 0);
    let budget_ms = match (timeout_ms, legacy_ms) {
        (Some(timeout_ms), _) => timeout_ms,
        (None, Some(deadline_ms)) => deadline_ms.saturating_sub(received.unix_ms),
        (None, None) => return Ok(Deadline::default()),
    };
    if budget_ms == 0 {
        return Err(ErrorReply::new(
            Some(id.to_owned()),
            ErrorCode::DeadlineExceeded,
            "the request's deadline passed before it was tokenized",
        ));
    }
    let max_age_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
    if budget_ms > max_age_ms {
        return Err(ErrorReply::new(
            Some(id.to_owned()),
            ErrorCode::InvalidRequest,
            format!(
                "the request's deadline is {:.1} s away, but the work queue drops a batch after \
                 {:.1} s ([queue] max_age_s); shorten the request's timeout or raise max_age_s",
                budget_ms as f64 / 1000.0,
                max_age.as_secs_f64()
            ),
        ));
    }
    Ok(Deadline {
        // Within max_age: representable.
        at: received.at.checked_add(Duration::from_millis(budget_ms)),
        unix_ms: legacy_ms.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_AGE: Duration = Duration::from_secs(300);

    /// A request received now, when this machine's wall clock reads `unix_ms`.
    fn at(unix_ms: u64) -> Receipt {
        Receipt {
            at: Instant::now(),
            unix_ms,
        }
    }

    #[test]
    fn no_deadline_and_deadlines_within_the_queue_age_pass() {
        let received = at(1_000);
        assert_eq!(
            check("r", None, None, received, MAX_AGE),
            Ok(Deadline::default())
        );
        assert_eq!(
            check("r", None, Some(0), received, MAX_AGE),
            Ok(Deadline::default())
        );
        let legacy = check("r", None, Some(301_000), received, MAX_AGE).unwrap();
        assert_eq!(legacy.at, Some(received.at + MAX_AGE));
        assert_eq!(legacy.unix_ms, 301_000);
        let budget = check("r", Some(300_000), None, received, MAX_AGE).unwrap();
        assert_eq!(budget.at, Some(received.at + MAX_AGE));
        assert_eq!(budget.unix_ms, 0, "no absolute deadline was sent");
    }

    #[test]
    fn the_timeout_rules_whatever_the_wall_clocks_say() {
        // The requester's absolute deadline read on a clock a minute behind (61 s away, past
        // a 45 s queue age) or a minute ahead (passed long ago): the timeout is what counts,
        // and the absolute time is kept for logs.
        let max_age = Duration::from_secs(45);
        for wall in [1_000, 121_000] {
            let received = at(wall);
            let deadline = check("r", Some(20_000), Some(62_000), received, max_age).unwrap();
            assert_eq!(deadline.at, Some(received.at + Duration::from_secs(20)));
            assert_eq!(deadline.unix_ms, 62_000);
        }
    }

    #[test]
    fn used_up_budgets_are_refused_as_exceeded() {
        for (timeout_ms, deadline_ms) in [(None, Some(999)), (None, Some(1_000)), (Some(0), None)] {
            let error = check("r", timeout_ms, deadline_ms, at(1_000), MAX_AGE).unwrap_err();
            assert_eq!(error.error.code, ErrorCode::DeadlineExceeded);
            assert_eq!(error.id.as_deref(), Some("r"));
        }
        // A used-up timeout is exceeded even beside an absolute deadline far ahead.
        let error = check("r", Some(0), Some(u64::MAX), at(1_000), MAX_AGE).unwrap_err();
        assert_eq!(error.error.code, ErrorCode::DeadlineExceeded);
    }

    #[test]
    fn budgets_beyond_the_queue_age_are_refused_naming_the_setting() {
        for (timeout_ms, deadline_ms) in [(None, Some(301_001)), (Some(300_001), Some(2_000))] {
            let error = check("r", timeout_ms, deadline_ms, at(1_000), MAX_AGE).unwrap_err();
            assert_eq!(error.error.code, ErrorCode::InvalidRequest);
            assert_eq!(error.id.as_deref(), Some("r"));
            let message = &error.error.message;
            assert!(message.contains("300.0 s"), "{message}");
            assert!(message.contains("max_age_s"), "{message}");
        }
    }

    #[test]
    fn what_is_left_goes_on_as_a_budget_of_at_least_one_ms() {
        let now = Instant::now();
        let at = Some(now + Duration::from_millis(1_500));
        assert_eq!(budget_ms(at, now), 1_500);
        assert_eq!(budget_ms(at, now + Duration::from_millis(1_000)), 500);
        // Used up: 1 ms, never 0 (which means no deadline).
        assert_eq!(budget_ms(at, now + Duration::from_secs(2)), 1);
        assert_eq!(budget_ms(None, now), 0);
    }
}
