//! `deploy/local/run.sh` as the launcher tests drive it: started as an operator starts it
//! (the debug binaries through `QWEN3_EMBED_BIN_DIR`, the tiny model, the CPU backend, a
//! nats-server it starts itself) in a process group of its own, what it says when the stack
//! is ready, and the process checks of a clean stop.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use e2e_tests::harness::{FAULT_ENV, signal};
use e2e_tests::process::{bin_dir, binary};
use e2e_tests::{nats_server_binary, repo_root, tiny_model_dir};
use tokio::time::{Instant, sleep};

/// Settings run.sh passes on to every process, over its default (`dev`) profile, besides
/// [`FAULT_ENV`] (a dead GPU worker's batches come back after 2 s; requests have 15 s): the
/// load's 20 clients are all admitted (the profile admits 10 at once); no answer cache, so
/// every request reaches the workers.
pub const ENV: &[(&str, &str)] = &[
    ("QWEN3_EMBED__GATEWAY__MAX_CONCURRENT_QUERIES", "64"),
    ("QWEN3_EMBED__GATEWAY__CACHE_SIZE", "0"),
];

/// How long the stack may take to answer /health (debug binaries, tiny model).
pub const START_PATIENCE: Duration = Duration::from_secs(60);

/// How long a restart may take to show: the backoffs of these tests (1 s, 2 s) plus a
/// process start, with a wide margin.
pub const RESTART_PATIENCE: Duration = Duration::from_secs(30);

/// How long run.sh may take to stop after SIGTERM: it gives the stages 10 s to drain, then
/// stops the nats-server.
pub const STOP_PATIENCE: Duration = Duration::from_secs(30);

/// `deploy/local/run.sh` running as the leader of its own process group; the whole group is
/// killed (SIGKILL) on drop, so a failing test leaves no process behind.
pub struct Launcher {
    child: Child,
    /// run.sh's stdout (its ready lines, the processes' logs).
    stdout: PathBuf,
    /// run.sh's stderr (its supervision lines, the processes' logs).
    stderr: PathBuf,
    /// Its exit status once reaped.
    exited: Option<ExitStatus>,
}

/// What run.sh said when the stack became healthy.
pub struct Ready {
    /// The gateway's base URL.
    pub base: String,
    /// The URL of the nats-server run.sh started.
    pub nats_url: String,
    /// The pid of each process by its name in run.sh's lines (`gpu-worker #1`).
    pub pids: BTreeMap<String, u32>,
}

impl Ready {
    /// The pid of process `name`.
    pub fn pid(&self, name: &str) -> u32 {
        *self
            .pids
            .get(name)
            .unwrap_or_else(|| panic!("run.sh named no {name}: {:?}", self.pids))
    }
}

impl Launcher {
    /// Starts `run.sh --model <tiny model> --gpu-workers 2 --backend cpu --port <port>` with
    /// the debug binaries, [`FAULT_ENV`] and [`ENV`].
    pub fn start(port: u16) -> Self {
        Self::start_with(port, &[])
    }

    /// [`Launcher::start`] with more arguments for run.sh.
    pub fn start_with(port: u16, extra_args: &[&str]) -> Self {
        Self::start_in(&repo_root(), port, extra_args)
    }

    /// [`Launcher::start_with`], run.sh started in `dir` (where relative paths among its
    /// arguments lie).
    pub fn start_in(dir: &Path, port: u16, extra_args: &[&str]) -> Self {
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
            .current_dir(dir)
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
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits up to `patience` for it to exit; its status, or `None` if still running.
    pub async fn wait_exit(&mut self, patience: Duration) -> Option<ExitStatus> {
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
    pub async fn wait_ready(&mut self) -> Ready {
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
    pub async fn wait_for_stderr(&self, prefix: &str, patience: Duration) -> String {
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
    pub async fn stop(&mut self) -> ExitStatus {
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
pub fn line_after<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
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
pub fn supervision_lines(stderr: &str, needle: &str) -> usize {
    stderr
        .lines()
        .filter(|line| line.starts_with("run.sh: ") && line.contains(needle))
        .count()
}

/// The pid in a supervision line `run.sh: NAME restarted (pid N)`.
pub fn restarted_pid(line: &str) -> u32 {
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
pub fn alive(pid: u32) -> bool {
    state_and_group(pid).is_some_and(|(state, _)| state != 'Z')
}

/// The live processes of process group `group`.
pub fn group_members(group: u32) -> Vec<u32> {
    let entries = std::fs::read_dir("/proc").expect("read /proc");
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| state_and_group(pid).is_some_and(|(s, g)| g == group && s != 'Z'))
        .collect()
}

/// Sends run.sh SIGTERM and checks it exits 0 having stopped everything: none of `pids`
/// runs, nothing of its process group is left, and nothing was restarted meanwhile.
pub async fn stop_and_check_clean(launcher: &mut Launcher, pids: &[u32]) {
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

/// A connection to the nats-server of `ready` as the operator, with the seed of run.sh
/// --secure in `auth_dir`: it sees every worker's status.
pub async fn operator(ready: &Ready, auth_dir: &Path) -> async_nats::Client {
    common::nats::NatsConfig {
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
    .expect("the operator's seed is admitted")
}
