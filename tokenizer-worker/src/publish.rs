//! Sending one batch on: offered straight to a GPU worker (the direct path), or published
//! to the JetStream work queue until the server confirms it.
//!
//! A small batch may be offered first on the direct subject (core NATS request/reply, one
//! hop instead of the work queue's store and delivery): a GPU worker that expects to finish
//! it soon takes it and answers `done` once its requests are answered. The batch stays here
//! until then; when no worker takes it (`busy`, none listening, no answer in time: a worker
//! that died holding it), it goes to the work queue. A worker that answered late may then
//! have computed it too; requesters keep one vector per input. A batch queued after a
//! timeout is marked as one that failed a device, as the GPU worker whose device failed on
//! it marks the copy it queues under the same message id: the stream keeps one of the two,
//! and a poison input fails at most two workers on either path.
//!
//! A failed publish (the server restarting, a cluster electing a new stream leader, a
//! memory stream lost with its server) is retried with backoff, re-creating the stream
//! first, until the earliest deadline among the batch's requests; only then are its
//! requests answered with an error.
//!
//! Each batch travels in its lane ([`crate::lane`]): only interactive batches are offered
//! directly; bulk ones go to the bulk lane's stream.
//!
//! Every send of a batch (the offer, each publish attempt) carries each item's budget as it
//! stands at that moment (`budget_ms`, [`ReadyBatch::stamp_budgets`]): time spent waiting
//! for a GPU worker's answer or for the server counts against it.
//!
//! Every batch carries a `Nats-Msg-Id` header, unique per batch and the same on every retry
//! of its publish ([`BatchIds`]): a publish whose confirmation was lost (the server stored
//! the batch, then the connection dropped) is retried, and the stream stores the batch once
//! (JetStream drops a message whose id it saw within its duplicate window).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::{HeaderMap, RequestErrorKind};
use bytes::Bytes;
use common::queue::{MESSAGE_TTL, QueueConfig, batch_headers, batch_ttl, lane_stream_for};
use common::subjects::{Subjects, Task};
use common::wire::{self, BatchItem, DirectOutcome, DirectReply, ErrorCode, ErrorReply, Priority};
use common::worker::send_error;

use crate::batcher::ReadyBatch;

/// First pause between two publish attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// Longest pause between two publish attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How long a batch whose requests carry no deadline is retried.
const NO_DEADLINE_PATIENCE: Duration = Duration::from_secs(30);

/// Bytes a batch message keeps free under the server's `max_payload` for its headers (the
/// server counts them in): `Nats-Msg-Id` and `Nats-TTL` here, the marks a GPU worker adds
/// when it queues the batch again, and JetStream's own. A few hundred at most.
pub const HEADER_ROOM: usize = 1024;

/// The most bytes an encoded batch may take on a server whose `max_payload` is
/// `max_payload`.
pub fn batch_bytes_limit(max_payload: usize) -> usize {
    max_payload.saturating_sub(HEADER_ROOM)
}

/// The message ids of one worker's batches: `{prefix}-{n}`, the prefix unique to the
/// process (a NUID, as NATS inboxes use), `n` counting its batches.
#[derive(Debug, Clone)]
pub struct BatchIds {
    /// Unique to this worker process.
    prefix: String,
    /// Batches named so far.
    issued: u64,
}

impl BatchIds {
    /// Ids unique to this process: the prefix is the last token of a fresh inbox of `client`.
    pub fn new(client: &async_nats::Client) -> Self {
        let inbox = client.new_inbox();
        let prefix = inbox.rsplit('.').next().unwrap_or(&inbox).to_string();
        Self { prefix, issued: 0 }
    }

    /// The id of the next batch.
    pub fn next_id(&mut self) -> String {
        self.issued += 1;
        format!("{}-{}", self.prefix, self.issued)
    }
}

/// Where batches go: the work queue's subject and how to re-create its stream.
#[derive(Clone)]
pub struct WorkQueue {
    /// JetStream context of the worker's connection.
    pub js: jetstream::Context,
    /// The connection, for error replies.
    pub client: async_nats::Client,
    /// The deployment's subjects (the batch subject and stream name).
    pub subjects: Subjects,
    /// The worker's task: picks the batch subject and stream.
    pub task: Task,
    /// Stream settings, to re-create a lost stream.
    pub queue: QueueConfig,
}

/// What became of a batch: its items, and whether a GPU worker or the work queue holds them.
pub struct Published {
    /// The batch's sequences (their tokens dropped).
    pub items: Vec<BatchItem>,
    /// True when a GPU worker served the batch (direct path) or the server confirmed it
    /// (work queue); false when its requests were answered with an error.
    pub queued: bool,
    /// Whether the batch was offered on the direct path (whatever became of the offer).
    pub offered: bool,
}

/// Offers `batch` to the GPU workers on the direct subject, waiting up to `timeout` for one
/// to serve it; when none does, publishes it to the work queue as message `msg_id`
/// ([`publish_batch`]).
pub async fn offer_batch(
    queue: WorkQueue,
    batch: ReadyBatch,
    msg_id: String,
    timeout: Duration,
) -> Published {
    Published {
        offered: true,
        ..offer_or_queue(&queue, batch, msg_id, timeout).await
    }
}

