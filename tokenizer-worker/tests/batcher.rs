//! Batcher behaviour: budgets, ordering, waiting, expiry, and a seeded random workload.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::wire::{self, deadline_passed};
use common::wire::{BatchItem, TokenBatch};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokenizer_worker::batcher::{
    Batcher, BatcherConfig, BatcherError, PendingSequence, ReadyBatch,
};

const WAIT: Duration = Duration::from_millis(5);

fn config(max_batch_tokens: usize, max_batch_seqs: usize) -> BatcherConfig {
    BatcherConfig {
        max_batch_tokens,
        max_batch_seqs,
        max_batch_bytes: usize::MAX,
        max_wait: WAIT,
    }
}

fn item(request: &str, index: u32, deadline_ms: u64) -> BatchItem {
    BatchItem {
        request_id: request.into(),
        reply_to: format!("_INBOX.{request}"),
        index,
        total: 100,
        len: 0,
        dims: 0,
        deadline_ms,
        trace: None,
        bundle_to: None,
        budget_ms: 0,
        ..Default::default()
    }
}

/// A sequence of `len` tokens whose ids encode (index, position), so a batch can be checked
/// to carry each sequence's own tokens.
fn seq(request: &str, index: u32, len: usize) -> PendingSequence {
    seq_with_deadline(request, index, len, None)
}

fn seq_with_deadline(
    request: &str,
    index: u32,
    len: usize,
    deadline: Option<Instant>,
) -> PendingSequence {
    let tokens = (0..len as u32).map(|p| index * 10_000 + p).collect();
    PendingSequence::new(item(request, index, 0), tokens, deadline).expect("valid sequence")
}

/// The batches of what the batcher handed out, without their deadlines.
fn batches_of(ready: Vec<ReadyBatch>) -> Vec<TokenBatch> {
    ready.into_iter().map(|ready| ready.batch).collect()
}

fn lens(batch: &TokenBatch) -> Vec<u32> {
    batch.items.iter().map(|item| item.len).collect()
}

fn indices(batch: &TokenBatch) -> Vec<u32> {
    batch.items.iter().map(|item| item.index).collect()
}

#[test]
fn config_with_zero_budget_is_rejected() {
    let err = Batcher::new(config(0, 4)).expect_err("zero tokens");
    assert!(err.to_string().contains("max_batch_tokens"), "{err}");
    let err = Batcher::new(config(4, 0)).expect_err("zero sequences");
    assert!(err.to_string().contains("max_batch_seqs"), "{err}");
    assert!(Batcher::new(config(1, 1)).is_ok());
}

#[test]
fn sequence_with_wrong_len_or_no_tokens_is_refused() {
    let mut batcher = Batcher::new(config(100, 8)).expect("config");
    let now = Instant::now();
    let mut bad = seq("r", 0, 3);
    bad.item.len = 4;
    let err = batcher.push(bad, now).expect_err("len mismatch");
    assert!(
        matches!(err, BatcherError::InvalidSequence { ref reason, .. } if reason.contains("4")),
        "{err}"
    );
    let empty = PendingSequence::new(item("r", 1, 0), Vec::new(), None).expect("built");
    assert!(batcher.push(empty, now).is_err());
    assert_eq!(batcher.pending_seqs(), 0);
    assert_eq!(batcher.pending_tokens(), 0);
    assert_eq!(batcher.next_flush_at(), None);
}

#[test]
fn nothing_is_sent_before_the_budget_or_the_wait() {
    let mut batcher = Batcher::new(config(100, 8)).expect("config");
    let t0 = Instant::now();
    batcher.push(seq("r", 0, 30), t0).expect("push");
    batcher
        .push(seq("r", 1, 30), t0 + Duration::from_millis(1))
        .expect("push");
    assert!(batches_of(batcher.pop_ready(t0 + Duration::from_millis(2))).is_empty());
    assert_eq!(batcher.pending_tokens(), 60);
    assert_eq!(batcher.pending_seqs(), 2);
    // The oldest sequence decides when the partial batch goes.
    assert_eq!(batcher.next_flush_at(), Some(t0 + WAIT));
    assert!(batches_of(batcher.pop_ready(t0 + WAIT - Duration::from_micros(1))).is_empty());
    let batches = batches_of(batcher.pop_ready(t0 + WAIT));
    assert_eq!(batches.len(), 1);
    assert_eq!(indices(&batches[0]), vec![0, 1]);
    assert_eq!(batches[0].num_tokens(), 60);
    assert_eq!(batcher.pending_seqs(), 0);
    assert_eq!(batcher.next_flush_at(), None);
}

