//! Launchers of `lrn.cu`, beside it: local response normalization's forward
//! and backward pass over typed device buffers and the layer's shape.

use super::{Loaded, run};
use crate::device::cuda::{grid, need, u32_of};
use crate::error::Result;
use crate::net::plan::LrnShape;
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, PushKernelArg};

/// The kernels of `lrn.cu`.
pub struct Lrn {
    forward: CudaFunction,
    backward: CudaFunction,
}

impl Lrn {
    pub(super) fn load(file: &Loaded) -> Result<Self> {
        Ok(Lrn {
            forward: file.function("lrn_forward_f32")?,
            backward: file.function("lrn_backward_f32")?,
        })
    }

    /// `y = x / scale^β` with `scale = k + α Σ x²` kept (paper §3.3).
    pub fn forward(
        &self,
        stream: &CudaStream,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        scale: &mut CudaSlice<f32>,
        s: &LrnShape,
        batch: usize,
    ) -> Result<()> {
        let n = batch * s.c * s.plane;
        need(x, n, "lrn input")?;
        need(y, n, "lrn output")?;
        need(scale, n, "lrn scale")?;
        let d = [batch, s.c, s.plane, s.size].map(u32_of);
        let mut b = stream.launch_builder(&self.forward);
        b.arg(x).arg(y).arg(scale);
        for dim in &d {
            b.arg(dim);
        }
        b.arg(&s.alpha).arg(&s.beta).arg(&s.k);
        run(b, grid(n))
    }

    /// The input gradient of LRN.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        stream: &CudaStream,
        x: &CudaSlice<f32>,
        y: &CudaSlice<f32>,
        scale: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
        s: &LrnShape,
        batch: usize,
    ) -> Result<()> {
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
        let d = [batch, s.c, s.plane, s.size].map(u32_of);
        let mut b = stream.launch_builder(&self.backward);
        b.arg(x).arg(y).arg(scale).arg(dy).arg(dx);
        for dim in &d {
            b.arg(dim);
        }
        b.arg(&s.alpha).arg(&s.beta);
        run(b, grid(n))
    }
}
