//! Property tests for the wire decoders in `common::wire`.
//!
//! Every decoder a worker runs on bytes from NATS (`EmbedRequest`, `EmbedReply`, `TokenBatch`,
//! `WorkerStatus`, `ErrorReply`) must return `Ok` or `Err` for any input, never panic; valid
//! messages must survive an encode/decode round trip; and the consistency checks
//! (`EmbedChunk::vectors`, `TokenBatch::validate`) must reject exactly the inconsistent
//! messages. The runs are seeded (`RNG_SEED`) and write no persistence files; set
//! `PROPTEST_RNG_SEED` or `PROPTEST_CASES` to explore further. See `docs/fuzzing.md`.

use common::trace::RequestTrace;
use common::wire::{
    BatchItem, EmbedChunk, EmbedReply, EmbedRequest, ErrorCode, ErrorReply, InputType, QueuedReply,
    ReplyBundle, RerankReply, RerankRequest, TokenBatch, WireError, WorkerKind, WorkerStatus,
    decode, encode, f32_le_bytes,
};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Number, Value};
use std::fmt::Debug;

/// Fixed seed so that every run (and CI) checks the same cases.
const RNG_SEED: u64 = 0x5157_454e_3345_4d42;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(RNG_SEED),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Decodes `bytes` as `T`; an error must be a decode error with a message. A value that decodes
/// must encode again and decode to itself.
fn check_decoder<T>(bytes: &[u8]) -> Result<(), TestCaseError>
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    match decode::<T>(bytes) {
        Ok(value) => {
            let again = encode(&value).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back: T = decode(&again).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, value);
        }
        Err(WireError::Decode(inner)) => {
            prop_assert!(!inner.to_string().is_empty(), "empty decode error message");
            let outer = WireError::Decode(inner).to_string();
            prop_assert!(outer.starts_with("cannot decode message: "), "{}", outer);
        }
        Err(other) => prop_assert!(false, "decode returned a non-decode error: {other}"),
    }
    Ok(())
}

/// Runs every decoder on `bytes`.
fn check_all_decoders(bytes: &[u8]) -> Result<(), TestCaseError> {
    check_decoder::<EmbedRequest>(bytes)?;
    check_decoder::<EmbedReply>(bytes)?;
    check_decoder::<TokenBatch>(bytes)?;
    check_decoder::<WorkerStatus>(bytes)?;
    check_decoder::<ErrorReply>(bytes)?;
    check_decoder::<RerankRequest>(bytes)?;
    check_decoder::<RerankReply>(bytes)?;
    check_decoder::<ReplyBundle>(bytes)?;
    // The checks behind a decoded message must not panic either.
    if let Ok(batch) = decode::<TokenBatch>(bytes) {
        let _ = batch.validate();
    }
    if let Ok(EmbedReply::Chunk(chunk)) = decode::<EmbedReply>(bytes) {
        let _ = chunk.vectors();
    }
    if let Ok(RerankReply::Chunk(chunk)) = decode::<RerankReply>(bytes) {
        let _ = chunk.validate();
    }
    Ok(())
}

/// Every field name of every wire type, so generated maps hit real fields often.
const FIELD_NAMES: &[&str] = &[
    "id",
    "input",
    "input_type",
    "instruction",
    "dimensions",
    "truncate",
    "deadline_ms",
    "timeout_ms",
    "budget_ms",
    "ack",
    "queued",
    "offset",
    "count",
    "total",
    "dims",
    "embeddings",
    "tokens",
    "error",
    "code",
    "message",
    "token_ids",
    "items",
    "request_id",
    "reply_to",
    "index",
    "len",
    "worker_id",
    "kind",
    "model",
    "loaded",
    "backend",
    "device",
    "device_memory_used",
    "device_memory_total",
    "hidden_size",
    "batches",
    "sequences",
    "in_flight",
    "started_ms",
];

/// Enum spellings the decoders know, plus near misses.
const ENUM_WORDS: &[&str] = &[
    "query",
    "document",
    "passage",
    "Query",
    "tokenizer",
    "gpu",
    "invalid_request",
    "too_many_tokens",
    "deadline_exceeded",
    "overloaded",
    "internal",
    "Internal",
    "",
];

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (0u64..300).prop_map(Value::from),
        any::<u32>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        prop::sample::select(ENUM_WORDS).prop_map(Value::from),
        prop::sample::select(FIELD_NAMES).prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ]
}

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(FIELD_NAMES).prop_map(str::to_owned),
        1 => ".{0,8}",
    ]
}

/// Nested JSON values whose maps mostly use the wire types' field names.
fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(5, 96, 12, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..12).prop_map(Value::Array),
            prop::collection::vec((json_key(), inner), 0..14)
                .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn input_type() -> impl Strategy<Value = InputType> {
    prop_oneof![Just(InputType::Query), Just(InputType::Document)]
}

