//! A loaded model on its backend, and what can go wrong with it ([`EngineError`]).
//!
//! [`DeviceModel`] is the one place the service's device thread ([`crate::device`]) calls
//! the model API: it loads the model (an embedding model, or a reranker for
//! `task = rerank`), runs a batch, and, when a pass fails, asks the backend whether its
//! device can still be trusted.

use std::path::Path;

use common::subjects::Task;
use common::wire::ErrorCode;

use crate::cpu::CpuBackend;
use crate::cuda::{self, CudaBackend, CudaOptions};
use crate::model::config::Qwen3Config;
use crate::model::qwen3::Qwen3;
use crate::model::rerank::{RerankScore, Reranker};
use crate::model::{self, ModelError};
use crate::ops::{BatchLayout, DeviceInfo, OpError, Ops};

/// What can go wrong in the engine, by what the worker does about it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The settings ask for something the backend cannot do (CUDA in f32).
    #[error("configuration: {0}")]
    Config(String),
    /// The device could not be opened or the model not loaded onto it.
    #[error("cannot start the model: {0}")]
    Start(String),
    /// The device can no longer compute: its thread panicked, hung or ended, or the device
    /// reported a sticky error (CUDA's illegal address, launch failure, ECC...). Fatal for
    /// the worker: it hands its batches back and exits.
    #[error("device lost: {0}")]
    DeviceLost(String),
    /// The batch's input cannot be computed (a token outside the vocabulary, bad `dims`, a
    /// batch sent to the wrong task's worker). Only this batch fails.
    #[error("invalid input: {0}")]
    Input(String),
    /// The batch is larger than the worker accepts or its device memory holds. Only this
    /// batch fails.
    #[error("batch refused: {0}")]
    Refused(String),
    /// The pass failed for a reason the device survives (a non-sticky device error, an
    /// inconsistent shape). Only this batch fails.
    #[error("pass failed: {0}")]
    Pass(ModelError),
}

impl EngineError {
    /// The wire error code the requests of a batch that failed this way get.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Input(_) => ErrorCode::InvalidRequest,
            Self::Refused(_) => ErrorCode::Overloaded,
            Self::Config(_) | Self::Start(_) | Self::DeviceLost(_) | Self::Pass(_) => {
                ErrorCode::Internal
            }
        }
    }

    /// Whether the worker can no longer compute (every later batch would fail too).
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::DeviceLost(_))
    }

    /// A failed pass, sorted by whose fault it is.
    fn from_pass(error: ModelError) -> Self {
        match error {
            ModelError::Input(detail) => Self::Input(detail),
            ModelError::Op(OpError::OutOfMemory(detail)) => Self::Refused(detail),
            other => Self::Pass(other),
        }
    }
}

/// Whether a backend's device can still be trusted after a failed pass.
pub trait DeviceCheck {
    /// Why the device can no longer compute, when it cannot (a sticky error that every
    /// later call would repeat); `None` when it is fine.
    fn lost(&self) -> Option<String>;
}

impl DeviceCheck for CpuBackend {
    /// The CPU backend has no device state to lose.
    fn lost(&self) -> Option<String> {
        None
    }
}

impl DeviceCheck for CudaBackend {
    fn lost(&self) -> Option<String> {
        self.sticky_error().map(|e| e.to_string())
    }
}

/// Which backend runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// The f32 CPU backend (exact).
    Cpu,
    /// The CUDA backend (bf16).
    Cuda,
    /// CUDA when a device is present, else the CPU.
    #[default]
    Auto,
}

/// Precision of the forward pass.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// The backend's natural precision: f32 on the CPU, bf16 with CUDA.
    #[default]
    Auto,
    /// f32 everywhere (the exact CPU mode; not offered by the CUDA backend).
    F32,
    /// bf16 weights and products, f32 accumulation (CPU: the avx512_bf16 instructions when
    /// present, a portable loop otherwise).
    Bf16,
}

