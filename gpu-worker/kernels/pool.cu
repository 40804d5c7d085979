// Pooling head on the last rows: final RMSNorm, Matryoshka truncation to dims[r] values, then
// L2 normalization of the rows whose normalize[r] is non-zero (the others are returned as the
// final norm left them); f32 in, f32 out. CPU twin: src/cpu/pool.rs.
#include "common.cuh"

// One block per row. Output row r holds its dims[r] values, from out[offsets[r]] (the rows
// packed back to back: only the values asked for are copied to the host).
extern "C" __global__ void pool(const float* __restrict__ last, const float* __restrict__ w,
                                const unsigned int* __restrict__ dims,
                                const unsigned int* __restrict__ normalize,
                                const unsigned int* __restrict__ offsets, float* __restrict__ out,
                                int cols, float eps) {
    __shared__ float scratch[32];
    const float* x = last + (size_t)blockIdx.x * cols;
    float* o = out + offsets[blockIdx.x];
    const int kept = (int)dims[blockIdx.x];
    float squares = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) squares += x[c] * x[c];
    const float inv_rms = 1.f / sqrtf(block_sum(squares, scratch) / (float)cols + eps);
    float kept_squares = 0.f;
    for (int c = threadIdx.x; c < kept; c += blockDim.x) {
        const float y = w[c] * (x[c] * inv_rms);
        o[c] = y;
        kept_squares += y * y;
    }
    // The same for the whole block: every thread returns here or none does (block_sum below
    // synchronizes them all).
    if (normalize[blockIdx.x] == 0u) return;
    // As torch.nn.functional.normalize: divide by max(||y||, 1e-12).
    const float length = fmaxf(sqrtf(block_sum(kept_squares, scratch)), 1e-12f);
    for (int c = threadIdx.x; c < kept; c += blockDim.x) o[c] = o[c] / length;
}
