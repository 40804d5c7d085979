//! The GPU worker: loads a Qwen3 checkpoint and turns packed token batches into embeddings.
//!
//! # Layout
//! - [`model`]: `config.json`, safetensors loading and the Qwen3 forward pass, written
//!   once over [`ops::Ops`].
//! - [`ops`]: the backend contract (ops over a packed variable-length batch).
//! - [`cpu`]: the f32 CPU backend, exact against transformers.

pub mod cpu;
pub mod model;
pub mod ops;
