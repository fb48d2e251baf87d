//! Launcher of `input.cu`, beside it: the net's input from u8 crops and
//! per-image offsets, over typed device buffers.

use super::{Loaded, run};
use crate::device::cuda::{grid, need, u32_of};
use crate::error::Result;
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, PushKernelArg};

/// The kernel of `input.cu`.
pub struct Input {
    from_u8: CudaFunction,
}

impl Input {
    pub(super) fn load(file: &Loaded) -> Result<Self> {
        Ok(Input {
            from_u8: file.function("input_from_u8_f32")?,
        })
    }

    /// `y[n][c][p] = pixels[n][p][c] · (1/255) + offsets[n][c]` over `n`
    /// elements, `plane` pixels an image.
    pub fn from_u8(
        &self,
        stream: &CudaStream,
        pixels: &CudaSlice<u8>,
        offsets: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        n: usize,
        plane: usize,
    ) -> Result<()> {
        need(pixels, n, "u8 input")?;
        need(offsets, n / plane.max(1), "input offsets")?;
        need(y, n, "net input")?;
        let (count, plane32) = (u32_of(n), u32_of(plane));
        let mut b = stream.launch_builder(&self.from_u8);
        b.arg(pixels).arg(offsets).arg(y).arg(&count).arg(&plane32);
        run(b, grid(n))
    }
}
