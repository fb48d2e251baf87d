//! The CPU device: f32, NCHW, im2col + GEMM convolutions. One instance per
//! tower thread; its kernels are generic over f32/f64 so the gradient checks
//! run the same code in f64.

mod conv;
mod fc;
#[cfg(test)]
pub(crate) mod gradcheck;
mod lrn;
mod matmul;
mod pointwise;
mod pool;
mod real;
mod softmax;

pub use conv::{conv_backward, conv_forward};
pub use fc::{fc_backward, fc_forward};
pub use lrn::{lrn_backward, lrn_forward};
pub use matmul::{Mat, matmul};
pub use pointwise::{dropout_apply, dropout_keeps, relu_backward, relu_forward, sgd_update};
pub use pool::{maxpool_backward, maxpool_forward};
pub use real::Real;
pub use softmax::softmax_cross_entropy;

use super::{Device, LossStats, SgdStep};
use crate::error::Result;
use crate::net::plan::{ConvShape, FcShape, LrnShape, PoolShape};

/// One tower's CPU device; owns the im2col scratch buffer.
#[derive(Debug, Default)]
pub struct CpuDevice {
    col: Vec<f32>,
}

fn slices(bufs: &[Vec<f32>]) -> Vec<&[f32]> {
    bufs.iter().map(Vec::as_slice).collect()
}

fn slices_mut(bufs: &mut [Vec<f32>]) -> Vec<&mut [f32]> {
    bufs.iter_mut().map(Vec::as_mut_slice).collect()
}

impl Device for CpuDevice {
    type Buf = Vec<f32>;

    fn alloc(&mut self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }

    fn upload(&mut self, host: &[f32], dst: &mut Vec<f32>) -> Result<()> {
        dst.copy_from_slice(host);
        Ok(())
    }

    fn download(&mut self, src: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(src.clone())
    }

    fn conv_forward(
        &mut self,
        x: &Vec<f32>,
        w: &[Vec<f32>],
        bias: &Vec<f32>,
        y: &mut Vec<f32>,
        shape: &ConvShape,
        batch: usize,
    ) -> Result<()> {
        conv_forward(x, &slices(w), bias, y, shape, batch, &mut self.col);
        Ok(())
    }

    fn conv_backward(
        &mut self,
        x: &Vec<f32>,
        w: &[Vec<f32>],
        dy: &Vec<f32>,
        dx: Option<&mut Vec<f32>>,
        dw: &mut [Vec<f32>],
        dbias: &mut Vec<f32>,
        shape: &ConvShape,
        batch: usize,
    ) -> Result<()> {
        let dx = dx.map(Vec::as_mut_slice);
        conv_backward(
            x,
            &slices(w),
            dy,
            dx,
            &mut slices_mut(dw),
            dbias,
            shape,
            batch,
            &mut self.col,
        );
        Ok(())
    }

    fn fc_forward(
        &mut self,
        x: &Vec<f32>,
        w: &[Vec<f32>],
        bias: &Vec<f32>,
        y: &mut Vec<f32>,
        shape: &FcShape,
        batch: usize,
    ) -> Result<()> {
        fc_forward(x, &slices(w), bias, y, shape, batch);
        Ok(())
    }

    fn fc_backward(
        &mut self,
        x: &Vec<f32>,
        w: &[Vec<f32>],
        dy: &Vec<f32>,
        dx: Option<&mut Vec<f32>>,
        dw: &mut [Vec<f32>],
        dbias: &mut Vec<f32>,
        shape: &FcShape,
        batch: usize,
    ) -> Result<()> {
        let dx = dx.map(Vec::as_mut_slice);
        fc_backward(
            x,
            &slices(w),
            dy,
            dx,
            &mut slices_mut(dw),
            dbias,
            shape,
            batch,
        );
        Ok(())
    }

    fn relu_forward(&mut self, x: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        relu_forward(x, y);
        Ok(())
    }

    fn relu_backward(&mut self, y: &Vec<f32>, dy: &Vec<f32>, dx: &mut Vec<f32>) -> Result<()> {
        relu_backward(y, dy, dx);
        Ok(())
    }

    fn lrn_forward(
        &mut self,
        x: &Vec<f32>,
        y: &mut Vec<f32>,
        scale: &mut Vec<f32>,
        shape: &LrnShape,
        batch: usize,
    ) -> Result<()> {
        lrn_forward(x, y, scale, shape, batch);
        Ok(())
    }

    fn lrn_backward(
        &mut self,
        x: &Vec<f32>,
        y: &Vec<f32>,
        scale: &Vec<f32>,
        dy: &Vec<f32>,
        dx: &mut Vec<f32>,
        shape: &LrnShape,
        batch: usize,
    ) -> Result<()> {
        lrn_backward(x, y, scale, dy, dx, shape, batch);
        Ok(())
    }

    fn maxpool_forward(
        &mut self,
        x: &Vec<f32>,
        y: &mut Vec<f32>,
        shape: &PoolShape,
        batch: usize,
    ) -> Result<()> {
        maxpool_forward(x, y, shape, batch);
        Ok(())
    }

    fn maxpool_backward(
        &mut self,
        x: &Vec<f32>,
        y: &Vec<f32>,
        dy: &Vec<f32>,
        dx: &mut Vec<f32>,
        shape: &PoolShape,
        batch: usize,
    ) -> Result<()> {
        maxpool_backward(x, y, dy, dx, shape, batch);
        Ok(())
    }

    fn dropout_forward(&mut self, x: &Vec<f32>, y: &mut Vec<f32>, p: f32, key: u64) -> Result<()> {
        dropout_apply(x, y, p, key);
        Ok(())
    }

    fn dropout_backward(
        &mut self,
        dy: &Vec<f32>,
        dx: &mut Vec<f32>,
        p: f32,
        key: u64,
    ) -> Result<()> {
        dropout_apply(dy, dx, p, key);
        Ok(())
    }

    fn softmax_cross_entropy(
        &mut self,
        logits: &Vec<f32>,
        labels: &[u32],
        tower: usize,
        per_tower: usize,
        dlogits: &mut Vec<f32>,
    ) -> Result<LossStats> {
        Ok(softmax_cross_entropy(
            logits, labels, tower, per_tower, dlogits,
        ))
    }

    fn sgd_update(
        &mut self,
        w: &mut Vec<f32>,
        g: &Vec<f32>,
        v: &mut Vec<f32>,
        step: SgdStep,
    ) -> Result<()> {
        sgd_update(w, g, v, step);
        Ok(())
    }
}
