//! Test support: a real `nats-server` on a free port, and the fixture locations.
//!
//! The server binary is `$NATS_SERVER`, else `.venv/bin/nats-server` in the repository (put
//! there by `deploy/local/setup.sh`), else `nats-server` on `PATH`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository; this is a bug")
        .to_path_buf()
}

/// The shared fixtures directory (`../shared/fixtures` beside the repository), or
/// `$QWEN3_FIXTURES` when set.
pub fn fixtures_dir() -> PathBuf {
    std::env::var_os("QWEN3_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/fixtures"))
}

/// The tiny embedding model directory.
pub fn tiny_model_dir() -> PathBuf {
    fixtures_dir().join("qwen3-tiny")
}

/// The tiny reranker directory (weights, tokenizer, `golden_rerank.json`).
pub fn tiny_reranker_dir() -> PathBuf {
    fixtures_dir().join("qwen3-tiny-reranker")
}

/// The `nats-server` binary to run.
pub fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(path);
    }
    let venv = repo_root().join(".venv/bin/nats-server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("nats-server")
}

/// A free TCP port on the loopback interface.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the OS hands out a free port")
}

/// A `nats-server` child process with JetStream, killed on drop.
pub struct NatsServer {
    child: Child,
    port: u16,
    store_dir: PathBuf,
    extra_args: Vec<String>,
}

impl NatsServer {
    /// Starts a server on a free port and waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_with_args(&[])
    }

    /// Starts a server with extra command-line arguments (auth, cluster).
    pub fn start_with_args(extra_args: &[&str]) -> Self {
        let port = free_port();
        let store_dir = std::env::temp_dir().join(format!("nats-js-{}-{port}", std::process::id()));
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let child = spawn(port, &store_dir, &extra_args);
        let server = Self {
            child,
            port,
            store_dir,
            extra_args,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (as a crash would).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn(self.port, &self.store_dir, &self.extra_args);
        self.wait_ready();
    }
}

fn spawn(port: u16, store_dir: &Path, extra_args: &[String]) -> Child {
    let binary = nats_server_binary();
    Command::new(&binary)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store_dir)
        .args(extra_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {} ({e}); run deploy/local/setup.sh or set NATS_SERVER",
                binary.display()
            )
        })
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store_dir);
    }
}
