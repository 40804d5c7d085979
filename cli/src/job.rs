//! One run of the job: resume (or start), then read batches, embed up to `concurrency` of
//! them at once, and write their rows strictly in input order, checkpointing after each.

use std::path::Path;
use std::time::Duration;

use futures::{StreamExt, stream};
use indicatif::{ProgressBar, ProgressStyle};

use crate::backend::{Embedder, Transport};
use crate::checkpoint::{Checkpoint, JobSettings, progress_path};
use crate::error::CliError;
use crate::input::{self, Fields, JsonlReader, Record};
use crate::options::Options;
use crate::output::Writer;
use crate::retry::Backoff;

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Rows embedded by this run.
    pub embedded: u64,
    /// Rows in the output now.
    pub rows: u64,
    /// Values per row (unknown while the output is empty).
    pub dims: Option<u32>,
    /// Whether the whole input is embedded (false when `--limit` stopped the run early).
    pub complete: bool,
}

/// Runs the job `options` describe. An error leaves every row written before it in the
/// output and its progress file, so the same command resumes after them.
pub async fn run(options: &Options) -> Result<Summary, CliError> {
    validate(options)?;
    let settings = JobSettings::from_options(options)?;
    let progress = progress_path(&options.output);
    let mut checkpoint = resume_or_start(options, settings, &progress)?;
    let mut writer = Writer::open(
        &options.output,
        checkpoint.settings.format,
        checkpoint.rows,
        checkpoint.dims,
        checkpoint.output_bytes,
    )?;
    // From here on the output always has a progress file beside it.
    checkpoint.save(&progress)?;

    let remaining = input::count_records(&options.input, checkpoint.input_offset)?;
    let todo = options
        .limit
        .map_or(remaining, |limit| limit.min(remaining));
    let bar = progress_bar(options, checkpoint.rows, todo);
    let embedder = Embedder::connect(options).await?;
    let backoff = Backoff {
        retries: options.retries,
        ..Backoff::default()
    };

    let fields = Fields {
        text: options.text_field.clone(),
        id: options.id_field.clone(),
    };
    let reader = JsonlReader::open(
        &options.input,
        fields,
        checkpoint.input_offset,
        checkpoint.next_line,
    )?;
    let batches = batches(reader, options.batch_size as usize, todo);
    let (embedder, backoff) = (&embedder, &backoff);
    let mut results = stream::iter(batches)
        .map(|batch| async move {
            let batch = batch?;
            let texts: Vec<String> = batch.iter().map(|r| r.text.clone()).collect();
            match embedder.embed(&texts, backoff).await {
                Ok(vectors) => Ok((batch, vectors)),
                Err(message) => Err(CliError::Service {
                    first: batch.first().map_or(0, |r| r.line),
                    last: batch.last().map_or(0, |r| r.line),
                    message,
                }),
            }
        })
        .buffered(options.concurrency as usize);

    let mut embedded = 0;
    let outcome = loop {
        match results.next().await {
            None => break Ok(()),
            Some(Err(error)) => break Err(error),
            Some(Ok((batch, vectors))) => {
                writer.append(&batch, &vectors)?;
                let bytes = writer.sync()?;
                let last = batch
                    .last()
                    .expect("batches are never empty; this is a bug");
                checkpoint.advance(writer.rows(), writer.dims(), bytes, last);
                checkpoint.save(&progress)?;
                embedded += batch.len() as u64;
                bar.inc(batch.len() as u64);
            }
        }
    };
    bar.finish_and_clear();
    outcome?;
    Ok(Summary {
        embedded,
        rows: checkpoint.rows,
        dims: checkpoint.dims,
        complete: todo == remaining,
    })
}

fn validate(options: &Options) -> Result<(), CliError> {
    let invalid = |message: &str| Err(CliError::Options(message.into()));
    if !(options.timeout_s.is_finite() && options.timeout_s > 0.0) {
        return invalid("--timeout-s must be a positive number of seconds");
    }
    if options.dimensions == Some(0) {
        return invalid("--dimensions must be at least 1");
    }
    if options.text_field.is_empty() {
        return invalid("--text-field must not be empty");
    }
    Transport::of(&options.url)?;
    if same_file(&options.input, &options.output) {
        return invalid("the output must not be the input");
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The checkpoint to continue from: the progress file's when it matches, a fresh one with
/// `--restart` or for a new (or empty) output; an error when a non-empty output exists
/// without progress.
fn resume_or_start(
    options: &Options,
    settings: JobSettings,
    progress: &Path,
) -> Result<Checkpoint, CliError> {
    if options.restart {
        if let Err(error) = std::fs::remove_file(progress)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            return Err(CliError::io("remove the progress file", progress, error));
        }
        return Ok(Checkpoint::fresh(settings));
    }
    match Checkpoint::load(progress)? {
        Some(checkpoint) => {
            checkpoint.check_resumable(&settings)?;
            Ok(checkpoint)
        }
        // An empty output is what a run that died before its first checkpoint leaves.
        None if std::fs::metadata(&options.output).is_ok_and(|m| m.len() > 0) => {
            Err(CliError::Resume(format!(
                "{} exists but has no progress file ({}); pass --restart to overwrite it",
                options.output.display(),
                progress.display()
            )))
        }
        None => Ok(Checkpoint::fresh(settings)),
    }
}

/// Groups the reader's records into batches of `size`, stopping after `limit` records or
/// at the first unreadable line (its error is the last item, after the complete batches
/// before it, so those are still written).
fn batches(
    mut reader: JsonlReader,
    size: usize,
    limit: u64,
) -> impl Iterator<Item = Result<Vec<Record>, CliError>> {
    let mut left = limit;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || left == 0 {
            return None;
        }
        let mut batch = Vec::with_capacity(size);
        while batch.len() < size && left > 0 {
            match reader.next_record() {
                Ok(Some(record)) => {
                    batch.push(record);
                    left -= 1;
                }
                Ok(None) => {
                    left = 0;
                }
                Err(error) => {
                    // The partial batch before the bad line is embedded by the run that
                    // follows the fix.
                    failed = true;
                    return Some(Err(error));
                }
            }
        }
        (!batch.is_empty()).then_some(Ok(batch))
    })
}

fn progress_bar(options: &Options, done: u64, todo: u64) -> ProgressBar {
    if options.no_progress {
        return ProgressBar::hidden();
    }
    // Hidden by indicatif itself when stderr is not a terminal.
    let bar = ProgressBar::new(done + todo).with_position(done);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} rows ({per_sec}, eta {eta})",
        )
        .expect("the template is valid; this is a bug"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar.reset_eta();
    bar
}
