//! The JetStream work queue that carries token batches from tokenizer workers to GPU
//! workers. Both stages create it with the same settings (whoever starts first wins;
//! identical settings make the second call a no-op).
//!
//! Work-queue retention deletes a batch once a GPU worker acks it; an unacked batch (the
//! worker died) is redelivered after `ack_wait`. GPU workers pull only when they have
//! capacity, so a busy worker never receives work it cannot start.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::pull, stream};
use serde::Deserialize;

use crate::subjects::{Subjects, Task};
use crate::wire::Priority;

/// Durable consumer shared by all GPU workers of a deployment.
pub const GPU_CONSUMER: &str = "gpu-workers";

/// Durable consumer shared by all rerank GPU workers of a deployment (on its own stream).
pub const RERANK_CONSUMER: &str = "rerank-workers";

/// Durable consumer of the bulk lane's stream, shared by all GPU workers (beside
/// [`GPU_CONSUMER`] on the interactive stream).
pub const BULK_GPU_CONSUMER: &str = "gpu-workers-bulk";

/// Durable consumer of the rerank bulk lane's stream, shared by all rerank GPU workers.
pub const BULK_RERANK_CONSUMER: &str = "rerank-workers-bulk";

/// Where the stream keeps batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// In server memory: fastest; batches in the queue are lost if the server restarts.
    Memory,
    /// On the server's disk: survives a server restart.
    File,
}

/// Work queue settings (`[queue]` in the configuration).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Batch storage on the server.
    pub storage: Storage,
    /// Seconds before an unacknowledged batch is redelivered to another GPU worker; workers
    /// send progress acks while computing, so this bounds only how long a dead worker's batch
    /// waits.
    pub ack_wait_s: f64,
    /// Seconds a batch may stay in the queue before the server drops it, unanswered. It must
    /// outlast every request's deadline: gateways refuse to start with a longer
    /// `request_timeout_s`, tokenizer workers refuse a request whose deadline is further away.
    pub max_age_s: f64,
    /// Deliveries of one batch before it is given up (a batch that crashes workers).
    pub max_deliver: i64,
    /// Copies of the stream (and its consumer) in a JetStream cluster: 1 on a single server;
    /// 3 in a three-node cluster keeps the queue available when one node dies (R1 would
    /// make the queue unreachable while its one node is down).
    pub replicas: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            storage: Storage::Memory,
            ack_wait_s: 10.0,
            max_age_s: 300.0,
            max_deliver: 5,
            replicas: 1,
        }
    }
}

impl QueueConfig {
    /// How long a batch may stay in the queue (`max_age_s`, at least one second).
    pub fn max_age(&self) -> Duration {
        Duration::from_secs_f64(self.max_age_s.max(1.0))
    }
}

/// The queue could not be created or reached.
#[derive(Debug, thiserror::Error)]
#[error("JetStream work queue: {0}")]
pub struct QueueError(String);

/// How long a starting worker keeps trying to create or find its streams and consumers
/// before it gives up: a JetStream cluster that is still electing leaders (a fresh cluster,
/// a node restarting) refuses or times out such calls for a while.
pub const SETUP_PATIENCE: Duration = Duration::from_secs(60);

/// Runs `attempt` (creating or finding a stream or consumer) until it succeeds, retrying
/// with a growing pause (250 ms doubling to 4 s) for up to `patience`, and logging each
/// refusal; the last error once `patience` ran out.
pub async fn until_ready<T, F, Fut>(
    what: &str,
    patience: Duration,
    mut attempt: F,
) -> Result<T, QueueError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, QueueError>>,
{
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(250);
    loop {
        match attempt().await {
            Ok(ready) => return Ok(ready),
            Err(e) if started.elapsed() + pause >= patience => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, what, retry_in_ms = pause.as_millis() as u64, "JetStream not ready; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(4));
            }
        }
    }
}

/// Creates (or finds) the embedding batch stream.
pub async fn batch_stream(
    js: &jetstream::Context,
    subjects: &Subjects,
    config: &QueueConfig,
) -> Result<stream::Stream, QueueError> {
    batch_stream_for(js, subjects, Task::Embed, config).await
}

