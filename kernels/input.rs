//! Launcher of `input.cu`, beside it: the net's input from u8 crops and
//! per-image offsets, over typed device buffers, in any storage.

use super::{ByStorage, Loaded, Stored, run};
use crate::device::cuda::{grid, need, u32_of};
use crate::error::Result;
use cudarc::driver::{CudaSlice, CudaStream, PushKernelArg};

/// The kernel of `input.cu`.
pub struct Input {
    from_u8: ByStorage,
}

impl Input {
    pub(super) fn load(file: &Loaded) -> Result<Self> {
        Ok(Input {
            from_u8: file.by_storage("input_from_u8")?,
        })
    }

    /// `y[n][c][p] = pixels[n][p][c] · (1/255) + offsets[n][c]` over `n`
    /// elements, `plane` pixels an image, rounded once as `y` stores.
    pub fn from_u8<S: Stored>(
        &self,
        stream: &CudaStream,
        pixels: &CudaSlice<u8>,
        offsets: &CudaSlice<f32>,
        y: &mut CudaSlice<S>,
        n: usize,
        plane: usize,
    ) -> Result<()> {
        need(pixels, n, "u8 input")?;
        need(offsets, n / plane.max(1), "input offsets")?;
        need(y, n, "net input")?;
        let (count, plane32) = (u32_of(n), u32_of(plane));
        let mut b = stream.launch_builder(self.from_u8.of::<S>());
        b.arg(pixels).arg(offsets).arg(y).arg(&count).arg(&plane32);
        run(b, grid(n))
    }
}