#[test]
fn pop_full_holds_partial_batches_whatever_their_wait() {
    let mut batcher = Batcher::new(config(100, 3)).expect("config");
    let t0 = Instant::now();
    for index in 0..4 {
        batcher.push(seq("r", index, 10), t0).expect("push");
    }
    // Long past the wait: the full batch (three sequences) goes, the fourth stays.
    let batches = batches_of(batcher.pop_full());
    assert_eq!(batches.len(), 1);
    assert_eq!(indices(&batches[0]), vec![0, 1, 2]);
    assert!(batches_of(batcher.pop_full()).is_empty());
    assert_eq!(batcher.pending_seqs(), 1);
    // The held sequence goes with the next `pop_ready`, with those that came meanwhile.
    batcher.push(seq("r", 4, 10), t0 + WAIT).expect("push");
    let batches = batches_of(batcher.pop_ready(t0 + WAIT * 4));
    assert_eq!(batches.len(), 1);
    assert_eq!(indices(&batches[0]), vec![3, 4]);
}

#[test]
fn full_token_budget_is_sent_at_once_and_never_exceeded() {
    let mut batcher = Batcher::new(config(100, 64)).expect("config");
    let now = Instant::now();
    for index in 0..5 {
        batcher.push(seq("r", index, 30), now).expect("push");
    }
    // 150 tokens pending: one batch of three (90 tokens) goes, 60 tokens wait.
    let batches = batches_of(batcher.pop_ready(now));
    assert_eq!(batches.len(), 1);
    assert_eq!(indices(&batches[0]), vec![0, 1, 2]);
    assert_eq!(batches[0].num_tokens(), 90);
    batches[0].validate().expect("valid batch");
    assert_eq!(batcher.pending_tokens(), 60);
    assert_eq!(batcher.next_flush_at(), Some(now + WAIT));
}

#[test]
fn full_sequence_budget_is_sent_at_once() {
    let mut batcher = Batcher::new(config(1000, 3)).expect("config");
    let now = Instant::now();
    for index in 0..2 {
        batcher.push(seq("r", index, 2), now).expect("push");
    }
    assert!(batches_of(batcher.pop_ready(now)).is_empty());
    batcher.push(seq("r", 2, 2), now).expect("push");
    assert_eq!(
        batcher.next_flush_at(),
        Some(now),
        "a full batch is due now"
    );
    let batches = batches_of(batcher.pop_ready(now));
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].items.len(), 3);
    assert_eq!(batcher.pending_seqs(), 0);
}

#[test]
fn batch_is_sorted_by_length_stably_and_carries_each_sequences_tokens() {
    let mut batcher = Batcher::new(config(1000, 64)).expect("config");
    let now = Instant::now();
    for (index, len) in [(0, 5), (1, 2), (2, 7), (3, 2), (4, 1)] {
        batcher.push(seq("r", index, len), now).expect("push");
    }
    let batches = batches_of(batcher.drain());
    assert_eq!(batches.len(), 1);
    let batch = &batches[0];
    assert_eq!(lens(batch), vec![1, 2, 2, 5, 7]);
    // Equal lengths keep arrival order.
    assert_eq!(indices(batch), vec![4, 1, 3, 0, 2]);
    batch.validate().expect("valid batch");
    let mut offset = 0;
    for item in &batch.items {
        let expected: Vec<u32> = (0..item.len).map(|p| item.index * 10_000 + p).collect();
        assert_eq!(
            &batch.token_ids[offset..offset + item.len as usize],
            &expected[..]
        );
        offset += item.len as usize;
    }
}

#[test]
fn later_short_sequences_fill_the_room_the_oldest_leaves() {
    let mut batcher = Batcher::new(config(10, 64)).expect("config");
    let now = Instant::now();
    batcher.push(seq("r", 0, 6), now).expect("push");
    batcher.push(seq("r", 1, 6), now).expect("push");
    batcher.push(seq("r", 2, 3), now).expect("push");
    let batches = batches_of(batcher.pop_ready(now));
    assert_eq!(batches.len(), 1);
    assert_eq!(indices(&batches[0]), vec![2, 0]);
    assert_eq!(batches[0].num_tokens(), 9);
    // The skipped sequence is now the oldest and goes first in the next batch.
    batcher.push(seq("r", 3, 4), now).expect("push");
    let batches = batches_of(batcher.pop_ready(now));
    assert_eq!(batches.len(), 1);
    assert_eq!(indices(&batches[0]), vec![3, 1]);
    assert_eq!(batcher.pending_seqs(), 0);
}

