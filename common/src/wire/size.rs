//! Upper bounds of the encoded size of a [`TokenBatch`], so a tokenizer worker can close a
//! batch before it outgrows the server's `max_payload` without encoding it first.
//!
//! Each bound counts every MessagePack header at its widest (strings and arrays with 32-bit
//! lengths, integers with 64-bit values where the field is a `u64`), every field name as the
//! key it is written as, and an optional field as present whenever it is `Some`: so it is never
//! below the real size, whatever the values (the tests check it against `rmp_serde` on the
//! largest items the caps allow). It is also never far above: a few dozen bytes per item and at
//! most 4 bytes per token.

use super::limits::{MAX_ID_BYTES, MAX_SUBJECT_BYTES};
use super::{BatchItem, TokenBatch};
use crate::trace::{MAX_REQUEST_ID_LEN, RequestTrace};

/// Widest string header (`str 32`: a marker and four length bytes).
const STR_HEADER: usize = 5;

/// Widest array header (`array 32`).
const ARRAY_HEADER: usize = 5;

/// Header of a map of at most 15 entries (`fixmap`), as every map of a batch is.
const FIXMAP_HEADER: usize = 1;

/// Widest encoded `u32` (`uint 32`: a marker and four bytes).
const U32_BYTES: usize = 5;

/// Widest encoded `u64` (`uint 64`).
const U64_BYTES: usize = 9;

/// A `bool` (one byte: `true` or `false`).
const BOOL_BYTES: usize = 1;

/// An absent optional value written as `nil`.
const NIL: usize = 1;

/// Most bytes one token id takes in `token_ids` (a `u32`).
pub const TOKEN_BYTES: usize = U32_BYTES;

/// Length of a `traceparent` as this service writes it (`00-{32}-{16}-{2}`).
const TRACEPARENT_LEN: usize = 55;

/// A field name as a map key (a `fixstr`: every name here is under 32 bytes).
const fn key(name: &str) -> usize {
    1 + name.len()
}

/// A string of `len` bytes.
const fn string(len: usize) -> usize {
    STR_HEADER + len
}

/// What a batch adds around its items and tokens: `{"token_ids": [..], "items": [..]}`
/// without the elements.
pub const BATCH_OVERHEAD: usize =
    FIXMAP_HEADER + key("token_ids") + ARRAY_HEADER + key("items") + ARRAY_HEADER;

/// An item's size besides its strings and trace: the map header, every key, every number at
/// its widest.
const ITEM_FIXED: usize = FIXMAP_HEADER
    + key("request_id")
    + key("reply_to")
    + key("index")
    + U32_BYTES
    + key("total")
    + U32_BYTES
    + key("len")
    + U32_BYTES
    + key("dims")
    + U32_BYTES
    + key("deadline_ms")
    + U64_BYTES
    + key("trace")
    + key("bundle_to")
    + key("budget_ms")
    + U64_BYTES
    + key("unnormalized")
    + BOOL_BYTES
    + super::timings::ITEM_TIMINGS_BYTES;

/// A trace context's size besides its strings.
const TRACE_FIXED: usize = FIXMAP_HEADER + key("request_id") + key("traceparent");

/// The largest [`item_size_bound`] of a request within the caps: an id of
/// [`MAX_ID_BYTES`], a reply subject and a `bundle_to` of [`MAX_SUBJECT_BYTES`], a trace
/// with the longest request id. With [`BATCH_OVERHEAD`] and the tokens of the longest
/// sequence, what a batch of one sequence can take.
pub const MAX_ITEM_BYTES: usize = ITEM_FIXED
    + string(MAX_ID_BYTES)
    + 2 * string(MAX_SUBJECT_BYTES)
    + TRACE_FIXED
    + string(MAX_REQUEST_ID_LEN)
    + string(TRACEPARENT_LEN);

/// An optional string: its size when present, `nil` otherwise.
fn optional_string(value: Option<&String>) -> usize {
    value.map_or(NIL, |value| string(value.len()))
}

/// Upper bound of the encoded size of `item` (its tokens aside; see [`sequence_size_bound`]).
pub fn item_size_bound(item: &BatchItem) -> usize {
    ITEM_FIXED
        + string(item.request_id.len())
        + string(item.reply_to.len())
        + optional_string(item.bundle_to.as_ref())
        + item.trace.as_ref().map_or(NIL, trace_size_bound)
}

