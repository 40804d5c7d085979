//! `deploy/local/run.sh` supervises the stack it starts, run as an operator runs it (the
//! debug binaries through `QWEN3_EMBED_BIN_DIR`, the tiny model, the CPU backend, a
//! nats-server it starts itself): a GPU worker killed with SIGKILL under a load of concurrent
//! HTTP clients is started again while every request is answered with the golden vectors; a
//! killed nats-server comes back on its port, waiting twice as long when it dies again at
//! once; a process that dies during start-up stops run.sh; SIGTERM stops everything and
//! leaves no process behind. With `--secure`, every process connects under its own NATS
//! identity, an embedding matches the golden vector, and a client without a seed is
//! refused. With two `--model`s, each model is served by its own pool, the second on
//! subjects of its own under the identities nats-auth wrote for it, chosen by the request's
//! `model`; an unknown model gets 404, and two models sharing a subject token are refused.
//!
//! The binaries must be built first: `cargo build --workspace --bins`.
//! The tests run one at a time (each starts a whole stack; the machine has two cores).

#[path = "faults/load.rs"]
mod load;
#[path = "launcher/stack.rs"]
mod stack;
mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::wire::{WorkerKind, WorkerStatus};
use e2e_tests::free_port;
use e2e_tests::harness::{serial, signal, wait_serving};
use e2e_tests::load::{Load, assert_flawless};
use load::embedding_templates;
use serde_json::json;
use stack::{
    Launcher, RESTART_PATIENCE, START_PATIENCE, alive, group_members, line_after, operator,
    restarted_pid, stop_and_check_clean, supervision_lines,
};
use support::{wait_for_worker_counts, wait_healthy, worker_statuses};
use tokio::time::{Instant, sleep};

/// Concurrent HTTP clients of the load.
const CLIENTS: usize = 20;

#[test]
fn gpu_worker_killed_under_load_is_restarted_and_no_request_fails() {
    serial(async {
        let mut launcher = Launcher::start(free_port());
        let ready = launcher.wait_ready().await;
        wait_healthy(&reqwest::Client::new(), &ready.base, START_PATIENCE).await;
        let nats = async_nats::connect(ready.nats_url.as_str())
            .await
            .expect("test client connects");
        wait_for_worker_counts(&nats, 1, 2).await;

        let load = Load::start(&ready.base, CLIENTS, embedding_templates());
        sleep(Duration::from_secs(2)).await;
        let victim = ready.pid("gpu-worker #1");
        signal(victim, "KILL");
        let killed = Instant::now();
        let restarted = launcher
            .wait_for_stderr("run.sh: gpu-worker #1 restarted (pid ", RESTART_PATIENCE)
            .await;
        // The load goes on: the dead worker's batches come back after ack_wait (2 s), the
        // replacement pulls work beside the survivor.
        sleep(Duration::from_secs(5)).await;
        let records = load.stop().await;

        assert_flawless(&records, "GPU worker killed under run.sh");
        assert!(
            records
                .iter()
                .any(|r| r.finished() > killed + Duration::from_secs(5)),
            "no request was answered well after the kill"
        );
        let stderr = launcher.stderr();
        let exit_line = format!(
            "run.sh: gpu-worker #1 (pid {victim}) exited with status 137 (SIGKILL); restarting in 1s"
        );
        assert!(stderr.lines().any(|l| l == exit_line), "{stderr}");
        assert_eq!(
            supervision_lines(&stderr, " exited with "),
            1,
            "only the killed worker exits: {stderr}"
        );
        let replacement = restarted_pid(&restarted);
        assert_ne!(replacement, victim);
        assert!(alive(replacement), "the replacement died");
        assert!(!alive(victim), "the killed worker runs");
        for (name, &pid) in &ready.pids {
            assert!(pid == victim || alive(pid), "{name} (pid {pid}) died");
        }
        // The stack is whole again: healthy, and two GPU workers answer embed.status.
        wait_healthy(&reqwest::Client::new(), &ready.base, Duration::from_secs(5)).await;
        wait_for_worker_counts(&nats, 1, 2).await;

        let mut pids: Vec<u32> = ready.pids.values().copied().collect();
        pids.push(replacement);
        stop_and_check_clean(&mut launcher, &pids).await;
    });
}