#[test]
fn oversized_sequence_forms_a_batch_alone() {
    let mut batcher = Batcher::new(config(10, 64)).expect("config");
    let now = Instant::now();
    batcher.push(seq("r", 0, 3), now).expect("push");
    batcher.push(seq("r", 1, 25), now).expect("push");
    batcher.push(seq("r", 2, 4), now).expect("push");
    // 32 tokens pending: the oldest batch (3 + 4) goes, then the oversized one alone.
    let batches = batches_of(batcher.pop_ready(now));
    assert_eq!(batches.len(), 2);
    assert_eq!(indices(&batches[0]), vec![0, 2]);
    assert_eq!(indices(&batches[1]), vec![1]);
    assert_eq!(batches[1].num_tokens(), 25);
    batches[1].validate().expect("valid batch");
    assert_eq!(batcher.pending_tokens(), 0);
}

#[test]
fn drain_respects_the_budgets() {
    let mut batcher = Batcher::new(config(10, 2)).expect("config");
    let now = Instant::now();
    // Pushed one by one, with pop_ready between, as the service does.
    let mut sent = Vec::new();
    for index in 0..3 {
        batcher.push(seq("r", index, 4), now).expect("push");
        sent.extend(batches_of(batcher.pop_ready(now)));
    }
    assert_eq!(sent.len(), 1, "two sequences fill a batch");
    batcher.push(seq("r", 3, 9), now).expect("push");
    // 13 tokens pending: [2] goes (adding 9 more would pass 10 tokens), [3] waits.
    let ready = batches_of(batcher.pop_ready(now));
    assert_eq!(ready.len(), 1);
    assert_eq!(indices(&ready[0]), vec![2]);
    sent.extend(ready);
    let drained = batches_of(batcher.drain());
    assert_eq!(drained.len(), 1);
    assert_eq!(indices(&drained[0]), vec![3]);
    sent.extend(drained);
    assert_eq!(batcher.pending_seqs(), 0);
    let mut seen: Vec<u32> = sent.iter().flat_map(indices).collect();
    seen.sort_unstable();
    assert_eq!(seen, vec![0, 1, 2, 3]);
    for batch in &sent {
        assert!(batch.num_tokens() <= 10 && batch.items.len() <= 2);
        batch.validate().expect("valid batch");
    }
}

#[test]
fn expired_sequences_are_removed_and_returned() {
    let mut batcher = Batcher::new(config(1000, 64)).expect("config");
    let now = Instant::now();
    let at = |ms| Some(now + Duration::from_millis(ms));
    batcher
        .push(seq_with_deadline("a", 0, 5, at(1_000)), now)
        .expect("push");
    batcher
        .push(seq_with_deadline("b", 1, 7, None), now)
        .expect("push");
    batcher
        .push(seq_with_deadline("c", 2, 3, at(2_000)), now)
        .expect("push");
    batcher
        .push(seq_with_deadline("a", 3, 4, at(1_000)), now)
        .expect("push");

    let just_before = now + Duration::from_millis(999);
    assert!(
        batcher.remove_expired(just_before).is_empty(),
        "not due yet"
    );
    // Due from its instant on.
    let expired = batcher.remove_expired(now + Duration::from_millis(1_000));
    let ids: Vec<(&str, u32)> = expired
        .iter()
        .map(|item| (item.request_id.as_str(), item.index))
        .collect();
    assert_eq!(ids, vec![("a", 0), ("a", 3)]);
    assert_eq!(expired[0].len, 5);
    assert_eq!(batcher.pending_tokens(), 10);
    assert_eq!(batcher.pending_seqs(), 2);
    // A sequence without a deadline never expires.
    let expired = batcher.remove_expired(now + Duration::from_secs(3_600));
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].request_id, "c");
    let batches = batches_of(batcher.drain());
    assert_eq!(batches.len(), 1);
    assert_eq!(indices(&batches[0]), vec![1]);
}

