//! Settings of a GPU worker (`[gpu]` in the configuration files).

use std::path::PathBuf;
use std::time::Duration;

use common::subjects::Task;
use serde::Deserialize;

use crate::device::{FaultAction, FaultHook};
use crate::engine::{BackendChoice, CpuKernel, Dtype, EngineOptions};

/// Everything a GPU worker needs besides the NATS connection and the work queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GpuWorkerConfig {
    /// What this worker serves: `embed` (an embedding model) or `rerank` (a Qwen3-Reranker
    /// in `model_dir`, pulling from the rerank stream only).
    pub task: Task,
    /// Model directory in Hugging Face layout.
    /// A Hugging Face id (`Qwen/Qwen3-Embedding-0.6B`, optionally `@revision`) when no such
    /// directory exists: the binary resolves it to the cached snapshot, downloading it when
    /// the network is allowed (`common::model_source`).
    pub model_dir: PathBuf,
    /// Served model name, reported in status answers; empty: the Hugging Face id of
    /// `model_dir`, or the directory's name.
    pub model_name: String,
    /// Backend that runs the model.
    pub backend: BackendChoice,
    /// Precision of the forward pass: `auto` (f32 on the CPU, bf16 with CUDA), `f32` (CPU
    /// only, the exact reference) or `bf16` (CPU: half the weight memory, AMX or avx512_bf16).
    pub dtype: Dtype,
    /// The bf16 CPU backend's matrix path: `auto` (AMX tiles, then `avx512_bf16`, then a
    /// portable loop: the first this CPU runs), or `amx`, `avx512_bf16`, `portable` (start-up
    /// fails when the CPU cannot run the one named). Ignored in f32 and with CUDA.
    pub cpu_kernel: CpuKernel,
    /// CUDA device ordinal.
    pub device: usize,
    /// Share of the device's memory this worker may use (Ray Serve's fractional `num_gpus`:
    /// two workers with 0.5 share one card).
    pub gpu_memory_fraction: f64,
    /// CUDA graphs: batches of up to this many tokens (padding included) are padded to one
    /// of a few fixed shapes, recorded once per shape and replayed with one launch; larger
    /// ones run op by op. 0 (the default until a GPU run has verified them): none.
    pub cuda_graph_max_tokens: usize,
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
    /// A forward pass running longer than this many times its expected time (tokens times
    /// the measured time per token) counts as hung: the worker hands its batches back to
    /// the queue, reports itself unhealthy and exits non-zero, for its supervisor to
    /// restart it. Progress acks stop once a pass is past this.
    pub watchdog_factor: f64,
    /// The least time, in seconds, a pass may run before the watchdog calls it hung (also
    /// the limit of the first passes, before any was timed).
    pub watchdog_min_s: f64,
    /// Priority lanes: the most tokens of one bulk pass (bulk batches are merged up to it,
    /// and pulled about as many at a time as fill it). An interactive batch waits for at
    /// most one bulk pass: at most this many tokens, or one sequence (up to the tokenizer
    /// workers' `max_length`) when a single sequence is longer.
    pub bulk_max_pass_tokens: usize,
    /// Priority lanes: interactive passes run in a row while bulk work waits, before one
    /// bulk pass goes (so bulk work never starves); at least 1.
    pub max_interactive_streak: usize,
    /// Test only: milliseconds every forward pass is held on the device before it runs, to
    /// make the tiny test model as slow as a real one (lane ordering tests). 0: none.
    pub test_pass_delay_ms: u64,
    /// Test only: what the device thread does (`abort`, `panic`, `hang`, `device_fault`)
    /// when a batch holds `fault_token_id`. Off when either is unset.
    pub fault: Option<FaultAction>,
    /// Test only: the token id that sets off `fault`.
    pub fault_token_id: Option<u32>,
}

impl GpuWorkerConfig {
    /// How the engine places the model.
    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            backend: self.backend,
            dtype: self.dtype,
            cpu_kernel: self.cpu_kernel,
            device: self.device,
            gpu_memory_fraction: self.gpu_memory_fraction,
            max_batch_tokens: Some(self.max_batch_tokens),
            cuda_graph_max_tokens: self.cuda_graph_max_tokens,
            cuda_mlp_chunk_tokens: 0,
            cuda_fuse_q_norm_rope: false,
        }
    }

    /// The test-only fault hook, when both of its keys are set.
    pub fn fault_hook(&self) -> Option<FaultHook> {
        Some(FaultHook {
            token_id: self.fault_token_id?,
            action: self.fault?,
        })
    }

    /// The longest a pass over `tokens` may run, given the measured seconds per token
    /// (`None` before any pass was timed).
    pub fn watchdog_limit(&self, tokens: usize, secs_per_token: Option<f64>) -> Duration {
        let floor = self.watchdog_min_s.max(0.0);
        let expected = secs_per_token.map_or(0.0, |per_token| per_token * tokens as f64);
        let limit = (self.watchdog_factor * expected).max(floor);
        Duration::try_from_secs_f64(limit).unwrap_or(Duration::MAX)
    }
}

impl Default for GpuWorkerConfig {
    fn default() -> Self {
        Self {
            task: Task::Embed,
            model_dir: PathBuf::from("models/Qwen3-Embedding-0.6B"),
            model_name: String::new(),
            backend: BackendChoice::Auto,
            dtype: Dtype::Auto,
            cpu_kernel: CpuKernel::Auto,
            device: 0,
            gpu_memory_fraction: 0.9,
            cuda_graph_max_tokens: 0,
            max_batches_in_hand: 2,
            merge_batches: 16,
            max_batch_tokens: 32768,
            direct_max_wait_ms: 100,
            watchdog_factor: 10.0,
            watchdog_min_s: 300.0,
            bulk_max_pass_tokens: 4096,
            max_interactive_streak: 8,
            test_pass_delay_ms: 0,
            fault: None,
            fault_token_id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_allows_a_multiple_of_the_expected_time_and_never_less_than_the_floor() {
        let config = GpuWorkerConfig {
            watchdog_factor: 10.0,
            watchdog_min_s: 2.0,
            ..GpuWorkerConfig::default()
        };
        let second = Duration::from_secs(1);
        assert_eq!(
            config.watchdog_limit(1000, None),
            2 * second,
            "before any timing"
        );
        let per_token = Some(1.0 / 1024.0);
        assert_eq!(
            config.watchdog_limit(16, per_token),
            2 * second,
            "the floor"
        );
        assert_eq!(config.watchdog_limit(1024, per_token), 10 * second);
        assert!(config.fault_hook().is_none());
        let armed = GpuWorkerConfig {
            fault: Some(FaultAction::Hang),
            fault_token_id: Some(42),
            ..config
        };
        assert_eq!(
            armed.fault_hook(),
            Some(FaultHook {
                token_id: 42,
                action: FaultAction::Hang
            })
        );
    }
}
