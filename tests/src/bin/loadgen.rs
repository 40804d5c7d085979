//! `loadgen`: a closed-loop load generator for any HTTP embedding endpoint.
//!
//! Each of `--concurrency` workers sends its next request when the previous answer arrives,
//! over one shared keep-alive HTTP/1.1 client. Request bodies are generated (deterministic
//! pseudo-English from `--seed`) and serialized before the clock starts. Every answer must be
//! a 200 holding one vector per input; anything else is counted as an error, by kind.
//!
//! Reports requests/s, tokens/s (from `usage.total_tokens` when the answers carry it, else
//! estimated as words * 1.3; the output says which), latency p50/p90/p99/mean/max, and errors,
//! as a table and as JSON (`--json` to stdout, `--out FILE` appends JSON lines).
//!
//! ```text
//! loadgen --api openai --url http://127.0.0.1:8080 --workload online --concurrency 1,8,32,128
//! loadgen --api tei --url http://127.0.0.1:8081 --workload bulk --docs 2000 --batch 32
//! ```
//!
//! Only loopback targets are allowed unless `--allow-remote` is given.

// A crate root looks for its modules beside itself; these live in `loadgen/`.
#[path = "loadgen/api.rs"]
mod api;
#[path = "loadgen/report.rs"]
mod report;
#[path = "loadgen/runner.rs"]
mod runner;
#[path = "loadgen/stats.rs"]
mod stats;
#[path = "loadgen/workload.rs"]
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use reqwest::Url;

use api::Api;
use report::{Report, RunInfo, Sink, Workload};
use runner::{Schedule, Target, run_phase};
use workload::{DOC_TOKENS, QUERY_TOKENS, SplitMix64, prepare, texts};

/// Generator streams, so each use of the seed gets its own independent texts.
const STREAM_QUERIES: u64 = 1;
const STREAM_BULK_WARMUP: u64 = 1 << 32;
const STREAM_BULK_DOCS: u64 = 2 << 32;

/// Closed-loop load generator for HTTP embedding endpoints (loopback only by default).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Base URL of the target; the API's route is appended.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,

    /// API shape: openai (/v1/embeddings), seed (/api/v1/embedding/api), infinity
    /// (/embeddings), tei (/embed).
    #[arg(long, value_enum, default_value_t = Api::Openai)]
    api: Api,

    /// Route to append to --url instead of the API's default.
    #[arg(long)]
    path: Option<String>,

    /// `model` field sent to openai/infinity targets.
    #[arg(long)]
    model: Option<String>,

    /// online: one 8-32 token query per request for a fixed time; bulk: --docs documents of
    /// 32-512 tokens in requests of --batch, each sent once.
    #[arg(long, value_enum, default_value_t = Workload::Online)]
    workload: Workload,

    /// Concurrency levels, comma-separated (one run each) [default: 1 online, 8 bulk].
    #[arg(long, value_delimiter = ',', value_parser = parse_positive)]
    concurrency: Vec<usize>,

    /// Measured seconds of each online run.
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    duration: Duration,

    /// Unmeasured seconds before each run (bulk warms up on separate documents).
    #[arg(long, default_value = "2", value_parser = parse_secs)]
    warmup: Duration,

    /// Hard cap on the requests of each run (online: warmup included).
    #[arg(long, value_parser = parse_positive)]
    max_requests: Option<usize>,

    /// Documents of each bulk run.
    #[arg(long, default_value_t = 2000, value_parser = parse_positive)]
    docs: usize,

    /// Documents per bulk request.
    #[arg(long, default_value_t = 32, value_parser = parse_positive)]
    batch: usize,

    /// Distinct online queries to pre-build; runs that send more repeat them (flagged).
    #[arg(long, default_value_t = 200_000, value_parser = parse_positive)]
    unique_queries: usize,

    /// Seed of the generated texts.
    #[arg(long, default_value_t = 42)]
    seed: u64,

    /// Name of the system under test in the outputs [default: host:port of --url].
    #[arg(long)]
    label: Option<String>,

    /// Print one JSON object per run to stdout (the table then goes to stderr).
    #[arg(long)]
    json: bool,

    /// Append one JSON line per run to FILE.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,

    /// Per-request timeout, seconds.
    #[arg(long, default_value = "60", value_parser = parse_secs)]
    timeout: Duration,

    /// Count tokens as words * 1.3 even when answers report usage (servers count usage
    /// differently: compare them on one measure).
    #[arg(long)]
    estimate_tokens: bool,

    /// Allow a target that is not on this machine.
    #[arg(long)]
    allow_remote: bool,

    /// Async runtime threads [default: CPU count].
    #[arg(long, value_parser = parse_positive)]
    threads: Option<usize>,
}

impl Args {
    /// The concurrency levels to run.
    fn levels(&self) -> Vec<usize> {
        match (self.concurrency.is_empty(), self.workload) {
            (false, _) => self.concurrency.clone(),
            (true, Workload::Online) => vec![1],
            (true, Workload::Bulk) => vec![8],
        }
    }

    /// The endpoint: `--url` plus the route.
    fn endpoint(&self) -> Result<Url> {
        let path = self.path.as_deref().unwrap_or(self.api.default_path());
        let url = format!(
            "{}/{}",
            self.url.trim_end_matches('/'),
            path.trim_start_matches('/')
        );
        Url::parse(&url).with_context(|| format!("bad URL {url:?}"))
    }

