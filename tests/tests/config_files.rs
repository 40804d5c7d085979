//! The shipped configuration files parse into every binary's typed configuration (unknown
//! keys are errors there, so the files, the code and docs/configuration.md stay in step).

use common::config::ConfigSource;
use common::nats::NatsConfig;
use common::queue::{QueueConfig, Storage};
use e2e_tests::repo_root;

fn source(profile: Option<&str>) -> ConfigSource {
    ConfigSource {
        config_dir: Some(repo_root().join("deploy/config")),
        profile: profile.map(String::from),
    }
}

#[test]
fn default_and_profiles_load_for_every_binary() {
    for profile in [None, Some("dev"), Some("production")] {
        let source = source(profile);
        let gateway: gateway::config::GatewayConfig = source.load("gateway").unwrap();
        gateway.validate().unwrap();
        assert_eq!(gateway.port, 4008);
        assert_eq!(gateway.root_path, "/api/v1");
        let tokenizer: tokenizer_worker::config::TokenizerWorkerConfig =
            source.load("tokenizer").unwrap();
        let gpu: gpu_worker::config::GpuWorkerConfig = source.load("gpu").unwrap();
        // A GPU worker refuses batches over its own budget: it must hold the tokenizers'.
        assert!(
            gpu.max_batch_tokens >= tokenizer.max_batch_tokens,
            "profile {profile:?}: gpu.max_batch_tokens {} < tokenizer.max_batch_tokens {}",
            gpu.max_batch_tokens,
            tokenizer.max_batch_tokens
        );
        let nats: NatsConfig = source.load("nats").unwrap();
        assert_eq!(nats.subject_prefix, "embed");
        let queue: QueueConfig = source.load("queue").unwrap();
        gateway.validate_against(&queue).unwrap();
    }
    let production: QueueConfig = source(Some("production")).load("queue").unwrap();
    assert_eq!(production.storage, Storage::File);
    let dev: gpu_worker::config::GpuWorkerConfig = source(Some("dev")).load("gpu").unwrap();
    assert_eq!(dev.gpu_memory_fraction, 0.5);
}

#[test]
fn every_documented_key_exists_in_default_toml() {
    let doc = std::fs::read_to_string(repo_root().join("docs/configuration.md")).unwrap();
    let default = std::fs::read_to_string(repo_root().join("deploy/config/default.toml")).unwrap();
    let mut section = String::new();
    let mut checked = 0;
    for line in doc.lines() {
        if let Some(name) = line.strip_prefix("## `[").and_then(|l| l.split(']').next()) {
            section = name.to_string();
            continue;
        }
        let Some(cell) = line.strip_prefix("| `") else {
            continue;
        };
        let key = cell.split('`').next().unwrap_or("");
        // Optional settings (credentials, TLS, truncate override) have no default to show.
        let optional = line.contains("| none |") || line.contains("| unset |");
        if section.is_empty()
            || key.is_empty()
            || optional
            || key.contains(' ')
            || key.contains('(')
        {
            continue;
        }
        // A section header starts its line (comments may name sections too).
        let header = format!("\n[{section}]\n");
        let body = default
            .split(&header)
            .nth(1)
            .unwrap_or("")
            .split("\n[")
            .next()
            .unwrap_or("");
        assert!(
            body.lines().any(|l| l.starts_with(&format!("{key} ="))),
            "docs/configuration.md documents {section}.{key}, which default.toml lacks"
        );
        checked += 1;
    }
    assert!(checked > 30, "only {checked} keys checked");
}

#[test]
fn gateway_refuses_a_request_timeout_the_work_queue_would_not_honour() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let mut child = Command::new(e2e_tests::process::binary("gateway"))
        .args(["--port", "0", "--nats-url"])
        .arg(format!("nats://127.0.0.1:{}", e2e_tests::free_port()))
        .env("QWEN3_EMBED_CONFIG_DIR", repo_root().join("deploy/config"))
        .env_remove("QWEN3_EMBED_PROFILE")
        .env("QWEN3_EMBED__GATEWAY__REQUEST_TIMEOUT_S", "600")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the gateway");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the gateway") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("the gateway started with request_timeout_s 600 > [queue] max_age_s 300");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("request_timeout_s 600 exceeds [queue] max_age_s 300"),
        "{stderr}"
    );
}
