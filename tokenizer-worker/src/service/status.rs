//! The worker's answer on the status subject: what it serves and how much it did.

use common::subjects::Task;
use common::wire::{self, WorkerKind, WorkerStatus};

use super::state::State;
use crate::batcher::Batcher;

/// The status of a tokenizer worker for `task` serving `model` (`hidden_size` wide) with
/// `threads` tokenizer threads, before any work.
pub(super) fn initial_status(
    task: Task,
    model: String,
    threads: usize,
    hidden_size: u32,
) -> WorkerStatus {
    WorkerStatus {
        worker_id: format!(
            "tokenizer-{}",
            wire::now_ms() ^ u64::from(std::process::id())
        ),
        kind: WorkerKind::tokenizer(task),
        model,
        loaded: true,
        backend: None,
        device: Some(format!("cpu ({threads} tokenizer threads)")),
        device_memory_used: None,
        device_memory_total: None,
        hidden_size: Some(hidden_size),
        batches: 0,
        sequences: 0,
        tokens: 0,
        in_flight: 0,
        started_ms: wire::now_ms(),
        unhealthy: None,
    }
}

impl State {
    /// Answers one status request with the counters, and the sequences in hand (pending in
    /// `batcher` or being tokenized) as `in_flight`.
    pub(super) async fn answer_status(&mut self, message: async_nats::Message, batcher: &Batcher) {
        let Some(reply) = message.reply else { return };
        self.status.in_flight = (batcher.pending_seqs() + self.tokenizing) as u64;
        match wire::encode(&self.status) {
            Ok(bytes) => {
                if let Err(e) = self.client.publish(reply, bytes.into()).await {
                    tracing::warn!(error = %e, "status answer not sent");
                }
            }
            Err(e) => tracing::error!(error = %e, "status does not encode; this is a bug"),
        }
    }
}
