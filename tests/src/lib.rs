//! Test support: a real `nats-server` on a free port (or a cluster of three), the fixture
//! locations, and the pipeline's binaries as child processes ([`process`]).
//!
//! The server binary is `$NATS_SERVER`, else `.venv/bin/nats-server` in the repository (put
//! there by `deploy/local/setup.sh`), else `nats-server` on `PATH`.

pub mod process;

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
        // Generous: three cluster nodes starting beside a busy test run can take a while.
        let deadline = Instant::now() + Duration::from_secs(30);
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

/// A JetStream cluster of `nats-server`s on this machine, routed to each other on free
/// ports; every node is killed on drop.
pub struct NatsCluster {
    /// The nodes, in start order.
    pub nodes: Vec<NatsServer>,
    /// Each node's HTTP monitoring port (`/connz`, `/jsz`).
    monitor_ports: Vec<u16>,
}

impl NatsCluster {
    /// Starts `size` nodes (named `n1`, `n2`, ...) with JetStream, each routed to all the
    /// others, and waits until each accepts client connections. JetStream elects its meta
    /// leader a little later: wait for it (e.g. by creating a stream) before relying on it.
    pub fn start(size: usize) -> Self {
        let cluster_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let monitor_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let routes = |me: usize| {
            cluster_ports
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != me)
                .map(|(_, port)| format!("nats://127.0.0.1:{port}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let nodes = (0..size)
            .map(|i| {
                let name = format!("n{}", i + 1);
                let listen = format!("nats://127.0.0.1:{}", cluster_ports[i]);
                let routes = routes(i);
                let monitor = monitor_ports[i].to_string();
                NatsServer::start_with_args(&[
                    "-m",
                    &monitor,
                    "--server_name",
                    &name,
                    "--cluster_name",
                    "qwen3-test",
                    "--cluster",
                    &listen,
                    "--routes",
                    &routes,
                ])
            })
            .collect();
        Self {
            nodes,
            monitor_ports,
        }
    }

    /// The HTTP monitoring base URL of node `index`.
    pub fn monitor_url(&self, index: usize) -> String {
        format!("http://127.0.0.1:{}", self.monitor_ports[index])
    }

    /// Every node's client URL, comma-separated (what clients are given to fail over).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}
