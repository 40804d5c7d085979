//! The retrieval example of `docs/retrieval.md` (`docs/examples/retrieval.py`) run end to end
//! against the whole stack: embedding workers on the qwen3-tiny fixture, rerank workers on
//! the qwen3-tiny-reranker fixture, and the gateway. Its search must be the cosine ranking of
//! the gateway's own vectors, and its reranked scores those of the rerank subject.

mod support;

use std::time::Duration;

use common::wire::{RerankRequest, WorkerKind};
use e2e_tests::{NatsServer, repo_root, tiny_model_dir, tiny_reranker_dir};
use serde_json::{Value, json};
use support::{
    gateway_config, nats_config, rerank_over_nats, start_gpu, start_rerank_gpu,
    start_rerank_tokenizer, start_tokenizer, wait_for_kinds, wait_healthy,
};

const QUERY: &str = "What is the capital of China?";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrieval_example_embeds_searches_and_reranks() {
    let python = repo_root().join(".venv/bin/python");
    let example = repo_root().join("docs/examples/retrieval.py");
    let doc = std::fs::read_to_string(repo_root().join("docs/retrieval.md")).expect("doc");
    let source = std::fs::read_to_string(&example).expect("example exists");
    assert!(
        doc.contains(source.trim()),
        "docs/retrieval.md must show docs/examples/retrieval.py verbatim"
    );

    let server = NatsServer::start();
    let stages = [
        start_tokenizer(&server, &tiny_model_dir()),
        start_gpu(&server, &tiny_model_dir()),
        start_rerank_tokenizer(&server, &tiny_reranker_dir()),
        start_rerank_gpu(&server, &tiny_reranker_dir()),
    ];
    let client = async_nats::connect(server.url()).await.unwrap();
    wait_for_kinds(
        &client,
        &[
            (WorkerKind::Tokenizer, 1),
            (WorkerKind::Gpu, 1),
            (WorkerKind::RerankTokenizer, 1),
            (WorkerKind::RerankGpu, 1),
        ],
    )
    .await;
    let gateway = gateway::spawn(gateway_config(nats_config(&server)))
        .await
        .unwrap();
    let base = gateway.url();
    let http = reqwest::Client::new();
    wait_healthy(&http, &base, Duration::from_secs(10)).await;

    let output = tokio::process::Command::new(&python)
        .arg(&example)
        .args(["--url", &base, "--top-k", "3", QUERY])
        .output()
        .await
        .expect("run the example");
    assert!(
        output.status.success(),
        "example failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: Value = serde_json::from_slice(&output.stdout).expect("JSON output");

    // The corpus, as the example defines it.
    let corpus_json = tokio::process::Command::new(&python)
        .current_dir(repo_root().join("docs/examples"))
        .args([
            "-c",
            "import json, retrieval; print(json.dumps(retrieval.CORPUS))",
        ])
        .output()
        .await
        .expect("read the corpus");
    let corpus: Vec<String> = serde_json::from_slice(&corpus_json.stdout).expect("corpus");

    // 1. Search: the top 3 by cosine of the gateway's vectors, best first.
    let embed = |input: Value, input_type: &str| {
        let request = http
            .post(format!("{base}/v1/embeddings"))
            .json(&json!({"input": input, "input_type": input_type}));
        async move {
            let body: Value = request.send().await.unwrap().json().await.unwrap();
            body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| support::floats(&d["embedding"]))
                .collect::<Vec<_>>()
        }
    };
    let documents = embed(json!(corpus), "document").await;
    let query = embed(json!([QUERY]), "query").await.remove(0);
    let cosine = |v: &[f32]| {
        let dot: f32 = v.iter().zip(&query).map(|(a, b)| a * b).sum();
        let norm = |x: &[f32]| x.iter().map(|a| a * a).sum::<f32>().sqrt();
        dot / (norm(v) * norm(&query))
    };
    let mut order: Vec<usize> = (0..corpus.len()).collect();
    order.sort_by(|&a, &b| cosine(&documents[b]).total_cmp(&cosine(&documents[a])));
    let search = answer["search"].as_array().unwrap();
    assert_eq!(search.len(), 3, "{answer}");
    for (rank, hit) in search.iter().enumerate() {
        let index = hit["index"].as_u64().unwrap() as usize;
        assert_eq!(index, order[rank], "{answer}");
        let got = hit["cosine"].as_f64().unwrap() as f32;
        assert!((got - cosine(&documents[index])).abs() < 1e-5, "{answer}");
    }

    // 2. Rerank: the same three documents, scored as the rerank subject scores them, best
    //    first.
    let reranked = answer["reranked"].as_array().unwrap();
    let mut indices: Vec<usize> = reranked
        .iter()
        .map(|r| r["index"].as_u64().unwrap() as usize)
        .collect();
    let scores: Vec<f32> = reranked
        .iter()
        .map(|r| r["score"].as_f64().unwrap() as f32)
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{answer}");
    let direct = rerank_over_nats(
        &client,
        &RerankRequest {
            id: "direct".into(),
            query: QUERY.into(),
            documents: indices.iter().map(|&i| corpus[i].clone()).collect(),
            instruction: None,
            truncate: None,
            deadline_ms: None,
            timeout_ms: None,
            ack: false,
            ..Default::default()
        },
    )
    .await
    .expect("scores");
    for (k, answer) in direct.iter().enumerate() {
        assert!(
            (answer.score - scores[k]).abs() <= 1e-6,
            "document {}",
            indices[k]
        );
    }
    indices.sort_unstable();
    let mut searched: Vec<usize> = order[..3].to_vec();
    searched.sort_unstable();
    assert_eq!(indices, searched);

    gateway.shutdown().await.unwrap();
    for stage in stages {
        stage.stop().await.unwrap();
    }
}
