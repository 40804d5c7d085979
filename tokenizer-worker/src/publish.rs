//! Publishing one batch to the JetStream work queue until the server confirms it.
//!
//! A failed publish (the server restarting, a cluster electing a new stream leader, a
//! memory stream lost with its server) is retried with backoff, re-creating the stream
//! first, until the earliest deadline among the batch's requests; only then are its
//! requests answered with an error.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream;
use common::queue::{QueueConfig, batch_stream_for};
use common::subjects::{Subjects, Task};
use common::wire::{self, BatchItem, ErrorCode, ErrorReply, TokenBatch};
use common::worker::send_error;

/// First pause between two publish attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// Longest pause between two publish attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How long a batch whose requests carry no deadline is retried.
const NO_DEADLINE_PATIENCE: Duration = Duration::from_secs(30);

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

/// What became of a batch: its items, and whether the work queue holds them.
pub struct Published {
    /// The batch's sequences (their tokens dropped).
    pub items: Vec<BatchItem>,
    /// True when the server confirmed the batch; false when its requests were answered
    /// with an error.
    pub queued: bool,
}

/// Publishes `batch`, retrying until the server confirms it or the earliest deadline of its
/// requests passes; then answers every request in it with `overloaded`.
pub async fn publish_batch(queue: WorkQueue, batch: TokenBatch) -> Published {
    let payload = match wire::encode(&batch) {
        Ok(encoded) => bytes::Bytes::from(encoded),
        Err(e) => {
            tracing::error!(error = %e, "batch does not encode; this is a bug");
            return fail(&queue, batch.items, &e.to_string());
        }
    };
    let give_up_ms = give_up_at(&batch.items, wire::now_ms());
    let subject = queue.subjects.batches_for(queue.task);
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let failure = match queue.js.publish(subject.clone(), payload.clone()).await {
            Ok(ack) => match ack.await {
                Ok(_) => None,
                Err(e) => Some(e.to_string()),
            },
            Err(e) => Some(e.to_string()),
        };
        let Some(reason) = failure else {
            if attempts > 1 {
                tracing::info!(attempts, "batch queued after retrying");
            }
            return Published {
                items: batch.items,
                queued: true,
            };
        };
        if wire::now_ms() + backoff.as_millis() as u64 >= give_up_ms {
            tracing::error!(%reason, attempts, sequences = batch.items.len(), "batch not queued; giving up");
            return fail(&queue, batch.items, &reason);
        }
        tracing::warn!(%reason, attempts, "batch not queued; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        // The stream may be gone with a restarted server (memory storage): re-create it.
        if let Err(e) = batch_stream_for(&queue.js, &queue.subjects, queue.task, &queue.queue).await
        {
            tracing::debug!(error = %e, "work queue stream not (re)created yet");
        }
    }
}

/// Unix time in ms after which retrying is useless: the earliest deadline among `items`,
/// or [`NO_DEADLINE_PATIENCE`] from `now_ms` when none has one.
fn give_up_at(items: &[BatchItem], now_ms: u64) -> u64 {
    items
        .iter()
        .map(|item| item.deadline_ms)
        .filter(|&d| d != 0)
        .min()
        .unwrap_or(now_ms + NO_DEADLINE_PATIENCE.as_millis() as u64)
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(deadline_ms: u64) -> BatchItem {
        BatchItem {
            request_id: "r".into(),
            reply_to: "_INBOX.r".into(),
            index: 0,
            total: 1,
            len: 1,
            dims: 0,
            deadline_ms,
            trace: None,
            bundle_to: None,
        }
    }

    #[test]
    fn retries_stop_at_the_earliest_deadline() {
        assert_eq!(give_up_at(&[item(0), item(900), item(500)], 100), 500);
        assert_eq!(
            give_up_at(&[item(0)], 100),
            100 + NO_DEADLINE_PATIENCE.as_millis() as u64
        );
    }
}
