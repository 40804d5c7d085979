// Gathers the last row of every sequence (the pooled tokens) from the f32 residual stream or
// from a bf16 q|k|v tensor. CPU twin: src/cpu/last_rows.rs.
#include "common.cuh"

// out[s] = src[rows[s]]; one block per gathered row.
template <typename T>
__device__ __forceinline__ void gather_rows(const T* __restrict__ src, const unsigned int* __restrict__ rows,
                                            T* __restrict__ out, int cols) {
    const T* s = src + (size_t)rows[blockIdx.x] * cols;
    T* o = out + (size_t)blockIdx.x * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) o[c] = s[c];
}

extern "C" __global__ void last_rows_f32(const float* __restrict__ src, const unsigned int* __restrict__ rows,
                                         float* __restrict__ out, int cols) {
    gather_rows(src, rows, out, cols);
}

extern "C" __global__ void last_rows_bf16(const bf16* __restrict__ src, const unsigned int* __restrict__ rows,
                                          bf16* __restrict__ out, int cols) {
    gather_rows(src, rows, out, cols);
}
