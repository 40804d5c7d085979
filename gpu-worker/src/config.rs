//! Settings of a GPU worker (`[gpu]` in the configuration files).

use std::path::PathBuf;

use common::subjects::Task;
use serde::Deserialize;

use crate::engine::{BackendChoice, Dtype, EngineOptions};

/// Everything a GPU worker needs besides the NATS connection and the work queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GpuWorkerConfig {
    /// What this worker serves: `embed` (an embedding model) or `rerank` (a Qwen3-Reranker
    /// in `model_dir`, pulling from the rerank stream only).
    pub task: Task,
    /// Model directory in Hugging Face layout.
    pub model_dir: PathBuf,
    /// Served model name, reported in status answers.
    pub model_name: String,
    /// Backend that runs the model.
    pub backend: BackendChoice,
    /// Precision of the forward pass: `auto` (f32 on the CPU, bf16 with CUDA), `f32` (CPU
    /// only, the exact reference) or `bf16` (CPU: half the weight memory, avx512_bf16).
    pub dtype: Dtype,
    /// CUDA device ordinal.
    pub device: usize,
    /// Share of the device's memory this worker may use (Ray Serve's fractional `num_gpus`:
    /// two workers with 0.5 share one card).
    pub gpu_memory_fraction: f64,
    /// Batches held at once: one computing plus the ones staged behind it.
    pub max_batches_in_hand: usize,
    /// Queued batches taken in one pull and merged into one forward pass (within
    /// `max_batch_tokens`): small batches of concurrent requests share the model's work.
    pub merge_batches: usize,
    /// Largest batch in tokens this worker accepts (at least the tokenizer workers'
    /// `max_batch_tokens`); a larger one is refused with `overloaded`. With CUDA, start-up
    /// fails when the memory share cannot hold it.
    pub max_batch_tokens: usize,
    /// Longest expected wait, in milliseconds, of a batch a tokenizer worker offers directly
    /// (core NATS, skipping the work queue's hop): the worker takes one only when it expects
    /// the work in hand plus the batch to be done within this, from the pace of its recent
    /// passes; otherwise it answers `busy` and the batch goes through the work queue. Keep it
    /// well under the tokenizer workers' `direct_timeout_ms`. 0 takes none.
    pub direct_max_wait_ms: u64,
}

impl GpuWorkerConfig {
    /// How the engine places the model.
    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            backend: self.backend,
            dtype: self.dtype,
            device: self.device,
            gpu_memory_fraction: self.gpu_memory_fraction,
            max_batch_tokens: Some(self.max_batch_tokens),
        }
    }
}

impl Default for GpuWorkerConfig {
    fn default() -> Self {
        Self {
            task: Task::Embed,
            model_dir: PathBuf::from("models/Qwen3-Embedding-0.6B"),
            model_name: "Qwen/Qwen3-Embedding-0.6B".into(),
            backend: BackendChoice::Auto,
            dtype: Dtype::Auto,
            device: 0,
            gpu_memory_fraction: 0.9,
            max_batches_in_hand: 2,
            merge_batches: 16,
            max_batch_tokens: 16384,
            direct_max_wait_ms: 100,
        }
    }
}
