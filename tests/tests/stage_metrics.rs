//! Per-stage telemetry, end to end: a real nats-server, a tokenizer worker and CPU GPU
//! workers (child processes) on the tiny fixture, and the gateway; requests of every kind
//! (direct-path hits, direct-path fallbacks, bulk work through the work queue, one the
//! tokenizer worker refuses), then the gateway's `/metrics`: every stage histogram counts
//! each request served once, per model, lane and path; the direct-path counter splits the
//! offered requests into hits and fallbacks; the input-length histogram adds up to the
//! usage the answers reported; the GPU worker's busy time is exported.
//!
//! No timing assertions: only counts, labels and sums the answers themselves determine.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use e2e_tests::NatsServer;
use e2e_tests::process::{Pipeline, Worker};
use serde_json::{Value, json};
use support::{gateway_config, nats_config, wait_for_worker_counts, wait_healthy};

/// The model name every worker reports (the pipeline's `--model-name`).
const MODEL: &str = "qwen3-tiny";

/// Requests offered on the direct path and taken (a GPU worker that takes every offer).
const HITS: usize = 4;

/// Requests offered on the direct path and refused (no GPU worker takes offers).
const FALLBACKS: usize = 3;

/// Requests sent as bulk work (never offered).
const BULK: usize = 2;

/// One metric sample: its labels and value.
type Sample = (BTreeMap<String, String>, f64);

/// The samples of metric `name` (exactly that name, any labels) in a Prometheus text page.
fn samples(page: &str, name: &str) -> Vec<Sample> {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .filter_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    Some((key.to_string(), value.trim_matches('"').to_string()))
                })
                .collect();
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

/// The sum of metric `name`'s samples whose labels include every pair of `filter`.
fn total(page: &str, name: &str, filter: &[(&str, &str)]) -> f64 {
    samples(page, name)
        .iter()
        .filter(|(labels, _)| {
            filter
                .iter()
                .all(|(key, value)| labels.get(*key).map(String::as_str) == Some(*value))
        })
        .map(|(_, value)| value)
        .sum()
}

/// Embeds `texts` through the gateway (with `priority` when given); the prompt tokens the
/// answer reports.
async fn embed(
    http: &reqwest::Client,
    base: &str,
    texts: &[String],
    priority: Option<&str>,
) -> u64 {
    let mut body = json!({"model": MODEL, "input": texts});
    if let Some(priority) = priority {
        body["priority"] = json!(priority);
    }
    let response = http
        .post(format!("{base}/v1/embeddings"))
        .json(&body)
        .send()
        .await
        .expect("the gateway answers");
    let status = response.status();
    let answer: Value = response.json().await.expect("a JSON answer");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"].as_array().unwrap().len(), texts.len());
    answer["usage"]["prompt_tokens"].as_u64().expect("usage")
}

