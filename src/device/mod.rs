//! How one tower's layers run on one device. The tower's dataflow
//! ([`crate::tower`]) is written once against [`Device`]; the CPU device is
//! the reference every other device is tested against.

pub mod cpu;
pub mod cuda;
pub mod faults;
pub mod layout;
pub mod precision;
pub mod run_ahead;

use crate::error::Result;
use crate::net::plan::{ConvShape, FcShape, LrnShape, PoolShape, Shape, TOWERS};
use layout::Layout;

/// Loss and hits over one batch, as every tower sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossStats {
    /// Sum over the batch of −log p(label).
    pub loss_sum: f64,
    /// Images whose label is the top logit.
    pub top1: usize,
    /// Images whose label is among the five top logits.
    pub top5: usize,
}

/// Hyper-parameters of one momentum-SGD update (paper §5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdStep {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
}

impl SgdStep {
    /// The same update for gradients that carry a loss scale `scale` (a
    /// power of two): `lr/scale · g` and `(wd·scale)·(lr/scale) · w` are
    /// exactly `lr · (g/scale)` and `wd·lr · w`, since dividing and
    /// multiplying by a power of two is exact (barring subnormals).
    pub fn unscaled(self, scale: f32) -> SgdStep {
        SgdStep {
            lr: self.lr / scale,
            momentum: self.momentum,
            weight_decay: self.weight_decay * scale,
        }
    }
}

/// Which units of a buffer inverted dropout keeps (paper §4.2). Each
/// image's units are `groups` runs of `run`, run g being tower g's (one run
/// where the buffer holds one tower's units); unit u of run g of image n is
/// kept when [`cpu::dropout_keeps`]`(keys[g], first + n·run + u, p)`, so
/// every tower draws its own mask wherever its units are held. `first` is
/// the shard's first image times `run`: a replica's shard draws its
/// images' masks. Unit indices count channels first; `map` says how a
/// device that stores a feature map channels last finds them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropoutMask {
    pub p: f32,
    /// Each run's mask stream; the first `groups` are used.
    pub keys: [u64; TOWERS],
    pub groups: usize,
    pub run: usize,
    pub first: usize,
    /// Where the units are a feature map: its channels (every tower's the
    /// buffer holds) and positions per channel; `None` for a vector.
    pub map: Option<(usize, usize)>,
}

impl DropoutMask {
    /// p = 0: every unit kept at scale 1, the test-time identity.
    pub const IDENTITY: DropoutMask = DropoutMask::tower(0.0, 0, 0);

    /// One tower's units: element i draws at `first + i` under `key`.
    pub const fn tower(p: f32, key: u64, first: usize) -> DropoutMask {
        DropoutMask {
            p,
            keys: [key; TOWERS],
            groups: 1,
            run: 1,
            first,
            map: None,
        }
    }

    /// Every tower's units, each image's being [`TOWERS`] runs of `run`,
    /// tower t's under `keys[t]`.
    pub const fn towers(p: f32, keys: [u64; TOWERS], run: usize, first: usize) -> DropoutMask {
        DropoutMask {
            p,
            keys,
            groups: TOWERS,
            run,
            first,
            map: None,
        }
    }

    /// The same mask over units that are a feature map of `channels`
    /// channels of `plane` positions each.
    pub const fn on_map(self, channels: usize, plane: usize) -> DropoutMask {
        DropoutMask {
            map: Some((channels, plane)),
            ..self
        }
    }

    /// The key and index element `i` of the buffer draws at.
    pub fn draws(&self, i: usize) -> (u64, usize) {
        if self.groups == 1 {
            return (self.keys[0], self.first + i);
        }
        let chunk = i / self.run;
        let (image, group) = (chunk / self.groups, chunk % self.groups);
        (
            self.keys[group],
            self.first + image * self.run + i % self.run,
        )
    }
}

/// A layer's input: this tower's own, or both towers' (§3.2), the other
/// tower's part arriving by an all-gather started before the layer.
pub enum Input<'a, B> {
    /// The previous layer's output on this tower.
    Own(&'a B),
    /// Both towers' outputs.
    Both(Gathering<'a, B>),
}

/// Both towers' outputs while their all-gather may still be in flight.
pub struct Gathering<'a, B> {
    /// This tower's rank: `own` is the `rank`-th part of `gathered`.
    pub rank: usize,
    /// This tower's part, ready now.
    pub own: &'a B,
    /// `[tower][image][features]`; ready for device work queued after
    /// `landed` returns, so a device may compute with `own` first.
    pub gathered: &'a B,
    /// Makes the device's later work wait for the gathered input.
    pub landed: &'a mut dyn FnMut() -> Result<()>,
}

