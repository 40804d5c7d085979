//! A loaded model on its backend, and what can go wrong with it ([`EngineError`]).
//!
//! [`load`] picks the backend and the head (embedding, or a reranker for `task = rerank`);
//! the [`DeviceModel`] it returns is the one place the service's device thread
//! ([`crate::device`]) calls the model API: it runs a batch ([`Work`] in, [`Output`] out)
//! and, when a pass fails, asks the backend whether its device can still be trusted. With
//! CUDA graphs on, `query_graphs` records the graphs of lone queries before it returns.

mod query_graphs;

use std::path::Path;
use std::sync::Arc;

use common::subjects::Task;
use common::wire::ErrorCode;

use crate::cpu::CpuBackend;
use crate::cpu::pack_bf16::Kernel;
use crate::cuda::{self, CudaBackend, CudaOptions};
use crate::model::config::Qwen3Config;
use crate::model::heads::Head;
pub use crate::model::heads::{Output, Work};
use crate::model::qwen3::Qwen3;
use crate::model::rerank::{AnswerTokens, RerankHead};
use crate::model::{self, ModelError};
use crate::ops::{BatchLayout, DeviceInfo, OpError, Ops};
use crate::profile::{OpTimes, Profiled};
pub use query_graphs::record_query_graphs;

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

    /// Makes the device fault as a broken kernel would, for the test-only fault hook;
    /// `Err` (why) where there is no device to fault.
    fn provoke_fault(&self) -> Result<(), String>;
}

impl DeviceCheck for CpuBackend {
    /// The CPU backend has no device state to lose.
    fn lost(&self) -> Option<String> {
        None
    }

    fn provoke_fault(&self) -> Result<(), String> {
        Err("`device_fault` needs the CUDA backend; the CPU has no device to fault".into())
    }
}

impl DeviceCheck for CudaBackend {
    fn lost(&self) -> Option<String> {
        self.sticky_error().map(|e| e.to_string())
    }

