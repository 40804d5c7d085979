//! A loaded model on its backend, owned by one device thread.
//!
//! The device thread loads the model (an embedding model, or a reranker for `task = rerank`)
//! and then serves jobs from a bounded channel of one, so the service can stage the next batch
//! while the current one runs, and nothing else ever touches the device.

use std::path::{Path, PathBuf};

use common::subjects::Task;
use tokio::sync::{mpsc, oneshot};

use crate::cpu::CpuBackend;
use crate::cuda::{self, CudaBackend, CudaOptions};
use crate::model::config::Qwen3Config;
use crate::model::qwen3::Qwen3;
use crate::model::rerank::{RerankScore, Reranker};
use crate::model::{self, ModelError};
use crate::ops::{BatchLayout, DeviceInfo, OpError, Ops};

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

impl<B: Ops> Embedder for Loaded<B> {
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

impl<B: Ops> Scorer for LoadedReranker<B> {
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

fn cuda_error(e: cuda::CudaError) -> ModelError {
    ModelError::Op(OpError::Device(e.to_string()))
}

/// The CPU backend in the precision `options` ask for.
fn cpu_backend(options: &EngineOptions) -> CpuBackend {
    match options.dtype {
        Dtype::Auto | Dtype::F32 => CpuBackend::F32,
        Dtype::Bf16 => CpuBackend::bf16(),
    }
}

/// The CUDA backend `options` ask for.
fn cuda_backend(options: &EngineOptions) -> Result<CudaBackend, ModelError> {
    if options.dtype == Dtype::F32 {
        return Err(ModelError::Op(OpError::Device(
            "the CUDA backend computes in bf16; set dtype to bf16 or auto".into(),
        )));
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
) -> Result<(), ModelError> {
    let plan = backend
        .plan_memory(config, options.max_batch_tokens)
        .map_err(cuda_error)?;
    tracing::info!(
        max_batch_tokens = plan.max_batch_tokens,
        "device memory planned"
    );
    Ok(())
}

/// Loads `dir` on the chosen backend (`auto`: CUDA when a device is present).
pub fn load(dir: &Path, options: &EngineOptions) -> Result<Box<dyn Embedder>, ModelError> {
    if !uses_cuda(options) {
        return Ok(Box::new(Loaded::new(cpu_backend(options), dir)?));
    }
    let loaded = Loaded::new(cuda_backend(options)?, dir)?;
    plan_memory(&loaded.backend, loaded.model.config(), options)?;
    Ok(Box::new(loaded))
}

/// Loads the reranker directory `dir` on the chosen backend.
pub fn load_reranker(dir: &Path, options: &EngineOptions) -> Result<Box<dyn Scorer>, ModelError> {
    if !uses_cuda(options) {
        return Ok(Box::new(LoadedReranker::new(cpu_backend(options), dir)?));
    }
    let loaded = LoadedReranker::new(cuda_backend(options)?, dir)?;
    plan_memory(&loaded.backend, loaded.reranker.model().config(), options)?;
    Ok(Box::new(loaded))
}

/// The model the device thread owns.
enum DeviceModel {
    /// An embedding model.
    Embed(Box<dyn Embedder>),
    /// A reranker.
    Rerank(Box<dyn Scorer>),
}

impl DeviceModel {
    fn load(dir: &Path, options: &EngineOptions, task: Task) -> Result<Self, ModelError> {
        Ok(match task {
            Task::Embed => Self::Embed(load(dir, options)?),
            Task::Rerank => Self::Rerank(load_reranker(dir, options)?),
        })
    }

    fn info(&self) -> EngineInfo {
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

    fn run(&self, job: Job) {
        let wrong_task = |what: &str| {
            ModelError::Input(format!(
                "this worker's model cannot {what}; the batch went to the wrong worker"
            ))
        };
        match (self, job.work) {
            (Self::Embed(m), Work::Embed { dims, reply }) => {
                let _ = reply.send(m.embed(&job.token_ids, &job.lengths, &dims));
            }
            (Self::Rerank(m), Work::Score { reply }) => {
                let _ = reply.send(m.score(&job.token_ids, &job.lengths));
            }
            (_, Work::Embed { reply, .. }) => {
                let _ = reply.send(Err(wrong_task("embed")));
            }
            (_, Work::Score { reply }) => {
                let _ = reply.send(Err(wrong_task("score pairs")));
            }
        }
    }
}

/// One batch for the device thread.
pub struct Job {
    /// Packed token ids.
    pub token_ids: Vec<u32>,
    /// Length of each sequence.
    pub lengths: Vec<usize>,
    /// What to compute and where the answer goes.
    pub work: Work,
}

/// What the device thread computes for a [`Job`].
pub enum Work {
    /// Embeddings.
    Embed {
        /// Output size of each sequence.
        dims: Vec<usize>,
        /// Where the vectors (or the error) go.
        reply: oneshot::Sender<Result<Vec<Vec<f32>>, ModelError>>,
    },
    /// Rerank scores.
    Score {
        /// Where the scores (or the error) go.
        reply: oneshot::Sender<Result<Vec<RerankScore>, ModelError>>,
    },
}

/// What the device thread reports once the model is loaded.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    /// Backend name.
    pub backend: String,
    /// Device and memory.
    pub device: DeviceInfo,
    /// Output width.
    pub hidden_size: usize,
}

/// Handle to the device thread; cheap to clone.
#[derive(Clone)]
pub struct DeviceHandle {
    jobs: mpsc::Sender<Job>,
    info: EngineInfo,
}

impl DeviceHandle {
    /// Starts the device thread, loads the embedding model on it, and returns once it is
    /// ready (or failed to load).
    pub async fn start(dir: PathBuf, options: EngineOptions) -> Result<Self, ModelError> {
        Self::start_for(dir, options, Task::Embed).await
    }

    /// Starts the device thread with the model of `task` (a reranker for `rerank`).
    pub async fn start_for(
        dir: PathBuf,
        options: EngineOptions,
        task: Task,
    ) -> Result<Self, ModelError> {
        let (jobs_tx, mut jobs_rx) = mpsc::channel::<Job>(1);
        let (ready_tx, ready_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("device".into())
            .spawn(move || {
                let model = match DeviceModel::load(&dir, &options, task) {
                    Ok(model) => model,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                if ready_tx.send(Ok(model.info())).is_err() {
                    return;
                }
                while let Some(job) = jobs_rx.blocking_recv() {
                    model.run(job);
                }
            })
            .map_err(|source| ModelError::Io {
                path: PathBuf::from("<device thread>"),
                source,
            })?;
        let info = ready_rx.await.map_err(|_| {
            ModelError::Op(OpError::Device(
                "the device thread died while loading".into(),
            ))
        })??;
        Ok(Self {
            jobs: jobs_tx,
            info,
        })
    }

    /// What runs the model.
    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    /// Runs one batch on the device thread (waits while another batch is staged).
    pub async fn embed(
        &self,
        token_ids: Vec<u32>,
        lengths: Vec<usize>,
        dims: Vec<usize>,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let (reply, result) = oneshot::channel();
        let work = Work::Embed { dims, reply };
        self.submit(token_ids, lengths, work).await?;
        result.await.map_err(|_| dropped())?
    }

    /// Scores one batch of reranker prompts on the device thread.
    pub async fn score(
        &self,
        token_ids: Vec<u32>,
        lengths: Vec<usize>,
    ) -> Result<Vec<RerankScore>, ModelError> {
        let (reply, result) = oneshot::channel();
        self.submit(token_ids, lengths, Work::Score { reply })
            .await?;
        result.await.map_err(|_| dropped())?
    }

    /// Hands a job to the device thread (waits while another batch is staged).
    async fn submit(
        &self,
        token_ids: Vec<u32>,
        lengths: Vec<usize>,
        work: Work,
    ) -> Result<(), ModelError> {
        let job = Job {
            token_ids,
            lengths,
            work,
        };
        self.jobs
            .send(job)
            .await
            .map_err(|_| ModelError::Op(OpError::Device("the device thread has stopped".into())))
    }
}

fn dropped() -> ModelError {
    ModelError::Op(OpError::Device(
        "the device thread dropped the batch".into(),
    ))
}
