//! The CUDA device at 16-bit storage (`--precision bf16|fp16`): mixed
//! precision as the CPU reference runs it (`CpuDevice::with_storage`).
//! Each op reads 16-bit inputs and weight copies, computes in f32 (cuDNN
//! and cuBLAS with f32 accumulation, our kernels widening what they load)
//! and rounds once as it stores its output; the softmax, the loss and every
//! reduction are f32 or wider; the update keeps f32 masters and momentum
//! and writes the weights' 16-bit copies ([`HalfBuf`]).
//!
//! Where the GPU rounds otherwise than the CPU: a layer's output starts as
//! its bias rounded to 16 bits and each source tower's products are added
//! to it in one rounding (cuDNN's and cuBLAS's `beta = 1`), where the CPU
//! adds the f32 bias and every source before it rounds once.

use super::buffer::{HalfBuf, StoredBuf};
use super::kernels::Half;
use super::{CudaDevice, by_source, need, part, u32_of, zeros};
use crate::device::layout::Layout;
use crate::device::{Device, DropoutMask, Input, InputGrad, LossStats, SgdStep};
use crate::error::{Error, Result};
use crate::net::plan::{ConvShape, FcShape, LrnShape, PoolShape, Shape};
use cudarc::driver::CudaSlice;

impl<H: Half> CudaDevice<H> {
    /// `buf`'s f32 master, made from its 16-bit value (exactly) where it
    /// has none yet.
    fn master<'a>(&self, buf: &'a mut HalfBuf<H>) -> Result<&'a mut CudaSlice<f32>> {
        if buf.master.is_none() {
            let mut master = zeros::<f32>(&self.stream, buf.len.max(1), "an f32 master")?;
            if let Some(stored) = &buf.stored {
                self.kernels
                    .elementwise
                    .widen(&self.stream, stored, &mut master)?;
            }
            buf.master = Some(master);
        }
        buf.master
            .as_mut()
            .ok_or_else(|| Error::cuda("an f32 master", "it was not made"))
    }

    /// A layer's output: `y = bias` (rounded), the products added to it.
    fn biased<'a>(
        &self,
        y: &'a mut HalfBuf<H>,
        bias: &HalfBuf<H>,
        len: usize,
        channels: usize,
        plane: usize,
    ) -> Result<&'a mut CudaSlice<H>> {
        let y = y.stored_mut()?;
        need(y, len, "layer output")?;
        let bias = bias.stored()?;
        need(bias, channels, "layer bias")?;
        self.kernels.elementwise.bias_fill(
            &self.stream,
            y,
            bias,
            len,
            u32_of(channels),
            u32_of(plane),
        )?;
        Ok(y)
    }
}

/// Each weight block's 16-bit copy, as the passes read them.
fn copies<H: Half>(w: &[HalfBuf<H>]) -> Result<Vec<&CudaSlice<H>>> {
    w.iter().map(StoredBuf::stored).collect()
}

impl<H: Half> Device for CudaDevice<H> {
    type Buf = HalfBuf<H>;

    fn alloc(&mut self, len: usize) -> Result<Self::Buf> {
        Ok(HalfBuf::of_stored(zeros(
            &self.stream,
            len.max(1),
            &format!("{len} 16-bit values"),
        )?))
    }

    /// Keeps `host` as the buffer's f32 master, exactly, and its rounding
    /// as the 16-bit copy the passes read (a weight, or momentum).
    fn upload(&mut self, host: &[f32], dst: &mut Self::Buf) -> Result<()> {
        if dst.len < host.len() {
            return Err(Error::cuda(
                "upload",
                format!("buffer of {} elements, {} needed", dst.len, host.len()),
            ));
        }
        let mut master = zeros::<f32>(&self.stream, dst.len.max(1), "an f32 master")?;
        self.stream
            .memcpy_htod(host, &mut master.slice_mut(..host.len()))
            .map_err(|e| Error::cuda("copying to the GPU", e))?;
        let stored = match dst.stored.take() {
            Some(stored) => stored,
            None => zeros(&self.stream, dst.len.max(1), "a 16-bit copy")?,
        };
        let stored = dst.stored.insert(stored);
        self.kernels
            .elementwise
            .narrow(&self.stream, &master.slice(..), stored)?;
        dst.master = Some(master);
        Ok(())
    }

