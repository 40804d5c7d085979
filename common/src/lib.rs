//! Shared pieces of the Qwen3 embedding pipeline.
//!
//! # Layout
//! - [`wire`]: the MessagePack messages that cross NATS (public requests and replies,
//!   internal token batches, worker status).
//! - [`subjects`]: NATS subject names under a configurable prefix.
//! - [`config`]: layered configuration files, profiles and environment variables.
//! - [`nats`]: connection settings (servers, credentials, TLS).
//! - [`queue`]: the JetStream work queue of token batches.
//! - [`telemetry`]: logging set-up for the binaries.
//! - [`shutdown`]: Ctrl-C / SIGTERM handling.
//! - [`trace`]: request ids and W3C trace context across the stages.
//! - [`worker`]: error replies and micro-service registration shared by the workers.

pub mod config;
pub mod nats;
pub mod outbox;
pub mod queue;
pub mod shutdown;
pub mod subjects;
pub mod telemetry;
pub mod trace;
pub mod wire;
pub mod worker;
