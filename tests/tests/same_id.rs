//! Two requesters that pick the same request id (issue 18): real nats-server, a tokenizer
//! worker and a CPU GPU worker on the qwen3-tiny fixture, and two NATS clients (two
//! connections, each with its own inbox) that publish requests with the SAME id at the same
//! time. The tokenizer worker holds partial batches for [`BATCH_WAIT_MS`], so the two requests
//! share one batch. Each requester must get exactly its own replies: its vectors (checked
//! against the golden vectors of its inputs), its own acknowledgement (`queued` = its own
//! input count), its own error, and nothing of the other's. The same for rerank requests,
//! against the reranker's golden scores.

mod support;

use std::time::Duration;

use common::subjects::Task;
use common::wire::{
    self, EmbedReply, EmbedRequest, ErrorCode, ErrorReply, InputType, QueuedReply, RerankReply,
    RerankRequest, WorkerKind,
};
use e2e_tests::{NatsServer, tiny_model_dir, tiny_reranker_dir};
use futures::StreamExt;
use serde_json::Value;
use support::{
    Stage, floats, golden, golden_rerank, max_abs_diff, nats_config, publish_for_replies,
    start_gpu, start_rerank_gpu, start_tokenizer_configured, tokenizer_config, wait_for_kinds,
    wait_for_workers, worker_statuses,
};

/// How long the tokenizer worker waits before sending a partial batch: requests published
/// together surely share a batch, and a short deadline surely passes while they wait.
const BATCH_WAIT_MS: u64 = 1000;

/// The id both requesters pick.
const SHARED_ID: &str = "same-id";

/// Largest difference from a golden vector accepted (the CPU backend's documented bound).
const TOLERANCE: f32 = 2e-5;

/// How long a requester keeps listening after its answer is complete, to catch a reply
/// meant for the other requester arriving late.
const QUIET: Duration = Duration::from_millis(500);

/// Longest wait for one reply.
const REPLY_PATIENCE: Duration = Duration::from_secs(30);

/// A tokenizer worker that holds partial batches for [`BATCH_WAIT_MS`], a CPU GPU worker,
/// and two requesters on connections of their own.
struct Stack {
    tokenizer: Stage,
    gpu: Stage,
    first: async_nats::Client,
    second: async_nats::Client,
}

impl Stack {
    async fn start(server: &NatsServer) -> Self {
        let model = tiny_model_dir();
        let config = tokenizer_worker::config::TokenizerWorkerConfig {
            max_wait_ms: BATCH_WAIT_MS,
            ..tokenizer_config(&model)
        };
        let tokenizer = start_tokenizer_configured(config, nats_config(server));
        let gpu = start_gpu(server, &model);
        let first = async_nats::connect(server.url()).await.expect("connect");
        let second = async_nats::connect(server.url()).await.expect("connect");
        wait_for_workers(&first).await;
        Self {
            tokenizer,
            gpu,
            first,
            second,
        }
    }

    async fn stop(self) {
        self.tokenizer.stop().await.expect("tokenizer worker stops");
        self.gpu.stop().await.expect("GPU worker stops");
    }
}

