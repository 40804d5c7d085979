//! One request followed through the three stages by its logs: the real gateway, tokenizer
//! worker and GPU worker as processes with JSON logs and the per-request target on
//! (`RUST_LOG=info,requests=debug`). The caller's `X-Request-Id` is echoed (or one is
//! made), and the request id and W3C trace id show up in every stage's lines, whether the
//! request came over HTTP or straight over NATS with headers.
//!
//! The binaries must be built first: `cargo build --workspace --bins`.

mod support;

use std::time::Duration;

use common::trace::{REQUEST_ID_HEADER, TRACEPARENT_HEADER};
use common::wire::{self, EmbedReply, EmbedRequest, InputType};
use e2e_tests::NatsServer;
use e2e_tests::process::{Pipeline, Worker};
use serde_json::Value;
use support::{next_reply, publish_for_replies, wait_for_worker_counts, wait_healthy};
use tokio::time::Instant;

/// The caller's trace context (the W3C specification's example).
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// JSON logs with the per-request lines of every stage.
const ENV: &[(&str, &str)] = &[
    ("RUST_LOG", "info,requests=debug"),
    ("QWEN3_EMBED_LOG_FORMAT", "json"),
];

/// Whether `value` holds, at any depth, the field `key` with the string `expected`.
fn has_field(value: &Value, key: &str, expected: &str) -> bool {
    match value {
        Value::Object(map) => map.iter().any(|(k, v)| {
            (k == key && v.as_str() == Some(expected)) || has_field(v, key, expected)
        }),
        Value::Array(items) => items.iter().any(|v| has_field(v, key, expected)),
        _ => false,
    }
}

/// The JSON log lines of `worker` naming `request_id` and `trace_id` with `message`.
fn trail(worker: &Worker, request_id: &str, trace_id: &str, message: &str) -> Vec<Value> {
    worker
        .log()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| {
            has_field(line, "request_id", request_id)
                && has_field(line, "trace_id", trace_id)
                && has_field(line, "message", message)
        })
        .collect()
}

/// Waits (at most 10 s) until `worker` logged `message` for the request; those lines.
async fn wait_for_trail(
    worker: &Worker,
    request_id: &str,
    trace_id: &str,
    message: &str,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = trail(worker, request_id, trace_id, message);
        if !lines.is_empty() {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} never logged {message:?} for request {request_id} / trace {trace_id}",
            worker.name()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The wire id (`id` field) of a worker's log line.
fn wire_id(line: &Value) -> String {
    line["fields"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {line}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_is_followed_across_the_three_stages() {
    let server = NatsServer::start();
    let pipeline = Pipeline::new(server.url(), ENV);
    let tokenizer = pipeline.tokenizer("tokenizer");
    let gpu = pipeline.gpu("gpu");
    let nats = async_nats::connect(server.url()).await.expect("connect");
    wait_for_worker_counts(&nats, 1, 1).await;
    let (gateway, base) = pipeline.gateway("gateway");
    let http = reqwest::Client::new();
    wait_healthy(&http, &base, Duration::from_secs(30)).await;

    // Over HTTP, with the caller's id and trace context.
    let response = http
        .post(format!("{base}/v1/embeddings"))
        .header(REQUEST_ID_HEADER, "trace-me-42")
        .header(TRACEPARENT_HEADER, TRACEPARENT)
        .json(&serde_json::json!({"input": ["follow me", "and me"]}))
        .send()
        .await
        .expect("gateway answers");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()[REQUEST_ID_HEADER], "trace-me-42");

    let answered = wait_for_trail(&gateway, "trace-me-42", TRACE_ID, "answered").await;
    assert!(
        has_field(&answered[0], "route", "/v1/embeddings"),
        "{}",
        answered[0]
    );
    let published = wait_for_trail(&gateway, "trace-me-42", TRACE_ID, "published").await;
    let id = published[0]["fields"]["id"]
        .as_str()
        .expect("the gateway logs the wire id")
        .to_string();
    let tokenized = wait_for_trail(&tokenizer, "trace-me-42", TRACE_ID, "tokenized").await;
    assert_eq!(wire_id(&tokenized[0]), id);
    assert_eq!(tokenized[0]["fields"]["sequences"], 2);
    let embedded = wait_for_trail(&gpu, "trace-me-42", TRACE_ID, "embedded").await;
    assert!(embedded.iter().all(|line| wire_id(line) == id));

    // Without an id: one is made and echoed; refusals carry it too.
    let response = http
        .post(format!("{base}/v1/embeddings"))
        .json(&serde_json::json!({"input": "no id"}))
        .send()
        .await
        .expect("gateway answers");
    assert_eq!(response.status(), 200);
    let made = response.headers()[REQUEST_ID_HEADER]
        .to_str()
        .expect("ASCII")
        .to_string();
    assert_eq!(made.len(), 32, "{made}");
    let refused = http
        .post(format!("{base}/v1/embeddings"))
        .header(REQUEST_ID_HEADER, "bad-one")
        .json(&serde_json::json!({"input": []}))
        .send()
        .await
        .expect("gateway answers");
    assert_eq!(refused.status(), 400);
    assert_eq!(refused.headers()[REQUEST_ID_HEADER], "bad-one");
    let not_found = http
        .get(format!("{base}/nowhere"))
        .header(REQUEST_ID_HEADER, "lost-one")
        .send()
        .await
        .expect("gateway answers");
    assert_eq!(not_found.status(), 404);
    assert_eq!(not_found.headers()[REQUEST_ID_HEADER], "lost-one");

    // Straight over NATS: the headers of the request message are honoured the same way.
    let request = EmbedRequest {
        id: "nats-client-1".into(),
        input: vec!["over nats".into()],
        input_type: InputType::Query,
        instruction: None,
        dimensions: None,
        truncate: None,
        deadline_ms: None,
        timeout_ms: None,
        ack: false,
        bundle_to: None,
        ..Default::default()
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(REQUEST_ID_HEADER, "nats-caller-7");
    headers.insert(TRACEPARENT_HEADER, TRACEPARENT);
    let mut replies = publish_for_replies(&nats, "embed.requests", &request, Some(headers)).await;
    let reply = next_reply(&mut replies).await;
    match wire::decode::<EmbedReply>(&reply.payload).expect("reply decodes") {
        EmbedReply::Chunk(chunk) => assert_eq!(chunk.id, "nats-client-1"),
        other => panic!("expected vectors, got {other:?}"),
    }
    let tokenized = wait_for_trail(&tokenizer, "nats-caller-7", TRACE_ID, "tokenized").await;
    assert_eq!(wire_id(&tokenized[0]), "nats-client-1");
    let embedded = wait_for_trail(&gpu, "nats-caller-7", TRACE_ID, "embedded").await;
    assert_eq!(wire_id(&embedded[0]), "nats-client-1");
}
