//! Deadlines between machines whose wall clocks disagree, with a real nats-server and the
//! real binaries as child processes: a tokenizer worker whose clock runs a minute behind, or
//! a minute ahead of, the gateway's (libfaketime preloaded, [`skewed_clock`]) serves every
//! request through the gateway, golden vectors included, and a NATS request that gives only
//! `timeout_ms`. Deadlines travel as a remaining budget measured from receipt on each
//! process's monotonic clock, so no stage compares its wall clock with another's (issue 18).
//! Before that, the same tokenizer worker refused every request: `invalid_request` (the
//! gateway's deadline 80 s away on its clock, past `max_age_s`) a minute behind, and
//! `deadline_exceeded` a minute ahead.
//!
//! The binaries must be built first: `cargo build --workspace --bins`; libfaketime comes
//! with `deploy/local/setup.sh`.

mod support;

use std::time::Duration;

use common::wire::{self, EmbedRequest, InputType, WorkerKind};
use e2e_tests::NatsServer;
use e2e_tests::harness::serial;
use e2e_tests::process::{Pipeline, skewed_clock};
use serde_json::{Value, json};
use support::{embed_over_nats, floats, golden, max_abs_diff, wait_healthy, worker_statuses};

/// Settings of every process: requests have 20 s, and the work queue keeps a batch 45 s, so
/// a tokenizer worker that read the gateway's absolute deadline on a clock a minute behind
/// would find it 80 s away, past `max_age_s`, and refuse the request.
const ENV: &[(&str, &str)] = &[
    ("QWEN3_EMBED__QUEUE__MAX_AGE_S", "45"),
    ("QWEN3_EMBED__GATEWAY__REQUEST_TIMEOUT_S", "20"),
];

/// How far the skewed process's wall clock is off, in seconds.
const SKEW_S: i64 = 60;

/// Waits until exactly one worker of `kind` answers the status subject and returns how far
/// its wall clock is ahead of this process's (negative: behind), from its `started_ms`. It
/// started a few seconds ago at most, so the result is its clock offset within seconds.
async fn clock_offset_ms(nats: &async_nats::Client, kind: WorkerKind) -> i64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let statuses = worker_statuses(nats).await;
        let of_kind: Vec<_> = statuses.iter().filter(|s| s.kind == kind).collect();
        if let [status] = of_kind[..] {
            return status.started_ms as i64 - wire::now_ms() as i64;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no single {kind:?} worker answered: {statuses:?}"
        );
    }
}

/// Checks that a worker of `kind` runs with its clock `offset_s` seconds off: libfaketime is
/// loaded and shifts what Rust's `SystemTime::now()` reads there.
async fn assert_clock_offset(nats: &async_nats::Client, kind: WorkerKind, offset_s: i64) {
    let offset_ms = clock_offset_ms(nats, kind).await;
    let want_ms = offset_s * 1000;
    assert!(
        (offset_ms - want_ms).abs() < 15_000,
        "the {kind:?} worker's clock is {offset_ms} ms off, not about {want_ms} ms: is \
         libfaketime preloaded?"
    );
}

/// Sends every golden case through the gateway's seed route, one request each, and checks
/// that each is answered 200 with its golden vector.
async fn assert_golden_through_gateway(http: &reqwest::Client, base: &str, what: &str) {
    let golden = golden();
    for case in golden["cases"].as_array().expect("cases") {
        let mut body = json!({"input": [case["text"]], "is_query": case["is_query"]});
        if case["is_query"] == true {
            body["instruction"] = case["instruction"].clone();
        }
        let response = http
            .post(format!("{base}/api/v1/embedding/api"))
            .json(&body)
            .send()
            .await
            .expect("request sent");
        let status = response.status().as_u16();
        let answer: Value = response.json().await.expect("JSON body");
        let id = case["id"].as_str().expect("case id");
        assert_eq!(status, 200, "{what}, case {id}: {answer}");
        let diff = max_abs_diff(&floats(&answer[0]), &floats(&case["embedding"]));
        assert!(diff < 2e-5, "{what}, case {id}: max abs diff {diff}");
    }
}

