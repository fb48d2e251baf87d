//! How one tower's layers run on an NVIDIA GPU: cuDNN convolutions, cuBLAS
//! fully connected layers, and our own kernels (`kernels/*.cu`) for LRN,
//! pooling, ReLU, dropout, the bias gradient, the loss and the update.
//!
//! TF32 policy: off unless asked for (`--precision tf32`). By default
//! convolutions use cuDNN's FMA math and cuBLAS its default f32 math, so
//! results compare with the CPU device to f32 rounding; with TF32, tensor
//! cores may round inputs to 10-bit mantissas. At `--precision bf16|fp16`
//! the device stores 16 bits beside f32 master weights (`half.rs`).
//!
//! Each tower's work runs in order on the tower's own stream, so cudarc's
//! cross-stream event tracking is turned off; links order the streams
//! themselves (CUDA events, or NCCL on the stream).
//!
//! The host runs ahead of the GPU: nothing in a training step waits for the
//! stream. The loss statistics stay on the GPU until
//! [`Device::take_loss_stats`] reads a run of them, and
//! [`Device::end_step`] bounds how many steps may be queued: it records an
//! event at each step's end and waits for the one recorded `queued` steps
//! earlier.

pub mod buffer;
pub mod conv;
pub mod fc;
mod half;
mod input;
pub mod kernels;
pub mod nccl_lib;
pub mod probe;

use super::layout::Layout;
use super::precision::{Precision, Storage};
use super::run_ahead::RunAhead;
use super::{Device, DropoutMask, Input, InputGrad, LossStats, SgdStep};
use crate::error::{Error, Result};
use crate::net::plan::{ConvShape, FcShape, LrnShape, PoolShape, Shape};
use crate::watch::Watch;
use buffer::StoredBuf;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaSlice, CudaStream, CudaView, DeviceRepr, DeviceSlice, LaunchConfig,
    ValidAsZeroBits,
};
use kernels::elementwise::bias_plane;
use kernels::reduce::{BiasGrad, Loss};
use kernels::{Kernels, Stored};
use std::marker::PhantomData;
use std::mem::ManuallyDrop;

pub use buffer::HalfBuf;
pub use conv::WORKSPACE_LIMIT;
pub use input::{LABEL_TURNS, TURNS as INPUT_TURNS};
use std::sync::Arc;

/// How a CUDA device computes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CudaOptions {
    /// Let cuDNN and cuBLAS use TF32 tensor cores (f32 storage).
    pub tf32: bool,
    /// How activations, gradients and weight copies are stored.
    pub storage: Storage,
}

impl CudaOptions {
    /// What `--precision` asks of a GPU.
    pub fn at(precision: Precision) -> CudaOptions {
        CudaOptions {
            tf32: precision == Precision::Tf32,
            storage: precision.storage(),
        }
    }

    /// The precision a device storing `S` runs at: 16-bit storage is
    /// bf16 or fp16; f32 storage is exact f32 or TF32 as asked.
    fn precision<S: Stored>(self) -> Precision {
        match S::STORAGE {
            Storage::Bf16 => Precision::Bf16,
            Storage::F16 => Precision::Fp16,
            Storage::Full if self.tf32 => Precision::Tf32,
            Storage::Full => Precision::Fp32,
        }
    }
}

/// The watch a device's waits answer to, and which tower it is.
struct Watched {
    watch: Arc<Watch>,
    rank: usize,
    /// The grouped network's one tower: no other tower to wait for.
    alone: bool,
}

