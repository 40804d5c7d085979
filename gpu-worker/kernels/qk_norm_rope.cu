// Per-head RMSNorm of q and k fused with the rotary embedding (rotate-half layout), in place on
// a fused q|k|v tensor; v is left untouched. All arithmetic in f32: inv_freq[i] =
// 1 / theta^(2i / head_dim) and the angle position * inv_freq[i] are rounded to f32 as
// transformers computes them, and sin/cos use the precise sincosf.
// CPU twin: src/cpu/qk_norm_rope.rs.
#include "common.cuh"

// head_dim / 2 at most (head_dim <= 256, checked by the launcher).
#define MAX_HALF 128
#define PAIRS_PER_LANE (MAX_HALF / 32)

// One block per row. The row starts with num_q_heads q heads then num_k_heads k heads, each
// head_dim wide; warp w handles heads w, w + warps, ... Lane l holds the rotary pairs
// (i, i + head_dim / 2) for i = l, l + 32, ...
extern "C" __global__ void qk_norm_rope(bf16* __restrict__ qkv, const unsigned int* __restrict__ positions,
                                        const float* __restrict__ q_norm, const float* __restrict__ k_norm,
                                        int row_stride, int num_q_heads, int num_k_heads, int head_dim,
                                        float eps, float theta) {
    __shared__ float cos_table[MAX_HALF], sin_table[MAX_HALF];
    const int half = head_dim / 2;
    const float position = (float)positions[blockIdx.x];
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        // The power in f64 rounded once to f32 is the correctly rounded f32 power, which is
        // what the host's powf returns for the CPU twin and transformers.
        const float exponent = (float)(2 * i) / (float)head_dim;
        const float inv_freq = 1.f / (float)pow((double)theta, (double)exponent);
        sincosf(position * inv_freq, &sin_table[i], &cos_table[i]);
    }
    __syncthreads();

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
                head[i] = f32_to_bf16(a * cos_table[i] - b * sin_table[i]);
                head[i + half] = f32_to_bf16(b * cos_table[i] + a * sin_table[i]);
            }
        }
    }
}
