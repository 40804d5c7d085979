//! Batches offered on the direct subject (core NATS request/reply, queue group): taken when
//! the worker expects to finish them within `direct_max_wait_ms`, answered `done` once
//! every request in them is answered, else `busy` at once so the tokenizer worker queues
//! them. An unhealthy worker answers every offer `busy` and hands back those it took.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::wire::{self, DirectOutcome, DirectReply, Priority, TokenBatch};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use super::Shared;
use super::batching::{Served, merge_by_budget, serve_group};
use super::health::{Held, hand_back_ticket};
use super::intake::servable;
use super::lanes;
use super::stages::Via;

/// Limits of the direct path.
pub(super) struct DirectLimits {
    /// Longest expected wait (work in hand plus the batch) of a batch taken directly.
    pub(super) max_wait: Duration,
    /// Most direct batches merged into one forward pass.
    pub(super) merge: usize,
}

/// A batch taken from the direct subject; its reply subject is held in
/// [`super::InHand`] under `ticket`.
struct DirectBatch {
    /// Where the offer's answer goes, held until answered.
    ticket: u64,
    /// When it was taken (its requests wait for the device from then).
    taken: SystemTime,
    /// The batch.
    batch: TokenBatch,
}

/// Takes batches offered on the direct subject until `stop` turns true or the worker turns
/// unhealthy: each one is checked, then taken (handed to [`run_direct`]) when the load
/// allows it, else answered `busy`. Then the subscription is drained: offers already
/// routed here are still answered, and every taken batch is served (or handed back) before
/// this returns.
pub(super) async fn take_direct(
    shared: Arc<Shared>,
    mut offers: async_nats::Subscriber,
    limits: DirectLimits,
    mut stop: watch::Receiver<bool>,
) {
    let (taken_tx, taken_rx) = mpsc::unbounded_channel();
    let runner = tokio::spawn(run_direct(Arc::clone(&shared), taken_rx, limits.merge));
    let mut draining = false;
    loop {
        let message = tokio::select! {
            _ = stop.changed(), if !draining => {
                draining = true;
                drain(&mut offers).await;
                continue;
            }
            () = shared.health.failed(), if !draining => {
                draining = true;
                drain(&mut offers).await;
                continue;
            }
            message = offers.next() => message,
        };
        let Some(message) = message else { break };
        let Some(reply) = message.reply else {
            tracing::warn!("direct batch without a reply subject dropped");
            continue;
        };
        if shared.health.is_failed() {
            answer_direct(&shared, reply, DirectOutcome::Busy).await;
            continue;
        }
        let Some(batch) = servable(&shared, &message.payload).await else {
            // Answered as far as it can be; queueing it would not help.
            answer_direct(&shared, reply, DirectOutcome::Done).await;
            continue;
        };
        let tokens = batch.num_tokens();
        let taken = {
            let mut load = shared.load();
            let admits = load.admits(tokens, limits.max_wait);
            if admits {
                load.take(tokens);
            }
            admits
        };
        if !taken {
            tracing::debug!(tokens, "direct batch declined: busy");
            answer_direct(&shared, reply, DirectOutcome::Busy).await;
            continue;
        }
        lanes::log_taken(Priority::Interactive, &batch.items);
        let msg_id = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|id| id.as_str().to_string());
        let ticket = shared.hand.hold(Held::Direct {
            reply,
            payload: message.payload.clone(),
            msg_id,
        });
        let taken = SystemTime::now();
        if taken_tx
            .send(DirectBatch {
                ticket,
                taken,
                batch,
            })
            .is_err()
        {
            // The runner is gone (a bug): let the tokenizer worker queue the batch.
            tracing::error!("direct batch runner stopped; this is a bug");
            shared.load().finish(tokens);
            hand_back_ticket(&shared, ticket).await;
        }
    }
    drop(taken_tx);
    if let Err(e) = runner.await {
        tracing::error!(error = %e, "direct batch runner failed; this is a bug");
    }
}

/// Stops new offers from coming here; those already routed here still arrive.
async fn drain(offers: &mut async_nats::Subscriber) {
    if let Err(e) = offers.drain().await {
        tracing::warn!(error = %e, "draining the direct subscription failed");
    }
}

/// Serves taken direct batches: whatever is waiting when the device frees up is merged into
/// as few passes as the token budget allows (up to `merge` batches), and each batch is
/// answered `done` after its requests' replies are published (or handed back, `busy`,
/// when the device was lost).
async fn run_direct(
    shared: Arc<Shared>,
    mut taken: mpsc::UnboundedReceiver<DirectBatch>,
    merge: usize,
) {
    while let Some(first) = taken.recv().await {
        let mut waiting = vec![first];
        while waiting.len() < merge {
            match taken.try_recv() {
                Ok(next) => waiting.push(next),
                Err(_) => break,
            }
        }
        let tagged = waiting
            .into_iter()
            .map(|d| ((d.ticket, d.taken), d.batch))
            .collect();
        for group in merge_by_budget(tagged, shared.max_batch_tokens) {
            let tickets: Vec<u64> = group.iter().map(|((ticket, _), _)| *ticket).collect();
            let served = serve_group(&shared, group, Priority::Interactive, Via::Direct).await;
            for ticket in tickets {
                match served {
                    Served::Answered => {
                        if let Some(Held::Direct { reply, .. }) = shared.hand.release(ticket) {
                            answer_direct(&shared, reply, DirectOutcome::Done).await;
                        }
                    }
                    Served::DeviceLost => hand_back_ticket(&shared, ticket).await,
                }
            }
        }
    }
}

/// Answers a direct offer. The answer goes out on the connection that published the
/// batch's replies, after them, so `done` reaches the server only after every reply did.
pub(super) async fn answer_direct(
    shared: &Shared,
    reply: async_nats::Subject,
    outcome: DirectOutcome,
) {
    let answer = match wire::encode(&DirectReply { outcome }) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!(error = %e, "direct answer does not encode; this is a bug");
            return;
        }
    };
    if let Err(e) = shared.client.publish(reply, answer.into()).await {
        tracing::warn!(error = %e, "direct answer not sent; the tokenizer worker will queue the batch");
    }
}