/// One tower's GPU: its stream, kernels, cuDNN and cuBLAS state, storing
/// activations and gradients as `S` (f32, or 16 bits beside f32 master
/// weights: [`HalfBuf`]).
pub struct CudaDevice<S: Stored = f32> {
    stream: Arc<CudaStream>,
    kernels: Arc<Kernels>,
    /// Dropped by hand, or leaked after a failure (see the `Drop` impl).
    convs: ManuallyDrop<conv::Convolutions>,
    blas: ManuallyDrop<fc::Blas>,
    /// {−log p(label), top-1 hit, top-5 hit} of each image of the last loss.
    per_image: Option<CudaSlice<f64>>,
    /// Three sums per loss not yet taken, in order ([`Device::take_loss_stats`]).
    loss_sums: Option<CudaSlice<f64>>,
    losses_pending: usize,
    /// An event at the end of each queued step ([`Device::end_step`]).
    steps: RunAhead<CudaEvent>,
    /// Per-chunk sums of the bias gradient's first pass.
    bias_partials: Option<CudaSlice<f32>>,
    /// [`Device::all_finite`]'s flag, kept from step to step (cleared on
    /// the stream), so that no step allocates one while its collectives run.
    overflow: Option<CudaSlice<u32>>,
    /// The pair this tower belongs to and its rank: a wait for this stream
    /// polls, so that it ends when the other tower fails (its stream may
    /// hold NCCL work that waits for the other tower).
    watch: Option<Watched>,
    staging: input::Staging,
    storage: PhantomData<S>,
}

const THREADS: u32 = 256;

/// A grid-stride launch over `n` elements.
pub fn grid(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 1 << 16) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl<S: Stored> CudaDevice<S> {
    /// A device on GPU `ordinal`, with its own stream.
    pub fn new(ordinal: usize, options: CudaOptions) -> Result<Self> {
        if options.storage != S::STORAGE {
            return Err(Error::cuda(
                format!("opening GPU {ordinal}"),
                format!(
                    "a device storing {:?} asked to store {:?}",
                    S::STORAGE,
                    options.storage
                ),
            ));
        }
        probe::require_driver()?;
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| Error::cuda(format!("opening GPU {ordinal}"), e))?;
        // The tower's thread makes its device: bind the context to it once,
        // before cuDNN, cuBLAS (here) and NCCL (the link) are called raw.
        ctx.bind_to_thread()
            .map_err(|e| Error::cuda(format!("binding GPU {ordinal} to its tower's thread"), e))?;
        if S::STORAGE == Storage::Bf16 {
            let (major, minor) = ctx
                .compute_capability()
                .map_err(|e| Error::cuda("reading the compute capability", e))?;
            if major < 8 {
                return Err(Error::Input(format!(
                    "--precision bf16 needs a GPU of compute capability 8.0 or newer \
                     (GPU {ordinal} is {major}.{minor}); use fp16, tf32 or fp32"
                )));
            }
        }
        // SAFETY: every buffer of a tower is used on that tower's stream only;
        // links synchronize the streams themselves (module docs).
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| Error::cuda("creating a stream", e))?;
        let kernels = Arc::new(Kernels::load(&ctx)?);
        let precision = options.precision::<S>();
        let convs = conv::Convolutions::new(Arc::clone(&stream), precision)?;
        Ok(CudaDevice {
            blas: ManuallyDrop::new(fc::Blas::new(Arc::clone(&stream), precision)?),
            stream,
            kernels,
            convs: ManuallyDrop::new(convs),
            per_image: None,
            loss_sums: None,
            losses_pending: 0,
            steps: RunAhead::default(),
            bias_partials: None,
            overflow: None,
            watch: None,
            staging: input::Staging::new(&ctx)?,
            storage: PhantomData,
        })
    }

    /// This device as tower `rank` of the pair `watch` looks after: its
    /// waits give up when the other tower fails or stops answering.
    pub fn watched(mut self, watch: Arc<Watch>, rank: usize) -> Self {
        self.watch = Some(Watched {
            watch,
            rank,
            alone: false,
        });
        self
    }

    /// This device as the grouped network's one tower (rank 0 of `watch`):
    /// a wait past the timeout names the GPU's own queued work, for there
    /// is no other tower it waits for.
    pub fn watched_alone(mut self, watch: Arc<Watch>) -> Self {
        self.watch = Some(Watched {
            watch,
            rank: 0,
            alone: true,
        });
        self
    }

    /// Polls `done` under the watch, naming whom a timeout loses.
    fn poll(&self, watched: &Watched, done: impl FnMut() -> Result<bool>) -> Result<()> {
        let Watched { watch, rank, alone } = watched;
        if *alone {
            watch.poll_for(*rank, "its GPU ran the grouped network's queued work", done)
        } else {
            watch.poll(*rank, "the other tower waited for its GPU", done)
        }
    }

    /// Makes this device's context current on the calling thread (for raw
    /// library calls; the tower's thread is bound once in [`CudaDevice::new`]).
    pub fn bind(&self) -> Result<()> {
        self.stream
            .context()
            .bind_to_thread()
            .map_err(|e| Error::cuda("binding the GPU to this thread", e))
    }

    /// The stream this tower's work runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The loaded kernels (the emulation link adds with them).
    pub fn kernels(&self) -> &Arc<Kernels> {
        &self.kernels
    }

    /// Waits for everything queued on this device's stream; in a pair, by
    /// polling an event, never longer than the pair's timeout nor past the
    /// other tower's failure. Then reports any error cudarc kept from a call
    /// that could not return one (a drop's free, say).
    pub fn synchronize(&self) -> Result<()> {
        let failed = |e| Error::cuda("synchronizing the stream", e);
        match &self.watch {
            None => self.stream.synchronize().map_err(failed)?,
            Some(watched) => {
                let done = self.stream.record_event(None).map_err(failed)?;
                self.poll(watched, || done.try_is_complete().map_err(failed))?;
            }
        }
        self.stream
            .context()
            .check_err()
            .map_err(|e| Error::cuda("an earlier CUDA call, reported late", e))
    }

    /// Waits for the work `event` recorded on this stream: polled in a
    /// pair, as [`CudaDevice::synchronize`].
    fn wait_for(&self, event: &CudaEvent) -> Result<()> {
        let failed = |e| Error::cuda("waiting for a queued step", e);
        match &self.watch {
            None => event.synchronize().map_err(failed),
            Some(watched) => self.poll(watched, || event.try_is_complete().map_err(failed)),
        }
    }
}

