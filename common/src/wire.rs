//! Messages that cross NATS, encoded as MessagePack maps with named fields.
//!
//! The public API (`EmbedRequest` in, `EmbedChunk` or `ErrorReply` out; `RerankRequest` in,
//! `RerankChunk` or `ErrorReply` out) is documented in `docs/protocol.md`; any language's
//! msgpack library reads and writes it. `TokenBatch` is internal: the tokenizer workers send
//! it to the GPU workers (rerank batches hold formatted pairs, with `dims` 0). `WorkerStatus`
//! answers the status subject (`wire/status.rs`).
//!
//! Deadlines travel as a remaining budget (`timeout_ms` in requests, `budget_ms` in batch
//! items), which each stage turns into a deadline on its own monotonic clock when the message
//! arrives ([`budget`]): machines whose wall clocks disagree still agree on how long is left.
//! The absolute `deadline_ms` is still sent, for logs and for peers that predate the budget.
//!
//! [`limits`] caps the lengths of what a requester names (ids, subjects, instructions), which
//! every batch item copies; [`size`] bounds a batch's encoded size, so batches are cut before
//! they outgrow the server's `max_payload`.

mod budget;
pub mod limits;
pub mod size;
mod status;
pub mod timings;
pub mod tokenize;

use serde::{Deserialize, Serialize};

use crate::trace::RequestTrace;

pub use self::budget::remaining_ms;
pub use self::status::{WorkerKind, WorkerStatus};
pub use self::timings::{BatchPath, ItemTimings, StageTimings};

/// Whether a text is a search query (gets the instruction template) or a document (taken as is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    /// Formatted as `Instruct: {instruction}\nQuery:{text}`.
    Query,
    /// Embedded as written. `passage` is accepted as a synonym.
    #[default]
    #[serde(alias = "passage")]
    Document,
}

/// Which end of an over-long input truncation keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TruncationDirection {
    /// Cut tokens from the left (the start): the end of the text is kept (TEI `Left`,
    /// Cohere `START`).
    Left,
    /// Cut tokens from the right (the end): the start of the text is kept (TEI `Right`,
    /// Cohere `END`).
    #[default]
    Right,
}

/// The traffic class of a request: interactive work goes before bulk work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Latency matters (queries, small requests).
    #[default]
    Interactive,
    /// Throughput matters (indexing jobs, large document batches).
    Bulk,
}

/// A public embedding request, published on the request subject with a reply subject.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EmbedRequest {
    /// Caller's id, echoed in every reply so replies can be matched to requests.
    pub id: String,
    /// The texts to embed; replies cover them in this order (by `offset`).
    pub input: Vec<String>,
    /// Query or document; documents by default.
    #[serde(default)]
    pub input_type: InputType,
    /// Task description for queries; the configured default task when absent.
    #[serde(default)]
    pub instruction: Option<String>,
    /// Matryoshka output size (1..=hidden); the full hidden size when absent.
    #[serde(default)]
    pub dimensions: Option<u32>,
    /// Cut inputs longer than the token limit (keeping the final `<|endoftext|>`) instead of
    /// rejecting them. The worker's configured default applies when absent.
    #[serde(default)]
    pub truncate: Option<bool>,
    /// Unix time in milliseconds after which the caller no longer wants the answer, on the
    /// caller's clock. Legacy: read (on the worker's own wall clock) only when `timeout_ms` is
    /// absent; otherwise for logs.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Milliseconds the caller still gives the request as it sends it; each stage counts them
    /// from the message's arrival on its own monotonic clock and answers `deadline_exceeded`
    /// when they run out (0: already out). Rules over `deadline_ms` when both are set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Ask the tokenizer worker for a [`QueuedReply`] once every input is durably in the work
    /// queue, so a requester can publish again when none comes (the worker that took the
    /// request died). Off when absent; older requesters never see the extra reply.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ack: bool,
    /// A subject where the workers may send this request's chunks and acknowledgement packed
    /// with other requests' in one [`ReplyBundle`] (those that name the same subject), instead
    /// of one message each on the reply subject. Errors always go to the reply subject. Off
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_to: Option<String>,
    /// Which end truncation keeps (with `truncate`); the right end is cut when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncation_direction: Option<TruncationDirection>,
    /// The request's traffic class; chosen by the tokenizer worker from its size when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// L2-normalize the vectors (after `dimensions` cuts them); `false` returns them as
    /// pooled. Normalized when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<bool>,
}

