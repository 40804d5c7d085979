//! The gateway binary: reads `[gateway]` and `[nats]`, applies flags and API keys from the
//! environment, serves until Ctrl-C or SIGTERM.

use anyhow::Context;
use clap::Parser;
use common::config::ConfigSource;
use common::nats::NatsConfig;
use common::otlp;
use common::queue::QueueConfig;
use common::telemetry::{self, LogFormat, TelemetryConfig};
use gateway::GatewayConfig;
use gateway::api_keys::{API_KEYS_ENV, ApiKeys};

/// mimalloc: the services allocate many small short-lived buffers per request, where it
/// measured faster than the system allocator (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// HTTP gateway of the Qwen3 embedding service (OpenAI and seed APIs over NATS).
///
/// Every setting can also come from the configuration files or from
/// `QWEN3_EMBED__GATEWAY__{KEY}` / `QWEN3_EMBED__NATS__{KEY}`; flags win. API keys also
/// come from `QWEN3_EMBED_API_KEYS` (comma-separated), never from a flag, so they do not
/// show in process listings.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    source: ConfigSource,
    /// Address to listen on (configuration default 0.0.0.0).
    #[arg(long)]
    host: Option<String>,
    /// Port to listen on (configuration default 4008; 0 picks a free one).
    #[arg(long)]
    port: Option<u16>,
    /// NATS server URLs, comma-separated.
    #[arg(long, env = "NATS_URL")]
    nats_url: Option<String>,
    /// Served model name, as clients pass it in `model` (default Qwen/Qwen3-Embedding-0.6B).
    #[arg(long)]
    model: Option<String>,
    /// Served reranker name, as rerank clients pass it in `model` (default
    /// Qwen/Qwen3-Reranker-0.6B).
    #[arg(long)]
    rerank_model: Option<String>,
    /// File of API keys, one per line (`#` comments); when any key is configured, every
    /// route but /health requires `Authorization: Bearer <key>` (`[gateway] api_keys_file`).
    #[arg(long)]
    api_keys_file: Option<std::path::PathBuf>,
    /// Log line format.
    #[arg(
        long,
        value_enum,
        env = "QWEN3_EMBED_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(args.log_format);
    let mut config: GatewayConfig = args.source.load("gateway")?;
    config.nats = args.source.load::<NatsConfig>("nats")?;
    if let Some(host) = args.host {
        config.host = host;
    }
    if let Some(port) = args.port {
        config.port = port;
    }
    if let Some(url) = args.nats_url {
        config.nats.url = url;
    }
    if let Some(model) = args.model {
        config.model = model;
    }
    if let Some(model) = args.rerank_model {
        config.rerank_model = model;
    }
    if let Some(path) = args.api_keys_file {
        config.api_keys_file = Some(path);
    }
    if let Some(list) = std::env::var_os(API_KEYS_ENV) {
        let list = list
            .into_string()
            .map_err(|_| anyhow::anyhow!("{API_KEYS_ENV} is not valid UTF-8"))?;
        config.api_keys = ApiKeys::from_list(&list, API_KEYS_ENV)?;
    }
    config.validate_against(&args.source.load::<QueueConfig>("queue")?)?;
    let exporter = otlp::init(
        &args.source.load::<TelemetryConfig>("telemetry")?,
        "qwen3-embed-gateway",
    )?;
    let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port))
        .await
        .with_context(|| format!("binding {}:{}", config.host, config.port))?;
    let result = gateway::run(config, listener, common::shutdown::signal()).await;
    // Off the runtime's threads: the exporter's shutdown blocks while the last spans go.
    tokio::task::spawn_blocking(move || exporter.shutdown()).await?;
    result
}
