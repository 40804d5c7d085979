//! The GPU worker: loads a Qwen3 checkpoint and turns packed token batches into embeddings.
//!
//! # Layout
//! - [`model`]: `config.json`, safetensors loading and the Qwen3 forward pass, written
//!   once over [`ops::Ops`].
//! - [`ops`]: the backend contract (ops over a packed variable-length batch).
//! - [`cpu`]: the f32 CPU backend, exact against transformers.
//! - [`cuda`]: the CUDA backend (bf16 weights, f32 residual stream, NVRTC-compiled kernels).
//! - [`engine`]: a loaded model on its backend, owned by the device thread.
//! - [`service`]: the NATS service: work queue (and direct offers) in, vectors (or, with
//!   `task = rerank`, scores) to each request's reply subject.
//! - [`load`]: the work in hand and the measured pace, for taking direct offers.
//! - [`scores`]: rerank scores as chunks to each request's reply subject.
//! - [`config`]: the worker's settings.
//! - [`mod@bench`]: the `bench` subcommand.

pub mod bench;
pub mod config;
pub mod cpu;
pub mod cuda;
pub mod engine;
pub mod load;
pub mod model;
pub mod ops;
pub mod scores;
pub mod service;
