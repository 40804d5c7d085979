//! One attention task with bf16 products, for the bf16 CPU backend: `Q K^T` and `P V` run on
//! the register tiles of [`super::linear_bf16`] (`vdpbf16ps` where the CPU has it) with f32
//! sums; softmax stays in f32. That kernel multiplies activation rows by panels of a weight
//! matrix, so K is packed as a `(keys, head_dim)` weight matrix and V, transposed, as a
//! `(head_dim, keys)` one; Q and the probabilities P are packed as activation rows.
//!
//! Causal masking skips work as well as values: a tile of query rows multiplies only the key
//! panels and key pairs its last row can see.

use super::aligned::Aligned;
use super::amx::STEP_PAIRS;
use super::attention::{Operands, softmax};
use super::linear_bf16::{Kernel, PANEL, TileRows, pack_activations, tile_into};
use super::pack_bf16::{HALF, panel_word, panel_words};
use crate::ops::AttentionShape;

/// The keys and values of one key/value head of one sequence, packed as weight panels: K as
/// panels of 32 keys over the head's pairs, V transposed as panels of 32 head columns over
/// the keys' pairs, both padded with zeros to whole tile steps (16 pairs), so the AMX tiles
/// read them as they are. Packed once for every task that reads them: each query block, and
/// every query head of the group.
pub struct PackedKv {
    /// K panels, `panel_words(d_stride)` words each.
    pub(super) k: Aligned<u32>,
    /// V panels, `panel_words(key_stride)` words each.
    pub(super) v: Aligned<u32>,
    /// Keys packed.
    pub(super) keys: usize,
    /// Pairs of a K panel: the head's, padded to whole steps.
    pub(super) d_stride: usize,
    /// Pairs of a V panel: the keys', padded to whole steps.
    pub(super) key_stride: usize,
}

/// Packs key/value head `kv_head` of the sequence whose `keys` rows start at row `k_start`
/// of the fused q|k|v tensor `kv`, rounding on `kernel`'s instructions.
pub fn pack_kv(
    kv: &[f32],
    shape: AttentionShape,
    (k_start, keys): (usize, usize),
    kv_head: usize,
    kernel: Kernel,
) -> PackedKv {
    let (width, d) = (shape.qkv_width(), shape.head_dim);
    let k_at = k_start * width + (shape.num_heads + kv_head) * d;
    let v_at = k_start * width + (shape.num_heads + shape.num_kv_heads + kv_head) * d;
    let d_stride = d.div_ceil(2).next_multiple_of(STEP_PAIRS);
    let key_stride = keys.div_ceil(2).next_multiple_of(STEP_PAIRS);
    PackedKv {
        k: pack_keys(kv, k_at, width, d, keys, d_stride, kernel),
        v: pack_values(kv, v_at, width, d, keys, key_stride, kernel),
        keys,
        d_stride,
        key_stride,
    }
}

