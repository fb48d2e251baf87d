//! Fault injection, for tests only: makes one tower's device fail to build,
//! fail in a forward or backward pass, or stop answering, so that
//! `tests/faults.rs` can check on any machine that the other tower is
//! released and the run ends with the error named. Off unless the
//! environment variable [`FAULT_VAR`] is set; a training run never sets it.
//!
//! `ALEXNET_FAULT=TOWER:build` — tower TOWER's device does not build.
//! `ALEXNET_FAULT=TOWER:forward:K` — its first fully connected layer fails
//! in its K-th forward pass (after the exchanges of the convolutions).
//! `ALEXNET_FAULT=TOWER:backward:K` — its last convolution's backward pass
//! fails in its K-th pass (after the exchanges of the FC layers).
//! `ALEXNET_FAULT=TOWER:hang:K` — its first FC layer never returns in its
//! K-th forward pass.
//!
//! TOWER is a tower of the only (or first) replica; `REPLICA.TOWER` (as
//! `1.0`) names a tower of another replica of the pair. The grouped
//! network (`--gpus 0`, one thread holding both towers) is tower 0: a fault
//! for tower 1 never fires there (unless the net falls back to emulation
//! mode); `--emulate` keeps two towers to aim at.

use super::layout::Layout;
use super::{Device, DropoutMask, Input, InputGrad, LossStats, SgdStep};
use crate::error::{Error, Result};
use crate::net::plan::{ConvShape, FcShape, LrnShape, PoolShape, Shape};

/// The environment variable that injects a fault.
pub const FAULT_VAR: &str = "ALEXNET_FAULT";

/// What goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Build,
    Forward(usize),
    Backward(usize),
    Hang(usize),
}

/// The fault [`FAULT_VAR`] asks of tower `rank` of replica 0, if any.
pub fn from_env(rank: usize) -> Result<Option<Fault>> {
    from_env_in(0, rank)
}

/// The fault [`FAULT_VAR`] asks of tower `rank` of replica `replica`, if any.
pub fn from_env_in(replica: usize, rank: usize) -> Result<Option<Fault>> {
    let Ok(text) = std::env::var(FAULT_VAR) else {
        return Ok(None);
    };
    let (tower, fault) = parse(&text)
        .ok_or_else(|| Error::Input(format!("{FAULT_VAR}={text}: give TOWER:build, TOWER:forward:K, TOWER:backward:K or TOWER:hang:K")))?;
    Ok((tower == (replica, rank)).then_some(fault))
}

fn parse(text: &str) -> Option<((usize, usize), Fault)> {
    let parts: Vec<&str> = text.split(':').collect();
    let first = parts.first()?;
    let tower = match first.split_once('.') {
        Some((r, t)) => (r.parse().ok()?, t.parse().ok()?),
        None => (0, first.parse().ok()?),
    };
    let step = || -> Option<usize> { parts.get(2)?.parse().ok().filter(|&k| k > 0) };
    let fault = match (parts.get(1).copied()?, parts.len()) {
        ("build", 2) => Fault::Build,
        ("forward", 3) => Fault::Forward(step()?),
        ("backward", 3) => Fault::Backward(step()?),
        ("hang", 3) => Fault::Hang(step()?),
        _ => return None,
    };
    Some((tower, fault))
}

/// Builds tower `rank`'s device with `build`, with the fault [`FAULT_VAR`]
/// asks of it.
pub fn build<D: Device>(rank: usize, build: impl FnOnce() -> Result<D>) -> Result<Faulty<D>> {
    Faulty::new(from_env(rank)?, build)
}

/// As [`build`], for tower `rank` of replica `replica`.
pub fn build_in<D: Device>(
    replica: usize,
    rank: usize,
    build: impl FnOnce() -> Result<D>,
) -> Result<Faulty<D>> {
    Faulty::new(from_env_in(replica, rank)?, build)
}

fn injected(what: &str) -> Error {
    Error::Training(format!("injected fault ({FAULT_VAR}): {what}"))
}

