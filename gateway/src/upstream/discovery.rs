//! Worker discovery: a scatter-gather on the status subject, cached briefly.
//!
//! Every worker (tokenizer and GPU) answers an empty message on `{prefix}.status` with one
//! `WorkerStatus`. Their number is unknown, so a discovery always waits `status_wait`
//! (unless the server says nobody listens). The result is reused for `status_ttl` so that
//! `/health` under load costs NATS one scatter-gather per TTL.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, StatusCode};
use common::subjects::Subjects;
use common::wire::{self, WorkerKind, WorkerStatus};
use futures::StreamExt;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The workers that answered one discovery.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When the discovery finished.
    pub taken: Instant,
    /// Unix time in milliseconds of the same moment.
    pub taken_ms: u64,
    /// One status per worker, by worker id.
    pub workers: Arc<Vec<WorkerStatus>>,
    /// Why the discovery could not run (not connected to NATS), if it could not.
    pub error: Option<String>,
}

impl Snapshot {
    /// Workers of `kind` with their model (or tokenizer) loaded and not unhealthy.
    pub fn loaded(&self, kind: WorkerKind) -> usize {
        self.workers
            .iter()
            .filter(|w| w.kind == kind && w.serving())
            .count()
    }

    /// Sequences waiting in the tokenizer workers (the pipeline's queue depth).
    pub fn queue_depth(&self) -> u64 {
        self.workers
            .iter()
            .filter(|w| w.kind == WorkerKind::Tokenizer)
            .map(|w| w.in_flight)
            .sum()
    }

    /// The smallest hidden size a loaded GPU worker reports, when any does.
    pub fn hidden_size(&self) -> Option<u32> {
        self.workers
            .iter()
            .filter(|w| w.kind == WorkerKind::Gpu && w.serving())
            .filter_map(|w| w.hidden_size)
            .min()
    }
}

/// Finds the workers of this deployment; one per gateway, shared by handlers.
pub struct Discovery {
    /// The connection.
    client: Client,
    /// The status subject.
    subject: String,
    /// How long to gather answers.
    wait: Duration,
    /// How long a snapshot is reused.
    ttl: Duration,
    /// The latest snapshot; the lock also makes concurrent callers share one gather.
    latest: Mutex<Option<Snapshot>>,
    /// Hidden size from the latest snapshot (0 = unknown), readable without waiting.
    hidden_size: AtomicU32,
}

impl Discovery {
    /// Discovery on `subjects`' status subject.
    pub fn new(client: Client, subjects: &Subjects, wait: Duration, ttl: Duration) -> Self {
        Self {
            client,
            subject: subjects.status(),
            wait,
            ttl,
            latest: Mutex::new(None),
            hidden_size: AtomicU32::new(0),
        }
    }

    /// The workers now: the cached snapshot while fresh, else a new discovery.
    pub async fn workers(&self) -> Snapshot {
        let mut latest = self.latest.lock().await;
        if let Some(snapshot) = latest.as_ref() {
            // A failed discovery is not reused: the next caller tries again.
            if snapshot.error.is_none() && snapshot.taken.elapsed() < self.ttl {
                return snapshot.clone();
            }
        }
        let snapshot = self.gather().await;
        let hidden = snapshot.hidden_size();
        self.hidden_size
            .store(hidden.unwrap_or(0), Ordering::Relaxed);
        *latest = Some(snapshot.clone());
        snapshot
    }

    /// Waits until the client is connected (at most `patience`), then discovers: run once at
    /// start so the hidden size is known before the first request.
    pub async fn warm_up(&self, patience: Duration) {
        let end = Instant::now() + patience;
        while self.client.connection_state() != State::Connected && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.workers().await;
    }

    /// The model's hidden size as last reported by a GPU worker, without waiting.
    pub fn known_hidden_size(&self) -> Option<u32> {
        match self.hidden_size.load(Ordering::Relaxed) {
            0 => None,
            size => Some(size),
        }
    }

    /// Asks every worker for its status and gathers the answers for `wait`.
    async fn gather(&self) -> Snapshot {
        let workers = match self.collect().await {
            Ok(workers) => workers,
            Err(error) => {
                tracing::warn!("worker discovery failed: {error}");
                return Snapshot {
                    taken: Instant::now(),
                    taken_ms: wire::now_ms(),
                    workers: Arc::default(),
                    error: Some(error),
                };
            }
        };
        Snapshot {
            taken: Instant::now(),
            taken_ms: wire::now_ms(),
            workers: Arc::new(workers),
            error: None,
        }
    }

    async fn collect(&self) -> Result<Vec<WorkerStatus>, String> {
        let state = self.client.connection_state();
        if state != State::Connected {
            return Err(format!("not connected to NATS ({state})"));
        }
        let inbox = self.client.new_inbox();
        let mut answers = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| format!("cannot subscribe for status answers: {e}"))?;
        self.client
            .publish_with_reply(self.subject.clone(), inbox, bytes::Bytes::new())
            .await
            .map_err(|e| format!("cannot publish the status request: {e}"))?;
        let end = Instant::now() + self.wait;
        let mut workers: Vec<WorkerStatus> = Vec::new();
        while let Ok(Some(message)) = tokio::time::timeout_at(end, answers.next()).await {
            if message.status == Some(StatusCode::NO_RESPONDERS) {
                break;
            }
            match wire::decode::<WorkerStatus>(&message.payload) {
                Ok(status) => {
                    workers.retain(|w| w.worker_id != status.worker_id);
                    workers.push(status);
                }
                Err(e) => tracing::warn!("ignoring an undecodable status answer: {e}"),
            }
        }
        if let Err(e) = answers.unsubscribe().await {
            tracing::debug!("cannot unsubscribe the status inbox: {e}");
        }
        workers.sort_by(|a, b| (a.kind as u8, &a.worker_id).cmp(&(b.kind as u8, &b.worker_id)));
        Ok(workers)
    }
}