/// The acknowledgement a tokenizer worker sends (when the request set `ack`) once all of a
/// request's inputs are durably queued for the GPU workers: from then on JetStream, not the
/// tokenizer worker, holds the work, and redelivers it if a GPU worker dies. Not sent for a
/// request answered with an error (the error is the final reply).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedReply {
    /// The request's id.
    pub id: String,
    /// Inputs now queued (the length of the request's `input`).
    pub queued: u32,
}

/// One slice of the answer to an `EmbedRequest`: items `offset..offset + count` of `total`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedChunk {
    /// The request's id.
    pub id: String,
    /// Index of the first item of this chunk in the request's `input`.
    pub offset: u32,
    /// Number of items in this chunk.
    pub count: u32,
    /// Number of items in the whole request: the caller is done when it holds `total`.
    pub total: u32,
    /// Length of each vector.
    pub dims: u32,
    /// `count * dims` little-endian f32 values, row after row.
    #[serde(with = "serde_bytes")]
    pub embeddings: Vec<u8>,
    /// Tokens the model read for each item (template and `<|endoftext|>` included).
    pub tokens: Vec<u32>,
    /// Where the request spent its time, per stage ([`timings`]); absent from older workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<StageTimings>,
}

impl EmbedChunk {
    /// Decodes `embeddings` into one vector per item. Fails when the byte length does not
    /// match `count * dims`, when the token counts are not one per item, or when a non-empty
    /// chunk claims zero-length vectors.
    pub fn vectors(&self) -> Result<Vec<Vec<f32>>, WireError> {
        let dims = self.dims as usize;
        // u128: a hostile `count * dims * 4` must not overflow (it would panic or wrap).
        let expected = u128::from(self.count) * u128::from(self.dims) * 4;
        let consistent = self.embeddings.len() as u128 == expected
            && self.tokens.len() == self.count as usize
            && (dims > 0 || self.count == 0);
        if !consistent {
            return Err(WireError::Inconsistent(format!(
                "chunk of {} items x {dims} dims needs {expected} bytes and {} token counts \
                 (and dims > 0), got {} bytes and {} token counts",
                self.count,
                self.count,
                self.embeddings.len(),
                self.tokens.len()
            )));
        }
        if dims == 0 {
            return Ok(Vec::new());
        }
        Ok(self
            .embeddings
            .chunks_exact(dims * 4)
            .map(|row| {
                row.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect()
            })
            .collect())
    }
}

/// A public rerank request, published on the rerank subject with a reply subject: score each
/// document's relevance to the query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RerankRequest {
    /// Caller's id, echoed in every reply.
    pub id: String,
    /// The query every document is judged against (an empty string is valid).
    pub query: String,
    /// The documents to score; replies cover them in this order (by `offset`).
    pub documents: Vec<String>,
    /// Task description in the reranker prompt; the worker's default when absent.
    #[serde(default)]
    pub instruction: Option<String>,
    /// Shorten documents (never the query) that make a pair longer than the token limit
    /// instead of failing; the worker's setting when absent.
    #[serde(default)]
    pub truncate: Option<bool>,
    /// Unix time in milliseconds after which the answer is useless, on the caller's clock;
    /// legacy, as [`EmbedRequest::deadline_ms`].
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Milliseconds the caller still gives the request as it sends it, as
    /// [`EmbedRequest::timeout_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Ask the rerank tokenizer worker for a [`QueuedReply`] (`queued`: the number of
    /// documents) once every document is durably in the work queue, as for
    /// [`EmbedRequest::ack`]. Off when absent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ack: bool,
    /// The request's traffic class; chosen by the rerank tokenizer worker from its size when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
}

