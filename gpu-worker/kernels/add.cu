// Residual add: the f32 residual stream plus a bf16 matrix-product output, in place.
// CPU twin: src/cpu/add.rs.
#include "common.cuh"

// residual[r] += delta[r]; one block per row.
extern "C" __global__ void add(float* __restrict__ residual, const bf16* __restrict__ delta, int cols) {
    float* res = residual + (size_t)blockIdx.x * cols;
    const bf16* d = delta + (size_t)blockIdx.x * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) res[c] += bf16_to_f32(d[c]);
}
