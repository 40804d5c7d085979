//! Priority lanes: which lane a request's sequences travel in ([`LaneRule`]), and one
//! batcher per lane ([`Lanes`]), so a batch never mixes interactive and bulk work.
//!
//! Interactive batches go as before (offered directly, else to `{prefix}.batches`); bulk
//! batches go only to their own stream (`{prefix}.batches.bulk`), cut to at most
//! `bulk_max_batch_tokens`, so that a GPU worker, which runs bulk passes only when no
//! interactive pass waits, keeps each bulk pass short.
//!
//! Pure logic, no I/O: the caller passes `now`, as with [`Batcher`].

use std::time::Instant;

use common::wire::{BatchItem, Priority};

use crate::batcher::{Batcher, BatcherConfig, BatcherError, PendingSequence, ReadyBatch};
use crate::config::TokenizerWorkerConfig;

/// How requests are sorted into lanes (`lanes`, `interactive_max_tokens` and
/// `bulk_max_batch_tokens` in `[tokenizer]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneRule {
    /// Whether there are two lanes; `false` sends everything in the interactive lane (one
    /// lane, as before lanes existed), whatever a request asks.
    pub enabled: bool,
    /// A request without a `priority` is interactive when it is a query or holds at most
    /// this many tokens (all its inputs together); bulk otherwise.
    pub interactive_max_tokens: usize,
    /// Most tokens of one bulk batch (the interactive lane keeps `max_batch_tokens`).
    pub bulk_max_batch_tokens: usize,
}

impl LaneRule {
    /// The rule a tokenizer worker's configuration sets.
    pub fn of(config: &TokenizerWorkerConfig) -> Self {
        Self {
            enabled: config.lanes,
            interactive_max_tokens: config.interactive_max_tokens,
            bulk_max_batch_tokens: config.bulk_max_batch_tokens,
        }
    }

    /// The lane of a request that asked for `priority` (`None`: it did not say), is a query
    /// (`query`) and holds `tokens` tokens: what it asked for; else interactive for a query
    /// or a small request, bulk for a large one. Everything is interactive with lanes off.
    pub fn lane_of(&self, priority: Option<Priority>, query: bool, tokens: usize) -> Priority {
        if !self.enabled {
            return Priority::Interactive;
        }
        match priority {
            Some(asked) => asked,
            None if query || tokens <= self.interactive_max_tokens => Priority::Interactive,
            None => Priority::Bulk,
        }
    }
}

/// A batch to send and the lane it travels in.
#[derive(Debug, Clone, PartialEq)]
pub struct LaneBatch {
    /// Its lane: interactive batches may be offered directly, bulk ones go to their stream.
    pub lane: Priority,
    /// The batch.
    pub ready: ReadyBatch,
}

/// One [`Batcher`] per lane, with the same budgets except the bulk lane's token budget.
/// Batches of the interactive lane come first in every answer.
#[derive(Debug)]
pub struct Lanes {
    /// How requests are sorted.
    rule: LaneRule,
    /// Interactive sequences.
    interactive: Batcher,
    /// Bulk sequences.
    bulk: Batcher,
}

impl Lanes {
    /// Empty lanes with `config`'s budgets; bulk batches hold at most the smaller of
    /// `max_batch_tokens` and the rule's `bulk_max_batch_tokens` tokens.
    pub fn new(rule: LaneRule, config: BatcherConfig) -> Result<Self, BatcherError> {
        if rule.bulk_max_batch_tokens == 0 {
            return Err(BatcherError::InvalidConfig(
                "bulk_max_batch_tokens must be at least 1".into(),
            ));
        }
        let bulk = BatcherConfig {
            max_batch_tokens: config.max_batch_tokens.min(rule.bulk_max_batch_tokens),
            ..config
        };
        Ok(Self {
            rule,
            interactive: Batcher::new(config)?,
            bulk: Batcher::new(bulk)?,
        })
    }

    /// How requests are sorted into lanes.
    pub fn rule(&self) -> &LaneRule {
        &self.rule
    }

    /// The interactive lane's budgets (the bulk lane's differ only in `max_batch_tokens`).
    pub fn config(&self) -> &BatcherConfig {
        self.interactive.config()
    }

    /// Changes both lanes' byte budget ([`Batcher::set_max_batch_bytes`]).
    pub fn set_max_batch_bytes(&mut self, max_batch_bytes: usize) -> Result<(), BatcherError> {
        self.interactive.set_max_batch_bytes(max_batch_bytes)?;
        self.bulk.set_max_batch_bytes(max_batch_bytes)
    }

    /// Adds a sequence to lane `lane` ([`Batcher::push`]).
    pub fn push(
        &mut self,
        lane: Priority,
        seq: PendingSequence,
        now: Instant,
    ) -> Result<(), BatcherError> {
        self.lane_mut(lane).push(seq, now)
    }

    /// Batches to send now from both lanes ([`Batcher::pop_ready`]), interactive first.
    pub fn pop_ready(&mut self, now: Instant) -> Vec<LaneBatch> {
        let interactive = self.interactive.pop_ready(now);
        let bulk = self.bulk.pop_ready(now);
        tagged(interactive, bulk)
    }

    /// Only the full batches of both lanes ([`Batcher::pop_full`]), interactive first.
    pub fn pop_full(&mut self) -> Vec<LaneBatch> {
        let interactive = self.interactive.pop_full();
        let bulk = self.bulk.pop_full();
        tagged(interactive, bulk)
    }

