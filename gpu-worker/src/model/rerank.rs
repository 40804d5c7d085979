//! Qwen3-Reranker scoring on top of the Qwen3 decoder, for every backend.
//!
//! A Qwen3-Reranker is a `Qwen3ForCausalLM` that reads a prompt ending in an empty assistant
//! think block and answers `yes` or `no`. Its relevance score is the probability of `yes`
//! against `no` at the last position:
//!
//! ```text
//! h         = final_norm(residual stream of the last token after the last layer)
//! logit_yes = h . lm_head[yes]        logit_no = h . lm_head[no]
//! score     = softmax([logit_no, logit_yes])[1] = sigmoid(logit_yes - logit_no)
//! ```
//!
//! Only the two LM-head rows are loaded (from `lm_head.weight`, or from `embed_tokens.weight`
//! when the embeddings are tied), never the full vocabulary projection: they make a
//! `(2, hidden)` head matrix on the backend.
//!
//! The decoder is [`Qwen3`] unchanged: [`Qwen3::last_hidden`] gives each sequence's last
//! hidden state `(sequences, hidden)`, and the head ([`RerankHead`]) runs on the backend
//! with its own ops (the final `rms_norm`, then `linear` with the head matrix); only the
//! `(sequences, 2)` logits come back to the host. On the CUDA backend the logits are bf16,
//! as a bf16 transformers model computes them.

use std::path::Path;

use super::ModelError;
use super::config::Qwen3Config;
use super::qwen3::Qwen3;
use super::weights::Weights;
use crate::ops::{BatchLayout, OpError, Ops};

/// Id of the `yes` token in the Qwen3 vocabulary.
pub const YES_TOKEN_ID: u32 = 9693;

/// Id of the `no` token in the Qwen3 vocabulary.
pub const NO_TOKEN_ID: u32 = 2152;

/// The two answer tokens whose logits are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerTokens {
    /// Token meaning "relevant" (`yes`, [`YES_TOKEN_ID`] in Qwen3).
    pub yes: u32,
    /// Token meaning "not relevant" (`no`, [`NO_TOKEN_ID`] in Qwen3).
    pub no: u32,
}

impl Default for AnswerTokens {
    fn default() -> Self {
        Self {
            yes: YES_TOKEN_ID,
            no: NO_TOKEN_ID,
        }
    }
}

/// The reranker's verdict on one sequence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RerankScore {
    /// Logit of `yes` at the last position.
    pub logit_yes: f32,
    /// Logit of `no` at the last position.
    pub logit_no: f32,
    /// Probability of `yes` against `no`: `sigmoid(logit_yes - logit_no)`, in `[0, 1]`.
    pub score: f32,
}

impl RerankScore {
    /// The score of two logits, `softmax([logit_no, logit_yes])[1]`, computed without
    /// overflow for any difference.
    pub fn from_logits(logit_yes: f32, logit_no: f32) -> Self {
        let d = f64::from(logit_yes) - f64::from(logit_no);
        let score = if d >= 0.0 {
            1.0 / (1.0 + (-d).exp())
        } else {
            let e = d.exp();
            e / (1.0 + e)
        };
        Self {
            logit_yes,
            logit_no,
            score: score as f32,
        }
    }
}

/// The rerank head: the LM-head rows of the two answer tokens, scoring each sequence's last
/// hidden state from the decoder.
pub struct RerankHead<B: Ops> {
    /// The LM-head rows of the `yes` and `no` tokens, in that order: `(2, hidden)`.
    rows: B::Matrix,
    /// Which tokens the rows belong to.
    tokens: AnswerTokens,
}

impl<B: Ops> RerankHead<B> {
    /// Loads the head's two rows for a decoder of `config` from `weights`. They come from
    /// `lm_head.weight` when it is stored, else from `embed_tokens.weight` if the config ties
    /// the embeddings; an untied checkpoint without `lm_head.weight` is refused, and so are
    /// answer tokens outside the vocabulary.
    pub fn from_weights(
        backend: &B,
        weights: &Weights,
        config: &Qwen3Config,
        tokens: AnswerTokens,
    ) -> Result<Self, ModelError> {
        let (vocab, hidden) = (config.vocab_size, config.hidden_size);
        for (name, id) in [("yes", tokens.yes), ("no", tokens.no)] {
            if id as usize >= vocab {
                return Err(ModelError::Config(format!(
                    "the `{name}` token id {id} is outside the vocabulary of {vocab} tokens"
                )));
            }
        }
        let head_name = if weights.contains("lm_head.weight") {
            "lm_head.weight"
        } else if config.tie_word_embeddings {
            "embed_tokens.weight"
        } else {
            return Err(ModelError::MissingTensor(
                "lm_head.weight (tie_word_embeddings is false)".to_owned(),
            ));
        };
        let lm_head = weights.get(head_name, &[vocab, hidden])?;
        let row = |id: u32| {
            lm_head.row(id as usize).ok_or_else(|| {
                ModelError::Config(format!("`{head_name}` has no row {id}; this is a bug"))
            })
        };
        let rows = backend.matrix(&[row(tokens.yes)?, row(tokens.no)?])?;
        Ok(Self { rows, tokens })
    }

