// Causal grouped-query attention over a packed variable-length batch, flash-attention style:
// tiles of keys and values in shared memory, tensor-core products (mma.sync m16n8k16, bf16
// operands, f32 accumulators) and an online softmax in f32. No padding, no T x T matrix.
// CPU twin: src/cpu/attention.rs.
//
// Sequence s has query rows cu_q[s]..cu_q[s + 1] and key rows cu_k[s]..cu_k[s + 1]. The causal
// mask is aligned bottom-right: query row i (counted inside its sequence) of a sequence with
// q_len query rows and k_len keys sees keys 0..=k_len - q_len + i, so a last-row-only query
// sees the whole sequence. Query head h reads kv head h / group.
//
// Work split: one block per (tile of ROWS query rows of one sequence, query head); the tile
// table holds (sequence, first row) pairs. Each of the WARPS warps owns 16 query rows. The
// head width is a template parameter D (16, 32, ..., 256); a narrower head (any even width)
// is zero-padded up to D in registers and shared memory.
//
// The `_rope` entry points (NORM_ROPE) take raw query heads: each warp applies the q head
// RMSNorm and the rotary embedding to its rows as it loads them (norm_rope_head, the
// arithmetic of qk_norm_rope, so the same bits), staged through shared memory. Keys arrive
// normalized (qk_norm_rope over the k heads alone): a block reads every key up to its rows,
// so normalizing keys here would repeat the work once per query tile and head.
#include "common.cuh"

#define WARPS 4
#define THREADS (32 * WARPS)
// Query rows per block; the launcher (src/cuda/attention.rs) builds its tile table with the
// same number.
#define ROWS (16 * WARPS)

// D = c + A * B for one 16x8x16 tile. Fragment layout (PTX ISA, "matrix fragments for
// mma.m16n8k16"), with lane = 4 * group + quad:
//   A (16x16, row-major): a0 = (row group,     cols 2 quad, +1)  a1 = (row group + 8, same cols)
//                         a2 = (row group, cols 8 + 2 quad, +1)  a3 = (row group + 8, same cols)
//   B (16x8, k x n):      b0 = (k 2 quad, +1; col group)         b1 = (k 8 + 2 quad, +1; col group)
//   C (16x8, f32):        c0, c1 = (row group, cols 2 quad, +1)  c2, c3 = (row group + 8, same)
// Each 32-bit register holds two bf16, the lower index in the low half.
__device__ __forceinline__ void mma_bf16(float c[4], const unsigned int a[4], unsigned int b0, unsigned int b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Loads four 8x8 bf16 matrices from shared memory, transposed: lanes 8i..8i+7 give the row
// addresses of matrix i, and register i receives matrix i in the B-fragment layout above.
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned int r[4], const bf16* row) {
    const unsigned int address = (unsigned int)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
}

// Two adjacent bf16 of a query row as one register, or zero outside the sequence or the head.
__device__ __forceinline__ unsigned int load_pair(const bf16* p, bool valid) {
    return valid ? *reinterpret_cast<const unsigned int*>(p) : 0u;
}