/// The golden document cases: (text, vector).
fn documents() -> Vec<(String, Vec<f32>)> {
    golden()["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .filter(|case| case["is_query"] == Value::Bool(false))
        .map(|case| {
            (
                case["text"].as_str().expect("text").to_string(),
                floats(&case["embedding"]),
            )
        })
        .collect()
}

/// A request with the shared id for `texts`.
fn request(texts: &[&(String, Vec<f32>)], ack: bool) -> EmbedRequest {
    EmbedRequest {
        id: SHARED_ID.into(),
        input: texts.iter().map(|(text, _)| text.clone()).collect(),
        input_type: InputType::Document,
        instruction: None,
        dimensions: None,
        truncate: None,
        deadline_ms: None,
        timeout_ms: None,
        ack,
        bundle_to: None,
        ..Default::default()
    }
}

/// Everything one requester received.
#[derive(Debug, Default)]
struct Received {
    /// One slot per input: its vector once received.
    vectors: Vec<Option<Vec<f32>>>,
    /// Acknowledgements.
    acks: Vec<QueuedReply>,
    /// Error replies.
    errors: Vec<ErrorReply>,
}

/// Collects the replies of a request of `total` inputs until its answer is complete (every
/// vector, and the acknowledgement when `ack`; or an error), then for [`QUIET`] more. Panics,
/// naming `who`, on a chunk that is not the request's (another total, an input answered
/// twice).
async fn collect(
    who: &str,
    mut replies: async_nats::Subscriber,
    total: usize,
    ack: bool,
) -> Received {
    let mut received = Received {
        vectors: vec![None; total],
        ..Received::default()
    };
    let complete = |r: &Received| {
        !r.errors.is_empty()
            || (r.vectors.iter().all(Option::is_some) && (!ack || !r.acks.is_empty()))
    };
    while !complete(&received) {
        let message = tokio::time::timeout(REPLY_PATIENCE, replies.next())
            .await
            .unwrap_or_else(|_| panic!("{who}: no reply within {REPLY_PATIENCE:?}: {received:?}"))
            .expect("subscription open");
        take(who, &message, total, &mut received);
    }
    while let Ok(Some(message)) = tokio::time::timeout(QUIET, replies.next()).await {
        take(who, &message, total, &mut received);
    }
    received
}

/// Records one reply of `who`'s request of `total` inputs.
fn take(who: &str, message: &async_nats::Message, total: usize, received: &mut Received) {
    match wire::decode::<EmbedReply>(&message.payload).expect("reply decodes") {
        EmbedReply::Chunk(chunk) => {
            assert_eq!(chunk.id, SHARED_ID, "{who}");
            assert_eq!(
                chunk.total as usize, total,
                "{who} got a chunk of another request: {chunk:?}"
            );
            for (k, vector) in chunk
                .vectors()
                .expect("consistent chunk")
                .into_iter()
                .enumerate()
            {
                let slot = &mut received.vectors[chunk.offset as usize + k];
                assert!(
                    slot.is_none(),
                    "{who}: input {} answered twice",
                    chunk.offset as usize + k
                );
                *slot = Some(vector);
            }
        }
        EmbedReply::Queued(queued) => received.acks.push(queued),
        EmbedReply::Error(error) => received.errors.push(error),
    }
}

/// Asserts that `who` got exactly the golden vectors of `expected`, and one acknowledgement
/// of all its inputs when `ack` (none otherwise), and no error.
fn assert_own_answer(who: &str, received: &Received, expected: &[&(String, Vec<f32>)], ack: bool) {
    assert!(received.errors.is_empty(), "{who}: {:?}", received.errors);
    for (index, ((_, want), got)) in expected.iter().zip(&received.vectors).enumerate() {
        let got = got.as_ref().expect("every vector received");
        let diff = max_abs_diff(got, want);
        assert!(
            diff <= TOLERANCE,
            "{who}: vector {index} differs from its golden by {diff}"
        );
    }
    let want_acks = if ack {
        vec![QueuedReply {
            id: SHARED_ID.into(),
            queued: expected.len() as u32,
        }]
    } else {
        Vec::new()
    };
    assert_eq!(received.acks, want_acks, "{who}: acknowledgements");
}

/// Asserts that `who` got one error of `code` and nothing else.
fn assert_only_error(who: &str, received: &Received, code: ErrorCode) {
    assert_eq!(received.errors.len(), 1, "{who}: {received:?}");
    assert_eq!(received.errors[0].error.code, code, "{who}: {received:?}");
    assert_eq!(received.errors[0].id.as_deref(), Some(SHARED_ID));
    assert!(
        received.vectors.iter().all(Option::is_none) && received.acks.is_empty(),
        "{who}: replies after an error: {received:?}"
    );
}

/// Publishes `first` from the first requester and `second` from the second, back to back,
/// and collects both answers at once.
async fn exchange(
    stack: &Stack,
    first: &EmbedRequest,
    second: &EmbedRequest,
) -> (Received, Received) {
    let first_replies = publish_for_replies(&stack.first, "embed.requests", first, None).await;
    let second_replies = publish_for_replies(&stack.second, "embed.requests", second, None).await;
    tokio::join!(
        collect(
            "first requester",
            first_replies,
            first.input.len(),
            first.ack
        ),
        collect(
            "second requester",
            second_replies,
            second.input.len(),
            second.ack
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_id_requesters_get_their_own_vectors_and_acknowledgements() {
    let server = NatsServer::start();
    let stack = Stack::start(&server).await;
    let documents = documents();

    // 1. Different inputs, no acknowledgements.
    let (mine, theirs) = (vec![&documents[0], &documents[1]], vec![&documents[2]]);
    let (first, second) = exchange(&stack, &request(&mine, false), &request(&theirs, false)).await;
    assert_own_answer("first requester", &first, &mine, false);
    assert_own_answer("second requester", &second, &theirs, false);
    // The two requests shared one batch: the case where a worker keying replies by id
    // alone would mix them up.
    let statuses = worker_statuses(&stack.first).await;
    let tokenizer = statuses
        .iter()
        .find(|status| status.kind == WorkerKind::Tokenizer)
        .expect("the tokenizer worker answers");
    assert_eq!(
        (tokenizer.batches, tokenizer.sequences),
        (1, 3),
        "{tokenizer:?}"
    );

    // 2. Acknowledgements asked for, different input counts: each `queued` is the
    //    requester's own count, sent once.
    let (mine, theirs) = (
        vec![&documents[3], &documents[4], &documents[5]],
        vec![&documents[6]],
    );
    let (first, second) = exchange(&stack, &request(&mine, true), &request(&theirs, true)).await;
    assert_own_answer("first requester", &first, &mine, true);
    assert_own_answer("second requester", &second, &theirs, true);

    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_id_errors_reach_only_their_requester() {
    let server = NatsServer::start();
    let stack = Stack::start(&server).await;
    let documents = documents();

    // One valid request and one with `dimensions` out of range, both asking for an
    // acknowledgement: the error goes to its requester only, the vectors and the
    // acknowledgement to the other.
    let mine = vec![&documents[0], &documents[1]];
    let valid = request(&mine, true);
    let invalid = EmbedRequest {
        dimensions: Some(1_000_000),
        ..request(&[&documents[2]], true)
    };
    let (first, second) = exchange(&stack, &valid, &invalid).await;
    assert_own_answer("valid requester", &first, &mine, true);
    assert_only_error("invalid requester", &second, ErrorCode::InvalidRequest);

    // The same the other way round (the invalid request published first).
    let (first, second) = exchange(&stack, &invalid, &valid).await;
    assert_only_error("invalid requester", &first, ErrorCode::InvalidRequest);
    assert_own_answer("valid requester", &second, &mine, true);

    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_id_requests_expiring_in_one_batch_are_both_answered() {
    let server = NatsServer::start();
    let stack = Stack::start(&server).await;
    let documents = documents();

    // Both deadlines pass while the sequences wait for their batch (the worker holds it for
    // BATCH_WAIT_MS): each requester gets its own `deadline_exceeded`, though the two expire
    // in the same sweep with the same id.
    let deadline_ms = wire::now_ms() + 200;
    let first = EmbedRequest {
        deadline_ms: Some(deadline_ms),
        ..request(&[&documents[0], &documents[1]], true)
    };
    let second = EmbedRequest {
        deadline_ms: Some(deadline_ms),
        ..request(&[&documents[2]], true)
    };
    let (first, second) = exchange(&stack, &first, &second).await;
    assert_only_error("first requester", &first, ErrorCode::DeadlineExceeded);
    assert_only_error("second requester", &second, ErrorCode::DeadlineExceeded);

    stack.stop().await;
}

/// Records one reply of `who`'s rerank request of `total` documents: its scores by
/// document, or its acknowledgement. Panics on an error, a chunk of another request or a
/// document scored twice.
fn take_scores(
    who: &str,
    message: &async_nats::Message,
    total: usize,
    scores: &mut [Option<f32>],
    acks: &mut Vec<QueuedReply>,
) {
    match wire::decode::<RerankReply>(&message.payload).expect("reply decodes") {
        RerankReply::Chunk(chunk) => {
            assert_eq!(
                (chunk.id.as_str(), chunk.total as usize),
                (SHARED_ID, total),
                "{who} got a chunk of another request: {chunk:?}"
            );
            chunk.validate().expect("consistent chunk");
            for (k, score) in chunk.scores.iter().enumerate() {
                let slot = &mut scores[chunk.offset as usize + k];
                assert!(slot.is_none(), "{who}: document answered twice");
                *slot = Some(*score);
            }
        }
        RerankReply::Queued(queued) => acks.push(queued),
        RerankReply::Error(error) => panic!("{who}: {error:?}"),
    }
}

/// Collects the replies of a rerank request of `total` documents until every score and its
/// acknowledgement came, then for [`QUIET`] more: the scores by document and the
/// acknowledgements.
async fn collect_scores(
    who: &str,
    mut replies: async_nats::Subscriber,
    total: usize,
) -> (Vec<Option<f32>>, Vec<QueuedReply>) {
    let mut scores = vec![None; total];
    let mut acks = Vec::new();
    while scores.iter().any(Option::is_none) || acks.is_empty() {
        let message = tokio::time::timeout(REPLY_PATIENCE, replies.next())
            .await
            .unwrap_or_else(|_| panic!("{who}: no reply within {REPLY_PATIENCE:?}"))
            .expect("subscription open");
        take_scores(who, &message, total, &mut scores, &mut acks);
    }
    while let Ok(Some(message)) = tokio::time::timeout(QUIET, replies.next()).await {
        take_scores(who, &message, total, &mut scores, &mut acks);
    }
    (scores, acks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_id_rerank_requesters_get_their_own_scores_and_acknowledgements() {
    let server = NatsServer::start();
    let model = tiny_reranker_dir();
    let config = tokenizer_worker::config::TokenizerWorkerConfig {
        task: Task::Rerank,
        max_wait_ms: BATCH_WAIT_MS,
        ..tokenizer_config(&model)
    };
    let tokenizer = start_tokenizer_configured(config, nats_config(&server));
    let gpu = start_rerank_gpu(&server, &model);
    let first = async_nats::connect(server.url()).await.expect("connect");
    let second = async_nats::connect(server.url()).await.expect("connect");
    wait_for_kinds(
        &first,
        &[(WorkerKind::RerankTokenizer, 1), (WorkerKind::RerankGpu, 1)],
    )
    .await;
    let golden = golden_rerank();
    let cases = golden["cases"].as_array().expect("cases");
    let text = |case: &Value, field: &str| case[field].as_str().expect("text").to_string();
    let score = |case: &Value| case["score"].as_f64().expect("score") as f32;
    // The first requester scores pair 0's document three times, the second pair 1's once,
    // each under its own pair's query; both ask for an acknowledgement.
    let request = |case: &Value, copies: usize| RerankRequest {
        id: SHARED_ID.into(),
        query: text(case, "query"),
        documents: vec![text(case, "document"); copies],
        instruction: case["instruction"].as_str().map(String::from),
        truncate: None,
        deadline_ms: None,
        timeout_ms: None,
        ack: true,
        ..Default::default()
    };
    let (mine, theirs) = (request(&cases[0], 3), request(&cases[1], 1));
    let first_replies = publish_for_replies(&first, "embed.rerank", &mine, None).await;
    let second_replies = publish_for_replies(&second, "embed.rerank", &theirs, None).await;
    let ((first_scores, first_acks), (second_scores, second_acks)) = tokio::join!(
        collect_scores("first requester", first_replies, 3),
        collect_scores("second requester", second_replies, 1),
    );
    for (who, scores, case) in [
        ("first requester", &first_scores, &cases[0]),
        ("second requester", &second_scores, &cases[1]),
    ] {
        for got in scores {
            let got = got.expect("every document scored");
            let diff = (got - score(case)).abs();
            assert!(diff < 1e-5, "{who}: score off its golden by {diff}");
        }
    }
    let ack = |queued| QueuedReply {
        id: SHARED_ID.into(),
        queued,
    };
    assert_eq!(first_acks, [ack(3)], "first requester's acknowledgements");
    assert_eq!(second_acks, [ack(1)], "second requester's acknowledgements");

    tokenizer.stop().await.expect("tokenizer worker stops");
    gpu.stop().await.expect("GPU worker stops");
}
