// Pooling head on the last rows: final RMSNorm, Matryoshka truncation to dims[r] values, then
// L2 normalization; f32 in, f32 out. CPU twin: src/cpu/pool.rs.
#include "common.cuh"

// One block per row. Only the first dims[r] values of output row r are written.
extern "C" __global__ void pool(const float* __restrict__ last, const float* __restrict__ w,
                                const unsigned int* __restrict__ dims, float* __restrict__ out, int cols,
                                float eps) {
    __shared__ float scratch[32];
    const float* x = last + (size_t)blockIdx.x * cols;
    float* o = out + (size_t)blockIdx.x * cols;
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
    // As torch.nn.functional.normalize: divide by max(||y||, 1e-12).
    const float length = fmaxf(sqrtf(block_sum(kept_squares, scratch)), 1e-12f);
    for (int c = threadIdx.x; c < kept; c += blockDim.x) o[c] = o[c] / length;
}
