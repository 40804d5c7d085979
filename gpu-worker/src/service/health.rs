//! Whether the worker can still compute, and what it does when it cannot.
//!
//! [`Health`] turns unhealthy once, for good, with a reason: a pass was fatal (a panic, a
//! sticky device error, the device thread gone) or the watchdog found a pass running far
//! past its expected time. [`InHand`] knows every batch the worker holds, pulled from the
//! work queue or taken from the direct subject and not yet answered, and the pass each one
//! was sent to the device in, so that all of them can be handed back at once: a batch that
//! was on the device when it failed goes back to the work queue at once as a fresh copy
//! marked with one failed device more (it may be the poison: [`super::poison`]); a queued
//! one that only waited is put back as it came, so nothing counts against it; a direct one
//! that only waited is answered `busy` (the tokenizer worker queues it). Whoever takes a batch out of `InHand` first (its task acking it, or the
//! hand-back) settles it, so no batch is both acked and handed back.
//!
//! Progress acks are sent here too, and only while the device makes progress: a worker
//! whose pass hangs stops extending its batches' `ack_wait`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use common::wire::DirectOutcome;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use super::Shared;
use super::direct::answer_direct;
use super::poison::{Marks, enqueue, requeue, requeue_failed};
use crate::config::GpuWorkerConfig;

/// How often the watchdog looks at the pass in progress.
const WATCHDOG_TICK: Duration = Duration::from_millis(200);

/// Whether the worker's device can still compute.
pub(super) struct Health {
    /// Why it cannot, once it cannot.
    reason: OnceLock<String>,
    /// Turns true with `reason`, for tasks that wait for it.
    failed: watch::Sender<bool>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            reason: OnceLock::new(),
            failed: watch::Sender::new(false),
        }
    }
}

impl Health {
    /// Marks the worker unhealthy for `reason` (the first reason wins) and logs it once.
    pub(super) fn fail(&self, reason: impl Into<String>) {
        let reason = reason.into();
        if self.reason.set(reason.clone()).is_ok() {
            tracing::error!(
                %reason,
                "gpu worker unhealthy: the device can no longer compute; handing its batches \
                 back and exiting"
            );
            self.failed.send_replace(true);
        }
    }

    /// Why the worker is unhealthy; `None` while it is healthy.
    pub(super) fn reason(&self) -> Option<&str> {
        self.reason.get().map(String::as_str)
    }

    /// Whether the worker is unhealthy.
    pub(super) fn is_failed(&self) -> bool {
        self.reason.get().is_some()
    }

    /// Resolves once the worker is unhealthy.
    pub(super) async fn failed(&self) {
        let mut failed = self.failed.subscribe();
        // The sender lives as long as `self`, so this only ends when the flag turns true.
        let _ = failed.wait_for(|failed| *failed).await;
    }
}

/// A batch the worker holds and must settle.
pub(super) enum Held {
    /// Pulled from the work queue: acked once answered, NAKed when handed back.
    Queued(Box<jetstream::Message>),
    /// Taken from the direct subject: answered `done` once answered; when handed back,
    /// queued by this worker with a failure mark if it was on the failed device (then
    /// `done`), else answered `busy` (the tokenizer worker queues it).
    Direct {
        /// Where to answer the offer.
        reply: async_nats::Subject,
        /// The batch as offered, to queue it when the device failed with it in its pass.
        payload: bytes::Bytes,
        /// The offer's `Nats-Msg-Id` (the id the tokenizer worker queues the batch under
        /// when the offer times out), so the copy queued here and the tokenizer worker's
        /// are stored once.
        msg_id: Option<String>,
    },
}

/// A held batch and the last pass it was sent to the device in (0: none yet).
struct Entry {
    /// The batch.
    held: Held,
    /// Its last pass id ([`crate::device::DeviceHandle::new_pass`]).
    pass: u64,
}

/// Every batch the worker holds, by ticket.
#[derive(Default)]
pub(super) struct InHand {
    /// The next ticket.
    next: AtomicU64,
    /// Held batches by ticket.
    held: Mutex<BTreeMap<u64, Entry>>,
}

impl InHand {
    /// The held batches, locked (the map stays consistent even if a holder panicked).
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a batch as held; its ticket.
    pub(super) fn hold(&self, held: Held) -> u64 {
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(ticket, Entry { held, pass: 0 });
        ticket
    }

    /// Records that the batches of `tickets` go to the device in pass `pass`.
    pub(super) fn mark(&self, tickets: &[u64], pass: u64) {
        let mut held = self.lock();
        for ticket in tickets {
            if let Some(entry) = held.get_mut(ticket) {
                entry.pass = pass;
            }
        }
    }

    /// Takes the batch of `ticket` out, for its holder to settle; `None` when it was handed
    /// back already.
    pub(super) fn release(&self, ticket: u64) -> Option<Held> {
        self.lock().remove(&ticket).map(|entry| entry.held)
    }

    /// Takes the batch of `ticket` out with its last pass.
    fn release_entry(&self, ticket: u64) -> Option<Entry> {
        self.lock().remove(&ticket)
    }

    /// Takes every held batch out.
    fn release_all(&self) -> Vec<Entry> {
        std::mem::take(&mut *self.lock()).into_values().collect()
    }

    /// The queued batches held now.
    fn queued(&self) -> Vec<jetstream::Message> {
        self.lock()
            .values()
            .filter_map(|entry| match &entry.held {
                Held::Queued(message) => Some(jetstream::Message::clone(message)),
                Held::Direct { .. } => None,
            })
            .collect()
    }
}