#[test]
fn nats_server_killed_comes_back_on_its_port_with_a_growing_backoff() {
    serial(async {
        let mut launcher = Launcher::start(free_port());
        let ready = launcher.wait_ready().await;
        let first = ready.pid("nats-server");
        signal(first, "KILL");
        let restarted = launcher
            .wait_for_stderr("run.sh: nats-server restarted (pid ", RESTART_PATIENCE)
            .await;
        let second = restarted_pid(&restarted);
        // Dead again at once: the wait before the next start doubles.
        signal(second, "KILL");
        let again = format!(
            "run.sh: nats-server (pid {second}) exited with status 137 (SIGKILL); restarting in 2s"
        );
        launcher.wait_for_stderr(&again, RESTART_PATIENCE).await;
        let stderr = launcher.stderr();
        let once = format!(
            "run.sh: nats-server (pid {first}) exited with status 137 (SIGKILL); restarting in 1s"
        );
        assert!(stderr.lines().any(|l| l == once), "{stderr}");

        // The third server listens where the first did: the workers and the gateway
        // reconnect, and requests are answered correctly again.
        let deadline = Instant::now() + RESTART_PATIENCE;
        let nats = loop {
            if let Ok(client) = async_nats::connect(ready.nats_url.as_str()).await {
                break client;
            }
            assert!(
                Instant::now() < deadline,
                "no nats-server on {}",
                ready.nats_url
            );
            sleep(Duration::from_millis(200)).await;
        };
        wait_for_worker_counts(&nats, 1, 2).await;
        // After a NATS restart the work queue is created again when the workers reconnect.
        let probe = json!({"input": "ready?"});
        wait_serving(&ready.base, "/v1/embeddings", probe, RESTART_PATIENCE).await;
        let load = Load::start(&ready.base, CLIENTS, embedding_templates());
        sleep(Duration::from_secs(3)).await;
        assert_flawless(&load.stop().await, "after the nats-server came back");

        let third = restarted_pid(
            launcher
                .stderr()
                .lines()
                .filter(|l| l.starts_with("run.sh: nats-server restarted (pid "))
                .nth(1)
                .expect("a second restart"),
        );
        let mut pids: Vec<u32> = ready.pids.values().copied().collect();
        pids.push(third);
        stop_and_check_clean(&mut launcher, &pids).await;
    });
}

#[test]
fn a_process_dying_during_start_up_stops_run_sh() {
    serial(async {
        // The gateway's port is taken: it exits at once, on every try.
        let taken = TcpListener::bind("127.0.0.1:0").expect("bind a port");
        let port = taken.local_addr().expect("its address").port();
        let mut launcher = Launcher::start(port);
        let status = launcher
            .wait_exit(START_PATIENCE)
            .await
            .unwrap_or_else(|| panic!("run.sh still runs with its gateway's port taken"));
        assert_eq!(status.code(), Some(1), "run.sh exited with {status}");
        let stderr = launcher.stderr();
        let line = line_after(&stderr, "run.sh: gateway (pid ")
            .unwrap_or_else(|| panic!("no line about the gateway: {stderr}"));
        assert!(
            line.ends_with("exited during start-up with status 1; stopping"),
            "{line}"
        );
        assert!(!stderr.contains("restarted"), "{stderr}");
        assert!(launcher.stdout().contains("run.sh: stopping"));
        let left = group_members(launcher.pid());
        assert!(left.is_empty(), "processes left: {left:?}");
    });
}

