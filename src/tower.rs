//! One tower's forward and backward pass in the paper's order (conv → ReLU →
//! LRN → pool, §3.5), exchanging with the other tower through a [`Link`]
//! before every layer that reads both towers (§3.2, Fig. 2) and at the logits.

use crate::data::input::Images;
use crate::device::{Device, DropoutMask, Gathering, Input, InputGrad, LossStats, SgdStep};
use crate::error::{Error, Result};
use crate::link::Link;
use crate::net::buffers::BufferSizes;
use crate::net::params::LayerParams;
use crate::net::plan::{Op, Plan, PlannedLayer, Shape, TOWERS};
use crate::reduce::Reduce;
use crate::rng::derive;
use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::time::Instant;

/// One tower: its device, its end of the link, its parameters and buffers.
pub struct Tower<D: Device, L: Link<D::Buf>> {
    plan: Arc<Plan>,
    /// Declared (so dropped) before the device: a link that holds a
    /// communicator aborts it before the device's libraries are torn down
    /// (which may wait for the stream the communicator's work is on).
    link: L,
    /// This tower's end of the gradient average across replicas; `None`
    /// for a pair that is the only replica. Before the device, as the link.
    reduce: Option<Box<dyn Reduce<D::Buf>>>,
    device: D,
    batch: usize,
    /// Per parameter layer, in layer order. This and the next three are
    /// dropped by hand, or leaked after a failure (see the `Drop` impl).
    params: ManuallyDrop<Vec<LayerParams<D::Buf>>>,
    grads: ManuallyDrop<Vec<LayerParams<D::Buf>>>,
    momentum: ManuallyDrop<Vec<LayerParams<D::Buf>>>,
    /// Activations of the current batch, and their gradients.
    buffers: ManuallyDrop<Buffers<D::Buf>>,
    /// Dropout mask key of the current step; `None` when not training.
    dropout_key: Option<u64>,
    /// The part of the whole batch the current pass sees.
    shard: Shard,
    /// Wall time of each layer in the last step, then the loss and the update.
    timings: Vec<LayerTiming>,
    /// Wait for the device after each layer, so `timings` hold its compute
    /// time and not only its launch time.
    profile: bool,
}

/// Seconds one layer took in the last step, on the tower's thread; a layer
/// that reads both towers includes its exchange (and any wait for the other).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct LayerTiming {
    pub forward_s: f64,
    pub backward_s: f64,
    /// Of which in exchanges with the other tower (forward and backward).
    pub exchange_s: f64,
}

/// Which part of the whole batch a replica's pass sees: the images from
/// `first_image` on, making `share` of the whole (data parallelism over
/// replicas of the pair; one replica sees [`Shard::WHOLE`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shard {
    pub first_image: usize,
    pub share: f64,
}

impl Shard {
    /// The whole batch.
    pub const WHOLE: Shard = Shard {
        first_image: 0,
        share: 1.0,
    };
}

/// Everything that scales with the batch.
struct Buffers<B> {
    input: B,
    /// This tower's half of the input, where the towers split the upload
    /// ([`Link::splits_input`]) and the batch splits evenly.
    input_part: Option<B>,
    /// Output of each layer.
    outputs: Vec<B>,
    /// Gradient of the loss with respect to each layer's output.
    output_grads: Vec<B>,
    /// Both towers' inputs, for layers that read both.
    gathered: Vec<Option<B>>,
    gathered_grads: Vec<Option<B>>,
    /// `k + α Σ x²` of LRN layers.
    lrn_scales: Vec<Option<B>>,
    /// Both towers' logits.
    logits: B,
    elements: usize,
}

