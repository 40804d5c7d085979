// Helpers shared by every kernel in this folder: bf16 <-> f32 conversion, 16-byte loads and
// stores of eight values, sums across a warp or a block, and the q/k head norm with rotary
// embedding that two kernels apply. Self-contained on purpose: the kernels include no CUDA
// header, so NVRTC needs no include path at run time (src/cuda/compile.rs passes this file in
// memory).
#pragma once

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "the kernels need compute capability 8.0 or newer (bf16 conversions and tensor cores)"
#endif

// A bfloat16 value as its raw bits; all arithmetic is done in f32.
typedef unsigned short bf16;

__device__ __forceinline__ float bf16_to_f32(bf16 x) {
    return __uint_as_float(((unsigned int)x) << 16);
}

// Rounds to nearest even, as torch and `half::bf16::from_f32` do.
__device__ __forceinline__ bf16 f32_to_bf16(float x) {
    bf16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
}

// Two values as a bf16 pair in one register: `lo` in the low half, which is the element with
// the lower index in memory and in tensor-core fragments.
__device__ __forceinline__ unsigned int pack_bf16x2(float lo, float hi) {
    unsigned int r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// Eight consecutive values moved in 16-byte accesses, as the one-warp-per-row kernels do: two
// float4 for f32, one uint4 for bf16. `p` must be 16-byte aligned (their launchers check).
__device__ __forceinline__ void load_f32x8(const float* p, float v[8]) {
    const float4 a = reinterpret_cast<const float4*>(p)[0];
    const float4 b = reinterpret_cast<const float4*>(p)[1];
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
    v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}

__device__ __forceinline__ void store_f32x8(float* p, const float v[8]) {
    reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}

__device__ __forceinline__ void load_bf16x8(const bf16* p, float v[8]) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const unsigned int words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        v[2 * i] = __uint_as_float(words[i] << 16);  // the lower index sits in the low half
        v[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
    }
}

__device__ __forceinline__ void store_bf16x8(bf16* p, const float v[8]) {
    *reinterpret_cast<uint4*>(p) = make_uint4(pack_bf16x2(v[0], v[1]), pack_bf16x2(v[2], v[3]),
                                              pack_bf16x2(v[4], v[5]), pack_bf16x2(v[6], v[7]));
}

// The row of the calling warp in a one-warp-per-row launch (blockDim (32, rows per block)).
__device__ __forceinline__ long long row_of_warp() {
    return (long long)blockIdx.x * blockDim.y + threadIdx.y;
}

// The two reductions of the kernels, as function objects for warp_reduce and block_reduce.
struct Add {
    __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
struct Max {
    __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// `op` over the warp's 32 values, returned to every lane (a butterfly: the same order of
// operations in every lane).
template <typename Op>
__device__ __forceinline__ float warp_reduce(float v, Op op) {
    for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// `op` over the block, returned to every thread; lanes past the block's warps count as 0, the
// identity of Add and of Max over magnitudes. `scratch` is 32 floats of shared memory;
// blockDim.x must be a multiple of 32. The order of operations depends only on blockDim.x,
// never on the batch, so a row's result does not depend on what it is batched with.
template <typename Op>
__device__ float block_reduce(float v, float* scratch, Op op) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_reduce(v, op);
    __syncthreads();  // a previous call may still be reading scratch
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    return warp_reduce(lane < warps ? scratch[lane] : 0.f, op);
}

__device__ __forceinline__ float warp_sum(float v) { return warp_reduce(v, Add()); }

// Sum over the block, returned to every thread (see block_reduce).
__device__ float block_sum(float v, float* scratch) { return block_reduce(v, scratch, Add()); }

// Largest magnitude over the block of non-negative `v`, returned to every thread.
__device__ float block_max(float v, float* scratch) { return block_reduce(v, scratch, Max()); }

// head_dim / 2 at most for norm_rope_head (head_dim <= 256, checked by the launchers).
#define MAX_HALF 128
#define PAIRS_PER_LANE (MAX_HALF / 32)

// One head of one row, by one warp: RMSNorm over its head_dim values with weight `w`, then the
// rotary embedding (rotate-half layout) with this position's `cos_row` and `sin_row` (half
// values each, from rope_table). Reads `src`, writes bf16 to `dst`, which may be `src`: each
// lane writes only the values it read. Lane l holds the pairs (i, i + head_dim / 2) for
// i = l, l + 32, ... All arithmetic in f32. qk_norm_rope applies it in place to q and k heads;
// attention applies it to query rows as it loads them (src/cuda/attention.rs), with the same
// arithmetic in the same order, so both give the same bits.
__device__ __forceinline__ void norm_rope_head(const bf16* src, bf16* dst, const float* __restrict__ w,
                                               const float* __restrict__ cos_row,
                                               const float* __restrict__ sin_row, int head_dim, float eps) {
    const int half = head_dim / 2, lane = threadIdx.x & 31;
    float lo[PAIRS_PER_LANE], hi[PAIRS_PER_LANE];
    float squares = 0.f;
#pragma unroll
    for (int j = 0; j < PAIRS_PER_LANE; ++j) {
        const int i = lane + 32 * j;
        lo[j] = i < half ? bf16_to_f32(src[i]) : 0.f;
        hi[j] = i < half ? bf16_to_f32(src[i + half]) : 0.f;
        squares += lo[j] * lo[j] + hi[j] * hi[j];
    }
    const float inv_rms = 1.f / sqrtf(warp_sum(squares) / (float)head_dim + eps);
#pragma unroll
    for (int j = 0; j < PAIRS_PER_LANE; ++j) {
        const int i = lane + 32 * j;
        if (i < half) {
            const float a = w[i] * (lo[j] * inv_rms), b = w[i + half] * (hi[j] * inv_rms);
            dst[i] = f32_to_bf16(a * cos_row[i] - b * sin_row[i]);
            dst[i + half] = f32_to_bf16(b * cos_row[i] + a * sin_row[i]);
        }
    }
}
