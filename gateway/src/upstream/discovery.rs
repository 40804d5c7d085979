//! Worker discovery: a scatter-gather on the status subject, cached briefly.
//!
//! Every worker (tokenizer and GPU, of every model) answers an empty message on
//! `{prefix}.status` with one `WorkerStatus`. Their number is unknown, so a discovery always
//! waits `status_wait` (unless the server says nobody listens). The result is reused for
//! `status_ttl` so that `/health` under load costs NATS one scatter-gather per TTL. The latest
//! successful result stays readable without waiting ([`Discovery::latest_good`]): requests
//! pick their model from it (`crate::models`).

use std::sync::Arc;
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

    /// Workers of `kind` serving a task's default model (no route of their own), with their
    /// model loaded and not unhealthy: what `/health` asks for.
    pub fn loaded_default(&self, kind: WorkerKind) -> usize {
        self.workers
            .iter()
            .filter(|w| w.kind == kind && w.route.is_none() && w.serving())
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
    /// The latest snapshot of a discovery that ran, readable without waiting for a gather
    /// in progress.
    latest_good: std::sync::Mutex<Option<Snapshot>>,
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
            latest_good: std::sync::Mutex::new(None),
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
        self.gather_into(&mut latest).await
    }

    /// Discovers now, whatever the age of the cached snapshot (a request named a model
    /// not seen yet).
    pub async fn refresh(&self) -> Snapshot {
        let mut latest = self.latest.lock().await;
        self.gather_into(&mut latest).await
    }

    /// The latest snapshot of a discovery that ran (not one that failed for want of a
    /// connection), without waiting; `None` before the first.
    pub fn latest_good(&self) -> Option<Snapshot> {
        self.lock_good().clone()
    }

    /// Gathers a new snapshot and keeps it as `latest` (and as the latest good one when
    /// the discovery ran).
    async fn gather_into(&self, latest: &mut Option<Snapshot>) -> Snapshot {
        let snapshot = self.gather().await;
        if snapshot.error.is_none() {
            *self.lock_good() = Some(snapshot.clone());
        }
        *latest = Some(snapshot.clone());
        snapshot
    }

    /// Locks the latest good snapshot; it is replaced whole, so a panic while the lock was
    /// held leaves nothing inconsistent and poisoning is ignored.
    fn lock_good(&self) -> std::sync::MutexGuard<'_, Option<Snapshot>> {
        self.latest_good
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until the client is connected (at most `patience`), then discovers: run once at
    /// start so the models and their hidden sizes are known before the first request.
    pub async fn warm_up(&self, patience: Duration) {
        let end = Instant::now() + patience;
        while self.client.connection_state() != State::Connected && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.workers().await;
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
