//! The GPU worker's NATS service: pulls token batches from the JetStream work queue only
//! when it has capacity, runs them on the device thread, publishes each request's vectors as
//! `EmbedChunk`s to its reply subject, and acks the batch after publishing. Started with
//! `task = rerank`, it loads a reranker, pulls from the rerank stream only, and publishes
//! `RerankChunk`s.
//!
//! Beside the work queue, small batches arrive on the direct subject (core NATS request,
//! queue group): the worker takes one only when it expects to finish it within
//! `direct_max_wait_ms` ([`crate::load`]), answers `done` once every request in it is
//! answered, and otherwise answers `busy` at once, so the tokenizer worker queues it.
//!
//! A worker whose device can no longer compute (a pass panicked, a sticky device error, the
//! device thread ended, a pass hung past the watchdog) leaves: it stops pulling and taking
//! offers, hands every batch it holds back (NAK, so JetStream redelivers it to another
//! worker at once; `busy` for direct offers), reports itself unhealthy on the status
//! subject, and [`run`] returns [`Unhealthy`] so the process exits non-zero.
//!
//! Rooms:
//! - `intake`: pulling from the work queue, decoding and checking batches, acks.
//! - `poison`: redelivered batches run alone or split per request; the last delivery is
//!   answered `internal`.
//! - `direct`: batches offered on the direct subject.
//! - `batching`: merging batches into passes, running them, per-batch failures.
//! - `replies`: chunks of vectors and scores, one builder for both.
//! - `health`: what the worker holds, the unhealthy path, the watchdog and progress acks.
//! - `status`: answers on the status subject.

mod batching;
mod direct;
mod health;
mod intake;
mod poison;
mod replies;
mod status;
#[cfg(test)]
mod test_items;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use async_nats::jetstream;
use common::nats::NatsConfig;
use common::queue::{QueueConfig, batch_stream_for, gpu_consumer_for, max_deliveries_advisory};
use common::subjects::{Subjects, Task};
use common::worker::{flush_at_shutdown, register_service};
use tokio::sync::{Semaphore, watch};

use crate::config::GpuWorkerConfig;
use crate::device::DeviceHandle;
use crate::load::Load;
use health::{Health, InHand};

/// How long an unhealthy worker keeps answering status requests (saying why) and offers
/// (`busy`) before it exits, so discovery and operators see why it left.
const UNHEALTHY_LINGER: Duration = Duration::from_secs(1);

/// The worker stopped because its device can no longer compute; its batches were handed
/// back. The process should exit non-zero so its supervisor restarts it.
#[derive(Debug, thiserror::Error)]
#[error("the GPU worker can no longer compute and left (its batches were handed back): {reason}")]
pub struct Unhealthy {
    /// Why: the panic, the sticky device error, the hung pass.
    pub reason: String,
}

/// Counters reported on the status subject.
#[derive(Default)]
struct Counters {
    /// Forward passes run.
    batches: AtomicU64,
    /// Sequences computed.
    sequences: AtomicU64,
    /// Tokens computed.
    tokens: AtomicU64,
    /// Batches being served now.
    in_flight: AtomicU64,
}

/// What every batch task needs.
struct Shared {
    /// The worker's connection: replies, acks and direct answers all go out on it, in order.
    client: async_nats::Client,
    /// The device thread.
    device: DeviceHandle,
    /// Counters for status answers.
    counters: Counters,
    /// The work queue's `ack_wait`: progress acks go out every third of it.
    ack_wait: Duration,
    /// The server's largest message.
    max_payload: usize,
    /// Token budget of one merged forward pass.
    max_batch_tokens: usize,
    /// Embeddings or rerank scores.
    task: Task,
    /// Tokens in hand and the measured time per token, for taking direct batches.
    load: std::sync::Mutex<Load>,
    /// Whether the device can still compute, and why not.
    health: Health,
    /// The batches held (pulled or taken, not yet answered), to hand back if the device is
    /// lost.
    hand: InHand,
    /// JetStream, to put split batches back in the work queue.
    queue: jetstream::Context,
    /// The work queue's subject for this worker's task.
    batches_subject: String,
    /// The queue's `max_deliver`: a batch on its last delivery is answered, not run.
    max_deliver: i64,
}

