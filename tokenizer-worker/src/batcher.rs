//! Token-budget batching: packs the sequences of concurrent requests into [`TokenBatch`]es.
//!
//! Pure logic, no I/O and no clock of its own: the caller passes `now` to every call, so tests
//! drive time by hand. Deadlines are instants on the monotonic clock (each sequence's
//! [`PendingSequence::deadline`]), never wall-clock times. The service loop is
//!
//! 1. [`Batcher::push`] each tokenized sequence, then send what [`Batcher::pop_ready`] returns
//!    ([`ReadyBatch`]es: the batch and its items' deadlines, turned into budgets as it goes);
//! 2. sleep until [`Batcher::next_flush_at`] (or the next sequence) and call `pop_ready` again;
//! 3. answer what [`Batcher::remove_expired`] returns with `deadline_exceeded`;
//! 4. on shutdown, send what [`Batcher::drain`] returns.
//!
//! Policy:
//! * A batch is sent as soon as the pending sequences reach any budget (`max_batch_tokens`,
//!   `max_batch_seqs` or `max_batch_bytes`), or once the oldest pending sequence has waited
//!   `max_wait`, whatever the batch holds then.
//! * A batch starts with the oldest pending sequence, then takes the following ones in arrival
//!   order that still fit (first fit, looking at most [`LOOKAHEAD`] sequences ahead), so a
//!   long sequence is never overtaken by more than one batch.
//! * A batch never exceeds `max_batch_tokens` tokens, `max_batch_seqs` sequences or
//!   `max_batch_bytes` encoded bytes (by [`common::wire::size`]'s upper bound, so the real
//!   message is never larger), except that a single sequence over a budget forms a batch
//!   alone (the service keeps the tokenizer's `max_length` <= `max_batch_tokens`, and checks
//!   that the largest sequence fits the server's `max_payload`, so this only guards against a
//!   misconfiguration).
//! * Inside a batch the sequences are sorted by length (shortest first, stable), without
//!   padding.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use common::wire::size::{BATCH_OVERHEAD, sequence_size_bound};
use common::wire::{BatchItem, TokenBatch};

use crate::deadline::budget_ms;

/// How many pending sequences after the oldest one are considered to fill a batch. Bounds
/// the work of forming a batch when a large backlog is pending.
pub const LOOKAHEAD: usize = 1024;

/// A configuration or sequence the batcher refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatcherError {
    /// A budget is out of range.
    #[error("invalid batcher configuration: {0}")]
    InvalidConfig(String),
    /// A sequence whose `item.len` disagrees with its tokens, or that has no tokens.
    #[error("invalid sequence (request {request_id}, index {index}): {reason}")]
    InvalidSequence {
        /// The request the sequence belongs to.
        request_id: String,
        /// Position of the text in the request.
        index: u32,
        /// What is wrong.
        reason: String,
    },
}

/// Budgets of one batch and how long a sequence may wait for company.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatcherConfig {
    /// Most tokens per batch (at least 1): bounds the GPU worker's activation memory.
    pub max_batch_tokens: usize,
    /// Most sequences per batch (at least 1): bounds per-sequence buffers on the GPU worker.
    pub max_batch_seqs: usize,
    /// Most bytes of an encoded batch (more than [`BATCH_OVERHEAD`]): keeps every batch
    /// under the server's `max_payload` ([`Batcher::set_max_batch_bytes`] follows it).
    pub max_batch_bytes: usize,
    /// Longest time the oldest pending sequence waits before a partial batch is sent: trades
    /// latency at low load for fuller batches. Zero sends every sequence at once.
    pub max_wait: Duration,
}

impl BatcherConfig {
    /// Checks that the token and sequence budgets are at least 1 and that a batch may hold
    /// more than its own overhead.
    pub fn validate(&self) -> Result<(), BatcherError> {
        if self.max_batch_tokens == 0 {
            return Err(BatcherError::InvalidConfig(
                "max_batch_tokens must be at least 1".into(),
            ));
        }
        if self.max_batch_seqs == 0 {
            return Err(BatcherError::InvalidConfig(
                "max_batch_seqs must be at least 1".into(),
            ));
        }
        if self.max_batch_bytes <= BATCH_OVERHEAD {
            return Err(BatcherError::InvalidConfig(format!(
                "max_batch_bytes must be more than {BATCH_OVERHEAD}"
            )));
        }
        Ok(())
    }
}

/// A tokenized sequence waiting for a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingSequence {
    /// Where the vector goes; `item.len` must equal `token_ids.len()`.
    pub item: BatchItem,
    /// The sequence's tokens, `<|endoftext|>` included.
    pub token_ids: Vec<u32>,
    /// When its request's answer stops being useful, on the monotonic clock (`None`: never):
    /// it expires here from then on, and what is left goes on as the item's `budget_ms`.
    pub deadline: Option<Instant>,
}

