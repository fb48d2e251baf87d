//! Launchers of `elementwise.cu`, beside it: one method per kernel, taking
//! typed device buffers in the kernel's own argument order, so that a call
//! cannot pass them in another. Each checks the lengths it relies on. The
//! kernels run in any storage ([`Stored`]); the weights' masters and the
//! momentum are f32 at every one.

use super::{ByHalf, ByStorage, Half, Loaded, Stored, run};
use crate::device::cuda::{grid, need};
use crate::device::layout::Layout;
use crate::device::{DropoutMask, SgdStep};
use crate::error::{Error, Result};
use crate::net::plan::TOWERS;
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, CudaView, PushKernelArg};

/// The dropout kernel's `channels` and `plane`: a feature map's where the
/// buffer holds it channels last, else 1 and 1 (an element its unit).
pub fn dropout_units(mask: &DropoutMask, layout: Layout) -> (usize, usize) {
    match (layout, mask.map) {
        (Layout::Nhwc, Some((channels, plane))) if channels > 0 && plane > 1 => (channels, plane),
        _ => (1, 1),
    }
}

/// The `bias_fill` kernel's `plane` for a layer output of `plane`
/// positions a channel: the channel changes every plane in NCHW, every
/// element in NHWC.
pub fn bias_plane(layout: Layout, plane: usize) -> usize {
    match layout {
        Layout::Nchw => plane,
        Layout::Nhwc => 1,
    }
}

/// The kernels of `elementwise.cu`.
pub struct Elementwise {
    relu_forward: ByStorage,
    relu_backward: ByStorage,
    tanh_forward: ByStorage,
    tanh_backward: ByStorage,
    dropout: ByStorage,
    sgd_update: CudaFunction,
    sgd_update_with_copy: ByHalf,
    bias_fill: ByStorage,
    add: ByStorage,
    flag_nonfinite: ByStorage,
    narrow: ByHalf,
    widen: ByHalf,
}

impl Elementwise {
    pub(super) fn load(file: &Loaded) -> Result<Self> {
        Ok(Elementwise {
            relu_forward: file.by_storage("relu_forward")?,
            relu_backward: file.by_storage("relu_backward")?,
            tanh_forward: file.by_storage("tanh_forward")?,
            tanh_backward: file.by_storage("tanh_backward")?,
            dropout: file.by_storage("dropout")?,
            sgd_update: file.function("sgd_update_f32")?,
            sgd_update_with_copy: file.by_half("sgd_update")?,
            bias_fill: file.by_storage("bias_fill")?,
            add: file.by_storage("add")?,
            flag_nonfinite: file.by_storage("flag_nonfinite")?,
            narrow: file.by_half("narrow")?,
            widen: file.by_half("widen")?,
        })
    }

    /// `y = f(x)` with `f` ReLU, or tanh with `tanh`.
    pub fn activation_forward<S: Stored>(
        &self,
        stream: &CudaStream,
        tanh: bool,
        x: &CudaSlice<S>,
        y: &mut CudaSlice<S>,
    ) -> Result<()> {
        let n = x.len();
        need(y, n, "activation output")?;
        let len = n as u64;
        let f = if tanh {
            self.tanh_forward.of::<S>()
        } else {
            self.relu_forward.of::<S>()
        };
        let mut b = stream.launch_builder(f);
        b.arg(x).arg(y).arg(&len);
        run(b, grid(n))
    }

    /// `dx = dy · f'(y)` for ReLU, or tanh with `tanh`.
    pub fn activation_backward<S: Stored>(
        &self,
        stream: &CudaStream,
        tanh: bool,
        y: &CudaSlice<S>,
        dy: &CudaSlice<S>,
        dx: &mut CudaSlice<S>,
    ) -> Result<()> {
        let n = y.len();
        need(dy, n, "activation output gradient")?;
        need(dx, n, "activation input gradient")?;
        let len = n as u64;
        let f = if tanh {
            self.tanh_backward.of::<S>()
        } else {
            self.relu_backward.of::<S>()
        };
        let mut b = stream.launch_builder(f);
        b.arg(y).arg(dy).arg(dx).arg(&len);
        run(b, grid(n))
    }

