//! API keys: with keys configured every route but `/health` wants `Authorization: Bearer
//! <key>`; refusals are 401 with an OpenAI-style body and `WWW-Authenticate: Bearer`; keys
//! come from the configuration and from a file, and never show in `/debug` or `Debug`.

mod support;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use common::wire::WorkerKind;
use gateway::GatewayConfig;
use gateway::api_keys::ApiKeys;
use serde_json::{Value, json};
use support::{Harness, error_of, status};

const KEY_ONE: &str = "sk-test-alpha-4f1c";
const KEY_TWO: &str = "sk-test-beta-9d2e";

/// Configures the two test keys directly (as `QWEN3_EMBED_API_KEYS` would).
fn two_keys(config: &mut GatewayConfig) {
    config.api_keys = ApiKeys::from_list(&format!("{KEY_ONE}, {KEY_TWO}"), "test").unwrap();
}

/// A file in the temporary directory holding `text`, unique to this test run.
fn keys_file(name: &str, text: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let path = std::env::temp_dir().join(format!(
        "qwen3-gateway-keys-{}-{nanos}-{name}",
        std::process::id()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

async fn get_with_key(harness: &Harness, path: &str, key: &str) -> reqwest::Response {
    harness
        .http
        .get(harness.url(path))
        .bearer_auth(key)
        .send()
        .await
        .expect("the gateway answers")
}

/// Checks a 401 answer: the header, and the error body's type and code.
async fn assert_unauthorized(response: reqwest::Response, what: &str) -> Value {
    assert_eq!(response.status(), 401, "{what}");
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer",
        "{what}: WWW-Authenticate"
    );
    let error = error_of(response).await;
    assert_eq!(error["type"], "invalid_request_error", "{what}: {error}");
    assert_eq!(error["code"], "invalid_api_key", "{what}: {error}");
    error
}

#[tokio::test]
async fn requests_without_a_key_are_refused_on_every_route_but_health() {
    let harness = Harness::start_with_key(Some(KEY_ONE), two_keys).await;
    let _worker = harness.fake_tokenizer(8).await;

    let error = assert_unauthorized(harness.get("/v1/models").await, "GET /v1/models").await;
    assert!(
        error["message"].as_str().unwrap().contains("Bearer"),
        "{error}"
    );
    for path in ["/metrics", "/debug", "/api/v1/debug", "/no/such/route"] {
        assert_unauthorized(harness.get(path).await, path).await;
    }
    let response = harness
        .post_json("/v1/embeddings", json!({"input": ["hello"]}))
        .await;
    assert_unauthorized(response, "POST /v1/embeddings").await;
    let response = harness
        .post_json("/api/v1/embedding/api", json!({"text": ["hello"]}))
        .await;
    assert_unauthorized(response, "POST seed route").await;
    let response = harness
        .post_json("/v1/rerank", json!({"query": "q", "documents": ["d"]}))
        .await;
    assert_unauthorized(response, "POST /v1/rerank").await;
    let response = harness
        .post_json("/rerank", json!({"query": "q", "texts": ["d"]}))
        .await;
    assert_unauthorized(response, "POST /rerank").await;
    // Health is checked but nothing else is: a POST to it needs a key too.
    let response = harness.post_json("/health", json!({})).await;
    assert_unauthorized(response, "POST /health").await;
}

#[tokio::test]
async fn wrong_or_malformed_keys_are_refused() {
    let harness = Harness::start_with_key(Some(KEY_ONE), two_keys).await;
    let wrong = get_with_key(&harness, "/v1/models", "sk-test-alpha-4f1").await;
    assert_unauthorized(wrong, "a prefix of a key").await;
    let wrong = get_with_key(&harness, "/v1/models", &format!("{KEY_ONE},{KEY_TWO}")).await;
    assert_unauthorized(wrong, "both keys as one").await;
    let basic = harness
        .http
        .get(harness.url("/v1/models"))
        .basic_auth(KEY_ONE, None::<&str>)
        .send()
        .await
        .unwrap();
    assert_unauthorized(basic, "Basic scheme").await;
    let bare = harness
        .http
        .get(harness.url("/v1/models"))
        .header("authorization", KEY_ONE)
        .send()
        .await
        .unwrap();
    assert_unauthorized(bare, "no scheme").await;
}

#[tokio::test]
async fn each_configured_key_is_accepted() {
    let harness = Harness::start_with_key(Some(KEY_TWO), two_keys).await;
    let _worker = harness.fake_tokenizer(8).await;
    for key in [KEY_ONE, KEY_TWO] {
        let response = get_with_key(&harness, "/v1/models", key).await;
        assert_eq!(response.status(), 200, "{key}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["data"][0]["id"], gateway::config::DEFAULT_MODEL);

        let response = get_with_key(&harness, "/metrics", key).await;
        assert_eq!(response.status(), 200, "{key}: /metrics");

        let response = harness
            .http
            .post(harness.url("/v1/embeddings"))
            .bearer_auth(key)
            .json(&json!({"input": ["hello"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{key}: /v1/embeddings");
    }
}

#[tokio::test]
async fn health_is_open_without_a_key() {
    let harness = Harness::start_with_key(Some(KEY_ONE), two_keys).await;
    let _statuses = harness
        .fake_statuses(vec![
            status(WorkerKind::Tokenizer, "t1", true, 0),
            status(WorkerKind::Gpu, "g1", true, 0),
        ])
        .await;
    for path in ["/health", "/api/v1/health"] {
        let response = harness.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "ok", "{path}: {body}");
    }
}

#[tokio::test]
async fn keys_come_from_a_file_with_comments() {
    let path = keys_file(
        "comments",
        "# keys of the search team\n\nsk-file-one\n  # sk-commented-out\n  sk-file-two  \n",
    );
    let file = path.clone();
    let harness = Harness::start_with_key(Some("sk-file-one"), move |config| {
        config.api_keys_file = Some(file);
    })
    .await;
    for key in ["sk-file-one", "sk-file-two"] {
        let response = get_with_key(&harness, "/v1/models", key).await;
        assert_eq!(response.status(), 200, "{key}");
    }
    for key in [
        "sk-commented-out",
        "# sk-commented-out",
        "# keys of the search team",
    ] {
        let response = get_with_key(&harness, "/v1/models", key).await;
        assert_unauthorized(response, key).await;
    }
    let debug: Value = get_with_key(&harness, "/debug", "sk-file-two")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(debug["api_keys"], 2);
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn unreadable_or_empty_key_files_stop_the_start() {
    let base = GatewayConfig {
        host: "127.0.0.1".into(),
        port: 0,
        ..GatewayConfig::default()
    };
    let missing = GatewayConfig {
        api_keys_file: Some(std::env::temp_dir().join("qwen3-gateway-keys-that-do-not-exist")),
        ..base.clone()
    };
    let error = gateway::spawn(missing).await.err().expect("refused");
    assert!(
        format!("{error:#}").contains("cannot read the API keys file"),
        "{error:#}"
    );

    let path = keys_file("empty", "# no keys yet\n\n   \n");
    let empty = GatewayConfig {
        api_keys_file: Some(path.clone()),
        ..base
    };
    let error = gateway::spawn(empty).await.err().expect("refused");
    assert!(
        format!("{error:#}").contains("holds no API key"),
        "{error:#}"
    );
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn keys_never_show_in_debug_output() {
    let path = keys_file("debug", "sk-file-secret-7a7a\n");
    let file = path.clone();
    let harness = Harness::start_with_key(Some(KEY_ONE), move |config| {
        two_keys(config);
        config.api_keys_file = Some(file);
    })
    .await;
    let debug = get_with_key(&harness, "/debug", KEY_ONE)
        .await
        .text()
        .await
        .unwrap();
    let parsed: Value = serde_json::from_str(&debug).unwrap();
    assert_eq!(parsed["api_keys"], 3, "{debug}");
    for key in [KEY_ONE, KEY_TWO, "sk-file-secret-7a7a"] {
        assert!(!debug.contains(key), "/debug shows {key}: {debug}");
    }

    let mut config = GatewayConfig::default();
    two_keys(&mut config);
    config.api_keys_file = Some(path.clone());
    let shown = format!("{config:?} {config:#?}");
    for key in [KEY_ONE, KEY_TWO] {
        assert!(!shown.contains(key), "Debug shows {key}: {shown}");
    }
    assert!(shown.contains("ApiKeys(2 redacted)"), "{shown}");
    let loaded = format!("{:?}", config.load_api_keys().unwrap());
    assert_eq!(loaded, "ApiKeys(3 redacted)");
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn without_keys_every_route_is_open() {
    let harness = Harness::start(|_| {}).await;
    let response = harness.get("/v1/models").await;
    assert_eq!(response.status(), 200);
    let debug: Value = harness.get("/debug").await.json().await.unwrap();
    assert_eq!(debug["api_keys"], 0);
}