/// [`offer_batch`]'s work: the offer, then the work queue when no GPU worker served it.
async fn offer_or_queue(
    queue: &WorkQueue,
    mut batch: ReadyBatch,
    msg_id: String,
    timeout: Duration,
) -> Published {
    let Some(payload) = encode(&mut batch) else {
        return fail(queue, batch.batch.items, "batch does not encode");
    };
    let subject = queue.subjects.direct_batches_for(queue.task);
    // The GPU worker queues a batch its device failed on under this id, so that copy and
    // the one queued here after a timeout are stored once.
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
    let offer = async_nats::Request::new()
        .payload(payload)
        .headers(headers)
        .timeout(Some(timeout));
    let mut failures = 0;
    match queue.client.send_request(subject, offer).await {
        Ok(answer) => match wire::decode::<DirectReply>(&answer.payload) {
            Ok(DirectReply {
                outcome: DirectOutcome::Done,
            }) => {
                return Published {
                    items: batch.batch.items,
                    queued: true,
                    offered: false,
                };
            }
            Ok(DirectReply {
                outcome: DirectOutcome::Busy,
            }) => tracing::debug!("GPU worker busy; queueing the batch"),
            Err(e) => {
                tracing::warn!(error = %e, "unexpected answer to a direct batch; queueing it")
            }
        },
        Err(e) if e.kind() == RequestErrorKind::NoResponders => {
            tracing::debug!("no GPU worker takes direct batches; queueing the batch");
        }
        Err(e) if e.kind() == RequestErrorKind::TimedOut => {
            // The worker that took it neither served it nor handed it back: its device may
            // have failed on it. Queued as the failing worker would queue it (one failed
            // device), it runs apart and cannot fail more than one further worker.
            failures = 1;
            tracing::warn!(
                ?timeout,
                sequences = batch.batch.items.len(),
                "no GPU worker finished a direct batch in time; queueing it as one that \
                 failed a device (it may be computed twice)"
            );
        }
        Err(e) => tracing::warn!(error = %e, "direct batch not offered; queueing it"),
    }
    // The GPU worker that pulls it reports a direct-path fallback.
    for item in &mut batch.batch.items {
        if let Some(timings) = &mut item.timings {
            timings.offered = true;
        }
    }
    publish_to_queue(queue, Priority::Interactive, batch, msg_id, failures).await
}

/// Publishes interactive `batch` as message `msg_id` (its `Nats-Msg-Id`: the stream stores
/// the batch once however often it is published), retrying until the server confirms it or the
/// earliest deadline of its requests passes; then answers every request in it with
/// `overloaded`.
pub async fn publish_batch(queue: WorkQueue, batch: ReadyBatch, msg_id: String) -> Published {
    publish_to_queue(&queue, Priority::Interactive, batch, msg_id, 0).await
}

/// [`publish_batch`] for a batch of lane `lane`, to that lane's stream.
pub async fn publish_lane_batch(
    queue: WorkQueue,
    lane: Priority,
    batch: ReadyBatch,
    msg_id: String,
) -> Published {
    publish_to_queue(&queue, lane, batch, msg_id, 0).await
}

/// The batch's message with each item's budget as it stands now, or `None` (logged) when
/// it does not encode.
fn encode(batch: &mut ReadyBatch) -> Option<Bytes> {
    batch.stamp_budgets(Instant::now());
    match wire::encode(&batch.batch) {
        Ok(encoded) => Some(Bytes::from(encoded)),
        Err(e) => {
            tracing::error!(error = %e, "batch does not encode; this is a bug");
            None
        }
    }
}

/// Publishes `batch` to the work queue as message `msg_id`, marked with `failures` failed
/// devices ([`common::queue::FAILURES_HEADER`], when not 0), retrying as [`publish_batch`] says; each
/// attempt carries the budgets left at its moment.
async fn publish_to_queue(
    queue: &WorkQueue,
    lane: Priority,
    mut batch: ReadyBatch,
    msg_id: String,
    failures: u32,
) -> Published {
    let give_up = give_up_at(&batch, Instant::now());
    let subject = queue.subjects.lane_batches(queue.task, lane);
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let Some(payload) = encode(&mut batch) else {
            return fail(queue, batch.batch.items, "batch does not encode");
        };
        let mut headers = batch_headers(&msg_id, failures);
        // The server drops the batch once every request's time ran out in the queue.
        if let Some(ttl) = batch_ttl(batch.batch.items.iter().map(|item| item.budget_ms)) {
            headers.insert(MESSAGE_TTL, ttl.as_str());
        }
        let publish = queue
            .js
            .publish_with_headers(subject.clone(), headers, payload);
        let failure = match publish.await {
            Ok(ack) => match ack.await {
                Ok(ack) => {
                    if ack.duplicate {
                        tracing::debug!(%msg_id, "the work queue already held this batch");
                    }
                    None
                }
                Err(e) => Some(e.to_string()),
            },
            Err(e) => Some(e.to_string()),
        };
        let Some(reason) = failure else {
            if attempts > 1 {
                tracing::info!(attempts, "batch queued after retrying");
            }
            return Published {
                items: batch.batch.items,
                queued: true,
                offered: false,
            };
        };
        if Instant::now() + backoff >= give_up {
            let sequences = batch.batch.items.len();
            tracing::error!(%reason, attempts, sequences, "batch not queued; giving up");
            return fail(queue, batch.batch.items, &reason);
        }
        tracing::warn!(%reason, attempts, "batch not queued; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        // The stream may be gone with a restarted server (memory storage): re-create it.
        let (js, subjects, queue_config) = (&queue.js, &queue.subjects, &queue.queue);
        if let Err(e) = lane_stream_for(js, subjects, queue.task, lane, queue_config).await {
            tracing::debug!(error = %e, "work queue stream not (re)created yet");
        }
    }
}