    /// What the reports call the system.
    fn system(&self, endpoint: &Url) -> String {
        self.label.clone().unwrap_or_else(|| {
            let host = endpoint.host_str().unwrap_or("?");
            match endpoint.port_or_known_default() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_owned(),
            }
        })
    }

    /// The fixed parts of the report of a run at `concurrency`.
    fn info(&self, endpoint: &Url, concurrency: usize, repeated_texts: bool) -> RunInfo {
        RunInfo {
            system: self.system(endpoint),
            api: self.api,
            url: endpoint.to_string(),
            workload: self.workload,
            concurrency,
            batch: match self.workload {
                Workload::Online => 1,
                Workload::Bulk => self.batch,
            },
            seed: self.seed,
            warmup: self.warmup,
            repeated_texts,
        }
    }
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{e}"))?;
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{e}"))
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e}")),
    }
}

fn main() -> ExitCode {
    match run_main(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_main(args: Args) -> Result<()> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads);
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let endpoint = args.endpoint()?;
    let levels = args.levels();
    let max_level = levels.iter().copied().max().unwrap_or(1);
    let mut target = Target::new(
        args.api,
        endpoint.clone(),
        max_level,
        args.timeout,
        args.allow_remote,
    )
    .await?;
    target.estimate_tokens = args.estimate_tokens;
    preflight(&target, &args).await?;
    let mut sink = Sink::new(args.json, args.out.as_deref(), &args.system(&endpoint))?;
    match args.workload {
        Workload::Online => run_online(&args, &target, &levels, &mut sink).await?,
        Workload::Bulk => run_bulk(&args, &target, &levels, &mut sink).await?,
    }
    sink.finish()
}

/// One request before any run, so a wrong URL or API shape fails at once and clearly.
async fn preflight(target: &Target, args: &Args) -> Result<()> {
    let probe = vec!["loadgen preflight probe.".to_owned()];
    let req = prepare(args.api, args.model.as_deref(), true, &probe, 1)?;
    if let Err(f) = target.send(&req[0]).await {
        bail!(
            "preflight request to {} failed ({}): {}\n(check --url, --api and --path)",
            target.url,
            f.kind,
            f.detail
        );
    }
    Ok(())
}

/// Online: per level, closed-loop single queries for --warmup + --duration seconds. Levels
/// continue through the query pool, so no query repeats until the pool is used up.
async fn run_online(args: &Args, target: &Target, levels: &[usize], sink: &mut Sink) -> Result<()> {
    let queries = texts(
        &mut SplitMix64::new(args.seed, STREAM_QUERIES),
        args.unique_queries,
        QUERY_TOKENS,
    );
    let bodies = Arc::new(prepare(args.api, args.model.as_deref(), true, &queries, 1)?);
    drop(queries);
    let mut used = 0;
    for &concurrency in levels {
        eprintln!(
            "loadgen: online, concurrency {concurrency}: {:?} warmup + {:?}",
            args.warmup, args.duration
        );
        let schedule = Schedule::Timed {
            warmup: args.warmup,
            duration: args.duration,
            max_requests: args.max_requests,
        };
        let measured = run_phase(
            target,
            Arc::clone(&bodies),
            used % bodies.len(),
            concurrency,
            schedule,
        )
        .await?;
        used += measured.sent;
        let info = args.info(&target.url, concurrency, used > bodies.len());
        sink.emit(Report::new(info, measured))?;
    }
    Ok(())
}

/// Bulk: per level, a fresh corpus of --docs documents sent once in batches of --batch,
/// after --warmup seconds on other documents.
async fn run_bulk(args: &Args, target: &Target, levels: &[usize], sink: &mut Sink) -> Result<()> {
    let model = args.model.as_deref();
    for (level, &concurrency) in (0u64..).zip(levels) {
        if !args.warmup.is_zero() {
            let mut rng = SplitMix64::new(args.seed, STREAM_BULK_WARMUP + level);
            let docs = texts(&mut rng, args.batch * concurrency * 2, DOC_TOKENS);
            let bodies = Arc::new(prepare(args.api, model, false, &docs, args.batch)?);
            let schedule = Schedule::Timed {
                warmup: args.warmup,
                duration: Duration::ZERO,
                max_requests: None,
            };
            eprintln!(
                "loadgen: bulk, concurrency {concurrency}: {:?} warmup",
                args.warmup
            );
            run_phase(target, bodies, 0, concurrency, schedule).await?;
        }
        let mut rng = SplitMix64::new(args.seed, STREAM_BULK_DOCS + level);
        let docs = texts(&mut rng, args.docs, DOC_TOKENS);
        let bodies = Arc::new(prepare(args.api, model, false, &docs, args.batch)?);
        drop(docs);
        eprintln!(
            "loadgen: bulk, concurrency {concurrency}: {} docs in {} requests",
            args.docs,
            bodies.len()
        );
        let schedule = Schedule::EachOnce {
            max_requests: args.max_requests,
        };
        let measured = run_phase(target, bodies, 0, concurrency, schedule).await?;
        sink.emit(Report::new(
            args.info(&target.url, concurrency, false),
            measured,
        ))?;
    }
    Ok(())
}
