//! The head a loaded model computes with, over the decoder's last hidden states: one per
//! task, and the one job ([`Work`]) and output ([`Output`]) types they share.
//! [`Head::compute`] is the one place a job meets a head, so a job for the other task is
//! refused there, once.

use super::ModelError;
use super::qwen3::Qwen3;
use super::rerank::{RerankHead, RerankScore};
use crate::ops::{BatchLayout, Ops};

/// What to compute for a batch besides its tokens.
#[derive(Debug, Clone)]
pub enum Work {
    /// Embeddings, `dims[s]` values for sequence `s`.
    Embed {
        /// Output size of each sequence.
        dims: Vec<usize>,
        /// Whether each sequence's vector is L2-normalized (`false`: `normalize: false` in
        /// its request, the pooled vector as it is).
        normalize: Vec<bool>,
    },
    /// Rerank scores.
    Score,
}

impl Work {
    /// What the job asks of the model, for the error of a head that cannot do it.
    fn asks(&self) -> &'static str {
        match self {
            Self::Embed { .. } => "embed",
            Self::Score => "score pairs",
        }
    }
}

/// What the model computed for a batch.
#[derive(Debug)]
pub enum Output {
    /// One vector per sequence.
    Vectors(Vec<Vec<f32>>),
    /// One rerank score per sequence.
    Scores(Vec<RerankScore>),
}

/// The head on top of the decoder: what a loaded model turns its last hidden states into.
pub enum Head<B: Ops> {
    /// Embeddings: final norm, Matryoshka truncation and (unless a request said
    /// `normalize: false`) L2 normalization of the last token ([`Qwen3::embed`]); no weights
    /// of its own.
    Embed,
    /// Rerank scores from the `yes` / `no` LM-head rows.
    Rerank(RerankHead<B>),
}

impl<B: Ops> Head<B> {
    /// Runs `model` and this head over a packed batch. A job this head does not do (a batch
    /// sent to the other task's worker) is [`ModelError::Input`].
    pub fn compute(
        &self,
        backend: &B,
        model: &Qwen3<B>,
        token_ids: &[u32],
        layout: &BatchLayout,
        work: &Work,
    ) -> Result<Output, ModelError> {
        match (self, work) {
            (Self::Embed, Work::Embed { dims, normalize }) => model
                .embed_each(backend, token_ids, layout, dims, normalize)
                .map(Output::Vectors),
            (Self::Rerank(head), Work::Score) => head
                .score(backend, model, token_ids, layout)
                .map(Output::Scores),
            _ => Err(ModelError::Input(format!(
                "this worker's model cannot {}; the batch went to the wrong worker",
                work.asks()
            ))),
        }
    }
}
