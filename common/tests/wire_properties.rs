//! Property tests for the wire decoders in `common::wire`: decoders never panic, valid
//! messages round-trip (the consistency checks are in `wire_consistency.rs`).
//!
//! Every decoder a worker runs on bytes from NATS (`EmbedRequest`, `EmbedReply`, `TokenBatch`,
//! `WorkerStatus`, `ErrorReply`) must return `Ok` or `Err` for any input, never panic; valid
//! messages must survive an encode/decode round trip; and the consistency checks
//! (`EmbedChunk::vectors`, `TokenBatch::validate`) must reject exactly the inconsistent
//! messages. The runs are seeded (`RNG_SEED`) and write no persistence files; set
//! `PROPTEST_RNG_SEED` or `PROPTEST_CASES` to explore further. See `docs/fuzzing.md`.

mod wire_support;

use common::wire::{
    EmbedChunk, EmbedReply, EmbedRequest, ErrorReply, QueuedReply, ReplyBundle, RerankReply,
    RerankRequest, TokenBatch, WorkerStatus, decode, encode,
};
use proptest::prelude::*;
use serde_json::Value;
use wire_support::*;

// ---------------------------------------------------------------------------------------------
// Decoders never panic
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(2000))]

    /// Arbitrary bytes: every decoder returns `Ok` or a decode error with a message.
    #[test]
    fn decoders_survive_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_all_decoders(&bytes)?;
    }

    /// Arbitrary bytes behind a fixmap/map16 header of a plausible size, so that decoding goes
    /// past the first byte more often than with raw noise.
    #[test]
    fn decoders_survive_arbitrary_map_bodies(
        header in prop::sample::select(vec![0x81u8, 0x82, 0x87, 0x8e, 0xde]),
        body in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = vec![header];
        bytes.extend_from_slice(&body);
        check_all_decoders(&bytes)?;
    }

    /// Structured but arbitrary messages (nested JSON values as msgpack maps): no panic, and an
    /// error always says something.
    #[test]
    fn decoders_survive_arbitrary_json_values(value in json_value()) {
        let bytes = rmp_serde::to_vec_named(&value).expect("a JSON value always encodes");
        check_all_decoders(&bytes)?;
    }

    /// A valid message cut short or with one byte changed: no panic.
    #[test]
    fn decoders_survive_damaged_valid_messages(
        chunk in embed_chunk(),
        request in embed_request(),
        batch in token_batch(),
        cut in any::<prop::sample::Index>(),
        flip in any::<(prop::sample::Index, u8)>(),
    ) {
        for bytes in [
            encode(&chunk).expect("encode"),
            encode(&request).expect("encode"),
            encode(&batch).expect("encode"),
        ] {
            let truncated = &bytes[..cut.index(bytes.len())];
            prop_assert!(decode::<EmbedReply>(truncated).is_err());
            check_all_decoders(truncated)?;
            let mut changed = bytes.clone();
            let (at, xor) = flip;
            changed[at.index(bytes.len())] ^= xor;
            check_all_decoders(&changed)?;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(2000))]

    /// A request decodes to itself; `timeout_ms` is written only when set, and the same
    /// message from a requester that predates it (no such field) decodes with none.
    #[test]
    fn embed_request_round_trips(request in embed_request()) {
        let bytes = encode(&request).expect("encode");
        prop_assert_eq!(decode::<EmbedRequest>(&bytes).expect("decode"), request.clone());
        let mut fields: Value = rmp_serde::from_slice(&bytes).expect("a map");
        let map = fields.as_object_mut().expect("a map");
        prop_assert_eq!(map.remove("timeout_ms").is_some(), request.timeout_ms.is_some());
        let older = rmp_serde::to_vec_named(&fields).expect("encode");
        let want = EmbedRequest { timeout_ms: None, ..request };
        prop_assert_eq!(decode::<EmbedRequest>(&older).expect("decode"), want);
    }

    /// A rerank request decodes to itself; one without `ack` carries no `ack` field, so
    /// workers that predate it read it unchanged.
    #[test]
    fn rerank_request_round_trips(request in rerank_request()) {
        let bytes = encode(&request).expect("encode");
        prop_assert_eq!(decode::<RerankRequest>(&bytes).expect("decode"), request.clone());
        let fields: Value = rmp_serde::from_slice(&bytes).expect("a map");
        prop_assert_eq!(fields.get("ack").is_some(), request.ack);
        prop_assert_eq!(fields.get("timeout_ms").is_some(), request.timeout_ms.is_some());
    }

    /// An acknowledgement decodes as the rerank reply it is, never as a chunk or an error.
    #[test]
    fn queued_reply_decodes_as_a_rerank_acknowledgement(id in ".{0,16}", queued in any::<u32>()) {
        let reply = QueuedReply { id, queued };
        let bytes = encode(&reply).expect("encode");
        prop_assert_eq!(decode::<RerankReply>(&bytes).expect("decode"), RerankReply::Queued(reply));
    }

    /// A chunk decodes to itself, directly and as an `EmbedReply` (the untagged enum goes
    /// through serde's buffered content, which must keep `embeddings` as bytes).
    #[test]
    fn embed_chunk_round_trips(chunk in embed_chunk()) {
        let bytes = encode(&chunk).expect("encode");
        prop_assert_eq!(&decode::<EmbedChunk>(&bytes).expect("decode"), &chunk);
        prop_assert_eq!(decode::<EmbedReply>(&bytes).expect("decode"), EmbedReply::Chunk(chunk));
    }

    /// A bundle of chunks, errors and acknowledgements decodes to the same replies in order.
    #[test]
    fn reply_bundle_round_trips(
        replies in prop::collection::vec(
            prop_oneof![
                embed_chunk().prop_map(EmbedReply::Chunk),
                error_reply().prop_map(EmbedReply::Error),
                (".{0,16}", any::<u32>()).prop_map(|(id, queued)| EmbedReply::Queued(QueuedReply { id, queued })),
            ],
            0..20,
        )
    ) {
        let bundle = ReplyBundle { replies };
        let bytes = encode(&bundle).expect("encode");
        prop_assert_eq!(decode::<ReplyBundle>(&bytes).expect("decode"), bundle);
    }

    /// A batch decodes to itself; an item's `budget_ms` is written only when nonzero, and the
    /// same batch from a tokenizer worker that predates it decodes with none (0).
    #[test]
    fn token_batch_round_trips(batch in token_batch()) {
        let bytes = encode(&batch).expect("encode");
        prop_assert_eq!(decode::<TokenBatch>(&bytes).expect("decode"), batch.clone());
        let mut fields: Value = rmp_serde::from_slice(&bytes).expect("a map");
        let items = fields["items"].as_array_mut().expect("items");
        for (item, sent) in items.iter_mut().zip(&batch.items) {
            let map = item.as_object_mut().expect("an item map");
            prop_assert_eq!(map.remove("budget_ms").is_some(), sent.budget_ms != 0);
        }
        let older = rmp_serde::to_vec_named(&fields).expect("encode");
        let mut want = batch;
        for item in &mut want.items {
            item.budget_ms = 0;
        }
        prop_assert_eq!(decode::<TokenBatch>(&older).expect("decode"), want);
    }

    #[test]
    fn error_reply_round_trips(error in error_reply()) {
        let bytes = encode(&error).expect("encode");
        prop_assert_eq!(&decode::<ErrorReply>(&bytes).expect("decode"), &error);
        prop_assert_eq!(decode::<EmbedReply>(&bytes).expect("decode"), EmbedReply::Error(error));
        prop_assert!(decode::<EmbedChunk>(&bytes).is_err());
    }

    #[test]
    fn worker_status_round_trips(status in worker_status()) {
        let bytes = encode(&status).expect("encode");
        prop_assert_eq!(decode::<WorkerStatus>(&bytes).expect("decode"), status);
    }
}

// ---------------------------------------------------------------------------------------------
// Deep nesting
// ---------------------------------------------------------------------------------------------

/// Arrays nested `depth` deep under field `key` of a one-entry map.
fn nested(key: &str, depth: usize) -> Vec<u8> {
    let mut bytes = vec![0x81, 0xa0 | key.len() as u8];
    bytes.extend_from_slice(key.as_bytes());
    bytes.extend(std::iter::repeat_n(0x91, depth));
    bytes.push(0xc0);
    bytes
}

/// Nesting up to and past rmp-serde's depth limit (1024) neither overflows the default 2 MiB
/// test-thread stack nor panics, whether under a known field, an unknown one (skipped as
/// `IgnoredAny`) or inside the untagged `EmbedReply` (buffered as serde `Content`).
#[test]
fn decoders_survive_deep_nesting() {
    for key in ["id", "input", "items", "error", "unknown"] {
        for depth in [100, 1000, 1100, 5000] {
            let bytes = nested(key, depth);
            check_all_decoders(&bytes).unwrap_or_else(|e| panic!("{key} {depth}: {e}"));
        }
    }
}
