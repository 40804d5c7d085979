//! Property tests of HTTP request parsing through the real router, in process
//! (`tower::ServiceExt::oneshot`), with a real nats-server and no workers: arbitrary bytes,
//! arbitrary JSON and arbitrary field values under arbitrary content types, posted to
//! `/v1/embeddings` and the seed route `/api/v1/embedding/api`, never panic and always get a
//! JSON error body with a message. A request is refused with a 4xx exactly when it is
//! invalid (checked against an independent statement of the rules below); a valid one goes
//! to NATS, where no worker listens, and gets 503 `no_workers`.
//!
//! The runner is seeded, so a failure reproduces.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode, header};
use e2e_tests::NatsServer;
use gateway::GatewayConfig;
use gateway::api_keys::ApiKeys;
use gateway::http::{Shared, router};
use gateway::metrics::Metrics;
use gateway::models::{Defaults, Models};
use gateway::service::EmbedService;
use gateway::upstream::Upstream;
use gateway::upstream::discovery::Discovery;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Map, Value};
use tower::ServiceExt;

const MAX_BODY_BYTES: usize = 1024;
const MAX_INPUTS: usize = 4;
const MAX_INPUT_CHARS: usize = 12;
const MODEL: &str = "Qwen/Qwen3-Embedding-0.6B";
const OPENAI: &str = "/v1/embeddings";
const SEED: &str = "/api/v1/embedding/api";

/// The router of a gateway connected to `server`, with small limits and no cache.
async fn build_router(server: &NatsServer) -> Router {
    let mut config = GatewayConfig {
        model: MODEL.into(),
        cache_size: 0,
        max_body_bytes: MAX_BODY_BYTES,
        max_inputs_per_request: MAX_INPUTS,
        max_input_chars: MAX_INPUT_CHARS,
        request_timeout_s: 10.0,
        ..GatewayConfig::default()
    };
    config.nats.url = server.url();
    config.validate().expect("valid test configuration");
    let (client, link) = config
        .nats
        .connect_watched("properties")
        .await
        .expect("connects");
    tokio::time::timeout(Duration::from_secs(10), client.flush())
        .await
        .expect("connected within 10 s")
        .expect("flush");
    let subjects = config.nats.subjects();
    let metrics = Metrics::new();
    let upstream = Upstream::start(client.clone(), &subjects, link, None, metrics.clone())
        .await
        .expect("reply inbox");
    let discovery = Arc::new(Discovery::new(
        client,
        &subjects,
        Duration::from_millis(50),
        Duration::from_millis(1000),
    ));
    let service = EmbedService::new(&config, upstream, metrics.clone());
    let models = Models::new(Defaults::of_config(&config), discovery.clone());
    router(Arc::new(Shared {
        config,
        service,
        models,
        discovery,
        metrics,
        started_s: 0,
        api_keys: ApiKeys::default(),
    }))
}

/// One generated request.
#[derive(Debug, Clone)]
struct Probe {
    path: &'static str,
    content_type: Option<HeaderValue>,
    body: Vec<u8>,
}

/// Posts `probe` through `app` and checks the answer: no panic (the oneshot returns), a
/// JSON error body with a message and a code, a 4xx when the request is invalid and
/// 503 `no_workers` (it reached NATS) when it is valid. Returns the status.
async fn check(app: &Router, probe: Probe) -> Result<StatusCode, TestCaseError> {
    let mut request = Request::post(probe.path);
    if let Some(value) = &probe.content_type {
        request = request.header(header::CONTENT_TYPE, value.clone());
    }
    let request = request
        .body(Body::from(probe.body.clone()))
        .expect("request builds");
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("answer body");
    let shown = String::from_utf8_lossy(&bytes);
    prop_assert!(is_json, "{status}: not JSON: {shown}");
    let answer: Value = serde_json::from_slice(&bytes).expect("answer parses");
    let error = &answer["error"];
    let message = error["message"].as_str().unwrap_or_default();
    prop_assert!(!message.is_empty(), "{status}: no message in {answer}");
    prop_assert!(error["code"].is_string(), "{status}: no code in {answer}");

    let expected = expected_status(&probe);
    if expected == StatusCode::SERVICE_UNAVAILABLE {
        prop_assert_eq!(status, expected, "valid request refused: {}", answer);
        prop_assert_eq!(&error["code"], "no_workers");
    } else {
        prop_assert!(
            status.is_client_error(),
            "invalid request got {status}: {answer}"
        );
        prop_assert_eq!(status, expected, "{}", answer);
    }
    Ok(status)
}