impl<B> Buffers<B> {
    /// Allocates the buffers [`BufferSizes`] lists for `batch`, with
    /// `input_part` where the towers split the upload.
    fn new<D: Device<Buf = B>>(
        device: &mut D,
        plan: &Plan,
        batch: usize,
        split_input: bool,
    ) -> Result<Self> {
        let sizes = BufferSizes::new(plan, batch);
        let mut elements = 0;
        let mut alloc = |len: usize| {
            elements += len;
            device.alloc(len)
        };
        let input = alloc(sizes.input)?;
        let input_part = match sizes.input_part.filter(|_| split_input) {
            Some(len) => Some(alloc(len)?),
            None => None,
        };
        let (mut outputs, mut output_grads) = (Vec::new(), Vec::new());
        let (mut gathered, mut gathered_grads, mut lrn_scales) =
            (Vec::new(), Vec::new(), Vec::new());
        for layer in &sizes.layers {
            outputs.push(alloc(layer.output)?);
            output_grads.push(alloc(layer.output)?);
            gathered.push(layer.gathered.map(&mut alloc).transpose()?);
            gathered_grads.push(layer.gathered.map(&mut alloc).transpose()?);
            lrn_scales.push(layer.lrn_scale.map(&mut alloc).transpose()?);
        }
        let logits = alloc(sizes.logits)?;
        Ok(Buffers {
            input,
            input_part,
            outputs,
            output_grads,
            gathered,
            gathered_grads,
            lrn_scales,
            logits,
            elements,
        })
    }
}

impl<D: Device, L: Link<D::Buf>> Tower<D, L> {
    /// A tower with the given parameters (from [`crate::net::params::split_twin`]).
    pub fn new(
        plan: Arc<Plan>,
        mut device: D,
        link: L,
        batch: usize,
        host_params: &[LayerParams<Vec<f32>>],
    ) -> Result<Self> {
        let mut params = Vec::with_capacity(host_params.len());
        let (mut grads, mut momentum) = (Vec::new(), Vec::new());
        let layout = device.layout();
        for (layer, planned) in host_params.iter().zip(param_layers(&plan)) {
            let mut upload = |host: &[f32]| -> Result<D::Buf> {
                let mut buf = device.alloc(host.len())?;
                device.upload(host, &mut buf)?;
                Ok(buf)
            };
            let weights = layer
                .weights
                .iter()
                .map(|w| upload(&layout.to_device(planned, w)))
                .collect::<Result<Vec<_>>>()?;
            params.push(LayerParams {
                weights,
                bias: upload(&layer.bias)?,
            });
            for set in [&mut grads, &mut momentum] {
                let weights = layer
                    .weights
                    .iter()
                    .map(|w| device.alloc(w.len()))
                    .collect::<Result<_>>()?;
                set.push(LayerParams {
                    weights,
                    bias: device.alloc(layer.bias.len())?,
                });
            }
        }
        let buffers = Buffers::new(&mut device, &plan, batch, link.splits_input())?;
        prepare_convs(&mut device, &plan, batch)?;
        let timings = vec![LayerTiming::default(); plan.layers.len() + 2];
        Ok(Tower {
            plan,
            device,
            link,
            batch,
            params: ManuallyDrop::new(params),
            grads: ManuallyDrop::new(grads),
            momentum: ManuallyDrop::new(momentum),
            timings,
            buffers: ManuallyDrop::new(buffers),
            dropout_key: None,
            shard: Shard::WHOLE,
            reduce: None,
            profile: false,
        })
    }

    /// The tower as one replica's, averaging its gradients through `reduce`
    /// after each parameter layer's backward pass.
    pub fn with_reduce(mut self, reduce: Box<dyn Reduce<D::Buf>>) -> Self {
        self.reduce = Some(reduce);
        self
    }

    /// This tower's rank.
    pub fn rank(&self) -> usize {
        self.link.rank()
    }

    /// Elements held in batch-sized buffers (activations and their gradients).
    pub fn activation_elements(&self) -> usize {
        self.buffers.elements
    }

