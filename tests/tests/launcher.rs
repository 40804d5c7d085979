//! `deploy/local/run.sh` supervises the stack it starts, run as an operator runs it (the
//! debug binaries through `QWEN3_EMBED_BIN_DIR`, the tiny model, the CPU backend, a
//! nats-server it starts itself): a GPU worker killed with SIGKILL under a load of concurrent
//! HTTP clients is started again while every request is answered with the golden vectors; a
//! killed nats-server comes back on its port, waiting twice as long when it dies again at
//! once; a process that dies during start-up stops run.sh; SIGTERM stops everything and
//! leaves no process behind. With `--secure`, every process connects under its own NATS
//! identity, an embedding matches the golden vector, and a client without a seed is
//! refused.
//!
//! The binaries must be built first: `cargo build --workspace --bins`.
//! The tests run one at a time (each starts a whole stack; the machine has two cores).

#[path = "faults/load.rs"]
mod load;
mod support;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use e2e_tests::harness::{FAULT_ENV, serial, signal, wait_serving};
use e2e_tests::load::{Load, assert_flawless};
use e2e_tests::process::{bin_dir, binary};
use e2e_tests::{free_port, nats_server_binary, repo_root, tiny_model_dir};
use load::embedding_templates;
use serde_json::json;
use support::{wait_for_worker_counts, wait_healthy};
use tokio::time::{Instant, sleep};

/// Settings run.sh passes on to every process, over its default (`dev`) profile, besides
/// [`FAULT_ENV`] (a dead GPU worker's batches come back after 2 s; requests have 15 s): the
/// load's 20 clients are all admitted (the profile admits 10 at once); no answer cache, so
/// every request reaches the workers.
const ENV: &[(&str, &str)] = &[
    ("QWEN3_EMBED__GATEWAY__MAX_CONCURRENT_QUERIES", "64"),
    ("QWEN3_EMBED__GATEWAY__CACHE_SIZE", "0"),
];

/// Concurrent HTTP clients of the load.
const CLIENTS: usize = 20;

/// How long the stack may take to answer /health (debug binaries, tiny model).
const START_PATIENCE: Duration = Duration::from_secs(60);

/// How long a restart may take to show: the backoffs of these tests (1 s, 2 s) plus a
/// process start, with a wide margin.
const RESTART_PATIENCE: Duration = Duration::from_secs(30);

/// How long run.sh may take to stop after SIGTERM: it gives the stages 10 s to drain, then
/// stops the nats-server.
const STOP_PATIENCE: Duration = Duration::from_secs(30);

/// `deploy/local/run.sh` running as the leader of its own process group; the whole group is
/// killed (SIGKILL) on drop, so a failing test leaves no process behind.
struct Launcher {
    child: Child,
    /// run.sh's stdout (its ready lines, the processes' logs).
    stdout: PathBuf,
    /// run.sh's stderr (its supervision lines, the processes' logs).
    stderr: PathBuf,
    /// Its exit status once reaped.
    exited: Option<ExitStatus>,
}

/// What run.sh said when the stack became healthy.
struct Ready {
    /// The gateway's base URL.
    base: String,
    /// The URL of the nats-server run.sh started.
    nats_url: String,
    /// The pid of each process by its name in run.sh's lines (`gpu-worker #1`).
    pids: BTreeMap<String, u32>,
}

impl Ready {
    /// The pid of process `name`.
    fn pid(&self, name: &str) -> u32 {
        *self
            .pids
            .get(name)
            .unwrap_or_else(|| panic!("run.sh named no {name}: {:?}", self.pids))
    }
}

impl Launcher {
    /// Starts `run.sh --model <tiny model> --gpu-workers 2 --backend cpu --port <port>` with
    /// the debug binaries, [`FAULT_ENV`] and [`ENV`].
    fn start(port: u16) -> Self {
        Self::start_with(port, &[])
    }

