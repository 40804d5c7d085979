//! `deploy/local/run.sh` with a Hugging Face id it cannot fetch: offline (`HF_HUB_OFFLINE=1`)
//! and not in the cache, it must stop at once with a message saying why and what to do,
//! before building or starting anything.

use std::process::Command;

use e2e_tests::repo_root;

#[test]
fn offline_run_with_an_uncached_hub_id_says_what_to_do() {
    let cache = std::env::temp_dir().join(format!("hf-home-empty-{}", std::process::id()));
    std::fs::create_dir_all(&cache).unwrap();
    let output = Command::new(repo_root().join("deploy/local/run.sh"))
        .args(["--model", "qwen3-embed-tests/not-cached"])
        .env("HF_HOME", &cache)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run deploy/local/run.sh (deploy/local/setup.sh installs huggingface_hub)");
    let _ = std::fs::remove_dir_all(&cache);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    for needle in [
        "qwen3-embed-tests/not-cached is not in the Hugging Face cache",
        "HF_HUB_OFFLINE is set",
        "Pass --model with a local directory",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
    assert!(
        !stderr.contains("building") && !stderr.contains("Traceback"),
        "{stderr}"
    );
}