    /// One pass queued on the device: forward over `labels.len()` images and
    /// the loss; with `dropout_key` a training pass (dropout on), also
    /// backward (the gradients averaged across replicas, `shard` saying
    /// which part of the whole batch these images are) and, with `sgd`, the
    /// update. The loss statistics stay on the
    /// device ([`Tower::take_loss_stats`]); this returns once at most
    /// `queued` passes are unfinished on the device (see [`Device::end_step`]).
    pub fn step(
        &mut self,
        images: &Images,
        labels: &[u32],
        dropout_key: Option<u64>,
        sgd: Option<SgdStep>,
        shard: Shard,
        queued: usize,
    ) -> Result<()> {
        self.shard = shard;
        self.pass(images, labels, dropout_key, 1.0)?;
        self.finish_step(sgd.filter(|_| dropout_key.is_some()), queued)
    }

    /// A training pass whose loss gradient is multiplied by `grad_scale`
    /// (fp16's loss scale), without the update: returns whether every
    /// gradient is finite (waits for the device). [`Tower::finish_step`]
    /// then updates, or skips an overflowed step.
    pub fn scaled_pass(
        &mut self,
        images: &Images,
        labels: &[u32],
        dropout_key: u64,
        grad_scale: f32,
    ) -> Result<bool> {
        self.pass(images, labels, Some(dropout_key), grad_scale)?;
        let grads: Vec<&D::Buf> = self
            .grads
            .iter()
            .flat_map(|layer| layer.weights.iter().chain([&layer.bias]))
            .collect();
        self.device.all_finite(&grads)
    }

    /// Ends a step: with `sgd`, the update; then returns once at most
    /// `queued` passes are unfinished on the device.
    pub fn finish_step(&mut self, sgd: Option<SgdStep>, queued: usize) -> Result<()> {
        if let Some(step) = sgd {
            self.update(step)?;
        }
        self.device.end_step(queued)
    }

    /// Forward, and with `dropout_key` backward, the loss gradient times `grad_scale`.
    fn pass(
        &mut self,
        images: &Images,
        labels: &[u32],
        dropout_key: Option<u64>,
        grad_scale: f32,
    ) -> Result<()> {
        self.forward(images, labels, dropout_key, grad_scale)?;
        if dropout_key.is_some() {
            self.backward()?;
            if let Some(reduce) = &mut self.reduce {
                reduce.finish()?;
            }
        }
        // The pass's last exchange is behind: the next pass may overwrite
        // what this one sent once the other tower has read it.
        self.link.end_pass()
    }

    /// The loss statistics of every pass since the last take, oldest first
    /// (waits for the device).
    pub fn take_loss_stats(&mut self) -> Result<Vec<LossStats>> {
        self.device.take_loss_stats()
    }