/// When retrying is useless: the earliest deadline among the batch's items, or
/// [`NO_DEADLINE_PATIENCE`] from `now` when none has one.
fn give_up_at(batch: &ReadyBatch, now: Instant) -> Instant {
    batch
        .earliest_deadline()
        .unwrap_or(now + NO_DEADLINE_PATIENCE)
}

/// Answers every request of an unqueued batch once with `overloaded`.
fn fail(queue: &WorkQueue, items: Vec<BatchItem>, reason: &str) -> Published {
    let mut answered = HashSet::new();
    for item in &items {
        if answered.insert((item.reply_to.as_str(), item.request_id.as_str())) {
            let error = ErrorReply::new(
                Some(item.request_id.clone()),
                ErrorCode::Overloaded,
                format!("the work queue did not take the batch: {reason}"),
            );
            send_error(&queue.client, &item.reply_to, &error);
        }
    }
    drop(answered);
    Published {
        items,
        queued: false,
        offered: false,
    }
}

#[cfg(test)]
mod tests {
    use common::wire::TokenBatch;

    use super::*;

    fn item(index: u32) -> BatchItem {
        BatchItem {
            request_id: "r".into(),
            reply_to: "_INBOX.r".into(),
            index,
            total: 3,
            len: 1,
            dims: 0,
            deadline_ms: 0,
            trace: None,
            bundle_to: None,
            budget_ms: 0,
            ..Default::default()
        }
    }

    fn batch(deadlines: Vec<Option<Instant>>) -> ReadyBatch {
        ReadyBatch {
            batch: TokenBatch {
                token_ids: vec![7; deadlines.len()],
                items: (0..deadlines.len() as u32).map(item).collect(),
            },
            deadlines,
        }
    }

    #[test]
    fn each_send_stamps_the_time_the_request_spent_here() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let mut ready = batch(vec![None, None]);
        ready.batch.items[0].timings = Some(wire::ItemTimings::tokenized(now, now + ms(3)));
        ready.stamp_budgets(now + ms(10));
        let sent = |ready: &ReadyBatch| ready.batch.items[0].timings.clone().unwrap().sent_ms;
        assert!((sent(&ready) - 10.0).abs() < 1e-3, "{}", sent(&ready));
        // A later send (a publish after a refused offer) counts the wait too.
        ready.stamp_budgets(now + ms(25));
        assert!((sent(&ready) - 25.0).abs() < 1e-3, "{}", sent(&ready));
        assert_eq!(
            ready.batch.items[1].timings, None,
            "an item without timings keeps none"
        );
    }

    #[test]
    fn retries_stop_at_the_earliest_deadline() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let mixed = batch(vec![None, Some(now + ms(900)), Some(now + ms(500))]);
        assert_eq!(give_up_at(&mixed, now), now + ms(500));
        assert_eq!(
            give_up_at(&batch(vec![None]), now),
            now + NO_DEADLINE_PATIENCE
        );
    }

    #[test]
    fn each_send_carries_the_budgets_left_at_its_moment() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let mut ready = batch(vec![None, Some(now + ms(900)), Some(now + ms(500))]);
        ready.stamp_budgets(now);
        let budgets = |ready: &ReadyBatch| -> Vec<u64> {
            ready
                .batch
                .items
                .iter()
                .map(|item| item.budget_ms)
                .collect()
        };
        assert_eq!(budgets(&ready), [0, 900, 500]);
        // A retry 600 ms later: less left, and a used-up budget is 1 ms, not none.
        ready.stamp_budgets(now + ms(600));
        assert_eq!(budgets(&ready), [0, 300, 1]);
        // Each encoding stamps the budgets anew, at the moment of the send.
        let sent: TokenBatch = wire::decode(&encode(&mut ready).expect("encodes")).unwrap();
        let left: Vec<u64> = sent.items.iter().map(|item| item.budget_ms).collect();
        assert_eq!(left[0], 0);
        assert!((800..=900).contains(&left[1]), "{left:?}");
        assert!((400..=500).contains(&left[2]), "{left:?}");
    }
}