template <int D, int KEYS, bool NORM_ROPE>
__device__ __forceinline__ void attention_tile(
    const bf16* __restrict__ q, const bf16* __restrict__ kv, bf16* __restrict__ out,
    const unsigned int* __restrict__ cu_q, const unsigned int* __restrict__ cu_k,
    const unsigned int* __restrict__ tiles, int q_stride, int kv_stride, int k_offset, int v_offset,
    int out_stride, int head_dim, int group, float scale, const unsigned int* __restrict__ positions,
    const float* __restrict__ q_norm, const float* __restrict__ rope, int table_rows, float eps) {
    // Keys ([0]) and values ([1]) of one tile, row-major [key][dim]. Rows are padded by 8
    // elements (16 bytes): the fragment reads of a warp then hit 32 distinct banks, and rows
    // stay 16-byte aligned for vector stores and ldmatrix. Before the first tile, the same
    // memory stages the normalized query rows of NORM_ROPE (2 * KEYS >= ROWS rows).
    __shared__ __align__(16) bf16 kv_smem[2][KEYS][D + 8];
    bf16 (*k_tile)[D + 8] = kv_smem[0];
    bf16 (*v_tile)[D + 8] = kv_smem[1];
    static_assert(2 * KEYS >= ROWS, "the key and value tiles stage a block's query rows");

    const int seq = (int)tiles[2 * blockIdx.x], first_row = (int)tiles[2 * blockIdx.x + 1];
    const int head = blockIdx.y, kv_head = head / group;
    const int q_start = (int)cu_q[seq], q_len = (int)cu_q[seq + 1] - q_start;
    const int k_start = (int)cu_k[seq], k_len = (int)cu_k[seq + 1] - k_start;
    // A tile past its sequence's rows pads a recorded pass's tile list (cuda/graphs.rs): no
    // work. The whole block leaves together, before any barrier.
    if (first_row >= q_len) return;
    const int diagonal = k_len - q_len;  // query row i sees keys 0..=diagonal + i
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int group_id = lane >> 2, quad = lane & 3;

    // Rows (inside the sequence) of this thread's fragments, and the keys each part needs.
    const int warp_row = first_row + 16 * warp;
    const int row_a = warp_row + group_id, row_b = row_a + 8;
    const bool warp_active = warp_row < q_len;
    const int warp_key_end = diagonal + min(warp_row + 16, q_len);
    const int block_key_end = diagonal + min(first_row + ROWS, q_len);

    // 1. This warp's 16 query rows as A fragments, kept in registers for the whole pass.
    unsigned int q_frag[D / 16][4];
    if (NORM_ROPE) {
        // Normalized and rotated row by row into shared memory (zero past the sequence and
        // the head), then read as fragments. Query row i of the sequence is its key row
        // diagonal + i, whose position the rotation takes.
        bf16* staged = &kv_smem[0][0][0] + (size_t)(16 * warp) * (D + 8);
        if (warp_active) {
            const int half = head_dim / 2;
            for (int r = 0; r < 16; ++r) {
                bf16* staged_row = staged + (size_t)r * (D + 8);
                const int row = warp_row + r;
                if (row < q_len) {
                    const size_t position = positions[k_start + diagonal + row];
                    norm_rope_head(q + (size_t)(q_start + row) * q_stride + (size_t)head * head_dim, staged_row,
                                   q_norm, rope + position * half, rope + ((size_t)table_rows + position) * half,
                                   head_dim, eps);
                }
                for (int d = (row < q_len ? head_dim : 0) + lane; d < D; d += 32) staged_row[d] = 0;
            }
            __syncwarp();
        }
        const bf16* staged_a = staged + (size_t)group_id * (D + 8);
        const bf16* staged_b = staged_a + (size_t)8 * (D + 8);
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            const int d = kk * 16 + 2 * quad;
            q_frag[kk][0] = load_pair(staged_a + d, warp_active);
            q_frag[kk][1] = load_pair(staged_b + d, warp_active);
            q_frag[kk][2] = load_pair(staged_a + d + 8, warp_active);
            q_frag[kk][3] = load_pair(staged_b + d + 8, warp_active);
        }
    } else {
        const bf16* q_a = q + (size_t)(q_start + row_a) * q_stride + (size_t)head * head_dim;
        const bf16* q_b = q + (size_t)(q_start + row_b) * q_stride + (size_t)head * head_dim;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            const int d = kk * 16 + 2 * quad;
            q_frag[kk][0] = load_pair(q_a + d, row_a < q_len && d < head_dim);
            q_frag[kk][1] = load_pair(q_b + d, row_b < q_len && d < head_dim);
            q_frag[kk][2] = load_pair(q_a + d + 8, row_a < q_len && d + 8 < head_dim);
            q_frag[kk][3] = load_pair(q_b + d + 8, row_b < q_len && d + 8 < head_dim);
        }
    }

    // Online softmax state in log2 units (scores scaled by scale * log2(e)): running maxima
    // of rows a and b, this thread's share of their sums, and the output accumulators.
    const float NEG_INF = __int_as_float(0xff800000);
    const float scale_log2 = scale * 1.4426950408889634f;
    float max_a = NEG_INF, max_b = NEG_INF, sum_a = 0.f, sum_b = 0.f;
    float acc[D / 8][4];