    fn input_from_u8(&mut self, pixels: &[u8], offsets: &[f32], y: &mut Self::Buf) -> Result<()> {
        self.u8_input(pixels, offsets, y.stored_mut()?)
    }

    /// The staged f32 images rounded as stored, channels last.
    fn input_from_f32(&mut self, images: &[f32], image: Shape, y: &mut Self::Buf) -> Result<()> {
        let (channels, plane) = match image {
            Shape::Map { c, h, w } => (c, h * w),
            Shape::Flat(n) => (1, n),
        };
        self.f32_input(images, y.stored_mut()?, |device, staged, y| {
            device
                .kernels
                .input
                .to_channels_last(&device.stream, staged, y, channels, plane)
        })
    }

    /// The f32 master where there is one (weights, momentum), else the
    /// 16-bit values widened.
    fn download(&mut self, src: &Self::Buf) -> Result<Vec<f32>> {
        let widened;
        let wide = match (&src.master, &src.stored) {
            (Some(master), _) => master,
            (None, Some(stored)) => {
                let mut f32s = zeros::<f32>(&self.stream, stored.len(), "a download")?;
                self.kernels
                    .elementwise
                    .widen(&self.stream, stored, &mut f32s)?;
                widened = f32s;
                &widened
            }
            (None, None) => return Err(Error::cuda("a download", "the buffer holds nothing")),
        };
        // As the f32 device's download: the polled wait, then the copy.
        self.synchronize()?;
        self.stream
            .clone_dtoh(wide)
            .map_err(|e| Error::cuda("copying from the GPU", e))
    }

    fn fence(&mut self) -> Result<()> {
        self.synchronize()
    }

    fn leak_on_drop(&self) -> bool {
        self.leaks()
    }

    fn layout(&self) -> Layout {
        self.data_layout()
    }

    fn prepare_conv(&mut self, shape: &ConvShape, batch: usize, input_grad: bool) -> Result<()> {
        self.convs.search(shape, batch, input_grad)
    }

    fn conv_forward(
        &mut self,
        x: Input<'_, Self::Buf>,
        w: &[Self::Buf],
        bias: &Self::Buf,
        y: &mut Self::Buf,
        s: &ConvShape,
        batch: usize,
    ) -> Result<()> {
        let in_len = batch * s.in_c * s.in_h * s.in_w;
        let out_len = batch * s.out_c * s.out_h * s.out_w;
        let w = copies(w)?;
        let y = self.biased(y, bias, out_len, s.out_c, self.bias_plane(s))?;
        let convs = &mut self.convs;
        by_source(x, s.sources, in_len, |src, x_src| {
            convs.forward(s, batch, x_src, w[src], y)
        })
    }

    /// The input gradient first, as the f32 device's.
    fn conv_backward(
        &mut self,
        x: &Self::Buf,
        w: &[Self::Buf],
        dy: &Self::Buf,
        dx: Option<InputGrad<'_, Self::Buf>>,
        dw: &mut [Self::Buf],
        dbias: &mut Self::Buf,
        s: &ConvShape,
        batch: usize,
    ) -> Result<()> {
        let in_len = batch * s.in_c * s.in_h * s.in_w;
        let (x, dy) = (x.stored()?, dy.stored()?);
        need(x, s.sources * in_len, "conv input")?;
        need(
            dy,
            batch * s.out_c * s.out_h * s.out_w,
            "conv output gradient",
        )?;
        if let Some(dx) = dx {
            let full = dx.dx.stored_mut()?;
            need(full, s.sources * in_len, "conv input gradient")?;
            for (src, w) in copies(w)?.into_iter().enumerate() {
                let mut dx_src = full.slice_mut(part(src, in_len));
                self.convs.backward_data(s, batch, w, dy, &mut dx_src)?;
            }
            dx.announce()?;
        }
        self.conv_bias_grad(dy, dbias.stored_mut()?, batch, s)?;
        for (src, dw) in dw.iter_mut().enumerate() {
            let x_src = x.slice(part(src, in_len));
            self.convs
                .backward_filter(s, batch, &x_src, dy, dw.stored_mut()?)?;
        }
        Ok(())
    }

