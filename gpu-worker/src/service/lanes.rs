//! Priority lanes on the device: interactive passes go first, bulk passes are short and
//! still never starve.
//!
//! Each lane has its own stream, consumer and pulling loop (see [`super::run`]), so bulk
//! work in hand never keeps interactive work from being pulled. Every pass, of either lane
//! and from the direct path too (interactive), takes a turn on the device ([`Turns`]) before
//! it runs: when the device frees up, the oldest waiting interactive pass goes, unless bulk
//! work has waited through `max_interactive_streak` interactive passes in a row; then one
//! bulk pass goes ([`next_turn`]). Bulk passes hold at most `bulk_max_pass_tokens` tokens
//! (or one longer sequence), so an interactive pass waits for at most one bulk pass.
//!
//! Each pass is logged (debug, this module's target) with its lane and requests when it
//! starts, and each pulled batch when it is taken: the lane ordering test reads these lines.

use std::collections::VecDeque;
use std::sync::Mutex;

use common::wire::{BatchItem, Priority};
use tokio::sync::Notify;

/// Which lane's pass runs next on a free device: `waiting_interactive` and `waiting_bulk`
/// passes wait, and `streak` interactive passes ran in a row while bulk work waited.
/// Interactive first, unless the streak reached `max_streak` (at least 1) and bulk waits;
/// `None` when nothing waits.
pub(super) fn next_turn(
    waiting_interactive: usize,
    waiting_bulk: usize,
    streak: usize,
    max_streak: usize,
) -> Option<Priority> {
    let bulk_is_due = waiting_bulk > 0 && streak >= max_streak.max(1);
    if waiting_interactive > 0 && !bulk_is_due {
        Some(Priority::Interactive)
    } else if waiting_bulk > 0 {
        Some(Priority::Bulk)
    } else {
        None
    }
}

/// About how many bulk batches to pull so they fill one pass of `budget` tokens, given the
/// mean tokens of the bulk batches pulled so far (`None`: none yet, take one), within
/// `1..=merge_limit`: a worker holds little more bulk work than it can run next, leaving
/// the rest to the other workers.
pub(super) fn bulk_pull_size(
    budget: usize,
    mean_tokens: Option<usize>,
    merge_limit: usize,
) -> usize {
    let per_pass = mean_tokens.map_or(1, |mean| budget / mean.max(1));
    per_pass.clamp(1, merge_limit.max(1))
}

/// What waits for the device and who holds it.
#[derive(Debug, Default)]
struct TurnState {
    /// A pass holds the device.
    busy: bool,
    /// Waiting interactive passes by ticket, oldest first.
    interactive: VecDeque<u64>,
    /// Waiting bulk passes by ticket, oldest first.
    bulk: VecDeque<u64>,
    /// Interactive passes in a row while bulk work waited.
    streak: usize,
    /// The next ticket.
    next_ticket: u64,
}

impl TurnState {
    /// The waiting passes of `lane`.
    fn queue(&mut self, lane: Priority) -> &mut VecDeque<u64> {
        match lane {
            Priority::Interactive => &mut self.interactive,
            Priority::Bulk => &mut self.bulk,
        }
    }
}

/// Turns on the device between the lanes. See the [module docs](self).
#[derive(Debug)]
pub(super) struct Turns {
    /// The waiting passes and the device's holder.
    state: Mutex<TurnState>,
    /// Wakes the waiters when the device frees up or a waiter leaves.
    changed: Notify,
    /// `max_interactive_streak`.
    max_streak: usize,
}

/// The device, held by one pass until dropped.
pub(super) struct Turn<'a> {
    /// Whose turn it is.
    turns: &'a Turns,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.turns.lock().busy = false;
        self.turns.changed.notify_waiters();
    }
}

/// A pass waiting for its turn; leaves the queue if dropped before it got it.
struct Waiting<'a> {
    /// Where it waits.
    turns: &'a Turns,
    /// Its lane.
    lane: Priority,
    /// Its place.
    ticket: u64,
    /// Whether it got its turn (and so left the queue).
    granted: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.granted {
            let ticket = self.ticket;
            self.turns.lock().queue(self.lane).retain(|t| *t != ticket);
            self.turns.changed.notify_waiters();
        }
    }
}

impl Turns {
    /// Turns with `max_interactive_streak` = `max_streak`.
    pub(super) fn new(max_streak: usize) -> Self {
        Self {
            state: Mutex::new(TurnState::default()),
            changed: Notify::new(),
            max_streak: max_streak.max(1),
        }
    }

