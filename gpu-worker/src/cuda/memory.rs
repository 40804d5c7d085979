//! The memory plan: how much of the device a worker may use, and the largest batch that fits.
//!
//! A worker owns `gpu_memory_fraction x total` bytes of its device (two workers at 0.5 share a
//! card). From that share come, in order: a fixed overhead (CUDA context, loaded kernels,
//! cuBLAS and its workspace, allocator slack), the resident weights, and the activations of
//! one batch. The activations of a forward pass peak at the end of a decoder layer, and that
//! peak is linear in the batch's token count (attention keeps no `T x T` matrix), so the share
//! divides into a token budget. Batches over the budget are refused with
//! `OpError::OutOfMemory` before any work. With CUDA graphs on, the activations of the
//! largest recorded pass (`graph_tokens` tokens) are set aside first: recorded passes keep
//! their activations in graph memory, apart from the batches run op by op.

use crate::model::config::Qwen3Config;

/// Bytes set aside from the share for the CUDA context, the loaded kernels, the cuBLAS handle
/// and its workspace, and fragmentation of the stream-ordered allocator.
pub const OVERHEAD_BYTES: u64 = 1 << 30;

/// Headroom on the counted activation bytes, in percent, for allocator granularity.
const ACTIVATION_HEADROOM_PERCENT: u64 = 25;

const GIB: f64 = (1u64 << 30) as f64;

/// Activation bytes per token at the peak of a forward pass, with headroom.
///
/// Live at the end of a decoder layer (see `model::qwen3`): the f32 residual `x`, and in bf16
/// the layer's input norm `h`, `qkv`, the attention output, `o`, the MLP's input norm,
/// `gate|up`, the SwiGLU output, the MLP output and the next layer's `h`; plus the token id,
/// position and attention tile entries of the layout.
pub fn activation_bytes_per_token(config: &Qwen3Config) -> u64 {
    let hidden = config.hidden_size as u64;
    let qkv = config.qkv_width() as u64;
    let q = (config.num_attention_heads * config.head_dim) as u64;
    let intermediate = config.intermediate_size as u64;
    let f32_residual = 4 * hidden;
    let bf16_tensors = 2 * (hidden + qkv + q + hidden + hidden + 2 * intermediate + intermediate)
        + 2 * (hidden + hidden);
    let layout = 4 + 4 + 8;
    let counted = f32_residual + bf16_tensors + layout;
    counted + counted * ACTIVATION_HEADROOM_PERCENT / 100
}

/// How a worker's memory share is spent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryPlan {
    /// The `gpu_memory_fraction` the share comes from.
    pub gpu_memory_fraction: f64,
    /// Total memory of the device.
    pub total_bytes: u64,
    /// `gpu_memory_fraction x total_bytes`: everything this worker may hold.
    pub share_bytes: u64,
    /// Set aside for context, kernels, cuBLAS and allocator slack ([`OVERHEAD_BYTES`]).
    pub overhead_bytes: u64,
    /// Resident weights.
    pub weight_bytes: u64,
    /// Activation bytes per token of a batch ([`activation_bytes_per_token`]).
    pub bytes_per_token: u64,
    /// Largest batch, in tokens, this worker accepts.
    pub max_batch_tokens: usize,
    /// Tokens of activations set aside for recorded passes (CUDA graphs; 0 without).
    pub graph_tokens: usize,
}

impl MemoryPlan {
    /// The plan for a share of `gpu_memory_fraction x total_bytes` holding `weight_bytes` of
    /// weights. `requested` is the batcher's token budget, if known: it must fit. Without
    /// it, the budget is all the share has left. The device must also have the activations'
    /// memory free now (`free_bytes`, measured with the weights loaded): another process may
    /// hold more than its own share. `graph_tokens` tokens of activations are set aside for
    /// recorded passes before the budget is counted.
    pub fn new(
        gpu_memory_fraction: f64,
        total_bytes: u64,
        weight_bytes: u64,
        bytes_per_token: u64,
        free_bytes: u64,
        requested: Option<usize>,
        graph_tokens: usize,
    ) -> Result<Self, String> {
        let share_bytes = share_bytes(gpu_memory_fraction, total_bytes)?;
        let for_activations = share_bytes
            .checked_sub(OVERHEAD_BYTES + weight_bytes)
            .filter(|&left| left >= bytes_per_token)
            .ok_or_else(|| {
                format!(
                    "{:.2} GiB of weights plus {:.2} GiB of overhead leave no room for \
                     activations in the {:.2} GiB share (gpu_memory_fraction {gpu_memory_fraction} \
                     of {:.2} GiB)",
                    weight_bytes as f64 / GIB,
                    OVERHEAD_BYTES as f64 / GIB,
                    share_bytes as f64 / GIB,
                    total_bytes as f64 / GIB,
                )
            })?;
        let fits = usize::try_from(for_activations / bytes_per_token)
            .unwrap_or(usize::MAX)
            .saturating_sub(graph_tokens);
        if fits == 0 {
            return Err(format!(
                "the {:.2} GiB share (gpu_memory_fraction {gpu_memory_fraction}) leaves {:.2} GiB \
                 after weights and overhead, all of it taken by the activations of recorded \
                 passes of {graph_tokens} tokens (cuda_graph_max_tokens)",
                share_bytes as f64 / GIB,
                for_activations as f64 / GIB,
            ));
        }
        let max_batch_tokens = match requested {
            Some(tokens) if tokens > fits => {
                return Err(format!(
                    "a batch of {tokens} tokens needs {:.2} GiB of activations, but the {:.2} GiB \
                     share (gpu_memory_fraction {gpu_memory_fraction}) leaves {:.2} GiB after \
                     weights and overhead: at most {fits} tokens fit",
                    tokens as f64 * bytes_per_token as f64 / GIB,
                    share_bytes as f64 / GIB,
                    for_activations as f64 / GIB,
                ));
            }
            Some(tokens) => tokens.max(1),
            None => fits,
        };
        let needed = (max_batch_tokens + graph_tokens) as u64 * bytes_per_token;
        if needed > free_bytes {
            return Err(format!(
                "batches of {max_batch_tokens} tokens need {:.2} GiB of activations, but only \
                 {:.2} GiB of the device are free (another process holds the rest)",
                needed as f64 / GIB,
                free_bytes as f64 / GIB,
            ));
        }
        Ok(Self {
            gpu_memory_fraction,
            total_bytes,
            share_bytes,
            overhead_bytes: OVERHEAD_BYTES,
            weight_bytes,
            bytes_per_token,
            max_batch_tokens,
            graph_tokens,
        })
    }
}

