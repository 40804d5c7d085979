//! Logging set-up shared by the binaries (`tracing`, filtered by `RUST_LOG`), and the
//! `[telemetry]` settings of trace export ([`crate::otlp`]).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the global subscriber: `RUST_LOG` filters (default `info`), lines go to stderr,
/// colored only when stderr is a terminal (a log file or collector gets plain text).
/// Calling it twice is harmless (the second call keeps the first subscriber).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _already_set = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// The `[telemetry]` section (every binary): where traces go.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Base URL of an OTLP/HTTP collector (`http://collector:4318`; spans go to its
    /// `/v1/traces` as JSON). Empty: no trace export.
    pub otlp_endpoint: String,
    /// The service name spans carry; empty: the binary's own (`qwen3-embed-gateway`,
    /// `qwen3-embed-tokenizer`, `qwen3-embed-gpu`, or their `-rerank-` twins).
    pub service_name: String,
    /// How often buffered spans are sent, in milliseconds.
    pub export_delay_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            service_name: String::new(),
            export_delay_ms: 5000,
        }
    }
}
