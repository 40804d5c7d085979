// Per-head RMSNorm of q and k fused with the rotary embedding (rotate-half layout), in place on
// a fused q|k|v tensor; v is left untouched. All arithmetic in f32: inv_freq[i] =
// 1 / theta^(2i / head_dim) and the angle position * inv_freq[i] are rounded to f32 as
// transformers computes them, and sin/cos use the precise sincosf, once per batch and position
// (rope_table), not per row and layer.
// CPU twin: src/cpu/qk_norm_rope.rs.
#include "common.cuh"

// head_dim / 2 at most (head_dim <= 256, checked by the launcher).
#define MAX_HALF 128
#define PAIRS_PER_LANE (MAX_HALF / 32)

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
// head_dim wide; warp w handles heads w, w + warps, ... Lane l holds the rotary pairs
// (i, i + head_dim / 2) for i = l, l + 32, ... cos and sin come from the batch's rope_table.
extern "C" __global__ void qk_norm_rope(bf16* __restrict__ qkv, const unsigned int* __restrict__ positions,
                                        const float* __restrict__ q_norm, const float* __restrict__ k_norm,
                                        const float* __restrict__ rope, int table_rows, int row_stride,
                                        int num_q_heads, int num_k_heads, int head_dim, float eps) {
    const int half = head_dim / 2;
    const size_t position = positions[blockIdx.x];
    const float* cos_row = rope + position * half;
    const float* sin_row = rope + ((size_t)table_rows + position) * half;

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    bf16* row = qkv + (size_t)blockIdx.x * row_stride;
    for (int h = warp; h < num_q_heads + num_k_heads; h += warps) {
        bf16* head = row + (size_t)h * head_dim;
        const float* w = h < num_q_heads ? q_norm : k_norm;
        float lo[PAIRS_PER_LANE], hi[PAIRS_PER_LANE];
        float squares = 0.f;
#pragma unroll
        for (int j = 0; j < PAIRS_PER_LANE; ++j) {
            const int i = lane + 32 * j;
            lo[j] = i < half ? bf16_to_f32(head[i]) : 0.f;
            hi[j] = i < half ? bf16_to_f32(head[i + half]) : 0.f;
            squares += lo[j] * lo[j] + hi[j] * hi[j];
        }
        const float inv_rms = 1.f / sqrtf(warp_sum(squares) / (float)head_dim + eps);
#pragma unroll
        for (int j = 0; j < PAIRS_PER_LANE; ++j) {
            const int i = lane + 32 * j;
            if (i < half) {
                const float a = w[i] * (lo[j] * inv_rms), b = w[i + half] * (hi[j] * inv_rms);
                head[i] = f32_to_bf16(a * cos_row[i] - b * sin_row[i]);
                head[i + half] = f32_to_bf16(b * cos_row[i] + a * sin_row[i]);
            }
        }
    }
}
