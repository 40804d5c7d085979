//! `gpu-worker bench`: forward-pass throughput on synthetic batches, one JSON line out
//! (with `--profile`, the time per op too, and its table on stderr).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use common::subjects::Task;
use serde::Serialize;

use crate::engine::{self, BackendChoice, CpuKernel, Dtype, EngineOptions, Work};
use crate::profile::{OpTime, OpTimes};

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
    /// The bf16 CPU backend's matrix path (auto: the fastest this CPU runs).
    #[arg(long, value_enum, default_value_t = CpuKernel::Auto)]
    pub cpu_kernel: CpuKernel,
    /// Sequences per batch (at most).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Tokens per sequence (the longest, with --min-len).
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Shortest sequence: lengths are drawn uniformly from [min_len, seq_len] (default: every
    /// sequence is --seq-len long).
    #[arg(long)]
    pub min_len: Option<usize>,
    /// Sequences per timed pass (default: --batch), cut in arrival order into batches of at
    /// most --batch sequences and --batch-tokens tokens, as the tokenizer workers batch them.
    #[arg(long)]
    pub sequences: Option<usize>,
    /// Most tokens in one batch (default: --batch times --seq-len).
    #[arg(long)]
    pub batch_tokens: Option<usize>,
    /// Timed passes (after one untimed warm-up pass).
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Share of the device's memory the benchmark may take.
    #[arg(long, default_value_t = 0.9)]
    pub gpu_memory_fraction: f64,
    /// CUDA graphs for batches of up to this many tokens, padding included (0: none).
    #[arg(long, default_value_t = 0)]
    pub cuda_graph_max_tokens: usize,
    /// CUDA: runs the MLP over this many tokens at a time, so that its intermediate values
    /// can stay in L2 (0: over the whole batch).
    #[arg(long, default_value_t = 0)]
    pub mlp_chunk_tokens: usize,
    /// CUDA: the attention kernel normalizes and rotates the q heads as it loads them, so
    /// `qk_norm_rope` reads and writes the k heads alone.
    #[arg(long)]
    pub fuse_q_norm_rope: bool,
    /// Times every op of the timed passes (CUDA events, or the clock on the CPU; see
    /// `profile`): passes run op by op, so not with --cuda-graph-max-tokens (nor
    /// --mlp-chunk-tokens or --fuse-q-norm-rope).
    #[arg(long)]
    pub profile: bool,
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
    /// Largest batch run as a recorded CUDA graph (0: none); the untimed warm-up pass
    /// records them.
    pub cuda_graph_max_tokens: usize,
    /// Tokens of the MLP's chunks (0: the whole batch).
    pub mlp_chunk_tokens: usize,
    /// Whether the attention kernel normalized and rotated the q heads.
    pub fuse_q_norm_rope: bool,
    /// Most sequences per batch.
    pub batch: usize,
    /// Longest sequence.
    pub seq_len: usize,
    /// Shortest sequence.
    pub min_len: usize,
    /// Sequences per pass.
    pub sequences: usize,
    /// Tokens per pass.
    pub tokens: usize,
    /// Batches per pass.
    pub batches: usize,
    /// Timed passes.
    pub iters: usize,
    /// Mean milliseconds per batch.
    pub ms_per_batch: f64,
    /// Tokens per second.
    pub tokens_per_s: f64,
    /// With `--profile`: time per op over the timed passes, in the order the ops first ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops: Option<Vec<OpTime>>,
}

/// Reproducible pseudo-random numbers (a 64-bit linear congruential generator), so that
/// `deploy/gpu/torch_bench.py` can draw the same sequence lengths.
struct Lcg(u64);

impl Lcg {
    fn new(seed: u64) -> Self {
        let mut lcg = Self(seed);
        lcg.next();
        lcg
    }

