//! `gpu-worker`: serves embedding batches from the NATS work queue, or benchmarks the model.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use common::config::ConfigSource;
use common::model_source::{self, HubEnv, ModelFiles};
use common::nats::NatsConfig;
use common::otlp;
use common::queue::QueueConfig;
use common::subjects::Task;
use common::telemetry::{self, LogFormat, TelemetryConfig};
use gpu_worker::bench::{self, BenchArgs};
use gpu_worker::config::GpuWorkerConfig;
use gpu_worker::engine::{BackendChoice, CpuKernel, Dtype};

/// How long the runtime's shutdown waits for blocking tasks once `run` returned.
const RUNTIME_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(1);

/// mimalloc: the services allocate many small short-lived buffers per request, where it
/// measured faster than the system allocator (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Command-line flags; each overrides the configuration files and environment.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    source: ConfigSource,
    /// What to serve: `embed` (an embedding model) or `rerank` (a Qwen3-Reranker, pulling
    /// rerank batches only); each task has its own stream and worker pool.
    #[arg(long, value_enum, env = "QWEN3_EMBED_TASK")]
    task: Option<Task>,
    /// Model directory in Hugging Face layout, or a Hugging Face id
    /// (`Qwen/Qwen3-Embedding-0.6B[@revision]`) found in or downloaded to its cache.
    #[arg(long, env = "QWEN3_EMBED_MODEL_DIR")]
    model_dir: Option<PathBuf>,
    /// Served model name (reported to the gateway; default: the id, or the directory's name).
    #[arg(long)]
    model_name: Option<String>,
    /// Backend that runs the model.
    #[arg(long, value_enum)]
    backend: Option<BackendChoice>,
    /// Precision of the forward pass (auto: f32 on the CPU, bf16 with CUDA; bf16 on the CPU
    /// halves the weights' memory and runs on AMX tiles or avx512_bf16 where the CPU has them).
    #[arg(long, value_enum)]
    dtype: Option<Dtype>,
    /// The bf16 CPU backend's matrix path (auto: AMX, then avx512_bf16, then portable).
    #[arg(long, value_enum)]
    cpu_kernel: Option<CpuKernel>,
    /// CUDA device ordinal.
    #[arg(long)]
    device: Option<usize>,
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "NATS_URL")]
    nats_url: Option<String>,
    /// Log line format.
    #[arg(long, value_enum, env = "QWEN3_EMBED_LOG_FORMAT", default_value_t)]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Time the forward pass on synthetic batches and print one JSON line.
    Bench(BenchArgs),
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(args.log_format);
    if let Some(Command::Bench(bench_args)) = &args.command {
        let report = bench::run(bench_args)?;
        if let Some(ops) = &report.ops {
            eprint!("{}", gpu_worker::profile::table(ops));
        }
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let mut config: GpuWorkerConfig = args.source.load("gpu")?;
    let mut nats: NatsConfig = args.source.load("nats")?;
    let queue: QueueConfig = args.source.load("queue")?;
    let telemetry: TelemetryConfig = args.source.load("telemetry")?;
    if let Some(task) = args.task {
        config.task = task;
    }
    if let Some(dir) = args.model_dir {
        config.model_dir = dir;
    }
    if let Some(name) = args.model_name {
        config.model_name = name;
    }
    if let Some(backend) = args.backend {
        config.backend = backend;
    }
    if let Some(dtype) = args.dtype {
        config.dtype = dtype;
    }
    if let Some(kernel) = args.cpu_kernel {
        config.cpu_kernel = kernel;
    }
    if let Some(device) = args.device {
        config.device = device;
    }
    if let Some(url) = args.nats_url {
        nats.url = url;
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let model = runtime.block_on(model_source::resolve(
        &config.model_dir,
        ModelFiles::Weights,
        &HubEnv::from_env(),
    ))?;
    if config.model_name.is_empty() {
        config.model_name = model.default_name();
    }
    config.model_dir = model.dir;
    let service = match config.task {
        Task::Embed => "qwen3-embed-gpu",
        Task::Rerank => "qwen3-embed-rerank-gpu",
    };
    let exporter = otlp::init(&telemetry, service)?;
    let result = runtime.block_on(gpu_worker::service::run(
        config,
        nats,
        queue,
        common::shutdown::signal(),
    ));
    // Tasks still waiting on a hung device are dropped, not awaited; the device thread is
    // never joined: it ends with the process, which exits non-zero when `run` failed.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    exporter.shutdown();
    result
}