/// Hands one batch back. One that was on the device when it failed goes back to the work
/// queue as a fresh copy counting one failed device more ([`super::poison`]); one that only
/// waited goes back as it came (a queued one copied afresh, a direct one answered `busy`,
/// which the tokenizer worker queues).
async fn hand_back(shared: &Shared, entry: Entry) {
    let on_device = entry.pass != 0 && entry.pass == shared.device.last_pass();
    match entry.held {
        Held::Queued(message) if on_device => requeue_failed(shared, &message).await,
        Held::Queued(message) => requeue(shared, &message).await,
        Held::Direct {
            reply,
            payload,
            msg_id,
        } if on_device => {
            // Under the offer's id: if the tokenizer worker gave up waiting and queued the
            // batch itself (also marked), the stream keeps one of the two copies.
            let id =
                msg_id.unwrap_or_else(|| format!("failed-direct-{}", shared.client.new_inbox()));
            let marks = Marks {
                split: false,
                failures: 1,
            };
            // Direct batches are interactive work.
            let subject = shared.batches_subject.as_str();
            let outcome = match enqueue(shared, subject, payload, &id, marks).await {
                // The batch is the queue's now: the offer is done with.
                Ok(()) => DirectOutcome::Done,
                Err(e) => {
                    tracing::warn!(error = %e, "a failed direct batch was not queued");
                    DirectOutcome::Busy
                }
            };
            answer_direct(shared, reply, outcome).await;
        }
        Held::Direct { reply, .. } => answer_direct(shared, reply, DirectOutcome::Busy).await,
    }
}

/// Hands the batch of `ticket` back, unless it was already.
pub(super) async fn hand_back_ticket(shared: &Shared, ticket: u64) {
    if let Some(entry) = shared.hand.release_entry(ticket) {
        hand_back(shared, entry).await;
    }
}

/// Hands back every batch the worker holds.
pub(super) async fn hand_back_all(shared: &Shared) {
    let held = shared.hand.release_all();
    if !held.is_empty() {
        tracing::warn!(batches = held.len(), "handing batches back");
    }
    for entry in held {
        hand_back(shared, entry).await;
    }
}

/// Why the pass in progress counts as hung, if it does: it has run longer than the
/// watchdog allows a pass of its size.
fn overdue(shared: &Shared, config: &GpuWorkerConfig) -> Option<String> {
    let (elapsed, tokens) = shared.device.pass_in_progress()?;
    let limit = config.watchdog_limit(tokens, shared.load().secs_per_token());
    (elapsed > limit).then(|| {
        format!(
            "a forward pass over {tokens} tokens has run {:.1} s, past the watchdog's {:.1} s \
             (watchdog_factor {} x its expected time, at least watchdog_min_s {}): the \
             device is hung",
            elapsed.as_secs_f64(),
            limit.as_secs_f64(),
            config.watchdog_factor,
            config.watchdog_min_s
        )
    })
}

/// Watches the device until the worker is unhealthy: turns a hung pass into the unhealthy
/// path, and tells the work queue that the batches held are still being worked on, every
/// third of `ack_wait`, only while no pass is overdue.
pub(super) async fn watch_device(shared: Arc<Shared>, config: GpuWorkerConfig) {
    let mut check = tokio::time::interval(WATCHDOG_TICK);
    let mut progress = tokio::time::interval(shared.ack_wait / 3);
    check.set_missed_tick_behavior(MissedTickBehavior::Delay);
    progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
    progress.tick().await;
    while !shared.health.is_failed() {
        tokio::select! {
            _ = check.tick() => {
                if let Some(reason) = overdue(&shared, &config) {
                    shared.health.fail(reason);
                }
            }
            _ = progress.tick() => {
                if overdue(&shared, &config).is_some() {
                    continue;
                }
                for message in shared.hand.queued() {
                    if let Err(e) = message.ack_with(AckKind::Progress).await {
                        tracing::warn!(error = %e, "progress ack not sent");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct(name: &str) -> Held {
        Held::Direct {
            reply: async_nats::Subject::from(name),
            payload: bytes::Bytes::new(),
            msg_id: None,
        }
    }

    #[test]
    fn a_held_batch_is_settled_once_by_whoever_takes_it_first() {
        let hand = InHand::default();
        let a = hand.hold(direct("a"));
        let b = hand.hold(direct("b"));
        hand.mark(&[a], 7);
        // The hand-back takes everything, with the pass each batch was sent to the device in.
        let taken: Vec<(u64, bool)> = hand
            .release_all()
            .into_iter()
            .map(|entry| (entry.pass, matches!(entry.held, Held::Direct { .. })))
            .collect();
        assert_eq!(taken, [(7, true), (0, true)]);
        // The tasks that held them find nothing left to settle.
        assert!(hand.release(a).is_none() && hand.release(b).is_none());
        let c = hand.hold(direct("c"));
        assert!(hand.release(c).is_some());
        assert!(hand.release_entry(c).is_none(), "settled once");
    }

    #[test]
    fn the_first_reason_wins_and_the_worker_stays_unhealthy() {
        let health = Health::default();
        assert!(!health.is_failed() && health.reason().is_none());
        health.fail("the forward pass panicked");
        health.fail("the device thread has stopped");
        assert_eq!(health.reason(), Some("the forward pass panicked"));
        assert!(*health.failed.subscribe().borrow());
    }
}
