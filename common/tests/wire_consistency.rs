//! Property tests for the consistency checks of `common::wire` (`EmbedChunk::vectors`,
//! `TokenBatch::validate`): they reject exactly the inconsistent messages, never panic, and
//! never wrap lengths. Seeded like `wire_properties.rs` (`wire_support::RNG_SEED`).

mod wire_support;

use common::wire::{BatchItem, EmbedChunk, TokenBatch, WireError, f32_le_bytes};
use proptest::prelude::*;
use wire_support::*;

// ---------------------------------------------------------------------------------------------
// EmbedChunk::vectors
// ---------------------------------------------------------------------------------------------

/// `count` and `dims` small (so consistent chunks are common) or large; `dims` stays below
/// 2^30 so that `count * dims * 4` fits a `u64` (see `vectors_rejects_overflowing_shape`).
fn chunk_shape() -> impl Strategy<Value = (u32, u32)> {
    prop_oneof![
        3 => (0u32..6, 0u32..6),
        1 => (any::<u32>(), 0u32..(1 << 30)),
    ]
}

proptest! {
    #![proptest_config(config(2000))]

    /// `vectors()` fails exactly when the byte length is not `count * dims * 4`, there is not
    /// one token count per item, or a non-empty chunk has zero-length vectors; otherwise it
    /// returns the little-endian floats row by row.
    #[test]
    fn vectors_errs_exactly_on_inconsistent_chunks(
        (count, dims) in chunk_shape(),
        byte_delta in prop_oneof![3 => Just(0i64), 1 => -5i64..5],
        token_delta in prop_oneof![3 => Just(0i64), 1 => -2i64..2],
        seed in any::<u8>(),
    ) {
        let expected_bytes = u128::from(count) * u128::from(dims) * 4;
        // Buffers are only built at the requested size when that is small.
        let want_bytes = if expected_bytes <= 4096 { expected_bytes as i64 } else { 0 };
        let want_tokens = if count <= 64 { i64::from(count) } else { 0 };
        let byte_len = usize::try_from((want_bytes + byte_delta).max(0)).expect("small");
        let token_len = usize::try_from((want_tokens + token_delta).max(0)).expect("small");
        let chunk = EmbedChunk {
            id: "c".into(),
            offset: 0,
            count,
            total: count,
            dims,
            embeddings: (0..byte_len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect(),
            tokens: vec![7; token_len],
            timings: None,
        };
        let consistent = byte_len as u128 == expected_bytes
            && token_len as u128 == u128::from(count)
            && (dims > 0 || count == 0);
        match chunk.vectors() {
            Ok(rows) => {
                prop_assert!(consistent, "accepted {count} x {dims} with {byte_len} bytes and {token_len} tokens");
                if dims == 0 {
                    prop_assert!(rows.is_empty());
                } else {
                    prop_assert_eq!(rows.len(), count as usize);
                    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
                    prop_assert!(rows.iter().all(|row| row.len() == dims as usize));
                    let rows_ref: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
                    prop_assert_eq!(f32_le_bytes(rows_ref), chunk.embeddings.clone());
                    prop_assert_eq!(flat.len() * 4, byte_len);
                }
            }
            Err(error) => {
                prop_assert!(!consistent, "rejected a consistent chunk: {error}");
                prop_assert!(matches!(error, WireError::Inconsistent(_)));
                prop_assert!(!error.to_string().is_empty());
            }
        }
    }

    /// On fully arbitrary chunks `vectors()` does not panic.
    #[test]
    fn vectors_never_panics_on_arbitrary_chunks(chunk in embed_chunk()) {
        let _ = chunk.vectors();
    }
}

/// `count * dims * 4` overflows `usize` for large `count` and `dims`: `vectors()` must say the
/// chunk is inconsistent instead of panicking ("attempt to multiply with overflow"). Found by
/// this suite (docs/fuzzing.md); the size is now computed in u128.
#[test]
fn vectors_rejects_overflowing_shape() {
    for (count, dims) in [(u32::MAX, u32::MAX), (1 << 31, 1 << 31), (1 << 16, 1 << 30)] {
        let chunk = EmbedChunk {
            id: "c".into(),
            offset: 0,
            count,
            total: count,
            dims,
            embeddings: Vec::new(),
            tokens: Vec::new(),
            timings: None,
        };
        assert!(chunk.vectors().is_err(), "{count} x {dims}");
    }
}

// ---------------------------------------------------------------------------------------------
// TokenBatch::validate
// ---------------------------------------------------------------------------------------------

/// Items whose lengths are mostly huge, so that their sum passes `u32::MAX`.
fn huge_len() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(u32::MAX),
        Just(u32::MAX - 1),
        Just(1 << 31),
        (u32::MAX - 16)..=u32::MAX,
        any::<u32>(),
        0u32..4,
    ]
}