    /// The next number below 2^31.
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// One batch of the synthetic workload.
struct Batch {
    token_ids: Vec<u32>,
    lengths: Vec<usize>,
}

/// Draws `sequences` lengths from [min_len, max_len] (lengths first, then token ids, from one
/// generator) and cuts them in order into batches within `max_sequences` and `max_tokens`.
fn workload(
    seed: u64,
    sequences: usize,
    min_len: usize,
    max_len: usize,
    max_sequences: usize,
    max_tokens: usize,
) -> Vec<Batch> {
    let mut lcg = Lcg::new(seed);
    let span = (max_len - min_len + 1) as u64;
    let lengths: Vec<usize> = (0..sequences)
        .map(|_| min_len + (lcg.next() % span) as usize)
        .collect();
    let vocab = 150_000;
    let mut batches: Vec<Batch> = Vec::new();
    for length in lengths {
        let fits = batches.last().is_some_and(|batch| {
            batch.lengths.len() < max_sequences && batch.token_ids.len() + length <= max_tokens
        });
        if !fits {
            batches.push(Batch {
                token_ids: Vec::new(),
                lengths: Vec::new(),
            });
        }
        let batch = batches.last_mut().expect("a batch was just pushed");
        batch.lengths.push(length);
        batch
            .token_ids
            .extend((0..length).map(|_| (lcg.next() % vocab) as u32));
    }
    batches
}

/// Loads the model and times `iters` passes over a synthetic workload.
pub fn run(args: &BenchArgs) -> anyhow::Result<BenchReport> {
    let min_len = args.min_len.unwrap_or(args.seq_len);
    let sequences = args.sequences.unwrap_or(args.batch);
    let max_tokens = args.batch_tokens.unwrap_or(args.batch * args.seq_len);
    anyhow::ensure!(
        args.batch > 0 && args.seq_len > 0 && args.iters > 0 && sequences > 0,
        "--batch, --seq-len, --sequences and --iters must be positive"
    );
    anyhow::ensure!(
        (1..=args.seq_len).contains(&min_len) && args.seq_len <= max_tokens,
        "need 1 <= --min-len <= --seq-len <= --batch-tokens"
    );
    anyhow::ensure!(
        !(args.profile && args.cuda_graph_max_tokens > 0),
        "--profile times ops one by one; CUDA graphs replay them as one (drop one of the two)"
    );
    anyhow::ensure!(
        !(args.profile && args.mlp_chunk_tokens > 0),
        "--profile times the MLP as its two products and SwiGLU over the whole batch; drop \
         --mlp-chunk-tokens or --profile"
    );
    anyhow::ensure!(
        !(args.profile && args.fuse_q_norm_rope),
        "--profile times q/k norms and attention as two ops; drop --fuse-q-norm-rope or \
         --profile"
    );
    let options = EngineOptions {
        backend: args.backend,
        dtype: args.dtype,
        cpu_kernel: args.cpu_kernel,
        device: args.device,
        gpu_memory_fraction: args.gpu_memory_fraction,
        max_batch_tokens: Some(max_tokens),
        cuda_graph_max_tokens: args.cuda_graph_max_tokens,
        cuda_mlp_chunk_tokens: args.mlp_chunk_tokens,
        cuda_fuse_q_norm_rope: args.fuse_q_norm_rope,
    };
    let times = Arc::new(OpTimes::default());
    let model = if args.profile {
        engine::load_profiled(&args.model, &options, Task::Embed, &times)?
    } else {
        engine::load(&args.model, &options, Task::Embed)?
    };
    let info = model.info();
    let batches = workload(
        args.seed,
        sequences,
        min_len,
        args.seq_len,
        args.batch,
        max_tokens,
    );
    let tokens: usize = batches.iter().map(|batch| batch.token_ids.len()).sum();
    let pass = || -> anyhow::Result<()> {
        for batch in &batches {
            let dims = vec![info.hidden_size; batch.lengths.len()];
            let normalize = vec![true; dims.len()];
            let work = Work::Embed { dims, normalize };
            model.compute(&batch.token_ids, &batch.lengths, &work)?;
        }
        Ok(())
    };
    pass()?;
    times.clear();
    let start = Instant::now();
    for _ in 0..args.iters {
        pass()?;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(BenchReport {
        model: args.model.display().to_string(),
        backend: info.backend,
        device: info.device.description,
        dtype: args.dtype,
        cuda_graph_max_tokens: args.cuda_graph_max_tokens,
        mlp_chunk_tokens: args.mlp_chunk_tokens,
        fuse_q_norm_rope: args.fuse_q_norm_rope,
        batch: args.batch,
        seq_len: args.seq_len,
        min_len,
        sequences,
        tokens,
        batches: batches.len(),
        iters: args.iters,
        ms_per_batch: seconds * 1e3 / (args.iters * batches.len()) as f64,
        tokens_per_s: (tokens * args.iters) as f64 / seconds,
        ops: args.profile.then(|| times.snapshot()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_respects_lengths_and_batch_limits() {
        let batches = workload(7, 500, 16, 512, 64, 4096);
        let lengths: Vec<usize> = batches.iter().flat_map(|b| b.lengths.clone()).collect();
        assert_eq!(lengths.len(), 500);
        assert!(lengths.iter().all(|l| (16..=512).contains(l)));
        assert!(lengths.iter().any(|&l| l < 100) && lengths.iter().any(|&l| l > 400));
        for batch in &batches {
            assert!(batch.lengths.len() <= 64);
            assert_eq!(batch.token_ids.len(), batch.lengths.iter().sum::<usize>());
            assert!(batch.token_ids.len() <= 4096);
            assert!(batch.token_ids.iter().all(|&id| id < 150_000));
        }
        // Each batch is full: the next sequence would not have fitted.
        for pair in batches.windows(2) {
            let next = pair[1].lengths[0];
            assert!(pair[0].lengths.len() == 64 || pair[0].token_ids.len() + next > 4096);
        }
    }

    #[test]
    fn fixed_lengths_make_one_full_batch() {
        let batches = workload(0, 8, 128, 128, 8, 1024);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].lengths, vec![128; 8]);
    }
}