/// The status the rules give `probe`: 415 for a body not declared JSON, 413 over the size
/// limit, 400 for bad UTF-8, bad JSON or a bad field, 404 for another model, and 503 (no
/// workers) for a valid request.
fn expected_status(probe: &Probe) -> StatusCode {
    let declared_json = probe.content_type.as_ref().is_some_and(|value| {
        let essence = value
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        essence == "application/json"
            || (essence.starts_with("application/") && essence.ends_with("+json"))
    });
    if !declared_json {
        return StatusCode::UNSUPPORTED_MEDIA_TYPE;
    }
    if probe.body.len() > MAX_BODY_BYTES {
        return StatusCode::PAYLOAD_TOO_LARGE;
    }
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&probe.body) else {
        return StatusCode::BAD_REQUEST;
    };
    let field = |name: &str| fields.get(name).filter(|v| !v.is_null());
    // The OpenAI route reads `model` first: another model's name is a 404 whatever follows.
    if probe.path == OPENAI
        && field("model")
            .and_then(Value::as_str)
            .is_some_and(|name| name != MODEL && name != "Qwen3-Embedding-0.6B")
    {
        return StatusCode::NOT_FOUND;
    }
    let is_string = |name: &str| field(name).is_none_or(Value::is_string);
    let is_bool = |name: &str| field(name).is_none_or(Value::is_boolean);
    let one_of =
        |name: &str, allowed: &[&str]| field(name).is_none_or(|v| allowed.iter().any(|a| v == a));
    // A text that truncation will cut is never refused for its length.
    let truncating = probe.path == OPENAI && field("truncate") == Some(&Value::Bool(true));
    let text_ok = |text: &str| truncating || text.chars().count() <= MAX_INPUT_CHARS;
    let input_ok = match field("input") {
        Some(Value::String(text)) => text_ok(text),
        Some(Value::Array(items)) => {
            (1..=MAX_INPUTS).contains(&items.len())
                && items.iter().all(|item| item.as_str().is_some_and(text_ok))
        }
        _ => false,
    };
    let dimensions_ok = field("dimensions").is_none_or(|value| {
        value
            .as_i64()
            .is_some_and(|d| (1..=i64::from(u32::MAX)).contains(&d))
    });
    let valid = input_ok
        && dimensions_ok
        && is_string("instruction")
        && if probe.path == OPENAI {
            is_string("model")
                && one_of("input_type", &["query", "document", "passage"])
                && one_of("encoding_format", &["float", "base64"])
                && is_bool("truncate")
        } else {
            is_bool("is_query")
        };
    if valid {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::BAD_REQUEST
    }
}

fn path() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just(OPENAI), Just(SEED)]
}

/// JSON content types (most of the time), other types, none, and arbitrary header bytes.
fn content_type() -> impl Strategy<Value = Option<HeaderValue>> {
    let fixed = |s: &'static str| Just(Some(HeaderValue::from_static(s)));
    prop_oneof![
        6 => fixed("application/json"),
        1 => fixed("Application/JSON; charset=utf-8"),
        1 => fixed("application/vnd.api+json"),
        1 => fixed("text/plain"),
        1 => fixed("application/x-www-form-urlencoded"),
        1 => Just(None),
        1 => proptest::collection::vec(any::<u8>(), 0..40)
            .prop_filter_map("not a header value", |bytes| HeaderValue::from_bytes(&bytes).ok().map(Some)),
    ]
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,16}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(key(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Field names: the ones the routes read, and others.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop_oneof![
            Just("input"), Just("model"), Just("input_type"), Just("instruction"),
            Just("dimensions"), Just("encoding_format"), Just("truncate"), Just("is_query"),
            Just("user"),
        ]
        .prop_map(String::from),
        1 => "[a-z_]{0,10}",
    ]
}

/// Texts, some over `MAX_INPUT_CHARS` characters, some multi-byte.
fn text() -> impl Strategy<Value = Value> {
    "\\PC{0,16}".prop_map(Value::String)
}

