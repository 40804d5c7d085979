//! Batches from the work queue: pulled by capacity, decoded and checked, served merged into
//! as few passes as the token budget allows, then acked (or handed back when the device
//! was lost meanwhile).

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use common::wire::{self, Priority, TokenBatch};
use futures::StreamExt;

use super::Shared;
use super::batching::{Served, fail_batch, merge_by_budget, serve_group};
use super::health::{Held, hand_back_ticket};
use super::lanes;
use super::poison::{self, Handling};
use super::stages::Via;
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

/// Serves batches pulled from lane `lane`'s stream: each is held (in [`super::InHand`]) until settled; one that does
/// not decode is terminated, one that is inconsistent has its requests answered with
/// `invalid_request`. The rest are merged into as few passes as the lane's token budget
/// allows (`max_batch_tokens`, or `bulk_max_pass_tokens` for bulk work),
/// except batches delivered before (they may be what made a worker fail), which run alone,
/// are split per request, or are given up on their last delivery ([`poison`]). A batch is
/// acked after its replies are published, or handed back when the device was lost.
pub(super) async fn process(shared: &Shared, messages: Vec<jetstream::Message>, lane: Priority) {
    let mut fresh = Vec::with_capacity(messages.len());
    let mut alone = Vec::new();
    for message in messages {
        let ticket = shared.hand.hold(Held::Queued(Box::new(message.clone())));
        // On the server's clock: when the batch entered the work queue.
        let since = message.info().map_or_else(
            |_| SystemTime::now(),
            |info| SystemTime::from(info.published),
        );
        let Some(batch) = servable(shared, &message.payload).await else {
            settle(shared, ticket, AckKind::Term).await;
            continue;
        };
        lanes::log_taken(lane, &batch.items);
        match poison::handling_of(shared, &message, &batch) {
            Handling::Merge => fresh.push(((ticket, since), batch)),
            Handling::Alone => alone.push(vec![((ticket, since), batch)]),
            Handling::Split => poison::split(shared, ticket, &message, batch).await,
            Handling::GiveUp => {
                let delivered = message.info().map_or(0, |info| info.delivered);
                let failures = poison::Marks::of(message.headers.as_ref()).failures;
                let why = format!("{failures} failed devices, {delivered} deliveries");
                poison::give_up(shared, ticket, &batch, &why).await;
            }
        }
    }
    if lane == Priority::Bulk && !fresh.is_empty() {
        let tokens: usize = fresh.iter().map(|(_, batch)| batch.num_tokens()).sum();
        let mean = tokens / fresh.len();
        shared.bulk_mean_tokens.store(mean, Ordering::Relaxed);
    }
    let groups: Vec<_> = merge_by_budget(fresh, shared.pass_budget(lane))
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
        let tickets: Vec<u64> = group.iter().map(|((ticket, _), _)| *ticket).collect();
        let served = serve_group(shared, group, lane, Via::Queue).await;
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
/// `invalid_request`. Neither would fare better if sent again. Each item's deadline is
/// set on this machine's clock from its remaining budget ([`localize_deadlines`]).
pub(super) async fn servable(shared: &Shared, payload: &[u8]) -> Option<TokenBatch> {
    let mut batch = match wire::decode::<TokenBatch>(payload) {
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
    localize_deadlines(&mut batch, wire::now_ms());
    Some(batch)
}

/// Turns each item's remaining budget (`budget_ms`, measured by its sender when it sent the
/// batch) into a deadline on this machine's clock, counted from `received_ms`, the batch's
/// arrival here: from then on the worker compares only readings of its own clock, so a
/// clock set apart from the tokenizer worker's neither drops work early nor keeps it late.
/// An item without a budget (from an older tokenizer worker) keeps its `deadline_ms`. The
/// time a batch waited in the work queue is not counted (no clock both ends share measures
/// it): such a batch may be computed for a requester that was already answered `timeout`,
/// wasted work but never a wrong answer; `[queue] max_age_s` bounds it.
pub(super) fn localize_deadlines(batch: &mut TokenBatch, received_ms: u64) {
    for item in &mut batch.items {
        if item.budget_ms != 0 {
            item.deadline_ms = received_ms.saturating_add(item.budget_ms);
        }
    }
}

/// Acks (with `kind`) the queued batch of `ticket`, unless it was handed back already.
async fn settle(shared: &Shared, ticket: u64, kind: AckKind) {
    if let Some(Held::Queued(message)) = shared.hand.release(ticket)
        && let Err(e) = message.ack_with(kind).await
    {
        tracing::warn!(error = %e, "ack not sent; the batch may be redelivered");
    }
}

#[cfg(test)]
mod tests {
    use common::wire::BatchItem;

    use super::*;

    #[test]
    fn budgets_become_deadlines_on_this_clock_from_arrival() {
        let mut budgeted = BatchItem::new("a", "r", 0, 1, 1);
        // The sender's clock is a minute behind: its absolute deadline would look long gone.
        budgeted.deadline_ms = 1_000;
        budgeted.budget_ms = 5_000;
        let mut legacy = BatchItem::new("b", "r", 0, 1, 1);
        legacy.deadline_ms = 90_000;
        let none = BatchItem::new("c", "r", 0, 1, 1);
        let mut batch = TokenBatch {
            token_ids: vec![1, 2, 3],
            items: vec![budgeted, legacy, none],
        };
        localize_deadlines(&mut batch, 61_000);
        let deadlines: Vec<u64> = batch.items.iter().map(|i| i.deadline_ms).collect();
        assert_eq!(deadlines, vec![66_000, 90_000, 0]);
    }
}