/// One slice of the answer to a `RerankRequest`: documents `offset..offset + count` of
/// `total`, one value per document in each list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerankChunk {
    /// The request's id.
    pub id: String,
    /// Index of the first document of this chunk in the request's `documents`.
    pub offset: u32,
    /// Number of documents in this chunk.
    pub count: u32,
    /// Number of documents in the whole request: the caller is done when it holds `total`.
    pub total: u32,
    /// Relevance of each document, the probability of `yes` against `no`, in `[0, 1]`.
    pub scores: Vec<f32>,
    /// Logit of `yes` at the last position, per document.
    pub logit_yes: Vec<f32>,
    /// Logit of `no` at the last position, per document.
    pub logit_no: Vec<f32>,
    /// Tokens the model read per pair (the whole prompt).
    pub tokens: Vec<u32>,
    /// Where the request spent its time, per stage ([`timings`]); absent from older workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<StageTimings>,
}

impl RerankChunk {
    /// Checks that every list holds one value per document.
    pub fn validate(&self) -> Result<(), WireError> {
        let count = self.count as usize;
        let lengths = [
            self.scores.len(),
            self.logit_yes.len(),
            self.logit_no.len(),
            self.tokens.len(),
        ];
        if lengths.iter().any(|&len| len != count) {
            return Err(WireError::Inconsistent(format!(
                "rerank chunk of {count} documents holds {} scores, {} yes logits, {} no logits \
                 and {} token counts",
                lengths[0], lengths[1], lengths[2], lengths[3]
            )));
        }
        Ok(())
    }
}

/// Any message a rerank requester can receive on its reply subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RerankReply {
    /// A slice of the answer.
    Chunk(RerankChunk),
    /// The request failed.
    Error(ErrorReply),
    /// The request's documents are queued (only for requests that set `ack`); chunks follow.
    Queued(QueuedReply),
}

/// Packs vectors as little-endian f32 bytes, row after row (the `embeddings` field).
pub fn f32_le_bytes<'a>(rows: impl IntoIterator<Item = &'a [f32]>) -> Vec<u8> {
    rows.into_iter()
        .flat_map(|row| row.iter().flat_map(|v| v.to_le_bytes()))
        .collect()
}

/// Machine-readable reason of a failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or a field is out of range.
    InvalidRequest,
    /// An input has more tokens than allowed and truncation is off.
    TooManyTokens,
    /// The request's deadline passed before the work was done.
    DeadlineExceeded,
    /// The stage is at capacity; retry later.
    Overloaded,
    /// A worker failed while computing; the request may be retried.
    Internal,
}

/// Code and human-readable message of a failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What kind of failure.
    pub code: ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
}

/// The only reply to a request that failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// The request's id, when one could be read from it.
    #[serde(default)]
    pub id: Option<String>,
    /// What went wrong.
    pub error: ErrorBody,
}

impl ErrorReply {
    /// Builds an error reply.
    pub fn new(id: Option<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            id,
            error: ErrorBody {
                code,
                message: message.into(),
            },
        }
    }
}

/// Any message a requester can receive on its reply subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmbedReply {
    /// A slice of the answer.
    Chunk(EmbedChunk),
    /// The request failed.
    Error(ErrorReply),
    /// The request's inputs are queued (only for requests that set `ack`); chunks follow.
    Queued(QueuedReply),
}

/// Replies to several requests in one message, sent to the `bundle_to` subject those
/// requests named: each element is a chunk or an acknowledgement, as it would have come
/// alone on the request's reply subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyBundle {
    /// The replies, each carrying its request's `id`.
    pub replies: Vec<EmbedReply>,
}

/// Work for the GPU workers: sequences of one or more requests, packed without padding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenBatch {
    /// All token ids, sequence after sequence.
    pub token_ids: Vec<u32>,
    /// One entry per sequence, in the order of `token_ids`.
    pub items: Vec<BatchItem>,
}

