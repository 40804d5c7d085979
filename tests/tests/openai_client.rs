//! The official `openai` Python client against the real stack, through the example of
//! `docs/clients.md` (`docs/examples/openai_client.py`): float and base64 encodings,
//! Matryoshka `dimensions`, queries with an instruction, and an API key.

mod support;

use std::time::Duration;

use e2e_tests::{NatsServer, repo_root, tiny_model_dir};
use serde_json::Value;
use support::{
    floats, gateway_config, golden, max_abs_diff, nats_config, start_gpu, start_tokenizer,
    wait_for_workers, wait_healthy,
};

const API_KEY: &str = "sk-openai-client-test";

/// Runs the example with `args`; its JSON output, or its stderr on failure.
async fn run_example(base_url: &str, api_key: &str, args: &[&str]) -> Result<Value, String> {
    let output = tokio::process::Command::new(repo_root().join(".venv/bin/python"))
        .arg(repo_root().join("docs/examples/openai_client.py"))
        .args([
            "--base-url",
            base_url,
            "--api-key",
            api_key,
            "--model",
            "qwen3-tiny",
        ])
        .args(args)
        .output()
        .await
        .expect("run the example (deploy/local/setup.sh installs the openai package)");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&output.stdout).expect("JSON output"))
}

fn assert_close(got: &Value, want: &Value, what: &str) {
    let (got, want) = (floats(got), floats(want));
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let diff = max_abs_diff(&got, &want);
    assert!(diff < 2e-5, "{what}: max abs diff {diff}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_client_gets_golden_vectors() {
    let clients =
        std::fs::read_to_string(repo_root().join("docs/clients.md")).expect("docs/clients.md");
    let source = std::fs::read_to_string(repo_root().join("docs/examples/openai_client.py"))
        .expect("example exists");
    assert!(
        clients.contains(source.trim()),
        "docs/clients.md must show docs/examples/openai_client.py verbatim"
    );

    let server = NatsServer::start();
    let model = tiny_model_dir();
    let tokenizer = start_tokenizer(&server, &model);
    let gpu = start_gpu(&server, &model);
    let nats = async_nats::connect(server.url()).await.unwrap();
    wait_for_workers(&nats).await;
    let mut config = gateway_config(nats_config(&server));
    config.api_keys = gateway::api_keys::ApiKeys::from_list(API_KEY, "test").unwrap();
    let gateway = gateway::spawn(config).await.unwrap();
    wait_healthy(
        &reqwest::Client::new(),
        &gateway.url(),
        Duration::from_secs(20),
    )
    .await;
    let base_url = format!("{}/v1", gateway.url());

    let golden = golden();
    let cases = golden["cases"].as_array().unwrap();
    let case = |id: &str| cases.iter().find(|c| c["id"] == id).unwrap();
    let mrl = |id: &str| {
        golden["mrl"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap()
    };

    // A wrong key is refused: the client raises AuthenticationError (401).
    let refused = run_example(&base_url, "sk-wrong", &["hello"])
        .await
        .unwrap_err();
    assert!(refused.contains("AuthenticationError"), "{refused}");

    // Every document in one call, floats, in input order.
    let documents: Vec<&Value> = cases.iter().filter(|c| c["is_query"] == false).collect();
    let texts: Vec<&str> = documents
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    let mut args = vec!["--encoding-format", "float"];
    args.extend(&texts);
    let answer = run_example(&base_url, API_KEY, &args).await.unwrap();
    for (i, document) in documents.iter().enumerate() {
        assert_close(
            &answer["vectors"][i],
            &document["embedding"],
            document["id"].as_str().unwrap(),
        );
    }
    let tokens: u64 = documents
        .iter()
        .map(|c| c["num_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(answer["total_tokens"], tokens);

    // A query with its own task, floats.
    let query = case("query_custom_task");
    let answer = run_example(
        &base_url,
        API_KEY,
        &[
            "--query",
            "--instruction",
            query["instruction"].as_str().unwrap(),
            query["text"].as_str().unwrap(),
        ],
    )
    .await
    .unwrap();
    assert_close(
        &answer["vectors"][0],
        &query["embedding"],
        "query_custom_task",
    );

    // Matryoshka sizes in base64: a document and a query, each against its golden prefix
    // normalized again.
    let document = case("en_short");
    let answer = run_example(
        &base_url,
        API_KEY,
        &[
            "--encoding-format",
            "base64",
            "--dimensions",
            &mrl("en_short")["dim"].to_string(),
            document["text"].as_str().unwrap(),
        ],
    )
    .await
    .unwrap();
    assert_close(
        &answer["vectors"][0],
        &mrl("en_short")["embedding"],
        "base64 en_short",
    );
    let query = case("query_web_1");
    let answer = run_example(
        &base_url,
        API_KEY,
        &[
            "--encoding-format",
            "base64",
            "--dimensions",
            &mrl("query_web_1")["dim"].to_string(),
            "--query",
            "--instruction",
            query["instruction"].as_str().unwrap(),
            query["text"].as_str().unwrap(),
        ],
    )
    .await
    .unwrap();
    assert_close(
        &answer["vectors"][0],
        &mrl("query_web_1")["embedding"],
        "base64 query_web_1",
    );
    assert_eq!(answer["total_tokens"], query["num_tokens"]);

    gateway.shutdown().await.unwrap();
    gpu.stop().await.unwrap();
    tokenizer.stop().await.unwrap();
}