/// `gpu_memory_fraction x total_bytes`, for a fraction in `(0, 1]`.
pub fn share_bytes(gpu_memory_fraction: f64, total_bytes: u64) -> Result<u64, String> {
    if !(gpu_memory_fraction > 0.0 && gpu_memory_fraction <= 1.0) {
        return Err(format!(
            "gpu_memory_fraction must be in (0, 1], got {gpu_memory_fraction}"
        ));
    }
    Ok((total_bytes as f64 * gpu_memory_fraction) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn qwen3_0_6b() -> Qwen3Config {
        Qwen3Config::from_json(
            r#"{"vocab_size": 151669, "hidden_size": 1024, "intermediate_size": 3072,
                "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
                "head_dim": 128, "rms_norm_eps": 1e-6, "rope_theta": 1000000,
                "max_position_embeddings": 32768}"#,
        )
        .unwrap()
    }

    #[test]
    fn activation_bytes_follow_the_layer_peak() {
        // 4 * 1024 + 2 * (1024 + 4096 + 2048 + 1024 + 1024 + 9216) + 2 * 2048 + 16, plus 25%.
        let counted = 4096 + 2 * 18432 + 4096 + 16;
        assert_eq!(
            activation_bytes_per_token(&qwen3_0_6b()),
            counted + counted / 4
        );
    }

    #[test]
    fn the_share_divides_into_a_token_budget() {
        let per_token = activation_bytes_per_token(&qwen3_0_6b());
        let plan = MemoryPlan::new(0.5, 80 * GIB, 2 * GIB, per_token, 60 * GIB, None, 0).unwrap();
        assert_eq!(plan.share_bytes, 40 * GIB);
        assert_eq!(
            plan.max_batch_tokens as u64,
            (40 * GIB - OVERHEAD_BYTES - 2 * GIB) / per_token
        );
        let asked = MemoryPlan::new(0.5, 80 * GIB, 2 * GIB, per_token, 60 * GIB, Some(16384), 0);
        assert_eq!(asked.unwrap().max_batch_tokens, 16384);
        // Recorded passes' activations come off the budget first.
        let graphs = MemoryPlan::new(0.5, 80 * GIB, 2 * GIB, per_token, 60 * GIB, None, 2048);
        assert_eq!(
            graphs.unwrap().max_batch_tokens,
            plan.max_batch_tokens - 2048
        );
    }

    #[test]
    fn plans_that_cannot_fit_are_refused_with_the_numbers() {
        let per_token = 50_000;
        let too_many = MemoryPlan::new(0.5, 8 * GIB, GIB / 4, per_token, 8 * GIB, Some(1 << 20), 0);
        assert!(too_many.unwrap_err().contains("at most"));
        let no_room = MemoryPlan::new(0.1, 8 * GIB, GIB, per_token, 8 * GIB, None, 0);
        assert!(no_room.unwrap_err().contains("gpu_memory_fraction 0.1"));
        let busy = MemoryPlan::new(0.9, 8 * GIB, GIB, per_token, GIB / 8, None, 0);
        assert!(busy.unwrap_err().contains("free"));
        assert!(share_bytes(0.0, GIB).is_err());
        let all_for_graphs = MemoryPlan::new(0.5, 8 * GIB, GIB, per_token, 8 * GIB, None, 1 << 20);
        assert!(all_for_graphs.unwrap_err().contains("recorded passes"));
        assert!(share_bytes(1.5, GIB).is_err());
    }
}
