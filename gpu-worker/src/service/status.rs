//! Answers on the status subject: who the worker is, how busy, and whether it is healthy.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::wire::{self, WorkerKind, WorkerStatus};
use futures::StreamExt;

use super::Shared;
use crate::config::GpuWorkerConfig;
use crate::engine::EngineInfo;

/// The worker's status before any batch.
pub(super) fn initial(config: &GpuWorkerConfig, info: &EngineInfo) -> WorkerStatus {
    WorkerStatus {
        worker_id: format!("gpu-{}", wire::now_ms() ^ u64::from(std::process::id())),
        kind: WorkerKind::gpu(config.task),
        model: config.model_name.clone(),
        loaded: true,
        backend: Some(info.backend.clone()),
        device: Some(info.device.description.clone()),
        device_memory_used: info.device.memory_used,
        device_memory_total: info.device.memory_total,
        hidden_size: Some(info.hidden_size as u32),
        batches: 0,
        sequences: 0,
        tokens: 0,
        in_flight: 0,
        started_ms: wire::now_ms(),
        unhealthy: None,
    }
}

/// Answers status requests with the current counters and health: an unhealthy worker says
/// why and reports `loaded: false`.
pub(super) async fn answer_status(
    mut requests: async_nats::Subscriber,
    shared: Arc<Shared>,
    mut status: WorkerStatus,
) {
    while let Some(message) = requests.next().await {
        let Some(reply) = message.reply else { continue };
        let c = &shared.counters;
        status.batches = c.batches.load(Ordering::Relaxed);
        status.sequences = c.sequences.load(Ordering::Relaxed);
        status.tokens = c.tokens.load(Ordering::Relaxed);
        status.in_flight = c.in_flight.load(Ordering::Relaxed);
        status.unhealthy = shared.health.reason().map(str::to_string);
        status.loaded = status.unhealthy.is_none();
        if let Ok(bytes) = wire::encode(&status)
            && let Err(e) = shared.client.publish(reply, bytes.into()).await
        {
            tracing::warn!(error = %e, "status answer not sent");
        }
    }
}