impl<'a, B> Input<'a, B> {
    /// The whole input, once it has landed: for devices that do not overlap.
    pub fn landed(self) -> Result<&'a B> {
        match self {
            Input::Own(x) => Ok(x),
            Input::Both(g) => {
                (g.landed)()?;
                Ok(g.gathered)
            }
        }
    }
}

/// Where a layer's input gradient goes, and what follows once it is queued.
pub struct InputGrad<'a, B> {
    pub dx: &'a mut B,
    /// Called once `dx` is queued and before the weight gradients are: it
    /// starts the reduce-scatter of a layer that reads both towers (§3.2),
    /// which a device that runs asynchronously overlaps with them.
    pub queued: &'a mut dyn FnMut(&B) -> Result<()>,
}

impl<B> InputGrad<'_, B> {
    /// Tells what follows that `dx` is queued (calls `queued`).
    pub fn announce(self) -> Result<()> {
        (self.queued)(self.dx)
    }
}

/// One tower's operations on one device. Buffers hold feature maps in the
/// order [`Device::layout`] names, batch outermost; weights cross
/// [`Device::upload`] and [`Device::download`] in that layout's order
/// ([`Layout::to_device`], which the tower applies). A layer reading `sources` towers gets its input as
/// `sources` consecutive batches (`[source][image][features]`, the layout an
/// all-gather produces) and holds one weight block per source.
pub trait Device {
    /// A buffer of f32 on the device.
    type Buf: Send;

    /// A zeroed buffer of `len` elements.
    fn alloc(&mut self, len: usize) -> Result<Self::Buf>;
    /// Copies host data into a buffer of the same length.
    fn upload(&mut self, host: &[f32], dst: &mut Self::Buf) -> Result<()>;
    /// The net's input from u8 crops (HWC, image after image) and three
    /// offsets per image: `y[n][c][p] = pixels[n][p][c] · (1/255) +
    /// offsets[n][c]` (§2's scaling and mean, §4.1's lighting), as
    /// [`crate::data::input::u8_to_f32`] computes it, stored in the device's layout.
    fn input_from_u8(&mut self, pixels: &[u8], offsets: &[f32], y: &mut Self::Buf) -> Result<()>;
    /// The net's input from f32 images (NCHW, image after image, each of
    /// shape `image`), as [`Device::upload`] but staged for overlap and in
    /// the device's layout: a GPU copies it from pinned memory on a stream
    /// of its own while it still computes the previous batch.
    fn input_from_f32(&mut self, images: &[f32], image: Shape, y: &mut Self::Buf) -> Result<()>;
    /// Copies a buffer to the host.
    fn download(&mut self, src: &Self::Buf) -> Result<Vec<f32>>;
    /// Waits until every queued operation has finished (for per-layer timing
    /// on devices that run asynchronously). No default, so a wrapping device
    /// cannot forget to pass it on.
    fn fence(&mut self) -> Result<()>;
    /// Whether a tower dropped now must leak its buffers rather than free
    /// them: after its pair has failed, the other tower's queued copies may
    /// still read them (a GPU frees in its own stream's order, which is not
    /// ordered after the other tower's stream). No default, as for `fence`.
    fn leak_on_drop(&self) -> bool;
    /// How this device orders a feature map's elements. No default, as for `fence`.
    fn layout(&self) -> Layout;
    /// Chooses how to run the convolution `shape` at up to `batch` images,
    /// before the first step (a GPU measures its algorithms here), for a
    /// backward pass that computes its input gradient where `input_grad`
    /// (every convolution but the first). No default, so a wrapping device
    /// cannot forget to pass it on.
    fn prepare_conv(&mut self, shape: &ConvShape, batch: usize, input_grad: bool) -> Result<()>;

    /// `y = bias + Σ_s conv(x_s, w_s)`.
    fn conv_forward(
        &mut self,
        x: Input<'_, Self::Buf>,
        w: &[Self::Buf],
        bias: &Self::Buf,
        y: &mut Self::Buf,
        shape: &ConvShape,
        batch: usize,
    ) -> Result<()>;
    /// Weight and bias gradients, and the input gradient when `dx` is given
    /// (calling its `queued` before the weight gradients are queued).
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;