/// A device that passes every call to `inner`, except the one its fault names.
pub struct Faulty<D> {
    inner: D,
    fault: Option<Fault>,
    /// Forward passes finished (losses computed).
    passes: usize,
}

impl<D> Faulty<D> {
    /// The device `build` makes, with `fault` (which may be that it does not build).
    pub fn new(fault: Option<Fault>, build: impl FnOnce() -> Result<D>) -> Result<Self> {
        if fault == Some(Fault::Build) {
            return Err(injected("the device does not build"));
        }
        Ok(Faulty {
            inner: build()?,
            fault,
            passes: 0,
        })
    }

    /// The device itself.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    fn in_forward(&self) -> Result<()> {
        let pass = self.passes + 1;
        match self.fault {
            Some(Fault::Forward(k)) if k == pass => {
                Err(injected(&format!("forward pass {pass} fails")))
            }
            Some(Fault::Hang(k)) if k == pass => loop {
                std::thread::park();
            },
            _ => Ok(()),
        }
    }

    fn in_backward(&self) -> Result<()> {
        match self.fault {
            Some(Fault::Backward(k)) if k == self.passes => {
                Err(injected(&format!("backward pass {} fails", self.passes)))
            }
            _ => Ok(()),
        }
    }
}

impl<D: Device> Device for Faulty<D> {
    type Buf = D::Buf;