impl<S: Stored> Drop for CudaDevice<S> {
    /// cuDNN's and cuBLAS's destroy calls synchronize the whole device,
    /// which after either tower of a pair has failed may wait for good (a
    /// stream held by NCCL work for a tower that is gone): their handles are
    /// then left to the process's end. Otherwise they are destroyed as
    /// usual (our handle types ignore a failed destroy).
    fn drop(&mut self) {
        let failed = self
            .watch
            .as_ref()
            .is_some_and(|w| w.watch.failure().is_some());
        if !failed {
            // SAFETY: each field is dropped once, here, and not used after.
            unsafe {
                ManuallyDrop::drop(&mut self.convs);
                ManuallyDrop::drop(&mut self.blas);
            }
        }
    }
}

/// Fails unless `buf` holds at least `len` elements.
pub(crate) fn need<T>(buf: &impl DeviceSlice<T>, len: usize, what: &str) -> Result<()> {
    if buf.len() < len {
        return Err(Error::cuda(
            what,
            format!("buffer of {} elements, {len} needed", buf.len()),
        ));
    }
    Ok(())
}

/// Where source `src`'s part of a buffer laid out `[source][len]` lies.
fn part(src: usize, len: usize) -> std::ops::Range<usize> {
    src * len..(src + 1) * len
}

/// Calls `f(source, part)` for each source tower's `in_len`-element part of
/// a layer's input: this tower's own part first, then, once the gathered
/// input has landed, the others', so that the all-gather overlaps the work
/// on the own part (§3.2).
fn by_source<B: StoredBuf>(
    x: Input<'_, B>,
    sources: usize,
    in_len: usize,
    mut f: impl FnMut(usize, &CudaView<'_, B::Elem>) -> Result<()>,
) -> Result<()> {
    match x {
        Input::Own(x) => {
            let x = x.stored()?;
            need(x, sources * in_len, "layer input")?;
            (0..sources).try_for_each(|src| f(src, &x.slice(part(src, in_len))))
        }
        Input::Both(g) => {
            let own = g.own.stored()?;
            need(own, in_len, "layer input")?;
            need(
                g.gathered.stored()?,
                sources * in_len,
                "gathered layer input",
            )?;
            f(g.rank, &own.slice(0..in_len))?;
            (g.landed)()?;
            let gathered = g.gathered.stored()?;
            (0..sources)
                .filter(|&src| src != g.rank)
                .try_for_each(|src| f(src, &gathered.slice(part(src, in_len))))
        }
    }
}

/// The bias gradient's partial sums, `slot`'s buffer grown to `len` where it is shorter.
fn partials<'a>(
    slot: &'a mut Option<CudaSlice<f32>>,
    stream: &Arc<CudaStream>,
    len: usize,
) -> Result<&'a mut CudaSlice<f32>> {
    if slot.as_ref().is_none_or(|p| p.len() < len) {
        // A smaller old buffer is freed in stream order, after the work queued on it.
        *slot = Some(
            stream
                .alloc_zeros(len)
                .map_err(|e| Error::cuda("allocating bias partial sums", e))?,
        );
    }
    slot.as_mut()
        .ok_or_else(|| Error::cuda("bias partial sums", "not allocated"))
}

