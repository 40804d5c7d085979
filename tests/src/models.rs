//! Random Qwen3 models generated for a test run, for tests that need a model of another shape
//! than the shared fixtures (a second embedding model behind one gateway).
//!
//! Models are written by the shared tool `make-random-qwen3.py` (in `$QWEN3_TOOLS`, else
//! `../shared/tools` beside the repository) under `e2e-models/` in the cargo target directory,
//! once: a model whose directory exists is reused. The tool writes into a temporary directory
//! that is renamed into place when complete, so a killed run never leaves half a model. The
//! Python is the repository's `.venv/bin/python` (`deploy/local/setup.sh` installs numpy
//! there), else `python3` on `PATH`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::process::bin_dir;
use crate::repo_root;

/// The shape of a random model: a preset of the tool with its layer count and stored dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomModel {
    /// The tool's `--preset` (`tiny`, `0.6b`, `4b`, `8b`): the widths.
    pub preset: &'static str,
    /// `--layers`: decoder layers (fewer than the preset's keep the model small and fast).
    pub layers: usize,
    /// `--dtype` of the stored weights (`bf16`, `f16`, `f32`).
    pub dtype: &'static str,
    /// `--seed`: the same seed writes the same weights.
    pub seed: u64,
}

impl RandomModel {
    /// The directory name of this shape (`qwen3-0.6b-1layer-bf16-seed7`).
    pub fn dir_name(&self) -> String {
        format!(
            "qwen3-{}-{}layer-{}-seed{}",
            self.preset, self.layers, self.dtype, self.seed
        )
    }

    /// The model's directory (weights, `config.json`, the tiny fixture's tokenizer),
    /// generated on first use. Panics with the tool's output when generation fails.
    pub fn dir(&self) -> PathBuf {
        let dir = generated_models_dir().join(self.dir_name());
        if dir.join("config.json").exists() {
            return dir;
        }
        self.generate(&dir);
        dir
    }

    /// Runs the tool into a fresh temporary directory beside `dir`, then renames it to `dir`.
    fn generate(&self, dir: &Path) {
        let parent = dir
            .parent()
            .expect("a generated model has a parent directory");
        std::fs::create_dir_all(parent).expect("create the generated models directory");
        let staging = parent.join(format!(
            ".{}.partial-{}",
            self.dir_name(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&staging);
        let tool = tools_dir().join("make-random-qwen3.py");
        let started = Instant::now();
        let output = Command::new(python())
            .arg(&tool)
            .args(["--preset", self.preset])
            .args(["--layers", &self.layers.to_string()])
            .args(["--dtype", self.dtype])
            .args(["--seed", &self.seed.to_string()])
            .arg("--out")
            .arg(&staging)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()));
        assert!(
            output.status.success(),
            "{} failed ({}): {}{}",
            tool.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // Another test process may have finished the same model first: keep its copy.
        if std::fs::rename(&staging, dir).is_err() {
            let _ = std::fs::remove_dir_all(&staging);
            assert!(
                dir.join("config.json").exists(),
                "could not move the generated model from {} to {}",
                staging.display(),
                dir.display()
            );
        }
        println!(
            "generated random model {} in {:.1} s",
            dir.display(),
            started.elapsed().as_secs_f64()
        );
    }
}

/// Where generated models live: `e2e-models/` in the cargo target directory (the parent of
/// the binaries' `target/<profile>/`).
pub fn generated_models_dir() -> PathBuf {
    bin_dir()
        .parent()
        .map(|target| target.join("e2e-models"))
        .expect("the binaries sit in target/<profile>; this is a bug")
}

/// The shared tools directory (`../shared/tools` beside the repository), or `$QWEN3_TOOLS`.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("QWEN3_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/tools"))
}

/// The Python that runs the tools: the repository's `.venv` (with numpy), else `python3`.
pub fn python() -> PathBuf {
    let venv = repo_root().join(".venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}
