//! The Qwen3 model: configuration, checkpoint loading and the forward pass over [`crate::ops::Ops`].
//!
//! # Layout
//! - [`config`]: `config.json`, both transformers layouts, validated once.
//! - [`weights`]: memory-mapped safetensors, single file or sharded.
//! - [`qwen3`]: the forward pass, written once for every backend.
//! - [`rerank`]: Qwen3-Reranker scoring, the `yes`/`no` logits of each sequence's last token.
//! - [`heads`]: the head a loaded model computes with (embed or rerank), and the one job
//!   ([`heads::Work`]) and output ([`heads::Output`]) types of both.

pub mod config;
pub mod heads;
pub mod qwen3;
pub mod rerank;
pub mod weights;

use std::path::PathBuf;

use crate::ops::OpError;

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A required file is absent from the model directory.
    #[error("missing file: {0}")]
    MissingFile(String),
    /// `config.json` is invalid.
    #[error("invalid config: {0}")]
    Config(String),
    /// The checkpoint uses a feature this implementation does not support.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// A tensor the model needs is not in the checkpoint.
    #[error("missing tensor `{0}`")]
    MissingTensor(String),
    /// A tensor's shape disagrees with the config.
    #[error("tensor `{name}` has shape {found:?}, the config implies {expected:?}")]
    Shape {
        /// Bare tensor name.
        name: String,
        /// Shape the config implies.
        expected: Vec<usize>,
        /// Shape stored.
        found: Vec<usize>,
    },
    /// A safetensors file is malformed or truncated.
    #[error("invalid safetensors file {path}: {detail}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The caller's input cannot be processed (bad token id, bad dimensions).
    #[error("invalid input: {0}")]
    Input(String),
    /// A backend op failed.
    #[error(transparent)]
    Op(#[from] OpError),
}

use std::path::Path;

use crate::ops::Ops;
use config::Qwen3Config;
use qwen3::Qwen3;
use weights::Weights;

/// Loads a model directory in Hugging Face layout (`config.json` plus `model.safetensors`
/// or its sharded index) onto `backend`.
pub fn load<B: Ops>(dir: &Path, backend: &B) -> Result<Qwen3<B>, ModelError> {
    let (config, weights) = open(dir)?;
    Qwen3::load(backend, &weights, config)
}

/// Reads a model directory's `config.json` (validated) and opens its safetensors, loading
/// nothing onto a backend yet.
pub fn open(dir: &Path) -> Result<(Qwen3Config, Weights), ModelError> {
    let config = Qwen3Config::from_file(&dir.join("config.json"))?;
    let weights = Weights::open(dir)?;
    Ok((config, weights))
}