    /// Forward pass over `labels.len()` images, then the loss. With
    /// `dropout_key` the pass is a training pass: dropout is on, and the
    /// gradient of the loss with respect to this tower's logits is kept for
    /// [`Tower::backward`], times `grad_scale`.
    fn forward(
        &mut self,
        images: &Images,
        labels: &[u32],
        dropout_key: Option<u64>,
        grad_scale: f32,
    ) -> Result<()> {
        // Before any work, so that both towers (given the same labels) fail
        // here alike, and before a device reads a logit out of bounds.
        check_labels(labels, self.plan.classes())?;
        let batch = labels.len();
        if batch != self.batch {
            // A batch of a new size (a short last one, say): the device is
            // drained (a GPU's wait is watched) and every convolution is made
            // ready for it before this pass queues anything, so that a search
            // a plan may need (cuDNN's waits for the GPU, unwatched) finds no
            // exchange pending that waits for the other tower.
            self.device.fence()?;
            prepare_convs(&mut self.device, &self.plan, batch)?;
            // Through the `ManuallyDrop`, so that the old buffers are dropped.
            let split = self.link.splits_input();
            *self.buffers = Buffers::new(&mut self.device, &self.plan, batch, split)?;
            self.batch = batch;
        }
        self.dropout_key = dropout_key;
        self.take_input(images, batch)?;
        let b = &mut *self.buffers;
        let rank = self.link.rank();
        let mut param_slot = 0;
        self.timings.fill(LayerTiming::default());
        for (i, layer) in self.plan.layers.iter().enumerate() {
            let start = Instant::now();
            let (before, rest) = b.outputs.split_at_mut(i);
            let y = &mut rest[0];
            let x = if i == 0 { &b.input } else { &before[i - 1] };
            let gathered = match b.gathered[i].as_mut() {
                Some(gathered) => {
                    let exchange = Instant::now();
                    self.link.all_gather(x, gathered)?;
                    if self.profile {
                        self.device.fence()?;
                        self.link.land()?;
                        self.device.fence()?;
                    }
                    self.timings[i].exchange_s += exchange.elapsed().as_secs_f64();
                    Some(&*gathered)
                }
                None => None,
            };
            let (link, profile, mut landed) = (&mut self.link, self.profile, false);
            let mut land = || {
                landed = true;
                if profile { Ok(()) } else { link.land() }
            };
            let x = match gathered {
                Some(gathered) => Input::Both(Gathering {
                    rank,
                    own: x,
                    gathered,
                    landed: &mut land,
                }),
                None => Input::Own(x),
            };
            let dev = &mut self.device;
            match &layer.op {
                Op::Conv(s) => {
                    let p = &self.params[param_slot];
                    dev.conv_forward(x, &p.weights, &p.bias, y, s, batch)?;
                }
                Op::Fc(s) => {
                    let p = &self.params[param_slot];
                    dev.fc_forward(x, &p.weights, &p.bias, y, s, batch)?;
                }
                Op::Relu => dev.relu_forward(x.landed()?, y)?,
                Op::Tanh => dev.tanh_forward(x.landed()?, y)?,
                Op::Lrn(s) => {
                    let scale = b.lrn_scales[i]
                        .as_mut()
                        .expect("LRN layers have a scale buffer");
                    dev.lrn_forward(x.landed()?, y, scale, s, batch)?;
                }
                Op::MaxPool(s) => dev.maxpool_forward(x.landed()?, y, s, batch)?,
                Op::Dropout { p } => {
                    let mask = match self.dropout_key {
                        Some(key) => mask(&self.plan, layer, i, *p, key, rank, self.shard),
                        None => DropoutMask::IDENTITY,
                    };
                    dev.dropout_forward(x.landed()?, y, &mask)?
                }
            }
            param_slot += usize::from(layer.has_params());
            if gathered.is_some() && !(landed || profile) {
                return Err(Error::Training(format!(
                    "the device computed {} without waiting for its gathered input",
                    layer.name
                )));
            }
            if self.profile {
                self.device.fence()?;
            }
            self.timings[i].forward_s = start.elapsed().as_secs_f64();
        }
        self.loss(labels, grad_scale)
    }

    /// The loss over both towers' logits (gathered here), and the gradient
    /// of this tower's own logits, times `grad_scale`.
    fn loss(&mut self, labels: &[u32], grad_scale: f32) -> Result<()> {
        let b = &mut *self.buffers;
        let start = Instant::now();
        let last = b.outputs.last().expect("a plan has layers");
        // A tower holding every class (a grouped plan) has nothing to gather.
        let logits = if self.plan.towers == 1 {
            last
        } else {
            let exchange = Instant::now();
            self.link.all_gather(last, &mut b.logits)?;
            self.link.land()?;
            self.timings[self.plan.layers.len()].exchange_s = exchange.elapsed().as_secs_f64();
            &b.logits
        };
        let dlogits = b.output_grads.last_mut().expect("a plan has layers");
        let per_tower = self.plan.logits_per_tower();
        self.device.softmax_cross_entropy(
            logits,
            labels,
            self.link.rank(),
            per_tower,
            grad_scale,
            dlogits,
        )?;
        if self.profile {
            self.device.fence()?;
        }
        self.timings[self.plan.layers.len()].forward_s = start.elapsed().as_secs_f64();
        Ok(())
    }