    /// `y = bias + Σ_s x_s · w_sᵀ` with `w_s` of shape outputs × inputs.
    fn fc_forward(
        &mut self,
        x: Input<'_, Self::Buf>,
        w: &[Self::Buf],
        bias: &Self::Buf,
        y: &mut Self::Buf,
        shape: &FcShape,
        batch: usize,
    ) -> Result<()>;
    /// Weight and bias gradients, and the input gradient when `dx` is given
    /// (calling its `queued` before the weight gradients are queued).
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;

    /// `y = max(x, 0)` (paper §3.1).
    fn relu_forward(&mut self, x: &Self::Buf, y: &mut Self::Buf) -> Result<()>;
    /// `dx = dy · [y > 0]`.
    fn relu_backward(&mut self, y: &Self::Buf, dy: &Self::Buf, dx: &mut Self::Buf) -> Result<()>;
    /// `y = tanh(x)` (the paper's Figure 1 baseline).
    fn tanh_forward(&mut self, x: &Self::Buf, y: &mut Self::Buf) -> Result<()>;
    /// `dx = dy · (1 − y²)`.
    fn tanh_backward(&mut self, y: &Self::Buf, dy: &Self::Buf, dx: &mut Self::Buf) -> Result<()>;

    /// Local response normalization across channels (paper §3.3); `scale`
    /// keeps `k + α Σ x²` for the backward pass.
    fn lrn_forward(
        &mut self,
        x: &Self::Buf,
        y: &mut Self::Buf,
        scale: &mut Self::Buf,
        shape: &LrnShape,
        batch: usize,
    ) -> Result<()>;
    /// The input gradient of LRN.
    #[allow(clippy::too_many_arguments)]
    fn lrn_backward(
        &mut self,
        x: &Self::Buf,
        y: &Self::Buf,
        scale: &Self::Buf,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
        shape: &LrnShape,
        batch: usize,
    ) -> Result<()>;

    /// Max-pool (paper §3.4, overlapping when stride < size).
    fn maxpool_forward(
        &mut self,
        x: &Self::Buf,
        y: &mut Self::Buf,
        shape: &PoolShape,
        batch: usize,
    ) -> Result<()>;
    /// Routes each output's gradient to the first input that attains its max.
    fn maxpool_backward(
        &mut self,
        x: &Self::Buf,
        y: &Self::Buf,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
        shape: &PoolShape,
        batch: usize,
    ) -> Result<()>;

    /// Inverted dropout (paper §4.2): the units `mask` keeps, scaled by
    /// 1/(1 − p); the others 0.
    fn dropout_forward(
        &mut self,
        x: &Self::Buf,
        y: &mut Self::Buf,
        mask: &DropoutMask,
    ) -> Result<()>;
    /// The input gradient of dropout with the same mask.
    fn dropout_backward(
        &mut self,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
        mask: &DropoutMask,
    ) -> Result<()>;

    /// Softmax cross-entropy over logits split across towers: `logits` is
    /// `[tower][image][per_tower]` (gathered), class `t · per_tower + u` is
    /// unit `u` of tower `t`. Writes the gradient of the batch-mean loss with
    /// respect to this tower's own logits, times `grad_scale` (the loss
    /// scale, 1 without one), into `dlogits` (`[image][per_tower]`),
    /// and keeps the batch's [`LossStats`] on the device for
    /// [`Device::take_loss_stats`] (a GPU does not wait for them here).
    fn softmax_cross_entropy(
        &mut self,
        logits: &Self::Buf,
        labels: &[u32],
        tower: usize,
        per_tower: usize,
        grad_scale: f32,
        dlogits: &mut Self::Buf,
    ) -> Result<()>;
    /// The [`LossStats`] of every [`Device::softmax_cross_entropy`] since the
    /// last take, oldest first; waits for the device to compute them.
    fn take_loss_stats(&mut self) -> Result<Vec<LossStats>>;
    /// Marks the end of one step's queued work, then waits until at most
    /// `queued` steps are unfinished: how far the host may run ahead of a
    /// device that runs asynchronously (the CPU has nothing queued).
    fn end_step(&mut self, queued: usize) -> Result<()>;

    /// Whether every element of every buffer in `bufs` is finite (a loss-
    /// scaled step's gradients; waits for the device).
    fn all_finite(&mut self, bufs: &[&Self::Buf]) -> Result<bool>;

    /// Momentum SGD (paper §5): `v ← m·v − wd·lr·w − lr·g; w ← w + v`.
    fn sgd_update(
        &mut self,
        w: &mut Self::Buf,
        g: &Self::Buf,
        v: &mut Self::Buf,
        step: SgdStep,
    ) -> Result<()>;
}
