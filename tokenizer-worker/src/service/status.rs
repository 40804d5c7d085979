//! The worker's answer on the status subject: what it serves and how much it did.

use common::subjects::Task;
use common::wire::{WorkerKind, WorkerStatus};
use common::worker;

use super::state::State;
use crate::config::TokenizerWorkerConfig;
use crate::lane::Lanes;

/// The status of a tokenizer worker for `task` with `config` (its model `hidden_size` wide)
/// and `threads` tokenizer threads, on the model's route `route` (if it has one), before
/// any work.
pub(super) fn initial_status(
    task: Task,
    config: &TokenizerWorkerConfig,
    threads: usize,
    hidden_size: u32,
    route: Option<&str>,
) -> WorkerStatus {
    let model = config.model_name.clone();
    WorkerStatus {
        route: route.map(str::to_string),
        device: Some(format!("cpu ({threads} tokenizer threads)")),
        hidden_size: Some(hidden_size),
        max_input_tokens: Some(u32::try_from(config.max_length).unwrap_or(u32::MAX)),
        max_batch_tokens: Some(u32::try_from(config.max_batch_tokens).unwrap_or(u32::MAX)),
        ..worker::initial_status("tokenizer", WorkerKind::tokenizer(task), model)
    }
}

impl State {
    /// Answers one status request with the counters, and the sequences in hand (pending in
    /// `batcher` or being tokenized) as `in_flight`.
    pub(super) async fn answer_status(&mut self, message: async_nats::Message, batcher: &Lanes) {
        self.status.in_flight = (batcher.pending_seqs() + self.tokenizing) as u64;
        worker::answer_status(&self.client, message, &self.status).await;
    }
}
