//! Fetching a Hugging Face id's files into the cache, with bounded waits and progress in
//! the log.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hf_hub::api::tokio::{ApiBuilder, ApiError, ApiRepo, Progress};
use hf_hub::{Cache, Repo, RepoType};

use super::{HubEnv, HubId, ModelFiles, ModelSourceError};

/// The longest wait for the Hub's first answer (the repository's file list): an unreachable
/// or black-holed endpoint fails within it instead of hanging start-up.
const HUB_ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// A download that receives no byte for this long is given up.
const DOWNLOAD_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Downloads the `files` of `id` into `cache` (those its snapshot lacks) and returns the
/// snapshot directory.
pub(super) async fn download(
    id: &HubId,
    files: ModelFiles,
    cache: &Path,
    env: &HubEnv,
) -> Result<PathBuf, ModelSourceError> {
    let cache_text = cache.display().to_string();
    let download_error = |cause: String| ModelSourceError::Download {
        id: id.repo.clone(),
        cache: cache_text.clone(),
        cause,
    };
    let mut builder = ApiBuilder::from_cache(Cache::new(cache.to_path_buf()))
        .with_endpoint(env.endpoint.clone())
        .with_progress(false);
    if env.token.is_some() {
        builder = builder.with_token(env.token.clone());
    }
    let api = builder.build().map_err(|e| download_error(e.to_string()))?;
    let repo = api.repo(Repo::with_revision(
        id.repo.clone(),
        RepoType::Model,
        id.revision.clone(),
    ));
    tracing::info!(model = %id.repo, revision = %id.revision, endpoint = %env.endpoint, cache = %cache_text, "model not in the Hugging Face cache: asking the Hub");
    let unreachable = |cause: String| ModelSourceError::Unreachable {
        id: id.repo.clone(),
        cache: cache_text.clone(),
        endpoint: env.endpoint.clone(),
        cause,
    };
    let info = match tokio::time::timeout(HUB_ANSWER_TIMEOUT, repo.info()).await {
        Err(_) => {
            return Err(unreachable(format!(
                "no answer within {}s",
                HUB_ANSWER_TIMEOUT.as_secs()
            )));
        }
        Ok(Ok(info)) => info,
        Ok(Err(ApiError::RequestError(error))) => {
            return Err(match error.status() {
                Some(status) if matches!(status.as_u16(), 401 | 403 | 404) => {
                    ModelSourceError::NoSuchModel {
                        id: id.repo.clone(),
                        endpoint: env.endpoint.clone(),
                        status: status.as_u16(),
                    }
                }
                Some(_) => download_error(error.to_string()),
                None => unreachable(error_chain(&error)),
            });
        }
        Ok(Err(error)) => return Err(download_error(error.to_string())),
    };
    let snapshot = cache.join(id.folder()).join("snapshots").join(&info.sha);
    let wanted: Vec<&str> = info
        .siblings
        .iter()
        .map(|file| file.rfilename.as_str())
        .filter(|name| files.wants(name))
        .collect();
    if !wanted.iter().any(|name| name.ends_with(".safetensors")) && files == ModelFiles::Weights {
        return Err(download_error(
            "the repository has no safetensors weights at its top level".into(),
        ));
    }
    for name in wanted {
        if snapshot.join(name).is_file() {
            continue;
        }
        download_file(&repo, name, &snapshot)
            .await
            .map_err(|cause| download_error(format!("{name}: {cause}")))?;
    }
    if !files.complete_in(&snapshot) {
        return Err(download_error(format!(
            "the repository lacks files a {files:?} worker reads (config.json, tokenizer.json, safetensors)"
        )));
    }
    tracing::info!(model = %id.repo, dir = %snapshot.display(), "model downloaded");
    Ok(snapshot)
}

/// Downloads one file, giving up when no byte arrives for [`DOWNLOAD_STALL_TIMEOUT`]. While
/// another process downloads the same file (it holds the blob's lock), waits for it.
async fn download_file(repo: &ApiRepo, name: &str, snapshot: &Path) -> Result<(), String> {
    loop {
        let progress = LogProgress::new(name);
        let download = repo.download_with_progress(name, progress.clone());
        tokio::pin!(download);
        let mut seen = 0;
        let result = loop {
            tokio::select! {
                result = &mut download => break result,
                () = tokio::time::sleep(DOWNLOAD_STALL_TIMEOUT) => {
                    let done = progress.state.done.load(Ordering::Relaxed);
                    if done == seen {
                        return Err(format!(
                            "no data for {}s",
                            DOWNLOAD_STALL_TIMEOUT.as_secs()
                        ));
                    }
                    seen = done;
                }
            }
        };
        match result {
            Ok(_) => return Ok(()),
            Err(ApiError::LockAcquisition(_)) if snapshot.join(name).is_file() => return Ok(()),
            Err(ApiError::LockAcquisition(lock)) => {
                tracing::info!(file = name, lock = %lock.display(), "another process is downloading this file; waiting");
            }
            Err(ApiError::RequestError(error)) => return Err(error_chain(&error)),
            Err(error) => return Err(error.to_string()),
        }
    }
}

/// An error and its causes, `: `-separated (reqwest's own message hides the cause, such as
/// "Connection refused").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Download progress as log lines: one per tenth of a file, and one when it is done.
#[derive(Clone)]
struct LogProgress {
    state: Arc<ProgressState>,
}

/// What [`LogProgress`]'s clones (one per downloaded chunk) share.
struct ProgressState {
    file: String,
    total: AtomicU64,
    done: AtomicU64,
    tenths_logged: AtomicU64,
}

impl LogProgress {
    fn new(file: &str) -> Self {
        Self {
            state: Arc::new(ProgressState {
                file: file.to_string(),
                total: AtomicU64::new(0),
                done: AtomicU64::new(0),
                tenths_logged: AtomicU64::new(0),
            }),
        }
    }
}

impl Progress for LogProgress {
    async fn init(&mut self, size: usize, _filename: &str) {
        self.state.total.store(size as u64, Ordering::Relaxed);
        tracing::info!(file = %self.state.file, bytes = size, "downloading");
    }

    async fn update(&mut self, size: usize) {
        let s = &self.state;
        let done = s.done.fetch_add(size as u64, Ordering::Relaxed) + size as u64;
        let total = s.total.load(Ordering::Relaxed).max(1);
        let tenths = (done * 10 / total).min(10);
        if tenths > s.tenths_logged.fetch_max(tenths, Ordering::Relaxed) && tenths < 10 {
            tracing::info!(file = %s.file, "downloading: {}% of {} MB", tenths * 10, total >> 20);
        }
    }

    async fn finish(&mut self) {
        tracing::info!(file = %self.state.file, "downloaded");
    }
}
