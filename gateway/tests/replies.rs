//! Reply assembly and the answer formats, against an in-test tokenizer worker that answers
//! in out-of-order chunks, and in-test status answers for discovery.

mod support;

use base64::Engine;
use common::wire::{EmbedRequest, InputType, Priority, TruncationDirection, WorkerKind};
use serde_json::json;
use support::{FAKE_DIMS, Harness, error_of, expected_tokens, expected_vector, status};

fn vectors_of(body: &serde_json::Value) -> Vec<Vec<f32>> {
    body["data"]
        .as_array()
        .expect("data is a list")
        .iter()
        .enumerate()
        .map(|(i, item)| {
            assert_eq!(item["index"], i);
            assert_eq!(item["object"], "embedding");
            serde_json::from_value(item["embedding"].clone()).expect("float vector")
        })
        .collect()
}

#[tokio::test]
async fn chunks_out_of_order_assemble_in_input_order_with_usage() {
    let harness = Harness::start(|_| {}).await;
    let worker = harness.fake_tokenizer(2).await;
    let texts = ["alpha", "", "   ", "delta", "epsilon"];
    let response = harness
        .post_json(
            "/v1/embeddings",
            json!({"input": texts, "model": "Qwen/Qwen3-Embedding-0.6B"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "Qwen/Qwen3-Embedding-0.6B");
    let expected: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| expected_vector(t, FAKE_DIMS))
        .collect();
    assert_eq!(vectors_of(&body), expected);
    let tokens: u32 = texts.iter().map(|t| expected_tokens(t)).sum();
    assert_eq!(body["usage"]["prompt_tokens"], tokens);
    assert_eq!(body["usage"]["total_tokens"], tokens);
    // One NATS request carried all five texts, as documents by default.
    let requests = worker.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].input, texts);
    assert_eq!(requests[0].input_type, InputType::Document);
}

