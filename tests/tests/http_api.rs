//! The HTTP APIs end to end: gateway, tokenizer and GPU workers over a real nats-server, the
//! qwen3-tiny fixture's golden vectors through the seed route and the OpenAI route, batching
//! under concurrency, deadlines and graceful shutdown.

mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use e2e_tests::{NatsServer, tiny_model_dir};
use gateway::GatewayConfig;
use serde_json::{Value, json};
use support::{
    floats, gateway_config, golden, max_abs_diff, nats_config, start_gpu, start_tokenizer,
    wait_for_worker_counts, wait_for_workers, wait_healthy,
};

/// How long a new gateway may take to report healthy.
const HEALTH_PATIENCE: Duration = Duration::from_secs(20);

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let diff = max_abs_diff(got, want);
    assert!(diff < 2e-5, "{what}: max abs diff {diff}");
}

async fn post(client: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let response = client
        .post(url)
        .json(&body)
        .send()
        .await
        .expect("request sent");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_vectors_through_seed_and_openai_routes() {
    let server = NatsServer::start();
    let model = tiny_model_dir();
    let tokenizer = start_tokenizer(&server, &model);
    let gpu = start_gpu(&server, &model);
    let nats = async_nats::connect(server.url()).await.unwrap();
    wait_for_workers(&nats).await;
    let gateway = gateway::spawn(gateway_config(nats_config(&server)))
        .await
        .unwrap();
    let base = gateway.url();
    let http = reqwest::Client::new();
    let golden = golden();
    let cases = golden["cases"].as_array().unwrap();

    wait_healthy(&http, &base, HEALTH_PATIENCE).await;

    // Seed route: one request per case, queries with their instruction.
    for case in cases {
        let mut body = json!({"input": [case["text"]], "is_query": case["is_query"]});
        if case["is_query"] == true {
            body["instruction"] = case["instruction"].clone();
        }
        let (status, answer) = post(&http, &format!("{base}/api/v1/embedding/api"), body).await;
        assert_eq!(status, 200, "{answer}");
        assert_close(
            &floats(&answer[0]),
            &floats(&case["embedding"]),
            case["id"].as_str().unwrap(),
        );
    }

    // OpenAI route: all documents in one request, in order, usage counting every token.
    let documents: Vec<&Value> = cases.iter().filter(|c| c["is_query"] == false).collect();
    let body = json!({"model": "qwen3-tiny", "input": documents.iter().map(|c| c["text"].clone()).collect::<Vec<_>>()});
    let (status, answer) = post(&http, &format!("{base}/v1/embeddings"), body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["object"], "list");
    let tokens: u64 = documents
        .iter()
        .map(|c| c["num_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(answer["usage"]["prompt_tokens"], tokens);
    assert_eq!(answer["usage"]["total_tokens"], tokens);
    for (i, case) in documents.iter().enumerate() {
        assert_eq!(answer["data"][i]["index"], i);
        assert_close(
            &floats(&answer["data"][i]["embedding"]),
            &floats(&case["embedding"]),
            "openai document",
        );
    }

    // OpenAI route: a query with its instruction, Matryoshka dimensions, base64 encoding.
    let query = cases.iter().find(|c| c["id"] == "query_web_1").unwrap();
    let mrl = golden["mrl"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "query_web_1")
        .unwrap();
    let body = json!({
        "input": query["text"], "input_type": "query", "instruction": query["instruction"],
        "dimensions": mrl["dim"], "encoding_format": "base64",
    });
    let (status, answer) = post(&http, &format!("{base}/v1/embeddings"), body).await;
    assert_eq!(status, 200, "{answer}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(answer["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_close(
        &decoded,
        &floats(&mrl["embedding"]),
        "base64 Matryoshka query",
    );
    assert_eq!(answer["usage"]["total_tokens"], query["num_tokens"]);

    // An unknown model is a 404 naming the served one.
    let (status, answer) = post(
        &http,
        &format!("{base}/v1/embeddings"),
        json!({"model": "other", "input": "x"}),
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("qwen3-tiny"),
        "{answer}"
    );

    // Too many tokens without truncation: a 4xx naming the length.
    let (status, answer) = post(
        &http,
        &format!("{base}/v1/embeddings"),
        json!({"input": "word ".repeat(33_000)}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("32768"),
        "{answer}"
    );

    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("embed_http_requests_total"), "{metrics}");
    // Worker counters come from discovery (cached for status_cache_ms): wait for a fresh one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gpu_sequences: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("embed_worker_sequences_total{kind=\"gpu\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no GPU sequence counter in {metrics}"));
    assert!(gpu_sequences >= cases.len() as f64, "{gpu_sequences}");

    gateway.shutdown().await.unwrap();
    gpu.stop().await.unwrap();
    tokenizer.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mixed_requests_are_all_correct_while_workers_stop_gracefully() {
    let server = NatsServer::start();
    let model = tiny_model_dir();
    let tokenizers = [
        start_tokenizer(&server, &model),
        start_tokenizer(&server, &model),
    ];
    let gpus = [start_gpu(&server, &model), start_gpu(&server, &model)];
    let nats = async_nats::connect(server.url()).await.unwrap();
    // Both of each must serve before one of each stops, or the stop leaves no one listening.
    wait_for_worker_counts(&nats, 2, 2).await;
    let gateway = gateway::spawn(GatewayConfig {
        max_concurrent_queries: 1000,
        ..gateway_config(nats_config(&server))
    })
    .await
    .unwrap();
    let base = gateway.url();
    let http = reqwest::Client::new();
    wait_healthy(&http, &base, HEALTH_PATIENCE).await;
    let golden = golden();
    let cases: Vec<Value> = golden["cases"].as_array().unwrap().clone();

    let mut tasks = Vec::new();
    for n in 0..400usize {
        let picked: Vec<Value> = (0..1 + n % 3)
            .map(|k| cases[(n * 5 + k * 7) % cases.len()].clone())
            .collect();
        let kind = picked[0]["is_query"].as_bool().unwrap();
        let picked: Vec<Value> = picked
            .into_iter()
            .filter(|c| c["is_query"].as_bool() == Some(kind))
            .collect();
        let instruction = picked[0]["instruction"].clone();
        let picked: Vec<Value> = picked
            .into_iter()
            .filter(|c| c["instruction"] == instruction)
            .collect();
        let (http, base) = (http.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let texts: Vec<Value> = picked.iter().map(|c| c["text"].clone()).collect();
            let vectors: Vec<Vec<f32>> = if n % 2 == 0 {
                let mut body = json!({"input": texts, "is_query": kind});
                if kind {
                    body["instruction"] = instruction;
                }
                let (status, answer) =
                    post(&http, &format!("{base}/api/v1/embedding/api"), body).await;
                assert_eq!(status, 200, "{answer}");
                answer.as_array().unwrap().iter().map(floats).collect()
            } else {
                let mut body =
                    json!({"input": texts, "input_type": if kind { "query" } else { "document" }});
                if kind {
                    body["instruction"] = instruction;
                }
                let (status, answer) = post(&http, &format!("{base}/v1/embeddings"), body).await;
                assert_eq!(status, 200, "{answer}");
                answer["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| floats(&d["embedding"]))
                    .collect()
            };
            for (got, case) in vectors.iter().zip(&picked) {
                assert_close(got, &floats(&case["embedding"]), &format!("request {n}"));
            }
        }));
    }
    // Mid-load, one tokenizer worker and one GPU worker drain and stop: every request they
    // accepted still completes.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let [tokenizer_a, tokenizer_b] = tokenizers;
    let [gpu_a, gpu_b] = gpus;
    let stopping = tokio::spawn(async move {
        tokenizer_a.stop().await.unwrap();
        gpu_a.stop().await.unwrap();
    });
    for task in tasks {
        task.await.unwrap();
    }
    stopping.await.unwrap();

    gateway.shutdown().await.unwrap();
    gpu_b.stop().await.unwrap();
    tokenizer_b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_past_its_deadline_in_the_queue_gets_504_and_its_work_is_dropped() {
    let server = NatsServer::start();
    let model = tiny_model_dir();
    let tokenizer = start_tokenizer(&server, &model);
    let gpu = start_gpu(&server, &model);
    let nats = async_nats::connect(server.url()).await.unwrap();
    wait_for_workers(&nats).await;
    let gateway = gateway::spawn(GatewayConfig {
        request_timeout_s: 0.5,
        ..gateway_config(nats_config(&server))
    })
    .await
    .unwrap();
    let http = reqwest::Client::new();
    wait_healthy(&http, &gateway.url(), HEALTH_PATIENCE).await;
    // No GPU worker: the batch waits in the work queue until the deadline passes.
    gpu.stop().await.unwrap();
    let started = Instant::now();
    let (status, answer) = post(
        &http,
        &format!("{}/v1/embeddings", gateway.url()),
        json!({"input": "late text"}),
    )
    .await;
    assert_eq!(status, 504, "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "504 took {:?}",
        started.elapsed()
    );

    // The server drops the batch once its time ran out (its TTL, whole seconds, on the
    // server's clock), so a GPU worker that comes back does not compute it.
    let js = async_nats::jetstream::new(nats.clone());
    let mut stream = js.get_stream("EMBED_BATCHES").await.unwrap();
    let dropped_by = Instant::now() + Duration::from_secs(10);
    while stream.info().await.unwrap().state.messages > 0 {
        assert!(
            Instant::now() < dropped_by,
            "the expired batch stays in the work queue"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gpu = start_gpu(&server, &model);
    wait_for_workers(&nats).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let statuses = support::worker_statuses(&nats).await;
    let gpu_status = statuses
        .iter()
        .find(|s| s.kind == common::wire::WorkerKind::Gpu)
        .unwrap();
    assert_eq!(
        gpu_status.sequences, 0,
        "the expired sequence was computed: {gpu_status:?}"
    );

    // And the service still answers.
    let (status, answer) = post(
        &http,
        &format!("{}/v1/embeddings", gateway.url()),
        json!({"input": "on time"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");

    gateway.shutdown().await.unwrap();
    gpu.stop().await.unwrap();
    tokenizer.stop().await.unwrap();
}