    /// Puts the batch's images into the input buffer: uploaded whole, or,
    /// where the towers split the upload, this tower's half uploaded and
    /// the other half gathered from the other tower.
    fn take_input(&mut self, images: &Images, batch: usize) -> Result<()> {
        let b = &mut *self.buffers;
        let Some(part) = b.input_part.as_mut() else {
            return upload(
                &mut self.device,
                (images, self.plan.input, batch),
                0..batch,
                &mut b.input,
            );
        };
        let (half, rank) = (batch / TOWERS, self.link.rank());
        upload(
            &mut self.device,
            (images, self.plan.input, batch),
            rank * half..(rank + 1) * half,
            part,
        )?;
        self.link.all_gather(part, &mut b.input)?;
        self.link.land()
    }

    /// Backward pass after a training [`Tower::forward`]: fills the parameter gradients.
    fn backward(&mut self) -> Result<()> {
        let (batch, rank) = (self.batch, self.link.rank());
        let b = &mut *self.buffers;
        let mut param_slot = self.params.len();
        for (i, layer) in self.plan.layers.iter().enumerate().rev() {
            let start = Instant::now();
            let (grads_before, grads_rest) = b.output_grads.split_at_mut(i);
            let dy = &grads_rest[0];
            let y = &b.outputs[i];
            let x = match &b.gathered[i] {
                Some(gathered) => gathered,
                None if i == 0 => &b.input,
                None => &b.outputs[i - 1],
            };
            // Where this layer's input gradient goes: the gathered buffer,
            // reduce-scattered into the previous layer's as soon as it is
            // queued (the weight gradients overlap it), or the previous
            // layer's directly, or nowhere.
            let (dx, mut reduce_into) = match b.gathered_grads[i].as_mut() {
                Some(full) => (Some(full), grads_before.last_mut()),
                None => (grads_before.last_mut(), None),
            };
            let (link, profile) = (&mut self.link, self.profile);
            let (mut exchange_s, mut started) = (0.0, false);
            // Profiling keeps the exchange apart from the gradients (below).
            let mut queued = |full: &D::Buf| -> Result<()> {
                let Some(own) = reduce_into.as_deref_mut().filter(|_| !profile) else {
                    return Ok(());
                };
                let exchange = Instant::now();
                link.reduce_scatter(full, own)?;
                exchange_s += exchange.elapsed().as_secs_f64();
                started = true;
                Ok(())
            };
            let dx = dx.map(|dx| InputGrad {
                dx,
                queued: &mut queued,
            });
            let dev = &mut self.device;
            param_slot -= usize::from(layer.has_params());
            match (&layer.op, dx) {
                (Op::Conv(s), dx) => {
                    let (p, g) = (&self.params[param_slot], &mut self.grads[param_slot]);
                    dev.conv_backward(
                        x,
                        &p.weights,
                        dy,
                        dx,
                        &mut g.weights,
                        &mut g.bias,
                        s,
                        batch,
                    )?;
                }
                (Op::Fc(s), dx) => {
                    let (p, g) = (&self.params[param_slot], &mut self.grads[param_slot]);
                    dev.fc_backward(x, &p.weights, dy, dx, &mut g.weights, &mut g.bias, s, batch)?;
                }
                // The first layer's input is the image: no gradient to pass on.
                (_, None) => {}
                // Only convolutions and fc layers read both towers, so these
                // have nothing to announce.
                (Op::Relu, Some(g)) => dev.relu_backward(y, dy, g.dx)?,
                (Op::Tanh, Some(g)) => dev.tanh_backward(y, dy, g.dx)?,
                (Op::Lrn(s), Some(g)) => {
                    let scale = b.lrn_scales[i]
                        .as_ref()
                        .expect("LRN layers have a scale buffer");
                    dev.lrn_backward(x, y, scale, dy, g.dx, s, batch)?;
                }
                (Op::MaxPool(s), Some(g)) => dev.maxpool_backward(x, y, dy, g.dx, s, batch)?,
                (Op::Dropout { p }, Some(g)) => {
                    let key = self
                        .dropout_key
                        .expect("backward follows a training forward");
                    let mask = mask(&self.plan, layer, i, *p, key, rank, self.shard);
                    dev.dropout_backward(dy, g.dx, &mask)?;
                }
            }
            if layer.has_params()
                && let Some(reduce) = &mut self.reduce
            {
                reduce.layer(&mut self.grads[param_slot], self.shard.share)?;
            }
            if let (Some(full), Some(own)) = (b.gathered_grads[i].as_ref(), reduce_into) {
                let exchange = Instant::now();
                if profile {
                    self.device.fence()?;
                    self.link.reduce_scatter(full, own)?;
                    self.device.fence()?;
                } else if !started {
                    return Err(Error::Training(format!(
                        "the device never started the reduce-scatter of {}'s input gradient",
                        layer.name
                    )));
                }
                self.link.land()?;
                if profile {
                    self.device.fence()?;
                }
                self.timings[i].exchange_s += exchange_s + exchange.elapsed().as_secs_f64();
            }
            if self.profile {
                self.device.fence()?;
            }
            self.timings[i].backward_s = start.elapsed().as_secs_f64();
        }
        Ok(())
    }

