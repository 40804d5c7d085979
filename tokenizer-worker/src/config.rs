//! Settings of a tokenizer worker (`[tokenizer]` in the configuration files).

use std::path::PathBuf;

use common::subjects::{INBOX_ROOT, Task};
use serde::Deserialize;

use crate::tokenize::DEFAULT_INSTRUCTION;

/// The `max_length` that stands for the model's own `max_position_embeddings` (32,768 for
/// Qwen3-Embedding): the default, and what a configuration without the key gets.
pub const MAX_LENGTH_OF_MODEL: usize = 0;

/// Everything a tokenizer worker needs besides the NATS connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenizerWorkerConfig {
    /// What this worker serves: `embed` (embedding requests, the Qwen3-Embedding template) or
    /// `rerank` (rerank requests, the Qwen3-Reranker prompt; `model_dir` is then the
    /// reranker's). Each task has its own subject, queue group and batch stream.
    pub task: Task,
    /// Model directory holding `tokenizer.json` and `config.json`.
    /// A Hugging Face id (`Qwen/Qwen3-Embedding-0.6B`, optionally `@revision`) when no such
    /// directory exists: the binary resolves it to the cached snapshot, downloading it when
    /// the network is allowed (`common::model_source`).
    pub model_dir: PathBuf,
    /// Served model name, reported in status answers; empty: the Hugging Face id of
    /// `model_dir`, or the directory's name.
    pub model_name: String,
    /// Task description for queries without an instruction of their own.
    pub default_instruction: String,
    /// Most tokens of one input, `<|endoftext|>` included. Absent (or 0): the model's
    /// `max_position_embeddings` from its `config.json` (32,768 for Qwen3-Embedding), which
    /// the worker puts here at start; a larger value is refused at start.
    pub max_length: usize,
    /// Whether inputs over `max_length` are cut (keeping the final `<|endoftext|>`) when the
    /// request does not say; otherwise they are rejected with `too_many_tokens`.
    pub truncate: bool,
    /// Token budget of one batch sent to the GPU workers (replaces Ray Serve's `batch_size`:
    /// sequences sorted by length, no padding). Must be at least `max_length`.
    pub max_batch_tokens: usize,
    /// Most sequences in one batch.
    pub max_batch_seqs: usize,
    /// Milliseconds a sequence may wait for others to fill its batch; 0 sends at once.
    pub max_wait_ms: u64,
    /// Batches being published to the work queue at once (0 = no limit). At the limit,
    /// partial batches wait for a confirmation, gathering the requests that arrive meanwhile
    /// (group commit): an idle worker still sends at once, a busy one sends fewer, fuller
    /// batches. Full batches always go.
    pub max_publishes_in_flight: usize,
    /// Batches of at most this many tokens are first offered straight to an idle GPU worker
    /// over core NATS (one hop instead of the work queue's store and delivery; the batch goes
    /// to the work queue when no worker takes it). 0 sends every batch to the work queue.
    pub direct_max_tokens: usize,
    /// Milliseconds to wait for a GPU worker to serve a directly offered batch before
    /// queueing it (a worker that died holding it). Keep it under the gateways'
    /// `tokenizer_ack_timeout_ms`: the requests' acknowledgements wait for it.
    pub direct_timeout_ms: u64,
    /// Directly offered batches awaiting their answer at once; further batches go to the work
    /// queue.
    pub max_direct_in_flight: usize,
    /// Threads that tokenize (0 = one per core).
    pub threads: usize,
    /// Tokens waiting to be batched beyond which new requests are refused with `overloaded`.
    pub max_pending_tokens: usize,
    /// Most tokens of all inputs of one request together (after truncation); a request
    /// over it is rejected with `too_many_tokens`. Bounds the work one request can put on
    /// the pipeline; must be at least `max_length`.
    pub max_request_tokens: usize,
    /// Where requests on the bare request subject (`embed.requests`, `embed.rerank`) may ask
    /// for their replies: their reply subject and `bundle_to` must start with one of these
    /// prefixes (each ends with `.`). A request whose reply subject does not is dropped and
    /// logged; one whose `bundle_to` does not is refused with `invalid_request`. Requests on
    /// `{subject}.from.{identity}` may reply only under `_INBOX.{identity}.`, whatever this
    /// says. Empty: the bare subjects are not served at all.
    pub reply_prefixes: Vec<String>,
    /// Priority lanes: interactive and bulk work travel apart and GPU workers run
    /// interactive passes first (`crate::lane`). `false`: one lane, everything interactive.
    pub lanes: bool,
    /// A request without a `priority` is interactive when it is a query or holds at most
    /// this many tokens (all its inputs together), bulk otherwise.
    pub interactive_max_tokens: usize,
    /// Most tokens of one bulk batch: keep it at most the GPU workers'
    /// `bulk_max_pass_tokens`, so a bulk batch is one bounded pass.
    pub bulk_max_batch_tokens: usize,
}

impl Default for TokenizerWorkerConfig {
    fn default() -> Self {
        Self {
            task: Task::Embed,
            model_dir: PathBuf::from("models/Qwen3-Embedding-0.6B"),
            model_name: String::new(),
            default_instruction: DEFAULT_INSTRUCTION.into(),
            max_length: MAX_LENGTH_OF_MODEL,
            truncate: false,
            // One sequence of the model's full length fits.
            max_batch_tokens: 32768,
            max_batch_seqs: 256,
            max_wait_ms: 0,
            max_publishes_in_flight: 1,
            direct_max_tokens: 2048,
            direct_timeout_ms: 500,
            max_direct_in_flight: 64,
            threads: 0,
            max_pending_tokens: 1 << 20,
            // 8 inputs of 32768 tokens, or 2048 of 128: a quarter of `max_pending_tokens`,
            // so no single request fills a worker's queue.
            max_request_tokens: 1 << 18,
            // Any inbox: what NATS clients use by default, so existing clients keep working.
            reply_prefixes: vec![format!("{INBOX_ROOT}.")],
            lanes: true,
            interactive_max_tokens: 2048,
            bulk_max_batch_tokens: 4096,
        }
    }
}
