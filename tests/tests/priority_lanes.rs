//! Priority lanes, end to end with real processes: a real nats-server, a tokenizer worker
//! and one CPU GPU worker (child processes) on the tiny fixture. The tiny model is too fast
//! to ever build a backlog, so the GPU worker holds every pass for the test-only
//! `test_pass_delay_ms`; bulk batches and passes are cut small so one bulk job is dozens of
//! passes.
//!
//! No timing assertions: the checks are orderings read from the GPU worker's own log (a
//! `batch taken` and a `pass started` line per batch and pass, each naming its lane and
//! requests): once taken, an interactive batch ran after at most one bulk pass; the queries
//! were all served before the bulk job's last pass; every vector of both matches
//! golden.json; the bulk job finished whole.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use common::wire::{self, EmbedReply, EmbedRequest, InputType, Priority};
use e2e_tests::NatsServer;
use e2e_tests::process::{Pipeline, Worker};
use futures::StreamExt;
use serde_json::Value;
use support::{floats, golden, max_abs_diff, wait_for_worker_counts};

/// Copies of the golden documents in the bulk job.
const BULK_COPIES: usize = 6;

/// Tokens of one bulk batch (tokenizer) and of one bulk pass (GPU worker).
const BULK_TOKENS: &str = "64";

/// How long the GPU worker holds each pass, to build a backlog with the tiny model.
const PASS_DELAY_MS: &str = "100";

/// A pass or a taken batch, read off the GPU worker's log.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    /// `true` for `pass started`, `false` for `batch taken`.
    pass: bool,
    /// Its lane, as logged (`Interactive`, `Bulk`).
    lane: String,
    /// The requests it served.
    requests: Vec<String>,
}

/// The lane events of a GPU worker's log, in order.
fn events(log: &str) -> Vec<Event> {
    log.lines()
        .filter_map(|line| {
            let pass = line.contains("pass started");
            if !pass && !line.contains("batch taken") {
                return None;
            }
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|word| word.strip_prefix(name))
                    .map(str::to_string)
            };
            Some(Event {
                pass,
                lane: field("lane=")?,
                requests: field("requests=")?.split(',').map(str::to_string).collect(),
            })
        })
        .collect()
}

/// The golden cases, split into documents and queries.
fn cases() -> (Vec<Value>, Vec<Value>) {
    let golden = golden();
    let all = golden["cases"].as_array().unwrap().clone();
    all.into_iter()
        .partition(|case| !case["is_query"].as_bool().unwrap())
}

/// Publishes `request` and returns the subscription its replies arrive on.
async fn send(client: &async_nats::Client, request: &EmbedRequest) -> async_nats::Subscriber {
    let inbox = client.new_inbox();
    let replies = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply(
            "embed.requests",
            inbox,
            wire::encode(request).unwrap().into(),
        )
        .await
        .unwrap();
    replies
}

/// Gathers the `total` vectors of one request, by offset; panics on an error reply.
async fn vectors(replies: &mut async_nats::Subscriber, total: usize) -> Vec<Vec<f32>> {
    let mut held: HashMap<u32, Vec<f32>> = HashMap::new();
    while held.len() < total {
        let message = tokio::time::timeout(Duration::from_secs(120), replies.next())
            .await
            .expect("the request was answered")
            .unwrap();
        match wire::decode::<EmbedReply>(&message.payload).unwrap() {
            EmbedReply::Chunk(chunk) => {
                for (k, vector) in chunk.vectors().unwrap().into_iter().enumerate() {
                    held.insert(chunk.offset + k as u32, vector);
                }
            }
            EmbedReply::Queued(_) => {}
            EmbedReply::Error(error) => panic!("error reply: {error:?}"),
        }
    }
    (0..total as u32)
        .map(|k| held.remove(&k).unwrap())
        .collect()
}