    fn alloc(&mut self, len: usize) -> Result<Self::Buf> {
        self.inner.alloc(len)
    }
    fn upload(&mut self, host: &[f32], dst: &mut Self::Buf) -> Result<()> {
        self.inner.upload(host, dst)
    }
    fn download(&mut self, src: &Self::Buf) -> Result<Vec<f32>> {
        self.inner.download(src)
    }
    fn fence(&mut self) -> Result<()> {
        self.inner.fence()
    }
    fn leak_on_drop(&self) -> bool {
        self.inner.leak_on_drop()
    }
    fn layout(&self) -> Layout {
        self.inner.layout()
    }
    fn prepare_conv(&mut self, shape: &ConvShape, batch: usize, input_grad: bool) -> Result<()> {
        self.inner.prepare_conv(shape, batch, input_grad)
    }
    fn input_from_u8(&mut self, pixels: &[u8], offsets: &[f32], y: &mut Self::Buf) -> Result<()> {
        self.inner.input_from_u8(pixels, offsets, y)
    }
    fn input_from_f32(&mut self, images: &[f32], image: Shape, y: &mut Self::Buf) -> Result<()> {
        self.inner.input_from_f32(images, image, y)
    }
    fn conv_forward(
        &mut self,
        x: Input<'_, Self::Buf>,
        w: &[Self::Buf],
        bias: &Self::Buf,
        y: &mut Self::Buf,
        shape: &ConvShape,
        batch: usize,
    ) -> Result<()> {
        self.inner.conv_forward(x, w, bias, y, shape, batch)
    }
    fn conv_backward(
        &mut self,
        x: &Self::Buf,
        w: &[Self::Buf],
        dy: &Self::Buf,
        dx: Option<InputGrad<'_, Self::Buf>>,
        dw: &mut [Self::Buf],
        dbias: &mut Self::Buf,
        shape: &ConvShape,
        batch: usize,
    ) -> Result<()> {
        self.in_backward()?;
        self.inner
            .conv_backward(x, w, dy, dx, dw, dbias, shape, batch)
    }
    fn fc_forward(
        &mut self,
        x: Input<'_, Self::Buf>,
        w: &[Self::Buf],
        bias: &Self::Buf,
        y: &mut Self::Buf,
        shape: &FcShape,
        batch: usize,
    ) -> Result<()> {
        self.in_forward()?;
        self.inner.fc_forward(x, w, bias, y, shape, batch)
    }
    fn fc_backward(
        &mut self,
        x: &Self::Buf,
        w: &[Self::Buf],
        dy: &Self::Buf,
        dx: Option<InputGrad<'_, Self::Buf>>,
        dw: &mut [Self::Buf],
        dbias: &mut Self::Buf,
        shape: &FcShape,
        batch: usize,
    ) -> Result<()> {
        self.inner
            .fc_backward(x, w, dy, dx, dw, dbias, shape, batch)
    }
    fn relu_forward(&mut self, x: &Self::Buf, y: &mut Self::Buf) -> Result<()> {
        self.inner.relu_forward(x, y)
    }
    fn relu_backward(&mut self, y: &Self::Buf, dy: &Self::Buf, dx: &mut Self::Buf) -> Result<()> {
        self.inner.relu_backward(y, dy, dx)
    }
    fn tanh_forward(&mut self, x: &Self::Buf, y: &mut Self::Buf) -> Result<()> {
        self.inner.tanh_forward(x, y)
    }
    fn tanh_backward(&mut self, y: &Self::Buf, dy: &Self::Buf, dx: &mut Self::Buf) -> Result<()> {
        self.inner.tanh_backward(y, dy, dx)
    }
    fn lrn_forward(
        &mut self,
        x: &Self::Buf,
        y: &mut Self::Buf,
        scale: &mut Self::Buf,
        shape: &LrnShape,
        batch: usize,
    ) -> Result<()> {
        self.inner.lrn_forward(x, y, scale, shape, batch)
    }
    fn lrn_backward(
        &mut self,
        x: &Self::Buf,
        y: &Self::Buf,
        scale: &Self::Buf,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
        shape: &LrnShape,
        batch: usize,
    ) -> Result<()> {
        self.inner.lrn_backward(x, y, scale, dy, dx, shape, batch)
    }
    fn maxpool_forward(
        &mut self,
        x: &Self::Buf,
        y: &mut Self::Buf,
        shape: &PoolShape,
        batch: usize,
    ) -> Result<()> {
        self.inner.maxpool_forward(x, y, shape, batch)
    }
    fn maxpool_backward(
        &mut self,
        x: &Self::Buf,
        y: &Self::Buf,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
        shape: &PoolShape,
        batch: usize,
    ) -> Result<()> {
        self.inner.maxpool_backward(x, y, dy, dx, shape, batch)
    }
    fn dropout_forward(
        &mut self,
        x: &Self::Buf,
        y: &mut Self::Buf,
        mask: &DropoutMask,
    ) -> Result<()> {
        self.inner.dropout_forward(x, y, mask)
    }
    fn dropout_backward(
        &mut self,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
        mask: &DropoutMask,
    ) -> Result<()> {
        self.inner.dropout_backward(dy, dx, mask)
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
        self.inner
            .softmax_cross_entropy(logits, labels, tower, per_tower, grad_scale, dlogits)?;
        self.passes += 1;
        Ok(())
    }
    fn take_loss_stats(&mut self) -> Result<Vec<LossStats>> {
        self.inner.take_loss_stats()
    }
    fn end_step(&mut self, queued: usize) -> Result<()> {
        self.inner.end_step(queued)
    }
    fn all_finite(&mut self, bufs: &[&Self::Buf]) -> Result<bool> {
        self.inner.all_finite(bufs)
    }
    fn sgd_update(
        &mut self,
        w: &mut Self::Buf,
        g: &Self::Buf,
        v: &mut Self::Buf,
        step: SgdStep,
    ) -> Result<()> {
        self.inner.sgd_update(w, g, v, step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_specs_parse_and_bad_ones_are_refused() {
        assert_eq!(parse("1:build"), Some(((0, 1), Fault::Build)));
        assert_eq!(parse("0:forward:3"), Some(((0, 0), Fault::Forward(3))));
        assert_eq!(parse("1:backward:2"), Some(((0, 1), Fault::Backward(2))));
        assert_eq!(parse("1:hang:1"), Some(((0, 1), Fault::Hang(1))));
        assert_eq!(parse("2.1:forward:4"), Some(((2, 1), Fault::Forward(4))));
        for bad in [
            "",
            "1",
            "x:build",
            "1:build:2",
            "1:forward",
            "1:forward:0",
            "1:melt:2",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
