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
        let _: QueueConfig = source.load("queue").unwrap();
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
        let header = format!("[{section}]");
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
