//! `tokenizer-worker`: tokenizes embedding requests from NATS and queues packed batches.

use std::path::PathBuf;

use clap::Parser;
use common::config::ConfigSource;
use common::model_source::{self, HubEnv, ModelFiles};
use common::nats::NatsConfig;
use common::otlp;
use common::queue::QueueConfig;
use common::subjects::Task;
use common::telemetry::{self, LogFormat, TelemetryConfig};
use tokenizer_worker::config::TokenizerWorkerConfig;

/// mimalloc: the services allocate many small short-lived buffers per request, where it
/// measured faster than the system allocator (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Command-line flags; each overrides the configuration files and environment.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    source: ConfigSource,
    /// What to serve: `embed` (embedding requests) or `rerank` (rerank requests, with the
    /// reranker's model directory); each has its own subject and batch stream.
    #[arg(long, value_enum, env = "QWEN3_EMBED_TASK")]
    task: Option<Task>,
    /// Model directory with `tokenizer.json` and `config.json`, or a Hugging Face id
    /// (`Qwen/Qwen3-Embedding-0.6B[@revision]`) found in or downloaded to its cache.
    #[arg(long, env = "QWEN3_EMBED_MODEL_DIR")]
    model_dir: Option<PathBuf>,
    /// Served model name (reported to the gateway; default: the id, or the directory's name).
    #[arg(long)]
    model_name: Option<String>,
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "NATS_URL")]
    nats_url: Option<String>,
    /// Tokenizer threads (0 = one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Log line format.
    #[arg(long, value_enum, env = "QWEN3_EMBED_LOG_FORMAT", default_value_t)]
    log_format: LogFormat,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(args.log_format);
    let mut config: TokenizerWorkerConfig = args.source.load("tokenizer")?;
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
    if let Some(url) = args.nats_url {
        nats.url = url;
    }
    if let Some(threads) = args.threads {
        config.threads = threads;
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let model = runtime.block_on(model_source::resolve(
        &config.model_dir,
        ModelFiles::Tokenizer,
        &HubEnv::from_env(),
    ))?;
    if config.model_name.is_empty() {
        config.model_name = model.default_name();
    }
    config.model_dir = model.dir;
    let service = match config.task {
        Task::Embed => "qwen3-embed-tokenizer",
        Task::Rerank => "qwen3-embed-rerank-tokenizer",
    };
    let exporter = otlp::init(&telemetry, service)?;
    let result = runtime.block_on(tokenizer_worker::service::run(
        config,
        nats,
        queue,
        common::shutdown::signal(),
    ));
    exporter.shutdown();
    result
}