#pragma unroll
    for (int dn = 0; dn < D / 8; ++dn) acc[dn][0] = acc[dn][1] = acc[dn][2] = acc[dn][3] = 0.f;

    // 16-byte loads when every offset allows them, else pairs.
    const bool vector_loads = ((head_dim | kv_stride | k_offset | v_offset) & 7) == 0;
    for (int k0 = 0; k0 < block_key_end; k0 += KEYS) {
        // 2. Keys k0..k0 + KEYS into shared memory, zero past the sequence or the head.
        __syncthreads();  // every warp is done with the previous tile
        if (vector_loads) {
            for (int i = threadIdx.x; i < KEYS * (D / 8); i += THREADS) {
                const int key = i / (D / 8), d = 8 * (i % (D / 8));
                uint4 k_chunk = make_uint4(0, 0, 0, 0), v_chunk = make_uint4(0, 0, 0, 0);
                if (k0 + key < k_len && d < head_dim) {
                    const bf16* src = kv + (size_t)(k_start + k0 + key) * kv_stride + (size_t)kv_head * head_dim + d;
                    k_chunk = *reinterpret_cast<const uint4*>(src + k_offset);
                    v_chunk = *reinterpret_cast<const uint4*>(src + v_offset);
                }
                *reinterpret_cast<uint4*>(&k_tile[key][d]) = k_chunk;
                *reinterpret_cast<uint4*>(&v_tile[key][d]) = v_chunk;
            }
        } else {
            for (int i = threadIdx.x; i < KEYS * (D / 2); i += THREADS) {
                const int key = i / (D / 2), d = 2 * (i % (D / 2));
                unsigned int k_pair = 0u, v_pair = 0u;
                if (k0 + key < k_len && d < head_dim) {
                    const bf16* src = kv + (size_t)(k_start + k0 + key) * kv_stride + (size_t)kv_head * head_dim + d;
                    k_pair = *reinterpret_cast<const unsigned int*>(src + k_offset);
                    v_pair = *reinterpret_cast<const unsigned int*>(src + v_offset);
                }
                *reinterpret_cast<unsigned int*>(&k_tile[key][d]) = k_pair;
                *reinterpret_cast<unsigned int*>(&v_tile[key][d]) = v_pair;
            }
        }
        __syncthreads();
        if (!warp_active || k0 >= warp_key_end) continue;  // nothing this warp can see

        // 3. Scores S = Q K^T for 16 rows x KEYS keys: n-tile j covers keys k0 + 8j..+7.
        float s[KEYS / 8][4];
#pragma unroll
        for (int j = 0; j < KEYS / 8; ++j) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                const bf16* k_row = &k_tile[8 * j + group_id][kk * 16 + 2 * quad];
                mma_bf16(s[j], q_frag[kk], *reinterpret_cast<const unsigned int*>(k_row),
                         *reinterpret_cast<const unsigned int*>(k_row + 8));
            }
        }

        // 4. Causal mask and scale; row maxima across the 4 lanes that share a row.
        float tile_max_a = NEG_INF, tile_max_b = NEG_INF;
#pragma unroll
        for (int j = 0; j < KEYS / 8; ++j) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int key = k0 + 8 * j + 2 * quad + e;
                s[j][e] = key <= diagonal + row_a && key < k_len ? s[j][e] * scale_log2 : NEG_INF;
                s[j][2 + e] = key <= diagonal + row_b && key < k_len ? s[j][2 + e] * scale_log2 : NEG_INF;
                tile_max_a = fmaxf(tile_max_a, s[j][e]);
                tile_max_b = fmaxf(tile_max_b, s[j][2 + e]);
            }
        }
#pragma unroll
        for (int offset = 1; offset < 4; offset <<= 1) {
            tile_max_a = fmaxf(tile_max_a, __shfl_xor_sync(0xffffffffu, tile_max_a, offset));
            tile_max_b = fmaxf(tile_max_b, __shfl_xor_sync(0xffffffffu, tile_max_b, offset));
        }

        // 5. Online softmax: rescale what was accumulated to the new maxima. A row that has
        //    seen no visible key yet keeps a maximum of -inf; 0 stands in for it so that no
        //    inf - inf arises (its probabilities are all exp2(-inf) = 0).
        const float new_max_a = fmaxf(max_a, tile_max_a), new_max_b = fmaxf(max_b, tile_max_b);
        const float ref_a = new_max_a == NEG_INF ? 0.f : new_max_a;
        const float ref_b = new_max_b == NEG_INF ? 0.f : new_max_b;
        const float rescale_a = exp2f(max_a - ref_a), rescale_b = exp2f(max_b - ref_b);
        max_a = new_max_a;
        max_b = new_max_b;
        sum_a *= rescale_a;
        sum_b *= rescale_b;
#pragma unroll
        for (int dn = 0; dn < D / 8; ++dn) {
            acc[dn][0] *= rescale_a;
            acc[dn][1] *= rescale_a;
            acc[dn][2] *= rescale_b;
            acc[dn][3] *= rescale_b;
        }
