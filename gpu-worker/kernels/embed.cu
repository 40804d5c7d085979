// Embedding gather: output row i is table row ids[i], widened from bf16 to f32 (exactly) to
// start the f32 residual stream. CPU twin: src/cpu/embed.rs.
#include "common.cuh"

// One block per output row. The ids were checked against the table's rows on the host.
extern "C" __global__ void embed(const bf16* __restrict__ table, const unsigned int* __restrict__ ids,
                                 float* __restrict__ out, int cols) {
    const bf16* src = table + (size_t)ids[blockIdx.x] * cols;
    float* dst = out + (size_t)blockIdx.x * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) dst[c] = bf16_to_f32(src[c]);
}
