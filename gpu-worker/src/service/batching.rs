//! Running batches: merged into passes within the token budget, expired items dropped,
//! the result published, and a batch's own failures (over the budget, a token outside the
//! vocabulary) answered to its requests. A lost device is not a batch's failure: nothing
//! is answered, and the caller hands the batches back.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use common::subjects::Task;
use common::trace::{LOG_TARGET, RequestTrace};
use common::wire::{self, BatchItem, ErrorCode, ErrorReply, Priority, TokenBatch};
use common::worker::send_error_in_order;

use super::Shared;
use super::stages::{PassTiming, Stamp, Via, Waiting};
use super::{lanes, replies, stages};
use crate::engine::{EngineError, Output, Work};

/// How serving a group of batches ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Served {
    /// Every request got its replies (results or errors): ack the batches.
    Answered,
    /// The device can no longer compute; nothing more was sent: hand the batches back.
    DeviceLost,
}

/// How one pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Done, as [`Served::Answered`].
    Answered,
    /// A merged pass refused its input and nothing was sent: run its batches alone.
    InputRefused,
    /// As [`Served::DeviceLost`].
    DeviceLost,
}

/// A batch in hand: the ticket it is held under, and since when its requests wait for a
/// device (when it entered the work queue, or reached this worker directly).
pub(super) type Taken = (u64, SystemTime);

/// Runs batches of lane `lane` that came `via` the work queue or the direct subject (held as
/// the tickets they come with) merged into one forward pass; when the merged pass refuses
/// its input (a token outside the vocabulary, say), runs them one by one, so only the
/// poisoned batch's requests get the error. Counts their tokens off the load once done.
pub(super) async fn serve_group(
    shared: &Shared,
    group: Vec<(Taken, TokenBatch)>,
    lane: Priority,
    via: Via,
) -> Served {
    let mut waiting = Waiting::new(via);
    for ((_, since), batch) in &group {
        waiting.add(batch, *since);
    }
    let (tickets, batches): (Vec<u64>, Vec<TokenBatch>) = group
        .into_iter()
        .map(|((ticket, _), batch)| (ticket, batch))
        .unzip();
    let tokens = batches.iter().map(TokenBatch::num_tokens).sum();
    let run = Run {
        lane,
        waiting: &waiting,
    };
    let pass = if batches.len() == 1 {
        serve(shared, &tickets, concat(batches), true, &run).await
    } else {
        match serve(shared, &tickets, concat(batches.clone()), false, &run).await {
            Pass::InputRefused => {
                tracing::warn!(
                    batches = batches.len(),
                    "a merged pass refused its input; running its batches one by one"
                );
                let mut alone = Pass::Answered;
                for (ticket, batch) in tickets.iter().zip(batches) {
                    let ticket = std::slice::from_ref(ticket);
                    alone = serve(shared, ticket, batch, true, &run).await;
                    if alone == Pass::DeviceLost {
                        break;
                    }
                }
                alone
            }
            other => other,
        }
    };
    shared.load().finish(tokens);
    match pass {
        Pass::DeviceLost => Served::DeviceLost,
        // A lone pass answers its input errors: only the merged one above refuses unanswered.
        Pass::Answered | Pass::InputRefused => Served::Answered,
    }
}

/// What the passes of one group share: their lane, and since when their requests wait.
struct Run<'a> {
    /// The lane.
    lane: Priority,
    /// How the group came, and since when each request waits.
    waiting: &'a Waiting,
}