impl TokenBatch {
    /// Total tokens in the batch.
    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }

    /// Checks that the items' lengths add up to the token buffer and that each is non-empty.
    pub fn validate(&self) -> Result<(), WireError> {
        let sum: u64 = self.items.iter().map(|item| u64::from(item.len)).sum();
        if sum != self.token_ids.len() as u64 {
            return Err(WireError::Inconsistent(format!(
                "items cover {sum} tokens but the batch holds {}",
                self.token_ids.len()
            )));
        }
        if let Some(item) = self.items.iter().find(|item| item.len == 0) {
            return Err(WireError::Inconsistent(format!(
                "item {} of request {} has no tokens",
                item.index, item.request_id
            )));
        }
        Ok(())
    }
}

/// One sequence of a `TokenBatch` and where its vector goes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchItem {
    /// Id of the request the sequence belongs to.
    pub request_id: String,
    /// Reply subject of that request.
    pub reply_to: String,
    /// Position of the text in the request's `input`.
    pub index: u32,
    /// Number of texts in the request.
    pub total: u32,
    /// Number of tokens of this sequence in `token_ids`.
    pub len: u32,
    /// Requested output size (0 = the model's hidden size).
    pub dims: u32,
    /// The request's `deadline_ms` as its requester sent it (Unix milliseconds on the
    /// requester's clock; 0 = none, as for a request that gave only `timeout_ms`): for logs,
    /// and for GPU workers that predate `budget_ms`, which drop the work past it.
    pub deadline_ms: u64,
    /// The request's id and trace context, when its message carried them (for log lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<RequestTrace>,
    /// The request's `bundle_to`: where its chunks may go packed with others'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_to: Option<String>,
    /// Milliseconds the request had left when the batch was sent (0 = none; at least 1
    /// otherwise), to be counted from the batch's arrival on the receiver's own clock.
    /// Absent from tokenizer workers that predate it, whose `deadline_ms` is read instead.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub budget_ms: u64,
    /// Return this sequence's vector as pooled, without L2 normalization (the request's
    /// `normalize: false`). Written only when set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unnormalized: bool,
    /// What the tokenizer worker measured of the request ([`timings`]); absent from older ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<ItemTimings>,
}

impl BatchItem {
    /// Sequence `index` of `total` of request `request_id`, answered on `reply_to`, `len`
    /// tokens long; every other field at its default (the model's width, no deadline, budget,
    /// trace or bundle subject, normalized).
    pub fn new(
        request_id: impl Into<String>,
        reply_to: impl Into<String>,
        index: u32,
        total: u32,
        len: u32,
    ) -> Self {
        Self {
            request_id: request_id.into(),
            reply_to: reply_to.into(),
            index,
            total,
            len,
            ..Self::default()
        }
    }
}

/// A GPU worker's answer to a batch offered on the direct subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectReply {
    /// What became of the batch.
    pub outcome: DirectOutcome,
}

/// What a GPU worker did with a directly offered batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DirectOutcome {
    /// Every request of the batch was answered (vectors, scores or errors published).
    Done,
    /// Not taken: the worker expects to be busy for too long; send it to the work queue.
    Busy,
}

/// Failure to read or write a wire message.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The bytes are not a valid MessagePack message of the expected shape.
    #[error("cannot decode message: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// The message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// The message decodes but its fields disagree with each other.
    #[error("inconsistent message: {0}")]
    Inconsistent(String),
}

/// Encodes a message as a MessagePack map with named fields.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, WireError> {
    Ok(rmp_serde::to_vec_named(message)?)
}

/// Decodes a MessagePack message.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, WireError> {
    Ok(rmp_serde::from_slice(bytes)?)
}

/// Whether a deadline (`deadline_ms`, 0 = none) has passed at `now_ms`.
pub fn deadline_passed(deadline_ms: u64, now_ms: u64) -> bool {
    deadline_ms != 0 && now_ms > deadline_ms
}

/// Whether `value` is 0 (a `budget_ms` that is not written).
fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// Current Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests;