    /// Everything pending in both lanes, interactive first (for shutdown).
    pub fn drain(&mut self) -> Vec<LaneBatch> {
        let interactive = self.interactive.drain();
        let bulk = self.bulk.drain();
        tagged(interactive, bulk)
    }

    /// The earlier of the lanes' [`Batcher::next_flush_at`].
    pub fn next_flush_at(&self) -> Option<Instant> {
        match (self.interactive.next_flush_at(), self.bulk.next_flush_at()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The expired sequences of both lanes ([`Batcher::remove_expired`]).
    pub fn remove_expired(&mut self, now: Instant) -> Vec<BatchItem> {
        let mut expired = self.interactive.remove_expired(now);
        expired.extend(self.bulk.remove_expired(now));
        expired
    }

    /// Tokens pending in both lanes.
    pub fn pending_tokens(&self) -> usize {
        self.interactive.pending_tokens() + self.bulk.pending_tokens()
    }

    /// Sequences pending in both lanes.
    pub fn pending_seqs(&self) -> usize {
        self.interactive.pending_seqs() + self.bulk.pending_seqs()
    }

    /// The batcher of `lane`.
    fn lane_mut(&mut self, lane: Priority) -> &mut Batcher {
        match lane {
            Priority::Interactive => &mut self.interactive,
            Priority::Bulk => &mut self.bulk,
        }
    }
}

/// The interactive batches, then the bulk ones, each tagged with its lane.
fn tagged(interactive: Vec<ReadyBatch>, bulk: Vec<ReadyBatch>) -> Vec<LaneBatch> {
    let lane = |lane| move |ready| LaneBatch { lane, ready };
    interactive
        .into_iter()
        .map(lane(Priority::Interactive))
        .chain(bulk.into_iter().map(lane(Priority::Bulk)))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const RULE: LaneRule = LaneRule {
        enabled: true,
        interactive_max_tokens: 100,
        bulk_max_batch_tokens: 8,
    };

    #[test]
    fn a_request_goes_where_it_asks_else_queries_and_small_ones_are_interactive() {
        use Priority::{Bulk, Interactive};
        assert_eq!(RULE.lane_of(Some(Bulk), true, 1), Bulk, "asked");
        assert_eq!(RULE.lane_of(Some(Interactive), false, 10_000), Interactive);
        assert_eq!(RULE.lane_of(None, true, 10_000), Interactive, "a query");
        assert_eq!(RULE.lane_of(None, false, 100), Interactive, "small");
        assert_eq!(RULE.lane_of(None, false, 101), Bulk, "large");
        let one_lane = LaneRule {
            enabled: false,
            ..RULE
        };
        assert_eq!(one_lane.lane_of(Some(Bulk), false, 10_000), Interactive);
    }

    fn seq(id: &str, len: usize) -> PendingSequence {
        let item = BatchItem {
            request_id: id.into(),
            reply_to: "_INBOX.x".into(),
            total: 1,
            ..Default::default()
        };
        PendingSequence::new(item, vec![7; len], None).unwrap()
    }

    fn lanes() -> Lanes {
        Lanes::new(
            RULE,
            BatcherConfig {
                max_batch_tokens: 32,
                max_batch_seqs: 64,
                max_batch_bytes: 1 << 20,
                max_wait: Duration::ZERO,
            },
        )
        .unwrap()
    }

    fn ids(batch: &LaneBatch) -> Vec<&str> {
        let items = &batch.ready.batch.items;
        items.iter().map(|item| item.request_id.as_str()).collect()
    }

    #[test]
    fn batches_never_mix_lanes_and_bulk_ones_keep_their_budget() {
        let mut lanes = lanes();
        let now = Instant::now();
        lanes.push(Priority::Bulk, seq("b1", 5), now).unwrap();
        lanes
            .push(Priority::Interactive, seq("i1", 5), now)
            .unwrap();
        lanes.push(Priority::Bulk, seq("b2", 5), now).unwrap();
        lanes
            .push(Priority::Interactive, seq("i2", 5), now)
            .unwrap();
        assert_eq!((lanes.pending_seqs(), lanes.pending_tokens()), (4, 20));
        let batches = lanes.pop_ready(now);
        let shape: Vec<(Priority, Vec<&str>)> = batches.iter().map(|b| (b.lane, ids(b))).collect();
        assert_eq!(
            shape,
            [
                (Priority::Interactive, vec!["i1", "i2"]),
                // 5 + 5 tokens are over the bulk lane's 8.
                (Priority::Bulk, vec!["b1"]),
                (Priority::Bulk, vec!["b2"]),
            ]
        );
        assert_eq!(lanes.pending_seqs(), 0);
    }

    #[test]
    fn the_earlier_lane_decides_the_next_flush_and_expiry_sweeps_both() {
        let mut lanes = Lanes::new(
            RULE,
            BatcherConfig {
                max_wait: Duration::from_millis(10),
                ..*lanes().config()
            },
        )
        .unwrap();
        let now = Instant::now();
        assert_eq!(lanes.next_flush_at(), None);
        let ms = Duration::from_millis;
        let mut due = seq("b", 1);
        due.deadline = Some(now + ms(5));
        lanes.push(Priority::Bulk, due, now).unwrap();
        lanes
            .push(Priority::Interactive, seq("i", 1), now + ms(3))
            .unwrap();
        assert_eq!(lanes.next_flush_at(), Some(now + ms(10)));
        let expired = lanes.remove_expired(now + ms(5));
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].request_id, "b");
        assert_eq!(lanes.next_flush_at(), Some(now + ms(13)));
    }
}