/// A zeroed buffer of `len` elements on `stream`.
fn zeros<T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    len: usize,
    what: &str,
) -> Result<CudaSlice<T>> {
    stream
        .alloc_zeros(len)
        .map_err(|e| Error::cuda(format!("allocating {what}"), e))
}

pub(crate) fn u32_of(v: usize) -> u32 {
    u32::try_from(v).expect("layer dimensions fit in 32 bits")
}

impl Device for CudaDevice<f32> {
    type Buf = CudaSlice<f32>;

    fn alloc(&mut self, len: usize) -> Result<Self::Buf> {
        self.stream
            .alloc_zeros(len.max(1))
            .map_err(|e| Error::cuda(format!("allocating {len} floats"), e))
    }

    fn upload(&mut self, host: &[f32], dst: &mut Self::Buf) -> Result<()> {
        need(dst, host.len(), "upload")?;
        self.stream
            .memcpy_htod(host, dst)
            .map_err(|e| Error::cuda("copying to the GPU", e))
    }

    fn input_from_u8(&mut self, pixels: &[u8], offsets: &[f32], y: &mut Self::Buf) -> Result<()> {
        self.u8_input(pixels, offsets, y)
    }

    fn input_from_f32(&mut self, images: &[f32], _: Shape, y: &mut Self::Buf) -> Result<()> {
        self.f32_input(images, y, |device, staged, y| {
            device
                .stream
                .memcpy_dtod(staged, &mut y.slice_mut(..staged.len()))
                .map_err(|e| Error::cuda("copying the input", e))
        })
    }

    fn download(&mut self, src: &Self::Buf) -> Result<Vec<f32>> {
        // A copy to pageable memory (a Vec) returns only once it is done, a
        // wait for the stream that is not polled: drain the stream first by
        // the polled wait, so that the copy waits for nothing else.
        self.synchronize()?;
        self.stream
            .clone_dtoh(src)
            .map_err(|e| Error::cuda("copying from the GPU", e))
    }

    fn fence(&mut self) -> Result<()> {
        self.synchronize()
    }

