//! The production storage choice, tested for what it is for: with `[queue] storage = "file"`
//! the batches a tokenizer worker acknowledged survive a crash and restart of nats-server,
//! and are served afterwards. Real nats-server (killed with SIGKILL and restarted on the same
//! port and store), the real worker binaries as child processes, golden vectors.
//!
//! The binaries must be built first: `cargo build --workspace --bins`.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use common::subjects::Subjects;
use common::wire::{self, EmbedReply, EmbedRequest, InputType};
use e2e_tests::NatsServer;
use e2e_tests::process::Pipeline;
use futures::StreamExt;
use serde_json::Value;
use support::{floats, golden, max_abs_diff};
use tokio::time::Instant;

/// Requests sent while no GPU worker runs, one golden document each.
const REQUESTS: usize = 8;

/// How long the test waits for acknowledgements, and later for the vectors.
const PATIENCE: Duration = Duration::from_secs(60);

/// A request for one golden case, asking for an acknowledgement, due in two minutes.
fn case_request(case: &Value, id: String) -> EmbedRequest {
    let is_query = case["is_query"].as_bool().expect("is_query");
    EmbedRequest {
        id,
        input: vec![case["text"].as_str().expect("text").to_string()],
        input_type: if is_query {
            InputType::Query
        } else {
            InputType::Document
        },
        instruction: case["instruction"].as_str().map(String::from),
        dimensions: None,
        truncate: None,
        deadline_ms: Some(wire::now_ms() + 120_000),
        timeout_ms: None,
        ack: true,
        bundle_to: None,
        ..Default::default()
    }
}

/// Messages in the embedding work queue.
async fn queued_batches(client: &async_nats::Client) -> u64 {
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js
        .get_stream(Subjects::default().batch_stream())
        .await
        .expect("the work queue exists");
    let info = stream.info().await.expect("stream info");
    assert_eq!(
        info.config.storage,
        async_nats::jetstream::stream::StorageType::File,
        "the work queue is not on disk"
    );
    info.state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_batches_survive_a_nats_server_crash_with_file_storage() {
    let mut server = NatsServer::start();
    // No direct offers: with no GPU worker they would find no responders and be queued
    // anyway, but this way every batch takes the path under test.
    let pipeline = Pipeline::new(
        server.url(),
        &[
            ("QWEN3_EMBED__QUEUE__STORAGE", "file"),
            ("QWEN3_EMBED__TOKENIZER__DIRECT_MAX_TOKENS", "0"),
        ],
    );
    let _tokenizer = pipeline.tokenizer("tokenizer");
    let client = async_nats::connect(server.url()).await.expect("connect");
    support::wait_for_worker_counts(&client, 1, 0).await;

    // 1. Requests go in while no GPU worker runs; each is acknowledged once its batch is in
    //    the (file-backed) work queue.
    let golden = golden();
    let cases: Vec<&Value> = golden["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .take(REQUESTS)
        .collect();
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(format!("{inbox}.*"))
        .await
        .expect("subscribe");
    let mut expected = HashMap::new();
    for (k, case) in cases.iter().enumerate() {
        let id = format!("durable-{k}");
        let request = case_request(case, id.clone());
        client
            .publish_with_reply(
                "embed.requests",
                format!("{inbox}.{k}"),
                wire::encode(&request).expect("encode").into(),
            )
            .await
            .expect("publish");
        expected.insert(id, floats(&case["embedding"]));
    }
    let mut acknowledged = 0;
    let deadline = Instant::now() + PATIENCE;
    while acknowledged < REQUESTS {
        let message = tokio::time::timeout_at(deadline, replies.next())
            .await
            .expect("every request acknowledged in time")
            .expect("subscription open");
        match wire::decode::<EmbedReply>(&message.payload).expect("reply decodes") {
            EmbedReply::Queued(queued) => {
                assert_eq!(queued.queued, 1, "{queued:?}");
                acknowledged += 1;
            }
            other => panic!("only acknowledgements can come before a GPU worker: {other:?}"),
        }
    }
    let before = queued_batches(&client).await;
    assert!(before >= 1, "the acknowledged batches are not in the queue");

    // 2. The server crashes and comes back on the same store.
    server.restart();
    let client = async_nats::connect(server.url()).await.expect("reconnect");
    assert_eq!(
        queued_batches(&client).await,
        before,
        "the work queue lost batches in the restart"
    );

    // 3. A GPU worker starts now and serves every acknowledged request; the requester's
    //    subscription (restored by its client on reconnection) receives every vector.
    let _gpu = pipeline.gpu("gpu");
    let mut answered = HashMap::new();
    let deadline = Instant::now() + PATIENCE;
    while answered.len() < REQUESTS {
        let message = tokio::time::timeout_at(deadline, replies.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {REQUESTS} requests answered", answered.len()))
            .expect("subscription open");
        match wire::decode::<EmbedReply>(&message.payload).expect("reply decodes") {
            EmbedReply::Chunk(chunk) => {
                let mut vectors = chunk.vectors().expect("consistent chunk");
                assert_eq!(vectors.len(), 1);
                answered.insert(chunk.id.clone(), vectors.remove(0));
            }
            EmbedReply::Error(error) => panic!("a durable request failed: {error:?}"),
            EmbedReply::Queued(_) => {}
        }
    }
    for (id, vector) in &answered {
        let diff = max_abs_diff(vector, &expected[id]);
        assert!(diff < 2e-5, "{id}: max abs diff {diff}");
    }
    // Served batches are acked, so the work queue ends empty.
    let deadline = Instant::now() + Duration::from_secs(10);
    while queued_batches(&client).await > 0 {
        assert!(
            Instant::now() < deadline,
            "served batches stay in the queue"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