/// Runs one (possibly merged) batch of `run`'s lane, held as `tickets`, and publishes its
/// chunks (each stamped with its request's timings, [`stages`]). A batch's
/// own failure is answered to every request in it, except an input error when
/// `answer_input_errors` is false (nothing is sent; the caller runs the parts alone).
/// Nothing runs, and nothing is answered, once the device is lost.
async fn serve(
    shared: &Shared,
    tickets: &[u64],
    batch: TokenBatch,
    answer_input_errors: bool,
    run: &Run<'_>,
) -> Pass {
    let lane = run.lane;
    if shared.health.is_failed() {
        return Pass::DeviceLost;
    }
    shared.counters.in_flight.fetch_add(1, Ordering::Relaxed);
    let live = drop_expired(shared, batch).await;
    let pass = if live.num_tokens() > shared.max_batch_tokens {
        // Only a misconfigured tokenizer worker (or a foreign client) sends such a batch:
        // refuse it rather than let it take memory the worker was not sized for.
        let error = EngineError::Refused(format!(
            "a batch of {} tokens exceeds this worker's max_batch_tokens ({}); the \
             tokenizer workers' max_batch_tokens must not be larger",
            live.num_tokens(),
            shared.max_batch_tokens
        ));
        fail_batch(shared, &live.items, &error).await;
        Pass::Answered
    } else if live.items.is_empty() {
        Pass::Answered
    } else {
        let pass = shared.device.new_pass();
        shared.hand.mark(tickets, pass);
        match run_batch(shared, pass, &live, lane).await {
            Ok((output, timing)) => {
                let stamp = Stamp {
                    model: &shared.model_name,
                    lane,
                    via: run.waiting.via(),
                    pass: timing,
                };
                let (outbox, outcome) = match &output {
                    Output::Vectors(vectors) => (
                        replies::embeddings(&live.items, vectors, shared.max_payload, &stamp),
                        "embedded",
                    ),
                    Output::Scores(scores) => (
                        replies::scores(&live.items, scores, shared.max_payload, &stamp),
                        "scored",
                    ),
                };
                replies::publish(&shared.client, outbox, shared.max_payload).await;
                stages::record_spans(&live.items, run.waiting, &stamp);
                log_requests(&live.items, outcome);
                Pass::Answered
            }
            Err(EngineError::Input(_)) if !answer_input_errors => Pass::InputRefused,
            Err(error) if error.is_fatal() => {
                shared.health.fail(error.to_string());
                Pass::DeviceLost
            }
            Err(error) => {
                fail_batch(shared, &live.items, &error).await;
                Pass::Answered
            }
        }
    };
    shared.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    pass
}

/// Groups batches, in order, so each group's tokens stay within `budget` (a batch larger
/// than the budget forms a group alone, and is refused).
pub(super) fn merge_by_budget<T>(
    batches: Vec<(T, TokenBatch)>,
    budget: usize,
) -> Vec<Vec<(T, TokenBatch)>> {
    let mut groups: Vec<Vec<(T, TokenBatch)>> = Vec::new();
    let mut tokens = 0;
    for (tag, batch) in batches {
        let n = batch.num_tokens();
        match groups.last_mut() {
            Some(group) if tokens + n <= budget => {
                tokens += n;
                group.push((tag, batch));
            }
            _ => {
                tokens = n;
                groups.push(vec![(tag, batch)]);
            }
        }
    }
    groups
}

/// One batch holding the sequences of `batches`, in order.
fn concat(batches: Vec<TokenBatch>) -> TokenBatch {
    let mut iter = batches.into_iter();
    let mut merged = iter.next().unwrap_or(TokenBatch {
        token_ids: Vec::new(),
        items: Vec::new(),
    });
    for batch in iter {
        merged.token_ids.extend(batch.token_ids);
        merged.items.extend(batch.items);
    }
    merged
}

/// Runs `batch` on the device as pass `pass` of lane `lane`, once the lane's turn came
/// ([`lanes::Turns`]), and counts it (its time on the device too); returns its output and
/// when it ran.
async fn run_batch(
    shared: &Shared,
    pass: u64,
    batch: &TokenBatch,
    lane: Priority,
) -> Result<(Output, PassTiming), EngineError> {
    let hidden = shared.device.info().hidden_size;
    let lengths = batch.items.iter().map(|item| item.len as usize).collect();
    let work = match shared.task {
        Task::Embed => Work::Embed {
            dims: batch
                .items
                .iter()
                .map(|item| match item.dims {
                    0 => hidden,
                    dims => dims as usize,
                })
                .collect(),
            normalize: batch.items.iter().map(|item| !item.unnormalized).collect(),
        },
        Task::Rerank => Work::Score,
    };
    let turn = shared.turns.take(lane).await;
    lanes::log_pass(lane, pass, batch.num_tokens(), &batch.items);
    if !shared.test_pass_delay.is_zero() {
        tokio::time::sleep(shared.test_pass_delay).await;
    }
    let started = Instant::now();
    let output = shared
        .device
        .run(pass, batch.token_ids.clone(), lengths, work)
        .await;
    drop(turn);
    let output = output?;
    let ended = Instant::now();
    let took = ended.saturating_duration_since(started);
    shared.load().observe(batch.num_tokens(), took);
    let c = &shared.counters;
    let took_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    c.busy_us.fetch_add(took_us, Ordering::Relaxed);
    c.batches.fetch_add(1, Ordering::Relaxed);
    c.sequences
        .fetch_add(batch.items.len() as u64, Ordering::Relaxed);
    c.tokens
        .fetch_add(batch.num_tokens() as u64, Ordering::Relaxed);
    let timing = PassTiming {
        started,
        ended,
        sequences: batch.items.len(),
        tokens: batch.num_tokens(),
    };
    Ok((output, timing))
}