    /// Once the pair has failed (or this tower's thread panics, before its
    /// failure is recorded), the other tower may have queued copies from
    /// this tower's buffers that this stream never waited for: freeing them
    /// here would let the pool hand their memory out while those copies
    /// read it (on one GPU both towers share a context and its pool, and an
    /// illegal address there is sticky, ending every later use of the GPU).
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
        let (in_len, out_len) = (
            batch * s.in_c * s.in_h * s.in_w,
            batch * s.out_c * s.out_h * s.out_w,
        );
        need(y, out_len, "conv output")?;
        need(bias, s.out_c, "conv bias")?;
        self.kernels.elementwise.bias_fill(
            &self.stream,
            y,
            bias,
            out_len,
            u32_of(s.out_c),
            u32_of(self.bias_plane(s)),
        )?;
        let convs = &mut self.convs;
        by_source(x, s.sources, in_len, |src, x_src| {
            convs.forward(s, batch, x_src, &w[src], y)
        })
    }

    /// The input gradient first, so that its reduce-scatter (started by
    /// `announce`) overlaps the weight and bias gradients.
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
        need(x, s.sources * in_len, "conv input")?;
        need(
            dy,
            batch * s.out_c * s.out_h * s.out_w,
            "conv output gradient",
        )?;
        if let Some(dx) = dx {
            need(dx.dx, s.sources * in_len, "conv input gradient")?;
            for (src, w) in w.iter().enumerate() {
                let mut dx_src = dx.dx.slice_mut(part(src, in_len));
                self.convs.backward_data(s, batch, w, dy, &mut dx_src)?;
            }
            dx.announce()?;
        }
        self.conv_bias_grad(dy, dbias, batch, s)?;
        for (src, dw) in dw.iter_mut().enumerate() {
            let x_src = x.slice(part(src, in_len));
            self.convs.backward_filter(s, batch, &x_src, dy, dw)?;
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
        need(y, batch * s.outputs, "fc output")?;
        need(bias, s.outputs, "fc bias")?;
        self.kernels.elementwise.bias_fill(
            &self.stream,
            y,
            bias,
            batch * s.outputs,
            u32_of(s.outputs),
            1,
        )?;
        let dims = [batch, s.inputs, s.outputs];
        let blas = &mut self.blas;
        by_source(x, s.sources, in_len, |src, x_src| {
            blas.forward(dims, x_src, &w[src], y)
        })
    }

    /// The input gradient first, as in `conv_backward`.
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
        need(x, s.sources * in_len, "fc input")?;
        need(dy, batch * s.outputs, "fc output gradient")?;
        let dims = [batch, s.inputs, s.outputs];
        if let Some(dx) = dx {
            need(dx.dx, s.sources * in_len, "fc input gradient")?;
            for (src, w) in w.iter().enumerate() {
                let mut dx_src = dx.dx.slice_mut(part(src, in_len));
                self.blas.input_grad(dims, w, dy, &mut dx_src)?;
            }
            dx.announce()?;
        }
        self.bias_grad(dy, dbias, batch, s.outputs, 1)?;
        for (src, dw) in dw.iter_mut().enumerate() {
            self.blas
                .weight_grad(dims, &x.slice(part(src, in_len)), dy, dw)?;
        }
        Ok(())
    }

    fn relu_forward(&mut self, x: &Self::Buf, y: &mut Self::Buf) -> Result<()> {
        self.kernels
            .elementwise
            .activation_forward(&self.stream, false, x, y)
    }

    fn relu_backward(&mut self, y: &Self::Buf, dy: &Self::Buf, dx: &mut Self::Buf) -> Result<()> {
        self.kernels
            .elementwise
            .activation_backward(&self.stream, false, y, dy, dx)
    }

    fn tanh_forward(&mut self, x: &Self::Buf, y: &mut Self::Buf) -> Result<()> {
        self.kernels
            .elementwise
            .activation_forward(&self.stream, true, x, y)
    }

    fn tanh_backward(&mut self, y: &Self::Buf, dy: &Self::Buf, dx: &mut Self::Buf) -> Result<()> {
        self.kernels
            .elementwise
            .activation_backward(&self.stream, true, y, dy, dx)
    }

    fn lrn_forward(
        &mut self,
        x: &Self::Buf,
        y: &mut Self::Buf,
        scale: &mut Self::Buf,
        s: &LrnShape,
        batch: usize,
    ) -> Result<()> {
        let layout = self.data_layout();
        self.kernels
            .lrn
            .forward(&self.stream, x, y, scale, s, batch, layout)
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
        let layout = self.data_layout();
        self.kernels
            .lrn
            .backward(&self.stream, x, y, scale, dy, dx, s, batch, layout)
    }

    fn maxpool_forward(
        &mut self,
        x: &Self::Buf,
        y: &mut Self::Buf,
        s: &PoolShape,
        batch: usize,
    ) -> Result<()> {
        let layout = self.data_layout();
        self.kernels
            .pool
            .forward(&self.stream, x, y, s, batch, layout)
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
        let layout = self.data_layout();
        self.kernels
            .pool
            .backward(&self.stream, x, y, dy, dx, s, batch, layout)
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
            .dropout(&self.stream, x, y, mask, layout)
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
            .dropout(&self.stream, dy, dx, mask, layout)
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
        self.loss(logits, labels, tower, per_tower, grad_scale, dlogits)
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

    fn sgd_update(
        &mut self,
        w: &mut Self::Buf,
        g: &Self::Buf,
        v: &mut Self::Buf,
        step: SgdStep,
    ) -> Result<()> {
        self.kernels
            .elementwise
            .sgd_update(&self.stream, w, g, v, step)
    }
}