/// The task's output, `(rows, head_dim)`: attention of its query rows in `q`, as
/// [`Operands`] places them, over the first `operands.keys` keys and values of `packed`.
pub fn attend_bf16(q: &[f32], operands: &Operands, packed: &PackedKv, kernel: Kernel) -> Vec<f32> {
    let &Operands {
        width,
        head_dim: d,
        rows,
        visible0,
        keys,
        q_at,
        ..
    } = operands;
    let d_pairs = d.div_ceil(2);
    let key_pairs = keys.div_ceil(2);
    let key_panels = keys.div_ceil(PANEL);
    let d_panels = d.div_ceil(PANEL);
    assert!(
        keys <= packed.keys && d_pairs.next_multiple_of(STEP_PAIRS) == packed.d_stride,
        "attention operands beyond the packed keys; this is a bug"
    );

    // Q rows, paired along the head dimension.
    let mut q_words = vec![0u32; rows * d_pairs];
    for (r, out) in q_words.chunks_exact_mut(d_pairs).enumerate() {
        pack_activations(kernel, &q[q_at + r * width..][..d], out);
    }
    let (k_panel_words, v_panel_words) =
        (panel_words(packed.d_stride), panel_words(packed.key_stride));
    let k_panels = &packed.k;
    let v_panels = &packed.v;

    // 1. Scores (rows, key_panels * PANEL), unscaled; a tile stops at the panel holding the
    //    last key its last row sees.
    let s_stride = key_panels * PANEL;
    let mut scores = vec![0.0f32; rows * s_stride];
    for (r0, a) in TileRows::tiles(&q_words, d_pairs, rows) {
        let seen = visible0 + r0 + a.count - 1;
        for p in 0..seen.div_ceil(PANEL) {
            let panel = &k_panels[p * k_panel_words..][..k_panel_words];
            let out = &mut scores[r0 * s_stride + p * PANEL..];
            tile_into(kernel, a, panel, d_pairs, out, s_stride);
        }
    }

    // 2. Softmax of each row's visible keys in f32, then P paired along keys (zero past
    //    them, so masked keys add nothing below).
    let mut p_words = vec![0u32; rows * key_pairs];
    let p_rows = p_words.chunks_exact_mut(key_pairs);
    for (r, (row, out)) in scores.chunks_exact_mut(s_stride).zip(p_rows).enumerate() {
        let seen = &mut row[..visible0 + r];
        softmax(seen, operands.scale);
        pack_activations(kernel, seen, out);
    }

    // 3. Output (rows, d_panels * PANEL): a tile sums over the key pairs its last row sees.
    let o_stride = d_panels * PANEL;
    let mut out = vec![0.0f32; rows * o_stride];
    for (r0, a) in TileRows::tiles(&p_words, key_pairs, rows) {
        let seen_pairs = (visible0 + r0 + a.count - 1).div_ceil(2);
        for p in 0..d_panels {
            let panel = &v_panels[p * v_panel_words..][..v_panel_words];
            let dst = &mut out[r0 * o_stride + p * PANEL..];
            tile_into(kernel, a, panel, seen_pairs, dst, o_stride);
        }
    }
    if o_stride != d {
        // A head dimension that is not whole panels: drop the padding columns.
        out = out
            .chunks_exact(o_stride)
            .flat_map(|row| &row[..d])
            .copied()
            .collect();
    }
    out
}

/// The `keys` k rows (`d` values each, `width` apart from `kv[k_at]`) as weight panels of
/// `d_stride >= ceil(d / 2)` pairs (`panel_words(d_stride)` words each): panel `p` holds
/// keys `p * PANEL ..`, word `panel_word(qd, key % PANEL)` pairs that key's values `2 qd`
/// and `2 qd + 1`. Keys past `keys` in the last panel, and pairs past the head, are zero.
fn pack_keys(
    kv: &[f32],
    k_at: usize,
    width: usize,
    d: usize,
    keys: usize,
    d_stride: usize,
    kernel: Kernel,
) -> Aligned<u32> {
    let d_pairs = d.div_ceil(2);
    assert!(
        d_stride >= d_pairs,
        "pack_keys stride checked by the caller; this is a bug"
    );
    let mut panels = Aligned::zeroed(keys.div_ceil(PANEL) * panel_words(d_stride));
    let mut words = vec![0u32; d_pairs];
    for key in 0..keys {
        pack_activations(kernel, &kv[k_at + key * width..][..d], &mut words);
        let base = (key / PANEL) * panel_words(d_stride);
        for (qd, &word) in words.iter().enumerate() {
            panels[base + panel_word(qd, key % PANEL)] = word;
        }
    }
    panels
}

