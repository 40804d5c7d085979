//! Shared pieces of the Qwen3 embedding and reranking pipeline: the only workspace crate
//! that the three stages (gateway, tokenizer worker, GPU worker) and the `embed-jsonl`
//! client depend on; none of them depends on another.
//!
//! # Layout
//! - [`wire`]: the MessagePack messages that cross NATS (public embedding and rerank
//!   requests and replies, reply bundles, internal token batches, direct-offer answers,
//!   worker status).
//! - [`subjects`]: NATS subject, stream and queue group names under a configurable prefix,
//!   and the [`subjects::Task`] (embed or rerank) each worker serves.
//! - [`queue`]: the JetStream work queue of token batches: one stream per task, and the GPU
//!   workers' durable pull consumer on it.
//! - [`config`]: layered configuration files, profiles and environment variables.
//! - [`nats`]: connection settings (servers, credentials, TLS), reconnection, and a watch of
//!   the link.
//! - [`outbox`]: a worker's replies on their way out, alone or packed into bundles.
//! - [`worker`]: what every worker does besides its own work: error replies, sending an
//!   outbox, micro-service registration.
//! - [`trace`]: request ids and W3C trace context across the stages.
//! - [`telemetry`]: logging set-up for the binaries, and the `[telemetry]` settings.
//! - [`otlp`]: OTLP trace export, one span per stage of a request.
//! - `model_source` (feature `hub`, the workers'): a model directory, or a Hugging Face id
//!   found in or downloaded to the standard cache.
//! - [`shutdown`]: Ctrl-C / SIGTERM handling.

pub mod config;
#[cfg(feature = "hub")]
pub mod model_source;
pub mod nats;
pub mod otlp;
pub mod outbox;
pub mod queue;
pub mod shutdown;
pub mod subjects;
pub mod telemetry;
pub mod trace;
pub mod wire;
pub mod worker;
