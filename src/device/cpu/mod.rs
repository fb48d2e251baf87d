//! The CPU device: f32, NCHW, convolutions by im2col + GEMM, by a direct
//! kernel (conv1) and by Winograd's F(2×2, 3×3) (conv3–5). One instance per
//! tower thread; its kernels are generic over f32/f64 so the gradient checks
//! run the same code in f64. With 16-bit [`Storage`] it is the reference of
//! mixed precision: it computes in f32 and rounds to 16 bits exactly where
//! a GPU stores them (each op's outputs, the gradients it writes, the
//! weight copies the passes read), never the master weights or momentum.

mod conv;
mod direct;
mod fc;
#[cfg(test)]
pub(crate) mod gradcheck;
mod grouped;
mod lrn;
mod matmul;
mod nt;
mod pointwise;
mod pool;
mod real;
mod simd;
mod softmax;
mod winograd;

pub use conv::{ConvScratch, conv_backward, conv_forward};
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

use super::layout::Layout;
use super::precision::Storage;
use super::{Device, DropoutMask, Input, InputGrad, LossStats, SgdStep};
use crate::data::input;
use crate::error::{Error, Result};
use crate::net::plan::{ConvShape, FcShape, LrnShape, PoolShape, Shape};
use std::mem::take;

/// One tower's CPU device; owns the convolutions' scratch buffers. Training runs in
/// f32; `CpuDevice<f64>` runs the same kernels in f64 for reference checks.
#[derive(Debug, Default)]
pub struct CpuDevice<T = f32> {
    conv: ConvScratch<T>,
    /// Each loss computed since the last [`Device::take_loss_stats`].
    stats: Vec<LossStats>,
    storage: Storage,
    /// The 16-bit copies of the weights of the op running now.
    rounded_weights: Vec<Vec<T>>,
}

impl<T: Real> CpuDevice<T> {
    /// A device that stores its buffers as `storage` does.
    pub fn with_storage(storage: Storage) -> Self {
        CpuDevice {
            storage,
            ..CpuDevice::default()
        }
    }

    /// The weights an op reads: `w` itself, or its 16-bit copies.
    fn weights<'a>(&'a mut self, w: &'a [Vec<T>]) -> Vec<&'a [T]> {
        if !self.storage.is_16_bit() {
            return slices(w);
        }
        self.rounded_weights.resize_with(w.len(), Vec::new);
        for (copy, w) in self.rounded_weights.iter_mut().zip(w) {
            copy.clear();
            copy.extend_from_slice(w);
            round_all(self.storage, copy);
        }
        slices(&self.rounded_weights[..w.len()])
    }
}

/// [`round_all`] at `storage`, as a plain function (for the host link's
/// reduce-scatter sums).
pub fn rounder<T: Real>(storage: Storage) -> fn(&mut [T]) {
    fn bf16<T: Real>(x: &mut [T]) {
        round_all(Storage::Bf16, x);
    }
    fn f16<T: Real>(x: &mut [T]) {
        round_all(Storage::F16, x);
    }
    match storage {
        Storage::Full => |_| {},
        Storage::Bf16 => bf16::<T>,
        Storage::F16 => f16::<T>,
    }
}

/// Rounds every element of `x` as `storage` keeps it.
pub fn round_all<T: Real>(storage: Storage, x: &mut [T]) {
    if storage.is_16_bit() {
        T::round_slice(storage, x);
    }
}

/// A grouped convolution given several weight blocks: the grouped network
/// has one source per layer, so this is a bug, not an input.
fn one_source_only(shape: &ConvShape) -> Error {
    Error::Training(format!(
        "a convolution of {} groups takes one weight block (it has {} sources)",
        shape.groups, shape.sources
    ))
}

fn slices<T>(bufs: &[Vec<T>]) -> Vec<&[T]> {
    bufs.iter().map(Vec::as_slice).collect()
}

fn slices_mut<T>(bufs: &mut [Vec<T>]) -> Vec<&mut [T]> {
    bufs.iter_mut().map(Vec::as_mut_slice).collect()
}

