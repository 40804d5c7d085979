// SwiGLU on a fused gate|up tensor: out[r][i] = silu(gate[r][i]) * up[r][i], in f32.
// CPU twin: src/cpu/silu_mul.rs.
#include "common.cuh"

// gate_up rows are 2n wide (gate, then up), output rows n wide; one block per row.
extern "C" __global__ void silu_mul(const bf16* __restrict__ gate_up, bf16* __restrict__ out, int n) {
    const bf16* gate = gate_up + (size_t)blockIdx.x * 2 * n;
    const bf16* up = gate + n;
    bf16* o = out + (size_t)blockIdx.x * n;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float g = bf16_to_f32(gate[i]);
        o[i] = f32_to_bf16(g / (1.f + expf(-g)) * bf16_to_f32(up[i]));
    }
}
