//! Model routing through the gateway, with a real nats-server and stand-in workers: a
//! request's `model` picks the default model (the bare subjects) or a model discovered on a
//! route of its own (`embed.models.{token}.*`), on every route that reads `model`; unknown
//! names are 404 `model_not_found` naming the task's models; the cache keeps models apart;
//! rerank and tokenize calls follow the model too. Discovery and the listings:
//! `model_discovery.rs`.

mod support;

use common::subjects::model_token;
use common::wire::tokenize::{TokenizeReply, TokenizedText, TokenizerAnswer, TokenizerCall};
use common::wire::{self, ErrorCode, ErrorReply, RerankRequest, WorkerKind};
use futures::StreamExt;
use gateway::config::DEFAULT_MODEL;
use serde_json::{Value, json};
use support::models::{
    DEFAULT_RERANKER, RERANKER, SECOND, SECOND_BIAS, SECOND_WIDTH, floats, two_pools, vectors_of,
};
use support::{FAKE_DIMS, Harness, biased_vector, error_of, expected_vector, routed_status, sync};
use tokio::task::JoinHandle;

/// Answers every tokenize call on `model`'s route with the ids `[7, 7, 7]` and
/// `max_length` 77, so an answer shows it came from there.
async fn fake_routed_tokenize(harness: &Harness, model: &str) -> JoinHandle<()> {
    let subject = harness
        .subjects
        .routed(Some(&model_token(model)))
        .tokenize();
    let mut calls = harness.client.subscribe(subject).await.expect("subscribe");
    sync(&harness.client).await;
    let client = harness.client.clone();
    tokio::spawn(async move {
        while let Some(message) = calls.next().await {
            let Some(reply) = message.reply else { continue };
            let Ok(TokenizerCall::Tokenize(call)) = wire::decode(&message.payload) else {
                continue;
            };
            let answer = TokenizerAnswer::Tokens(TokenizeReply {
                id: call.id,
                max_length: 77,
                sequences: vec![TokenizedText {
                    ids: vec![7, 7, 7],
                    tokens: Vec::new(),
                }],
            });
            let payload = wire::encode(&answer).expect("encodes");
            let _ = client.publish(reply, payload.into()).await;
        }
    })
}