    /// One momentum-SGD step on every weight and bias (paper §5).
    fn update(&mut self, step: SgdStep) -> Result<()> {
        let start = Instant::now();
        for ((p, g), v) in self
            .params
            .iter_mut()
            .zip(self.grads.iter())
            .zip(self.momentum.iter_mut())
        {
            for ((w, gw), vw) in p.weights.iter_mut().zip(&g.weights).zip(&mut v.weights) {
                self.device.sgd_update(w, gw, vw, step)?;
            }
            self.device
                .sgd_update(&mut p.bias, &g.bias, &mut v.bias, step)?;
        }
        if self.profile {
            self.device.fence()?;
        }
        self.timings[self.plan.layers.len() + 1].backward_s = start.elapsed().as_secs_f64();
        Ok(())
    }

    /// With `on`, waits for the device after each layer so that
    /// [`Tower::timings`] measure compute, at the cost of the overlap
    /// between layers (no cost on the CPU, which runs synchronously).
    pub fn set_profile(&mut self, on: bool) {
        self.profile = on;
    }

    /// Per-layer wall times of the last step: one entry per layer, then the
    /// loss (logits exchange and softmax), then the update.
    pub fn timings(&self) -> &[LayerTiming] {
        &self.timings
    }

    /// The last forward pass's logits of both towers, `[image][class]`, class
    /// `t · per_tower + u` being unit `u` of tower `t` (the twin's order).
    pub fn logits(&mut self) -> Result<Vec<f32>> {
        let b = &*self.buffers;
        let towers = self.plan.towers;
        let held = if towers == 1 {
            b.outputs.last().expect("a plan has layers")
        } else {
            &b.logits
        };
        let gathered = self.device.download(held)?;
        let per_tower = self.plan.logits_per_tower();
        let mut logits = vec![0.0; gathered.len()];
        for (i, row) in gathered.chunks_exact(per_tower).enumerate() {
            let (t, n) = (i / self.batch, i % self.batch);
            logits[(n * towers + t) * per_tower..][..per_tower].copy_from_slice(row);
        }
        Ok(logits)
    }

    /// Replaces parameters, gradients or momentum with `host` (one tower's
    /// layout, as [`crate::net::params::split_twin`] gives), each weight
    /// block reordered for the device's layout.
    pub fn upload(&mut self, which: ParamSet, host: &[LayerParams<Vec<f32>>]) -> Result<()> {
        let set = match which {
            ParamSet::Weights => &mut self.params,
            ParamSet::Gradients => &mut self.grads,
            ParamSet::Momentum => &mut self.momentum,
        };
        let layout = self.device.layout();
        for ((layer, from), planned) in set.iter_mut().zip(host).zip(param_layers(&self.plan)) {
            for (w, h) in layer.weights.iter_mut().zip(&from.weights) {
                self.device.upload(&layout.to_device(planned, h), w)?;
            }
            self.device.upload(&from.bias, &mut layer.bias)?;
        }
        Ok(())
    }

