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

use std::sync::Arc;
use std::time::Duration;

use common::wire::WorkerKind;
use e2e_tests::NatsServer;
use e2e_tests::process::{Pipeline, Worker};
use serde_json::{Value, json};
use support::{golden_rerank, wait_for_kinds};
use tokio::sync::watch;
use tokio::time::Instant;

/// Settings of every process: requests have 15 s; tokenizer acknowledgements are awaited
/// 1 s (the default); a dead GPU worker's batches come back after 2 s.
const ENV: &[(&str, &str)] = &[
    ("QWEN3_EMBED__QUEUE__ACK_WAIT_S", "2"),
    ("QWEN3_EMBED__GATEWAY__REQUEST_TIMEOUT_S", "15"),
    ("QWEN3_EMBED__GATEWAY__TOKENIZER_ACK_TIMEOUT_MS", "1000"),
];

/// The gateway's deadline in these tests (`ENV`).
const DEADLINE: Duration = Duration::from_secs(15);

/// Concurrent HTTP clients of the load.
const CLIENTS: usize = 4;

/// Largest difference from a golden score accepted (as in `rerank_api.rs`).
const TOLERANCE: f32 = 1e-5;

/// How long the HTTP client waits for one answer; above the gateway's deadline, so a request
/// the gateway lets hang shows up as a failure, not a client timeout.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

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

/// One rerank request and the scores it must produce, in document order.
#[derive(Debug, Clone)]
struct Template {
    /// The `POST /v1/rerank` body.
    body: Value,
    /// The golden score of each document.
    expected: Vec<f32>,
    /// For messages.
    name: String,
}

/// Every golden pair as a request of its own, and the first pair's document three times
/// under its query (a request of several documents).
fn templates() -> Vec<Template> {
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
            expected: vec![score(case)],
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
        expected: vec![score(first); 3],
        name: format!("pair {} x3", first["id"]),
    });
    templates
}

/// What became of one request.
#[derive(Debug)]
struct Record {
    /// How long the answer took.
    took: Duration,
    /// `None` when every score matched; else what went wrong.
    failure: Option<String>,
}

/// Sends one request and checks its answer's scores.
async fn send(http: &reqwest::Client, base: &str, template: &Template) -> Record {
    let started = Instant::now();
    let failure = match http
        .post(format!("{base}/v1/rerank"))
        .json(&template.body)
        .send()
        .await
    {
        Err(e) => Some(format!("{}: no answer: {e}", template.name)),
        Ok(response) => {
            let status = response.status().as_u16();
            match response.json::<Value>().await {
                Err(e) => Some(format!("{}: unreadable body: {e}", template.name)),
                Ok(body) if status != 200 => Some(format!("{}: {status} {body}", template.name)),
                Ok(body) => check(template, &body).err(),
            }
        }
    };
    Record {
        took: started.elapsed(),
        failure,
    }
}

/// Compares the answer's score of every document with the golden one.
fn check(template: &Template, body: &Value) -> Result<(), String> {
    let results = body["results"]
        .as_array()
        .ok_or_else(|| format!("{}: no results: {body}", template.name))?;
    if results.len() != template.expected.len() {
        return Err(format!(
            "{}: {} results for {} documents",
            template.name,
            results.len(),
            template.expected.len()
        ));
    }
    for result in results {
        let index = result["index"].as_u64().unwrap_or(u64::MAX) as usize;
        let want = template
            .expected
            .get(index)
            .ok_or_else(|| format!("{}: result index {index}", template.name))?;
        let got = result["relevance_score"].as_f64().unwrap_or(f64::NAN) as f32;
        if (got - want).abs() > TOLERANCE || got.is_nan() {
            return Err(format!(
                "{}: document {index} scored {got}, golden {want}",
                template.name
            ));
        }
    }
    Ok(())
}

/// Starts `CLIENTS` clients sending the templates one after the other until `stop` turns
/// true; each returns its records.
fn start_load(
    base: &str,
    stop: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<Vec<Record>>> {
    let templates = Arc::new(templates());
    let http = reqwest::Client::builder()
        .timeout(CLIENT_TIMEOUT)
        .build()
        .expect("HTTP client");
    (0..CLIENTS)
        .map(|i| {
            let (templates, http, base, stop) = (
                templates.clone(),
                http.clone(),
                base.to_string(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut records = Vec::new();
                let mut next = i * 3;
                while !*stop.borrow() {
                    records.push(send(&http, &base, &templates[next % templates.len()]).await);
                    next += 1;
                }
                records
            })
        })
        .collect()
}

/// Polls with a one-document request until the gateway at `base` answers 200.
async fn wait_serving(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let http = reqwest::Client::new();
    loop {
        let answered = http
            .post(format!("{base}/v1/rerank"))
            .json(&json!({"query": "ready?", "documents": ["yes"]}))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if answered {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never served a rerank request"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Freezes a process with SIGSTOP: it holds what it took and answers nothing.
fn freeze(worker: &Worker) {
    let status = std::process::Command::new("kill")
        .args(["-STOP", &worker.pid().to_string()])
        .status()
        .expect("run kill(1)");
    assert!(status.success(), "kill -STOP {} failed", worker.pid());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_tokenizer_killed_under_load_loses_no_request() {
    let server = NatsServer::start();
    let pipeline = Pipeline::new(server.url(), ENV);
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
    wait_serving(&base).await;

    let (stop, stopped) = watch::channel(false);
    let clients = start_load(&base, &stopped);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Frozen first, so requests surely reach it and are never answered: the gateway must
    // publish them again when no acknowledgement comes.
    freeze(&tokenizers[0]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokenizers[0].kill9();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let _ = stop.send(true);
    let mut records = Vec::new();
    for client in clients {
        records.extend(client.await.expect("a load client panicked"));
    }

    let failed: Vec<&String> = records.iter().filter_map(|r| r.failure.as_ref()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} rerank requests failed: {:#?}",
        failed.len(),
        records.len(),
        &failed[..failed.len().min(10)]
    );
    assert!(records.len() >= 20, "only {} requests ran", records.len());
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