    /// Inverted dropout of `input` into `out` with the units `mask` keeps
    /// (the same kernel serves the forward and the backward pass), the
    /// buffers ordered as `layout` says.
    pub fn dropout<S: Stored>(
        &self,
        stream: &CudaStream,
        input: &CudaSlice<S>,
        out: &mut CudaSlice<S>,
        mask: &DropoutMask,
        layout: Layout,
    ) -> Result<()> {
        let n = input.len();
        need(out, n, "dropout output")?;
        if !(1..=TOWERS).contains(&mask.groups) || mask.run == 0 {
            return Err(Error::cuda(
                "dropout",
                format!("{} runs of {} units a mask", mask.groups, mask.run),
            ));
        }
        let [key0, key1] = [mask.keys[0], mask.keys[mask.groups - 1]];
        let (channels, plane) = dropout_units(mask, layout);
        // A map must hold whole images, and two towers' runs must tile each.
        let per_image = channels * plane;
        if plane > 1
            && (!n.is_multiple_of(per_image)
                || (mask.groups > 1 && per_image != mask.groups * mask.run))
        {
            return Err(Error::cuda(
                "dropout",
                format!(
                    "a map of {channels} channels of {plane} does not tile {n} units in {} runs of {}",
                    mask.groups, mask.run
                ),
            ));
        }
        let dims = [n, mask.run, mask.groups, mask.first, channels, plane].map(|d| d as u64);
        let mut b = stream.launch_builder(self.dropout.of::<S>());
        b.arg(input)
            .arg(out)
            .arg(&dims[0])
            .arg(&mask.p)
            .arg(&key0)
            .arg(&key1)
            .arg(&dims[1])
            .arg(&dims[2])
            .arg(&dims[3])
            .arg(&dims[4])
            .arg(&dims[5]);
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

    /// Momentum SGD on the f32 master `w` with the 16-bit gradient `g` and
    /// the f32 momentum `v`; then `copy`, the weights the passes read,
    /// becomes the new `w` rounded.
    pub fn sgd_update_with_copy<H: Half>(
        &self,
        stream: &CudaStream,
        w: &mut CudaSlice<f32>,
        g: &CudaSlice<H>,
        v: &mut CudaSlice<f32>,
        copy: &mut CudaSlice<H>,
        step: SgdStep,
    ) -> Result<()> {
        let n = w.len();
        need(g, n, "gradient")?;
        need(v, n, "momentum")?;
        need(copy, n, "16-bit weight copy")?;
        let len = n as u64;
        let mut b = stream.launch_builder(self.sgd_update_with_copy.of::<H>());
        b.arg(w)
            .arg(g)
            .arg(v)
            .arg(copy)
            .arg(&len)
            .arg(&step.lr)
            .arg(&step.momentum)
            .arg(&step.weight_decay);
        run(b, grid(n))
    }

    /// `dst = src` rounded to 16 bits, over `src`'s length.
    pub fn narrow<H: Half>(
        &self,
        stream: &CudaStream,
        src: &CudaView<f32>,
        dst: &mut CudaSlice<H>,
    ) -> Result<()> {
        let n = src.len();
        need(dst, n, "16-bit copy")?;
        let len = n as u64;
        let mut b = stream.launch_builder(self.narrow.of::<H>());
        b.arg(src).arg(dst).arg(&len);
        run(b, grid(n))
    }

    /// `dst = src` widened to f32 (exactly), over `src`'s length.
    pub fn widen<H: Half>(
        &self,
        stream: &CudaStream,
        src: &CudaSlice<H>,
        dst: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = src.len();
        need(dst, n, "f32 copy")?;
        let len = n as u64;
        let mut b = stream.launch_builder(self.widen.of::<H>());
        b.arg(src).arg(dst).arg(&len);
        run(b, grid(n))
    }

    /// `y[n][c][p] = bias[c]` over the first `n` elements of `y`.
    pub fn bias_fill<S: Stored>(
        &self,
        stream: &CudaStream,
        y: &mut CudaSlice<S>,
        bias: &CudaSlice<S>,
        n: usize,
        channels: u32,
        plane: u32,
    ) -> Result<()> {
        need(y, n, "biased output")?;
        need(bias, channels as usize, "bias")?;
        let len = n as u64;
        let mut b = stream.launch_builder(self.bias_fill.of::<S>());
        b.arg(y).arg(bias).arg(&len).arg(&channels).arg(&plane);
        run(b, grid(n))
    }

    /// `out = a + b` over `out`'s length.
    pub fn add<S: Stored>(
        &self,
        stream: &CudaStream,
        out: &mut CudaSlice<S>,
        a: &CudaView<S>,
        b: &CudaSlice<S>,
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
        let mut builder = stream.launch_builder(self.add.of::<S>());
        builder.arg(out).arg(a).arg(b).arg(&len);
        run(builder, grid(n))
    }

    /// Sets `flag[0]` to 1 when any element of `x` is not finite; leaves it otherwise.
    pub fn flag_nonfinite<S: Stored>(
        &self,
        stream: &CudaStream,
        x: &CudaSlice<S>,
        flag: &mut CudaSlice<u32>,
    ) -> Result<()> {
        need(flag, 1, "overflow flag")?;
        let n = x.len();
        if n == 0 {
            return Ok(());
        }
        let len = n as u64;
        let mut b = stream.launch_builder(self.flag_nonfinite.of::<S>());
        b.arg(x).arg(&len).arg(flag);
        run(b, grid(n))
    }
}
