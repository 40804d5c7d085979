//! Gathers the last row of every sequence, the pooled tokens (CPU twin of
//! `kernels/last_rows.cu`).

/// Row `rows[s]` of `x` (rows `cols` wide) as row `s` of `out`, `(rows.len(), cols)`; every
/// index is inside `x` (checked by the caller).
pub fn last_rows(x: &[f32], cols: usize, rows: &[u32], out: &mut [f32]) {
    for (out_row, &row) in out.chunks_exact_mut(cols).zip(rows) {
        out_row.copy_from_slice(&x[row as usize * cols..][..cols]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathers_the_listed_rows_in_order() {
        let x = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
        let mut out = [f32::NAN; 4];
        last_rows(&x, 2, &[2, 0], &mut out);
        assert_eq!(out, [4.0, 5.0, 0.0, 1.0]);
    }
}