    /// Parameters, gradients or momentum copied to the host, in the host's order.
    pub fn download(&mut self, which: ParamSet) -> Result<Vec<LayerParams<Vec<f32>>>> {
        let set = match which {
            ParamSet::Weights => &self.params,
            ParamSet::Gradients => &self.grads,
            ParamSet::Momentum => &self.momentum,
        };
        let layout = self.device.layout();
        set.iter()
            .zip(param_layers(&self.plan))
            .map(|(layer, planned)| {
                Ok(LayerParams {
                    weights: layer
                        .weights
                        .iter()
                        .map(|w| Ok(layout.from_device(planned, self.device.download(w)?)))
                        .collect::<Result<_>>()?,
                    bias: self.device.download(&layer.bias)?,
                })
            })
            .collect()
    }
}

impl<D: Device, L: Link<D::Buf>> Drop for Tower<D, L> {
    /// Frees the parameters and buffers unless the device says they must be
    /// leaked ([`Device::leak_on_drop`]: after a failure, the other tower's
    /// queued copies may still read them); then the fields drop in order,
    /// the link before the device.
    fn drop(&mut self) {
        if self.device.leak_on_drop() {
            return;
        }
        // SAFETY: each field is dropped once, here, and not used after.
        unsafe {
            ManuallyDrop::drop(&mut self.buffers);
            ManuallyDrop::drop(&mut self.momentum);
            ManuallyDrop::drop(&mut self.grads);
            ManuallyDrop::drop(&mut self.params);
        }
    }
}

/// Readies every convolution of `plan` for `batch` images
/// ([`Device::prepare_conv`]: a GPU chooses its algorithms here).
fn prepare_convs<D: Device>(device: &mut D, plan: &Plan, batch: usize) -> Result<()> {
    for (i, layer) in plan.layers.iter().enumerate() {
        if let Op::Conv(shape) = &layer.op {
            // The first layer's input is the image: no gradient for it.
            device.prepare_conv(shape, batch, i > 0)?;
        }
    }
    Ok(())
}

/// The plan's layers that have weights, in the order of a tower's parameters.
fn param_layers(plan: &Plan) -> impl Iterator<Item = &PlannedLayer> {
    plan.layers.iter().filter(|layer| layer.has_params())
}

/// Which per-parameter state to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamSet {
    Weights,
    Gradients,
    Momentum,
}

/// Fails unless every label names one of the net's `classes`.
fn check_labels(labels: &[u32], classes: usize) -> Result<()> {
    match labels.iter().position(|&l| l as usize >= classes) {
        None => Ok(()),
        Some(n) => Err(Error::Input(format!(
            "label {} of image {n} of the batch is out of range: the net has {classes} classes",
            labels[n]
        ))),
    }
}

/// Uploads images `range` of the `batch` in `images` (each of shape
/// `image`) into `y` (which holds exactly that many).
fn upload<D: Device>(
    device: &mut D,
    (images, image, batch): (&Images, Shape, usize),
    range: std::ops::Range<usize>,
    y: &mut D::Buf,
) -> Result<()> {
    match images {
        Images::F32(v) => {
            let per = v.len() / batch;
            device.input_from_f32(&v[range.start * per..range.end * per], image, y)
        }
        Images::U8 { pixels, offsets } => {
            let (per, offsets_per) = (pixels.len() / batch, offsets.len() / batch);
            device.input_from_u8(
                &pixels[range.start * per..range.end * per],
                &offsets[range.start * offsets_per..range.end * offsets_per],
                y,
            )
        }
    }
}
/// The dropout mask stream of layer `layer` in tower `rank` for a step keyed `step_key`.
pub fn dropout_key_for(step_key: u64, layer: usize, rank: usize) -> u64 {
    derive(derive(step_key, layer as u64), rank as u64)
}

