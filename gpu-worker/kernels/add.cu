// Residual add: the f32 residual stream plus a bf16 matrix-product output, in place.
// CPU twin: src/cpu/add.rs. Two forms with the same arguments, picked per launch as for
// rms_norm (src/cuda/add.rs).
#include "common.cuh"

// residual[r] += delta[r]; one block per row.
extern "C" __global__ void add(float* __restrict__ residual, const bf16* __restrict__ delta, int rows,
                               int cols) {
    if ((int)blockIdx.x >= rows) return;  // the whole block
    float* res = residual + (size_t)blockIdx.x * cols;
    const bf16* d = delta + (size_t)blockIdx.x * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) res[c] += bf16_to_f32(d[c]);
}

// add for cols % 8 == 0 and 16-byte aligned buffers: one warp per row (blockDim (32, rows per
// block)), eight values per lane and step in 16-byte accesses.
extern "C" __global__ void add_vec8(float* __restrict__ residual, const bf16* __restrict__ delta, int rows,
                                    int cols) {
    const long long row = row_of_warp();
    if (row >= rows) return;
    float* res = residual + (size_t)row * cols;
    const bf16* d = delta + (size_t)row * cols;
    for (int c = threadIdx.x * 8; c < cols; c += 32 * 8) {
        float v[8], dv[8];
        load_f32x8(res + c, v);
        load_bf16x8(d + c, dv);
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] += dv[i];
        store_f32x8(res + c, v);
    }
}
