//! The Qwen3 decoder, written once over [`Ops`].
//!
//! Reads top to bottom: the weights of a decoder layer, loading (every shape checked against
//! the config), the forward pass over a packed batch up to each sequence's last hidden state
//! ([`Qwen3::last_hidden`]), then the embedding head over it ([`Qwen3::embed`]: final norm,
//! Matryoshka truncation, L2 normalization). The reranker (`model::rerank`) puts its own head
//! on the same last hidden state.

use super::ModelError;
use super::config::Qwen3Config;
use super::weights::Weights;
use crate::ops::{self, AttentionShape, BatchLayout, OpResult, Ops, QkNorms, Queries};

/// Weights of one decoder layer, in the backend's format.
struct DecoderLayer<B: Ops> {
    input_layernorm: B::Vector,
    /// q_proj, k_proj and v_proj stacked: `((H + 2 * KV) * D, hidden)`.
    qkv_proj: B::Matrix,
    q_norm: B::Vector,
    k_norm: B::Vector,
    o_proj: B::Matrix,
    post_attention_layernorm: B::Vector,
    /// gate_proj and up_proj stacked: `(2 * intermediate, hidden)`.
    gate_up_proj: B::Matrix,
    down_proj: B::Matrix,
}

/// A loaded Qwen3 decoder on backend `B`.
pub struct Qwen3<B: Ops> {
    /// The validated configuration every shape was checked against.
    config: Qwen3Config,
    /// Token embeddings `(vocab, hidden)`.
    embed_tokens: B::Table,
    /// The decoder layers, in order.
    layers: Vec<DecoderLayer<B>>,
    /// The final RMSNorm weight, `(hidden,)`.
    norm: B::Vector,
}

/// Intermediate activations a traced forward pass reports (for golden and parity tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TracePoint {
    /// Token embeddings `(T, hidden)`.
    Embeddings,
    /// Input of the attention after `input_layernorm`.
    InputNorm(usize),
    /// Fused q|k|v projection, before the head norms.
    QkvProj(usize),
    /// Fused q|k|v after q/k norms and rotary embedding.
    QkRope(usize),
    /// Attention output, heads concatenated, before `o_proj`.
    Attention(usize),
    /// `o_proj` output.
    OProj(usize),
    /// Input of the MLP after `post_attention_layernorm`.
    PostAttentionNorm(usize),
    /// MLP output.
    Mlp(usize),
    /// Residual stream after the layer (last rows only in the final layer).
    AfterLayer(usize),
}

/// Receives intermediate activations of a traced forward pass.
pub type Tracer<'t, B> = dyn FnMut(TracePoint, &<B as Ops>::Tensor) + 't;

