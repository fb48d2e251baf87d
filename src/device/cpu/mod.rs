//! The CPU device: f32, NCHW, im2col + GEMM convolutions. One instance per
//! tower thread; its kernels are generic over f32/f64 so the gradient checks
//! run the same code in f64.

mod conv;
mod fc;
#[cfg(test)]
pub(crate) mod gradcheck;
mod lrn;
mod matmul;
mod nt;
mod pointwise;
mod pool;
mod real;
mod simd;
mod softmax;

pub use conv::{conv_backward, conv_forward};
pub use fc::{fc_backward, fc_forward};
pub use lrn::{lrn_backward, lrn_forward};
pub use matmul::{Mat, matmul};
pub use pointwise::{
    dropout_apply, dropout_keeps, relu_backward, relu_forward, sgd_update, tanh_backward,
    tanh_forward,
};
pub use pool::{maxpool_backward, maxpool_forward};
pub use real::Real;
pub use softmax::softmax_cross_entropy;

use super::{Device, Input, InputGrad, LossStats, SgdStep};
use crate::data::input;
use crate::error::{Error, Result};
use crate::net::plan::{ConvShape, FcShape, LrnShape, PoolShape};

/// One tower's CPU device; owns the im2col scratch buffers. Training runs in
/// f32; `CpuDevice<f64>` runs the same kernels in f64 for reference checks.
#[derive(Debug, Default)]
pub struct CpuDevice<T = f32> {
    col: Vec<T>,
    /// Each loss computed since the last [`Device::take_loss_stats`].
    stats: Vec<LossStats>,
    phases: Vec<T>,
}

fn slices<T>(bufs: &[Vec<T>]) -> Vec<&[T]> {
    bufs.iter().map(Vec::as_slice).collect()
}

fn slices_mut<T>(bufs: &mut [Vec<T>]) -> Vec<&mut [T]> {
    bufs.iter_mut().map(Vec::as_mut_slice).collect()
}

impl<T: Real> Device for CpuDevice<T> {
    type Buf = Vec<T>;

    fn alloc(&mut self, len: usize) -> Result<Vec<T>> {
        Ok(vec![T::zero(); len])
    }

    fn upload(&mut self, host: &[f32], dst: &mut Vec<T>) -> Result<()> {
        for (d, &h) in dst.iter_mut().zip(host) {
            *d = T::of(f64::from(h));
        }
        Ok(())
    }

    fn input_from_u8(&mut self, pixels: &[u8], offsets: &[f32], y: &mut Vec<T>) -> Result<()> {
        input::check_u8(pixels, offsets, y.len()).map_err(Error::Training)?;
        input::u8_to_net(pixels, offsets, y, |v| T::of(f64::from(v)));
        Ok(())
    }

    /// Nothing to overlap on the CPU: the same as [`Device::upload`].
    fn input_from_f32(&mut self, images: &[f32], y: &mut Vec<T>) -> Result<()> {
        self.upload(images, y)
    }

    fn download(&mut self, src: &Vec<T>) -> Result<Vec<f32>> {
        Ok(src.iter().map(|v| v.wide() as f32).collect())
    }

    /// The CPU runs each call to its end before it returns: nothing to wait for.
    fn fence(&mut self) -> Result<()> {
        Ok(())
    }

    /// Nothing is queued on the CPU that could read a buffer after its drop.
    fn leak_on_drop(&self) -> bool {
        false
    }

    /// The CPU has one way to run a convolution: nothing to choose.
    fn prepare_conv(&mut self, _shape: &ConvShape, _batch: usize) -> Result<()> {
        Ok(())
    }

    fn conv_forward(
        &mut self,
        x: Input<'_, Vec<T>>,
        w: &[Vec<T>],
        bias: &Vec<T>,
        y: &mut Vec<T>,
        shape: &ConvShape,
        batch: usize,
    ) -> Result<()> {
        let x = x.landed()?;
        conv_forward(
            x,
            &slices(w),
            bias,
            y,
            shape,
            batch,
            &mut self.col,
            &mut self.phases,
        );
        Ok(())
    }

    fn conv_backward(
        &mut self,
        x: &Vec<T>,
        w: &[Vec<T>],
        dy: &Vec<T>,
        mut dx: Option<InputGrad<'_, Vec<T>>>,
        dw: &mut [Vec<T>],
        dbias: &mut Vec<T>,
        shape: &ConvShape,
        batch: usize,
    ) -> Result<()> {
        conv_backward(
            x,
            &slices(w),
            dy,
            dx.as_mut().map(|g| g.dx.as_mut_slice()),
            &mut slices_mut(dw),
            dbias,
            shape,
            batch,
            &mut self.col,
            &mut self.phases,
        );
        dx.map_or(Ok(()), InputGrad::announce)
    }