/// Creates (or finds) the batch stream of `task` (each task has its own stream, so
/// embedding and rerank workers never pull each other's work).
pub async fn batch_stream_for(
    js: &jetstream::Context,
    subjects: &Subjects,
    task: Task,
    config: &QueueConfig,
) -> Result<stream::Stream, QueueError> {
    lane_stream_for(js, subjects, task, Priority::Interactive, config).await
}

/// Creates (or finds) the stream of `task`'s batches in lane `lane` (each lane has its own
/// stream with the same settings, so GPU workers pull interactive work apart from bulk work).
pub async fn lane_stream_for(
    js: &jetstream::Context,
    subjects: &Subjects,
    task: Task,
    lane: Priority,
    config: &QueueConfig,
) -> Result<stream::Stream, QueueError> {
    let name = subjects.lane_stream(task, lane);
    let failed = |e: &dyn std::fmt::Display| QueueError(format!("stream {name}: {e}"));
    let stream = js
        .get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subjects.lane_batches(task, lane)],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: match config.storage {
                Storage::Memory => stream::StorageType::Memory,
                Storage::File => stream::StorageType::File,
            },
            max_age: config.max_age(),
            num_replicas: config.replicas.max(1),
            allow_message_ttl: true,
            ..Default::default()
        })
        .await
        .map_err(|e| failed(&e))?;
    if stream.cached_info().config.allow_message_ttl {
        return Ok(stream);
    }
    // A stream created by an older release: batches carry a TTL now ([`MESSAGE_TTL`]),
    // which the server refuses unless the stream allows it (it can be turned on, not off).
    let mut allowing = stream.cached_info().config.clone();
    allowing.allow_message_ttl = true;
    js.update_stream(allowing).await.map_err(|e| failed(&e))?;
    js.get_stream(&name).await.map_err(|e| failed(&e))
}

/// Header giving a queued batch its time to live on the server's clock (JetStream's
/// per-message TTL, nats-server 2.11 and later): the server removes a batch whose requests'
/// time ran out while it waited, whatever the workers' clocks say.
pub const MESSAGE_TTL: &str = "Nats-TTL";

/// Header counting the GPU workers whose device failed (a panic, a sticky device error, a
/// hung pass) with the batch in their pass: set by a failing GPU worker when it puts the
/// batch back in the queue, and by a tokenizer worker queueing a directly offered batch that
/// the GPU worker which took it neither served nor handed back in time. The GPU workers run
/// a marked batch apart and give it up after two failures (`gpu-worker`'s `poison` module).
pub const FAILURES_HEADER: &str = "Qwen3-Embed-Failures";

/// The headers of queued batch message `msg_id` (its `Nats-Msg-Id`, so that a batch
/// published twice is stored once) marked with `failures` failed devices
/// ([`FAILURES_HEADER`], absent when 0): how a tokenizer worker queues a batch and how a
/// failing GPU worker puts one back.
pub fn batch_headers(msg_id: &str, failures: u32) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
    if failures > 0 {
        headers.insert(FAILURES_HEADER, failures.to_string().as_str());
    }
    headers
}

/// The TTL of a batch whose items have `budgets_ms` left (0: no deadline): the longest,
/// in whole seconds rounded up (the header's unit); `None` when one item has no deadline
/// (the batch then lives until `max_age`).
pub fn batch_ttl(budgets_ms: impl IntoIterator<Item = u64>) -> Option<String> {
    let mut longest = 0;
    for budget in budgets_ms {
        if budget == 0 {
            return None;
        }
        longest = longest.max(budget);
    }
    (longest > 0).then(|| format!("{}s", longest.div_ceil(1000)))
}

/// Creates (or finds) the GPU workers' durable pull consumer on the batch stream.
pub async fn gpu_consumer(
    stream: &stream::Stream,
    config: &QueueConfig,
) -> Result<jetstream::consumer::PullConsumer, QueueError> {
    gpu_consumer_for(stream, Task::Embed, config).await
}

/// The durable consumer of `task`'s GPU workers.
pub fn gpu_consumer_name(task: Task) -> &'static str {
    lane_consumer_name(task, Priority::Interactive)
}

/// The durable consumer of `task`'s GPU workers on the stream of lane `lane`.
pub fn lane_consumer_name(task: Task, lane: Priority) -> &'static str {
    match (task, lane) {
        (Task::Embed, Priority::Interactive) => GPU_CONSUMER,
        (Task::Rerank, Priority::Interactive) => RERANK_CONSUMER,
        (Task::Embed, Priority::Bulk) => BULK_GPU_CONSUMER,
        (Task::Rerank, Priority::Bulk) => BULK_RERANK_CONSUMER,
    }
}

