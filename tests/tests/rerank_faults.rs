//! A rerank tokenizer worker killed with SIGKILL while it holds requests, with a real
//! nats-server and the real binaries as child processes (two rerank tokenizer workers, a
//! rerank GPU worker on the CPU, a gateway): the gateway publishes the requests that the dead
//! worker never acknowledged again, so every request of a load of concurrent `POST
//! /v1/rerank` requests is answered, each score checked against the qwen3-tiny-reranker
//! golden file, none lost, all within the deadline. The twin of the embedding test in
//! `faults.rs`.
//!
//! The binaries must be built first: `cargo build --workspace --bins`.

mod support;

use std::time::Duration;

use common::wire::WorkerKind;
use e2e_tests::NatsServer;
use e2e_tests::harness::{DEADLINE, FAULT_ENV, signal, wait_serving};
use e2e_tests::load::{Expected, Load, Template, assert_flawless};
use e2e_tests::process::{Pipeline, Worker};
use serde_json::{Value, json};
use support::{golden_rerank, wait_for_kinds};

/// Concurrent HTTP clients of the load.
const CLIENTS: usize = 4;

/// A rerank worker process (`--task rerank`) of binary `binary` on the tiny reranker.
fn rerank_worker(pipeline: &Pipeline, name: &str, binary: &str, extra: &[&str]) -> Worker {
    let mut args = vec![
        "--nats-url".to_string(),
        pipeline.nats_url.clone(),
        "--model-dir".into(),
        e2e_tests::tiny_reranker_dir().display().to_string(),
        "--model-name".into(),
        "qwen3-tiny-reranker".into(),
        "--task".into(),
        "rerank".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    Worker::spawn(name, binary, &args, &pipeline.env)
}

/// Every golden pair as a request of its own, and the first pair's document three times
/// under its query (a request of several documents).
fn rerank_templates() -> Vec<Template> {
    let golden = golden_rerank();
    let cases = golden["cases"].as_array().expect("cases");
    let score = |case: &Value| case["score"].as_f64().expect("score") as f32;
    let mut templates: Vec<Template> = cases
        .iter()
        .map(|case| Template {
            body: json!({
                "query": case["query"],
                "documents": [case["document"]],
                "instruction": case["instruction"],
            }),
            expected: Expected::Scores(vec![score(case)]),
            name: format!("pair {}", case["id"]),
        })
        .collect();
    let first = &cases[0];
    templates.push(Template {
        body: json!({
            "query": first["query"],
            "documents": [first["document"], first["document"], first["document"]],
            "instruction": first["instruction"],
        }),
        expected: Expected::Scores(vec![score(first); 3]),
        name: format!("pair {} x3", first["id"]),
    });
    templates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_tokenizer_killed_under_load_loses_no_request() {
    let server = NatsServer::start();
    let pipeline = Pipeline::new(server.url(), FAULT_ENV);
    let one_thread = ["--threads", "1"];
    let mut tokenizers = [
        rerank_worker(
            &pipeline,
            "rerank-tokenizer-1",
            "tokenizer-worker",
            &one_thread,
        ),
        rerank_worker(
            &pipeline,
            "rerank-tokenizer-2",
            "tokenizer-worker",
            &one_thread,
        ),
    ];
    let _gpu = rerank_worker(
        &pipeline,
        "rerank-gpu-1",
        "gpu-worker",
        &["--backend", "cpu"],
    );
    let nats = async_nats::connect(server.url()).await.expect("connect");
    wait_for_kinds(
        &nats,
        &[(WorkerKind::RerankTokenizer, 2), (WorkerKind::RerankGpu, 1)],
    )
    .await;
    let (_gateway, base) = pipeline.gateway("gateway");
    let probe = json!({"query": "ready?", "documents": ["yes"]});
    wait_serving(&base, "/v1/rerank", probe, Duration::from_secs(30)).await;

    let load = Load::start(&base, CLIENTS, rerank_templates());
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Frozen first, so requests surely reach it and are never answered: the gateway must
    // publish them again when no acknowledgement comes.
    signal(tokenizers[0].pid(), "STOP");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokenizers[0].kill9();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let records = load.stop().await;

    assert_flawless(&records, "rerank tokenizer worker killed");
    let slowest = records.iter().map(|r| r.took).max().unwrap_or_default();
    assert!(slowest < DEADLINE, "a request took {slowest:?}");
    let debug: Value = reqwest::get(format!("{base}/debug"))
        .await
        .expect("debug answers")
        .json()
        .await
        .expect("debug is JSON");
    assert!(
        debug["upstream_resends"].as_u64().unwrap_or(0) > 0,
        "the frozen tokenizer's requests were never published again: {debug}"
    );
    assert!(
        tokenizers[1].is_running(),
        "the other tokenizer worker died"
    );
}
