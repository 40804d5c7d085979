// Per-head RMSNorm of q and k fused with the rotary embedding (rotate-half layout), in place on
// a fused q|k|v tensor; v is left untouched. All arithmetic in f32: inv_freq[i] =
// 1 / theta^(2i / head_dim) and the angle position * inv_freq[i] are rounded to f32 as
// transformers computes them, and sin/cos use the precise sincosf, once per batch and position
// (rope_table), not per row and layer.
// CPU twin: src/cpu/qk_norm_rope.rs.
#include "common.cuh"

// The rotary table of a batch, built once per forward pass and read by every layer: for
// positions p < table_rows and i < half, cos(p * inv_freq[i]) at rope[p * half + i] and the sine
// at rope[(table_rows + p) * half + i]. One block per position.
extern "C" __global__ void rope_table(float* __restrict__ rope, int table_rows, int head_dim, float theta) {
    const int half = head_dim / 2;
    const int p = blockIdx.x;
    if (p >= table_rows) return;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        // The power in f64 rounded once to f32 is the correctly rounded f32 power, which is
        // what the host's powf returns for the CPU twin and transformers.
        const float exponent = (float)(2 * i) / (float)head_dim;
        const float inv_freq = 1.f / (float)pow((double)theta, (double)exponent);
        sincosf((float)p * inv_freq, &rope[((size_t)table_rows + p) * half + i], &rope[(size_t)p * half + i]);
    }
}

// One block per row. The row starts with num_q_heads q heads then num_k_heads k heads, each
// head_dim wide (num_q_heads is 0 when attention normalizes q itself and `qkv` points at the
// first k head); warp w handles heads w, w + warps, ... (norm_rope_head, common.cuh) with cos
// and sin from the batch's rope_table.
extern "C" __global__ void qk_norm_rope(bf16* __restrict__ qkv, const unsigned int* __restrict__ positions,
                                        const float* __restrict__ q_norm, const float* __restrict__ k_norm,
                                        const float* __restrict__ rope, int table_rows, int row_stride,
                                        int num_q_heads, int num_k_heads, int head_dim, float eps) {
    const int half = head_dim / 2;
    const size_t position = positions[blockIdx.x];
    const float* cos_row = rope + position * half;
    const float* sin_row = rope + ((size_t)table_rows + position) * half;

    const int warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    bf16* row = qkv + (size_t)blockIdx.x * row_stride;
    for (int h = warp; h < num_q_heads + num_k_heads; h += warps) {
        bf16* head = row + (size_t)h * head_dim;
        norm_rope_head(head, head, h < num_q_heads ? q_norm : k_norm, cos_row, sin_row, head_dim, eps);
    }
}
