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
//! Priority lanes: interactive and bulk batches come from two streams, each pulled by its
//! own loop through its own durable consumer with its own batches in hand, and take turns
//! on the device, interactive first, bulk passes bounded ([`lanes`]).
//!
//! Rooms:
//! - `intake`: pulling from the work queue, decoding and checking batches, acks.
//! - `poison`: redelivered batches run alone or split per request; the last delivery is
//!   answered `internal`.
//! - `direct`: batches offered on the direct subject.
//! - `batching`: merging batches into passes, running them, per-batch failures.
//! - `replies`: chunks of vectors and scores, one builder for both.
//! - `health`: what the worker holds, the unhealthy path, the watchdog and progress acks.
//! - `lanes`: turns on the device between interactive and bulk passes.
//! - `status`: answers on the status subject.
//! - `stages`: what each chunk tells the per-stage telemetry, and the pass's spans.

mod batching;
mod direct;
mod health;
mod intake;
mod lanes;
mod poison;
mod replies;
mod stages;
mod status;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use common::nats::NatsConfig;
use common::queue::{
    QueueConfig, SETUP_PATIENCE, lane_consumer_for, lane_max_deliveries_advisory, lane_stream_for,
    until_ready,
};
use common::subjects::{Subjects, Task};
use common::wire::Priority;
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
    /// Microseconds spent in forward passes (its rate is the device's utilisation).
    busy_us: AtomicU64,
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
    /// The served model's name, which every chunk's timings carry.
    model_name: String,
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
    /// Turns on the device between the lanes.
    turns: lanes::Turns,
    /// Token budget of one bulk pass (`bulk_max_pass_tokens`).
    bulk_max_pass_tokens: usize,
    /// Mean tokens of the bulk batches pulled last (0: none yet), to size bulk pulls.
    bulk_mean_tokens: AtomicUsize,
    /// Test only: how long each pass is held on the device before it runs.
    test_pass_delay: Duration,
}

