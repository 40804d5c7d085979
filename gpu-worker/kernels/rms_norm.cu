// RMSNorm of the f32 residual stream into the bf16 input of the next matrix product, plain
// and fused with the residual add; all arithmetic in f32. CPU twin: src/cpu/rms_norm.rs.
//
// Two forms of each, with the same arguments (src/cuda/rms_norm.rs picks one per launch): one
// block per row with scalar accesses, for any width; and `*_vec8`, one warp per row (blockDim
// (32, rows per block)) with 16-byte accesses, for widths that are a multiple of 8 and 16-byte
// aligned buffers, its sum of squares reduced with warp shuffles only. A thread reads back only
// the elements it wrote itself, so neither form needs a barrier between its two passes.
#include "common.cuh"

// out[r] = w * (x[r] / sqrt(mean(x[r]^2) + eps)); one block per row.
extern "C" __global__ void rms_norm(const float* __restrict__ x, const float* __restrict__ w,
                                    bf16* __restrict__ out, int rows, int cols, float eps) {
    __shared__ float scratch[32];
    if ((int)blockIdx.x >= rows) return;  // the whole block
    const float* xr = x + (size_t)blockIdx.x * cols;
    bf16* o = out + (size_t)blockIdx.x * cols;
    float squares = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) squares += xr[c] * xr[c];
    const float inv_rms = 1.f / sqrtf(block_sum(squares, scratch) / (float)cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) o[c] = f32_to_bf16(w[c] * (xr[c] * inv_rms));
}

// residual[r] += delta[r], then out[r] = rms_norm(residual[r]); one block per row.
extern "C" __global__ void add_rms_norm(float* __restrict__ residual, const bf16* __restrict__ delta,
                                        const float* __restrict__ w, bf16* __restrict__ out, int rows,
                                        int cols, float eps) {
    __shared__ float scratch[32];
    if ((int)blockIdx.x >= rows) return;  // the whole block
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

// o = w * (xr * inv_rms) for one row, eight values per lane and step. `xr` is not __restrict__:
// add_rms_norm_vec8 passes the residual it has just written, which must not be read through
// the read-only (non-coherent) cache.
__device__ __forceinline__ void scale_row_vec8(const float* xr, const float* __restrict__ w, bf16* o,
                                               int cols, float inv_rms) {
    for (int c = threadIdx.x * 8; c < cols; c += 32 * 8) {
        float v[8], wv[8];
        load_f32x8(xr + c, v);
        load_f32x8(w + c, wv);
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] = wv[i] * (v[i] * inv_rms);
        store_bf16x8(o + c, v);
    }
}

// rms_norm for cols % 8 == 0 and 16-byte aligned buffers; one warp per row.
extern "C" __global__ void rms_norm_vec8(const float* __restrict__ x, const float* __restrict__ w,
                                         bf16* __restrict__ out, int rows, int cols, float eps) {
    const long long row = row_of_warp();
    if (row >= rows) return;  // the whole warp: the shuffles below see every lane or none
    const float* xr = x + (size_t)row * cols;
    float squares = 0.f;
    for (int c = threadIdx.x * 8; c < cols; c += 32 * 8) {
        float v[8];
        load_f32x8(xr + c, v);
#pragma unroll
        for (int i = 0; i < 8; ++i) squares += v[i] * v[i];
    }
    const float inv_rms = 1.f / sqrtf(warp_sum(squares) / (float)cols + eps);
    scale_row_vec8(xr, w, out + (size_t)row * cols, cols, inv_rms);
}

// add_rms_norm for cols % 8 == 0 and 16-byte aligned buffers; one warp per row.
extern "C" __global__ void add_rms_norm_vec8(float* __restrict__ residual, const bf16* __restrict__ delta,
                                             const float* __restrict__ w, bf16* __restrict__ out, int rows,
                                             int cols, float eps) {
    const long long row = row_of_warp();
    if (row >= rows) return;  // the whole warp: the shuffles below see every lane or none
    float* res = residual + (size_t)row * cols;
    const bf16* d = delta + (size_t)row * cols;
    float squares = 0.f;
    for (int c = threadIdx.x * 8; c < cols; c += 32 * 8) {
        float v[8], dv[8];
        load_f32x8(res + c, v);
        load_bf16x8(d + c, dv);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            v[i] += dv[i];
            squares += v[i] * v[i];
        }
        store_f32x8(res + c, v);
    }
    const float inv_rms = 1.f / sqrtf(warp_sum(squares) / (float)cols + eps);
    scale_row_vec8(res, w, out + (size_t)row * cols, cols, inv_rms);
}