/// A batch whose items cover its tokens exactly, with lengths of at least one.
fn consistent_batch() -> impl Strategy<Value = TokenBatch> {
    prop::collection::vec(batch_item(1u32..12), 0..10).prop_flat_map(|items| {
        let total: usize = items.iter().map(|item| item.len as usize).sum();
        prop::collection::vec(any::<u32>(), total).prop_map(move |token_ids| TokenBatch {
            token_ids,
            items: items.clone(),
        })
    })
}

proptest! {
    #![proptest_config(config(2000))]

    /// `validate()` accepts exactly the batches whose item lengths (summed without overflow)
    /// equal the token count and are all non-zero; huge lengths do not wrap around.
    #[test]
    fn validate_errs_exactly_on_inconsistent_batches(
        items in prop::collection::vec(batch_item(huge_len()), 0..40),
        token_len in prop_oneof![0usize..64, Just(0)],
    ) {
        let batch = TokenBatch { token_ids: vec![1; token_len], items };
        let sum: u128 = batch.items.iter().map(|item| u128::from(item.len)).sum();
        let valid = sum == token_len as u128 && batch.items.iter().all(|item| item.len > 0);
        match batch.validate() {
            Ok(()) => prop_assert!(valid),
            Err(error) => {
                prop_assert!(!valid, "rejected a valid batch: {error}");
                prop_assert!(matches!(error, WireError::Inconsistent(_)));
            }
        }
    }

    /// Consistent batches pass; removing a token, adding one, or zeroing an item fails.
    #[test]
    fn validate_accepts_consistent_batches_and_rejects_edits(
        batch in consistent_batch(),
        at in any::<prop::sample::Index>(),
    ) {
        prop_assert!(batch.validate().is_ok());
        let mut longer = batch.clone();
        longer.token_ids.push(0);
        prop_assert!(longer.validate().is_err());
        if !batch.items.is_empty() {
            let mut shorter = batch.clone();
            shorter.token_ids.pop();
            prop_assert!(shorter.validate().is_err());
            let mut zeroed = batch.clone();
            let i = at.index(zeroed.items.len());
            let len = zeroed.items[i].len as usize;
            zeroed.items[i].len = 0;
            zeroed.token_ids.truncate(zeroed.token_ids.len() - len);
            prop_assert!(zeroed.validate().is_err());
        }
    }
}

/// Lengths whose sum is 2^32 (0 when summed in `u32`) or 2^33 must not match an empty buffer.
#[test]
fn validate_does_not_wrap_lengths_past_u32() {
    let item = |len| BatchItem::new("r", "_INBOX.1", 0, 1, len);
    for lens in [
        vec![u32::MAX, 1],
        vec![1 << 31, 1 << 31],
        vec![u32::MAX, u32::MAX, 2],
        vec![u32::MAX; 1000],
    ] {
        let batch = TokenBatch {
            token_ids: Vec::new(),
            items: lens.into_iter().map(item).collect(),
        };
        let error = batch
            .validate()
            .expect_err("lengths that wrap to 0 must not pass");
        assert!(error.to_string().contains("items cover"), "{error}");
    }
}
