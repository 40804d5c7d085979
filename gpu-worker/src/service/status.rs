//! Answers on the status subject: who the worker is, how busy, and whether it is healthy.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::wire::{WorkerKind, WorkerStatus};
use common::worker;
use futures::StreamExt;

use super::Shared;
use crate::config::GpuWorkerConfig;
use crate::engine::EngineInfo;

/// The worker's status before any batch; `route` is its model's route token, if it has one.
pub(super) fn initial(
    config: &GpuWorkerConfig,
    info: &EngineInfo,
    route: Option<&str>,
) -> WorkerStatus {
    WorkerStatus {
        route: route.map(str::to_string),
        backend: Some(info.backend.clone()),
        device: Some(info.device.description.clone()),
        device_memory_used: info.device.memory_used,
        device_memory_total: info.device.memory_total,
        hidden_size: Some(info.hidden_size as u32),
        ..worker::initial_status(
            "gpu",
            WorkerKind::gpu(config.task),
            config.model_name.clone(),
        )
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
        let c = &shared.counters;
        status.batches = c.batches.load(Ordering::Relaxed);
        status.sequences = c.sequences.load(Ordering::Relaxed);
        status.tokens = c.tokens.load(Ordering::Relaxed);
        status.in_flight = c.in_flight.load(Ordering::Relaxed);
        status.device_busy_ms = Some(c.busy_us.load(Ordering::Relaxed) / 1000);
        status.unhealthy = shared.health.reason().map(str::to_string);
        status.loaded = status.unhealthy.is_none();
        worker::answer_status(&shared.client, message, &status).await;
    }
}