fn embed_request() -> impl Strategy<Value = EmbedRequest> {
    (
        ".{0,16}",
        prop::collection::vec(".{0,24}", 0..8),
        input_type(),
        proptest::option::of(".{0,16}"),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
        any::<bool>(),
        proptest::option::of(".{0,16}"),
    )
        .prop_map(
            |(
                id,
                input,
                input_type,
                instruction,
                dimensions,
                truncate,
                deadline_ms,
                timeout_ms,
                ack,
                bundle_to,
            )| {
                EmbedRequest {
                    id,
                    input,
                    input_type,
                    instruction,
                    dimensions,
                    truncate,
                    deadline_ms,
                    timeout_ms,
                    ack,
                    bundle_to,
                    ..Default::default()
                }
            },
        )
}

fn rerank_request() -> impl Strategy<Value = RerankRequest> {
    (
        ".{0,16}",
        ".{0,24}",
        prop::collection::vec(".{0,24}", 0..8),
        proptest::option::of(".{0,16}"),
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
        any::<bool>(),
    )
        .prop_map(
            |(id, query, documents, instruction, truncate, deadline_ms, timeout_ms, ack)| {
                RerankRequest {
                    id,
                    query,
                    documents,
                    instruction,
                    truncate,
                    deadline_ms,
                    timeout_ms,
                    ack,
                    ..Default::default()
                }
            },
        )
}

fn embed_chunk() -> impl Strategy<Value = EmbedChunk> {
    (
        ".{0,16}",
        any::<[u32; 4]>(),
        prop::collection::vec(any::<u8>(), 0..256),
        prop::collection::vec(any::<u32>(), 0..16),
    )
        .prop_map(
            |(id, [offset, count, total, dims], embeddings, tokens)| EmbedChunk {
                id,
                offset,
                count,
                total,
                dims,
                embeddings,
                tokens,
                timings: None,
            },
        )
}

fn batch_item(len: impl Strategy<Value = u32>) -> impl Strategy<Value = BatchItem> {
    let trace = prop::option::of(
        (prop::option::of(".{0,12}"), prop::option::of(".{0,60}")).prop_map(
            |(request_id, traceparent)| RequestTrace {
                request_id,
                traceparent,
            },
        ),
    );
    (
        ".{0,12}",
        ".{0,12}",
        any::<[u32; 3]>(),
        len,
        any::<u64>(),
        trace,
        prop::option::of(".{0,12}"),
        prop_oneof![Just(0u64), any::<u64>()],
    )
        .prop_map(
            |(
                request_id,
                reply_to,
                [index, total, dims],
                len,
                deadline_ms,
                trace,
                bundle_to,
                budget_ms,
            )| {
                BatchItem {
                    request_id,
                    reply_to,
                    index,
                    total,
                    len,
                    dims,
                    deadline_ms,
                    trace,
                    bundle_to,
                    budget_ms,
                    ..Default::default()
                }
            },
        )
}

fn token_batch() -> impl Strategy<Value = TokenBatch> {
    (
        prop::collection::vec(any::<u32>(), 0..64),
        prop::collection::vec(batch_item(any::<u32>()), 0..8),
    )
        .prop_map(|(token_ids, items)| TokenBatch { token_ids, items })
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(vec![
        ErrorCode::InvalidRequest,
        ErrorCode::TooManyTokens,
        ErrorCode::DeadlineExceeded,
        ErrorCode::Overloaded,
        ErrorCode::Internal,
    ])
}

fn error_reply() -> impl Strategy<Value = ErrorReply> {
    (proptest::option::of(".{0,16}"), error_code(), ".{0,32}")
        .prop_map(|(id, code, message)| ErrorReply::new(id, code, message))
}

fn worker_status() -> impl Strategy<Value = WorkerStatus> {
    (
        (
            ".{0,16}",
            prop_oneof![
                Just(WorkerKind::Tokenizer),
                Just(WorkerKind::Gpu),
                Just(WorkerKind::RerankTokenizer),
                Just(WorkerKind::RerankGpu),
            ],
            ".{0,16}",
        ),
        any::<bool>(),
        proptest::option::of(".{0,8}"),
        proptest::option::of(".{0,16}"),
        proptest::option::of(any::<[u64; 2]>()),
        proptest::option::of(any::<u32>()),
        any::<[u64; 5]>(),
    )
        .prop_map(
            |((worker_id, kind, model), loaded, backend, device, memory, hidden_size, counters)| {
                let [batches, sequences, tokens, in_flight, started_ms] = counters;
                WorkerStatus {
                    worker_id,
                    kind,
                    model,
                    loaded,
                    backend,
                    device,
                    device_memory_used: memory.map(|m| m[0]),
                    device_memory_total: memory.map(|m| m[1]),
                    hidden_size,
                    batches,
                    sequences,
                    tokens,
                    in_flight,
                    started_ms,
                    unhealthy: None,
                    max_input_tokens: None,
                    max_batch_tokens: None,
                    route: Some("qwen-qwen3-embedding-4b".into()),
                    device_busy_ms: None,
                }
            },
        )
}

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
    let item = |len| BatchItem {
        request_id: "r".into(),
        reply_to: "_INBOX.1".into(),
        index: 0,
        total: 1,
        len,
        dims: 0,
        deadline_ms: 0,
        trace: None,
        bundle_to: None,
        budget_ms: 0,
        ..Default::default()
    };
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
