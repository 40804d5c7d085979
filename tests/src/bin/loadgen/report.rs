//! Run results: one JSON object per run, and a human-readable table.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::ValueEnum;
use serde::Serialize;

use crate::api::Api;
use crate::runner::Measured;
use crate::stats::{ErrorCount, Latency};

/// The kind of load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// One short query (8 to 32 tokens) per request, for a fixed time.
    Online,
    /// A corpus of documents (32 to 512 tokens) in batches, each sent once.
    Bulk,
}

/// How a run was set up (the parts of a report that are not measured).
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// Name of the system under test.
    pub system: String,
    /// API shape.
    pub api: Api,
    /// Endpoint URL.
    pub url: String,
    /// Workload.
    pub workload: Workload,
    /// Closed-loop workers.
    pub concurrency: usize,
    /// Texts per request.
    pub batch: usize,
    /// Text generator seed.
    pub seed: u64,
    /// Unmeasured lead-in.
    pub warmup: Duration,
    /// Whether the run re-sent texts already sent in this invocation (a cache could hit).
    pub repeated_texts: bool,
}

/// The result of one run (one concurrency level).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Name of the system under test (`--label`).
    pub system: String,
    /// API shape.
    pub api: Api,
    /// Endpoint URL.
    pub url: String,
    /// Workload.
    pub workload: Workload,
    /// Closed-loop workers.
    pub concurrency: usize,
    /// Texts per request.
    pub batch: usize,
    /// Text generator seed.
    pub seed: u64,
    /// Unmeasured lead-in, seconds.
    pub warmup_s: f64,
    /// Measured time, seconds: start of the window to the end of its last request.
    pub elapsed_s: f64,
    /// Measured requests (successful + failed).
    pub requests: u64,
    /// Successful requests.
    pub ok: u64,
    /// Failed requests.
    pub errors_total: u64,
    /// Failed requests by kind (`http_<status>`, `timeout`, `connect`, `transport`,
    /// `bad_json`, `wrong_count`, `bad_vector`), with the first example.
    pub errors: BTreeMap<String, ErrorCount>,
    /// Successful requests per second.
    pub req_per_s: f64,
    /// Texts embedded per second (successful requests only).
    pub inputs_per_s: f64,
    /// Tokens of the successful requests.
    pub tokens: u64,
    /// Tokens per second.
    pub tokens_per_s: f64,
    /// Where tokens come from: `usage.total_tokens`, `estimate(words*1.3)`, `mixed`, `none`.
    pub tokens_source: &'static str,
    /// Latency of the successful requests, milliseconds.
    pub latency_ms: Latency,
    /// Vector dimension answered.
    pub dim: Option<usize>,
    /// Whether texts already sent in this invocation were sent again (a cache could hit).
    pub repeated_texts: bool,
    /// When the run ended, seconds since the Unix epoch.
    pub unix_time: u64,
}

impl Report {
    /// Summarizes a measured run.
    pub fn new(info: RunInfo, mut measured: Measured) -> Self {
        let stats = &mut measured.stats;
        let secs = measured.elapsed.as_secs_f64();
        let rate = |n: f64| if secs > 0.0 { n / secs } else { 0.0 };
        let errors_total = stats.error_total();
        let tokens_source = match stats.tokens_source() {
            "usage" => "usage.total_tokens",
            "estimate" => "estimate(words*1.3)",
            other => other,
        };
        Self {
            system: info.system,
            api: info.api,
            url: info.url,
            workload: info.workload,
            concurrency: info.concurrency,
            batch: info.batch,
            seed: info.seed,
            warmup_s: info.warmup.as_secs_f64(),
            elapsed_s: secs,
            requests: stats.ok + errors_total,
            ok: stats.ok,
            errors_total,
            errors: std::mem::take(&mut stats.errors),
            req_per_s: rate(stats.ok as f64),
            inputs_per_s: rate(stats.inputs as f64),
            tokens: stats.tokens.round() as u64,
            tokens_per_s: rate(stats.tokens),
            tokens_source,
            latency_ms: Latency::from_micros(&mut stats.latencies_us),
            dim: stats.dim,
            repeated_texts: info.repeated_texts,
            unix_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

/// Where reports go: the table (stdout, or stderr with `--json`), JSON lines to stdout with
/// `--json`, JSON lines appended to `--out`.
pub struct Sink {
    json_stdout: bool,
    file: Option<File>,
    width: usize,
    rows: Vec<Report>,
}

impl Sink {
    /// A sink; opens `out` for appending.
    pub fn new(json_stdout: bool, out: Option<&Path>, label: &str) -> Result<Self> {
        let file = out
            .map(|path| {
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))
            })
            .transpose()?;
        Ok(Self {
            json_stdout,
            file,
            width: label.len().max("system".len()),
            rows: Vec::new(),
        })
    }

    fn table(&self) -> Box<dyn Write> {
        if self.json_stdout {
            Box::new(std::io::stderr())
        } else {
            Box::new(std::io::stdout())
        }
    }

    /// Writes one run's report (the table header before the first).
    pub fn emit(&mut self, report: Report) -> Result<()> {
        let line = serde_json::to_string(&report)?;
        if self.json_stdout {
            writeln!(std::io::stdout(), "{line}").context("writing to stdout")?;
        }
        if let Some(file) = &mut self.file {
            writeln!(file, "{line}").context("appending to --out")?;
            file.flush().context("appending to --out")?;
        }
        let mut table = self.table();
        if self.rows.is_empty() {
            writeln!(table, "{}", header(self.width))?;
        }
        writeln!(table, "{}", row(&report, self.width))?;
        self.rows.push(report);
        Ok(())
    }

    /// Writes the notes under the table: token sources, error breakdowns, repeats.
    pub fn finish(&mut self) -> Result<()> {
        let mut table = self.table();
        let mut sources: Vec<&str> = self.rows.iter().map(|r| r.tokens_source).collect();
        sources.sort_unstable();
        sources.dedup();
        writeln!(table, "tokens/s from: {}", sources.join(", "))?;
        for r in &self.rows {
            for (kind, e) in &r.errors {
                writeln!(
                    table,
                    "errors at conc {}: {kind} x{} (first: {})",
                    r.concurrency, e.count, e.example
                )?;
            }
            if r.repeated_texts {
                writeln!(
                    table,
                    "note: conc {} re-sent texts already sent (raise --unique-queries)",
                    r.concurrency
                )?;
            }
        }
        Ok(())
    }
}

fn header(width: usize) -> String {
    format!(
        "{:<width$}  {:<8}  {:<8}  {:>4}  {:>8}  {:>9}  {:>10}  {:>8}  {:>8}  {:>8}  {:>6}",
        "system",
        "api",
        "workload",
        "conc",
        "requests",
        "req/s",
        "tokens/s",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "errors"
    )
}

fn row(r: &Report, width: usize) -> String {
    format!(
        "{:<width$}  {:<8}  {:<8}  {:>4}  {:>8}  {:>9.1}  {:>10.0}  {:>8.2}  {:>8.2}  {:>8.2}  {:>6}",
        r.system,
        name(&r.api),
        name(&r.workload),
        r.concurrency,
        r.requests,
        r.req_per_s,
        r.tokens_per_s,
        r.latency_ms.p50,
        r.latency_ms.p90,
        r.latency_ms.p99,
        r.errors_total
    )
}

/// The command-line name of a value enum.
fn name<T: ValueEnum>(value: &T) -> String {
    value
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_owned())
}
