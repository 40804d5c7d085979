//! Admission control, deadlines and graceful shutdown, against a fake tokenizer worker that
//! can be told to hold a request (`!silent`) or answer late (`!sleep:MS`).

mod support;

use std::time::{Duration, Instant};

use common::wire::{self, EmbedChunk};
use serde_json::json;
use support::{Harness, error_of};

#[tokio::test]
async fn without_a_queue_overload_is_refused_at_once_with_retry_after() {
    let harness = Harness::start(|config| {
        config.max_concurrent_queries = 1;
        // No admission queue: the old refuse-at-once behaviour (see admission.rs for the queue).
        config.max_queued_requests = Some(0);
        config.request_timeout_s = 3.0;
    })
    .await;
    let worker = harness.fake_tokenizer(8).await;

    let held = {
        let http = harness.http.clone();
        let url = harness.url("/v1/embeddings");
        tokio::spawn(async move {
            http.post(url)
                .json(&json!({"input": ["!silent"]}))
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    worker.wait_for(1).await;

    let started = Instant::now();
    let response = harness
        .post_json("/v1/embeddings", json!({"input": ["other"]}))
        .await;
    assert_eq!(response.status(), 429);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(response.headers()["retry-after"], "1");
    let error = error_of(response).await;
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("limit of 1 concurrent")
    );
    let debug: serde_json::Value = harness.get("/debug").await.json().await.unwrap();
    assert_eq!(debug["active_requests"], 1);
    assert_eq!(debug["admission_limit"], 1);
    assert_eq!(debug["queued_requests"], 0);
    assert_eq!(debug["queue_limit"], 0);

    // The held request ends at its deadline, and its place is free again.
    assert_eq!(held.await.unwrap().unwrap(), 504);
    let response = harness
        .post_json("/v1/embeddings", json!({"input": ["other"]}))
        .await;
    assert_eq!(response.status(), 200);
    let metrics = harness.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"embed_http_requests_rejected_total{reason="overloaded"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn deadline_gives_504_and_late_chunks_are_ignored() {
    let harness = Harness::start(|config| config.request_timeout_s = 1.0).await;
    let worker = harness.fake_tokenizer(8).await;

    let started = Instant::now();
    let response = harness
        .post_json("/v1/embeddings", json!({"input": ["!silent"]}))
        .await;
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 504);
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3),
        "took {elapsed:?}"
    );
    let error = error_of(response).await;
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("timed out after 1 s"),
        "{error}"
    );

    // The request carried its deadline: what was left of the 1 s when it was published,
    // and the absolute time (for logs and older workers).
    let (request, reply_to) = worker.received.lock().unwrap()[0].clone();
    let timeout_ms = request.timeout_ms.expect("timeout_ms set");
    assert!((1..=1000).contains(&timeout_ms), "timeout_ms {timeout_ms}");
    let deadline = request.deadline_ms.expect("deadline set");
    assert!(
        deadline.abs_diff(wire::now_ms()) < 3000,
        "deadline {deadline}"
    );

    // A chunk arriving after the deadline finds no pending request.
    let late = EmbedChunk {
        id: request.id.clone(),
        offset: 0,
        count: 1,
        total: 1,
        dims: 1,
        embeddings: wire::f32_le_bytes([&[1.0f32][..]]),
        tokens: vec![1],
        timings: None,
    };
    harness
        .client
        .publish(reply_to, wire::encode(&late).unwrap().into())
        .await
        .unwrap();
    support::sync(&harness.client).await;
    let debug: serde_json::Value = harness.get("/debug").await.json().await.unwrap();
    assert_eq!(debug["pending_upstream"], 0);
    assert_eq!(debug["active_requests"], 0);
    let response = harness
        .post_json("/v1/embeddings", json!({"input": ["fine"]}))
        .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn worker_deadline_error_is_504() {
    let harness = Harness::start(|_| {}).await;
    let _worker = harness.fake_tokenizer(8).await;
    let response = harness
        .post_json(
            "/v1/embeddings",
            json!({"input": ["!error:deadline_exceeded"]}),
        )
        .await;
    assert_eq!(response.status(), 504);
}

#[tokio::test]
async fn graceful_shutdown_finishes_the_request_in_flight() {
    let mut harness = Harness::start(|_| {}).await;
    let worker = harness.fake_tokenizer(8).await;
    let in_flight = {
        let http = harness.http.clone();
        let url = harness.url("/v1/embeddings");
        tokio::spawn(async move {
            let response = http
                .post(url)
                .json(&json!({"input": ["!sleep:700", "b"]}))
                .send()
                .await?;
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await?;
            Ok::<_, reqwest::Error>((status, body))
        })
    };
    worker.wait_for(1).await;
    let addr = harness.gateway.addr();
    harness.gateway.begin_shutdown();

    // New connections are refused soon, while the request in flight still finishes.
    let mut refused = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        refused,
        "the gateway still accepts connections after shutdown began"
    );
    let (status, body) = in_flight.await.unwrap().unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["data"].as_array().unwrap().len(), 2);

    // Keep the NATS server up while the gateway drains.
    let Harness {
        gateway,
        nats: _nats,
        ..
    } = harness;
    tokio::time::timeout(Duration::from_secs(5), gateway.wait())
        .await
        .expect("the gateway stops after its last request")
        .expect("run returns Ok");
}
