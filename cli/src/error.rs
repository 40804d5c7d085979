//! Why a job stopped.

use std::path::Path;

/// Everything that ends a job early. Rows written before the error stay checkpointed, so
/// rerunning the same command resumes after them.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The options contradict each other or are out of range.
    #[error("invalid options: {0}")]
    Options(String),
    /// An input line cannot be embedded.
    #[error("input line {line}: {message}")]
    Input {
        /// 1-based line number.
        line: u64,
        /// What is wrong with it.
        message: String,
    },
    /// The input no longer matches what the progress file recorded.
    #[error("the input changed since the last run: {0}; pass --restart to embed it from the start")]
    InputChanged(String),
    /// The output or its progress file cannot be resumed.
    #[error("cannot resume {0}")]
    Resume(String),
    /// A file could not be read or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The service refused a batch or kept failing after every retry.
    #[error("lines {first}..={last}: {message}")]
    Service {
        /// First input line of the batch.
        first: u64,
        /// Last input line of the batch.
        last: u64,
        /// The service's answer or the transport error.
        message: String,
    },
    /// The service could not be reached at all.
    #[error("cannot connect to {url}: {message}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
}

impl CliError {
    /// An I/O error on `path` while doing `action`.
    pub fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.display().to_string(),
            source,
        }
    }
}
