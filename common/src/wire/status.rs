//! What a worker answers on the status subject: its kind, the model it serves, how busy it
//! is and what it allows ([`WorkerStatus`]), read by the gateway's discovery.

use serde::{Deserialize, Serialize};

use crate::subjects::Task;

/// Which stage a worker serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerKind {
    /// Tokenizes and batches embedding requests.
    Tokenizer,
    /// Runs the embedding model on batches.
    Gpu,
    /// Formats, tokenizes and batches (query, document) pairs of rerank requests.
    #[serde(rename = "rerank_tokenizer")]
    RerankTokenizer,
    /// Runs the reranker on batches of pairs.
    #[serde(rename = "rerank_gpu")]
    RerankGpu,
}

impl WorkerKind {
    /// The kind's name as statuses spell it (`tokenizer`, `gpu`, `rerank_tokenizer`,
    /// `rerank_gpu`): the gateway's `/debug`, `/v1/models` and metric labels use it too.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tokenizer => "tokenizer",
            Self::Gpu => "gpu",
            Self::RerankTokenizer => "rerank_tokenizer",
            Self::RerankGpu => "rerank_gpu",
        }
    }

    /// The tokenizer stage of `task`.
    pub fn tokenizer(task: Task) -> Self {
        match task {
            Task::Embed => Self::Tokenizer,
            Task::Rerank => Self::RerankTokenizer,
        }
    }

    /// The model stage of `task`.
    pub fn gpu(task: Task) -> Self {
        match task {
            Task::Embed => Self::Gpu,
            Task::Rerank => Self::RerankGpu,
        }
    }
}

/// A worker's answer on the status subject: who it is, what it serves, how busy it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Unique id of the worker process.
    pub worker_id: String,
    /// The stage it serves.
    pub kind: WorkerKind,
    /// Served model name (as clients pass it in `model`).
    pub model: String,
    /// Whether the model (or tokenizer) is loaded and work is accepted.
    pub loaded: bool,
    /// Compute backend (`cpu-f32`, `cuda-bf16`, `cuda-fp8`); tokenizer workers leave it empty.
    #[serde(default)]
    pub backend: Option<String>,
    /// Device description (name, compute capability, threads).
    #[serde(default)]
    pub device: Option<String>,
    /// Device memory in use by this worker, bytes.
    #[serde(default)]
    pub device_memory_used: Option<u64>,
    /// Device memory in total, bytes.
    #[serde(default)]
    pub device_memory_total: Option<u64>,
    /// Model output size (GPU workers) for validating `dimensions`.
    #[serde(default)]
    pub hidden_size: Option<u32>,
    /// Batches processed (GPU) or emitted (tokenizer) since start.
    pub batches: u64,
    /// Sequences processed since start.
    pub sequences: u64,
    /// Tokens processed since start.
    pub tokens: u64,
    /// Work in hand now (batches for GPU workers, sequences waiting for tokenizer workers).
    pub in_flight: u64,
    /// Unix time in milliseconds when the worker started.
    pub started_ms: u64,
    /// Why the worker can no longer serve (GPU workers: a pass panicked or hung, a sticky
    /// device error); such a worker reports `loaded: false`, hands its work back and exits.
    /// Absent while it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy: Option<String>,
    /// Most tokens of one input the worker accepts (tokenizer workers: their `max_length`);
    /// longer inputs are refused or truncated. Absent from other workers and older ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_tokens: Option<u32>,
    /// Most tokens of one batch the worker sends (tokenizer workers: their
    /// `max_batch_tokens`). Absent from other workers and older ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_tokens: Option<u32>,
    /// The model's route token when it works on subjects of its own
    /// (`{prefix}.models.{route}`, see `common::subjects`); absent for the default model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// GPU workers: milliseconds spent in forward passes since start (utilisation is its rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_busy_ms: Option<u64>,
}

impl WorkerStatus {
    /// Whether the worker takes work: loaded and not unhealthy.
    pub fn serving(&self) -> bool {
        self.loaded && self.unhealthy.is_none()
    }
}