#[tokio::test]
async fn a_named_model_is_served_on_its_own_subjects_and_a_missing_one_by_the_default() {
    let harness = Harness::start(|_| {}).await;
    let default = harness.fake_tokenizer(8).await;
    let second = harness.fake_tokenizer_on(SECOND, 8, SECOND_BIAS).await;
    let _statuses = harness.fake_statuses(two_pools()).await;
    let texts = ["alpha", "bb"];
    let biased = |dims| -> Vec<Vec<f32>> {
        texts
            .iter()
            .map(|t| biased_vector(t, dims, SECOND_BIAS))
            .collect()
    };

    // By full name and by the name without its organisation: the second model's worker
    // answers (the second time from the cache), the default's sees nothing.
    for name in [SECOND, "embedder-b"] {
        let response = harness
            .post_json("/v1/embeddings", json!({"input": texts, "model": name}))
            .await;
        assert_eq!(response.status(), 200, "{name}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["model"], SECOND,
            "the answer names the model that served"
        );
        assert_eq!(vectors_of(&body), biased(FAKE_DIMS), "{name}");
    }
    assert_eq!(second.requests().len(), 1, "the second ask was a cache hit");
    assert!(
        default.requests().is_empty(),
        "the default saw a routed request"
    );

    // No model, and the default's name: the default's worker, never the cache of the other.
    for body in [
        json!({"input": texts}),
        json!({"input": texts, "model": DEFAULT_MODEL}),
    ] {
        let response = harness.post_json("/v1/embeddings", body).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["model"], DEFAULT_MODEL);
        let want: Vec<Vec<f32>> = texts
            .iter()
            .map(|t| expected_vector(t, FAKE_DIMS))
            .collect();
        assert_eq!(vectors_of(&body), want);
    }
    assert_eq!(
        default.requests().len(),
        1,
        "the second ask was a cache hit"
    );
    // And the second model's cached vectors stayed its own.
    let response = harness
        .post_json("/v1/embeddings", json!({"input": texts, "model": SECOND}))
        .await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(vectors_of(&body), biased(FAKE_DIMS));
    assert_eq!(second.requests().len(), 1);

    // The seed route and TEI's /embed name no model: the default.
    let response = harness
        .post_json("/api/v1/embedding/api", json!({"input": ["seed text"]}))
        .await;
    assert_eq!(response.status(), 200);
    let response = harness
        .post_json("/embed", json!({"inputs": "tei text"}))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(default.requests().len(), 3);

    // Cohere's /v2/embed routes by its `model` too.
    let response = harness
        .post_json(
            "/v2/embed",
            json!({"model": SECOND, "texts": ["cohere text"], "input_type": "search_document"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        floats(&body["embeddings"]["float"][0]),
        biased_vector("cohere text", FAKE_DIMS, SECOND_BIAS)
    );
    assert_eq!(second.requests().len(), 2);
    assert_eq!(default.requests().len(), 3);

    // The listing names both; no rerank worker serves, so the default reranker is left out.
    let body: Value = harness.get("/v1/models").await.json().await.unwrap();
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|card| card["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [DEFAULT_MODEL, SECOND]);
}

#[tokio::test]
async fn dimensions_are_bounded_by_the_named_models_width() {
    let harness = Harness::start(|_| {}).await;
    let _default = harness.fake_tokenizer(8).await;
    let second = harness.fake_tokenizer_on(SECOND, 8, SECOND_BIAS).await;
    let _statuses = harness.fake_statuses(two_pools()).await;
    // Wider than the default (8), within the second model (16).
    let response = harness
        .post_json(
            "/v1/embeddings",
            json!({"input": "a", "model": SECOND, "dimensions": 12}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(vectors_of(&body), [biased_vector("a", 12, SECOND_BIAS)]);
    for (model, dimensions, largest) in [(DEFAULT_MODEL, 12, 8), (SECOND, 17, SECOND_WIDTH)] {
        let response = harness
            .post_json(
                "/v1/embeddings",
                json!({"input": "a", "model": model, "dimensions": dimensions}),
            )
            .await;
        assert_eq!(response.status(), 400, "{model}");
        let error = error_of(response).await;
        assert_eq!(error["param"], "dimensions");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("largest is {largest} for model `{model}`")),
            "{message}"
        );
    }
    assert_eq!(second.requests().len(), 1);
}

#[tokio::test]
async fn unknown_models_are_refused_naming_the_models_served_for_the_task() {
    let harness = Harness::start(|_| {}).await;
    let mut statuses = two_pools();
    statuses.push(routed_status(
        WorkerKind::RerankTokenizer,
        "rr-tok",
        RERANKER,
        0,
    ));
    let _statuses = harness.fake_statuses(statuses).await;
    let embedders = format!("`{DEFAULT_MODEL}`, `{SECOND}`");
    let rerankers = format!("`{DEFAULT_RERANKER}`, `{RERANKER}`");
    for (path, body, served) in [
        (
            "/v1/embeddings",
            json!({"input": "a", "model": "no-such-model"}),
            &embedders,
        ),
        // A reranker is not an embedding model, nor the other way round.
        (
            "/v1/embeddings",
            json!({"input": "a", "model": RERANKER}),
            &embedders,
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": ["d"], "model": SECOND}),
            &rerankers,
        ),
        (
            "/v1/tokenize",
            json!({"prompt": "p", "model": "no-such-model"}),
            &embedders,
        ),
        (
            "/v1/detokenize",
            json!({"tokens": [1], "model": "no-such-model"}),
            &embedders,
        ),
        // The model is checked first: a body also wrong elsewhere is still a 404.
        (
            "/v1/embeddings",
            json!({"input": 3, "model": "no-such-model"}),
            &embedders,
        ),
    ] {
        let response = harness.post_json(path, body.clone()).await;
        assert_eq!(response.status(), 404, "{path} {body}");
        let error = error_of(response).await;
        assert_eq!(error["code"], "model_not_found", "{path} {body}");
        assert_eq!(error["param"], "model");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(served.as_str()), "{path}: {message}");
        assert!(
            message.contains(body["model"].as_str().unwrap()),
            "{message}"
        );
    }
    // Cohere's routes answer the same refusal in Cohere's shape.
    for (path, body, served) in [
        (
            "/v2/embed",
            json!({"texts": ["a"], "model": "embed-v4.0"}),
            &embedders,
        ),
        (
            "/v2/rerank",
            json!({"query": "q", "documents": ["d"], "model": "rerank-v3.5"}),
            &rerankers,
        ),
    ] {
        let response = harness.post_json(path, body).await;
        assert_eq!(response.status(), 404, "{path}");
        let body: Value = response.json().await.unwrap();
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(served.as_str()), "{path}: {message}");
    }
    // A known model whose tokenizer workers do not listen (stopped since discovery, or
    // still starting) is unavailable, not unknown.
    let response = harness
        .post_json("/v1/embeddings", json!({"input": "a", "model": SECOND}))
        .await;
    assert_eq!(response.status(), 503);
    assert_eq!(error_of(response).await["code"], "no_workers");
    // A known model with a bad body is refused for the body, not the model.
    let response = harness
        .post_json("/v1/embeddings", json!({"input": 3, "model": "embedder-b"}))
        .await;
    assert_eq!(response.status(), 400);
    assert_eq!(error_of(response).await["param"], "input");
}

