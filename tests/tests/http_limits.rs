//! The four request limits end to end over HTTP (gateway, tokenizer and GPU workers on a real
//! nats-server), each set small: body size (`[gateway] max_body_bytes`), inputs per request
//! (`max_inputs_per_request`), tokens per input (`[tokenizer] max_length` with truncation
//! off) and tokens per request (`[tokenizer] max_request_tokens`). A request just inside
//! every limit is served; one past each gets its 4xx with a JSON error naming the limit.

mod support;

use std::time::Duration;

use e2e_tests::{NatsServer, tiny_model_dir};
use gateway::GatewayConfig;
use serde_json::{Value, json};
use support::{
    gateway_config, nats_config, start_gpu, start_tokenizer_configured, tokenizer_config,
    wait_for_workers, wait_healthy,
};

const MAX_BODY_BYTES: usize = 4096;
const MAX_INPUTS: usize = 4;
const MAX_INPUT_CHARS: usize = 400;
const MAX_LENGTH: usize = 32;
const MAX_REQUEST_TOKENS: usize = 64;

/// Posts `body` (already serialized) to `url` and returns the status and JSON answer.
async fn post_raw(http: &reqwest::Client, url: &str, body: String) -> (u16, Value) {
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request sent");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

/// Checks an error answer: `status`, `code`, and a message holding `needle`.
fn assert_error(answer: &Value, status: u16, want: u16, code: &str, needle: &str) {
    assert_eq!(status, want, "{answer}");
    let error = &answer["error"];
    assert_eq!(error["code"], code, "{answer}");
    assert_eq!(error["type"], "invalid_request_error", "{answer}");
    let message = error["message"].as_str().expect("a message");
    assert!(message.contains(needle), "`{needle}` not in {answer}");
}

/// `n` words: `n` tokens of the fixture's tokenizer, plus `<|endoftext|>`.
fn words(n: usize) -> String {
    vec!["word"; n].join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_limit_answers_a_clear_4xx() {
    let server = NatsServer::start();
    let model = tiny_model_dir();
    let tokenizer = start_tokenizer_configured(
        tokenizer_worker::config::TokenizerWorkerConfig {
            max_length: MAX_LENGTH,
            truncate: false,
            max_request_tokens: MAX_REQUEST_TOKENS,
            ..tokenizer_config(&model)
        },
        nats_config(&server),
    );
    let gpu = start_gpu(&server, &model);
    let nats = async_nats::connect(server.url()).await.unwrap();
    wait_for_workers(&nats).await;
    let gateway = gateway::spawn(GatewayConfig {
        max_body_bytes: MAX_BODY_BYTES,
        max_inputs_per_request: MAX_INPUTS,
        max_input_chars: MAX_INPUT_CHARS,
        ..gateway_config(nats_config(&server))
    })
    .await
    .unwrap();
    let http = reqwest::Client::new();
    wait_healthy(&http, &gateway.url(), Duration::from_secs(20)).await;
    let url = format!("{}/v1/embeddings", gateway.url());
    let seed_url = format!("{}/api/v1/embedding/api", gateway.url());

    // Inside every limit: two inputs of 25 words (26 tokens each, 52 in all) are served.
    let inside = json!({"input": [words(25), words(25)]});
    let (status, answer) = post_raw(&http, &url, inside.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    let tokens = answer["usage"]["total_tokens"].as_u64().unwrap();
    assert!(
        tokens as usize <= MAX_REQUEST_TOKENS && tokens > 2 * 20,
        "{answer}"
    );

    // Body size: 413 before anything is parsed, on both routes.
    let big = json!({"input": "x".repeat(MAX_BODY_BYTES)}).to_string();
    for route in [&url, &seed_url] {
        let (status, answer) = post_raw(&http, route, big.clone()).await;
        assert_error(
            &answer,
            status,
            413,
            "payload_too_large",
            &MAX_BODY_BYTES.to_string(),
        );
    }

    // Inputs per request: 400 naming the count and the limit.
    let many = json!({"input": vec!["a"; MAX_INPUTS + 1]});
    let (status, answer) = post_raw(&http, &url, many.to_string()).await;
    assert_error(
        &answer,
        status,
        400,
        "invalid_value",
        &format!("input has {} texts; at most {MAX_INPUTS}", MAX_INPUTS + 1),
    );
    assert_eq!(answer["error"]["param"], "input");

    // Characters per input: 400 naming the input.
    let long = json!({"input": ["a", "y".repeat(MAX_INPUT_CHARS + 1)]});
    let (status, answer) = post_raw(&http, &url, long.to_string()).await;
    assert_error(
        &answer,
        status,
        400,
        "invalid_value",
        &format!("at most {MAX_INPUT_CHARS} are allowed"),
    );
    assert_eq!(answer["error"]["param"], "input[1]");

    // Tokens per input (truncation off): 400 too_many_tokens naming the limit.
    let (status, answer) =
        post_raw(&http, &url, json!({"input": ["a", words(40)]}).to_string()).await;
    assert_error(
        &answer,
        status,
        400,
        "too_many_tokens",
        &format!("limit of {MAX_LENGTH} tokens"),
    );
    assert_eq!(answer["error"]["param"], "input");
    // The same input with truncation asked for is served at the limit.
    let (status, answer) = post_raw(
        &http,
        &url,
        json!({"input": words(40), "truncate": true}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["usage"]["total_tokens"], MAX_LENGTH);

    // Tokens per request: three inputs of 26 tokens (78 > 64), each under max_length.
    let (status, answer) = post_raw(
        &http,
        &url,
        json!({"input": [words(25), words(25), words(25)]}).to_string(),
    )
    .await;
    assert_error(
        &answer,
        status,
        400,
        "too_many_tokens",
        &format!("limit of {MAX_REQUEST_TOKENS} tokens per request"),
    );
    assert_eq!(answer["error"]["param"], "input");
    // The seed route enforces the same limit.
    let (status, answer) = post_raw(
        &http,
        &seed_url,
        json!({"input": [words(25), words(25), words(25)]}).to_string(),
    )
    .await;
    assert_error(
        &answer,
        status,
        400,
        "too_many_tokens",
        "tokens per request",
    );

    // And the service still answers after every refusal.
    let (status, answer) = post_raw(&http, &url, inside.to_string()).await;
    assert_eq!(status, 200, "{answer}");

    gateway.shutdown().await.unwrap();
    gpu.stop().await.unwrap();
    tokenizer.stop().await.unwrap();
}