    fn fc_forward(
        &mut self,
        x: Input<'_, Self::Buf>,
        w: &[Self::Buf],
        bias: &Self::Buf,
        y: &mut Self::Buf,
        s: &FcShape,
        batch: usize,
    ) -> Result<()> {
        let in_len = batch * s.inputs;
        let w = copies(w)?;
        let y = self.biased(y, bias, batch * s.outputs, s.outputs, 1)?;
        let dims = [batch, s.inputs, s.outputs];
        let blas = &mut self.blas;
        by_source(x, s.sources, in_len, |src, x_src| {
            blas.forward(dims, x_src, w[src], y)
        })
    }

    /// The input gradient first, as the f32 device's.
    fn fc_backward(
        &mut self,
        x: &Self::Buf,
        w: &[Self::Buf],
        dy: &Self::Buf,
        dx: Option<InputGrad<'_, Self::Buf>>,
        dw: &mut [Self::Buf],
        dbias: &mut Self::Buf,
        s: &FcShape,
        batch: usize,
    ) -> Result<()> {
        let in_len = batch * s.inputs;
        let (x, dy) = (x.stored()?, dy.stored()?);
        need(x, s.sources * in_len, "fc input")?;
        need(dy, batch * s.outputs, "fc output gradient")?;
        let dims = [batch, s.inputs, s.outputs];
        if let Some(dx) = dx {
            let full = dx.dx.stored_mut()?;
            need(full, s.sources * in_len, "fc input gradient")?;
            for (src, w) in copies(w)?.into_iter().enumerate() {
                let mut dx_src = full.slice_mut(part(src, in_len));
                self.blas.input_grad(dims, w, dy, &mut dx_src)?;
            }
            dx.announce()?;
        }
        self.bias_grad(dy, dbias.stored_mut()?, batch, s.outputs, 1)?;
        for (src, dw) in dw.iter_mut().enumerate() {
            self.blas
                .weight_grad(dims, &x.slice(part(src, in_len)), dy, dw.stored_mut()?)?;
        }
        Ok(())
    }

    fn relu_forward(&mut self, x: &Self::Buf, y: &mut Self::Buf) -> Result<()> {
        self.kernels.elementwise.activation_forward(
            &self.stream,
            false,
            x.stored()?,
            y.stored_mut()?,
        )
    }

    fn relu_backward(&mut self, y: &Self::Buf, dy: &Self::Buf, dx: &mut Self::Buf) -> Result<()> {
        self.kernels.elementwise.activation_backward(
            &self.stream,
            false,
            y.stored()?,
            dy.stored()?,
            dx.stored_mut()?,
        )
    }

    fn tanh_forward(&mut self, x: &Self::Buf, y: &mut Self::Buf) -> Result<()> {
        self.kernels.elementwise.activation_forward(
            &self.stream,
            true,
            x.stored()?,
            y.stored_mut()?,
        )
    }

    fn tanh_backward(&mut self, y: &Self::Buf, dy: &Self::Buf, dx: &mut Self::Buf) -> Result<()> {
        self.kernels.elementwise.activation_backward(
            &self.stream,
            true,
            y.stored()?,
            dy.stored()?,
            dx.stored_mut()?,
        )
    }