/// Rounds what a backward pass wrote, as `storage` keeps it.
fn round_gradients<T: Real>(
    storage: Storage,
    dx: Option<&mut [T]>,
    dw: &mut [Vec<T>],
    dbias: &mut [T],
) {
    if let Some(dx) = dx {
        round_all(storage, dx);
    }
    for dw in dw {
        round_all(storage, dw);
    }
    round_all(storage, dbias);
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
        round_all(self.storage, y);
        Ok(())
    }

    /// Nothing to overlap on the CPU: the same as [`Device::upload`].
    fn input_from_f32(&mut self, images: &[f32], _: Shape, y: &mut Vec<T>) -> Result<()> {
        self.upload(images, y)?;
        round_all(self.storage, y);
        Ok(())
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

    /// Channels first, at every storage: the reference's order.
    fn layout(&self) -> Layout {
        Layout::Nchw
    }

    /// The CPU has one way to run a convolution: nothing to choose.
    fn prepare_conv(&mut self, _shape: &ConvShape, _batch: usize, _input_grad: bool) -> Result<()> {
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
        let mut scratch = take(&mut self.conv);
        let w = self.weights(w);
        match (shape.groups, &w[..]) {
            (1, _) => conv_forward(x, &w, bias, y, shape, batch, &mut scratch),
            (_, [w]) => grouped::grouped_forward(x, w, bias, y, shape, batch, &mut scratch),
            _ => return Err(one_source_only(shape)),
        }
        self.conv = scratch;
        round_all(self.storage, y);
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
        let mut scratch = take(&mut self.conv);
        let storage = self.storage;
        let w = self.weights(w);
        let dx_slice = dx.as_mut().map(|g| g.dx.as_mut_slice());
        match (shape.groups, &w[..], &mut *dw) {
            (1, _, dw) => conv_backward(
                x,
                &w,
                dy,
                dx_slice,
                &mut slices_mut(dw),
                dbias,
                shape,
                batch,
                &mut scratch,
            ),
            (_, [w], [dw]) => {
                grouped::grouped_backward(x, w, dy, dx_slice, dw, dbias, shape, batch, &mut scratch)
            }
            _ => return Err(one_source_only(shape)),
        }
        self.conv = scratch;
        round_gradients(storage, dx.as_mut().map(|g| g.dx.as_mut_slice()), dw, dbias);
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
        let storage = self.storage;
        fc_forward(x, &self.weights(w), bias, y, shape, batch);
        round_all(storage, y);
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
        let storage = self.storage;
        fc_backward(
            x,
            &self.weights(w),
            dy,
            dx.as_mut().map(|g| g.dx.as_mut_slice()),
            &mut slices_mut(dw),
            dbias,
            shape,
            batch,
        );
        round_gradients(storage, dx.as_mut().map(|g| g.dx.as_mut_slice()), dw, dbias);
        dx.map_or(Ok(()), InputGrad::announce)
    }

    fn relu_forward(&mut self, x: &Vec<T>, y: &mut Vec<T>) -> Result<()> {
        relu_forward(x, y);
        round_all(self.storage, y);
        Ok(())
    }

    fn relu_backward(&mut self, y: &Vec<T>, dy: &Vec<T>, dx: &mut Vec<T>) -> Result<()> {
        relu_backward(y, dy, dx);
        round_all(self.storage, dx);
        Ok(())
    }

    fn tanh_forward(&mut self, x: &Vec<T>, y: &mut Vec<T>) -> Result<()> {
        tanh_forward(x, y);
        round_all(self.storage, y);
        Ok(())
    }

    fn tanh_backward(&mut self, y: &Vec<T>, dy: &Vec<T>, dx: &mut Vec<T>) -> Result<()> {
        tanh_backward(y, dy, dx);
        round_all(self.storage, dx);
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
        round_all(self.storage, y);
        round_all(self.storage, scale);
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
        round_all(self.storage, dx);
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
        round_all(self.storage, y);
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
        round_all(self.storage, dx);
        Ok(())
    }

    fn dropout_forward(&mut self, x: &Vec<T>, y: &mut Vec<T>, mask: &DropoutMask) -> Result<()> {
        dropout_apply(x, y, mask);
        round_all(self.storage, y);
        Ok(())
    }

    fn dropout_backward(&mut self, dy: &Vec<T>, dx: &mut Vec<T>, mask: &DropoutMask) -> Result<()> {
        dropout_apply(dy, dx, mask);
        round_all(self.storage, dx);
        Ok(())
    }

    fn softmax_cross_entropy(
        &mut self,
        logits: &Vec<T>,
        labels: &[u32],
        tower: usize,
        per_tower: usize,
        grad_scale: f32,
        dlogits: &mut Vec<T>,
    ) -> Result<()> {
        let stats = softmax_cross_entropy(logits, labels, tower, per_tower, grad_scale, dlogits);
        round_all(self.storage, dlogits);
        self.stats.push(stats);
        Ok(())
    }

    fn take_loss_stats(&mut self) -> Result<Vec<LossStats>> {
        Ok(std::mem::take(&mut self.stats))
    }

    fn end_step(&mut self, _queued: usize) -> Result<()> {
        Ok(())
    }

    fn all_finite(&mut self, bufs: &[&Vec<T>]) -> Result<bool> {
        Ok(bufs.iter().all(|b| b.iter().all(|v| v.is_finite())))
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

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    fn to_bf16(x: f32) -> f32 {
        bf16::from_f32(x).to_f32()
    }

    #[test]
    fn a_bf16_device_reads_rounded_weights_and_stores_rounded_outputs() {
        let s = FcShape {
            sources: 1,
            inputs: 5,
            outputs: 3,
        };
        let batch = 2;
        let x: Vec<f32> = (0..10).map(|i| to_bf16(0.37 * i as f32 - 1.3)).collect();
        let w: Vec<f32> = (0..15)
            .map(|i| 0.1001 * (i as f32).sin() + 0.0123)
            .collect();
        let bias = vec![0.25f32, -0.5, 0.125];
        let mut device = CpuDevice::<f32>::with_storage(Storage::Bf16);
        let mut y = vec![0.0f32; batch * s.outputs];
        let weights = vec![w.clone()];
        device
            .fc_forward(Input::Own(&x), &weights, &bias, &mut y, &s, batch)
            .unwrap();
        assert_eq!(weights[0], w, "the master weights were rounded");
        for n in 0..batch {
            for o in 0..s.outputs {
                // In f64, from the weights rounded to bf16 by hand.
                let exact: f64 = f64::from(bias[o])
                    + (0..s.inputs)
                        .map(|i| f64::from(x[n * 5 + i]) * f64::from(to_bf16(w[o * 5 + i])))
                        .sum::<f64>();
                let got = y[n * s.outputs + o];
                assert_eq!(to_bf16(got), got, "output {got} is not a bf16");
                // f32 accumulation may land across a rounding boundary: one bf16 step.
                let step = f64::from(to_bf16(exact as f32)).abs() * 2f64.powi(-7);
                assert!(
                    (f64::from(got) - exact).abs() <= step,
                    "{got} against {exact}"
                );
            }
        }
        // The plain device on the same inputs does not round.
        let mut plain = vec![0.0f32; y.len()];
        CpuDevice::<f32>::default()
            .fc_forward(Input::Own(&x), &weights, &bias, &mut plain, &s, batch)
            .unwrap();
        assert!(plain.iter().any(|&v| to_bf16(v) != v));
    }

    #[test]
    fn fp16_storage_overflows_to_infinity_and_all_finite_sees_it() {
        let mut device = CpuDevice::<f32>::with_storage(Storage::F16);
        let x = vec![1.0f32, 70000.0, -3.0];
        let mut y = vec![0.0; 3];
        device.relu_forward(&x, &mut y).unwrap();
        assert_eq!(y, [1.0, f32::INFINITY, 0.0]);
        assert!(!device.all_finite(&[&x, &y]).unwrap());
        assert!(device.all_finite(&[&x]).unwrap());
    }
}
