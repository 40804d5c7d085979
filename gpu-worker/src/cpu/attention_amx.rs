//! One attention task with bf16 products on AMX tiles: [`super::attention_bf16`]'s
//! algorithm (K packed as a weight matrix, V transposed as one, f32 softmax between the two
//! products, causal masking that skips work) on [`amx::Tiles`] blocks of 32 query rows by
//! 32 keys (scores) or 32 head columns (output), reading K and V as
//! [`super::attention_bf16::pack_kv`] packed them once per sequence and key/value head.

use super::aligned::Aligned;
use super::amx::{self, Blocked, STEP_PAIRS, Start, TILE_ROWS, Tiles};
use super::attention::{Operands, softmax};
use super::attention_bf16::PackedKv;
use super::linear_bf16::PANEL;

/// Query rows per block: two A tiles.
const BLOCK_ROWS: usize = 2 * TILE_ROWS;

/// The task's output, `(rows, head_dim)`: attention of its query rows in `q`, as
/// [`Operands`] places them, over the first `operands.keys` keys and values of `packed`.
pub fn attend_amx(q: &[f32], operands: &Operands, packed: &PackedKv) -> Vec<f32> {
    let &Operands {
        width,
        head_dim: d,
        rows,
        visible0,
        keys,
        q_at,
        ..
    } = operands;
    assert!(
        keys <= packed.keys && d.div_ceil(2).next_multiple_of(STEP_PAIRS) == packed.d_stride,
        "attention operands beyond the packed keys; this is a bug"
    );
    let tiles = Tiles::configure().expect("Kernel::Amx chosen without AMX; this is a bug");
    // Both reductions run over whole tile steps: the head's pairs, then the keys' pairs.
    let d_steps = packed.d_stride / STEP_PAIRS;
    let key_steps = keys.div_ceil(2).div_ceil(STEP_PAIRS);
    let key_panels = keys.div_ceil(PANEL);
    let d_panels = d.div_ceil(PANEL);
    // Output rows come in whole tiles: the buffers below hold every row a block writes.
    let padded_rows = rows.div_ceil(TILE_ROWS) * TILE_ROWS;

    let q_tiles = amx::pack_blocked_rows(rows, d_steps, |r| &q[q_at + r * width..][..d]);
    let (k_panels, v_panels) = (&packed.k, &packed.v);
    let k_panel_words = d_steps * STEP_PAIRS * PANEL;
    let v_panel_words = packed.key_stride * PANEL;

    // 1. Scores, unscaled; a block stops at the panel holding the last key its last row
    //    sees.
    let s_stride = key_panels * PANEL;
    let mut scores = Aligned::<f32>::zeroed(padded_rows * s_stride);
    let q_rows = Blocked {
        words: &q_tiles,
        steps: d_steps,
    };
    for r0 in (0..rows).step_by(BLOCK_ROWS) {
        let count = (rows - r0).min(BLOCK_ROWS);
        let seen = visible0 + r0 + count - 1;
        let (group, a_tiles) = (r0 / TILE_ROWS, count.div_ceil(TILE_ROWS));
        for p in 0..seen.div_ceil(PANEL) {
            let panel = &k_panels[p * k_panel_words..][..k_panel_words];
            let out = &mut scores[r0 * s_stride + p * PANEL..];
            let steps = 0..d_steps;
            tiles.products(
                q_rows,
                group,
                a_tiles,
                panel,
                steps,
                Start::Zero,
                out,
                s_stride,
            );
        }
    }

    // 2. Softmax of each row's visible keys in f32, then P in the blocked layout (zero past
    //    them, so masked keys add nothing below).
    for (r, row) in scores.chunks_exact_mut(s_stride).take(rows).enumerate() {
        softmax(&mut row[..visible0 + r], operands.scale);
    }
    let p_tiles =
        amx::pack_blocked_rows(rows, key_steps, |r| &scores[r * s_stride..][..visible0 + r]);

    // 3. Output: a block sums over the key steps its last row sees.
    let o_stride = d_panels * PANEL;
    let mut out = Aligned::<f32>::zeroed(padded_rows * o_stride);
    let p_rows = Blocked {
        words: &p_tiles,
        steps: key_steps,
    };
    for r0 in (0..rows).step_by(BLOCK_ROWS) {
        let count = (rows - r0).min(BLOCK_ROWS);
        let seen_steps = (visible0 + r0 + count - 1).div_ceil(2).div_ceil(STEP_PAIRS);
        let (group, a_tiles) = (r0 / TILE_ROWS, count.div_ceil(TILE_ROWS));
        for p in 0..d_panels {
            let panel = &v_panels[p * v_panel_words..][..v_panel_words];
            let dst = &mut out[r0 * o_stride + p * PANEL..];
            let steps = 0..seen_steps;
            tiles.products(
                p_rows,
                group,
                a_tiles,
                panel,
                steps,
                Start::Zero,
                dst,
                o_stride,
            );
        }
    }
    // The task's rows, without the padding rows and columns of whole tiles.
    let mut values = Vec::with_capacity(rows * d);
    for row in out.chunks_exact(o_stride).take(rows) {
        values.extend_from_slice(&row[..d]);
    }
    values
}