    /// [`Launcher::start`] with more arguments for run.sh.
    fn start_with(port: u16, extra_args: &[&str]) -> Self {
        for name in ["gateway", "tokenizer-worker", "gpu-worker", "nats-auth"] {
            binary(name);
        }
        let unique = format!("{}-{port}", std::process::id());
        let stdout = std::env::temp_dir().join(format!("qwen3-embed-run-sh-{unique}.out"));
        let stderr = std::env::temp_dir().join(format!("qwen3-embed-run-sh-{unique}.err"));
        let mut command = Command::new(repo_root().join("deploy/local/run.sh"));
        command
            .arg("--model")
            .arg(tiny_model_dir())
            .args(["--gpu-workers", "2", "--backend", "cpu"])
            .args(["--port", &port.to_string()])
            .args(extra_args)
            .env("QWEN3_EMBED_BIN_DIR", bin_dir())
            .env("NATS_SERVER", nats_server_binary())
            .env_remove("NATS_URL")
            .env_remove("QWEN3_EMBED_CONFIG_DIR")
            .env_remove("QWEN3_EMBED_PROFILE")
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(FAULT_ENV.iter().chain(ENV).copied())
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("create run.sh's stdout file"))
            .stderr(File::create(&stderr).expect("create run.sh's stderr file"))
            .process_group(0);
        let child = command.spawn().expect("start deploy/local/run.sh");
        Self {
            child,
            stdout,
            stderr,
            exited: None,
        }
    }

    /// Its pid, which is also its process group's id.
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it wrote to stdout so far.
    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Everything it wrote to stderr so far.
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits up to `patience` for it to exit; its status, or `None` if still running.
    async fn wait_exit(&mut self, patience: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + patience;
        loop {
            if self.exited.is_none() {
                self.exited = self.child.try_wait().expect("poll run.sh");
            }
            if self.exited.is_some() || Instant::now() >= deadline {
                return self.exited;
            }
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the stack is healthy and returns what run.sh said about it.
    async fn wait_ready(&mut self) -> Ready {
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            let stdout = self.stdout();
            if let Some(processes) = line_after(&stdout, "run.sh: processes: ") {
                let base = line_after(&stdout, "run.sh: ready at ")
                    .and_then(|rest| rest.split_whitespace().next())
                    .expect("the ready line precedes the processes line")
                    .to_string();
                let nats_url = stdout
                    .lines()
                    .find_map(|line| line.split_once(", NATS ")?.1.split_once(';'))
                    .expect("run.sh names its NATS URL")
                    .0
                    .to_string();
                return Ready {
                    base,
                    nats_url,
                    pids: parse_processes(processes),
                };
            }
            if let Some(status) = self.wait_exit(Duration::ZERO).await {
                panic!("run.sh exited with {status} before the stack was ready");
            }
            assert!(
                Instant::now() < deadline,
                "the stack was not ready within {START_PATIENCE:?}"
            );
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until a line of its stderr starts with `prefix`; that line.
    async fn wait_for_stderr(&self, prefix: &str, patience: Duration) -> String {
        let deadline = Instant::now() + patience;
        loop {
            let stderr = self.stderr();
            if let Some(line) = stderr.lines().find(|line| line.starts_with(prefix)) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "run.sh wrote no line `{prefix}...` within {patience:?}"
            );
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends it SIGTERM and waits until it exits; its status.
    async fn stop(&mut self) -> ExitStatus {
        signal(self.pid(), "TERM");
        self.wait_exit(STOP_PATIENCE)
            .await
            .unwrap_or_else(|| panic!("run.sh did not stop within {STOP_PATIENCE:?} of SIGTERM"))
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        // The whole group: run.sh and everything it started, whatever state it is in.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.pid())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
        if std::thread::panicking() {
            for (what, text) in [("stdout", self.stdout()), ("stderr", self.stderr())] {
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("---- last lines of run.sh's {what} ----");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        let _ = std::fs::remove_file(&self.stdout);
        let _ = std::fs::remove_file(&self.stderr);
    }
}

/// The rest of the first line of `text` that starts with `prefix`.
fn line_after<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find_map(|line| line.strip_prefix(prefix))
}

/// `nats-server (pid 1), gpu-worker #1 (pid 2); each is ...` as names and pids.
fn parse_processes(list: &str) -> BTreeMap<String, u32> {
    let (list, _) = list.split_once(';').unwrap_or((list, ""));
    list.split(", ")
        .map(|entry| {
            let (name, pid) = entry
                .rsplit_once(" (pid ")
                .unwrap_or_else(|| panic!("not `NAME (pid N)`: {entry}"));
            let pid = pid
                .trim_end_matches(')')
                .parse()
                .expect("a pid is a number");
            (name.to_string(), pid)
        })
        .collect()
}

/// How many of run.sh's own lines in `stderr` contain `needle` (the processes' log lines
/// are in the same stream).
fn supervision_lines(stderr: &str, needle: &str) -> usize {
    stderr
        .lines()
        .filter(|line| line.starts_with("run.sh: ") && line.contains(needle))
        .count()
}

/// The pid in a supervision line `run.sh: NAME restarted (pid N)`.
fn restarted_pid(line: &str) -> u32 {
    line.rsplit_once("(pid ")
        .and_then(|(_, pid)| pid.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no pid in `{line}`"))
}

/// A process's state letter and process group, from `/proc/<pid>/stat`; `None` when there
/// is no such process.
fn state_and_group(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let group = fields.nth(1)?.parse().ok()?;
    Some((state, group))
}

/// Whether process `pid` runs (exists and is no zombie).
fn alive(pid: u32) -> bool {
    state_and_group(pid).is_some_and(|(state, _)| state != 'Z')
}

/// The live processes of process group `group`.
fn group_members(group: u32) -> Vec<u32> {
    let entries = std::fs::read_dir("/proc").expect("read /proc");
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| state_and_group(pid).is_some_and(|(s, g)| g == group && s != 'Z'))
        .collect()
}

/// Sends run.sh SIGTERM and checks it exits 0 having stopped everything: none of `pids`
/// runs, nothing of its process group is left, and nothing was restarted meanwhile.
async fn stop_and_check_clean(launcher: &mut Launcher, pids: &[u32]) {
    let restarts_before = supervision_lines(&launcher.stderr(), " restarted (pid ");
    let status = launcher.stop().await;
    assert!(
        status.success(),
        "run.sh exited with {status} after SIGTERM"
    );
    assert!(launcher.stdout().contains("run.sh: stopping"));
    // run.sh waits for its children before it exits; allow the kernel a moment anyway.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|&pid| alive(pid)).collect();
        let group = group_members(launcher.pid());
        if left.is_empty() && group.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes left after run.sh stopped: {left:?}, its group: {group:?}"
        );
        sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        supervision_lines(&launcher.stderr(), " restarted (pid "),
        restarts_before,
        "a process was restarted during shutdown"
    );
}

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
        let operator = common::nats::NatsConfig {
            url: ready.nats_url.clone(),
            identity: Some("operator".into()),
            nkey_file: Some(auth_dir.join("operator.nk")),
            ..common::nats::NatsConfig::default()
        }
        .options("operator")
        .await
        .expect("operator settings")
        .connect(ready.nats_url.as_str())
        .await
        .expect("the operator's seed is admitted");
        wait_for_worker_counts(&operator, 1, 2).await;

        let pids: Vec<u32> = ready.pids.values().copied().collect();
        stop_and_check_clean(&mut launcher, &pids).await;
        std::fs::remove_dir_all(&auth_dir).expect("remove the seeds");
    });
}