impl PendingSequence {
    /// Builds a sequence due by `deadline`, setting `item.len` from `token_ids`.
    pub fn new(
        mut item: BatchItem,
        token_ids: Vec<u32>,
        deadline: Option<Instant>,
    ) -> Result<Self, BatcherError> {
        item.len = u32::try_from(token_ids.len()).map_err(|_| BatcherError::InvalidSequence {
            request_id: item.request_id.clone(),
            index: item.index,
            reason: format!("{} tokens do not fit in u32", token_ids.len()),
        })?;
        Ok(Self {
            item,
            token_ids,
            deadline,
        })
    }

    /// Checks that the sequence has tokens and that `item.len` counts them.
    pub fn validate(&self) -> Result<(), BatcherError> {
        let reason = if self.token_ids.is_empty() {
            "no tokens".to_owned()
        } else if u64::from(self.item.len) != self.token_ids.len() as u64 {
            format!(
                "item.len is {} but the sequence has {} tokens",
                self.item.len,
                self.token_ids.len()
            )
        } else {
            return Ok(());
        };
        Err(BatcherError::InvalidSequence {
            request_id: self.item.request_id.clone(),
            index: self.item.index,
            reason,
        })
    }
}

/// A batch to send, with the deadline of each of its items.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadyBatch {
    /// The batch; its items' `budget_ms` are set by [`stamp_budgets`](Self::stamp_budgets).
    pub batch: TokenBatch,
    /// The deadline of each item, in the order of `batch.items` (`None`: none).
    pub deadlines: Vec<Option<Instant>>,
}

impl ReadyBatch {
    /// Sets each item's `budget_ms` to what is left of its deadline at `now` (0 for none, at
    /// least 1 otherwise), and its time here so far (`timings.sent_ms`): call it right before
    /// each send of the batch.
    pub fn stamp_budgets(&mut self, now: Instant) {
        for (item, deadline) in self.batch.items.iter_mut().zip(&self.deadlines) {
            item.budget_ms = budget_ms(*deadline, now);
            if let Some(timings) = &mut item.timings {
                timings.stamp_sent(now);
            }
        }
    }

    /// The earliest deadline among the items; `None` when none has one.
    pub fn earliest_deadline(&self) -> Option<Instant> {
        self.deadlines.iter().flatten().min().copied()
    }
}

/// A pending sequence and when it arrived.
#[derive(Debug)]
struct Entry {
    /// The sequence.
    seq: PendingSequence,
    /// When it was pushed; the oldest entry decides the `max_wait` flush.
    arrived: Instant,
    /// Upper bound of what the sequence adds to an encoded batch.
    bytes: usize,
}

/// Packs pending sequences into batches by token budget. See the [module docs](self).
#[derive(Debug)]
pub struct Batcher {
    /// Validated budgets.
    config: BatcherConfig,
    /// Pending sequences in arrival order: the front is the oldest.
    queue: VecDeque<Entry>,
    /// Sum of the pending sequences' tokens.
    pending_tokens: usize,
    /// Sum of the pending sequences' encoded-size bounds.
    pending_bytes: usize,
}

impl Batcher {
    /// An empty batcher.
    pub fn new(config: BatcherConfig) -> Result<Self, BatcherError> {
        config.validate()?;
        Ok(Self {
            config,
            queue: VecDeque::new(),
            pending_tokens: 0,
            pending_bytes: 0,
        })
    }

    /// The budgets.
    pub fn config(&self) -> &BatcherConfig {
        &self.config
    }

    /// Changes the byte budget of the batches formed from now on (the server's `max_payload`
    /// may change with a reconnection); refuses one [`BatcherConfig::validate`] refuses.
    pub fn set_max_batch_bytes(&mut self, max_batch_bytes: usize) -> Result<(), BatcherError> {
        let config = BatcherConfig {
            max_batch_bytes,
            ..self.config
        };
        config.validate()?;
        self.config = config;
        Ok(())
    }

    /// Adds a sequence that arrived at `now`; `now` must not go back in time between calls.
    /// Refuses a sequence that fails [`PendingSequence::validate`]. Call
    /// [`pop_ready`](Self::pop_ready) afterwards: the push may have filled a batch.
    pub fn push(&mut self, seq: PendingSequence, now: Instant) -> Result<(), BatcherError> {
        seq.validate()?;
        let bytes = sequence_size_bound(&seq.item, seq.token_ids.len());
        self.pending_tokens += seq.token_ids.len();
        self.pending_bytes += bytes;
        self.queue.push_back(Entry {
            seq,
            arrived: now,
            bytes,
        });
        Ok(())
    }