/// A model ready to embed packed batches.
pub trait Embedder {
    /// Embeds sequences of `lengths` packed in `token_ids`; sequence `s` gets `dims[s]` values.
    fn embed(
        &self,
        token_ids: &[u32],
        lengths: &[usize],
        dims: &[usize],
    ) -> Result<Vec<Vec<f32>>, ModelError>;
    /// Backend name (`cpu-f32`).
    fn backend(&self) -> String;
    /// The device and its memory.
    fn device_info(&self) -> DeviceInfo;
    /// Width of the model's output vectors.
    fn hidden_size(&self) -> usize;
    /// Why the device can no longer compute, when it cannot ([`DeviceCheck`]).
    fn device_lost(&self) -> Option<String>;
}

/// A Qwen3 model loaded on backend `B`.
pub struct Loaded<B: Ops> {
    backend: B,
    model: Qwen3<B>,
}

impl<B: Ops> Loaded<B> {
    /// Loads the model directory `dir` onto `backend`.
    pub fn new(backend: B, dir: &Path) -> Result<Self, ModelError> {
        let model = model::load(dir, &backend)?;
        Ok(Self { backend, model })
    }
}

impl<B: Ops + DeviceCheck> Embedder for Loaded<B> {
    fn embed(
        &self,
        token_ids: &[u32],
        lengths: &[usize],
        dims: &[usize],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let layout = BatchLayout::from_lengths(lengths)?;
        self.model.embed(&self.backend, token_ids, &layout, dims)
    }

    fn backend(&self) -> String {
        self.backend.name()
    }

    fn device_info(&self) -> DeviceInfo {
        self.backend.device_info()
    }

    fn hidden_size(&self) -> usize {
        self.model.config().hidden_size
    }

    fn device_lost(&self) -> Option<String> {
        self.backend.lost()
    }
}

/// A reranker ready to score packed batches of formatted (query, document) prompts.
pub trait Scorer {
    /// Scores sequences of `lengths` packed in `token_ids`, one score per sequence.
    fn score(&self, token_ids: &[u32], lengths: &[usize]) -> Result<Vec<RerankScore>, ModelError>;
    /// Backend name (`cpu-f32`).
    fn backend(&self) -> String;
    /// The device and its memory.
    fn device_info(&self) -> DeviceInfo;
    /// Width of the decoder's hidden state.
    fn hidden_size(&self) -> usize;
    /// Why the device can no longer compute, when it cannot ([`DeviceCheck`]).
    fn device_lost(&self) -> Option<String>;
}

/// A Qwen3-Reranker loaded on backend `B`.
pub struct LoadedReranker<B: Ops> {
    backend: B,
    reranker: Reranker<B>,
}

impl<B: Ops> LoadedReranker<B> {
    /// Loads the reranker directory `dir` onto `backend`.
    pub fn new(backend: B, dir: &Path) -> Result<Self, ModelError> {
        let reranker = Reranker::load(dir, &backend)?;
        Ok(Self { backend, reranker })
    }
}

impl<B: Ops + DeviceCheck> Scorer for LoadedReranker<B> {
    fn score(&self, token_ids: &[u32], lengths: &[usize]) -> Result<Vec<RerankScore>, ModelError> {
        let layout = BatchLayout::from_lengths(lengths)?;
        self.reranker.score(&self.backend, token_ids, &layout)
    }

    fn backend(&self) -> String {
        self.backend.name()
    }

    fn device_info(&self) -> DeviceInfo {
        self.backend.device_info()
    }

    fn hidden_size(&self) -> usize {
        self.reranker.model().config().hidden_size
    }

    fn device_lost(&self) -> Option<String> {
        self.backend.lost()
    }
}