impl Shared {
    /// The load bookkeeping, locked.
    fn load(&self) -> std::sync::MutexGuard<'_, Load> {
        // The bookkeeping stays consistent even if a holder panicked.
        self.load
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Runs a GPU worker until `shutdown` resolves, then stops pulling, finishes (and acks) the
/// batches in hand, and returns. Returns [`Unhealthy`] (after handing its batches back) when
/// the device can no longer compute; the device thread is then left behind, not joined.
pub async fn run(
    config: GpuWorkerConfig,
    nats: NatsConfig,
    queue: QueueConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let task = config.task;
    let fault = config.fault_hook();
    let device = DeviceHandle::start(
        config.model_dir.clone(),
        config.engine_options(),
        task,
        fault,
    )
    .await?;
    if let Some(fault) = fault {
        tracing::warn!(?fault, "the test-only fault hook is armed");
    }
    let info = device.info().clone();
    tracing::info!(
        task = task.as_str(),
        model = %config.model_name,
        backend = %info.backend,
        device = %info.device.description,
        "model loaded"
    );
    let client = nats.connect("gpu-worker").await?;
    let subjects = nats.subjects();
    let js = jetstream::new(client.clone());
    let stream = batch_stream_for(&js, &subjects, task, &queue).await?;
    let mut consumer = gpu_consumer_for(&stream, task, &queue).await?;
    tracing::info!(batches = %subjects.batches_for(task), "pulling batches");
    let shared = Arc::new(Shared {
        client: client.clone(),
        device,
        counters: Counters::default(),
        ack_wait: Duration::from_secs_f64(queue.ack_wait_s.max(1.0)),
        max_payload: client.server_info().max_payload,
        max_batch_tokens: config.max_batch_tokens,
        task,
        load: std::sync::Mutex::new(Load::default()),
        health: Health::default(),
        hand: InHand::default(),
        queue: js.clone(),
        batches_subject: subjects.batches_for(task),
        max_deliver: queue.max_deliver,
    });
    // Subscribed before the worker answers status requests: a worker that is seen is one
    // that takes direct offers.
    let direct_max_wait = Duration::from_millis(config.direct_max_wait_ms);
    let offers = if direct_max_wait.is_zero() {
        None
    } else {
        let subject = subjects.direct_batches_for(task);
        tracing::info!(direct = %subject, "taking direct batches");
        Some(
            client
                .queue_subscribe(subject, Subjects::direct_queue_group(task).into())
                .await?,
        )
    };
    // Batches that ran out of deliveries: one worker of the pool answers each.
    let advisories = client
        .queue_subscribe(
            max_deliveries_advisory(&subjects.batch_stream_for(task), task),
            Subjects::direct_queue_group(task).into(),
        )
        .await?;
    let exhausted = tokio::spawn(poison::answer_max_deliveries(
        Arc::clone(&shared),
        advisories,
        stream.clone(),
    ));
    let status_task = tokio::spawn(status::answer_status(
        client.subscribe(subjects.status()).await?,
        Arc::clone(&shared),
        status::initial(&config, &info),
    ));
    let watchdog = tokio::spawn(health::watch_device(Arc::clone(&shared), config.clone()));
    let (service_name, what) = match task {
        Task::Embed => ("qwen3-embed-gpu", "embedding model"),
        Task::Rerank => ("qwen3-embed-rerank-gpu", "reranker"),
    };
    let _service = register_service(
        &client,
        service_name,
        format!("Qwen3 {what} {} on {}", config.model_name, info.backend),
    )
    .await;

    let capacity = Arc::new(Semaphore::new(config.max_batches_in_hand.max(1)));
    let merge_limit = config.merge_batches.max(1);
    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let direct = offers.map(|offers| {
        tokio::spawn(direct::take_direct(
            Arc::clone(&shared),
            offers,
            direct::DirectLimits {
                max_wait: direct_max_wait,
                merge: merge_limit,
            },
            stop_rx.clone(),
        ))
    });
    let background = Background {
        status: status_task,
        watchdog,
        exhausted,
        direct,
    };
    while !*stop_rx.borrow() {
        // Biased, health first: a worker that lost its device and is asked to stop at once
        // still leaves as unhealthy (exit non-zero), never as a clean stop.
        let permit = tokio::select! {
            biased;
            () = shared.health.failed() => return leave(&shared, background).await,
            _ = stop_rx.changed() => break,
            permit = Arc::clone(&capacity).acquire_owned() => permit?,
        };
        // A pull is never abandoned half-way (the server would hand its batches to nobody
        // until `ack_wait` passed); it ends within a few seconds, and what it brings is
        // served (or handed back at once when the device was lost meanwhile).
        match intake::pull(&consumer, merge_limit).await {
            Ok(messages) if messages.is_empty() => {}
            Ok(messages) => {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    intake::process(&shared, messages).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "pulling batches failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                // A restarted server may have lost a memory stream and its consumer (or a
                // cluster moved them): find or re-create both before the next pull.
                match batch_stream_for(&js, &subjects, task, &queue).await {
                    Ok(stream) => match gpu_consumer_for(&stream, task, &queue).await {
                        Ok(found) => consumer = found,
                        Err(e) => tracing::warn!(error = %e, "work queue consumer not reachable"),
                    },
                    Err(e) => tracing::warn!(error = %e, "work queue stream not reachable"),
                }
            }
        }
    }

    tracing::info!("gpu worker draining");
    let all = u32::try_from(config.max_batches_in_hand.max(1)).unwrap_or(u32::MAX);
    tokio::select! {
        biased;
        () = shared.health.failed() => return leave(&shared, background).await,
        _all_done = capacity.acquire_many(all) => {}
    }
    let mut background = background;
    if let Some(direct) = background.direct.as_mut() {
        tokio::select! {
            biased;
            () = shared.health.failed() => return leave(&shared, background).await,
            finished = direct => if let Err(e) = finished {
                tracing::error!(error = %e, "direct batch task failed; this is a bug");
            },
        }
    }
    // The last pass of the drain may have been the one that lost the device.
    if shared.health.is_failed() {
        return leave(&shared, background).await;
    }
    background.abort();
    flush_at_shutdown(&client).await;
    tracing::info!("gpu worker stopped");
    Ok(())
}

/// The worker's tasks besides the pulling loop.
struct Background {
    /// Answers status requests.
    status: tokio::task::JoinHandle<()>,
    /// Watches the device and sends progress acks.
    watchdog: tokio::task::JoinHandle<()>,
    /// Answers the requests of batches out of deliveries.
    exhausted: tokio::task::JoinHandle<()>,
    /// Takes direct offers, when the worker does.
    direct: Option<tokio::task::JoinHandle<()>>,
}

impl Background {
    /// Stops every task (those waiting on a stuck device would never end).
    fn abort(self) {
        if let Some(direct) = self.direct {
            direct.abort();
        }
        self.status.abort();
        self.watchdog.abort();
        self.exhausted.abort();
    }
}

/// The unhealthy exit: hands every batch held back, keeps answering status requests (as
/// unhealthy) and offers (`busy`) for [`UNHEALTHY_LINGER`], hands back whatever came in
/// meanwhile, flushes, and returns [`Unhealthy`]. Nothing waits on the device thread.
async fn leave(shared: &Shared, background: Background) -> anyhow::Result<()> {
    let reason = shared
        .health
        .reason()
        .unwrap_or("the device was lost")
        .to_string();
    health::hand_back_all(shared).await;
    tokio::time::sleep(UNHEALTHY_LINGER).await;
    health::hand_back_all(shared).await;
    background.abort();
    flush_at_shutdown(&shared.client).await;
    Err(Unhealthy { reason }.into())
}