    /// Batches to send now: every full batch, and everything pending once the oldest sequence
    /// has waited `max_wait`.
    pub fn pop_ready(&mut self, now: Instant) -> Vec<ReadyBatch> {
        let mut batches = self.pop_full();
        if self.oldest_waited(now) {
            batches.extend(self.drain());
        }
        batches
    }

    /// Only the full batches (a budget reached), leaving partial ones pending whatever
    /// their wait: for a caller that holds partial batches back (see the service's
    /// publish limit).
    pub fn pop_full(&mut self) -> Vec<ReadyBatch> {
        let mut batches = Vec::new();
        while self.budget_reached() {
            let Some(batch) = self.next_batch() else {
                break;
            };
            batches.push(batch);
        }
        batches
    }

    /// When [`pop_ready`](Self::pop_ready) will next have something to send unless more
    /// sequences arrive: `None` when nothing is pending (or the wait cannot be represented),
    /// an instant not after now when a batch is ready already.
    pub fn next_flush_at(&self) -> Option<Instant> {
        let oldest = self.queue.front()?.arrived;
        if self.budget_reached() {
            return Some(oldest);
        }
        oldest.checked_add(self.config.max_wait)
    }

    /// Everything pending, in batches within the budgets (for shutdown).
    pub fn drain(&mut self) -> Vec<ReadyBatch> {
        std::iter::from_fn(|| self.next_batch()).collect()
    }

    /// Removes the pending sequences whose deadline has come at `now` (a deadline is passed
    /// from its instant on) and returns their items, in arrival order, so the service can
    /// answer them with `deadline_exceeded`.
    pub fn remove_expired(&mut self, now: Instant) -> Vec<BatchItem> {
        let mut expired = Vec::new();
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for entry in self.queue.drain(..) {
            if entry.seq.deadline.is_some_and(|deadline| now >= deadline) {
                self.pending_tokens -= entry.seq.token_ids.len();
                self.pending_bytes -= entry.bytes;
                expired.push(entry.seq.item);
            } else {
                kept.push_back(entry);
            }
        }
        self.queue = kept;
        expired
    }

    /// Tokens of all pending sequences.
    pub fn pending_tokens(&self) -> usize {
        self.pending_tokens
    }

    /// Number of pending sequences.
    pub fn pending_seqs(&self) -> usize {
        self.queue.len()
    }

    /// Whether the pending sequences reach any budget.
    fn budget_reached(&self) -> bool {
        self.pending_tokens >= self.config.max_batch_tokens
            || self.queue.len() >= self.config.max_batch_seqs
            || BATCH_OVERHEAD + self.pending_bytes >= self.config.max_batch_bytes
    }

    /// Whether the oldest pending sequence has waited `max_wait` at `now`.
    fn oldest_waited(&self, now: Instant) -> bool {
        self.queue.front().is_some_and(|entry| {
            now.saturating_duration_since(entry.arrived) >= self.config.max_wait
        })
    }

    /// Takes one batch off the queue: the oldest sequence, then first fit within the window.
    /// `None` when nothing is pending.
    fn next_batch(&mut self) -> Option<ReadyBatch> {
        let window = self.queue.len().min(LOOKAHEAD + 1);
        let mut taken: Vec<PendingSequence> = Vec::new();
        let mut skipped: Vec<Entry> = Vec::new();
        let mut tokens = 0;
        let mut bytes = BATCH_OVERHEAD;
        for entry in self.queue.drain(..window) {
            let len = entry.seq.token_ids.len();
            let fits = taken.len() < self.config.max_batch_seqs
                && tokens + len <= self.config.max_batch_tokens
                && bytes + entry.bytes <= self.config.max_batch_bytes;
            // The oldest sequence always goes, alone if it is over a budget.
            if taken.is_empty() || fits {
                tokens += len;
                bytes += entry.bytes;
                taken.push(entry.seq);
            } else {
                skipped.push(entry);
            }
        }
        for entry in skipped.into_iter().rev() {
            self.queue.push_front(entry);
        }
        if taken.is_empty() {
            return None;
        }
        self.pending_tokens -= tokens;
        self.pending_bytes -= bytes - BATCH_OVERHEAD;
        taken.sort_by_key(|seq| seq.token_ids.len());
        let mut token_ids = Vec::with_capacity(tokens);
        let mut items = Vec::with_capacity(taken.len());
        let mut deadlines = Vec::with_capacity(taken.len());
        for seq in taken {
            token_ids.extend_from_slice(&seq.token_ids);
            items.push(seq.item);
            deadlines.push(seq.deadline);
        }
        Some(ReadyBatch {
            batch: TokenBatch { token_ids, items },
            deadlines,
        })
    }
}
