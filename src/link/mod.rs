//! How the towers meet (paper §3.2: "the GPUs communicate only in certain
//! layers"). Going forward an exchange is an all-gather: each tower gets both
//! towers' outputs, laid out `[tower][...]`. Going backward it is a summing
//! reduce-scatter: each tower gets the sum over towers of the gradient of its
//! own slice.

pub mod emulation;
pub mod host;
pub mod rendezvous;

use crate::error::Result;
use std::ops::Range;

/// One tower's end of the link between the towers.
pub trait Link<B> {
    /// This tower's rank.
    fn rank(&self) -> usize;
    /// `gathered[slice_of(r, len)] = local of tower r`, for every tower r.
    fn all_gather(&mut self, local: &B, gathered: &mut B) -> Result<()>;
    /// `local = Σ_r full of tower r [slice_of(rank, len)]`.
    fn reduce_scatter(&mut self, full: &B, local: &mut B) -> Result<()>;
}

/// Where tower `rank`'s part of `local_len` elements lies in a gathered buffer.
pub fn slice_of(rank: usize, local_len: usize) -> Range<usize> {
    rank * local_len..(rank + 1) * local_len
}
