//! The GPU worker: loads a Qwen3 checkpoint and turns packed token batches into embeddings
//! (or, with `task = rerank`, a Qwen3-Reranker's relevance scores).
//!
//! # Layout
//! - [`model`]: `config.json`, safetensors loading and the Qwen3 forward pass, written
//!   once over [`ops::Ops`], with its two heads: embedding and reranking.
//! - [`ops`]: the backend contract (ops over a packed variable-length batch, weight views).
//! - [`cpu`]: the CPU backend: f32 (exact against transformers) or bf16 weights and products.
//! - [`cuda`]: the CUDA backend (bf16 weights, f32 residual stream, NVRTC-compiled kernels).
//! - [`fp8`]: E4M3 numbers and row-wise quantization, for the FP8 path (its CPU twin is
//!   [`cpu::fp8_twin`]).
//! - [`engine`]: loading (the backend, and the head of the worker's task), the loaded model
//!   the device thread runs (one job type in, one output type out), and the engine's errors.
//! - [`device`]: the device thread that owns the model (a fatal pass ends it), and the
//!   test-only fault hook.
//! - [`service`]: the NATS service: work queue (and direct offers) in, vectors (or, with
//!   `task = rerank`, scores) to each request's reply subject; leaves when the device
//!   can no longer compute.
//! - [`load`]: the work in hand and the measured pace, for taking direct offers.
//! - [`config`]: the worker's settings.
//! - [`mod@bench`]: the `bench` subcommand; [`profile`]: its time per op (`--profile`).

pub mod bench;
pub mod config;
pub mod cpu;
pub mod cuda;
pub mod device;
pub mod engine;
pub mod fp8;
pub mod load;
pub mod model;
pub mod ops;
pub mod profile;
pub mod service;
