//! Command-line options of `embed-jsonl`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Embeds every line of a JSONL file through a qwen3-embed service (HTTP or NATS) and writes
/// the vectors, in input order, to a JSONL or `.npy` file.
///
/// The job is resumable: progress is checkpointed beside the output (`OUTPUT.progress.json`)
/// after every batch, so running the same command again after an interruption (Ctrl-C, a
/// crash, `--limit`) continues where it stopped, without duplicated or half-written rows.
#[derive(Debug, Clone, Parser)]
#[command(version)]
pub struct Options {
    /// JSONL input: one JSON object per line (blank lines are skipped).
    pub input: PathBuf,
    /// Output file: `.npy` (float32, rows x dims) or `.jsonl` (one
    /// `{"id" | "line": ..., "embedding": [...]}` per input line); see `--format`.
    pub output: PathBuf,
    /// Service to use: `http://` or `https://` (the gateway's OpenAI route
    /// `/v1/embeddings`), or `nats://` / `tls://` (the public NATS API, no gateway needed).
    #[arg(long, env = "QWEN3_EMBED_URL", default_value = "http://127.0.0.1:4008")]
    pub url: String,
    /// Output format; by default taken from the output's extension (`.npy`, else JSONL).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Field of each input object holding the text to embed.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Field of each input object copied into the output rows as `id` (a string or a
    /// number); without it JSONL rows carry the 1-based input `line` instead.
    #[arg(long)]
    pub id_field: Option<String>,
    /// Embed the texts as search queries (with the instruction template); documents
    /// otherwise.
    #[arg(long)]
    pub query: bool,
    /// Task description for queries (the service's default task when absent).
    #[arg(long, requires = "query")]
    pub instruction: Option<String>,
    /// Matryoshka size: the first N values of each vector, L2-normalized again (the full
    /// size when absent). Smaller vectors cost less to store and search, and lose a little
    /// quality.
    #[arg(long)]
    pub dimensions: Option<u32>,
    /// Model name sent in HTTP requests' `model` (the gateway checks it); not sent when
    /// absent.
    #[arg(long)]
    pub model: Option<String>,
    /// API key for the gateway (`Authorization: Bearer`). Prefer the environment variable:
    /// flags show in process listings.
    #[arg(long, env = "QWEN3_EMBED_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// NATS credentials file (`.creds`) for `nats://` URLs.
    #[arg(long, env = "NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// NATS NKey seed file (`NAME.nk` from `nats-auth --client NAME`) for `nats://` URLs;
    /// goes with `--nats-identity NAME`.
    #[arg(long, env = "NATS_NKEY_FILE", conflicts_with = "nats_creds")]
    pub nats_nkey_file: Option<PathBuf>,
    /// Who this client is on the bus, for `nats://` URLs: its inbox becomes
    /// `_INBOX.{identity}` and its requests go to `{prefix}.requests.from.{identity}`
    /// (what NATS permissions for this identity allow). Absent: `_INBOX` and the bare subject.
    #[arg(long, env = "NATS_IDENTITY")]
    pub nats_identity: Option<String>,
    /// Subject prefix of the deployment for `nats://` URLs (`embed` gives `embed.requests`).
    #[arg(long, default_value = common::subjects::DEFAULT_PREFIX)]
    pub subject_prefix: String,
    /// Texts per request. Larger batches cost fewer round trips; the gateway refuses more
    /// than its `max_inputs_per_request` (2048 by default).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Requests in flight at once. More keeps the workers busier; beyond the service's
    /// capacity it only earns 429s (which are retried).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Retries of a failed request (429, 5xx, timeouts, lost connections) before giving
    /// up, with exponential backoff; a `Retry-After` answer sets the wait.
    #[arg(long, default_value_t = 8)]
    pub retries: u32,
    /// Seconds one request may take before it counts as failed (and is retried).
    #[arg(long, default_value_t = 120.0)]
    pub timeout_s: f64,
    /// Embed at most this many more lines, then stop (a later run resumes after them).
    #[arg(long)]
    pub limit: Option<u64>,
    /// Discard an existing output and its progress, and start from the first line.
    #[arg(long)]
    pub restart: bool,
    /// Do not draw the progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
}

/// Output file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line: `{"id" | "line": ..., "embedding": [...]}`.
    Jsonl,
    /// NumPy `.npy` version 1.0: a little-endian float32 matrix, one row per input line.
    Npy,
}

impl Options {
    /// The output format: `--format`, else the output's extension.
    pub fn format(&self) -> Format {
        self.format
            .unwrap_or_else(|| match self.output.extension().and_then(|e| e.to_str()) {
                Some(ext) if ext.eq_ignore_ascii_case("npy") => Format::Npy,
                _ => Format::Jsonl,
            })
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_s.clamp(0.001, 86_400.0))
    }
}