impl<B: Ops> Qwen3<B> {
    /// Loads every weight from `weights`, checking each shape against `config`, converting
    /// to the backend's format once (q|k|v and gate|up fused).
    pub fn load(backend: &B, weights: &Weights, config: Qwen3Config) -> Result<Self, ModelError> {
        if let Some(bias) = weights
            .names()
            .into_iter()
            .find(|n| n.ends_with("_proj.bias"))
        {
            return Err(ModelError::Unsupported(format!(
                "tensor `{bias}`: biases in projections are not supported"
            )));
        }
        let c = &config;
        let (hidden, head_dim) = (c.hidden_size, c.head_dim);
        let q_out = c.num_attention_heads * head_dim;
        let kv_out = c.num_key_value_heads * head_dim;
        let embed_tokens =
            backend.table(weights.get("embed_tokens.weight", &[c.vocab_size, hidden])?)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let get =
                |name: &str, shape: &[usize]| weights.get(&format!("layers.{i}.{name}"), shape);
            layers.push(DecoderLayer {
                input_layernorm: backend.vector(get("input_layernorm.weight", &[hidden])?)?,
                qkv_proj: backend.matrix(&[
                    get("self_attn.q_proj.weight", &[q_out, hidden])?,
                    get("self_attn.k_proj.weight", &[kv_out, hidden])?,
                    get("self_attn.v_proj.weight", &[kv_out, hidden])?,
                ])?,
                q_norm: backend.vector(get("self_attn.q_norm.weight", &[head_dim])?)?,
                k_norm: backend.vector(get("self_attn.k_norm.weight", &[head_dim])?)?,
                o_proj: backend.matrix(&[get("self_attn.o_proj.weight", &[hidden, q_out])?])?,
                post_attention_layernorm: backend
                    .vector(get("post_attention_layernorm.weight", &[hidden])?)?,
                gate_up_proj: backend.matrix(&[
                    get("mlp.gate_proj.weight", &[c.intermediate_size, hidden])?,
                    get("mlp.up_proj.weight", &[c.intermediate_size, hidden])?,
                ])?,
                down_proj: backend
                    .matrix(&[get("mlp.down_proj.weight", &[hidden, c.intermediate_size])?])?,
            });
        }
        let norm = backend.vector(weights.get("norm.weight", &[hidden])?)?;
        Ok(Self {
            config,
            embed_tokens,
            layers,
            norm,
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &Qwen3Config {
        &self.config
    }

    fn attention_shape(&self) -> AttentionShape {
        AttentionShape {
            num_heads: self.config.num_attention_heads,
            num_kv_heads: self.config.num_key_value_heads,
            head_dim: self.config.head_dim,
        }
    }

    /// Checks a batch before any work: as many token ids as layout rows, ids in the
    /// vocabulary, lengths within the model's positions.
    fn check_batch(&self, token_ids: &[u32], layout: &BatchLayout) -> Result<(), ModelError> {
        let c = &self.config;
        if layout.num_rows() != token_ids.len() {
            return Err(ModelError::Input(format!(
                "layout of {} rows does not match {} tokens",
                layout.num_rows(),
                token_ids.len()
            )));
        }
        if let Some(bad) = token_ids.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                c.vocab_size
            )));
        }
        if layout.max_len() > c.max_position_embeddings {
            return Err(ModelError::Input(format!(
                "a sequence of {} tokens exceeds the model's {} positions",
                layout.max_len(),
                c.max_position_embeddings
            )));
        }
        Ok(())
    }

    /// Checks the output sizes of an embedding batch: one in `1..=hidden` per sequence.
    fn check_dims(&self, layout: &BatchLayout, dims: &[usize]) -> Result<(), ModelError> {
        let hidden = self.config.hidden_size;
        if dims.len() != layout.num_seqs() {
            return Err(ModelError::Input(format!(
                "{} output sizes for {} sequences",
                dims.len(),
                layout.num_seqs()
            )));
        }
        if let Some(bad) = dims.iter().find(|&&d| d == 0 || d > hidden) {
            return Err(ModelError::Input(format!(
                "dimensions {bad} is outside 1..={hidden}"
            )));
        }
        Ok(())
    }

    /// Embeds a packed batch: one L2-normalized vector per sequence, sequence `s` truncated
    /// to `dims[s]` values before normalization (Matryoshka).
    pub fn embed(
        &self,
        backend: &B,
        token_ids: &[u32],
        layout: &BatchLayout,
        dims: &[usize],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let normalize = vec![true; dims.len()];
        self.embed_each(backend, token_ids, layout, dims, &normalize)
    }

    /// [`Self::embed`] with a choice per sequence: sequence `s` truncated to `dims[s]` values
    /// (Matryoshka), then L2-normalized when `normalize[s]`, else returned as the final norm
    /// left it at the last token (cut, not rescaled).
    pub fn embed_each(
        &self,
        backend: &B,
        token_ids: &[u32],
        layout: &BatchLayout,
        dims: &[usize],
        normalize: &[bool],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        self.check_dims(layout, dims)?;
        if normalize.len() != layout.num_seqs() {
            return Err(ModelError::Input(format!(
                "{} normalize flags for {} sequences",
                normalize.len(),
                layout.num_seqs()
            )));
        }
        let last = self.last_hidden(backend, token_ids, layout)?;
        // Final norm on the last tokens, Matryoshka truncation, L2 normalization where asked.
        let eps = self.config.rms_norm_eps;
        Ok(backend.pool(&last, &self.norm, eps, dims, normalize)?)
    }

    /// The final RMSNorm of hidden states `(rows, hidden)`, such as [`Self::last_hidden`]'s:
    /// the input of a language-model head.
    pub fn final_norm(&self, backend: &B, hidden: &B::Tensor) -> Result<B::Tensor, ModelError> {
        Ok(backend.rms_norm(hidden, &self.norm, self.config.rms_norm_eps)?)
    }

    /// Runs the decoder over a packed batch and returns the hidden state of each sequence's
    /// last token after the final layer, before the final norm: `(sequences, hidden)`, on the
    /// backend. The backend may replay a recorded pass ([`Ops::pass`]).
    pub fn last_hidden(
        &self,
        backend: &B,
        token_ids: &[u32],
        layout: &BatchLayout,
    ) -> Result<B::Tensor, ModelError> {
        self.check_batch(token_ids, layout)?;
        let decoder =
            |x: B::Tensor, device_layout: &B::Layout| self.decode(backend, x, device_layout, None);
        Ok(backend.pass(&self.embed_tokens, token_ids, layout, &decoder)?)
    }

    /// [`Self::last_hidden`], reporting intermediate activations to `trace` (for tests); never
    /// replayed.
    pub fn last_hidden_traced(
        &self,
        backend: &B,
        token_ids: &[u32],
        layout: &BatchLayout,
        trace: &mut Tracer<'_, B>,
    ) -> Result<B::Tensor, ModelError> {
        self.check_batch(token_ids, layout)?;
        let device_layout = backend.layout(layout)?;
        // 1. Token embeddings: (T,) -> (T, hidden).
        let x = backend.embed(&self.embed_tokens, token_ids)?;
        trace(TracePoint::Embeddings, &x);
        Ok(self.decode(backend, x, &device_layout, Some(trace))?)
    }

    /// The decoder layers over embedded tokens `x` `(T, hidden)`: the residual stream of each
    /// sequence's last token after the final layer, `(S, hidden)`. A traced pass runs the
    /// self-attention's steps one by one, so that `trace` sees q and k normalized and
    /// rotated; an untraced one lets the backend fuse them ([`Ops::self_attention`]).
    fn decode(
        &self,
        backend: &B,
        mut x: B::Tensor,
        device_layout: &B::Layout,
        mut trace: Option<&mut Tracer<'_, B>>,
    ) -> OpResult<B::Tensor> {
        let traced = trace.is_some();
        let mut trace = |point: TracePoint, tensor: &B::Tensor| {
            if let Some(trace) = trace.as_mut() {
                trace(point, tensor);
            }
        };
        let c = &self.config;
        let eps = c.rms_norm_eps;
        let shape = self.attention_shape();
        let first = self
            .layers
            .first()
            .expect("config validation requires layers; this is a bug");
        let mut h = backend.rms_norm(&x, &first.input_layernorm, eps)?;

        for (i, layer) in self.layers.iter().enumerate() {
            let is_last = i + 1 == self.layers.len();
            trace(TracePoint::InputNorm(i), &h);
            // 2. Fused projection: (T, hidden) -> (T, (H + 2 KV) * D).
            let mut qkv = backend.linear(&h, &layer.qkv_proj)?;
            trace(TracePoint::QkvProj(i), &qkv);
            // 3. Per-head RMSNorm of q and k, then rotary embedding; 4. causal GQA inside each
            //    sequence: (T, H * D). Only the last token of each sequence matters after the
            //    final layer, so there it alone is queried, and the residual stream shrinks to
            //    those rows: (S, H * D).
            let norms = QkNorms {
                q_norm: &layer.q_norm,
                k_norm: &layer.k_norm,
                eps,
                rope_theta: c.rope_theta,
            };
            let queries = if is_last {
                x = backend.last_rows(&x, device_layout)?;
                Queries::LastOnly
            } else {
                Queries::All
            };
            let attn = if traced {
                backend.qk_norm_rope(&mut qkv, &norms, device_layout, shape)?;
                trace(TracePoint::QkRope(i), &qkv);
                ops::attend(backend, &qkv, device_layout, queries, shape)?
            } else {
                backend.self_attention(qkv, &norms, device_layout, queries, shape)?
            };
            trace(TracePoint::Attention(i), &attn);
            // 5. Output projection and residual, fused with the MLP's input norm.
            let o = backend.linear(&attn, &layer.o_proj)?;
            trace(TracePoint::OProj(i), &o);
            let h_mlp = backend.add_rms_norm(&mut x, &o, &layer.post_attention_layernorm, eps)?;
            trace(TracePoint::PostAttentionNorm(i), &h_mlp);
            // 6. SwiGLU MLP: (rows, hidden) -> (rows, 2 I) -> (rows, I) -> (rows, hidden).
            let mlp = backend.mlp(&h_mlp, &layer.gate_up_proj, &layer.down_proj)?;
            trace(TracePoint::Mlp(i), &mlp);
            // 7. Residual, fused with the next layer's input norm.
            match self.layers.get(i + 1) {
                Some(next) => h = backend.add_rms_norm(&mut x, &mlp, &next.input_layernorm, eps)?,
                None => backend.add(&mut x, &mlp)?,
            }
            trace(TracePoint::AfterLayer(i), &x);
        }
        // 8. The residual stream of the last tokens: (S, hidden).
        Ok(x)
    }
}
