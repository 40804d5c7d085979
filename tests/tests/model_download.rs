//! Models given by Hugging Face id. `deploy/local/run.sh` with an id it cannot fetch:
//! offline (`HF_HUB_OFFLINE=1`) and not in the cache, it must stop at once with a message
//! saying why and what to do, before building or starting anything. The worker binaries
//! given an id: served from a Hugging Face cache (a fake one holding the tiny fixture), and
//! refused at once, saying what to do, when it is not cached and the Hub is forbidden or
//! unreachable.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e_tests::process::{Pipeline, Worker};
use e2e_tests::{NatsServer, free_port, repo_root, tiny_model_dir};
use serde_json::{Value, json};
use support::{floats, golden, max_abs_diff, wait_healthy, worker_statuses};

#[test]
fn offline_run_with_an_uncached_hub_id_says_what_to_do() {
    let cache = std::env::temp_dir().join(format!("hf-home-empty-{}", std::process::id()));
    std::fs::create_dir_all(&cache).unwrap();
    let output = Command::new(repo_root().join("deploy/local/run.sh"))
        .args(["--model", "qwen3-embed-tests/not-cached"])
        .env("HF_HOME", &cache)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run deploy/local/run.sh (deploy/local/setup.sh installs huggingface_hub)");
    let _ = std::fs::remove_dir_all(&cache);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    for needle in [
        "qwen3-embed-tests/not-cached is not in the Hugging Face cache",
        "HF_HUB_OFFLINE is set",
        "Pass --model with a local directory",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
    assert!(
        !stderr.contains("building") && !stderr.contains("Traceback"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------
// The binaries themselves given a Hugging Face id (`common::model_source`).
// ---------------------------------------------------------------------------------------

/// The id the fake cache holds.
const CACHED_ID: &str = "qwen3-embed-tests/tiny";
/// The commit its `refs/main` names.
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A fresh directory for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("hf-{name}-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A Hugging Face cache laid out as `huggingface_hub` writes it, holding the tiny fixture as
/// [`CACHED_ID`]: `blobs/` with the files, `snapshots/<commit>/` with links to them,
/// `refs/main` naming the commit.
fn fake_cache() -> PathBuf {
    let cache = temp_dir("cache");
    let repo = cache.join(format!("models--{}", CACHED_ID.replace('/', "--")));
    let snapshot = repo.join("snapshots").join(COMMIT);
    for dir in [repo.join("blobs"), repo.join("refs"), snapshot.clone()] {
        std::fs::create_dir_all(dir).unwrap();
    }
    for (i, file) in ["config.json", "tokenizer.json", "model.safetensors"]
        .into_iter()
        .enumerate()
    {
        let blob = repo.join("blobs").join(format!("blob{i}"));
        std::fs::copy(tiny_model_dir().join(file), &blob).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/blob{i}"), snapshot.join(file)).unwrap();
    }
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    cache
}

/// A worker binary started with `--model-dir model` and the Hugging Face settings `hf`.
fn worker(binary: &str, nats_url: &str, model: &str, hf: &[(&str, String)]) -> Worker {
    let mut args = vec!["--nats-url".to_string(), nats_url.into()];
    args.extend(["--model-dir".into(), model.into()]);
    match binary {
        "gpu-worker" => args.extend(["--backend".into(), "cpu".into()]),
        _ => args.extend(["--threads".into(), "1".into()]),
    }
    let mut env: Vec<(&str, String)> = vec![
        ("HF_HOME", "/nonexistent-hf-home".into()),
        ("HF_TOKEN", String::new()),
    ];
    env.extend(hf.iter().cloned());
    Worker::spawn(binary, binary, &args, &env)
}

/// Waits for `worker` to exit on its own; its log, after checking that it failed.
fn failed_log(mut worker: Worker) -> String {
    let status = worker
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("{} still runs:\n{}", worker.name(), worker.log()));
    let log = worker.log();
    assert!(!status.success(), "{} exited 0:\n{log}", worker.name());
    assert!(!log.contains("panicked"), "{log}");
    log
}

fn assert_says(log: &str, needles: &[&str]) {
    for needle in needles {
        assert!(log.contains(needle), "missing {needle:?} in:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_given_a_cached_hub_id_serve_the_golden_vectors() {
    let cache = fake_cache();
    let server = NatsServer::start();
    // Offline: the cache must be enough, no request may leave.
    let hf = [
        ("HF_HUB_CACHE", cache.display().to_string()),
        ("HF_HUB_OFFLINE", "1".to_string()),
    ];
    let _tokenizer = worker("tokenizer-worker", &server.url(), CACHED_ID, &hf);
    let _gpu = worker("gpu-worker", &server.url(), CACHED_ID, &hf);
    let (_gateway, base) = Pipeline::new(server.url(), &[]).gateway("gateway");
    let http = reqwest::Client::new();
    wait_healthy(&http, &base, Duration::from_secs(60)).await;

    let golden = golden();
    let documents: Vec<&Value> = golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|case| case["is_query"] == false)
        .take(3)
        .collect();
    let body = json!({"model": "qwen3-tiny", "input": documents.iter().map(|c| c["text"].clone()).collect::<Vec<_>>()});
    let answer: Value = http
        .post(format!("{base}/v1/embeddings"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (case, item) in documents.iter().zip(answer["data"].as_array().unwrap()) {
        let diff = max_abs_diff(&floats(&item["embedding"]), &floats(&case["embedding"]));
        assert!(diff < 2e-5, "case {}: diff {diff}", case["id"]);
    }
    // Both report the id as their model name (none was configured).
    let client = async_nats::connect(server.url()).await.unwrap();
    let statuses = worker_statuses(&client).await;
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| s.model == CACHED_ID),
        "{statuses:?}"
    );
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn offline_workers_with_an_uncached_id_exit_at_once_saying_what_to_do() {
    let cache = temp_dir("empty");
    let hf = [
        ("HF_HUB_CACHE", cache.display().to_string()),
        ("HF_HUB_OFFLINE", "1".to_string()),
    ];
    let nats = format!("nats://127.0.0.1:{}", free_port());
    for binary in ["tokenizer-worker", "gpu-worker"] {
        let log = failed_log(worker(binary, &nats, "qwen3-embed-tests/not-cached", &hf));
        assert_says(
            &log,
            &[
                "qwen3-embed-tests/not-cached is not a directory, nor in the Hugging Face cache",
                cache.to_str().unwrap(),
                "HF_HUB_OFFLINE is set",
                "pass a local directory (Hugging Face layout) or allow the network",
            ],
        );
    }
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn an_unreachable_hub_fails_fast_saying_what_to_do() {
    let cache = temp_dir("unreachable");
    // Nothing listens there: the connection is refused at once.
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let hf = [
        ("HF_HUB_CACHE", cache.display().to_string()),
        ("HF_HUB_OFFLINE", "0".to_string()),
        ("HF_ENDPOINT", endpoint.clone()),
    ];
    let nats = format!("nats://127.0.0.1:{}", free_port());
    for binary in ["tokenizer-worker", "gpu-worker"] {
        let log = failed_log(worker(binary, &nats, "qwen3-embed-tests/not-cached", &hf));
        assert_says(
            &log,
            &[
                "qwen3-embed-tests/not-cached is not a directory, nor in the Hugging Face cache",
                &format!("the Hub at {endpoint} cannot be reached"),
                "pass a local directory (Hugging Face layout) or allow the network",
            ],
        );
    }
    // The cache of a model that was never had stays without a snapshot.
    assert!(
        !cache
            .join("models--qwen3-embed-tests--not-cached/snapshots")
            .exists()
    );
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn a_missing_directory_that_is_no_id_is_refused() {
    let nats = format!("nats://127.0.0.1:{}", free_port());
    let missing = Path::new("/nonexistent/qwen3/model");
    let log = failed_log(worker("gpu-worker", &nats, missing.to_str().unwrap(), &[]));
    assert_says(&log, &["model /nonexistent/qwen3/model is not a directory"]);
}

/// A Hugging Face Hub on loopback serving the tiny fixture as `repo_id`
/// (`support/fake_hub.py`); killed on drop.
struct FakeHub {
    process: std::process::Child,
    url: String,
}

impl FakeHub {
    fn start(repo_id: &str) -> Self {
        use std::io::BufRead;
        let script = repo_root().join("tests/tests/support/fake_hub.py");
        let mut process = Command::new("python3")
            .arg(script)
            .args([repo_id, tiny_model_dir().to_str().unwrap(), COMMIT])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run python3 tests/tests/support/fake_hub.py");
        let mut port = String::new();
        std::io::BufReader::new(process.stdout.take().unwrap())
            .read_line(&mut port)
            .unwrap();
        Self {
            process,
            url: format!("http://127.0.0.1:{}", port.trim()),
        }
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_download_an_uncached_id_into_the_cache_and_serve_it() {
    let id = "qwen3-embed-tests/downloaded";
    let hub = FakeHub::start(id);
    let cache = temp_dir("download");
    let server = NatsServer::start();
    let hf = [
        ("HF_HUB_CACHE", cache.display().to_string()),
        ("HF_HUB_OFFLINE", "0".to_string()),
        ("HF_ENDPOINT", hub.url.clone()),
    ];
    let tokenizer = worker("tokenizer-worker", &server.url(), id, &hf);
    let gpu = worker("gpu-worker", &server.url(), id, &hf);
    let (_gateway, base) = Pipeline::new(server.url(), &[]).gateway("gateway");
    let http = reqwest::Client::new();
    wait_healthy(&http, &base, Duration::from_secs(60)).await;
    let case = &golden()["cases"][0];
    assert_eq!(case["is_query"], false);
    let answer: Value = http
        .post(format!("{base}/v1/embeddings"))
        .json(&json!({"input": case["text"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let diff = max_abs_diff(
        &floats(&answer["data"][0]["embedding"]),
        &floats(&case["embedding"]),
    );
    assert!(diff < 2e-5, "diff {diff}");
    // The standard layout, each worker's files only, and a progress line in the log.
    let repo = cache.join("models--qwen3-embed-tests--downloaded");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        COMMIT
    );
    let snapshot = repo.join("snapshots").join(COMMIT);
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert!(snapshot.join(file).is_file(), "{file} missing");
    }
    assert!(
        !snapshot.join("golden.json").exists(),
        "a file no worker reads"
    );
    assert_says(&tokenizer.log(), &["downloading", "tokenizer.json"]);
    assert_says(
        &gpu.log(),
        &["downloading", "model.safetensors", "model downloaded"],
    );
    drop(hub);
    // Cached now: a worker started offline finds it.
    let offline = [
        ("HF_HUB_CACHE", cache.display().to_string()),
        ("HF_HUB_OFFLINE", "1".to_string()),
    ];
    let mut again = worker("gpu-worker", &server.url(), id, &offline);
    let client = async_nats::connect(server.url()).await.unwrap();
    support::wait_for_worker_counts(&client, 1, 2).await;
    assert!(again.is_running(), "{}", again.log());
    assert_says(&again.log(), &["model found in the Hugging Face cache"]);
    let _ = std::fs::remove_dir_all(&cache);
}
