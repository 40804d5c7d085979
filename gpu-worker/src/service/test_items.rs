//! Batch items for the service's unit tests.

use common::wire::BatchItem;

/// Sequence `index` of `total` of request `request_id` (answered on `reply_to`), `len`
/// tokens long, with no deadline, trace or bundle subject.
pub(super) fn item(
    request_id: &str,
    reply_to: &str,
    index: u32,
    total: u32,
    len: u32,
) -> BatchItem {
    BatchItem {
        request_id: request_id.into(),
        reply_to: reply_to.into(),
        index,
        total,
        len,
        dims: 0,
        deadline_ms: 0,
        trace: None,
        bundle_to: None,
        budget_ms: 0,
        ..Default::default()
    }
}