    fn lrn_forward(
        &mut self,
        x: &Self::Buf,
        y: &mut Self::Buf,
        scale: &mut Self::Buf,
        s: &LrnShape,
        batch: usize,
    ) -> Result<()> {
        self.kernels.lrn.forward(
            &self.stream,
            x.stored()?,
            y.stored_mut()?,
            scale.stored_mut()?,
            s,
            batch,
            self.data_layout(),
        )
    }

    fn lrn_backward(
        &mut self,
        x: &Self::Buf,
        y: &Self::Buf,
        scale: &Self::Buf,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
        s: &LrnShape,
        batch: usize,
    ) -> Result<()> {
        self.kernels.lrn.backward(
            &self.stream,
            x.stored()?,
            y.stored()?,
            scale.stored()?,
            dy.stored()?,
            dx.stored_mut()?,
            s,
            batch,
            self.data_layout(),
        )
    }

    fn maxpool_forward(
        &mut self,
        x: &Self::Buf,
        y: &mut Self::Buf,
        s: &PoolShape,
        batch: usize,
    ) -> Result<()> {
        self.kernels.pool.forward(
            &self.stream,
            x.stored()?,
            y.stored_mut()?,
            s,
            batch,
            self.data_layout(),
        )
    }

    fn maxpool_backward(
        &mut self,
        x: &Self::Buf,
        y: &Self::Buf,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
        s: &PoolShape,
        batch: usize,
    ) -> Result<()> {
        self.kernels.pool.backward(
            &self.stream,
            x.stored()?,
            y.stored()?,
            dy.stored()?,
            dx.stored_mut()?,
            s,
            batch,
            self.data_layout(),
        )
    }

    fn dropout_forward(
        &mut self,
        x: &Self::Buf,
        y: &mut Self::Buf,
        mask: &DropoutMask,
    ) -> Result<()> {
        let layout = self.data_layout();
        self.kernels
            .elementwise
            .dropout(&self.stream, x.stored()?, y.stored_mut()?, mask, layout)
    }

    fn dropout_backward(
        &mut self,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
        mask: &DropoutMask,
    ) -> Result<()> {
        let layout = self.data_layout();
        self.kernels
            .elementwise
            .dropout(&self.stream, dy.stored()?, dx.stored_mut()?, mask, layout)
    }

    fn softmax_cross_entropy(
        &mut self,
        logits: &Self::Buf,
        labels: &[u32],
        tower: usize,
        per_tower: usize,
        grad_scale: f32,
        dlogits: &mut Self::Buf,
    ) -> Result<()> {
        self.loss(
            logits.stored()?,
            labels,
            tower,
            per_tower,
            grad_scale,
            dlogits.stored_mut()?,
        )
    }

    fn take_loss_stats(&mut self) -> Result<Vec<LossStats>> {
        self.loss_stats()
    }

    fn end_step(&mut self, queued: usize) -> Result<()> {
        self.step_ended(queued)
    }

    fn all_finite(&mut self, bufs: &[&Self::Buf]) -> Result<bool> {
        self.finite(bufs)
    }

    /// The update on `w`'s f32 master with the 16-bit gradient `g` and the
    /// f32 momentum `v`, writing `w`'s 16-bit copy; `v` keeps no copy.
    fn sgd_update(
        &mut self,
        w: &mut Self::Buf,
        g: &Self::Buf,
        v: &mut Self::Buf,
        step: SgdStep,
    ) -> Result<()> {
        let g = g.stored()?;
        need(g, w.len, "gradient")?;
        self.master(v)?;
        v.stored = None;
        self.master(w)?;
        let (Some(master), Some(copy), Some(momentum)) =
            (w.master.as_mut(), w.stored.as_mut(), v.master.as_mut())
        else {
            return Err(Error::cuda(
                "the 16-bit update",
                "its weights are momentum, with no 16-bit copy",
            ));
        };
        self.kernels
            .elementwise
            .sgd_update_with_copy(&self.stream, master, g, momentum, copy, step)
    }
}