/// Removes items whose deadline passed (answering their requests once: a request is its
/// reply subject and id together) and returns the rest.
async fn drop_expired(shared: &Shared, batch: TokenBatch) -> TokenBatch {
    let now = wire::now_ms();
    if !batch
        .items
        .iter()
        .any(|item| wire::deadline_passed(item.deadline_ms, now))
    {
        return batch;
    }
    let mut live = TokenBatch {
        token_ids: Vec::with_capacity(batch.token_ids.len()),
        items: Vec::with_capacity(batch.items.len()),
    };
    let mut answered = HashSet::new();
    let mut start = 0;
    for item in batch.items {
        let end = start + item.len as usize;
        if wire::deadline_passed(item.deadline_ms, now) {
            if answered.insert((item.reply_to.clone(), item.request_id.clone())) {
                let error = ErrorReply::new(
                    Some(item.request_id.clone()),
                    ErrorCode::DeadlineExceeded,
                    "the request's deadline passed before a GPU worker reached it",
                );
                send_error_in_order(&shared.client, &item.reply_to, &error).await;
            }
        } else {
            live.token_ids
                .extend_from_slice(&batch.token_ids[start..end]);
            live.items.push(item);
        }
        start = end;
    }
    live
}

/// Answers every request of a failed batch (once each: a request is its reply subject and
/// id together) with the error's code.
pub(super) async fn fail_batch(shared: &Shared, items: &[BatchItem], error: &EngineError) {
    tracing::error!(%error, sequences = items.len(), "batch failed");
    log_requests(items, "failed");
    for (reply_to, id) in requests(items) {
        let reply = ErrorReply::new(Some(id.to_string()), error.code(), error.to_string());
        send_error_in_order(&shared.client, reply_to, &reply).await;
    }
}

/// The distinct requests of `items`, `(reply subject, id)`, in order of first appearance.
fn requests(items: &[BatchItem]) -> Vec<(&str, &str)> {
    let mut seen = HashSet::new();
    items
        .iter()
        .map(|item| (item.reply_to.as_str(), item.request_id.as_str()))
        .filter(|request| seen.insert(*request))
        .collect()
}

/// Logs one line per request served by `items` on the per-request target, with the
/// request id and trace id its tokenizer worker passed on.
fn log_requests(items: &[BatchItem], outcome: &'static str) {
    if !tracing::enabled!(target: LOG_TARGET, tracing::Level::DEBUG) {
        return;
    }
    let mut sequences: BTreeMap<(&str, &str), (usize, Option<&RequestTrace>)> = BTreeMap::new();
    for item in items {
        sequences
            .entry((&item.reply_to, &item.request_id))
            .or_insert((0, item.trace.as_ref()))
            .0 += 1;
    }
    for ((_, id), (count, trace)) in sequences {
        tracing::debug!(
            target: LOG_TARGET,
            id,
            request_id = trace.map_or("", |t| t.request_id()),
            trace_id = trace.map_or("", |t| t.trace_id()),
            sequences = count,
            "{outcome}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(tokens: usize) -> TokenBatch {
        TokenBatch {
            token_ids: vec![1; tokens],
            items: Vec::new(),
        }
    }

    #[test]
    fn batches_merge_in_order_within_the_budget() {
        let batches = vec![
            (0, batch(3)),
            (1, batch(4)),
            (2, batch(5)),
            (3, batch(20)),
            (4, batch(1)),
        ];
        let groups: Vec<Vec<i32>> = merge_by_budget(batches, 10)
            .into_iter()
            .map(|g| g.into_iter().map(|(tag, _)| tag).collect())
            .collect();
        assert_eq!(groups, vec![vec![0, 1], vec![2], vec![3], vec![4]]);
    }

    #[test]
    fn concatenation_keeps_sequences_in_order() {
        let a = TokenBatch {
            token_ids: vec![1, 2],
            items: vec![BatchItem::new("a", "r", 0, 1, 2)],
        };
        let b = TokenBatch {
            token_ids: vec![3],
            items: vec![BatchItem::new("b", "r", 0, 1, 1)],
        };
        let merged = concat(vec![a, b]);
        assert_eq!(merged.token_ids, vec![1, 2, 3]);
        assert_eq!(merged.items.len(), 2);
        assert!(merged.validate().is_ok());
    }

    #[test]
    fn two_clients_with_the_same_id_are_two_requests() {
        let items = [
            BatchItem::new("1", "_INBOX.a", 0, 1, 1),
            BatchItem::new("1", "_INBOX.b", 0, 1, 1),
            BatchItem::new("1", "_INBOX.a", 0, 1, 1),
            BatchItem::new("2", "_INBOX.a", 0, 1, 1),
        ];
        assert_eq!(
            requests(&items),
            [("_INBOX.a", "1"), ("_INBOX.b", "1"), ("_INBOX.a", "2")]
        );
    }
}
