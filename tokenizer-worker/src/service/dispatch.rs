//! The sending side of the service loop: which batches go now (group commit while the work
//! queue is at its publish limit), whether each is offered directly or published to the work
//! queue (bulk batches only ever to their lane's stream), and what a finished publish settles (acknowledgements due, or requests forgotten
//! because they were answered with an error).

use std::time::Instant;

use common::outbox::Outbox;
use common::wire::Priority;
use common::worker::send_outbox;

use super::state::State;
use crate::acks::{DueAck, RequestKey};
use crate::lane::{LaneBatch, Lanes};
use crate::publish::{Published, batch_bytes_limit, offer_batch, publish_lane_batch};

impl State {
    /// Sends the ready batches (or, with `all`, every pending one) on: small interactive
    /// ones offered directly while offers are allowed, the rest to their lane's work queue.
    /// While partial batches are held, only full ones go.
    pub(super) fn publish_ready(&mut self, batcher: &mut Lanes, all: bool) {
        self.follow_max_payload(batcher);
        let batches = if all {
            batcher.drain()
        } else if self.holds_partial_batches() {
            batcher.pop_full()
        } else {
            batcher.pop_ready(Instant::now())
        };
        for LaneBatch { lane, ready: batch } in batches {
            let tokens = batch.batch.num_tokens();
            self.status.batches += 1;
            self.status.sequences += batch.batch.items.len() as u64;
            self.status.tokens += tokens as u64;
            let queue = self.work_queue.clone();
            let msg_id = self.batch_ids.next_id();
            match &self.direct {
                Some(direct)
                    if lane == Priority::Interactive
                        && self.can_offer()
                        && tokens <= direct.max_tokens =>
                {
                    self.offers += 1;
                    self.publishes
                        .spawn(offer_batch(queue, batch, msg_id, direct.timeout));
                }
                _ => {
                    self.publishes
                        .spawn(publish_lane_batch(queue, lane, batch, msg_id));
                }
            }
        }
    }

    /// Keeps the batches' byte budget under the server's `max_payload`, which a
    /// reconnection (to another server of a cluster) may change.
    fn follow_max_payload(&self, batcher: &mut Lanes) {
        if batcher.pending_seqs() == 0 {
            return;
        }
        let max_payload = self.client.server_info().max_payload;
        let limit = batch_bytes_limit(max_payload);
        if max_payload == 0 || limit == batcher.config().max_batch_bytes {
            return;
        }
        match batcher.set_max_batch_bytes(limit) {
            Ok(()) => tracing::info!(max_payload, "batches now cut to the server's max_payload"),
            Err(e) => tracing::warn!(
                max_payload,
                error = %e,
                "max_payload too small; batches keep their budget"
            ),
        }
    }

    /// Takes note of a finished publish: acknowledges the requests it completed, or forgets
    /// those it failed (they were answered with an error).
    pub(super) fn settle(&mut self, published: Result<Published, tokio::task::JoinError>) {
        let published = match published {
            Ok(published) => published,
            Err(e) => {
                tracing::error!(error = %e, "batch publish task failed; this is a bug");
                return;
            }
        };
        if published.offered {
            self.offers -= 1;
        }
        if published.queued {
            let mut outbox = Outbox::default();
            for due in self.acks.queued(&published.items) {
                let DueAck {
                    reply_to,
                    bundle_to,
                    reply,
                } = due;
                tracing::debug!(id = %reply.id, inputs = reply.queued, "request acknowledged");
                outbox.push(&reply_to, bundle_to.as_deref(), &reply);
            }
            send_outbox(&self.client, outbox, "acknowledgement");
        } else {
            for item in &published.items {
                self.acks.forget(&RequestKey::of(item));
            }
        }
    }

    /// Whether partial batches wait (group commit): the work queue is at its publish limit
    /// and no direct offer may go out.
    pub(super) fn holds_partial_batches(&self) -> bool {
        self.publishing_at_limit() && !self.can_offer()
    }

    /// Whether as many batches are being published to the work queue as allowed at once.
    fn publishing_at_limit(&self) -> bool {
        self.max_publishes_in_flight != 0
            && self.publishes.len().saturating_sub(self.offers) >= self.max_publishes_in_flight
    }

    /// Whether another batch may be offered directly.
    fn can_offer(&self) -> bool {
        self.direct
            .as_ref()
            .is_some_and(|direct| self.offers < direct.max_in_flight)
    }
}