/// How to place the model.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Which backend runs the model.
    pub backend: BackendChoice,
    /// CUDA device ordinal.
    pub device: usize,
    /// Precision of the forward pass.
    pub dtype: Dtype,
    /// Share of the device's memory the worker may take (CUDA).
    pub gpu_memory_fraction: f64,
    /// Largest batch in tokens the worker must accept; refused at start when the memory
    /// share cannot hold it (CUDA). `None`: whatever the share leaves.
    pub max_batch_tokens: Option<usize>,
}

impl EngineOptions {
    /// CPU placement.
    pub fn cpu() -> Self {
        Self {
            backend: BackendChoice::Cpu,
            dtype: Dtype::F32,
            device: 0,
            gpu_memory_fraction: 1.0,
            max_batch_tokens: None,
        }
    }
}

/// Whether `options` place the model on CUDA (`auto`: when a device is present).
fn uses_cuda(options: &EngineOptions) -> bool {
    match options.backend {
        BackendChoice::Cpu => false,
        BackendChoice::Cuda => true,
        BackendChoice::Auto => cuda::is_available(),
    }
}

/// A CUDA start-up failure.
fn cuda_error(e: cuda::CudaError) -> EngineError {
    EngineError::Start(e.to_string())
}

/// A model that did not load.
fn load_error(e: ModelError) -> EngineError {
    EngineError::Start(e.to_string())
}

/// The CPU backend in the precision `options` ask for.
fn cpu_backend(options: &EngineOptions) -> CpuBackend {
    match options.dtype {
        Dtype::Auto | Dtype::F32 => CpuBackend::F32,
        Dtype::Bf16 => CpuBackend::bf16(),
    }
}

/// The CUDA backend `options` ask for.
fn cuda_backend(options: &EngineOptions) -> Result<CudaBackend, EngineError> {
    if options.dtype == Dtype::F32 {
        return Err(EngineError::Config(
            "the CUDA backend computes in bf16; set dtype to bf16 or auto".into(),
        ));
    }
    CudaBackend::new(
        options.device,
        CudaOptions {
            gpu_memory_fraction: options.gpu_memory_fraction,
        },
    )
    .map_err(cuda_error)
}

/// Plans the device memory of a model with `config` loaded on `backend`.
fn plan_memory(
    backend: &CudaBackend,
    config: &Qwen3Config,
    options: &EngineOptions,
) -> Result<(), EngineError> {
    let plan = backend
        .plan_memory(
            cuda::memory::activation_bytes_per_token(config),
            options.max_batch_tokens,
        )
        .map_err(cuda_error)?;
    tracing::info!(
        max_batch_tokens = plan.max_batch_tokens,
        "device memory planned"
    );
    Ok(())
}

/// Loads `dir` on the chosen backend (`auto`: CUDA when a device is present).
pub fn load(dir: &Path, options: &EngineOptions) -> Result<Box<dyn Embedder>, EngineError> {
    if !uses_cuda(options) {
        return Ok(Box::new(
            Loaded::new(cpu_backend(options), dir).map_err(load_error)?,
        ));
    }
    let loaded = Loaded::new(cuda_backend(options)?, dir).map_err(load_error)?;
    plan_memory(&loaded.backend, loaded.model.config(), options)?;
    Ok(Box::new(loaded))
}

/// Loads the reranker directory `dir` on the chosen backend.
pub fn load_reranker(dir: &Path, options: &EngineOptions) -> Result<Box<dyn Scorer>, EngineError> {
    if !uses_cuda(options) {
        return Ok(Box::new(
            LoadedReranker::new(cpu_backend(options), dir).map_err(load_error)?,
        ));
    }
    let loaded = LoadedReranker::new(cuda_backend(options)?, dir).map_err(load_error)?;
    plan_memory(&loaded.backend, loaded.reranker.model().config(), options)?;
    Ok(Box::new(loaded))
}

/// What the model computed for a batch.
#[derive(Debug)]
pub enum Output {
    /// One vector per sequence.
    Vectors(Vec<Vec<f32>>),
    /// One rerank score per sequence.
    Scores(Vec<RerankScore>),
}