impl<S: Stored> CudaDevice<S> {
    /// [`Device::leak_on_drop`] at any storage.
    fn leaks(&self) -> bool {
        self.watch
            .as_ref()
            .is_some_and(|w| w.watch.failure().is_some() || std::thread::panicking())
    }

    /// [`Device::softmax_cross_entropy`] at any storage: the softmax and
    /// the loss in f32 (f64 sums), `dlogits` rounded once as it stores.
    #[allow(clippy::too_many_arguments)]
    fn loss(
        &mut self,
        logits: &CudaSlice<S>,
        labels: &[u32],
        tower: usize,
        per_tower: usize,
        grad_scale: f32,
        dlogits: &mut CudaSlice<S>,
    ) -> Result<()> {
        let batch = labels.len();
        let shape = Loss {
            batch,
            towers: logits.len() / (batch * per_tower).max(1),
            per_tower,
            tower,
            grad_scale,
        };
        let turn = self.stage_labels(labels)?;
        let stream = &self.stream;
        if self.per_image.as_ref().is_none_or(|l| l.len() != 3 * batch) {
            // An older buffer is freed in stream order, after the work queued on it.
            self.per_image = Some(zeros(stream, 3 * batch, "loss statistics")?);
        }
        let at = 3 * self.losses_pending;
        if self.loss_sums.as_ref().is_none_or(|s| s.len() < at + 3) {
            // Room for twice as many losses, the pending ones copied over in
            // stream order (the old buffer is freed after the copy).
            let mut grown = zeros(stream, 2 * (at + 3), "loss sums")?;
            if let Some(old) = &self.loss_sums {
                stream
                    .memcpy_dtod(&old.slice(..at), &mut grown.slice_mut(..at))
                    .map_err(|e| Error::cuda("keeping loss sums", e))?;
            }
            self.loss_sums = Some(grown);
        }
        let device_labels = self.staging.labels(turn)?;
        let (Some(per_image), Some(sums)) = (self.per_image.as_mut(), self.loss_sums.as_mut())
        else {
            return Err(Error::cuda("the loss", "its buffers were not allocated"));
        };
        let reduce = &self.kernels.reduce;
        reduce.softmax_cross_entropy(stream, logits, device_labels, dlogits, per_image, shape)?;
        // The next loss overwrites `per_image` after this sum, in stream order.
        reduce.loss_stats_sum(stream, per_image, batch, &mut sums.slice_mut(at..at + 3))?;
        self.losses_pending += 1;
        Ok(())
    }

    /// [`Device::take_loss_stats`] at any storage.
    fn loss_stats(&mut self) -> Result<Vec<LossStats>> {
        let pending = std::mem::take(&mut self.losses_pending);
        let Some(sums) = self.loss_sums.as_ref().filter(|_| pending > 0) else {
            return Ok(Vec::new());
        };
        // As in `download`: the polled wait first (the logits came from the
        // other tower), then the copy of a drained stream, done on return.
        self.synchronize()?;
        let host = self
            .stream
            .clone_dtoh(&sums.slice(..3 * pending))
            .map_err(|e| Error::cuda("copying loss statistics", e))?;
        // The hit counts are whole numbers below 2^53, exact in f64.
        Ok(host
            .chunks_exact(3)
            .map(|s| LossStats {
                loss_sum: s[0],
                top1: s[1] as usize,
                top5: s[2] as usize,
            })
            .collect())
    }

    /// [`Device::end_step`] at any storage.
    fn step_ended(&mut self, queued: usize) -> Result<()> {
        let event = self
            .stream
            .record_event(None)
            .map_err(|e| Error::cuda("marking the end of a step", e))?;
        let mut steps = std::mem::take(&mut self.steps);
        let waited = steps.end_step(event, queued, |oldest| self.wait_for(oldest));
        self.steps = steps;
        waited
    }

