//! Batches from the work queue: pulled by capacity, decoded and checked, served merged into
//! as few passes as the token budget allows, then acked (or handed back when the device
//! was lost meanwhile).

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use common::wire::{self, TokenBatch};
use futures::StreamExt;

use super::Shared;
use super::batching::{Served, fail_batch, merge_by_budget, serve_group};
use super::health::{Held, hand_back_ticket};
use super::poison::{self, Handling};
use crate::engine::EngineError;

/// How long one pull waits for a batch before asking again.
const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// Asks the queue for up to `limit` batches: it waits up to [`PULL_EXPIRES`] for the first
/// and takes whatever else is already queued, so a busy queue yields big merged batches
/// and an idle one no delay.
pub(super) async fn pull(
    consumer: &PullConsumer,
    limit: usize,
) -> anyhow::Result<Vec<jetstream::Message>> {
    let pull = async {
        let mut batch = consumer
            .fetch()
            .max_messages(limit)
            .expires(PULL_EXPIRES)
            .messages()
            .await?;
        let mut messages = Vec::new();
        while let Some(message) = batch.next().await {
            messages.push(message.map_err(|e| anyhow::anyhow!(e))?);
        }
        Ok(messages)
    };
    // Bounded, so a lost server cannot hold the loop (and shutdown) forever.
    tokio::time::timeout(PULL_EXPIRES * 3, pull)
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "no answer to a pull within {:?}",
                PULL_EXPIRES * 3
            ))
        })
}

/// Serves pulled batches: each is held (in [`super::InHand`]) until settled; one that does
/// not decode is terminated, one that is inconsistent has its requests answered with
/// `invalid_request`. The rest are merged into as few passes as the token budget allows,
/// except batches delivered before (they may be what made a worker fail), which run alone,
/// are split per request, or are given up on their last delivery ([`poison`]). A batch is
/// acked after its replies are published, or handed back when the device was lost.
pub(super) async fn process(shared: &Shared, messages: Vec<jetstream::Message>) {
    let mut fresh = Vec::with_capacity(messages.len());
    let mut alone = Vec::new();
    for message in messages {
        let ticket = shared.hand.hold(Held::Queued(Box::new(message.clone())));
        let Some(batch) = servable(shared, &message.payload).await else {
            settle(shared, ticket, AckKind::Term).await;
            continue;
        };
        match poison::handling_of(shared, &message, &batch) {
            Handling::Merge => fresh.push((ticket, batch)),
            Handling::Alone => alone.push(vec![(ticket, batch)]),
            Handling::Split => poison::split(shared, ticket, &message, batch).await,
            Handling::GiveUp => {
                let delivered = message.info().map_or(0, |info| info.delivered);
                poison::give_up(shared, ticket, &batch, delivered).await;
            }
        }
    }
    let groups: Vec<_> = merge_by_budget(fresh, shared.max_batch_tokens)
        .into_iter()
        .chain(alone)
        .collect();
    shared.load().take(
        groups
            .iter()
            .flatten()
            .map(|(_, batch)| batch.num_tokens())
            .sum(),
    );
    for group in groups {
        let tickets: Vec<u64> = group.iter().map(|(ticket, _)| *ticket).collect();
        let served = serve_group(shared, group).await;
        for ticket in tickets {
            match served {
                Served::Answered => settle(shared, ticket, AckKind::Ack).await,
                Served::DeviceLost => hand_back_ticket(shared, ticket).await,
            }
        }
    }
}

/// The batch in `payload`, or `None` when it cannot be served: one that does not decode is
/// dropped (logged); one that decodes but is inconsistent has its requests answered with
/// `invalid_request`. Neither would fare better if sent again.
pub(super) async fn servable(shared: &Shared, payload: &[u8]) -> Option<TokenBatch> {
    let batch = match wire::decode::<TokenBatch>(payload) {
        Ok(batch) => batch,
        Err(e) => {
            tracing::error!(error = %e, "undecodable batch dropped");
            return None;
        }
    };
    if let Err(e) = batch.validate() {
        tracing::error!(error = %e, sequences = batch.items.len(), "inconsistent batch refused");
        let error = EngineError::Input(format!("malformed batch: {e}"));
        fail_batch(shared, &batch.items, &error).await;
        return None;
    }
    Some(batch)
}

/// Acks (with `kind`) the queued batch of `ticket`, unless it was handed back already.
async fn settle(shared: &Shared, ticket: u64, kind: AckKind) {
    if let Some(Held::Queued(message)) = shared.hand.release(ticket)
        && let Err(e) = message.ack_with(kind).await
    {
        tracing::warn!(error = %e, "ack not sent; the batch may be redelivered");
    }
}
