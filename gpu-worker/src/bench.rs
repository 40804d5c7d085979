//! `gpu-worker bench`: forward-pass throughput on synthetic batches, one JSON line out.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::engine::{self, BackendChoice, Dtype, EngineOptions};

/// Settings of a benchmark run.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Model directory in Hugging Face layout.
    #[arg(long)]
    pub model: PathBuf,
    /// Backend to measure.
    #[arg(long, value_enum, default_value_t = BackendChoice::Cpu)]
    pub backend: BackendChoice,
    /// Compute precision (auto: f32 on the CPU, bf16 with CUDA).
    #[arg(long, value_enum, default_value_t = Dtype::Auto)]
    pub dtype: Dtype,
    /// Sequences per batch.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Timed iterations (after one untimed warm-up).
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Share of the device's memory the benchmark may take.
    #[arg(long, default_value_t = 0.9)]
    pub gpu_memory_fraction: f64,
    /// Seed of the synthetic token ids.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// One benchmark result.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    /// Model directory.
    pub model: String,
    /// Backend that ran.
    pub backend: String,
    /// Device it ran on.
    pub device: String,
    /// Precision.
    pub dtype: Dtype,
    /// Sequences per batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Timed iterations.
    pub iters: usize,
    /// Mean milliseconds per batch.
    pub ms_per_batch: f64,
    /// Tokens per second.
    pub tokens_per_s: f64,
}

/// Loads the model and times `iters` forward passes over a synthetic batch.
pub fn run(args: &BenchArgs) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(
        args.batch > 0 && args.seq_len > 0 && args.iters > 0,
        "--batch, --seq-len and --iters must be positive"
    );
    let embedder = engine::load(
        &args.model,
        &EngineOptions {
            backend: args.backend,
            dtype: args.dtype,
            device: args.device,
            gpu_memory_fraction: args.gpu_memory_fraction,
            max_batch_tokens: Some(args.batch * args.seq_len),
        },
    )?;
    // Token ids from a small linear congruential generator: reproducible, no model bias.
    let mut state = args
        .seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let vocab = 150_000u64;
    let token_ids: Vec<u32> = (0..args.batch * args.seq_len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % vocab) as u32
        })
        .collect();
    let lengths = vec![args.seq_len; args.batch];
    let dims = vec![embedder.hidden_size(); args.batch];
    embedder.embed(&token_ids, &lengths, &dims)?;
    let start = Instant::now();
    for _ in 0..args.iters {
        embedder.embed(&token_ids, &lengths, &dims)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(BenchReport {
        model: args.model.display().to_string(),
        backend: embedder.backend(),
        device: embedder.device_info().description,
        dtype: args.dtype,
        batch: args.batch,
        seq_len: args.seq_len,
        iters: args.iters,
        ms_per_batch: seconds * 1e3 / args.iters as f64,
        tokens_per_s: (args.batch * args.seq_len * args.iters) as f64 / seconds,
    })
}