    /// The state, locked (it stays consistent even if a holder panicked).
    fn lock(&self) -> std::sync::MutexGuard<'_, TurnState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for a pass of `lane` to have the device; it holds it until the [`Turn`] drops.
    pub(super) async fn take(&self, lane: Priority) -> Turn<'_> {
        let ticket = {
            let mut state = self.lock();
            let ticket = state.next_ticket;
            state.next_ticket += 1;
            state.queue(lane).push_back(ticket);
            ticket
        };
        let mut waiting = Waiting {
            turns: self,
            lane,
            ticket,
            granted: false,
        };
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.grant(lane, ticket) {
                waiting.granted = true;
                return Turn { turns: self };
            }
            changed.await;
        }
    }

    /// Gives the device to pass `ticket` of `lane` if it is free and that pass is next.
    fn grant(&self, lane: Priority, ticket: u64) -> bool {
        let mut state = self.lock();
        let (interactive, bulk) = (state.interactive.len(), state.bulk.len());
        if state.busy
            || next_turn(interactive, bulk, state.streak, self.max_streak) != Some(lane)
            || state.queue(lane).front() != Some(&ticket)
        {
            return false;
        }
        state.queue(lane).pop_front();
        state.busy = true;
        state.streak = match lane {
            Priority::Interactive if bulk > 0 => state.streak + 1,
            _ => 0,
        };
        true
    }
}

/// The distinct request ids of `items`, comma-separated, for the lane log lines.
fn request_ids(items: &[BatchItem]) -> String {
    let mut ids: Vec<&str> = Vec::new();
    for item in items {
        if !ids.contains(&item.request_id.as_str()) {
            ids.push(&item.request_id);
        }
    }
    ids.join(",")
}

/// Logs that a batch of `lane` holding `items` was taken from its stream.
pub(super) fn log_taken(lane: Priority, items: &[BatchItem]) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        tracing::debug!(lane = ?lane, requests = %request_ids(items), "batch taken");
    }
}

/// Logs that pass `pass` of `lane` over `tokens` tokens of `items` got the device.
pub(super) fn log_pass(lane: Priority, pass: u64, tokens: usize, items: &[BatchItem]) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        tracing::debug!(lane = ?lane, pass, tokens, requests = %request_ids(items), "pass started");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use Priority::{Bulk, Interactive};

    #[test]
    fn interactive_goes_first_until_bulk_waited_through_a_streak() {
        assert_eq!(next_turn(0, 0, 0, 4), None);
        assert_eq!(next_turn(3, 5, 0, 4), Some(Interactive));
        assert_eq!(next_turn(3, 5, 3, 4), Some(Interactive));
        assert_eq!(next_turn(3, 5, 4, 4), Some(Bulk), "bulk never starves");
        assert_eq!(next_turn(0, 5, 0, 4), Some(Bulk));
        assert_eq!(next_turn(2, 0, 9, 4), Some(Interactive), "no bulk waits");
        assert_eq!(
            next_turn(1, 1, 0, 0),
            Some(Interactive),
            "a streak of at least 1"
        );
        assert_eq!(next_turn(1, 1, 1, 0), Some(Bulk));
    }

    #[test]
    fn bulk_pulls_fill_about_one_pass() {
        assert_eq!(bulk_pull_size(4096, None, 16), 1, "nothing known yet");
        assert_eq!(bulk_pull_size(4096, Some(4000), 16), 1);
        assert_eq!(bulk_pull_size(4096, Some(1000), 16), 4);
        assert_eq!(
            bulk_pull_size(4096, Some(10), 16),
            16,
            "at most merge_batches"
        );
        assert_eq!(bulk_pull_size(4096, Some(0), 0), 1);
    }

    /// Records the order in which passes got the device.
    async fn pass(
        turns: Arc<Turns>,
        lane: Priority,
        name: &'static str,
        log: Arc<Mutex<Vec<&'static str>>>,
    ) {
        let _turn = turns.take(lane).await;
        log.lock().unwrap().push(name);
        tokio::task::yield_now().await;
    }

    #[tokio::test]
    async fn a_freed_device_goes_to_waiting_interactive_passes_first_and_bulk_gets_its_share() {
        let turns = Arc::new(Turns::new(2));
        let log = Arc::new(Mutex::new(Vec::new()));
        // A bulk pass holds the device while others queue up behind it.
        let holder = turns.take(Bulk).await;
        let mut tasks = Vec::new();
        for (lane, name) in [
            (Bulk, "b1"),
            (Bulk, "b2"),
            (Interactive, "i1"),
            (Interactive, "i2"),
            (Interactive, "i3"),
            (Interactive, "i4"),
        ] {
            tasks.push(tokio::spawn(pass(
                Arc::clone(&turns),
                lane,
                name,
                Arc::clone(&log),
            )));
            // Each waiter registers before the next is spawned.
            while turns.lock().next_ticket < tasks.len() as u64 + 1 {
                tokio::task::yield_now().await;
            }
        }
        drop(holder);
        for task in tasks {
            task.await.unwrap();
        }
        // Two interactive passes, then the bulk pass that waited through them, and so on:
        // no interactive pass waited for more than one bulk pass.
        assert_eq!(*log.lock().unwrap(), ["i1", "i2", "b1", "i3", "i4", "b2"]);
        let state = turns.lock();
        assert!(!state.busy && state.interactive.is_empty() && state.bulk.is_empty());
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_the_queue() {
        let turns = Turns::new(1);
        let holder = turns.take(Interactive).await;
        let gave_up = tokio::time::timeout(std::time::Duration::from_millis(1), turns.take(Bulk));
        assert!(gave_up.await.is_err());
        assert!(turns.lock().bulk.is_empty());
        drop(holder);
        let _next = turns.take(Interactive).await;
    }
}
