//! Every malformed request gets the right 4xx status and an OpenAI-style error body naming
//! the problem; nothing reaches NATS (there are no workers here), and no input crashes the
//! gateway.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{Harness, error_of};

/// One malformed request and what the answer must say.
struct Case {
    name: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    /// Text the error message must contain.
    message: &'static str,
    /// Expected `param`, when the error is about one field.
    param: Option<&'static str>,
}

fn case(
    name: &'static str,
    body: serde_json::Value,
    message: &'static str,
    param: Option<&'static str>,
) -> Case {
    Case {
        name,
        path: "/v1/embeddings",
        content_type: Some("application/json"),
        body: body.to_string().into_bytes(),
        status: 400,
        message,
        param,
    }
}

fn cases() -> Vec<Case> {
    let long_text = "x".repeat(11);
    vec![
        Case {
            name: "wrong content type",
            content_type: Some("text/plain"),
            status: 415,
            message: "Content-Type",
            ..case("", json!({"input": "a"}), "", None)
        },
        Case {
            name: "missing content type",
            content_type: None,
            status: 415,
            message: "Content-Type",
            ..case("", json!({"input": "a"}), "", None)
        },
        Case {
            name: "invalid UTF-8",
            body: b"{\"input\": \"caf\xe9\"}".to_vec(),
            message: "UTF-8",
            ..case("", json!({}), "", None)
        },
        Case {
            name: "invalid JSON",
            body: b"{\"input\": [\"a\",}".to_vec(),
            message: "not valid JSON",
            ..case("", json!({}), "", None)
        },
        Case {
            name: "empty body",
            body: Vec::new(),
            message: "empty",
            ..case("", json!({}), "", None)
        },
        case(
            "body not an object",
            json!(["a"]),
            "expected an object",
            None,
        ),
        case(
            "missing input",
            json!({"user": "x"}),
            "input is required",
            Some("input"),
        ),
        case(
            "input of wrong type",
            json!({"input": 5}),
            "string or a list of strings",
            Some("input"),
        ),
        case(
            "input item of wrong type",
            json!({"input": ["a", true]}),
            "input[1] must be a string",
            Some("input[1]"),
        ),
        case(
            "token arrays",
            json!({"input": [[1, 2, 3]]}),
            "token id input",
            Some("input"),
        ),
        case(
            "empty input list",
            json!({"input": []}),
            "must not be empty",
            Some("input"),
        ),
        case(
            "too many inputs",
            json!({"input": ["a", "b", "c", "d"]}),
            "at most 3",
            Some("input"),
        ),
        case(
            "text too long",
            json!({"input": ["a", long_text]}),
            "input[1] has 11 characters",
            Some("input[1]"),
        ),
        case(
            "dimensions zero",
            json!({"input": "a", "dimensions": 0}),
            "at least 1",
            Some("dimensions"),
        ),
        case(
            "dimensions negative",
            json!({"input": "a", "dimensions": -4}),
            "at least 1",
            Some("dimensions"),
        ),
        case(
            "dimensions fractional",
            json!({"input": "a", "dimensions": 1.5}),
            "integer",
            Some("dimensions"),
        ),
        case(
            "dimensions string",
            json!({"input": "a", "dimensions": "8"}),
            "integer",
            Some("dimensions"),
        ),
        case(
            "bad encoding_format",
            json!({"input": "a", "encoding_format": "int8"}),
            "encoding_format must be",
            Some("encoding_format"),
        ),
        case(
            "bad input_type",
            json!({"input": "a", "input_type": "question"}),
            "input_type must be",
            Some("input_type"),
        ),
        case(
            "instruction of wrong type",
            json!({"input": "a", "instruction": 3}),
            "instruction must be a string",
            Some("instruction"),
        ),
        case(
            "model of wrong type",
            json!({"input": "a", "model": 3}),
            "model must be a string",
            Some("model"),
        ),
        Case {
            name: "unknown model",
            status: 404,
            message: "Qwen/Qwen3-Embedding-0.6B",
            ..case(
                "",
                json!({"input": "a", "model": "text-embedding-3-small"}),
                "",
                Some("model"),
            )
        },
        Case {
            name: "seed: is_query of wrong type",
            path: "/api/v1/embedding/api",
            ..case(
                "",
                json!({"input": ["a"], "is_query": "yes"}),
                "is_query must be true or false",
                Some("is_query"),
            )
        },
        Case {
            name: "seed: empty input",
            path: "/api/v1/embedding/api",
            ..case("", json!({"input": []}), "must not be empty", Some("input"))
        },
        Case {
            name: "seed: bad dimensions",
            path: "/api/v1/embedding/api",
            ..case(
                "",
                json!({"input": ["a"], "dimensions": 0}),
                "at least 1",
                Some("dimensions"),
            )
        },
        Case {
            name: "body over max_body_bytes",
            status: 413,
            body: json!({"input": "y".repeat(3000)}).to_string().into_bytes(),
            message: "larger than the limit of 2000 bytes",
            ..case("", json!({}), "", None)
        },
    ]
}