    fn provoke_fault(&self) -> Result<(), String> {
        self.launch_trap().map_err(|e| e.to_string())
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
    /// bf16 weights and products, f32 accumulation (CPU: AMX tiles, else the avx512_bf16
    /// instructions when present, a portable loop otherwise).
    Bf16,
    /// FP8 (E4M3) weights per output channel and activations per token in the matrix
    /// products, f32 accumulation, bf16 elsewhere: the CUDA backend on compute capability
    /// 9.0 or newer only.
    Fp8,
}

/// The CPU's bf16 matrix path (the bf16 CPU backend only): the fastest this CPU runs, or
/// one named (start-up fails when the CPU cannot run it).
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
#[serde(rename_all = "snake_case")]
pub enum CpuKernel {
    /// AMX tiles, then `avx512_bf16`, then the portable loop: the first this CPU runs.
    #[default]
    Auto,
    /// AMX tiles (`amx_bf16`; the kernel must grant the tile state).
    Amx,
    /// The `vdpbf16ps` dot product (`avx512_bf16`).
    #[value(name = "avx512_bf16")]
    Avx512Bf16,
    /// The portable loop.
    Portable,
}

impl CpuKernel {
    /// The kernel this choice names on this CPU; an error naming the choice when the CPU
    /// cannot run it.
    pub fn resolve(self) -> Result<Kernel, EngineError> {
        let kernel = match self {
            Self::Auto => return Ok(Kernel::detect()),
            Self::Amx => Kernel::Amx,
            Self::Avx512Bf16 => Kernel::Avx512Bf16,
            Self::Portable => Kernel::Portable,
        };
        if kernel.supported() {
            Ok(kernel)
        } else {
            Err(EngineError::Config(format!(
                "cpu_kernel {} is not available on this CPU (or, for AMX, the kernel refused the \
                 tile state); this CPU runs {}: set cpu_kernel to auto",
                kernel.name(),
                Kernel::detect().name()
            )))
        }
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
    /// The bf16 CPU backend's matrix path.
    pub cpu_kernel: CpuKernel,
    /// Share of the device's memory the worker may take (CUDA).
    pub gpu_memory_fraction: f64,
    /// Largest batch in tokens the worker must accept; refused at start when the memory
    /// share cannot hold it (CUDA). `None`: whatever the share leaves.
    pub max_batch_tokens: Option<usize>,
    /// Largest batch in tokens run as a recorded CUDA graph; 0: none (CUDA).
    pub cuda_graph_max_tokens: usize,
    /// Tokens of the MLP's chunks (CUDA; `bench --mlp-chunk-tokens`); 0: the whole batch.
    pub cuda_mlp_chunk_tokens: usize,
    /// The q head norms and rotary embedding applied by the attention kernel (CUDA; `bench
    /// --fuse-q-norm-rope`).
    pub cuda_fuse_q_norm_rope: bool,
}

impl EngineOptions {
    /// CPU placement.
    pub fn cpu() -> Self {
        Self {
            backend: BackendChoice::Cpu,
            dtype: Dtype::F32,
            cpu_kernel: CpuKernel::Auto,
            device: 0,
            gpu_memory_fraction: 1.0,
            max_batch_tokens: None,
            cuda_graph_max_tokens: 0,
            cuda_mlp_chunk_tokens: 0,
            cuda_fuse_q_norm_rope: false,
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

/// The CPU backend in the precision (and, in bf16, on the matrix path) `options` ask for.
fn cpu_backend(options: &EngineOptions) -> Result<CpuBackend, EngineError> {
    Ok(match options.dtype {
        Dtype::Auto | Dtype::F32 => CpuBackend::F32,
        Dtype::Bf16 => CpuBackend::with_kernel(options.cpu_kernel.resolve()?),
        Dtype::Fp8 => {
            return Err(EngineError::Config(
                "dtype fp8 needs the CUDA backend on compute capability 9.0 or newer; the CPU \
                 backend computes in f32 or bf16"
                    .into(),
            ));
        }
    })
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
            fp8: options.dtype == Dtype::Fp8,
            graph_max_tokens: options.cuda_graph_max_tokens,
            mlp_chunk_tokens: options.cuda_mlp_chunk_tokens,
            fuse_q_norm_rope: options.cuda_fuse_q_norm_rope,
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

/// Loads the model of `task` from `dir` (an embedding model, or a reranker for `rerank`) on
/// the chosen backend (`auto`: CUDA when a device is present).
pub fn load(
    dir: &Path,
    options: &EngineOptions,
    task: Task,
) -> Result<Box<dyn DeviceModel>, EngineError> {
    if !uses_cuda(options) {
        let loaded = Loaded::new(cpu_backend(options)?, dir, task).map_err(load_error)?;
        return Ok(Box::new(loaded));
    }
    let loaded = Loaded::new(cuda_backend(options)?, dir, task).map_err(load_error)?;
    plan_memory(&loaded.backend, loaded.model.config(), options)?;
    if options.cuda_graph_max_tokens > 0 {
        record_query_graphs(
            &loaded.backend,
            &loaded.model,
            options.cuda_graph_max_tokens,
        );
    }
    Ok(Box::new(loaded))
}

/// [`load`] with every op of the forward pass timed into `times` (`bench --profile`; see
/// [`crate::profile`]).
pub fn load_profiled(
    dir: &Path,
    options: &EngineOptions,
    task: Task,
    times: &Arc<OpTimes>,
) -> Result<Box<dyn DeviceModel>, EngineError> {
    if !uses_cuda(options) {
        let backend = Profiled::new(cpu_backend(options)?, times.clone());
        let loaded = Loaded::new(backend, dir, task).map_err(load_error)?;
        return Ok(Box::new(loaded));
    }
    let backend = Profiled::new(cuda_backend(options)?, times.clone());
    let loaded = Loaded::new(backend, dir, task).map_err(load_error)?;
    plan_memory(loaded.backend.inner(), loaded.model.config(), options)?;
    Ok(Box::new(loaded))
}

/// What the engine reports once the model is loaded.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    /// Backend name.
    pub backend: String,
    /// Device and memory.
    pub device: DeviceInfo,
    /// Width of the decoder's hidden state (and of full-size embeddings).
    pub hidden_size: usize,
}

/// A model loaded on its device, whatever its backend and head: what the device thread
/// ([`crate::device`]) and the benchmark hold.
pub trait DeviceModel {
    /// What runs the model.
    fn info(&self) -> EngineInfo;

    /// Runs `work` over sequences of `lengths` packed in `token_ids`. A failed pass is
    /// [`EngineError::DeviceLost`] when the backend says its device can no longer be
    /// trusted, else the batch's own failure; a job for the other task is
    /// [`EngineError::Input`].
    fn compute(
        &self,
        token_ids: &[u32],
        lengths: &[usize],
        work: &Work,
    ) -> Result<Output, EngineError>;

    /// Makes the device fault (the test-only fault hook's `device_fault`); `Err` (why)
    /// where the backend has no device to fault.
    fn provoke_fault(&self) -> Result<(), String>;
}

/// A Qwen3 decoder and its head, loaded on backend `B`.
struct Loaded<B: Ops> {
    /// Holds the weights and runs every op.
    backend: B,
    /// The decoder.
    model: Qwen3<B>,
    /// What the decoder's last hidden states become: embeddings or rerank scores.
    head: Head<B>,
}

impl<B: Ops + DeviceCheck> Loaded<B> {
    /// Loads the model directory `dir` onto `backend` with the head of `task` (for
    /// `rerank`, the `yes` / `no` rows of the LM head, read before the decoder).
    fn new(backend: B, dir: &Path, task: Task) -> Result<Self, ModelError> {
        let (config, weights) = model::open(dir)?;
        let head = match task {
            Task::Embed => Head::Embed,
            Task::Rerank => Head::Rerank(RerankHead::from_weights(
                &backend,
                &weights,
                &config,
                AnswerTokens::default(),
            )?),
        };
        let model = Qwen3::load(&backend, &weights, config)?;
        Ok(Self {
            backend,
            model,
            head,
        })
    }

    /// The decoder and the head over one packed batch.
    fn pass(
        &self,
        token_ids: &[u32],
        lengths: &[usize],
        work: &Work,
    ) -> Result<Output, ModelError> {
        let layout = BatchLayout::from_lengths(lengths)?;
        self.head
            .compute(&self.backend, &self.model, token_ids, &layout, work)
    }

    /// A failed pass, sorted: the batch's input, or a device that can no longer be trusted,
    /// or the batch's own failure.
    fn failure(&self, error: ModelError) -> EngineError {
        if matches!(error, ModelError::Input(_)) {
            return EngineError::from_pass(error);
        }
        match self.backend.lost() {
            Some(reason) => EngineError::DeviceLost(format!("{reason} (after: {error})")),
            None => EngineError::from_pass(error),
        }
    }
}

impl<B: Ops + DeviceCheck> DeviceModel for Loaded<B> {
    fn info(&self) -> EngineInfo {
        EngineInfo {
            backend: self.backend.name(),
            device: self.backend.device_info(),
            hidden_size: self.model.config().hidden_size,
        }
    }

    fn compute(
        &self,
        token_ids: &[u32],
        lengths: &[usize],
        work: &Work,
    ) -> Result<Output, EngineError> {
        self.pass(token_ids, lengths, work)
            .map_err(|error| self.failure(error))
    }

    fn provoke_fault(&self) -> Result<(), String> {
        self.backend.provoke_fault()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// The shared fixture `name` (`$var` when set, as the integration tests).
    fn fixture(var: &str, name: &str) -> PathBuf {
        std::env::var_os(var).map_or_else(
            || {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../../shared/fixtures")
                    .join(name)
            },
            PathBuf::from,
        )
    }

    #[test]
    fn each_head_computes_its_own_job_and_refuses_the_other_tasks() {
        let embedder = load(
            &fixture("QWEN3_TINY_DIR", "qwen3-tiny"),
            &EngineOptions::cpu(),
            Task::Embed,
        )
        .expect("the tiny model loads");
        let reranker = load(
            &fixture("QWEN3_TINY_RERANKER_DIR", "qwen3-tiny-reranker"),
            &EngineOptions::cpu(),
            Task::Rerank,
        )
        .expect("the tiny reranker loads");
        let embed = Work::Embed {
            dims: vec![8, 4],
            normalize: vec![true, false],
        };
        let (ids, lengths) = ([1, 2, 3, 4, 5], [3, 2]);
        match embedder.compute(&ids, &lengths, &embed) {
            Ok(Output::Vectors(vectors)) => {
                assert_eq!(vectors.iter().map(Vec::len).collect::<Vec<_>>(), [8, 4]);
            }
            other => panic!("expected two vectors, got {other:?}"),
        }
        match reranker.compute(&ids, &lengths, &Work::Score) {
            Ok(Output::Scores(scores)) => assert_eq!(scores.len(), 2),
            other => panic!("expected two scores, got {other:?}"),
        }
        for (model, work) in [(&embedder, &Work::Score), (&reranker, &embed)] {
            match model.compute(&ids, &lengths, work) {
                Err(EngineError::Input(reason)) => {
                    assert!(reason.contains("the wrong worker"), "{reason}");
                }
                other => panic!("expected a wrong-task input error, got {other:?}"),
            }
        }
    }

    #[test]
    fn fp8_on_the_cpu_is_refused_at_start_saying_what_it_needs() {
        let options = EngineOptions {
            dtype: Dtype::Fp8,
            ..EngineOptions::cpu()
        };
        let dir = fixture("QWEN3_TINY_DIR", "qwen3-tiny");
        match load(&dir, &options, Task::Embed) {
            Err(EngineError::Config(why)) => {
                assert!(why.contains("fp8 needs the CUDA backend"), "{why}")
            }
            Err(other) => panic!("expected a configuration error, got {other}"),
            Ok(_) => panic!("fp8 loaded on the CPU"),
        }
    }

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
