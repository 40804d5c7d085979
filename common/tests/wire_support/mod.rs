//! Strategies and checks shared by the wire property tests (`wire_properties.rs`: decoders
//! never panic, round trips; `wire_consistency.rs`: the consistency checks). Each test crate
//! uses part of them.

#![allow(dead_code)]

use common::trace::RequestTrace;
use common::wire::{
    BatchItem, EmbedChunk, EmbedReply, EmbedRequest, ErrorCode, ErrorReply, InputType, ReplyBundle,
    RerankReply, RerankRequest, TokenBatch, WireError, WorkerKind, WorkerStatus, decode, encode,
};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Number, Value};
use std::fmt::Debug;

/// Fixed seed so that every run (and CI) checks the same cases.
pub const RNG_SEED: u64 = 0x5157_454e_3345_4d42;

/// The proptest settings of every property here: `cases` cases from the fixed seed, no
/// persistence files.
pub fn config(cases: u32) -> ProptestConfig {
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
pub fn check_decoder<T>(bytes: &[u8]) -> Result<(), TestCaseError>
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
pub fn check_all_decoders(bytes: &[u8]) -> Result<(), TestCaseError> {
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

pub fn json_leaf() -> impl Strategy<Value = Value> {
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

pub fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(FIELD_NAMES).prop_map(str::to_owned),
        1 => ".{0,8}",
    ]
}

/// Nested JSON values whose maps mostly use the wire types' field names.
pub fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(5, 96, 12, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..12).prop_map(Value::Array),
            prop::collection::vec((json_key(), inner), 0..14)
                .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

pub fn input_type() -> impl Strategy<Value = InputType> {
    prop_oneof![Just(InputType::Query), Just(InputType::Document)]
}

pub fn embed_request() -> impl Strategy<Value = EmbedRequest> {
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

pub fn rerank_request() -> impl Strategy<Value = RerankRequest> {
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

pub fn embed_chunk() -> impl Strategy<Value = EmbedChunk> {
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

pub fn batch_item(len: impl Strategy<Value = u32>) -> impl Strategy<Value = BatchItem> {
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

pub fn token_batch() -> impl Strategy<Value = TokenBatch> {
    (
        prop::collection::vec(any::<u32>(), 0..64),
        prop::collection::vec(batch_item(any::<u32>()), 0..8),
    )
        .prop_map(|(token_ids, items)| TokenBatch { token_ids, items })
}

pub fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(vec![
        ErrorCode::InvalidRequest,
        ErrorCode::TooManyTokens,
        ErrorCode::DeadlineExceeded,
        ErrorCode::Overloaded,
        ErrorCode::Internal,
    ])
}

pub fn error_reply() -> impl Strategy<Value = ErrorReply> {
    (proptest::option::of(".{0,16}"), error_code(), ".{0,32}")
        .prop_map(|(id, code, message)| ErrorReply::new(id, code, message))
}

pub fn worker_status() -> impl Strategy<Value = WorkerStatus> {
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