    fn fc_forward(
        &mut self,
        x: Input<'_, Vec<T>>,
        w: &[Vec<T>],
        bias: &Vec<T>,
        y: &mut Vec<T>,
        shape: &FcShape,
        batch: usize,
    ) -> Result<()> {
        let x = x.landed()?;
        fc_forward(x, &slices(w), bias, y, shape, batch);
        Ok(())
    }

    fn fc_backward(
        &mut self,
        x: &Vec<T>,
        w: &[Vec<T>],
        dy: &Vec<T>,
        mut dx: Option<InputGrad<'_, Vec<T>>>,
        dw: &mut [Vec<T>],
        dbias: &mut Vec<T>,
        shape: &FcShape,
        batch: usize,
    ) -> Result<()> {
        fc_backward(
            x,
            &slices(w),
            dy,
            dx.as_mut().map(|g| g.dx.as_mut_slice()),
            &mut slices_mut(dw),
            dbias,
            shape,
            batch,
        );
        dx.map_or(Ok(()), InputGrad::announce)
    }

    fn relu_forward(&mut self, x: &Vec<T>, y: &mut Vec<T>) -> Result<()> {
        relu_forward(x, y);
        Ok(())
    }

    fn relu_backward(&mut self, y: &Vec<T>, dy: &Vec<T>, dx: &mut Vec<T>) -> Result<()> {
        relu_backward(y, dy, dx);
        Ok(())
    }

    fn tanh_forward(&mut self, x: &Vec<T>, y: &mut Vec<T>) -> Result<()> {
        tanh_forward(x, y);
        Ok(())
    }

    fn tanh_backward(&mut self, y: &Vec<T>, dy: &Vec<T>, dx: &mut Vec<T>) -> Result<()> {
        tanh_backward(y, dy, dx);
        Ok(())
    }

    fn lrn_forward(
        &mut self,
        x: &Vec<T>,
        y: &mut Vec<T>,
        scale: &mut Vec<T>,
        shape: &LrnShape,
        batch: usize,
    ) -> Result<()> {
        lrn_forward(x, y, scale, shape, batch);
        Ok(())
    }

    fn lrn_backward(
        &mut self,
        x: &Vec<T>,
        y: &Vec<T>,
        scale: &Vec<T>,
        dy: &Vec<T>,
        dx: &mut Vec<T>,
        shape: &LrnShape,
        batch: usize,
    ) -> Result<()> {
        lrn_backward(x, y, scale, dy, dx, shape, batch);
        Ok(())
    }

    fn maxpool_forward(
        &mut self,
        x: &Vec<T>,
        y: &mut Vec<T>,
        shape: &PoolShape,
        batch: usize,
    ) -> Result<()> {
        maxpool_forward(x, y, shape, batch);
        Ok(())
    }

    fn maxpool_backward(
        &mut self,
        x: &Vec<T>,
        y: &Vec<T>,
        dy: &Vec<T>,
        dx: &mut Vec<T>,
        shape: &PoolShape,
        batch: usize,
    ) -> Result<()> {
        maxpool_backward(x, y, dy, dx, shape, batch);
        Ok(())
    }

    fn dropout_forward(
        &mut self,
        x: &Vec<T>,
        y: &mut Vec<T>,
        p: f32,
        key: u64,
        first: usize,
    ) -> Result<()> {
        dropout_apply(x, y, p, key, first);
        Ok(())
    }

    fn dropout_backward(
        &mut self,
        dy: &Vec<T>,
        dx: &mut Vec<T>,
        p: f32,
        key: u64,
        first: usize,
    ) -> Result<()> {
        dropout_apply(dy, dx, p, key, first);
        Ok(())
    }

    fn softmax_cross_entropy(
        &mut self,
        logits: &Vec<T>,
        labels: &[u32],
        tower: usize,
        per_tower: usize,
        dlogits: &mut Vec<T>,
    ) -> Result<()> {
        let stats = softmax_cross_entropy(logits, labels, tower, per_tower, dlogits);
        self.stats.push(stats);
        Ok(())
    }

    fn take_loss_stats(&mut self) -> Result<Vec<LossStats>> {
        Ok(std::mem::take(&mut self.stats))
    }

    fn end_step(&mut self, _queued: usize) -> Result<()> {
        Ok(())
    }

    fn sgd_update(
        &mut self,
        w: &mut Vec<T>,
        g: &Vec<T>,
        v: &mut Vec<T>,
        step: SgdStep,
    ) -> Result<()> {
        sgd_update(w, g, v, step);
        Ok(())
    }
}