/// The subject where JetStream announces that a batch of `stream` ran out of deliveries to
/// `task`'s GPU workers (`max_deliver`): it is then never delivered again, but stays in the
/// stream until `max_age`.
pub fn max_deliveries_advisory(stream: &str, task: Task) -> String {
    lane_max_deliveries_advisory(stream, task, Priority::Interactive)
}

/// [`max_deliveries_advisory`] for the consumer of lane `lane` on its `stream`.
pub fn lane_max_deliveries_advisory(stream: &str, task: Task, lane: Priority) -> String {
    format!(
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{}",
        lane_consumer_name(task, lane)
    )
}

/// Creates (or finds) the durable pull consumer of `task`'s GPU workers on its stream.
pub async fn gpu_consumer_for(
    stream: &stream::Stream,
    task: Task,
    config: &QueueConfig,
) -> Result<jetstream::consumer::PullConsumer, QueueError> {
    lane_consumer_for(stream, task, Priority::Interactive, config).await
}

/// Creates (or finds) the durable pull consumer of `task`'s GPU workers on the `stream` of
/// lane `lane`.
pub async fn lane_consumer_for(
    stream: &stream::Stream,
    task: Task,
    lane: Priority,
    config: &QueueConfig,
) -> Result<jetstream::consumer::PullConsumer, QueueError> {
    let name = lane_consumer_name(task, lane);
    stream
        .get_or_create_consumer(
            name,
            pull::Config {
                durable_name: Some(name.into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs_f64(config.ack_wait_s.max(1.0)),
                max_deliver: config.max_deliver,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| QueueError(format!("consumer {name}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_headers_carry_the_id_and_a_failure_count_only_when_there_is_one() {
        let plain = batch_headers("b-1", 0);
        assert_eq!(
            plain
                .get(async_nats::header::NATS_MESSAGE_ID)
                .unwrap()
                .as_str(),
            "b-1"
        );
        assert!(plain.get(FAILURES_HEADER).is_none());
        let marked = batch_headers("b-2", 2);
        assert_eq!(marked.get(FAILURES_HEADER).unwrap().as_str(), "2");
    }

    #[tokio::test]
    async fn setup_is_retried_until_it_succeeds_or_patience_runs_out() {
        let mut calls = 0;
        let ready = until_ready("stream", SETUP_PATIENCE, || {
            calls += 1;
            let result = if calls < 3 {
                Err(QueueError("not yet".into()))
            } else {
                Ok(calls)
            };
            async move { result }
        })
        .await;
        assert_eq!(ready.unwrap(), 3);

        let started = tokio::time::Instant::now();
        let refused: Result<(), _> = until_ready("stream", Duration::from_secs(1), || async {
            Err(QueueError("no JetStream".into()))
        })
        .await;
        assert_eq!(
            refused.unwrap_err().to_string(),
            "JetStream work queue: no JetStream"
        );
        // Tries at 0, 250 and 750 ms; the next pause would end past the patience.
        assert!(
            started.elapsed() >= Duration::from_millis(750),
            "retried first"
        );
    }

    #[test]
    fn a_batch_lives_as_long_as_its_longest_budget_in_whole_seconds() {
        assert_eq!(batch_ttl([500]).as_deref(), Some("1s"));
        assert_eq!(batch_ttl([1_000, 2_001, 10]).as_deref(), Some("3s"));
        assert_eq!(batch_ttl([1_000, 0]), None, "an item without a deadline");
        assert_eq!(batch_ttl([]), None);
    }

    #[test]
    fn each_lane_has_its_own_consumer_and_advisory() {
        assert_eq!(
            lane_consumer_name(Task::Embed, Priority::Bulk),
            "gpu-workers-bulk"
        );
        assert_eq!(
            lane_consumer_name(Task::Rerank, Priority::Bulk),
            "rerank-workers-bulk"
        );
        assert_eq!(gpu_consumer_name(Task::Rerank), "rerank-workers");
        assert_eq!(
            lane_max_deliveries_advisory("EMBED_BULK_BATCHES", Task::Embed, Priority::Bulk),
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.EMBED_BULK_BATCHES.gpu-workers-bulk"
        );
    }
}
