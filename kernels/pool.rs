//! Launchers of `pool.cu`, beside it: max-pooling's forward and backward
//! pass over typed device buffers and the layer's shape, in any storage.

use super::{ByStorage, Loaded, Stored, run};
use crate::device::cuda::{grid, need, u32_of};
use crate::device::layout::Layout;
use crate::error::Result;
use crate::net::plan::PoolShape;
use cudarc::driver::{CudaSlice, CudaStream, PushKernelArg};

/// The kernels of `pool.cu`.
pub struct Pool {
    forward: ByStorage,
    backward: ByStorage,
}

impl Pool {
    pub(super) fn load(file: &Loaded) -> Result<Self> {
        Ok(Pool {
            forward: file.by_storage("maxpool_forward")?,
            backward: file.by_storage("maxpool_backward")?,
        })
    }

    /// Max-pool `x` into `y` (paper §3.4), both in `layout`.
    pub fn forward<S: Stored>(
        &self,
        stream: &CudaStream,
        x: &CudaSlice<S>,
        y: &mut CudaSlice<S>,
        s: &PoolShape,
        batch: usize,
        layout: Layout,
    ) -> Result<()> {
        let (planes, interleaved) = planes(s, batch, layout);
        need(x, batch * s.c * s.in_h * s.in_w, "pool input")?;
        need(y, batch * s.c * s.out_h * s.out_w, "pool output")?;
        let p = planes as u64;
        let d = dims(s, interleaved);
        let mut b = stream.launch_builder(self.forward.of::<S>());
        b.arg(x).arg(y).arg(&p);
        for dim in &d {
            b.arg(dim);
        }
        run(b, grid(batch * s.c * s.out_h * s.out_w))
    }

    /// Routes each output's gradient to the first input attaining its max.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<S: Stored>(
        &self,
        stream: &CudaStream,
        x: &CudaSlice<S>,
        y: &CudaSlice<S>,
        dy: &CudaSlice<S>,
        dx: &mut CudaSlice<S>,
        s: &PoolShape,
        batch: usize,
        layout: Layout,
    ) -> Result<()> {
        let (planes, interleaved) = planes(s, batch, layout);
        let (in_len, out_len) = (
            batch * s.c * s.in_h * s.in_w,
            batch * s.c * s.out_h * s.out_w,
        );
        need(x, in_len, "pool input")?;
        need(dx, in_len, "pool input gradient")?;
        need(y, out_len, "pool output")?;
        need(dy, out_len, "pool output gradient")?;
        let p = planes as u64;
        let d = dims(s, interleaved);
        let mut b = stream.launch_builder(self.backward.of::<S>());
        b.arg(x).arg(y).arg(dy).arg(dx).arg(&p);
        for dim in &d {
            b.arg(dim);
        }
        run(b, grid(in_len))
    }
}

/// The kernels' planes and the channels interleaved in each: every channel
/// of every image a plane of its own in NCHW; an image a plane of `s.c`
/// interleaved channels in NHWC.
pub fn planes(s: &PoolShape, batch: usize, layout: Layout) -> (usize, usize) {
    match layout {
        Layout::Nchw => (batch * s.c, 1),
        Layout::Nhwc => (batch, s.c),
    }
}

/// The kernels' dimension arguments after `planes`, in their order.
pub fn dims(s: &PoolShape, interleaved: usize) -> [u32; 7] {
    [
        s.in_h,
        s.in_w,
        s.size,
        s.stride,
        s.out_h,
        s.out_w,
        interleaved,
    ]
    .map(u32_of)
}
