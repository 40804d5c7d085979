//! Model discovery through the gateway, with a real nats-server and stand-in workers: a
//! model whose workers start after the gateway is served without restart, one whose workers
//! miss a discovery stays served, `/health` counts the default model's workers only, and the
//! listings (`/v1/models`, `/info`, `/debug`) name every model with its workers.

mod support;

use std::time::Duration;

use common::subjects::model_token;
use common::wire::{WorkerKind, WorkerStatus};
use gateway::config::DEFAULT_MODEL;
use gateway::models::MISS_REFRESH_INTERVAL;
use serde_json::{Value, json};
use support::models::{
    DEFAULT_RERANKER, RERANKER, SECOND, SECOND_BIAS, SECOND_WIDTH, two_pools, vectors_of,
};
use support::{FAKE_DIMS, Harness, biased_vector, error_of, routed_status, status};

#[tokio::test]
async fn a_model_whose_workers_start_later_is_served_without_restart() {
    let harness = Harness::start(|_| {}).await;
    let request = json!({"input": ["late"], "model": SECOND});
    let response = harness.post_json("/v1/embeddings", request.clone()).await;
    assert_eq!(response.status(), 404, "not started yet");
    let first_miss = tokio::time::Instant::now();
    assert_eq!(
        error_of(response).await["message"],
        format!(
            "model `{SECOND}` does not exist; this server serves these embedding models: \
             `{DEFAULT_MODEL}`"
        )
    );

    // The second model's pool starts; nothing but the next miss makes the gateway look.
    let second = harness.fake_tokenizer_on(SECOND, 8, SECOND_BIAS).await;
    let _statuses = harness.fake_statuses(two_pools()).await;
    // A miss looks again at most once a second.
    tokio::time::sleep_until(first_miss + MISS_REFRESH_INTERVAL + Duration::from_millis(50)).await;
    let response = harness.post_json("/v1/embeddings", request).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model"], SECOND);
    assert_eq!(
        vectors_of(&body),
        [biased_vector("late", FAKE_DIMS, SECOND_BIAS)]
    );
    assert_eq!(second.requests().len(), 1);
}

#[tokio::test]
async fn health_asks_for_the_default_models_workers_not_another_models() {
    let harness = Harness::start(|_| {}).await;
    let only_second = vec![
        routed_status(WorkerKind::Tokenizer, "second-tok", SECOND, SECOND_WIDTH),
        routed_status(WorkerKind::Gpu, "second-gpu", SECOND, SECOND_WIDTH),
    ];
    let statuses = harness.fake_statuses(only_second).await;
    // Until discovery has seen the second pool, a 503 would prove nothing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let debug: Value = harness.get("/debug").await.json().await.unwrap();
        let models = debug["models"].as_array().cloned().unwrap_or_default();
        if models.iter().any(|m| m["model"] == SECOND) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "discovery never saw the pool"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = harness.get("/health").await;
    assert_eq!(
        response.status(),
        503,
        "only another model's workers answer"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["tokenizer_workers"], 0);
    assert_eq!(body["gpu_workers"], 0);
    statuses.abort();

    let both = harness.fake_statuses(two_pools()).await;
    // The first answer may come from the cache of the previous discovery: wait it out.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let response = harness.get("/health").await;
        if response.status() == 200 {
            let body: Value = response.json().await.unwrap();
            assert_eq!(
                body["tokenizer_workers"], 1,
                "the second pool is not counted"
            );
            assert_eq!(body["gpu_workers"], 1);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    both.abort();
}

#[tokio::test]
async fn a_model_whose_workers_miss_a_discovery_stays_served() {
    let harness = Harness::start(|config| config.status_cache_ms = 50).await;
    let second = harness.fake_tokenizer_on(SECOND, 8, SECOND_BIAS).await;
    let statuses = harness.fake_statuses(two_pools()).await;
    let request = json!({"input": ["busy"], "model": SECOND});
    let response = harness.post_json("/v1/embeddings", request.clone()).await;
    assert_eq!(response.status(), 200);
    let listed = |body: &Value| {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == SECOND)
    };
    let models: Value = harness.get("/v1/models").await.json().await.unwrap();
    assert!(listed(&models), "{models}");

    // The second pool's status answers stop (a busy worker misses the window); the default
    // pool keeps answering. Discoveries after that still route the second model.
    statuses.abort();
    let _default_only = harness
        .fake_statuses(vec![
            status(WorkerKind::Tokenizer, "default-tok", true, 0),
            status(WorkerKind::Gpu, "default-gpu", true, 0),
        ])
        .await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let models: Value = harness.get("/v1/models").await.json().await.unwrap();
        assert!(
            listed(&models),
            "dropped after one missed discovery: {models}"
        );
    }
    let debug: Value = harness.get("/debug").await.json().await.unwrap();
    assert!(
        !debug["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|w| w["worker_id"] == "second-tok"),
        "the latest discovery did not hear it: {debug}"
    );
    let uncached = json!({"input": ["still busy"], "model": SECOND});
    let response = harness.post_json("/v1/embeddings", uncached).await;
    assert_eq!(response.status(), 200, "routed within the grace");
    assert_eq!(second.requests().len(), 2);
}

