//! The deployment files (deploy/containers, deploy/compose*.yaml, deploy/k8s, deploy/systemd,
//! deploy/grafana, docs/operations.md) agree with the code: ports, probe routes, image
//! names, environment variables, the production configuration, the JetStream stream and
//! consumer names, and metric names. Everything is read as text or parsed statically; no
//! container engine or cluster is needed. This root holds the shared readers; each
//! deployment layout is checked in a module of its own: [`containers`], [`compose`],
//! [`k8s`], [`systemd`], [`grafana`], [`operations_guide`] and [`second_model`].

#[path = "deploy_manifests/compose.rs"]
mod compose;
#[path = "deploy_manifests/containers.rs"]
mod containers;
#[path = "deploy_manifests/grafana.rs"]
mod grafana;
#[path = "deploy_manifests/k8s.rs"]
mod k8s;
#[path = "deploy_manifests/operations_guide.rs"]
mod operations_guide;
#[path = "deploy_manifests/second_model.rs"]
mod second_model;
#[path = "deploy_manifests/systemd.rs"]
mod systemd;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use e2e_tests::repo_root;
use serde::Deserialize;
use serde_yaml_ng::Value;

// ---------------------------------------------------------------------------------------
// Reading the code and the shipped configuration.
// ---------------------------------------------------------------------------------------

/// The text of `path`, relative to the repository root.
fn read(path: impl AsRef<Path>) -> String {
    let path = repo_root().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Files under `dir` (recursively) whose name satisfies `keep`, sorted.
fn files_under(dir: &Path, keep: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if keep(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// deploy/config/default.toml, parsed.
fn default_toml() -> toml::Table {
    read("deploy/config/default.toml")
        .parse()
        .expect("deploy/config/default.toml parses")
}

/// The gateway port of deploy/config/default.toml.
fn gateway_port() -> u64 {
    let port = default_toml()["gateway"]["port"]
        .as_integer()
        .expect("[gateway] port is an integer");
    u64::try_from(port).expect("a positive port")
}

/// Every source file of the binaries and the shared crate, concatenated, plus
/// docs/configuration.md: where every environment variable the binaries read is named.
fn sources_and_config_doc() -> String {
    let mut text = read("docs/configuration.md");
    for krate in ["common", "gateway", "tokenizer-worker", "gpu-worker"] {
        for file in files_under(&repo_root().join(krate).join("src"), &|p| {
            p.extension().is_some_and(|e| e == "rs")
        }) {
            text.push_str(&std::fs::read_to_string(file).unwrap());
        }
    }
    text
}

/// Metric name -> label names, from the `counter!`/`gauge!`/`histogram!` calls of
/// gateway/src/metrics.rs.
fn gateway_metrics() -> BTreeMap<String, BTreeSet<String>> {
    let source = read("gateway/src/metrics.rs") + &read("gateway/src/metrics/stages.rs");
    let mut metrics: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for kind in ["counter!(", "gauge!(", "histogram!("] {
        for piece in source.split(kind).skip(1) {
            let Some(call) = piece.strip_prefix('"') else {
                continue;
            };
            let end = [".increment(", ".absolute(", ".set(", ".record(", ";"]
                .iter()
                .filter_map(|m| call.find(m))
                .min()
                .unwrap_or(call.len());
            let call = &call[..end];
            let name = &call[..call.find('"').unwrap()];
            let labels = metrics.entry(name.to_string()).or_default();
            // `"label" => value`: every piece before a `" =>` ends with a label literal.
            let pieces: Vec<&str> = call.split("\" =>").collect();
            for piece in &pieces[..pieces.len() - 1] {
                let start = piece.rfind('"').expect("a label literal");
                labels.insert(piece[start + 1..].to_string());
            }
        }
    }
    assert!(
        metrics.contains_key("embed_http_request_duration_seconds"),
        "parsed {metrics:?}"
    );
    assert_eq!(
        metrics["embed_http_requests_total"],
        BTreeSet::from(["route".to_string(), "status".to_string()]),
        "label parsing is off"
    );
    metrics
}

/// Panics unless `name` is an environment variable the binaries read (or the dynamic
/// loader's, for the CUDA libraries). `QWEN3_EMBED__SECTION__KEY` must name a real key.
fn check_env_name(name: &str, known: &str, defaults: &toml::Table, context: &str) {
    if let Some(rest) = name.strip_prefix("QWEN3_EMBED__") {
        let (section, key) = rest
            .split_once("__")
            .unwrap_or_else(|| panic!("{context}: {name} is not QWEN3_EMBED__SECTION__KEY"));
        let (section, key) = (section.to_lowercase(), key.to_lowercase());
        let in_defaults = defaults.get(&section).and_then(|s| s.get(&key)).is_some();
        let documented = read("docs/configuration.md").contains(&format!("| `{key}`"));
        assert!(
            in_defaults || documented,
            "{context}: {name} names [{section}] {key}, which no configuration has"
        );
        return;
    }
    if name == "LD_LIBRARY_PATH" {
        return;
    }
    let word = |i: usize| {
        let before = known[..i].chars().next_back();
        let after = known[i + name.len()..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
            && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
    };
    assert!(
        known.match_indices(name).any(|(i, _)| word(i)),
        "{context}: environment variable {name} is read by no binary (not in */src or docs/configuration.md)"
    );
}

// ---------------------------------------------------------------------------------------
// YAML.
// ---------------------------------------------------------------------------------------

/// Every non-empty document of a YAML file, merge keys applied.
fn yaml_file(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            let mut value =
                Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            value
                .apply_merge()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            value
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// A YAML scalar as a string.
fn yaml_str(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// A YAML sequence of scalars as strings (empty if not a sequence).
fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|s| s.iter().map(yaml_str).collect())
        .unwrap_or_default()
}

/// The value of `--device` in a worker's arguments.
fn device_arg(args: &[String]) -> Option<u64> {
    args.iter()
        .position(|a| a == "--device")
        .and_then(|i| args.get(i + 1))
        .map(|d| d.parse().expect("--device takes an integer"))
}

// ---------------------------------------------------------------------------------------
// NATS identities.
// ---------------------------------------------------------------------------------------

/// The settings naming a process's NATS identity and its seed file.
const IDENTITY_ENV: &str = "QWEN3_EMBED__NATS__IDENTITY";
/// See [`IDENTITY_ENV`].
const NKEY_FILE_ENV: &str = "QWEN3_EMBED__NATS__NKEY_FILE";

/// The `nats-auth` role of a process running `binary` with `args`.
fn expected_role(binary: &str, args: &[String]) -> &'static str {
    let rerank = args
        .windows(2)
        .any(|w| w[0] == "--task" && w[1] == "rerank");
    match (binary, rerank) {
        ("gateway", _) => "gateway",
        ("tokenizer-worker", false) => "tokenizer",
        ("tokenizer-worker", true) => "rerank-tokenizer",
        ("gpu-worker", false) => "gpu",
        ("gpu-worker", true) => "rerank-gpu",
        _ => panic!("no role for {binary} {args:?}"),
    }
}