/// Upper bound of the encoded size of a trace context.
fn trace_size_bound(trace: &RequestTrace) -> usize {
    TRACE_FIXED
        + optional_string(trace.request_id.as_ref())
        + optional_string(trace.traceparent.as_ref())
}

/// Upper bound of what one sequence (`item` and its `tokens` token ids) adds to a batch.
pub fn sequence_size_bound(item: &BatchItem, tokens: usize) -> usize {
    item_size_bound(item) + tokens * TOKEN_BYTES
}

/// Upper bound of the encoded size of `batch`.
pub fn batch_size_bound(batch: &TokenBatch) -> usize {
    BATCH_OVERHEAD
        + batch.token_ids.len() * TOKEN_BYTES
        + batch.items.iter().map(item_size_bound).sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{RequestTrace, TraceParent};
    use crate::wire::encode;

    /// The largest item the caps allow, every number at its widest.
    fn largest_item(len: u32) -> BatchItem {
        BatchItem {
            request_id: "i".repeat(MAX_ID_BYTES),
            reply_to: format!("_INBOX.{}", "r".repeat(MAX_SUBJECT_BYTES - 7)),
            index: u32::MAX,
            total: u32::MAX,
            len,
            dims: u32::MAX,
            deadline_ms: u64::MAX,
            trace: Some(RequestTrace::new(
                "t".repeat(MAX_REQUEST_ID_LEN),
                TraceParent {
                    trace_id: u128::MAX,
                    parent_id: u64::MAX,
                    flags: u8::MAX,
                },
            )),
            bundle_to: Some(format!("_INBOX.{}", "b".repeat(MAX_SUBJECT_BYTES - 7))),
            budget_ms: u64::MAX,
            unnormalized: true,
            timings: Some(crate::wire::ItemTimings {
                tokenize_ms: f32::MAX,
                sent_ms: f32::MAX,
                offered: true,
                received: None,
            }),
        }
    }

    /// The smallest item: everything optional absent, every number 0 or 1.
    fn smallest_item() -> BatchItem {
        BatchItem {
            request_id: String::new(),
            reply_to: "r".into(),
            index: 0,
            total: 1,
            len: 1,
            dims: 0,
            deadline_ms: 0,
            trace: None,
            bundle_to: None,
            budget_ms: 0,
            ..Default::default()
        }
    }

    #[test]
    fn the_bound_of_the_largest_item_holds_and_is_tight() {
        let item = largest_item(1);
        let real = encode(&item).unwrap().len();
        let bound = item_size_bound(&item);
        assert!(bound >= real, "bound {bound} < real {real}");
        // Only the string headers are counted wider than they are (str 8/16 against str 32).
        assert!(bound - real <= 20, "bound {bound} is far above real {real}");
        assert_eq!(bound, MAX_ITEM_BYTES);
    }

    #[test]
    fn batch_bounds_hold_for_adversarial_batches() {
        let mixed = vec![
            (largest_item(3), vec![u32::MAX; 3]),
            (smallest_item(), vec![0]),
            (
                BatchItem {
                    // Multi-byte characters: lengths count bytes.
                    request_id: "\u{1F600}".repeat(MAX_ID_BYTES / 4),
                    trace: Some(RequestTrace::default()),
                    ..largest_item(2)
                },
                vec![65_536, 255],
            ),
        ];
        let cases = [
            vec![(largest_item(8192), vec![u32::MAX; 8192])],
            (0..300)
                .map(|_| (largest_item(1), vec![u32::MAX]))
                .collect(),
            (0..40).map(|_| (smallest_item(), vec![1])).collect(),
            mixed,
        ];
        for sequences in cases {
            let mut batch = TokenBatch {
                token_ids: Vec::new(),
                items: Vec::new(),
            };
            let mut bound = BATCH_OVERHEAD;
            for (item, tokens) in sequences {
                bound += sequence_size_bound(&item, tokens.len());
                batch.token_ids.extend(tokens);
                batch.items.push(item);
            }
            let real = encode(&batch).unwrap().len();
            assert_eq!(bound, batch_size_bound(&batch));
            assert!(bound >= real, "bound {bound} < real {real}");
        }
    }
}