#[tokio::test]
async fn models_info_and_debug_list_every_model_with_its_workers() {
    let mut statuses = two_pools();
    statuses.extend([
        status(WorkerKind::RerankTokenizer, "default-rr-tok", true, 0),
        routed_status(WorkerKind::RerankTokenizer, "rr-tok", RERANKER, 0),
        routed_status(WorkerKind::RerankGpu, "rr-gpu", RERANKER, 0),
        WorkerStatus {
            loaded: false,
            ..routed_status(WorkerKind::RerankGpu, "rr-gpu-loading", RERANKER, 0)
        },
    ]);
    let harness = Harness::start(|_| {}).await;
    let _statuses = harness.fake_statuses(statuses).await;
    let body: Value = harness.get("/v1/models").await.json().await.unwrap();
    let cards = body["data"].as_array().unwrap();
    let column = |key: &str| -> Vec<Value> { cards.iter().map(|card| card[key].clone()).collect() };
    assert_eq!(
        column("id"),
        [
            json!(DEFAULT_MODEL),
            json!(DEFAULT_RERANKER),
            json!(SECOND),
            json!(RERANKER)
        ]
    );
    assert_eq!(
        column("task"),
        [
            json!("embed"),
            json!("rerank"),
            json!("embed"),
            json!("rerank")
        ]
    );
    assert_eq!(column("workers"), [json!(2), json!(1), json!(2), json!(2)]);
    assert_eq!(
        column("dimensions"),
        [json!(8), Value::Null, json!(SECOND_WIDTH), Value::Null]
    );
    assert_eq!(cards[2]["owned_by"], "acme");

    let info: Value = harness.get("/info").await.json().await.unwrap();
    assert_eq!(info["model_id"], DEFAULT_MODEL);
    assert_eq!(info["tokenization_workers"], 1, "the default model's only");
    assert_eq!(info["models"], body["data"]);

    let debug: Value = harness.get("/debug").await.json().await.unwrap();
    let models = debug["models"].as_array().unwrap();
    let entry = |name: &str| {
        models
            .iter()
            .find(|m| m["model"] == name)
            .unwrap_or_else(|| panic!("/debug does not list {name}: {debug}"))
            .clone()
    };
    let second = entry(SECOND);
    assert_eq!(second["task"], "embed");
    assert_eq!(second["route"], model_token(SECOND));
    assert_eq!(second["hidden_size"], SECOND_WIDTH);
    assert_eq!(
        second["workers"],
        json!({"tokenizer": ["second-tok"], "gpu": ["second-gpu"]})
    );
    let reranker = entry(RERANKER);
    assert_eq!(reranker["serving_workers"], 2);
    assert_eq!(
        reranker["workers"],
        json!({"rerank_tokenizer": ["rr-tok"], "rerank_gpu": ["rr-gpu", "rr-gpu-loading"]})
    );
    let default = entry(DEFAULT_MODEL);
    assert_eq!(default["route"], Value::Null);
    assert_eq!(
        default["workers"],
        json!({"tokenizer": ["default-tok"], "gpu": ["default-gpu"]})
    );
    assert_eq!(entry(DEFAULT_RERANKER)["route"], Value::Null);
}