impl Shared {
    /// The load bookkeeping, locked.
    fn load(&self) -> std::sync::MutexGuard<'_, Load> {
        // The bookkeeping stays consistent even if a holder panicked.
        self.load
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Token budget of one merged pass of `lane`.
    fn pass_budget(&self, lane: Priority) -> usize {
        match lane {
            Priority::Interactive => self.max_batch_tokens,
            Priority::Bulk => self.bulk_max_pass_tokens.clamp(1, self.max_batch_tokens),
        }
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
    let subjects = nats.worker_subjects(&config.model_name);
    let js = jetstream::new(client.clone());
    let mut streams = Vec::new();
    for lane in LANES {
        let (stream, consumer) = until_ready("the work queue", SETUP_PATIENCE, || async {
            let stream = lane_stream_for(&js, &subjects, task, lane, &queue).await?;
            let consumer = lane_consumer_for(&stream, task, lane, &queue).await?;
            Ok((stream, consumer))
        })
        .await?;
        streams.push((lane, stream, consumer));
    }
    tracing::info!(
        interactive = %subjects.lane_batches(task, Priority::Interactive),
        bulk = %subjects.lane_batches(task, Priority::Bulk),
        bulk_max_pass_tokens = config.bulk_max_pass_tokens,
        max_interactive_streak = config.max_interactive_streak,
        "pulling batches"
    );
    if config.test_pass_delay_ms > 0 {
        tracing::warn!(
            ms = config.test_pass_delay_ms,
            "the test-only pass delay is set: every pass waits that long"
        );
    }
    let shared = Arc::new(Shared {
        client: client.clone(),
        device,
        counters: Counters::default(),
        ack_wait: Duration::from_secs_f64(queue.ack_wait_s.max(1.0)),
        max_payload: client.server_info().max_payload,
        max_batch_tokens: config.max_batch_tokens,
        task,
        model_name: config.model_name.clone(),
        load: std::sync::Mutex::new(Load::default()),
        health: Health::default(),
        hand: InHand::default(),
        queue: js.clone(),
        batches_subject: subjects.batches_for(task),
        max_deliver: queue.max_deliver,
        turns: lanes::Turns::new(config.max_interactive_streak),
        bulk_max_pass_tokens: config.bulk_max_pass_tokens,
        bulk_mean_tokens: AtomicUsize::new(0),
        test_pass_delay: Duration::from_millis(config.test_pass_delay_ms),
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
    // Batches that ran out of deliveries, in either lane: one worker of the pool answers
    // each.
    let mut exhausted = Vec::new();
    for (lane, stream, _) in &streams {
        let advisory =
            lane_max_deliveries_advisory(&subjects.lane_stream(task, *lane), task, *lane);
        let advisories = client
            .queue_subscribe(advisory, Subjects::direct_queue_group(task).into())
            .await?;
        exhausted.push(tokio::spawn(poison::answer_max_deliveries(
            Arc::clone(&shared),
            advisories,
            stream.clone(),
        )));
    }
    let status_task = tokio::spawn(status::answer_status(
        client.subscribe(subjects.status()).await?,
        Arc::clone(&shared),
        status::initial(&config, &info, subjects.route()),
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

    let in_hand = config.max_batches_in_hand.max(1);
    let merge_limit = config.merge_batches.max(1);
    let (stop_tx, stop_rx) = watch::channel(false);
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
    let pulls: Vec<LanePull> = streams
        .into_iter()
        .map(|(lane, _, consumer)| LanePull {
            lane,
            consumer,
            capacity: Arc::new(Semaphore::new(in_hand)),
        })
        .collect();
    let capacities: Vec<Arc<Semaphore>> = pulls.iter().map(|p| Arc::clone(&p.capacity)).collect();
    let place = QueuePlace {
        js: js.clone(),
        subjects: subjects.clone(),
        task,
        queue: queue.clone(),
    };
    let loops = pulls.into_iter().map(|pull| {
        pull_lane(
            Arc::clone(&shared),
            pull,
            merge_limit,
            &place,
            stop_rx.clone(),
        )
    });
    let ends = futures::future::join_all(loops).await;
    if ends.contains(&LoopEnd::Unhealthy) {
        return leave(&shared, background).await;
    }

    tracing::info!("gpu worker draining");
    let all = u32::try_from(in_hand).unwrap_or(u32::MAX);
    for capacity in &capacities {
        tokio::select! {
            biased;
            () = shared.health.failed() => return leave(&shared, background).await,
            _all_done = capacity.acquire_many(all) => {}
        }
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
    /// Answers the requests of batches out of deliveries, one task per lane.
    exhausted: Vec<tokio::task::JoinHandle<()>>,
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
        for exhausted in self.exhausted {
            exhausted.abort();
        }
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

/// The lanes, in the order their streams are set up.
const LANES: [Priority; 2] = [Priority::Interactive, Priority::Bulk];

/// One lane's pulling: its stream's durable consumer and the batches it may hold.
struct LanePull {
    /// The lane.
    lane: Priority,
    /// The lane's durable consumer (found again after a lost server).
    consumer: PullConsumer,
    /// Permits for the lane's batches in hand (`max_batches_in_hand`).
    capacity: Arc<Semaphore>,
}

/// Where the work queue lives, to find its streams and consumers again.
struct QueuePlace {
    /// JetStream on the worker's connection.
    js: jetstream::Context,
    /// The deployment's subjects.
    subjects: Subjects,
    /// The worker's task.
    task: Task,
    /// Stream and consumer settings.
    queue: QueueConfig,
}

/// How a lane's pulling loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoopEnd {
    /// Asked to stop: the batches in hand are still being served.
    Stopped,
    /// The device can no longer compute.
    Unhealthy,
}

/// Pulls `pull`'s lane whenever it has room, until `stop` turns true or the worker turns
/// unhealthy; each pull is served by a task of its own. Interactive pulls take up to
/// `merge_limit` batches; bulk pulls about as many as fill one bulk pass
/// ([`lanes::bulk_pull_size`]), so a worker holds little more bulk work than it runs next.
async fn pull_lane(
    shared: Arc<Shared>,
    mut pull: LanePull,
    merge_limit: usize,
    place: &QueuePlace,
    mut stop: watch::Receiver<bool>,
) -> LoopEnd {
    let lane = pull.lane;
    while !*stop.borrow() {
        // Biased, health first: a worker that lost its device and is asked to stop at once
        // still leaves as unhealthy (exit non-zero), never as a clean stop.
        let permit = tokio::select! {
            biased;
            () = shared.health.failed() => return LoopEnd::Unhealthy,
            _ = stop.changed() => break,
            permit = Arc::clone(&pull.capacity).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let limit = match lane {
            Priority::Interactive => merge_limit,
            Priority::Bulk => {
                let mean = shared.bulk_mean_tokens.load(Ordering::Relaxed);
                let budget = shared.pass_budget(Priority::Bulk);
                lanes::bulk_pull_size(budget, (mean > 0).then_some(mean), merge_limit)
            }
        };
        // A pull is never abandoned half-way (the server would hand its batches to nobody
        // until `ack_wait` passed); it ends within a few seconds, and what it brings is
        // served (or handed back at once when the device was lost meanwhile).
        match intake::pull(&pull.consumer, limit).await {
            Ok(messages) if messages.is_empty() => {}
            Ok(messages) => {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    intake::process(&shared, messages, lane).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, lane = ?lane, "pulling batches failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                // A restarted server may have lost a memory stream and its consumer (or a
                // cluster moved them): find or re-create both before the next pull.
                let (js, subjects, task, queue) =
                    (&place.js, &place.subjects, place.task, &place.queue);
                match lane_stream_for(js, subjects, task, lane, queue).await {
                    Ok(stream) => match lane_consumer_for(&stream, task, lane, queue).await {
                        Ok(found) => pull.consumer = found,
                        Err(e) => tracing::warn!(error = %e, "work queue consumer not reachable"),
                    },
                    Err(e) => tracing::warn!(error = %e, "work queue stream not reachable"),
                }
            }
        }
    }
    LoopEnd::Stopped
}
