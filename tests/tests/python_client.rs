//! The Python client example of `docs/protocol.md` (`docs/examples/nats_client.py`) run
//! against the real stack: its vectors must be the golden ones.

mod support;

use e2e_tests::{NatsServer, repo_root, tiny_model_dir};
use support::{start_gpu, start_tokenizer, wait_for_workers};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_example_client_gets_golden_vectors() {
    let python = repo_root().join(".venv/bin/python");
    let example = repo_root().join("docs/examples/nats_client.py");
    let protocol =
        std::fs::read_to_string(repo_root().join("docs/protocol.md")).expect("docs/protocol.md");
    let source = std::fs::read_to_string(&example).expect("example exists");
    assert!(
        protocol.contains(source.trim()),
        "docs/protocol.md must show docs/examples/nats_client.py verbatim"
    );

    let server = NatsServer::start();
    let model = tiny_model_dir();
    let tokenizer = start_tokenizer(&server, &model);
    let gpu = start_gpu(&server, &model);
    let client = async_nats::connect(server.url()).await.unwrap();
    wait_for_workers(&client).await;

    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("golden.json")).unwrap()).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    let document = cases.iter().find(|c| c["id"] == "doc_passage").unwrap();
    let query = cases
        .iter()
        .find(|c| c["id"] == "query_custom_task")
        .unwrap();

    for (case, extra) in [
        (document, vec![]),
        (
            query,
            vec![
                "--query".to_string(),
                "--instruction".into(),
                query["instruction"].as_str().unwrap().into(),
            ],
        ),
    ] {
        let output = tokio::process::Command::new(&python)
            .arg(&example)
            .args(["--url", &server.url()])
            .args(&extra)
            .arg(case["text"].as_str().unwrap())
            .output()
            .await
            .expect("run the example (deploy/local/setup.sh installs nats-py and msgpack)");
        assert!(
            output.status.success(),
            "example failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let answer: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("JSON output");
        let got = answer["vectors"][0].as_array().unwrap();
        let want = case["embedding"].as_array().unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            let diff = (g.as_f64().unwrap() - w.as_f64().unwrap()).abs();
            assert!(diff < 2e-5, "case {}: diff {diff}", case["id"]);
        }
        assert_eq!(answer["tokens"][0], case["num_tokens"]);
    }

    gpu.stop().await.unwrap();
    tokenizer.stop().await.unwrap();
}
