//! Residual add, in place (CPU twin of `kernels/add.cu`).

/// `residual[i] += delta[i]` for every element (both the same length, checked by the caller).
pub fn add(residual: &mut [f32], delta: &[f32]) {
    for (r, d) in residual.iter_mut().zip(delta) {
        *r += d;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn adds_element_by_element() {
        let mut residual = [1.0, -2.0, 0.5];
        super::add(&mut residual, &[0.25, 2.0, -1.0]);
        assert_eq!(residual, [1.25, 0.0, -0.5]);
    }
}