#pragma unroll
        for (int j = 0; j < KEYS / 8; ++j) {
            s[j][0] = exp2f(s[j][0] - ref_a);
            s[j][1] = exp2f(s[j][1] - ref_a);
            s[j][2] = exp2f(s[j][2] - ref_b);
            s[j][3] = exp2f(s[j][3] - ref_b);
            sum_a += s[j][0] + s[j][1];
            sum_b += s[j][2] + s[j][3];
        }

        // 6. acc += P V. The C fragments of two score n-tiles are the A fragment of P for 16
        //    keys; ldmatrix.trans turns row-major V into B fragments for two 8-wide n-tiles.
#pragma unroll
        for (int kk = 0; kk < KEYS / 16; ++kk) {
            const unsigned int p_frag[4] = {
                pack_bf16x2(s[2 * kk][0], s[2 * kk][1]), pack_bf16x2(s[2 * kk][2], s[2 * kk][3]),
                pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int dn = 0; dn < D / 8; dn += 2) {
                unsigned int v_frag[4];
                ldmatrix_x4_trans(v_frag, &v_tile[kk * 16 + (lane & 15)][dn * 8 + (lane >> 4) * 8]);
                mma_bf16(acc[dn], p_frag, v_frag[0], v_frag[1]);
                mma_bf16(acc[dn + 1], p_frag, v_frag[2], v_frag[3]);
            }
        }
    }
    if (!warp_active) return;

    // 7. Full row sums across the 4 lanes of a row, then the normalized output (bf16 pairs).
#pragma unroll
    for (int offset = 1; offset < 4; offset <<= 1) {
        sum_a += __shfl_xor_sync(0xffffffffu, sum_a, offset);
        sum_b += __shfl_xor_sync(0xffffffffu, sum_b, offset);
    }
    const float inv_a = 1.f / sum_a, inv_b = 1.f / sum_b;
    bf16* out_a = out + (size_t)(q_start + row_a) * out_stride + (size_t)head * head_dim;
    bf16* out_b = out + (size_t)(q_start + row_b) * out_stride + (size_t)head * head_dim;
#pragma unroll
    for (int dn = 0; dn < D / 8; ++dn) {
        const int d = dn * 8 + 2 * quad;
        if (d >= head_dim) continue;
        if (row_a < q_len)
            *reinterpret_cast<unsigned int*>(out_a + d) = pack_bf16x2(acc[dn][0] * inv_a, acc[dn][1] * inv_a);
        if (row_b < q_len)
            *reinterpret_cast<unsigned int*>(out_b + d) = pack_bf16x2(acc[dn][2] * inv_b, acc[dn][3] * inv_b);
    }
}

// Entry points, one per padded head width (the launcher picks the smallest D >= head_dim), each
// with its `_rope` twin that normalizes and rotates the query rows itself. KEYS shrinks for
// D = 256 to keep both tiles within the 48 KiB of static shared memory. Every entry point takes
// the same arguments; positions, q_norm, rope, table_rows and eps are read by the twins only.
#define ATTENTION_ENTRY(name, D, KEYS, NORM_ROPE)                                                           \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                   \
    name(const bf16* q, const bf16* kv, bf16* out, const unsigned int* cu_q, const unsigned int* cu_k,      \
         const unsigned int* tiles, int q_stride, int kv_stride, int k_offset, int v_offset, int out_stride, \
         int head_dim, int group, float scale, const unsigned int* positions, const float* q_norm,          \
         const float* rope, int table_rows, float eps) {                                                   \
        attention_tile<D, KEYS, NORM_ROPE>(q, kv, out, cu_q, cu_k, tiles, q_stride, kv_stride, k_offset,    \
                                           v_offset, out_stride, head_dim, group, scale, positions, q_norm, \
                                           rope, table_rows, eps);                                         \
    }

ATTENTION_ENTRY(attention_d16, 16, 64, false)
ATTENTION_ENTRY(attention_d32, 32, 64, false)
ATTENTION_ENTRY(attention_d64, 64, 64, false)
ATTENTION_ENTRY(attention_d128, 128, 64, false)
ATTENTION_ENTRY(attention_d256, 256, 32, false)
ATTENTION_ENTRY(attention_rope_d16, 16, 64, true)
ATTENTION_ENTRY(attention_rope_d32, 32, 64, true)
ATTENTION_ENTRY(attention_rope_d64, 64, 64, true)
ATTENTION_ENTRY(attention_rope_d128, 128, 64, true)
ATTENTION_ENTRY(attention_rope_d256, 256, 32, true)