    /// The answer tokens whose logits are compared.
    pub fn answer_tokens(&self) -> AnswerTokens {
        self.tokens
    }

    /// Scores a packed batch of formatted prompts (see the tokenizer worker's `rerank`
    /// module) through `model`, one [`RerankScore`] per sequence, in order. A sequence's
    /// score does not depend on the other sequences of the batch.
    pub fn score(
        &self,
        backend: &B,
        model: &Qwen3<B>,
        token_ids: &[u32],
        layout: &BatchLayout,
    ) -> Result<Vec<RerankScore>, ModelError> {
        let seqs = layout.num_seqs();
        // 1. Decoder: the last hidden state of every sequence, (S, hidden).
        let last = model.last_hidden(backend, token_ids, layout)?;
        // 2. Final RMSNorm, then the two LM-head rows: (S, hidden) -> (S, 2), [yes, no].
        let normed = model.final_norm(backend, &last)?;
        let logits = backend.to_host(&backend.linear(&normed, &self.rows)?)?;
        if logits.len() != 2 * seqs {
            return Err(OpError::Shape {
                op: "rerank",
                detail: format!(
                    "{} logits for {seqs} sequences of a yes and a no logit",
                    logits.len()
                ),
            }
            .into());
        }
        // 3. The yes probability of each sequence.
        Ok(logits
            .chunks_exact(2)
            .map(|pair| RerankScore::from_logits(pair[0], pair[1]))
            .collect())
    }
}

/// A loaded Qwen3-Reranker on backend `B`, on its own: the decoder and its [`RerankHead`]
/// (the serving path holds the two in `engine`; tests score through this).
pub struct Reranker<B: Ops> {
    /// The decoder, shared with the embedding path.
    model: Qwen3<B>,
    /// The `yes` / `no` rows it scores with.
    head: RerankHead<B>,
}

impl<B: Ops> Reranker<B> {
    /// Loads a reranker directory in Hugging Face layout (`config.json` plus
    /// `model.safetensors` or its sharded index; `Qwen3ForCausalLM` with or without the
    /// `model.` prefix) onto `backend`, scoring with the Qwen3 `yes` / `no` tokens.
    pub fn load(dir: &Path, backend: &B) -> Result<Self, ModelError> {
        Self::load_with_tokens(dir, backend, AnswerTokens::default())
    }

    /// [`Self::load`] with other answer tokens (a vocabulary whose ids differ).
    pub fn load_with_tokens(
        dir: &Path,
        backend: &B,
        tokens: AnswerTokens,
    ) -> Result<Self, ModelError> {
        let (config, weights) = super::open(dir)?;
        Self::from_weights(backend, &weights, config, tokens)
    }

    /// Builds a reranker from opened weights: the head ([`RerankHead::from_weights`]), then
    /// the decoder.
    pub fn from_weights(
        backend: &B,
        weights: &Weights,
        config: Qwen3Config,
        tokens: AnswerTokens,
    ) -> Result<Self, ModelError> {
        let head = RerankHead::from_weights(backend, weights, &config, tokens)?;
        let model = Qwen3::load(backend, weights, config)?;
        Ok(Self { model, head })
    }

    /// The decoder.
    pub fn model(&self) -> &Qwen3<B> {
        &self.model
    }

    /// The answer tokens whose logits are compared.
    pub fn answer_tokens(&self) -> AnswerTokens {
        self.head.answer_tokens()
    }

    /// Scores a packed batch of formatted prompts: [`RerankHead::score`] with this decoder.
    pub fn score(
        &self,
        backend: &B,
        token_ids: &[u32],
        layout: &BatchLayout,
    ) -> Result<Vec<RerankScore>, ModelError> {
        self.head.score(backend, &self.model, token_ids, layout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_is_the_yes_probability() {
        let even = RerankScore::from_logits(0.5, 0.5);
        assert_eq!(even.score, 0.5);
        let s = RerankScore::from_logits(1.3906958, -0.47605696);
        assert!((s.score - 0.866_082_1).abs() < 1e-6, "{s:?}");
        assert_eq!(RerankScore::from_logits(1e30, -1e30).score, 1.0);
        assert_eq!(RerankScore::from_logits(-1e30, 1e30).score, 0.0);
        assert!(!RerankScore::from_logits(-200.0, 200.0).score.is_nan());
    }
}
