//! Test support: a real `nats-server` on a free port (or a cluster of three), the fixture
//! locations, the pipeline's binaries as child processes ([`process`]), and what the tests
//! of whole stacks under faults share: running alone, signals, waiting until a stack serves
//! ([`harness`]), a background load of checked requests ([`load`]), and random-weight
//! models generated once per target directory for tests that need a second shape ([`models`]).
//!
//! The server binary is `$NATS_SERVER`, else `.venv/bin/nats-server` in the repository (put
//! there by `deploy/local/setup.sh`), else `nats-server` on `PATH`.

pub mod harness;
pub mod load;
pub mod models;
pub mod process;

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// The `server_name` the server announces, to tell it from another test's server.
    name: String,
}

/// How many ports [`NatsServer::start_with_args`] tries before giving up.
const START_ATTEMPTS: usize = 5;

impl NatsServer {
    /// Starts a server on a free port and waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_with_args(&[])
    }

    /// Starts a server with extra command-line arguments (auth, cluster). A free port can be
    /// taken by a test running beside this one before the server binds it (the server then
    /// exits, and the other test's server answers on the port): readiness therefore means the
    /// server that answers announces this one's name, and another port is tried otherwise.
    pub fn start_with_args(extra_args: &[&str]) -> Self {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        // Unique in this process: a server that loses its port to another test's server must
        // not share (and on drop delete) that server's store.
        let unique = format!(
            "{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        );
        let mut extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let name = match extra_args.iter().position(|a| a == "--server_name") {
            Some(i) => extra_args[i + 1].clone(),
            None => {
                let name = format!("test-{unique}");
                extra_args.extend(["--server_name".to_string(), name.clone()]);
                name
            }
        };
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let store_dir = std::env::temp_dir().join(format!("nats-js-{unique}-{port}"));
            let child = spawn(port, &store_dir, &extra_args);
            let mut server = Self {
                child,
                port,
                store_dir,
                extra_args: extra_args.clone(),
                name: name.clone(),
            };
            if server.wait_ready() {
                return server;
            }
        }
        panic!("nats-server {name} did not start on any of {START_ATTEMPTS} free ports");
    }

    /// Waits until this server (not another on its port) accepts connections; `false` when it
    /// exited instead.
    fn wait_ready(&mut self) -> bool {
        // Generous: three cluster nodes starting beside a busy test run can take a while.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if announced_name(self.port).as_deref() == Some(self.name.as_str()) {
                return true;
            }
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
        assert!(
            self.wait_ready(),
            "nats-server {} did not start again on port {}",
            self.name,
            self.port
        );
    }
}

/// The `server_name` in the INFO line of whatever server listens on `port`, if one answers.
fn announced_name(port: u16) -> Option<String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    let info: serde_json::Value = serde_json::from_str(line.strip_prefix("INFO ")?.trim()).ok()?;
    info["server_name"].as_str().map(str::to_string)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_on_a_taken_port_is_not_mistaken_for_the_one_there() {
        let first = NatsServer::start();
        assert_eq!(
            announced_name(first.port()).as_deref(),
            Some(first.name.as_str())
        );
        let name = "test-second".to_string();
        let args = vec!["--server_name".to_string(), name.clone()];
        let store_dir = std::env::temp_dir().join(format!("nats-js-{}-second", std::process::id()));
        let mut second = NatsServer {
            child: spawn(first.port(), &store_dir, &args),
            port: first.port(),
            store_dir,
            extra_args: args,
            name,
        };
        // The second server cannot bind the port and exits; the first keeps answering there.
        assert!(!second.wait_ready());
        assert_eq!(
            announced_name(first.port()).as_deref(),
            Some(first.name.as_str())
        );
    }
}
