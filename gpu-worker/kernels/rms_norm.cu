// RMSNorm of the f32 residual stream into the bf16 input of the next matrix product, plain
// and fused with the residual add; all arithmetic in f32. CPU twin: src/cpu/rms_norm.rs.
#include "common.cuh"

// out[r] = w * (x[r] / sqrt(mean(x[r]^2) + eps)); one block per row.
extern "C" __global__ void rms_norm(const float* __restrict__ x, const float* __restrict__ w,
                                    bf16* __restrict__ out, int cols, float eps) {
    __shared__ float scratch[32];
    const float* xr = x + (size_t)blockIdx.x * cols;
    bf16* o = out + (size_t)blockIdx.x * cols;
    float squares = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) squares += xr[c] * xr[c];
    const float inv_rms = 1.f / sqrtf(block_sum(squares, scratch) / (float)cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) o[c] = f32_to_bf16(w[c] * (xr[c] * inv_rms));
}

// residual[r] += delta[r], then out[r] = rms_norm(residual[r]); one block per row. Each thread
// reads back only the elements it wrote itself, so no barrier is needed between the passes.
extern "C" __global__ void add_rms_norm(float* __restrict__ residual, const bf16* __restrict__ delta,
                                        const float* __restrict__ w, bf16* __restrict__ out, int cols,
                                        float eps) {
    __shared__ float scratch[32];
    float* res = residual + (size_t)blockIdx.x * cols;
    const bf16* d = delta + (size_t)blockIdx.x * cols;
    bf16* o = out + (size_t)blockIdx.x * cols;
    float squares = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = res[c] + bf16_to_f32(d[c]);
        res[c] = v;
        squares += v * v;
    }
    const float inv_rms = 1.f / sqrtf(block_sum(squares, scratch) / (float)cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) o[c] = f32_to_bf16(w[c] * (res[c] * inv_rms));
}