#[tokio::test]
async fn rerank_and_tokenize_calls_go_to_the_named_models_subjects() {
    let harness = Harness::start(|_| {}).await;
    let mut statuses = two_pools();
    statuses.push(routed_status(
        WorkerKind::RerankTokenizer,
        "rr-tok",
        RERANKER,
        0,
    ));
    let _statuses = harness.fake_statuses(statuses).await;

    // A rerank request for the routed reranker arrives on its rerank subject; the stand-in
    // refuses it with a message that names where it was heard.
    let rerank_subject = harness
        .subjects
        .routed(Some(&model_token(RERANKER)))
        .rerank();
    let mut rerank = harness
        .client
        .subscribe(rerank_subject.clone())
        .await
        .unwrap();
    sync(&harness.client).await;
    let client = harness.client.clone();
    let heard = rerank_subject.clone();
    let _reranker = tokio::spawn(async move {
        while let Some(message) = rerank.next().await {
            let Some(reply) = message.reply else { continue };
            let request: RerankRequest = wire::decode(&message.payload).expect("decodes");
            let refusal = ErrorReply::new(
                Some(request.id),
                ErrorCode::InvalidRequest,
                format!("heard on {heard}"),
            );
            let payload = wire::encode(&refusal).unwrap();
            let _ = client.publish(reply, payload.into()).await;
        }
    });
    for path in ["/v1/rerank", "/v2/rerank"] {
        let response = harness
            .post_json(
                path,
                json!({"query": "q", "documents": ["d"], "model": "reranker-r"}),
            )
            .await;
        assert_eq!(response.status(), 400, "{path}");
        let body = response.text().await.unwrap();
        assert!(
            body.contains(&format!("heard on {rerank_subject}")),
            "{body}"
        );
    }
    // The default reranker has no worker: its requests are not heard there.
    let response = harness
        .post_json("/v1/rerank", json!({"query": "q", "documents": ["d"]}))
        .await;
    assert_eq!(response.status(), 503);
    assert_eq!(error_of(response).await["code"], "no_workers");

    // vLLM's tokenize names the model: its tokenize subject answers.
    let _tokenize = fake_routed_tokenize(&harness, SECOND).await;
    let response = harness
        .post_json("/v1/tokenize", json!({"prompt": "p", "model": SECOND}))
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["tokens"], json!([7, 7, 7]));
    assert_eq!(body["max_model_len"], 77);
    // Without a model: the default's tokenize subject, where nobody listens.
    let response = harness
        .post_json("/v1/tokenize", json!({"prompt": "p"}))
        .await;
    assert_eq!(response.status(), 503);
}
