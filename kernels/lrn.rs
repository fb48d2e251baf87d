//! Launchers of `lrn.cu`, beside it: local response normalization's forward
//! and backward pass over typed device buffers and the layer's shape, in
//! any storage.

use super::{ByStorage, Loaded, Stored, run};
use crate::device::cuda::{grid, need, u32_of};
use crate::device::layout::Layout;
use crate::error::Result;
use crate::net::plan::LrnShape;
use cudarc::driver::{CudaSlice, CudaStream, PushKernelArg};

/// The kernels of `lrn.cu`.
pub struct Lrn {
    forward: ByStorage,
    backward: ByStorage,
}

impl Lrn {
    pub(super) fn load(file: &Loaded) -> Result<Self> {
        Ok(Lrn {
            forward: file.by_storage("lrn_forward")?,
            backward: file.by_storage("lrn_backward")?,
        })
    }

    /// `y = x / scale^β` (in `layout`) with `scale = k + α Σ x²` kept (paper §3.3); `y`
    /// from the unrounded scale, both rounded as stored.
    #[allow(clippy::too_many_arguments)]
    pub fn forward<S: Stored>(
        &self,
        stream: &CudaStream,
        x: &CudaSlice<S>,
        y: &mut CudaSlice<S>,
        scale: &mut CudaSlice<S>,
        s: &LrnShape,
        batch: usize,
        layout: Layout,
    ) -> Result<()> {
        // Each group's channels as an image of their own: no window leaves its group.
        let batch = batch * s.groups;
        let n = batch * s.c * s.plane;
        need(x, n, "lrn input")?;
        need(y, n, "lrn output")?;
        need(scale, n, "lrn scale")?;
        let d = [batch, s.c, s.plane, channel_stride(s, layout), s.size].map(u32_of);
        let mut b = stream.launch_builder(self.forward.of::<S>());
        b.arg(x).arg(y).arg(scale);
        for dim in &d {
            b.arg(dim);
        }
        b.arg(&s.alpha).arg(&s.beta).arg(&s.k);
        run(b, grid(n))
    }

    /// The input gradient of LRN (in `layout`).
    #[allow(clippy::too_many_arguments)]
    pub fn backward<S: Stored>(
        &self,
        stream: &CudaStream,
        x: &CudaSlice<S>,
        y: &CudaSlice<S>,
        scale: &CudaSlice<S>,
        dy: &CudaSlice<S>,
        dx: &mut CudaSlice<S>,
        s: &LrnShape,
        batch: usize,
        layout: Layout,
    ) -> Result<()> {
        // Each group's channels as an image of their own: no window leaves its group.
        let batch = batch * s.groups;
        let n = batch * s.c * s.plane;
        for (buf, what) in [
            (x, "lrn input"),
            (y, "lrn output"),
            (scale, "lrn scale"),
            (dy, "lrn output gradient"),
            (&*dx, "lrn input gradient"),
        ] {
            need(buf, n, what)?;
        }
        let d = [batch, s.c, s.plane, channel_stride(s, layout), s.size].map(u32_of);
        let mut b = stream.launch_builder(self.backward.of::<S>());
        b.arg(x).arg(y).arg(scale).arg(dy).arg(dx);
        for dim in &d {
            b.arg(dim);
        }
        b.arg(&s.alpha).arg(&s.beta);
        run(b, grid(n))
    }
}

/// How far apart one element's neighbouring channels are: a plane in
/// NCHW, adjacent in NHWC (where each group's channels are consecutive in
/// every pixel, so a group's channel index is the pixel's modulo `s.c`).
pub fn channel_stride(s: &LrnShape, layout: Layout) -> usize {
    match layout {
        Layout::Nchw => s.plane,
        Layout::Nhwc => 1,
    }
}
