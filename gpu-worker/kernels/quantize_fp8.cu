// Row-wise FP8 (E4M3) quantization of bf16 activations, one f32 scale per row (per token), as
// the FP8 matrix products will read them. CPU twin: src/fp8.rs (`Fp8Rows::quantize`), equal
// bit for bit: the same two f32 quotients per row and the same rounding of each value.
#include "common.cuh"

// The E4M3 code nearest to x, ties to even, saturated to +-448; NaN gives 0x7f with x's sign.
// The same steps as src/fp8.rs `e4m3_from_f32`.
__device__ __forceinline__ unsigned char e4m3_from_f32(float x) {
    const unsigned int bits = __float_as_uint(x);
    const unsigned int sign = (bits >> 24) & 0x80u;
    const unsigned int magnitude = bits & 0x7fffffffu;
    if (magnitude > 0x7f800000u) return (unsigned char)(sign | 0x7fu);
    // Below the smallest normal, 2^-6: the number of 2^-9 steps (rintf rounds ties to even).
    if (magnitude < 0x3c800000u) {
        return (unsigned char)(sign | (unsigned int)rintf(__uint_as_float(magnitude) * 512.f));
    }
    // Keep 3 mantissa bits, rounding to nearest even on the 20 cut off, and rebias the
    // exponent from 127 to 7; saturate.
    const unsigned int rounded = (magnitude + 0x7ffffu + ((magnitude >> 20) & 1u)) >> 20;
    const unsigned int code = rounded - (120u << 3);
    return (unsigned char)(sign | (code < 0x7eu ? code : 0x7eu));
}

// codes[r][c] = e4m3(x[r][c] * (448 / amax_r)), scales[r] = amax_r / 448, where amax_r is the
// row's largest magnitude (a zero or non-finite maximum gives 1 and 1). One block per row.
extern "C" __global__ void quantize_fp8_rows(const bf16* __restrict__ x, unsigned char* __restrict__ codes,
                                             float* __restrict__ scales, int rows, int cols) {
    __shared__ float scratch[32];
    if ((int)blockIdx.x >= rows) return;  // the whole block
    const bf16* xr = x + (size_t)blockIdx.x * cols;
    unsigned char* out = codes + (size_t)blockIdx.x * cols;
    float amax = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) amax = fmaxf(amax, fabsf(bf16_to_f32(xr[c])));
    amax = block_max(amax, scratch);
    const bool scaled = amax > 0.f && amax <= 3.402823466e38f;
    const float inverse = scaled ? 448.f / amax : 1.f;
    if (threadIdx.x == 0) scales[blockIdx.x] = scaled ? amax / 448.f : 1.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) out[c] = e4m3_from_f32(bf16_to_f32(xr[c]) * inverse);
}