/// Waits until the GPU worker has logged `passes` bulk passes.
async fn wait_for_bulk_passes(gpu: &Worker, passes: usize) {
    for _ in 0..600 {
        let started = events(&gpu.log())
            .iter()
            .filter(|e| e.pass && e.lane == "Bulk")
            .count();
        if started >= passes {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the bulk job did not start");
}

#[tokio::test(flavor = "multi_thread")]
async fn queries_wait_for_at_most_one_bulk_pass_and_the_bulk_job_still_finishes() {
    let server = NatsServer::start();
    let pipeline = Pipeline::new(server.url(), &[]);
    let _tokenizer = pipeline.tokenizer_with(
        "tokenizer",
        &[(
            "QWEN3_EMBED__TOKENIZER__BULK_MAX_BATCH_TOKENS",
            BULK_TOKENS.into(),
        )],
    );
    let gpu = pipeline.gpu_with(
        "gpu",
        &[
            ("QWEN3_EMBED__GPU__TEST_PASS_DELAY_MS", PASS_DELAY_MS.into()),
            ("QWEN3_EMBED__GPU__BULK_MAX_PASS_TOKENS", BULK_TOKENS.into()),
            ("RUST_LOG", "info,gpu_worker::service::lanes=debug".into()),
        ],
    );
    let client = async_nats::connect(server.url()).await.unwrap();
    wait_for_worker_counts(&client, 1, 1).await;

    let (documents, queries) = cases();
    let texts: Vec<String> = (0..BULK_COPIES)
        .flat_map(|_| documents.iter())
        .map(|case| case["text"].as_str().unwrap().to_string())
        .collect();
    let bulk = EmbedRequest {
        id: "bulk-job".into(),
        input: texts.clone(),
        input_type: InputType::Document,
        priority: Some(Priority::Bulk),
        ..Default::default()
    };
    let mut bulk_replies = send(&client, &bulk).await;
    let bulk_total = texts.len();
    let bulk_job = tokio::spawn(async move { vectors(&mut bulk_replies, bulk_total).await });
    wait_for_bulk_passes(&gpu, 2).await;

    // Queries at concurrency 1 while the bulk backlog keeps the worker busy.
    for (k, case) in queries.iter().enumerate() {
        let query = EmbedRequest {
            id: format!("query-{k}"),
            input: vec![case["text"].as_str().unwrap().to_string()],
            input_type: InputType::Query,
            instruction: case["instruction"].as_str().map(str::to_string),
            ..Default::default()
        };
        let mut replies = send(&client, &query).await;
        let vector = vectors(&mut replies, 1).await.remove(0);
        let diff = max_abs_diff(&vector, &floats(&case["embedding"]));
        assert!(diff < 2e-5, "query {k}: diff {diff}");
    }

    let bulk_vectors = bulk_job.await.unwrap();
    for (k, vector) in bulk_vectors.iter().enumerate() {
        let case = &documents[k % documents.len()];
        let diff = max_abs_diff(vector, &floats(&case["embedding"]));
        assert!(diff < 2e-5, "bulk input {k}: diff {diff}");
    }

    let events = events(&gpu.log());
    let bulk_passes: Vec<usize> = (0..events.len())
        .filter(|&i| events[i].pass && events[i].lane == "Bulk")
        .collect();
    assert!(
        bulk_passes.len() >= 10,
        "the bulk job ran in many bounded passes: {events:?}"
    );
    for k in 0..queries.len() {
        let id = format!("query-{k}");
        let holds = |e: &Event| e.requests.contains(&id);
        let taken = events
            .iter()
            .position(|e| !e.pass && holds(e))
            .unwrap_or_else(|| panic!("{id} was never taken: {events:?}"));
        let ran = events
            .iter()
            .position(|e| e.pass && holds(e))
            .unwrap_or_else(|| panic!("{id} never ran: {events:?}"));
        assert_eq!(events[taken].lane, "Interactive", "{id}");
        assert_eq!(events[ran].lane, "Interactive", "{id}");
        let waited_for = bulk_passes
            .iter()
            .filter(|&&i| taken < i && i < ran)
            .count();
        assert!(
            waited_for <= 1,
            "{id} waited for {waited_for} bulk passes: {:?}",
            &events[taken..=ran]
        );
        assert!(
            ran < *bulk_passes.last().unwrap(),
            "{id} ran only after the whole bulk backlog"
        );
    }
    // Batches never mix lanes.
    for event in &events {
        let bulk = event.requests.iter().any(|r| r == "bulk-job");
        assert_eq!(bulk, event.lane == "Bulk", "{event:?}");
    }
}