/// What to compute for a batch besides its tokens.
#[derive(Debug, Clone)]
pub enum Work {
    /// Embeddings, `dims[s]` values for sequence `s`.
    Embed {
        /// Output size of each sequence.
        dims: Vec<usize>,
    },
    /// Rerank scores.
    Score,
}

/// What the engine reports once the model is loaded.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    /// Backend name.
    pub backend: String,
    /// Device and memory.
    pub device: DeviceInfo,
    /// Output width.
    pub hidden_size: usize,
}

/// The model a device thread owns: the one place the service calls the model API.
pub enum DeviceModel {
    /// An embedding model.
    Embed(Box<dyn Embedder>),
    /// A reranker.
    Rerank(Box<dyn Scorer>),
}

impl DeviceModel {
    /// Loads the model of `task` from `dir`.
    pub fn load(dir: &Path, options: &EngineOptions, task: Task) -> Result<Self, EngineError> {
        Ok(match task {
            Task::Embed => Self::Embed(load(dir, options)?),
            Task::Rerank => Self::Rerank(load_reranker(dir, options)?),
        })
    }

    /// What runs the model.
    pub fn info(&self) -> EngineInfo {
        match self {
            Self::Embed(m) => EngineInfo {
                backend: m.backend(),
                device: m.device_info(),
                hidden_size: m.hidden_size(),
            },
            Self::Rerank(m) => EngineInfo {
                backend: m.backend(),
                device: m.device_info(),
                hidden_size: m.hidden_size(),
            },
        }
    }

    /// Runs one batch. A failed pass is [`EngineError::DeviceLost`] when the backend says its
    /// device can no longer be trusted, else the batch's own failure.
    pub fn compute(
        &self,
        token_ids: &[u32],
        lengths: &[usize],
        work: &Work,
    ) -> Result<Output, EngineError> {
        let wrong_task = |what: &str| {
            EngineError::Input(format!(
                "this worker's model cannot {what}; the batch went to the wrong worker"
            ))
        };
        let result = match (self, work) {
            (Self::Embed(m), Work::Embed { dims }) => {
                m.embed(token_ids, lengths, dims).map(Output::Vectors)
            }
            (Self::Rerank(m), Work::Score) => m.score(token_ids, lengths).map(Output::Scores),
            (_, Work::Embed { .. }) => return Err(wrong_task("embed")),
            (_, Work::Score) => return Err(wrong_task("score pairs")),
        };
        result.map_err(|error| {
            if matches!(error, ModelError::Input(_)) {
                return EngineError::from_pass(error);
            }
            let lost = match self {
                Self::Embed(m) => m.device_lost(),
                Self::Rerank(m) => m.device_lost(),
            };
            match lost {
                Some(reason) => EngineError::DeviceLost(format!("{reason} (after: {error})")),
                None => EngineError::from_pass(error),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_maps_to_one_wire_code_and_only_a_lost_device_is_fatal() {
        let cases = [
            (
                EngineError::Input("token 9 >= vocab".into()),
                ErrorCode::InvalidRequest,
            ),
            (
                EngineError::Refused("too big".into()),
                ErrorCode::Overloaded,
            ),
            (
                EngineError::Pass(ModelError::Input("x".into())),
                ErrorCode::Internal,
            ),
            (EngineError::DeviceLost("panic".into()), ErrorCode::Internal),
        ];
        for (error, code) in cases {
            assert_eq!(error.code(), code, "{error}");
            assert_eq!(
                error.is_fatal(),
                matches!(error, EngineError::DeviceLost(_))
            );
        }
        assert!(matches!(
            EngineError::from_pass(ModelError::Op(OpError::OutOfMemory("x".into()))),
            EngineError::Refused(_)
        ));
        assert!(matches!(
            EngineError::from_pass(ModelError::Op(OpError::Device("x".into()))),
            EngineError::Pass(_)
        ));
    }
}