#[tokio::test]
async fn base64_encoding_carries_the_same_floats() {
    let harness = Harness::start(|_| {}).await;
    let _worker = harness.fake_tokenizer(1).await;
    let response = harness
        .post_json(
            "/v1/embeddings",
            json!({"input": ["one", "two"], "encoding_format": "base64", "user": "someone"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    for (item, text) in body["data"].as_array().unwrap().iter().zip(["one", "two"]) {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(item["embedding"].as_str().expect("base64 string"))
            .unwrap();
        let floats: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(floats, expected_vector(text, FAKE_DIMS));
    }
}

#[tokio::test]
async fn options_travel_to_the_worker() {
    let harness = Harness::start(|config| config.truncate = Some(true)).await;
    let worker = harness.fake_tokenizer(8).await;
    let response = harness
        .post_json(
            "/v1/embeddings",
            json!({"input": "q", "input_type": "query", "instruction": "Find code", "dimensions": 3,
                   "priority": "bulk", "truncation_direction": "left"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(vectors_of(&body)[0].len(), 3);
    let response = harness
        .post_json(
            "/v1/embeddings",
            json!({"input": "p", "input_type": "passage", "truncate": false}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let requests = worker.requests();
    assert_eq!(requests[0].input_type, InputType::Query);
    assert_eq!(requests[0].instruction.as_deref(), Some("Find code"));
    assert_eq!(requests[0].dimensions, Some(3));
    assert_eq!(requests[0].truncate, Some(true));
    assert_eq!(requests[1].input_type, InputType::Document);
    assert_eq!(requests[1].truncate, Some(false));
    assert!(requests[0].id != requests[1].id);
    assert_eq!(requests[0].priority, Some(Priority::Bulk));
    assert_eq!(
        requests[0].truncation_direction,
        Some(TruncationDirection::Left)
    );
    assert_eq!(
        (requests[1].priority, requests[1].truncation_direction),
        (None, None)
    );

    // The seed route takes a priority too; a wrong one is refused by name.
    let response = harness
        .post_json(
            "/api/v1/embedding/api",
            json!({"input": ["s"], "priority": "interactive"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(worker.requests()[2].priority, Some(Priority::Interactive));
    let response = harness
        .post_json(
            "/v1/embeddings",
            json!({"input": "x", "priority": "urgent"}),
        )
        .await;
    assert_eq!(response.status(), 400);
    let error = error_of(response).await;
    assert_eq!(error["param"], "priority", "{error}");
}

#[tokio::test]
async fn seed_api_answers_a_list_of_vectors() {
    let harness = Harness::start(|_| {}).await;
    let worker = harness.fake_tokenizer(1).await;
    let response = harness
        .post_json(
            "/api/v1/embedding/api",
            json!({"input": ["b", "a"], "is_query": true}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let vectors: Vec<Vec<f32>> = response.json().await.unwrap();
    assert_eq!(
        vectors,
        [
            expected_vector("b", FAKE_DIMS),
            expected_vector("a", FAKE_DIMS)
        ]
    );
    let response = harness
        .post_json(
            "/api/v1/embedding/api",
            json!({"input": "c", "dimensions": 2}),
        )
        .await;
    let vectors: Vec<Vec<f32>> = response.json().await.unwrap();
    assert_eq!(vectors, [expected_vector("c", 2)]);
    let requests = worker.requests();
    // is_query applies the default instruction: the worker fills it in when it is None.
    assert_eq!(requests[0].input_type, InputType::Query);
    assert_eq!(requests[0].instruction, None);
    assert_eq!(requests[1].input_type, InputType::Document);
}

#[tokio::test]
async fn cache_hits_skip_nats_and_keep_order_and_usage() {
    let harness = Harness::start(|_| {}).await;
    let worker = harness.fake_tokenizer(8).await;
    let first = harness
        .post_json("/v1/embeddings", json!({"input": ["a", "bb"]}))
        .await;
    assert_eq!(first.status(), 200);
    let second = harness
        .post_json("/v1/embeddings", json!({"input": ["bb", "ccc", "a"]}))
        .await;
    let body: serde_json::Value = second.json().await.unwrap();
    let texts = ["bb", "ccc", "a"];
    let expected: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| expected_vector(t, FAKE_DIMS))
        .collect();
    assert_eq!(vectors_of(&body), expected);
    let tokens: u32 = texts.iter().map(|t| expected_tokens(t)).sum();
    assert_eq!(
        body["usage"]["prompt_tokens"], tokens,
        "cached items count their tokens"
    );
    // Only the miss went to NATS.
    let requests = worker.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].input, ["ccc"]);

    // All hits: nothing is sent.
    let third = harness
        .post_json("/v1/embeddings", json!({"input": ["a"]}))
        .await;
    assert_eq!(third.status(), 200);
    assert_eq!(worker.requests().len(), 2);
    // Other options are other keys.
    let fourth = harness
        .post_json(
            "/v1/embeddings",
            json!({"input": ["a"], "input_type": "query"}),
        )
        .await;
    assert_eq!(fourth.status(), 200);
    assert_eq!(worker.requests().len(), 3);

    let debug: serde_json::Value = harness.get("/debug").await.json().await.unwrap();
    assert_eq!(debug["cache"]["hits"], 3);
    assert_eq!(debug["cache"]["misses"], 4);
    let metrics = harness.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("embed_cache_hits_total 3"), "{metrics}");
    assert!(metrics.contains("embed_cache_misses_total 4"), "{metrics}");
    assert!(metrics.contains("embed_items_total 4"), "{metrics}");
}

#[tokio::test]
async fn disabled_cache_sends_everything() {
    let harness = Harness::start(|config| config.cache_size = 0).await;
    let worker = harness.fake_tokenizer(8).await;
    for _ in 0..2 {
        let response = harness
            .post_json("/v1/embeddings", json!({"input": ["a"]}))
            .await;
        assert_eq!(response.status(), 200);
    }
    assert_eq!(worker.requests().len(), 2);
}

#[tokio::test]
async fn worker_errors_map_to_statuses() {
    let harness = Harness::start(|_| {}).await;
    let _worker = harness.fake_tokenizer(8).await;
    for (code, status) in [
        ("invalid_request", 400),
        ("too_many_tokens", 400),
        ("deadline_exceeded", 504),
        ("overloaded", 503),
        ("internal", 500),
    ] {
        let response = harness
            .post_json(
                "/v1/embeddings",
                json!({"input": ["ok", format!("!error:{code}")]}),
            )
            .await;
        assert_eq!(response.status().as_u16(), status, "{code}");
        if status == 503 {
            assert_eq!(response.headers()["retry-after"], "1");
        }
        let error = error_of(response).await;
        assert!(
            error["message"].as_str().unwrap().contains("scripted"),
            "{error}"
        );
    }
    let response = harness
        .post_json("/v1/embeddings", json!({"input": ["!garbage"]}))
        .await;
    assert_eq!(response.status(), 502);
    // Failed answers are not cached: "ok" was never completed.
    let debug: serde_json::Value = harness.get("/debug").await.json().await.unwrap();
    assert_eq!(debug["cache"]["entries"], 0);
}

#[tokio::test]
async fn health_debug_and_metrics_see_the_workers() {
    let harness = Harness::start(|_| {}).await;
    let _worker = harness.fake_tokenizer(8).await;
    let statuses = harness
        .fake_statuses(vec![
            status(WorkerKind::Tokenizer, "tok-1", true, 5),
            status(WorkerKind::Tokenizer, "tok-2", true, 2),
            status(WorkerKind::Gpu, "gpu-1", true, 1),
        ])
        .await;
    for path in ["/health", "/api/v1/health"] {
        let response = harness.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["status"], "ok");
        assert_eq!(body["model_loaded"], true);
        assert_eq!(body["tokenizer_workers"], 2);
        assert_eq!(body["gpu_workers"], 1);
    }
    let debug: serde_json::Value = harness.get("/api/v1/debug").await.json().await.unwrap();
    assert_eq!(debug["queue_depth"], 7);
    assert_eq!(debug["workers"].as_array().unwrap().len(), 3);
    assert_eq!(debug["workers"][2]["worker_id"], "gpu-1");
    assert_eq!(debug["workers"][2]["hidden_size"], 8);
    assert!(debug["process"]["rss_bytes"].as_u64().unwrap() > 0);

    // The GPU worker's hidden size bounds `dimensions`.
    let response = harness
        .post_json("/v1/embeddings", json!({"input": "a", "dimensions": 9}))
        .await;
    assert_eq!(response.status(), 400);
    let error = error_of(response).await;
    assert_eq!(error["param"], "dimensions");
    assert!(error["message"].as_str().unwrap().contains("largest is 8"));
    let response = harness
        .post_json("/v1/embeddings", json!({"input": "a", "dimensions": 8}))
        .await;
    assert_eq!(response.status(), 200);

    let metrics = harness.get("/metrics").await.text().await.unwrap();
    let model = gateway::config::DEFAULT_MODEL;
    let per_model = [
        format!(r#"embed_model_workers{{kind="tokenizer",model="{model}"}} 2"#),
        format!(r#"embed_model_workers{{kind="gpu",model="{model}"}} 1"#),
        format!(r#"embed_model_queue_depth{{model="{model}"}} 7"#),
    ];
    for needle in per_model.iter().map(String::as_str).chain([
        "embed_queue_depth 7",
        r#"embed_workers{kind="tokenizer"} 2"#,
        r#"embed_workers{kind="gpu"} 1"#,
        "embed_http_requests_in_flight 0",
        "embed_tokens_total 3",
        r#"embed_http_request_duration_seconds_bucket{route="/v1/embeddings""#,
        r#"embed_http_requests_total{route="/health",status="200"} 1"#,
    ]) {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    statuses.abort();
}

#[tokio::test]
async fn health_needs_a_loaded_gpu_worker() {
    let harness = Harness::start(|_| {}).await;
    let _statuses = harness
        .fake_statuses(vec![
            status(WorkerKind::Tokenizer, "tok-1", true, 0),
            status(WorkerKind::Gpu, "gpu-1", false, 0),
        ])
        .await;
    let response = harness.get("/health").await;
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["tokenizer_workers"], 1);
    assert_eq!(body["model_loaded"], false);
    assert!(body["reason"].as_str().unwrap().contains("GPU"));
}

#[tokio::test]
async fn models_lists_the_served_model() {
    let harness = Harness::start(|config| config.model = "acme/embedder".into()).await;
    let body: serde_json::Value = harness.get("/v1/models").await.json().await.unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["id"], "acme/embedder");
    assert_eq!(body["data"][0]["object"], "model");
    // The short name is accepted too; another name is not.
    let _worker = harness.fake_tokenizer(8).await;
    let response = harness
        .post_json("/v1/embeddings", json!({"input": "a", "model": "embedder"}))
        .await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["model"], "acme/embedder");
}

#[tokio::test]
async fn unacknowledged_request_is_published_again_and_answered_once() {
    let harness = Harness::start(|c| c.tokenizer_ack_timeout_ms = 200).await;
    let worker = harness.fake_tokenizer(1).await;
    // The fake worker drops the first copy of a request holding `!unacked`, unanswered and
    // unacknowledged, as a worker killed after taking it would.
    let texts = ["alpha", "!unacked", "gamma"];
    let response = harness
        .post_json("/v1/embeddings", json!({"input": texts}))
        .await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let expected: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| expected_vector(t, FAKE_DIMS))
        .collect();
    assert_eq!(vectors_of(&body), expected);
    let received = worker.received.lock().unwrap().clone();
    assert_eq!(received.len(), 2, "sent once, then once again");
    assert!(received[0].0.ack, "the gateway asks for an acknowledgement");
    // The same id and reply subject, with what is left of the deadline at each publication:
    // the copy went out after the 200 ms acknowledgement wait, so it has less.
    let (first, second) = (&received[0], &received[1]);
    let left = |request: &EmbedRequest| request.timeout_ms.expect("timeout_ms sent");
    assert!(
        left(&first.0) >= left(&second.0) + 190,
        "{} ms, then {} ms",
        left(&first.0),
        left(&second.0)
    );
    let same_but_budget = EmbedRequest {
        timeout_ms: first.0.timeout_ms,
        ..second.0.clone()
    };
    assert_eq!((&first.0, &first.1), (&same_but_budget, &second.1));
    let debug: serde_json::Value = harness
        .http
        .get(harness.url("/debug"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(debug["upstream_resends"], 1);
}

#[tokio::test]
async fn acknowledged_or_unacknowledgeable_requests_are_sent_once() {
    // Acknowledged at once, answered after 600 ms: no copy although the timeout is 100 ms.
    let harness = Harness::start(|c| c.tokenizer_ack_timeout_ms = 100).await;
    let worker = harness.fake_tokenizer(1).await;
    let response = harness
        .post_json("/v1/embeddings", json!({"input": ["!sleep:600"]}))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(worker.requests().len(), 1);

    // Acknowledgements off: requests do not ask, and are never sent again.
    let harness = Harness::start(|c| c.tokenizer_ack_timeout_ms = 0).await;
    let worker = harness.fake_tokenizer(1).await;
    let response = harness
        .post_json("/v1/embeddings", json!({"input": ["!sleep:300"]}))
        .await;
    assert_eq!(response.status(), 200);
    let requests = worker.requests();
    assert_eq!(requests.len(), 1);
    assert!(!requests[0].ack);
}