/// The gateway's metrics page.
async fn metrics_page(http: &reqwest::Client, base: &str) -> String {
    let response = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// A GPU worker on the tiny model that takes direct offers when `direct` (with all the time
/// in the world to finish them), or none.
fn gpu_worker(pipeline: &Pipeline, name: &str, direct: bool) -> Worker {
    let wait_ms = if direct { "60000" } else { "0" };
    pipeline.gpu_with(
        name,
        &[("QWEN3_EMBED__GPU__DIRECT_MAX_WAIT_MS", wait_ms.to_string())],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stage_is_observed_once_per_request_served() {
    let server = NatsServer::start();
    // Inputs over 64 tokens are refused (`too_many_tokens`): a request that fails upstream.
    let pipeline = Pipeline::new(
        server.url(),
        &[("QWEN3_EMBED__TOKENIZER__MAX_LENGTH", "64")],
    );
    let _tokenizer = pipeline.tokenizer("tokenizer");
    let mut taking = gpu_worker(&pipeline, "gpu-direct", true);
    let client = async_nats::connect(server.url()).await.unwrap();
    wait_for_worker_counts(&client, 1, 1).await;
    let gateway = gateway::spawn(gateway_config(nats_config(&server)))
        .await
        .expect("the gateway starts");
    let (http, base) = (reqwest::Client::new(), gateway.url());
    wait_healthy(&http, &base, Duration::from_secs(30)).await;

    // Served one at a time by an idle worker that takes every offer: direct-path hits.
    let mut prompt_tokens = 0;
    for n in 0..HITS {
        let texts = vec![format!("direct request number {n}"); n % 2 + 1];
        prompt_tokens += embed(&http, &base, &texts, None).await;
    }

    // A worker that takes no offers: every offer finds no one and falls back to the queue.
    taking.sigterm();
    assert!(
        taking.wait_exit(Duration::from_secs(30)).is_some(),
        "stopped"
    );
    let _declining = gpu_worker(&pipeline, "gpu-queue", false);
    wait_for_worker_counts(&client, 1, 1).await;
    for n in 0..FALLBACKS {
        let texts = vec![format!("fallback request {n}")];
        prompt_tokens += embed(&http, &base, &texts, None).await;
    }
    // Bulk work is never offered: straight to its lane's stream.
    for n in 0..BULK {
        let texts: Vec<String> = (0..3).map(|k| format!("bulk document {n}.{k}")).collect();
        prompt_tokens += embed(&http, &base, &texts, Some("bulk")).await;
    }
    // Admitted, refused by the tokenizer worker: no stage of it is observed.
    let refused = http
        .post(format!("{base}/v1/embeddings"))
        .json(&json!({"model": MODEL, "input": ["word ".repeat(200)]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400, "{:?}", refused.text().await);

    let page = metrics_page(&http, &base).await;
    let served = (HITS + FALLBACKS + BULK) as f64;
    let model = [("model", MODEL)];
    for stage in [
        "embed_stage_tokenize_seconds_count",
        "embed_stage_queue_wait_seconds_count",
        "embed_stage_forward_seconds_count",
        "embed_stage_assembly_seconds_count",
        "embed_batch_sequences_count",
        "embed_batch_tokens_count",
        "embed_request_input_tokens_count",
    ] {
        assert_eq!(total(&page, stage, &model), served, "{stage} in\n{page}");
    }
    // The refused request waited for admission too.
    assert_eq!(
        total(&page, "embed_admission_wait_seconds_count", &model),
        served + 1.0,
        "{page}"
    );
    // Per lane, and per path: only the hits skipped the queue.
    let forward = "embed_stage_forward_seconds_count";
    let lane = |lane| total(&page, forward, &[("model", MODEL), ("lane", lane)]);
    assert_eq!(lane("interactive"), (HITS + FALLBACKS) as f64, "{page}");
    assert_eq!(lane("bulk"), BULK as f64, "{page}");
    let path = |path| total(&page, forward, &[("model", MODEL), ("path", path)]);
    assert_eq!(path("direct"), HITS as f64, "{page}");
    assert_eq!(path("queue"), (FALLBACKS + BULK) as f64, "{page}");
    let wait = "embed_stage_queue_wait_seconds_count";
    assert_eq!(total(&page, wait, &[("path", "direct")]), HITS as f64);
    // Every offered request was a hit or a fallback; bulk work was never offered.
    let outcome = |outcome| {
        total(
            &page,
            "embed_direct_path_total",
            &[("model", MODEL), ("outcome", outcome)],
        )
    };
    assert_eq!(outcome("hit"), HITS as f64, "{page}");
    assert_eq!(outcome("fallback"), FALLBACKS as f64, "{page}");
    assert_eq!(
        outcome("hit") + outcome("fallback"),
        (HITS + FALLBACKS) as f64
    );
    // The input lengths add up to the usage the answers reported.
    let input_tokens = total(&page, "embed_request_input_tokens_sum", &model);
    assert_eq!(input_tokens, prompt_tokens as f64, "{page}");
    // The batch size buckets hold every request (the `+Inf` bucket counts them all).
    let all = [("model", MODEL), ("le", "+Inf")];
    assert_eq!(total(&page, "embed_batch_tokens_bucket", &all), served);
    assert_eq!(total(&page, "embed_batch_sequences_bucket", &all), served);
    // The serving GPU worker's time on the device, from discovery.
    let busy = samples(&page, "embed_gpu_worker_busy_seconds");
    assert!(
        busy.iter()
            .any(|(labels, _)| labels.get("model").map(String::as_str) == Some(MODEL)),
        "no busy time of a GPU worker in\n{page}"
    );

    gateway.shutdown().await.unwrap();
}
