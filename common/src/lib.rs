//! Shared pieces of the Qwen3 embedding pipeline.
//!
//! # Layout
//! - [`wire`]: the MessagePack messages that cross NATS (public requests and replies,
//!   internal token batches).
//! - [`subjects`]: NATS subject names under a configurable prefix.
//! - [`telemetry`]: logging set-up for the binaries.

pub mod subjects;
pub mod telemetry;
pub mod wire;