/// A batch keeps each item's deadline beside it through the sort by length, and turns
/// what is left of each into the item's `budget_ms` when stamped.
#[test]
fn ready_batches_carry_each_items_deadline_as_a_budget() {
    let mut batcher = Batcher::new(config(1000, 64)).expect("config");
    let now = Instant::now();
    let at = |ms| Some(now + Duration::from_millis(ms));
    for (index, len, deadline) in [(0, 9, at(3_000)), (1, 2, None), (2, 5, at(1_000))] {
        batcher
            .push(seq_with_deadline("r", index, len, deadline), now)
            .expect("push");
    }
    let mut ready = batcher.drain();
    assert_eq!(ready.len(), 1);
    let batch = &mut ready[0];
    // Sorted by length: items 1, 2, 0.
    assert_eq!(indices(&batch.batch), vec![1, 2, 0]);
    assert_eq!(batch.deadlines, vec![None, at(1_000), at(3_000)]);
    assert_eq!(batch.earliest_deadline(), at(1_000));
    batch.stamp_budgets(now + Duration::from_millis(400));
    let budgets: Vec<u64> = batch.batch.items.iter().map(|i| i.budget_ms).collect();
    assert_eq!(budgets, vec![0, 600, 2_600]);
}

#[test]
fn deadline_zero_means_none() {
    assert!(!deadline_passed(0, u64::MAX));
    assert!(!deadline_passed(10, 10));
    assert!(deadline_passed(10, 11));
}

#[test]
fn zero_wait_sends_every_sequence_at_once() {
    let mut batcher = Batcher::new(BatcherConfig {
        max_wait: Duration::ZERO,
        ..config(100, 8)
    })
    .expect("config");
    let now = Instant::now();
    batcher.push(seq("r", 0, 3), now).expect("push");
    assert_eq!(batcher.next_flush_at(), Some(now));
    assert_eq!(batches_of(batcher.pop_ready(now)).len(), 1);
}

/// Random pushes, clock steps, pops and expiries: every sequence comes out exactly once
/// (in a batch or expired), batches are valid, sorted and within budget, and no sequence
/// stays pending past `max_wait` after a `pop_ready`.
#[test]
fn random_workload_sends_every_sequence_exactly_once() {
    for seed in 0..20u64 {
        let mut rng = StdRng::seed_from_u64(0x5eed_0000 + seed);
        let max_tokens = rng.random_range(8..=512);
        let max_seqs = rng.random_range(1..=32);
        // Half the seeds with a byte budget that binds before the others.
        let max_bytes = if seed % 2 == 0 {
            usize::MAX
        } else {
            rng.random_range(200..=4_000)
        };
        let cfg = BatcherConfig {
            max_batch_tokens: max_tokens,
            max_batch_seqs: max_seqs,
            max_batch_bytes: max_bytes,
            max_wait: Duration::from_millis(rng.random_range(0..=20)),
        };
        let mut batcher = Batcher::new(cfg).expect("config");
        let start = Instant::now();
        let mut clock_ms = 0u64;
        let mut pushed: HashMap<u32, usize> = HashMap::new();
        let mut out_count: HashMap<u32, usize> = HashMap::new();
        let mut batches: Vec<TokenBatch> = Vec::new();
        let mut expired: Vec<BatchItem> = Vec::new();
        let mut with_deadline: HashSet<u32> = HashSet::new();

        for index in 0..2_000u32 {
            clock_ms += rng.random_range(0..=3);
            let now = start + Duration::from_millis(clock_ms);
            // Mostly within budget, sometimes oversized.
            let len = if rng.random_bool(0.03) {
                rng.random_range(max_tokens + 1..=max_tokens * 2)
            } else {
                rng.random_range(1..=max_tokens)
            };
            let deadline = rng
                .random_bool(0.1)
                .then(|| now + Duration::from_millis(rng.random_range(0..=10)));
            if deadline.is_some() {
                with_deadline.insert(index);
            }
            let request = format!("req{}", index / 7);
            batcher
                .push(seq_with_deadline(&request, index, len, deadline), now)
                .expect("push");
            pushed.insert(index, len);
            if rng.random_bool(0.2) {
                expired.extend(batcher.remove_expired(now));
            }
            if rng.random_bool(0.7) {
                batches.extend(batches_of(batcher.pop_ready(now)));
                if let Some(at) = batcher.next_flush_at() {
                    assert!(at > now, "seed {seed}: a ready batch was left pending");
                }
            }
        }
        batches.extend(batches_of(batcher.drain()));
        assert_eq!(batcher.pending_seqs(), 0);
        assert_eq!(batcher.pending_tokens(), 0);
        assert!(batches_of(batcher.drain()).is_empty());

        for batch in &batches {
            batch.validate().expect("valid batch");
            let lens = lens(batch);
            assert!(lens.is_sorted(), "seed {seed}: batch not sorted: {lens:?}");
            assert!(batch.items.len() <= max_seqs, "seed {seed}: too many seqs");
            assert!(
                batch.num_tokens() <= max_tokens || batch.items.len() == 1,
                "seed {seed}: {} tokens over budget {max_tokens}",
                batch.num_tokens()
            );
            let bytes = wire::encode(batch).expect("encodes").len();
            assert!(
                bytes <= max_bytes || batch.items.len() == 1,
                "seed {seed}: {bytes} bytes over budget {max_bytes}"
            );
            let mut offset = 0;
            for item in &batch.items {
                let tokens = &batch.token_ids[offset..offset + item.len as usize];
                assert_eq!(tokens.first(), Some(&(item.index * 10_000)));
                assert_eq!(pushed.get(&item.index), Some(&(item.len as usize)));
                offset += item.len as usize;
                *out_count.entry(item.index).or_default() += 1;
            }
        }
        for item in &expired {
            assert!(
                with_deadline.contains(&item.index),
                "seed {seed}: expired without one"
            );
            *out_count.entry(item.index).or_default() += 1;
        }
        assert_eq!(out_count.len(), pushed.len(), "seed {seed}: sequences lost");
        assert!(
            out_count.values().all(|&count| count == 1),
            "seed {seed}: a sequence came out twice"
        );
    }
}

