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

/// Buffers a thread gave back, kept for its next ones: fresh buffers come zeroed from the
/// system, and page faults and zeroing cost a few percent of a bf16 pass. Held in a
/// `thread_local!` by each kind of buffer (the AMX accumulators, the packed activations);
/// what a kept buffer holds is whatever its last user left.
pub struct Kept<T: Copy> {
    buffers: Vec<Aligned<T>>,
}

impl<T: Copy + Default> Kept<T> {
    /// None kept yet.
    pub const fn new() -> Self {
        Self {
            buffers: Vec::new(),
        }
    }

    /// The smallest kept buffer of at least `len` values (leaving larger ones for larger
    /// needs), else a fresh zeroed one of `fresh_len.max(len)` values.
    pub fn take(&mut self, len: usize, fresh_len: usize) -> Aligned<T> {
        let smallest = (self.buffers.iter().enumerate())
            .filter(|(_, buffer)| buffer.len() >= len)
            .min_by_key(|(_, buffer)| buffer.len())
            .map(|(index, _)| index);
        match smallest {
            Some(index) => self.buffers.swap_remove(index),
            None => Aligned::zeroed(fresh_len.max(len)),
        }
    }

    /// Keeps `buffer` unless it is over `max_len` values, then only the `keep` largest.
    pub fn give_back(&mut self, buffer: Aligned<T>, keep: usize, max_len: usize) {
        if buffer.len() > max_len {
            return;
        }
        self.buffers.push(buffer);
        // The largest ones serve the most needs.
        self.buffers
            .sort_by_key(|buffer| std::cmp::Reverse(buffer.len()));
        self.buffers.truncate(keep);
    }
}

impl<T: Copy + Default> Default for Kept<T> {
    fn default() -> Self {
        Self::new()
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
    fn kept_buffers_are_the_largest_and_the_smallest_that_fits_is_lent() {
        let mut kept = Kept::<f32>::new();
        for len in [8, 64, 32, 4096] {
            kept.give_back(Aligned::zeroed(len), 2, 1024);
        }
        // 4096 is over the limit; of 8, 64 and 32 the two largest stay.
        let lent = kept.take(10, 0);
        assert_eq!(lent.len(), 32, "the smallest kept one that fits");
        assert_eq!(kept.take(10, 0).len(), 64);
        let fresh = kept.take(10, 100);
        assert_eq!(fresh.len(), 100, "none left: a fresh one of the asked size");
        assert!(fresh.iter().all(|&v| v == 0.0));
    }

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