/// Sends every golden document straight on the NATS API, in one request that gives only
/// `timeout_ms` (no absolute deadline), and checks the vectors.
async fn assert_golden_over_nats_with_a_timeout(nats: &async_nats::Client, what: &str) {
    let golden = golden();
    let documents: Vec<&Value> = golden["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .filter(|case| case["is_query"] == false)
        .collect();
    let request = EmbedRequest {
        id: format!("timeout-only {what}"),
        input: documents
            .iter()
            .map(|case| case["text"].as_str().expect("text").to_string())
            .collect(),
        input_type: InputType::Document,
        instruction: None,
        dimensions: None,
        truncate: None,
        deadline_ms: None,
        timeout_ms: Some(20_000),
        ack: true,
        bundle_to: None,
        ..Default::default()
    };
    let (vectors, _) = embed_over_nats(nats, &request)
        .await
        .unwrap_or_else(|error| panic!("{what}: {error:?}"));
    for (vector, case) in vectors.iter().zip(&documents) {
        let diff = max_abs_diff(vector, &floats(&case["embedding"]));
        assert!(
            diff < 2e-5,
            "{what}, case {}: max abs diff {diff}",
            case["id"]
        );
    }
}

/// A GPU worker and a gateway on the machine's clock; then, one after the other, a tokenizer
/// worker a minute behind and one a minute ahead: each serves every request.
#[test]
fn a_tokenizer_whose_clock_is_a_minute_off_serves_every_request() {
    serial(async {
        let server = NatsServer::start();
        let pipeline = Pipeline::new(server.url(), ENV);
        let nats = async_nats::connect(server.url()).await.expect("connect");
        let _gpu = pipeline.gpu("gpu");
        let (_gateway, base) = pipeline.gateway("gateway");
        let http = reqwest::Client::new();
        for offset_s in [-SKEW_S, SKEW_S] {
            let what = format!("tokenizer clock {offset_s:+} s");
            let mut tokenizer = pipeline
                .tokenizer_with(&format!("tokenizer{offset_s:+}s"), &skewed_clock(offset_s));
            assert_clock_offset(&nats, WorkerKind::Tokenizer, offset_s).await;
            wait_healthy(&http, &base, Duration::from_secs(30)).await;
            assert_golden_through_gateway(&http, &base, &what).await;
            assert_golden_over_nats_with_a_timeout(&nats, &what).await;
            tokenizer.kill9();
        }
    });
}

/// Every stage on its own clock: a gateway on the machine's, a tokenizer worker a minute
/// behind with a GPU worker a minute ahead, then the other way round. Every request is
/// served, through the gateway and on the NATS API with only `timeout_ms`.
#[test]
fn every_stage_on_its_own_clock_serves_every_request() {
    serial(async {
        let server = NatsServer::start();
        let pipeline = Pipeline::new(server.url(), ENV);
        let nats = async_nats::connect(server.url()).await.expect("connect");
        let (_gateway, base) = pipeline.gateway("gateway");
        let http = reqwest::Client::new();
        for offset_s in [-SKEW_S, SKEW_S] {
            let what = format!(
                "tokenizer clock {offset_s:+} s, GPU clock {:+} s",
                -offset_s
            );
            let mut tokenizer = pipeline
                .tokenizer_with(&format!("tokenizer{offset_s:+}s"), &skewed_clock(offset_s));
            let mut gpu =
                pipeline.gpu_with(&format!("gpu{:+}s", -offset_s), &skewed_clock(-offset_s));
            assert_clock_offset(&nats, WorkerKind::Tokenizer, offset_s).await;
            assert_clock_offset(&nats, WorkerKind::Gpu, -offset_s).await;
            wait_healthy(&http, &base, Duration::from_secs(30)).await;
            assert_golden_through_gateway(&http, &base, &what).await;
            assert_golden_over_nats_with_a_timeout(&nats, &what).await;
            tokenizer.kill9();
            gpu.kill9();
        }
    });
}
