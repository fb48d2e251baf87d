//! Launchers of `elementwise.cu`, beside it: one method per kernel, taking
//! typed device buffers in the kernel's own argument order, so that a call
//! cannot pass them in another. Each checks the lengths it relies on.

use super::{Loaded, run};
use crate::device::SgdStep;
use crate::device::cuda::{grid, need};
use crate::error::Result;
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, CudaView, PushKernelArg};

/// The kernels of `elementwise.cu`.
pub struct Elementwise {
    relu_forward: CudaFunction,
    relu_backward: CudaFunction,
    tanh_forward: CudaFunction,
    tanh_backward: CudaFunction,
    dropout: CudaFunction,
    sgd_update: CudaFunction,
    bias_fill: CudaFunction,
    add: CudaFunction,
    flag_nonfinite: CudaFunction,
}

impl Elementwise {
    pub(super) fn load(file: &Loaded) -> Result<Self> {
        Ok(Elementwise {
            relu_forward: file.function("relu_forward_f32")?,
            relu_backward: file.function("relu_backward_f32")?,
            tanh_forward: file.function("tanh_forward_f32")?,
            tanh_backward: file.function("tanh_backward_f32")?,
            dropout: file.function("dropout_f32")?,
            sgd_update: file.function("sgd_update_f32")?,
            bias_fill: file.function("bias_fill_f32")?,
            add: file.function("add_f32")?,
            flag_nonfinite: file.function("flag_nonfinite_f32")?,
        })
    }

    /// `y = f(x)` with `f` ReLU, or tanh with `tanh`.
    pub fn activation_forward(
        &self,
        stream: &CudaStream,
        tanh: bool,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = x.len();
        need(y, n, "activation output")?;
        let len = n as u64;
        let f = if tanh {
            &self.tanh_forward
        } else {
            &self.relu_forward
        };
        let mut b = stream.launch_builder(f);
        b.arg(x).arg(y).arg(&len);
        run(b, grid(n))
    }

    /// `dx = dy · f'(y)` for ReLU, or tanh with `tanh`.
    pub fn activation_backward(
        &self,
        stream: &CudaStream,
        tanh: bool,
        y: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = y.len();
        need(dy, n, "activation output gradient")?;
        need(dx, n, "activation input gradient")?;
        let len = n as u64;
        let f = if tanh {
            &self.tanh_backward
        } else {
            &self.relu_backward
        };
        let mut b = stream.launch_builder(f);
        b.arg(y).arg(dy).arg(dx).arg(&len);
        run(b, grid(n))
    }

    /// Inverted dropout of `input` into `out` with keep mask `key`, element
    /// `i` drawing the mask at `first + i` (the same kernel serves the
    /// forward and the backward pass).
    #[allow(clippy::too_many_arguments)]
    pub fn dropout(
        &self,
        stream: &CudaStream,
        input: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        p: f32,
        key: u64,
        first: usize,
    ) -> Result<()> {
        let n = input.len();
        need(out, n, "dropout output")?;
        let (len, first) = (n as u64, first as u64);
        let mut b = stream.launch_builder(&self.dropout);
        b.arg(input)
            .arg(out)
            .arg(&len)
            .arg(&p)
            .arg(&key)
            .arg(&first);
        run(b, grid(n))
    }

    /// Momentum SGD on `w` with gradient `g` and momentum `v`.
    pub fn sgd_update(
        &self,
        stream: &CudaStream,
        w: &mut CudaSlice<f32>,
        g: &CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        step: SgdStep,
    ) -> Result<()> {
        let n = w.len();
        need(g, n, "gradient")?;
        need(v, n, "momentum")?;
        let len = n as u64;
        let mut b = stream.launch_builder(&self.sgd_update);
        b.arg(w)
            .arg(g)
            .arg(v)
            .arg(&len)
            .arg(&step.lr)
            .arg(&step.momentum)
            .arg(&step.weight_decay);
        run(b, grid(n))
    }

    /// `y[n][c][p] = bias[c]` over the first `n` elements of `y`.
    pub fn bias_fill(
        &self,
        stream: &CudaStream,
        y: &mut CudaSlice<f32>,
        bias: &CudaSlice<f32>,
        n: usize,
        channels: u32,
        plane: u32,
    ) -> Result<()> {
        need(y, n, "biased output")?;
        need(bias, channels as usize, "bias")?;
        let len = n as u64;
        let mut b = stream.launch_builder(&self.bias_fill);
        b.arg(y).arg(bias).arg(&len).arg(&channels).arg(&plane);
        run(b, grid(n))
    }

    /// `out = a + b` over `out`'s length.
    pub fn add(
        &self,
        stream: &CudaStream,
        out: &mut CudaSlice<f32>,
        a: &CudaView<f32>,
        b: &CudaSlice<f32>,
    ) -> Result<()> {
        let n = out.len();
        if a.len() < n {
            return Err(crate::error::Error::cuda(
                "adding two buffers",
                format!("a view of {} elements, {n} needed", a.len()),
            ));
        }
        need(b, n, "second summand")?;
        let len = n as u64;
        let mut builder = stream.launch_builder(&self.add);
        builder.arg(out).arg(a).arg(b).arg(&len);
        run(builder, grid(n))
    }

    /// Sets `flag[0]` to 1 when any element of `x` is not finite; leaves it otherwise.
    pub fn flag_nonfinite(
        &self,
        stream: &CudaStream,
        x: &CudaSlice<f32>,
        flag: &mut CudaSlice<u32>,
    ) -> Result<()> {
        need(flag, 1, "overflow flag")?;
        let n = x.len();
        if n == 0 {
            return Ok(());
        }
        let len = n as u64;
        let mut b = stream.launch_builder(&self.flag_nonfinite);
        b.arg(x).arg(&len).arg(flag);
        run(b, grid(n))
    }
}