/// The `keys` v rows, transposed, as weight panels of `key_stride >= ceil(keys / 2)` pairs
/// (`panel_words(key_stride)` words each): panel `p` holds columns `p * PANEL ..` of the
/// head, word `panel_word(qk, col % PANEL)` pairs that column's values at keys `2 qk` and
/// `2 qk + 1` (zero past `keys`, and in columns past `d`).
fn pack_values(
    kv: &[f32],
    v_at: usize,
    width: usize,
    d: usize,
    keys: usize,
    key_stride: usize,
    kernel: Kernel,
) -> Aligned<u32> {
    let key_pairs = keys.div_ceil(2);
    assert!(
        key_stride >= key_pairs,
        "pack_values stride checked by the caller; this is a bug"
    );
    let mut panels = Aligned::zeroed(d.div_ceil(PANEL) * panel_words(key_stride));
    let (mut even, mut odd) = (vec![0u32; d.div_ceil(2)], vec![0u32; d.div_ceil(2)]);
    for qk in 0..key_pairs {
        pack_activations(kernel, &kv[v_at + 2 * qk * width..][..d], &mut even);
        if 2 * qk + 1 < keys {
            pack_activations(kernel, &kv[v_at + (2 * qk + 1) * width..][..d], &mut odd);
        } else {
            odd.fill(0);
        }
        // Columns `c0 .. c0 + HALF` of key pair qk are contiguous words of one panel; word
        // `w` of a packed row holds columns 2w (low half) and 2w + 1 (high half).
        for c0 in (0..d).step_by(HALF) {
            let at = (c0 / PANEL) * panel_words(key_stride) + panel_word(qk, c0 % PANEL);
            let dst = &mut panels[at..at + HALF.min(d - c0)];
            let (e, o) = (&even[c0 / 2..], &odd[c0 / 2..]);
            for (j, word) in dst.iter_mut().enumerate() {
                let (e, o) = (e[j / 2], o[j / 2]);
                *word = if j % 2 == 0 {
                    (e & 0xffff) | (o << 16)
                } else {
                    (e >> 16) | (o & 0xffff_0000)
                };
            }
        }
    }
    panels
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use crate::cpu::attention::{Products, attention};
    use crate::cpu::linear_bf16::Kernel;
    use crate::ops::AttentionShape;

    /// bf16 attention against the f32 reference on fresh random inputs: bf16 keeps about
    /// three significant digits, so outputs (weighted means of values in [-1, 1]) agree to
    /// within 1e-2 (4e-3 seen); a key left out or a wrong panel, pair or mask is off by
    /// 0.1 or more (tried).
    fn check(shape: AttentionShape, seqs: &[(usize, usize)], kernel: Kernel, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut cu_q = vec![0u32];
        let mut cu_k = vec![0u32];
        for &(q_len, k_len) in seqs {
            cu_q.push(cu_q.last().unwrap() + q_len as u32);
            cu_k.push(cu_k.last().unwrap() + k_len as u32);
        }
        let width = shape.qkv_width();
        let mut random = |rows: u32| -> Vec<f32> {
            (0..rows as usize * width)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect()
        };
        let kv = random(*cu_k.last().unwrap());
        // Queries: the last rows of each sequence, each q head set to twice the key of its
        // own row, so that a query attends mostly to its last visible key: a key wrongly
        // left out shows.
        let (d, group) = (shape.head_dim, shape.num_heads / shape.num_kv_heads);
        let mut q = Vec::new();
        for (s, &(q_len, _)) in seqs.iter().enumerate() {
            let end = cu_k[s + 1] as usize;
            for row in kv[(end - q_len) * width..end * width].chunks_exact(width) {
                let mut q_row = row.to_vec();
                for h in 0..shape.num_heads {
                    let k_col = (shape.num_heads + h / group) * d;
                    for i in 0..d {
                        q_row[h * d + i] = 2.0 * row[k_col + i];
                    }
                }
                q.extend(q_row);
            }
        }
        let want = attention(&q, &kv, &cu_q, &cu_k, shape, Products::F32);
        let got = attention(&q, &kv, &cu_q, &cu_k, shape, Products::Bf16(kernel));
        assert_eq!(got.len(), want.len());
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst < 1e-2,
            "{kernel:?} {seqs:?}: worst difference {worst}"
        );
    }

    fn shape(num_heads: usize, num_kv_heads: usize, head_dim: usize) -> AttentionShape {
        AttentionShape {
            num_heads,
            num_kv_heads,
            head_dim,
        }
    }

    #[test]
    fn matches_f32_attention_on_every_kernel() {
        let kernels = Kernel::all_supported();
        if !Kernel::Avx512Bf16.supported() {
            println!("skipped the avx512_bf16 kernel: this CPU has none");
        }
        if !Kernel::Amx.supported() {
            println!("skipped the AMX kernel: this CPU has none");
        }
        for (i, kernel) in kernels.into_iter().enumerate() {
            let seed = 10 * i as u64;
            // The 0.6B head shape: several row tiles and key panels, odd lengths.
            check(
                shape(4, 2, 128),
                &[(77, 77), (1, 1), (200, 200)],
                kernel,
                seed,
            );
            // The tiny fixture's heads (narrower than a panel), an odd head dimension.
            check(shape(4, 2, 16), &[(13, 13), (33, 33)], kernel, seed + 1);
            check(shape(2, 1, 7), &[(5, 5)], kernel, seed + 2);
            // Only the last query of each sequence (the model's final layer).
            check(shape(4, 2, 64), &[(1, 45), (1, 130)], kernel, seed + 3);
        }
    }
}
