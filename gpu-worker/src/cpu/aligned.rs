//! Buffers of 4-byte values (`u32` words of bf16 pairs, `f32`) that start on a 64-byte cache
//! line. The allocator only promises 16 bytes; an AMX tile row that straddles two lines makes
//! the tile kernel three times slower (`examples/amx_block.rs`, one core, operands in L1:
//! 2,430-2,590 GFLOP/s from aligned buffers, 830-860 from the same buffers 16 bytes on).

use std::fmt;
use std::ops::{Deref, DerefMut};

/// One cache line of 16 values.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line<T: Copy>([T; 16]);

/// `len` values starting on a cache line.
pub struct Aligned<T: Copy> {
    lines: Vec<Line<T>>,
    len: usize,
}

impl<T: Copy + Default> Aligned<T> {
    /// `len` values, each `T::default()` (zero).
    pub fn zeroed(len: usize) -> Self {
        const { assert!(size_of::<T>() == 4 && size_of::<Line<T>>() == 64) };
        Self {
            lines: vec![Line([T::default(); 16]); len.div_ceil(16)],
            len,
        }
    }
}

impl<T: Copy> Deref for Aligned<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: a `Line<T>` is 16 `T` with no padding (64 bytes, asserted in `zeroed`), so
        // the lines are `16 * lines.len() >= len` initialized, aligned `T` in a row.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<T>(), self.len) }
    }
}

impl<T: Copy> DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<T>(), self.len) }
    }
}

impl<T: Copy> fmt::Debug for Aligned<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Aligned({} values)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_cache_line_and_holds_what_is_written() {
        for len in [0, 1, 15, 16, 17, 1000] {
            let mut words = Aligned::<u32>::zeroed(len);
            assert_eq!(words.len(), len);
            assert_eq!(words.as_ptr() as usize % 64, 0);
            assert!(words.iter().all(|&w| w == 0));
            for (i, w) in words.iter_mut().enumerate() {
                *w = i as u32;
            }
            assert!(words.iter().enumerate().all(|(i, &w)| w == i as u32));
        }
    }
}