/// The mask of dropout layer `index` (`layer`) at drop probability `p` in
/// tower `rank` of `plan` for a step keyed `step_key`: the tower's own, or,
/// where the tower holds both (a grouped plan), each tower's own for its
/// half of the units.
fn mask(
    plan: &Plan,
    layer: &PlannedLayer,
    index: usize,
    p: f32,
    step_key: u64,
    rank: usize,
    shard: Shard,
) -> DropoutMask {
    let run = layer.output.len() / plan.groups();
    let first = shard.first_image * run;
    let mask = if plan.groups() == 1 {
        DropoutMask::tower(p, dropout_key_for(step_key, index, rank), first)
    } else {
        let keys = std::array::from_fn(|t| dropout_key_for(step_key, index, t));
        DropoutMask::towers(p, keys, run, first)
    };
    match layer.output {
        Shape::Map { c, h, w } => mask.on_map(c, h * w),
        Shape::Flat(_) => mask,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cpu::CpuDevice;
    use crate::link::host::HostLink;
    use crate::net::init::init_twin;
    use crate::net::params::split_twin;
    use crate::net::spec::InitScheme;

    #[test]
    fn a_tower_allocates_what_the_buffer_table_lists() {
        let plan = Arc::new(Plan::load("small").unwrap());
        let params = split_twin(&plan, &init_twin(&plan, InitScheme::Paper, 1)).unwrap();
        let [link, _other] = HostLink::pair();
        let tower = Tower::new(
            Arc::clone(&plan),
            CpuDevice::<f32>::default(),
            link,
            3,
            &params[0],
        )
        .unwrap();
        let sizes = BufferSizes::new(&plan, 3);
        assert_eq!(
            tower.activation_elements(),
            sizes.kept() + sizes.gradients()
        );
    }

    #[test]
    fn a_label_out_of_range_is_an_error_before_the_pass() {
        let plan = Arc::new(Plan::load("small").unwrap());
        let params = split_twin(&plan, &init_twin(&plan, InitScheme::Paper, 1)).unwrap();
        let [link, _other] = HostLink::pair();
        let mut tower = Tower::new(
            Arc::clone(&plan),
            CpuDevice::<f32>::default(),
            link,
            2,
            &params[0],
        )
        .unwrap();
        let images = Images::from(vec![0.0; 2 * plan.input.len()]);
        let classes = plan.classes() as u32;
        let err = tower
            .step(&images, &[0, classes], Some(1), None, Shard::WHOLE, 0)
            .unwrap_err();
        assert!(err.is_input(), "{err}");
        assert!(
            err.to_string()
                .contains(&format!("label {classes} of image 1"))
        );
        assert!(check_labels(&[0, classes - 1], plan.classes()).is_ok());
    }

    /// Dropout on a feature map tells the device the map: one tower's
    /// channels in a tower's plan, both towers' in the grouped network's,
    /// whose two runs each cover one tower's half.
    #[test]
    fn a_mask_on_a_feature_map_carries_its_channels_and_plane() {
        let spec = crate::net::spec::NetSpec::parse(
            "name = \"drop\"\nlayers = [{type = \"conv\", name = \"c\", filters = 4, kernel = 3}, \
             {type = \"dropout\", p = 0.5}, {type = \"fc\", name = \"fc\", units = 2, both_towers = true}]\n\
             [input]\nchannels = 3\nsize = 16\n",
            std::path::Path::new("drop.toml"),
        )
        .unwrap();
        let towers = Plan::new(spec).unwrap();
        let grouped = towers.grouped().unwrap();
        for (plan, channels) in [(&towers, 4), (&grouped, 8)] {
            let (index, layer) = plan
                .layers
                .iter()
                .enumerate()
                .find(|(_, l)| matches!(l.op, Op::Dropout { .. }))
                .unwrap();
            let Shape::Map { h, w, .. } = layer.output else {
                panic!("dropout on the conv's map");
            };
            let m = mask(plan, layer, index, 0.5, 7, 0, Shard::WHOLE);
            assert_eq!(m.map, Some((channels, h * w)), "{} towers", plan.towers);
            let runs = if plan.groups() == 1 {
                (1, 1)
            } else {
                (2, 4 * h * w)
            };
            assert_eq!((m.groups, m.run), runs, "{} towers", plan.towers);
        }
        let fc = towers.layers.last().unwrap();
        assert_eq!(mask(&towers, fc, 2, 0.5, 7, 0, Shard::WHOLE).map, None);
    }
}