/// A value for field `name`: usually one of its valid shapes, sometimes anything.
fn field_value(name: &'static str) -> BoxedStrategy<Value> {
    let valid = match name {
        "input" => prop_oneof![
            text(),
            proptest::collection::vec(text(), 0..6).prop_map(Value::Array),
        ]
        .boxed(),
        "model" => prop_oneof![
            Just(Value::from(MODEL)),
            Just(Value::from("Qwen3-Embedding-0.6B")),
            Just(Value::from("text-embedding-3-small")),
        ]
        .boxed(),
        "input_type" => prop_oneof![
            Just(Value::from("query")),
            Just(Value::from("document")),
            Just(Value::from("passage")),
            Just(Value::from("Query")),
        ]
        .boxed(),
        "encoding_format" => prop_oneof![
            Just(Value::from("float")),
            Just(Value::from("base64")),
            Just(Value::from("binary")),
        ]
        .boxed(),
        "dimensions" => prop_oneof![
            6 => (-2i64..5000).prop_map(Value::from),
            1 => Just(Value::from(u64::from(u32::MAX) + 1)),
            1 => Just(Value::from(64.0)),
        ]
        .boxed(),
        "instruction" => text().boxed(),
        _ => any::<bool>().prop_map(Value::Bool).boxed(),
    };
    prop_oneof![6 => valid, 1 => json_value()].boxed()
}

/// An object of the routes' fields, each present or not (`input` nearly always), with
/// likely or arbitrary values.
fn near_valid_object() -> impl Strategy<Value = Value> {
    let names = [
        "input",
        "model",
        "input_type",
        "instruction",
        "dimensions",
        "encoding_format",
        "truncate",
        "is_query",
    ];
    let fields: Vec<_> = names
        .into_iter()
        .map(|name| {
            let present = if name == "input" { 0.95 } else { 0.4 };
            proptest::option::weighted(present, field_value(name)).prop_map(move |v| (name, v))
        })
        .collect();
    fields.prop_map(|fields| {
        let map: Map<String, Value> = fields
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| (name.to_string(), v)))
            .collect();
        Value::Object(map)
    })
}

/// Runs `strategy` for `cases` seeded cases through one router on one nats-server; returns
/// how many answers had each status.
fn run_property(cases: u32, strategy: impl Strategy<Value = Probe>) -> BTreeMap<u16, usize> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = NatsServer::start();
    let app = runtime.block_on(build_router(&server));
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let statuses = Mutex::new(BTreeMap::new());
    let result = runner.run(&strategy, |probe| {
        let status = runtime.block_on(check(&app, probe))?;
        *statuses
            .lock()
            .expect("no panic holds the lock")
            .entry(status.as_u16())
            .or_default() += 1;
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    statuses.into_inner().expect("no panic held the lock")
}

#[test]
fn arbitrary_bytes_get_a_clear_error() {
    let body = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(any::<u8>(), 0..2 * MAX_BODY_BYTES),
        // Mostly printable text with JSON punctuation, closer to what parsers trip on.
        "[{}\\[\\]\":,0-9a-z \\\\u]{0,80}".prop_map(String::into_bytes),
    ];
    let statuses = run_property(
        512,
        (path(), content_type(), body).prop_map(|(path, content_type, body)| Probe {
            path,
            content_type,
            body,
        }),
    );
    // Each refusal path was taken: not JSON, too large, not parseable.
    for status in [400, 413, 415] {
        assert!(statuses.get(&status) > Some(&10), "{statuses:?}");
    }
}

#[test]
fn arbitrary_json_gets_a_clear_error_or_reaches_the_bus() {
    let statuses = run_property(
        512,
        (path(), content_type(), json_value()).prop_map(|(path, content_type, value)| Probe {
            path,
            content_type,
            body: value.to_string().into_bytes(),
        }),
    );
    for status in [400, 415] {
        assert!(statuses.get(&status) > Some(&10), "{statuses:?}");
    }
}

#[test]
fn fields_with_arbitrary_values_are_accepted_exactly_when_valid() {
    let json = Just(Some(HeaderValue::from_static("application/json")));
    let statuses = run_property(
        1024,
        (path(), json, near_valid_object()).prop_map(|(path, content_type, value)| Probe {
            path,
            content_type,
            body: value.to_string().into_bytes(),
        }),
    );
    // Both sides of the rules were exercised: valid requests reached the bus, invalid ones
    // were refused, and another model's name was a 404.
    for status in [400, 503] {
        assert!(statuses.get(&status) > Some(&50), "{statuses:?}");
    }
    assert!(statuses.get(&404) > Some(&5), "{statuses:?}");
}
