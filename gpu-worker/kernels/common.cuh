// Helpers shared by every kernel in this folder: bf16 <-> f32 conversion and sums across a
// warp or a block. Self-contained on purpose: the kernels include no CUDA header, so NVRTC
// needs no include path at run time (src/cuda/compile.rs passes this file in memory).
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

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// Sum over the block, returned to every thread. `scratch` is 32 floats of shared memory;
// blockDim.x must be a multiple of 32. The order of additions depends only on blockDim.x,
// never on the batch, so a row's result does not depend on what it is batched with.
__device__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // a previous call may still be reading scratch
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    return warp_sum(lane < warps ? scratch[lane] : 0.f);
}
