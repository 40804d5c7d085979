//! The deadline rules a request meets before it is tokenized: not passed, and not further
//! away than the work queue keeps a batch (`[queue] max_age_s`). The server drops a batch
//! at that age without a word to anyone, so a request waiting past it would wait in vain
//! until its own deadline; it is refused at once instead, naming the setting.

use std::time::Duration;

use common::wire::{self, ErrorCode, ErrorReply};

/// Checks request `id`'s `deadline_ms` (`None` or 0: no deadline) at `now_ms` against
/// `max_age`, the longest a batch stays in the work queue.
pub fn check(
    id: &str,
    deadline_ms: Option<u64>,
    now_ms: u64,
    max_age: Duration,
) -> Result<(), ErrorReply> {
    let deadline_ms = deadline_ms.unwrap_or(0);
    if wire::deadline_passed(deadline_ms, now_ms) {
        return Err(ErrorReply::new(
            Some(id.to_owned()),
            ErrorCode::DeadlineExceeded,
            "the request's deadline passed before it was tokenized",
        ));
    }
    let max_age_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
    if deadline_ms != 0 && deadline_ms - now_ms > max_age_ms {
        return Err(ErrorReply::new(
            Some(id.to_owned()),
            ErrorCode::InvalidRequest,
            format!(
                "the request's deadline is {:.1} s away, but the work queue drops a batch after \
                 {:.1} s ([queue] max_age_s); shorten the request's timeout or raise max_age_s",
                (deadline_ms - now_ms) as f64 / 1000.0,
                max_age.as_secs_f64()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_AGE: Duration = Duration::from_secs(300);

    #[test]
    fn no_deadline_and_deadlines_within_the_queue_age_pass() {
        assert!(check("r", None, 1_000, MAX_AGE).is_ok());
        assert!(check("r", Some(0), 1_000, MAX_AGE).is_ok());
        assert!(check("r", Some(1_000), 1_000, MAX_AGE).is_ok());
        assert!(check("r", Some(301_000), 1_000, MAX_AGE).is_ok());
    }

    #[test]
    fn passed_deadlines_are_refused_as_exceeded() {
        let error = check("r", Some(999), 1_000, MAX_AGE).unwrap_err();
        assert_eq!(error.error.code, ErrorCode::DeadlineExceeded);
        assert_eq!(error.id.as_deref(), Some("r"));
    }

    #[test]
    fn deadlines_beyond_the_queue_age_are_refused_naming_the_setting() {
        let error = check("r", Some(301_001), 1_000, MAX_AGE).unwrap_err();
        assert_eq!(error.error.code, ErrorCode::InvalidRequest);
        assert_eq!(error.id.as_deref(), Some("r"));
        let message = &error.error.message;
        assert!(message.contains("300.0 s"), "{message}");
        assert!(message.contains("max_age_s"), "{message}");
    }
}
