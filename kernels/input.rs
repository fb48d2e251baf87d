//! Launchers of `input.cu`, beside it: the net's input from u8 crops and
//! per-image offsets, and f32 images stored channels last, over typed
//! device buffers, in any storage.

use super::{ByStorage, Loaded, Stored, run};
use crate::device::cuda::{grid, need, u32_of};
use crate::device::layout::Layout;
use crate::error::Result;
use cudarc::driver::{CudaSlice, CudaStream, CudaView, PushKernelArg};

/// The kernels of `input.cu`.
pub struct Input {
    from_u8: ByStorage,
    to_channels_last: ByStorage,
}

impl Input {
    pub(super) fn load(file: &Loaded) -> Result<Self> {
        Ok(Input {
            from_u8: file.by_storage("input_from_u8")?,
            to_channels_last: file.by_storage("images_to_channels_last")?,
        })
    }

    /// `y[n][c][p] = pixels[n][p][c] · (1/255) + offsets[n][c]` over `n`
    /// elements, `plane` pixels an image (`y[n][p][c]` in NHWC), rounded
    /// once as `y` stores.
    #[allow(clippy::too_many_arguments)]
    pub fn from_u8<S: Stored>(
        &self,
        stream: &CudaStream,
        pixels: &CudaSlice<u8>,
        offsets: &CudaSlice<f32>,
        y: &mut CudaSlice<S>,
        n: usize,
        plane: usize,
        layout: Layout,
    ) -> Result<()> {
        need(pixels, n, "u8 input")?;
        need(offsets, n / plane.max(1), "input offsets")?;
        need(y, n, "net input")?;
        let (count, plane32) = (u32_of(n), u32_of(plane));
        let channels_last = u32::from(layout == Layout::Nhwc);
        let mut b = stream.launch_builder(self.from_u8.of::<S>());
        b.arg(pixels)
            .arg(offsets)
            .arg(y)
            .arg(&count)
            .arg(&plane32)
            .arg(&channels_last);
        run(b, grid(n))
    }

    /// `y[n][p][c] = images[n][c][p]` over the `images.len()` elements,
    /// `channels × plane` an image, rounded as `y` stores.
    pub fn to_channels_last<S: Stored>(
        &self,
        stream: &CudaStream,
        images: &CudaView<'_, f32>,
        y: &mut CudaSlice<S>,
        channels: usize,
        plane: usize,
    ) -> Result<()> {
        let n = images.len();
        need(y, n, "net input")?;
        let dims = [n, channels, plane].map(u32_of);
        let mut b = stream.launch_builder(self.to_channels_last.of::<S>());
        b.arg(images).arg(y);
        for dim in &dims {
            b.arg(dim);
        }
        run(b, grid(n))
    }
}
