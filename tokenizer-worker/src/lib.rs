//! Tokenizer worker: turns embedding (or, with `task = rerank`, rerank) requests into packed
//! token batches for the GPU workers.
//!
//! # Layout
//!
//! * [`tokenize`]: the Qwen3-Embedding query template, tokenization with exactly one final
//!   `<|endoftext|>`, and truncation ([`tokenize::TextTokenizer`]).
//! * [`rerank`]: the Qwen3-Reranker prompt, document-only truncation ([`rerank::RerankTemplate`]).
//! * [`pairs`]: rerank requests checked and turned into one prompt sequence per document.
//! * [`budget`]: the limit on the tokens of one request.
//! * [`deadline`]: a request's deadline on this worker's monotonic clock, from its budget
//!   (`timeout_ms`, or a legacy `deadline_ms`), checked against the work queue's `max_age_s`.
//! * [`batcher`]: pure, I/O-free packing of the sequences of concurrent requests into
//!   [`common::wire::TokenBatch`]es by token, sequence and encoded-size budgets, with a
//!   maximum wait and deadline expiry ([`batcher::Batcher`]).
//! * [`lane`]: priority lanes: which lane a request travels in (its `priority`, else
//!   queries and small requests interactive, large ones bulk) and one batcher per lane
//!   ([`lane::Lanes`]), so batches never mix lanes.
//! * [`acks`]: which requests asked for an acknowledgement and how much of each is queued
//!   ([`acks::Acks`]).
//! * [`publish`]: offering a small batch on the direct subject, and publishing a batch to the
//!   JetStream work queue under its own `Nats-Msg-Id` (so a retry is stored once) with a TTL
//!   from its requests' budgets, retrying until the server confirms it or the requests'
//!   deadline passes; the byte budget a batch keeps under the server's `max_payload`.
//! * [`routing`]: where a request's replies may go, by the subject it came on (only its own
//!   inbox for `{requests}.from.{identity}`, the configured prefixes for the bare subject).
//! * [`config`]: the worker's settings.
//! * [`service`]: the NATS service: request subject in, batches out (small ones offered
//!   straight to a free GPU worker on the direct subject, the rest to the JetStream work
//!   queue); started with `task = rerank` it serves the rerank subject and queues pairs on
//!   the rerank stream. Its modules: the loop and drain, intake checks, the task's
//!   frontend, the loop's state, dispatch of batches, the status answer.

pub mod acks;
pub mod batcher;
pub mod budget;
pub mod config;
pub mod deadline;
pub mod lane;
pub mod pairs;
pub mod publish;
pub mod rerank;
pub mod routing;
pub mod service;
pub mod tokenize;
