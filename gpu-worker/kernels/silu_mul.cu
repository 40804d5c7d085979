// SwiGLU on a fused gate|up tensor: out[r][i] = silu(gate[r][i]) * up[r][i], in f32.
// CPU twin: src/cpu/silu_mul.rs.
//
// Two forms with the same arguments (src/cuda/silu_mul.rs picks one per launch, as
// src/cuda/row_path.rs says): one block per row with scalar accesses, for any width; and
// `silu_mul_vec8`, one warp per row with 16-byte accesses, for widths that are a multiple of 8
// and 16-byte aligned buffers. Both compute each value with `swiglu`, so they agree bit for bit.
#include "common.cuh"

__device__ __forceinline__ float swiglu(float gate, float up) { return gate / (1.f + expf(-gate)) * up; }

// gate_up rows are 2n wide (gate, then up), output rows n wide; one block per row.
extern "C" __global__ void silu_mul(const bf16* __restrict__ gate_up, bf16* __restrict__ out, int rows, int n) {
    if ((int)blockIdx.x >= rows) return;  // the whole block
    const bf16* gate = gate_up + (size_t)blockIdx.x * 2 * n;
    const bf16* up = gate + n;
    bf16* o = out + (size_t)blockIdx.x * n;
    for (int i = threadIdx.x; i < n; i += blockDim.x) o[i] = f32_to_bf16(swiglu(bf16_to_f32(gate[i]), bf16_to_f32(up[i])));
}

// silu_mul for n % 8 == 0 and 16-byte aligned buffers; one warp per row.
extern "C" __global__ void silu_mul_vec8(const bf16* __restrict__ gate_up, bf16* __restrict__ out, int rows,
                                         int n) {
    const long long row = row_of_warp();
    if (row >= rows) return;  // the whole warp
    const bf16* gate = gate_up + (size_t)row * 2 * n;
    const bf16* up = gate + n;
    bf16* o = out + (size_t)row * n;
    for (int c = threadIdx.x * 8; c < n; c += 32 * 8) {
        float g[8], u[8];
        load_bf16x8(gate + c, g);
        load_bf16x8(up + c, u);
#pragma unroll
        for (int i = 0; i < 8; ++i) g[i] = swiglu(g[i], u[i]);
        store_bf16x8(o + c, g);
    }
}