#[tokio::test]
async fn malformed_requests_get_precise_errors() {
    let harness = Harness::start(|config| {
        config.max_inputs_per_request = 3;
        config.max_input_chars = 10;
        config.max_body_bytes = 2000;
    })
    .await;
    for case in cases() {
        let response = harness
            .post_raw(case.path, case.content_type, case.body.clone())
            .await;
        assert_eq!(response.status().as_u16(), case.status, "{}", case.name);
        let error = error_of(response).await;
        let message = error["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(case.message),
            "{}: message `{message}` lacks `{}`",
            case.name,
            case.message
        );
        if let Some(param) = case.param {
            assert_eq!(error["param"], param, "{}", case.name);
        }
    }
    // The counters saw them all, under their route templates.
    let metrics = harness.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"embed_http_requests_total{route="/v1/embeddings",status="400"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_get_error_bodies() {
    let harness = Harness::start(|_| {}).await;
    let response = harness.get("/v2/nothing").await;
    assert_eq!(response.status(), 404);
    assert!(
        error_of(response).await["message"]
            .as_str()
            .unwrap()
            .contains("/v2/nothing")
    );
    let response = harness.get("/v1/embeddings").await;
    assert_eq!(response.status(), 405);
    assert_eq!(error_of(response).await["code"], "method_not_allowed");
}

#[tokio::test]
async fn health_is_unavailable_without_workers() {
    let harness = Harness::start(|_| {}).await;
    for path in ["/health", "/api/v1/health"] {
        let response = harness.get(path).await;
        assert_eq!(response.status(), 503, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["status"], "unavailable");
        assert_eq!(body["model_loaded"], false);
        assert_eq!(body["tokenizer_workers"], 0);
        assert_eq!(body["gpu_workers"], 0);
        assert_eq!(body["model"], "Qwen/Qwen3-Embedding-0.6B");
        assert!(body["timestamp"].as_f64().unwrap() > 1.7e9);
        assert!(
            body["reason"]
                .as_str()
                .unwrap()
                .contains("no tokenizer worker")
        );
    }
}

#[tokio::test]
async fn request_without_tokenizer_workers_is_503_at_once() {
    let harness = Harness::start(|config| config.request_timeout_s = 20.0).await;
    let started = Instant::now();
    let response = harness
        .post_json("/v1/embeddings", json!({"input": ["hello"]}))
        .await;
    assert_eq!(response.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(response.headers()["retry-after"], "1");
    let error = error_of(response).await;
    assert_eq!(error["code"], "no_workers");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("no tokenizer worker")
    );
    // The seed route goes the same way.
    let response = harness
        .post_json("/api/v1/embedding/api", json!({"input": ["hello"]}))
        .await;
    assert_eq!(response.status(), 503);
}

/// Seeded pseudo-random bodies (xorshift): every one gets an answer, none a 5xx.
#[tokio::test]
async fn random_bodies_never_crash_the_gateway() {
    let harness = Harness::start(|_| {}).await;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let pieces: [&[u8]; 12] = [
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"input\"",
        b":",
        b",",
        b"\"\\ud800\"",
        b"-1e999",
        b"null",
        b"\xff",
        b"\"dimensions\"",
    ];
    for round in 0..200 {
        let len = next() % 12;
        let body: Vec<u8> = (0..len)
            .flat_map(|_| pieces[(next() % pieces.len() as u64) as usize].to_vec())
            .collect();
        let path = if round % 2 == 0 {
            "/v1/embeddings"
        } else {
            "/api/v1/embedding/api"
        };
        let response = harness
            .post_raw(path, Some("application/json"), body.clone())
            .await;
        let status = response.status();
        // A valid body may reach NATS (503: no workers); everything else must be a 4xx.
        assert!(
            status.is_client_error() || status == 503,
            "{status} for {:?}",
            String::from_utf8_lossy(&body)
        );
    }
    assert_eq!(harness.get("/debug").await.status(), 200);
}
