//! What the model-routing tests share (`model_routing.rs`, `model_discovery.rs`): a second
//! embedding model and a reranker on routes of their own, their stand-ins' pools, and reading
//! vectors out of answers.

use common::wire::{WorkerKind, WorkerStatus};
use serde_json::Value;

use super::{routed_status, status};

/// The second embedding model, served on its own route.
pub const SECOND: &str = "acme/embedder-b";

/// What the second model's stand-in adds to every component: its vectors are unlike the
/// default's for the same text.
pub const SECOND_BIAS: f32 = 1000.0;

/// The second model's vector width (the default's stand-ins report 8).
pub const SECOND_WIDTH: u32 = 16;

/// A reranker served on its own route.
pub const RERANKER: &str = "acme/reranker-r";

/// The default reranker's configured name.
pub const DEFAULT_RERANKER: &str = "Qwen/Qwen3-Reranker-0.6B";

/// A JSON list of numbers as f32s.
pub fn floats(list: &Value) -> Vec<f32> {
    list.as_array()
        .expect("a list of numbers")
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

/// The vectors of an OpenAI embeddings answer.
pub fn vectors_of(body: &Value) -> Vec<Vec<f32>> {
    body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|item| floats(&item["embedding"]))
        .collect()
}

/// Status answers of a default pool (tokenizer and GPU, width 8) and of [`SECOND`]'s pool.
pub fn two_pools() -> Vec<WorkerStatus> {
    vec![
        status(WorkerKind::Tokenizer, "default-tok", true, 0),
        status(WorkerKind::Gpu, "default-gpu", true, 0),
        routed_status(WorkerKind::Tokenizer, "second-tok", SECOND, SECOND_WIDTH),
        routed_status(WorkerKind::Gpu, "second-gpu", SECOND, SECOND_WIDTH),
    ]
}
