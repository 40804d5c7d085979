//! What the tests of whole stacks under faults share (`faults`, `rerank_faults`,
//! `launcher`): each test alone on its own runtime ([`serial`]), the settings the fault tests
//! give every process, signals to a process, and waiting until a stack serves.

use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Settings of every process in the fault tests: a dead GPU worker's batches come back after
/// 2 s; requests have 15 s ([`DEADLINE`]); tokenizer acknowledgements are awaited 1 s (the
/// default).
pub const FAULT_ENV: &[(&str, &str)] = &[
    ("QWEN3_EMBED__QUEUE__ACK_WAIT_S", "2"),
    ("QWEN3_EMBED__GATEWAY__REQUEST_TIMEOUT_S", "15"),
    ("QWEN3_EMBED__GATEWAY__TOKENIZER_ACK_TIMEOUT_MS", "1000"),
];

/// The gateway's deadline under [`FAULT_ENV`].
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Serializes the [`serial`] tests of one test binary (each binary is a process of its own):
/// each starts several processes, and the timing bounds they check need the machine's cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs one test body alone among this binary's serial tests, on its own two-thread runtime.
pub fn serial(test: impl Future<Output = ()>) {
    let _alone = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(test);
}

/// Sends signal `name` (`STOP`, `CONT`, `KILL`, `TERM`) to process `pid`.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .expect("run kill(1)");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// Polls `POST {base}{path}` with `body` until the stack answers 200, for at most `patience`.
pub async fn wait_serving(base: &str, path: &str, body: serde_json::Value, patience: Duration) {
    let deadline = Instant::now() + patience;
    let http = reqwest::Client::new();
    loop {
        let answered = http
            .post(format!("{base}{path}"))
            .json(&body)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if answered {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{base}{path} served no request within {patience:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
