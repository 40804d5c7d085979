//! NATS authentication end to end: a nats-server that requires credentials (user and
//! password, or a token), the real tokenizer and CPU GPU workers and the gateway all
//! connecting with them. An embedding goes through HTTP; a client without credentials is
//! refused by the server; a gateway with wrong credentials keeps serving HTTP but reports
//! itself unhealthy (503) instead of crashing.

mod support;

use std::time::{Duration, Instant};

use common::nats::NatsConfig;
use e2e_tests::{NatsServer, tiny_model_dir};
use serde_json::{Value, json};
use support::{
    gateway_config, start_gpu_with, start_tokenizer_with, wait_for_workers, wait_healthy,
};

/// The gateway API key used alongside NATS auth (both layers at once).
const API_KEY: &str = "sk-e2e-nats-auth";

/// The first document case of the fixture's golden vectors: its text and vector.
fn golden_document() -> (String, Vec<f64>) {
    let text = std::fs::read_to_string(tiny_model_dir().join("golden.json")).expect("golden.json");
    let golden: Value = serde_json::from_str(&text).expect("golden.json parses");
    let case = golden["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["is_query"] == false)
        .expect("a document case")
        .clone();
    let vector = case["embedding"]
        .as_array()
        .expect("embedding")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect();
    (case["text"].as_str().expect("text").to_string(), vector)
}

/// Asserts that connecting with `options` (and no retry) is refused by the server.
async fn assert_refused(server: &NatsServer, options: async_nats::ConnectOptions, what: &str) {
    let attempt = tokio::time::timeout(Duration::from_secs(10), options.connect(server.url()))
        .await
        .unwrap_or_else(|_| panic!("{what}: the connection attempt neither failed nor succeeded"));
    assert!(attempt.is_err(), "{what}: the server accepted the client");
}

/// Runs the pipeline with `good` credentials and checks an embedding over HTTP;
/// then checks that a gateway with `bad` credentials stays up and answers 503.
async fn pipeline_with_credentials(good: NatsConfig, bad: NatsConfig) {
    let model = tiny_model_dir();
    let tokenizer = start_tokenizer_with(good.clone(), &model);
    let gpu = start_gpu_with(good.clone(), &model);
    let client = good.connect("test").await.expect("credentials accepted");
    wait_for_workers(&client).await;

    let mut config = gateway_config(good);
    config.api_keys = gateway::api_keys::ApiKeys::from_list(API_KEY, "test").unwrap();
    let gateway = gateway::spawn(config).await.expect("gateway starts");
    let base = gateway.url();
    let http = reqwest::Client::new();
    wait_healthy(&http, &base, Duration::from_secs(30)).await;

    let (text, expected) = golden_document();
    let response = http
        .post(format!("{base}/v1/embeddings"))
        .bearer_auth(API_KEY)
        .json(&json!({"model": "qwen3-tiny", "input": [text]}))
        .send()
        .await
        .expect("embedding request sent");
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("JSON body");
    let got: Vec<f64> = answer["data"][0]["embedding"]
        .as_array()
        .expect("embedding")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect();
    assert_eq!(got.len(), expected.len());
    let diff = got
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(diff < 2e-5, "max abs diff {diff}");

    // Wrong credentials: the gateway serves HTTP, never becomes healthy, and still stops.
    let mut config = gateway_config(bad);
    config.nats.connect_timeout_s = 0.5;
    let refused = gateway::spawn(config)
        .await
        .expect("wrong NATS credentials do not stop the start");
    let refused_base = refused.url();
    let until = Instant::now() + Duration::from_secs(3);
    let mut answers = 0;
    while Instant::now() < until {
        if let Ok(response) = http.get(format!("{refused_base}/health")).send().await {
            assert_eq!(response.status(), 503, "healthy with wrong credentials");
            let body: Value = response.json().await.expect("health body");
            assert_eq!(body["status"], "unavailable", "{body}");
            answers += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        answers > 10,
        "the gateway answered /health only {answers} times"
    );
    tokio::time::timeout(Duration::from_secs(10), refused.shutdown())
        .await
        .expect("a gateway that never connected still stops")
        .expect("run returns Ok");

    gateway.shutdown().await.expect("gateway stops");
    gpu.stop().await.expect("GPU worker stops");
    tokenizer.stop().await.expect("tokenizer worker stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password() {
    let server = NatsServer::start_with_args(&["--user", "embed", "--pass", "s3cret"]);
    let with_password = |password: &str| NatsConfig {
        url: server.url(),
        user: Some("embed".into()),
        password: Some(password.into()),
        ..NatsConfig::default()
    };

    assert_refused(&server, async_nats::ConnectOptions::new(), "no credentials").await;
    assert_refused(
        &server,
        async_nats::ConnectOptions::with_user_and_password("embed".into(), "wrong".into()),
        "wrong password",
    )
    .await;

    pipeline_with_credentials(with_password("s3cret"), with_password("wrong")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token() {
    let server = NatsServer::start_with_args(&["--auth", "t0ken-e2e"]);
    let with_token = |token: &str| NatsConfig {
        url: server.url(),
        token: Some(token.into()),
        ..NatsConfig::default()
    };

    assert_refused(&server, async_nats::ConnectOptions::new(), "no credentials").await;
    assert_refused(
        &server,
        async_nats::ConnectOptions::with_token("not-the-token".into()),
        "wrong token",
    )
    .await;

    pipeline_with_credentials(with_token("t0ken-e2e"), with_token("not-the-token")).await;
}
