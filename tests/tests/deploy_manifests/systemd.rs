//! The systemd units (deploy/systemd): each runs its binary hardened, as a non-root user,
//! with time to drain, and names only environment variables the binaries read.

use std::collections::{BTreeMap, BTreeSet};

use e2e_tests::repo_root;

use super::{check_env_name, default_toml, files_under, read, sources_and_config_doc};

#[test]
fn systemd_units_run_the_binaries_hardened_with_a_drain() {
    let known = sources_and_config_doc();
    let defaults = default_toml();
    let dir = repo_root().join("deploy/systemd");
    let mut env_files = BTreeSet::new();
    let mut units = BTreeMap::new();
    for path in files_under(&dir, &|p| p.extension().is_some_and(|e| e == "service")) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('#') || line.starts_with('[') {
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                keys.entry(k.to_string()).or_default().push(v.to_string());
            }
        }
        let one = |k: &str| {
            keys.get(k)
                .and_then(|v| v.last())
                .cloned()
                .unwrap_or_else(|| panic!("{name}: no {k}="))
        };
        assert_eq!(one("Restart"), "on-failure", "{name}");
        assert_eq!(one("KillSignal"), "SIGTERM", "{name}");
        assert_eq!(one("NoNewPrivileges"), "yes", "{name}");
        assert_eq!(one("ProtectSystem"), "strict", "{name}");
        let user = one("User");
        assert!(user != "root" && !user.is_empty(), "{name}: User={user}");
        let stop: u64 = one("TimeoutStopSec").trim_end_matches('s').parse().unwrap();
        assert!(
            stop >= 30,
            "{name}: TimeoutStopSec={stop} leaves no time to drain"
        );
        env_files.insert(one("EnvironmentFile"));
        for assignment in keys.get("Environment").into_iter().flatten() {
            let var = assignment.split('=').next().unwrap();
            check_env_name(var, &known, &defaults, &name);
        }
        let exec = one("ExecStart");
        let binary = exec
            .split_whitespace()
            .next()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap();
        units.insert(name, (binary.to_string(), exec));
    }
    let unit = |n: &str| {
        units
            .get(n)
            .unwrap_or_else(|| panic!("no deploy/systemd/{n}"))
    };
    assert_eq!(unit("qwen3-embed-gateway.service").0, "gateway");
    assert_eq!(
        unit("qwen3-embed-tokenizer-worker@.service").0,
        "tokenizer-worker"
    );
    let (binary, exec) = unit("qwen3-embed-gpu-worker@.service");
    assert_eq!(binary, "gpu-worker");
    assert!(
        exec.contains("--device %i"),
        "the instance is the device index"
    );
    // The shipped EnvironmentFile example names only variables the binaries read.
    assert_eq!(env_files.len(), 1, "{env_files:?}");
    let example = env_files
        .first()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    for line in read(format!("deploy/systemd/{example}")).lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let var = line.split('=').next().unwrap();
        check_env_name(var, &known, &defaults, &example);
    }
}