/// Sequences whose ids and subjects are as long as the caps allow: batches close on the
/// byte budget (before the token and sequence budgets), and every batch's real encoding,
/// with the largest budgets written into it as a send does, stays within it.
#[test]
fn batches_are_cut_by_their_encoded_size() {
    use common::wire::limits::{MAX_ID_BYTES, MAX_SUBJECT_BYTES};
    use common::wire::size::{BATCH_OVERHEAD, sequence_size_bound};

    let max_bytes = 8 * 1024;
    let mut batcher = Batcher::new(BatcherConfig {
        max_batch_bytes: max_bytes,
        ..config(100_000, 1_000)
    })
    .expect("config");
    let now = Instant::now();
    let long = |what: &str, n: u32, cap: usize| {
        let head = format!("_INBOX.{what}{n}.");
        format!("{head}{}", "x".repeat(cap - head.len()))
    };
    let sequences = 100usize;
    let mut per_sequence = 0;
    for n in 0..sequences as u32 {
        let mut seq = seq("r", n, 3);
        seq.item.request_id = format!("{n:0>width$}", width = MAX_ID_BYTES);
        seq.item.reply_to = long("reply", n, MAX_SUBJECT_BYTES);
        seq.item.bundle_to = Some(long("bundle", n, MAX_SUBJECT_BYTES));
        per_sequence = sequence_size_bound(&seq.item, 3);
        batcher.push(seq, now).expect("push");
    }
    // Well before any other budget, the bytes fill a batch: it goes without waiting.
    let batches = batcher.pop_full();
    assert!(!batches.is_empty(), "the byte budget did not fill a batch");
    let mut sent: Vec<TokenBatch> = batches_of(batches);
    sent.extend(batches_of(batcher.drain()));
    // Every batch holds as many sequences as fit.
    let per_batch = (max_bytes - BATCH_OVERHEAD) / per_sequence;
    assert!(per_batch > 1);
    assert_eq!(sent.len(), sequences.div_ceil(per_batch));
    let mut items = 0;
    for mut batch in sent {
        for item in &mut batch.items {
            item.budget_ms = u64::MAX;
            item.deadline_ms = u64::MAX;
        }
        let bytes = wire::encode(&batch).expect("encodes").len();
        assert!(bytes <= max_bytes, "a batch of {bytes} bytes");
        items += batch.items.len();
    }
    assert_eq!(items, sequences);
}

#[test]
fn a_byte_budget_below_the_batch_overhead_is_refused() {
    use common::wire::size::BATCH_OVERHEAD;

    let err = Batcher::new(BatcherConfig {
        max_batch_bytes: BATCH_OVERHEAD,
        ..config(10, 10)
    })
    .expect_err("no room for an item");
    assert!(err.to_string().contains("max_batch_bytes"), "{err}");
    let mut batcher = Batcher::new(config(10, 10)).expect("config");
    assert!(batcher.set_max_batch_bytes(BATCH_OVERHEAD).is_err());
    batcher
        .set_max_batch_bytes(1_000)
        .expect("a budget with room");
    assert_eq!(batcher.config().max_batch_bytes, 1_000);
}
