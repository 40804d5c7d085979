//! Deadlines as a remaining budget: what a sender writes is the milliseconds left on its own
//! monotonic clock ([`remaining_ms`]); a receiver counts them from the message's arrival
//! on its own clock (the GPU worker: `service::intake::localize_deadlines`). Only an item
//! from a sender that predates the budget is read on the wall clock.

use std::time::Instant;

/// Whole milliseconds from `now` until `deadline`, rounded up (so time left is never sent as
/// 0); 0 once `deadline` is not after `now`.
pub fn remaining_ms(deadline: Instant, now: Instant) -> u64 {
    let left = deadline.saturating_duration_since(now);
    let whole = left.as_millis() + u128::from(!left.subsec_nanos().is_multiple_of(1_000_000));
    u64::try_from(whole).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::wire::BatchItem;

    fn item(deadline_ms: u64, budget_ms: u64) -> BatchItem {
        BatchItem {
            request_id: "r".into(),
            reply_to: "_INBOX.r".into(),
            index: 0,
            total: 1,
            len: 1,
            dims: 0,
            deadline_ms,
            trace: None,
            bundle_to: None,
            budget_ms,
            ..Default::default()
        }
    }

    #[test]
    fn remaining_time_rounds_up_and_stops_at_zero() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(remaining_ms(now + ms(250), now), 250);
        assert_eq!(remaining_ms(now + Duration::from_micros(1), now), 1);
        assert_eq!(remaining_ms(now + Duration::from_micros(2_500), now), 3);
        assert_eq!(remaining_ms(now, now), 0);
        assert_eq!(remaining_ms(now, now + ms(5)), 0);
    }

    #[test]
    fn a_zero_budget_is_not_written_and_older_items_decode_without_one() {
        let legacy = item(42, 0);
        let bytes = crate::wire::encode(&legacy).expect("encodes");
        let fields: serde_json::Value = rmp_serde::from_slice(&bytes).expect("a map");
        assert!(fields.get("budget_ms").is_none(), "{fields}");
        assert_eq!(
            crate::wire::decode::<BatchItem>(&bytes).expect("decodes"),
            legacy
        );
        let budgeted = item(42, 7);
        let bytes = crate::wire::encode(&budgeted).expect("encodes");
        let fields: serde_json::Value = rmp_serde::from_slice(&bytes).expect("a map");
        assert_eq!(fields["budget_ms"], 7);
        assert_eq!(
            crate::wire::decode::<BatchItem>(&bytes).expect("decodes"),
            budgeted
        );
    }
}