    /// [`Device::all_finite`] at any storage: one flag for all of `bufs`,
    /// read back once.
    fn finite<B: StoredBuf<Elem = S>>(&mut self, bufs: &[&B]) -> Result<bool> {
        let mut flag = match self.overflow.take() {
            Some(mut flag) => {
                // The last step's read of it is done: it was copied back.
                self.stream
                    .memset_zeros(&mut flag)
                    .map_err(|e| Error::cuda("clearing the overflow flag", e))?;
                flag
            }
            None => zeros::<u32>(&self.stream, 1, "overflow flag")?,
        };
        for buf in bufs {
            self.kernels
                .elementwise
                .flag_nonfinite(&self.stream, buf.stored()?, &mut flag)?;
        }
        // As in `download`: the polled wait, then the copy of a drained stream.
        self.synchronize()?;
        let host = self
            .stream
            .clone_dtoh(&flag)
            .map_err(|e| Error::cuda("copying the overflow flag", e))?;
        self.overflow = Some(flag);
        Ok(host.first() == Some(&0))
    }

    /// How this device orders feature maps: [`Layout::on_gpu`] of its storage.
    pub(crate) fn data_layout(&self) -> Layout {
        Layout::on_gpu(S::STORAGE)
    }

    /// The `plane` of the `bias_fill` kernel for convolution `s`'s output.
    fn bias_plane(&self, s: &ConvShape) -> usize {
        bias_plane(self.data_layout(), s.out_h * s.out_w)
    }

    /// Convolution `s`'s bias gradient from `dy`, in this device's layout.
    fn conv_bias_grad(
        &mut self,
        dy: &CudaSlice<S>,
        dbias: &mut CudaSlice<S>,
        batch: usize,
        s: &ConvShape,
    ) -> Result<()> {
        let plane = s.out_h * s.out_w;
        match self.data_layout() {
            Layout::Nchw => self.bias_grad(dy, dbias, batch, s.out_c, plane),
            Layout::Nhwc => self.bias_grad_rows(dy, dbias, batch * plane, s.out_c),
        }
    }

    /// `dbias[c] = Σ dy[n][c][p]` in two deterministic passes: blocks over
    /// (chunk of images, channel) into partial sums, then each channel's
    /// chunks in order; one pass straight into `dbias` where one chunk
    /// already fills the GPU.
    fn bias_grad(
        &mut self,
        dy: &CudaSlice<S>,
        dbias: &mut CudaSlice<S>,
        batch: usize,
        channels: usize,
        plane: usize,
    ) -> Result<()> {
        let shape = BiasGrad::over_images(batch, channels, plane);
        let chunks = shape.chunks;
        let reduce = &self.kernels.reduce;
        // With one chunk, the first pass's f32 sums are an f32 gradient already.
        if chunks == 1
            && let Some(dbias) = (dbias as &mut dyn std::any::Any).downcast_mut::<CudaSlice<f32>>()
        {
            return reduce.bias_grad_partial(&self.stream, dy, dbias, shape);
        }
        let partials = partials(&mut self.bias_partials, &self.stream, channels * chunks)?;
        reduce.bias_grad_partial(&self.stream, dy, partials, shape)?;
        reduce.bias_grad_finish(&self.stream, partials, dbias, shape)
    }

    /// `dbias[c] = Σ dy[r][c]` over the `rows` of a channels-last map, in
    /// two deterministic passes: chunks of rows ([`BiasGrad::over_rows`]), each
    /// summed in row order, then each channel's chunks in order.
    fn bias_grad_rows(
        &mut self,
        dy: &CudaSlice<S>,
        dbias: &mut CudaSlice<S>,
        rows: usize,
        channels: usize,
    ) -> Result<()> {
        let shape = BiasGrad::over_rows(rows, channels);
        let reduce = &self.kernels.reduce;
        let partials = partials(
            &mut self.bias_partials,
            &self.stream,
            channels * shape.chunks,
        )?;
        reduce.bias_grad_rows_partial(&self.stream, dy, partials, shape)?;
        reduce.bias_grad_finish(&self.stream, partials, dbias, shape)
    }
}