#[test]
fn secure_stack_gives_every_process_its_own_nats_identity() {
    serial(async {
        let auth_dir = std::env::temp_dir().join(format!(
            "qwen3-embed-run-sh-auth-{}-{}",
            std::process::id(),
            free_port()
        ));
        let auth = auth_dir.to_str().expect("UTF-8 path");
        let mut launcher =
            Launcher::start_with(free_port(), &["--secure", "--nats-auth-dir", auth]);
        let ready = launcher.wait_ready().await;
        assert!(
            launcher
                .stdout()
                .contains("run.sh: NATS identities on: seeds in "),
            "{}",
            launcher.stdout()
        );
        let http = reqwest::Client::new();
        wait_healthy(&http, &ready.base, START_PATIENCE).await;

        let case = support::golden()["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .find(|c| c["is_query"] == false)
            .expect("a document case")
            .clone();
        let response = http
            .post(format!("{}/v1/embeddings", ready.base))
            .json(&json!({"input": [case["text"]]}))
            .send()
            .await
            .expect("embedding request sent");
        assert_eq!(response.status(), 200);
        let answer: serde_json::Value = response.json().await.expect("JSON body");
        let got = support::floats(&answer["data"][0]["embedding"]);
        let expected = support::floats(&case["embedding"]);
        let diff = support::max_abs_diff(&got, &expected);
        assert!(diff < 2e-5, "max abs diff {diff}");

        // Only the users nats-auth wrote get in: not a client without credentials; the
        // operator's seed sees every worker.
        assert!(
            async_nats::connect(ready.nats_url.as_str()).await.is_err(),
            "the nats-server of run.sh --secure admitted a client without credentials"
        );
        let operator = operator(&ready, &auth_dir).await;
        wait_for_worker_counts(&operator, 1, 2).await;

        let pids: Vec<u32> = ready.pids.values().copied().collect();
        stop_and_check_clean(&mut launcher, &pids).await;
        std::fs::remove_dir_all(&auth_dir).expect("remove the seeds");
    });
}

/// The name run.sh gives the second model: its directory's name.
const SECOND_MODEL: &str = "qwen3-tiny-second";

/// A copy of the tiny model in a directory named [`SECOND_MODEL`] under `parent`: the same
/// weights under another name, so its vectors are the golden ones too.
fn second_model_dir(parent: &Path) -> PathBuf {
    let dir = parent.join(SECOND_MODEL);
    std::fs::create_dir_all(&dir).expect("create the second model's directory");
    for entry in std::fs::read_dir(e2e_tests::tiny_model_dir()).expect("read the tiny model") {
        let entry = entry.expect("a directory entry");
        std::fs::copy(entry.path(), dir.join(entry.file_name())).expect("copy a model file");
    }
    dir
}

/// Sequences computed so far by the GPU workers of model `name`, as they report them.
fn sequences_of(statuses: &[WorkerStatus], name: &str) -> u64 {
    statuses
        .iter()
        .filter(|s| s.kind == WorkerKind::Gpu && s.model == name)
        .map(|s| s.sequences)
        .sum()
}

/// Embeds the golden document case through `/v1/embeddings`, naming `model` when given;
/// checks the vector against the golden one and returns the `model` the answer names.
async fn embed_golden(http: &reqwest::Client, base: &str, model: Option<&str>) -> String {
    let case = support::golden()["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["is_query"] == false)
        .expect("a document case")
        .clone();
    let mut body = json!({"input": [case["text"]]});
    if let Some(model) = model {
        body["model"] = json!(model);
    }
    let response = http
        .post(format!("{base}/v1/embeddings"))
        .json(&body)
        .send()
        .await
        .expect("embedding request sent");
    let status = response.status();
    let answer: serde_json::Value = response.json().await.expect("JSON body");
    assert_eq!(status, 200, "model {model:?}: {answer}");
    let got = support::floats(&answer["data"][0]["embedding"]);
    let diff = support::max_abs_diff(&got, &support::floats(&case["embedding"]));
    assert!(diff < 2e-5, "model {model:?}: max abs diff {diff}");
    answer["model"]
        .as_str()
        .expect("the answer names its model")
        .to_string()
}

#[test]
fn two_models_are_served_each_by_its_own_pool() {
    serial(async {
        let base_dir = std::env::temp_dir().join(format!(
            "qwen3-embed-run-sh-models-{}-{}",
            std::process::id(),
            free_port()
        ));
        second_model_dir(&base_dir);
        let auth_dir = base_dir.join("nats-auth");
        // Started where the second model and the seeds lie, named by relative paths, as an
        // operator in that directory would (run.sh itself works from the repository).
        let mut launcher = Launcher::start_in(
            &base_dir,
            free_port(),
            &[
                "--model",
                SECOND_MODEL,
                "--secure",
                "--nats-auth-dir",
                "nats-auth",
            ],
        );
        let ready = launcher.wait_ready().await;
        let stdout = launcher.stdout();
        assert!(
            stdout.contains(&format!(
                "run.sh: embedding models: qwen3-tiny (default), {SECOND_MODEL}\n"
            )),
            "{stdout}"
        );
        for process in [
            "gpu-worker #1",
            "tokenizer-worker #1",
            "gpu-worker qwen3-tiny-second #1",
            "gpu-worker qwen3-tiny-second #2",
            "tokenizer-worker qwen3-tiny-second #1",
        ] {
            ready.pid(process);
        }
        let http = reqwest::Client::new();
        wait_healthy(&http, &ready.base, START_PATIENCE).await;

        // Both pools answer the one status subject, the second on its own route, all under
        // the identities nats-auth wrote (a worker refused its subjects would have exited
        // and stopped run.sh's start).
        let operator = operator(&ready, &auth_dir).await;
        wait_for_worker_counts(&operator, 2, 4).await;
        let statuses = worker_statuses(&operator).await;
        for status in &statuses {
            let route = (status.model == SECOND_MODEL).then_some(SECOND_MODEL);
            assert_eq!(status.route.as_deref(), route, "{status:?}");
        }
        for (kind, count) in [(WorkerKind::Tokenizer, 1), (WorkerKind::Gpu, 2)] {
            let serving = |name: &str| {
                let of = |s: &&WorkerStatus| s.kind == kind && s.model == name;
                statuses.iter().filter(of).count()
            };
            assert_eq!(serving("qwen3-tiny"), count, "{kind:?}: {statuses:?}");
            assert_eq!(serving(SECOND_MODEL), count, "{kind:?}: {statuses:?}");
        }

        // Each request is computed by the pool of the model it names: the default one for
        // none, the second's for its name.
        for (requested, served) in [
            (None, "qwen3-tiny"),
            (Some("qwen3-tiny"), "qwen3-tiny"),
            (Some(SECOND_MODEL), SECOND_MODEL),
        ] {
            let before = worker_statuses(&operator).await;
            let named = embed_golden(&http, &ready.base, requested).await;
            assert_eq!(named, served, "requested {requested:?}");
            let other = if served == SECOND_MODEL {
                "qwen3-tiny"
            } else {
                SECOND_MODEL
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            let after = loop {
                let after = worker_statuses(&operator).await;
                if sequences_of(&after, served) > sequences_of(&before, served) {
                    break after;
                }
                assert!(
                    Instant::now() < deadline,
                    "no GPU worker of {served} computed the request for {requested:?}"
                );
                sleep(Duration::from_millis(100)).await;
            };
            assert_eq!(
                sequences_of(&after, other),
                sequences_of(&before, other),
                "{other}'s pool computed the request for {requested:?}"
            );
        }

        // A model nobody serves: 404 naming the models that are.
        let response = http
            .post(format!("{}/v1/embeddings", ready.base))
            .json(&json!({"model": "no-such-model", "input": ["x"]}))
            .send()
            .await
            .expect("request sent");
        assert_eq!(response.status(), 404);
        let error: serde_json::Value = response.json().await.expect("JSON body");
        assert_eq!(error["error"]["code"], "model_not_found", "{error}");
        let message = error["error"]["message"].as_str().expect("a message");
        for name in ["no-such-model", "qwen3-tiny", SECOND_MODEL] {
            assert!(message.contains(name), "{message}");
        }
        let listed: serde_json::Value = http
            .get(format!("{}/v1/models", ready.base))
            .send()
            .await
            .expect("models listed")
            .json()
            .await
            .expect("JSON body");
        let ids: Vec<&str> = listed["data"]
            .as_array()
            .expect("data")
            .iter()
            .filter_map(|m| m["id"].as_str())
            .collect();
        assert!(
            ids.contains(&"qwen3-tiny") && ids.contains(&SECOND_MODEL),
            "{listed}"
        );

        let pids: Vec<u32> = ready.pids.values().copied().collect();
        stop_and_check_clean(&mut launcher, &pids).await;
        std::fs::remove_dir_all(&base_dir).expect("remove the second model and the seeds");
    });
}

#[test]
fn two_models_sharing_a_subject_token_are_refused() {
    let base_dir = std::env::temp_dir().join(format!(
        "qwen3-embed-run-sh-same-token-{}-{}",
        std::process::id(),
        free_port()
    ));
    // `Qwen3-Tiny` and `qwen3-tiny` differ as names, not as subject tokens.
    let upper = base_dir.join("Qwen3-Tiny");
    std::fs::create_dir_all(&upper).expect("create the directory");
    let output = Command::new(e2e_tests::repo_root().join("deploy/local/run.sh"))
        .arg("--model")
        .arg(e2e_tests::tiny_model_dir())
        .arg("--model")
        .arg(&upper)
        .env("QWEN3_EMBED_BIN_DIR", e2e_tests::process::bin_dir())
        .output()
        .expect("run deploy/local/run.sh");
    std::fs::remove_dir_all(&base_dir).expect("remove the directory");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "run.sh: --model qwen3-tiny and --model Qwen3-Tiny share the subject token qwen3-tiny"
        ),
        "{stderr}"
    );
}
