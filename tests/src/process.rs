//! The pipeline's real binaries (`gateway`, `tokenizer-worker`, `gpu-worker`) as child
//! processes, for tests that kill or signal them. Each child is killed when its [`Worker`]
//! drops, so a failing test leaks no process; its log lines go to a file that is printed
//! when the test panics.
//!
//! The binaries are looked up beside the test executable (`target/<profile>/`, wherever
//! `CARGO_TARGET_DIR` puts it), or in `$QWEN3_BIN_DIR`. `cargo test` does not build them:
//! run `cargo build --workspace --bins` first (`deploy/local/test.sh` does).
//!
//! A child's wall clock can be set off from this machine's ([`skewed_clock`]): libfaketime,
//! preloaded, shifts what `SystemTime::now()` reads in that process and nothing else.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, repo_root, tiny_model_dir};

/// The directory holding the workspace's binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("QWEN3_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<test executable>
    let exe = std::env::current_exe().expect("the test executable has a path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test executable sits in target/<profile>/deps; this is a bug")
        .to_path_buf()
}

/// The path of binary `name`; panics with what to run when it was not built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} does not exist: run `cargo build --workspace --bins` before these tests \
         (deploy/local/test.sh does), or set QWEN3_BIN_DIR",
        path.display()
    );
    path
}

/// A running binary, killed (SIGKILL) on drop.
pub struct Worker {
    /// What it is, for messages (`gpu-worker#1`).
    name: String,
    child: Child,
    /// Its stdout and stderr.
    log: PathBuf,
    /// Its exit status once reaped.
    exited: Option<ExitStatus>,
}

impl Worker {
    /// Starts binary `binary` with `args` and extra environment `env`. Configuration files
    /// and the profile are not read (built-in defaults, then `env`, then `args`).
    pub fn spawn(name: &str, binary_name: &str, args: &[String], env: &[(&str, String)]) -> Self {
        let path = binary(binary_name);
        let log = std::env::temp_dir().join(format!(
            "qwen3-embed-{}-{name}-{}.log",
            std::process::id(),
            free_port()
        ));
        let file = std::fs::File::create(&log).expect("create the child's log file");
        let mut command = Command::new(&path);
        command
            .args(args)
            .env_remove("QWEN3_EMBED_CONFIG_DIR")
            .env_remove("QWEN3_EMBED_PROFILE")
            .env_remove("NATS_URL")
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone the log file handle"))
            .stderr(file);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));
        Self {
            name: name.to_string(),
            child,
            log,
            exited: None,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Kills it with SIGKILL (no chance to clean up, as a crash) and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        self.exited = self.child.wait().ok();
    }

    /// Sends SIGTERM (an orchestrator's stop request).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Waits up to `patience` for it to exit; its status, or `None` if still running.
    pub fn wait_exit(&mut self, patience: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.exited {
                return Some(status);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.wait_exit(Duration::ZERO).is_none()
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- last log lines of {} ----", self.name);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Settings shared by the workers of one test pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// NATS URL(s), comma-separated.
    pub nats_url: String,
    /// Extra `QWEN3_EMBED__...` settings for every process (queue settings, timeouts).
    pub env: Vec<(&'static str, String)>,
}

impl Pipeline {
    /// A pipeline on `nats_url` with the given extra settings.
    pub fn new(nats_url: impl Into<String>, env: &[(&'static str, &str)]) -> Self {
        Self {
            nats_url: nats_url.into(),
            env: env.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        }
    }

    /// The flags every worker gets (server, tiny model and its name), then `extra`.
    fn worker_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "--nats-url".to_string(),
            self.nats_url.clone(),
            "--model-dir".into(),
            tiny_model_dir().display().to_string(),
            "--model-name".into(),
            "qwen3-tiny".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }

    /// A tokenizer worker on the tiny model (one tokenizer thread, no batching wait).
    pub fn tokenizer(&self, name: &str) -> Worker {
        self.tokenizer_with(name, &[])
    }

    /// A GPU worker on the tiny model with the exact CPU backend.
    pub fn gpu(&self, name: &str) -> Worker {
        self.gpu_with(name, &[])
    }

    /// A tokenizer worker as [`Pipeline::tokenizer`], with `extra_env` added to its
    /// environment (e.g. [`skewed_clock`]).
    pub fn tokenizer_with(&self, name: &str, extra_env: &[(&'static str, String)]) -> Worker {
        let args = self.worker_args(&["--threads", "1"]);
        Worker::spawn(name, "tokenizer-worker", &args, &self.env_with(extra_env))
    }

    /// A GPU worker as [`Pipeline::gpu`], with `extra_env` added to its environment.
    pub fn gpu_with(&self, name: &str, extra_env: &[(&'static str, String)]) -> Worker {
        let args = self.worker_args(&["--backend", "cpu"]);
        Worker::spawn(name, "gpu-worker", &args, &self.env_with(extra_env))
    }

    /// The pipeline's settings followed by `extra_env` (which wins on a repeated key).
    fn env_with(&self, extra_env: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
        self.env.iter().chain(extra_env).cloned().collect()
    }

    /// A gateway on a free loopback port serving model `qwen3-tiny` without a cache; its
    /// base URL.
    pub fn gateway(&self, name: &str) -> (Worker, String) {
        let port = free_port();
        let args = [
            "--nats-url".into(),
            self.nats_url.clone(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--model".into(),
            "qwen3-tiny".into(),
        ];
        let mut env = self.env.clone();
        env.push(("QWEN3_EMBED__GATEWAY__CACHE_SIZE", "0".into()));
        let worker = Worker::spawn(name, "gateway", &args, &env);
        (worker, format!("http://127.0.0.1:{port}"))
    }
}

/// The libfaketime library to preload: `$LIBFAKETIME`, else the one the `libfaketime` pip
/// package put in the repository's `.venv` (`deploy/local/setup.sh` installs it), else
/// Debian's (package `libfaketime`). Panics saying how to install it when none exists.
pub fn libfaketime() -> PathBuf {
    if let Some(path) = std::env::var_os("LIBFAKETIME") {
        return PathBuf::from(path);
    }
    let venv_lib = repo_root().join(".venv/lib");
    let in_venv = std::fs::read_dir(&venv_lib)
        .into_iter()
        .flatten()
        .flatten()
        .map(|python| {
            python
                .path()
                .join("site-packages/libfaketime/vendor/libfaketime/src/libfaketime.so.1")
        });
    let debian = ["x86_64-linux-gnu", "aarch64-linux-gnu"]
        .map(|arch| PathBuf::from(format!("/usr/lib/{arch}/faketime/libfaketime.so.1")));
    in_venv
        .chain(debian)
        .find(|path| path.exists())
        .unwrap_or_else(|| {
            panic!(
                "libfaketime not found: run deploy/local/setup.sh (it installs the libfaketime \
                 pip package into .venv) or set LIBFAKETIME to libfaketime.so.1"
            )
        })
}

/// Environment for a child whose wall clock runs `offset_s` seconds ahead of this machine's
/// (behind when negative): libfaketime preloaded with a relative offset. The monotonic clock
/// is left alone: the kernel's timed waits (futexes) measure it, so shifting it would break
/// every timeout in the process rather than model a machine whose clock is off.
pub fn skewed_clock(offset_s: i64) -> Vec<(&'static str, String)> {
    vec![
        ("LD_PRELOAD", libfaketime().display().to_string()),
        ("FAKETIME", format!("{offset_s:+}s")),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
    ]
}
