//! How one tower's layers run on an NVIDIA GPU: cuDNN convolutions, cuBLAS
//! fully connected layers, and our own kernels (`kernels/*.cu`) for LRN,
//! pooling, ReLU, dropout, the bias gradient, the loss and the update.
//!
//! TF32 policy: off unless asked for (`--tf32`). By default convolutions use
//! cuDNN's FMA math and cuBLAS its default f32 math, so results compare with
//! the CPU device to f32 rounding; with TF32, tensor cores may round inputs
//! to 10-bit mantissas.
//!
//! Each tower's work runs in order on the tower's own stream, so cudarc's
//! cross-stream event tracking is turned off; links synchronize explicitly.

mod conv;
mod fc;
mod input;
pub mod kernels;
pub mod probe;

use super::{Device, LossStats, SgdStep};
use crate::error::{Error, Result};
use crate::link::watch::Watch;
use crate::net::plan::{ConvShape, FcShape, LrnShape, PoolShape};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use kernels::Kernels;
use std::mem::ManuallyDrop;

pub use conv::WORKSPACE_LIMIT;
use std::sync::Arc;

/// How a CUDA device computes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CudaOptions {
    /// Let cuDNN and cuBLAS use TF32 tensor cores.
    pub tf32: bool,
}

/// One tower's GPU: its stream, kernels, cuDNN and cuBLAS state.
pub struct CudaDevice {
    stream: Arc<CudaStream>,
    kernels: Arc<Kernels>,
    /// Dropped by hand (see the `Drop` impl): cudarc unwraps the result of
    /// cuDNN's and cuBLAS's destroy calls.
    convs: ManuallyDrop<conv::Convolutions>,
    blas: ManuallyDrop<fc::Blas>,
    labels: Option<CudaSlice<u32>>,
    stats: Option<CudaSlice<f64>>,
    /// Per-chunk sums of the bias gradient's first pass.
    bias_partials: Option<CudaSlice<f32>>,
    /// The pair this tower belongs to and its rank: a wait for this stream
    /// polls, so that it ends when the other tower fails (its stream may
    /// hold NCCL work that waits for the other tower).
    watch: Option<(Arc<Watch>, usize)>,
    staging: input::Staging,
}

const THREADS: u32 = 256;

/// Blocks a reduction aims for: enough to fill every SM of a large GPU
/// several times over.
const FILL_BLOCKS: usize = 1024;

/// A grid-stride launch over `n` elements.
pub fn grid(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 1 << 16) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaDevice {
    /// A device on GPU `ordinal`, with its own stream.
    pub fn new(ordinal: usize, options: CudaOptions) -> Result<Self> {
        probe::require_driver()?;
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| Error::cuda(format!("opening GPU {ordinal}"), e))?;
        // The tower's thread makes its device: bind the context to it once,
        // before cuDNN, cuBLAS (here) and NCCL (the link) are called raw.
        ctx.bind_to_thread()
            .map_err(|e| Error::cuda(format!("binding GPU {ordinal} to its tower's thread"), e))?;
        // SAFETY: every buffer of a tower is used on that tower's stream only;
        // links synchronize the streams themselves (module docs).
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| Error::cuda("creating a stream", e))?;
        let kernels = Arc::new(Kernels::load(&ctx)?);
        let convs = conv::Convolutions::new(Arc::clone(&stream), options.tf32)?;
        let blas = CudaBlas::new(Arc::clone(&stream)).map_err(|e| Error::cuda("cuBLAS", e))?;
        Ok(CudaDevice {
            blas: ManuallyDrop::new(fc::Blas::new(blas, options.tf32)?),
            stream,
            kernels,
            convs: ManuallyDrop::new(convs),
            labels: None,
            stats: None,
            bias_partials: None,
            watch: None,
            staging: input::Staging::default(),
        })
    }

    /// This device as tower `rank` of the pair `watch` looks after: its
    /// waits give up when the other tower fails or stops answering.
    pub fn watched(mut self, watch: Arc<Watch>, rank: usize) -> Self {
        self.watch = Some((watch, rank));
        self
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
    /// other tower's failure.
    pub fn synchronize(&self) -> Result<()> {
        let failed = |e| Error::cuda("synchronizing the stream", e);
        let Some((watch, rank)) = &self.watch else {
            return self.stream.synchronize().map_err(failed);
        };
        let done = self.stream.record_event(None).map_err(failed)?;
        watch.poll(*rank, "the other tower waited for its GPU", || {
            done.try_is_complete().map_err(failed)
        })
    }

    fn ptr<T>(&self, buf: &CudaSlice<T>) -> u64 {
        buf.device_ptr(&self.stream).0
    }

    /// Launches `f` on this stream over `n` elements with the given arguments.
    fn launch(
        &self,
        f: &CudaFunction,
        config: LaunchConfig,
        args: &[&dyn KernelArg],
    ) -> Result<()> {
        launch(&self.stream, f, config, args)
    }
}

impl Drop for CudaDevice {
    /// After either tower of a pair has failed, the GPU may be in an error
    /// state in which cuDNN's and cuBLAS's destroy calls fail, and cudarc
    /// unwraps them (a panic in a drop): their handles are then left to the
    /// process's end. Otherwise they are destroyed as usual.
    fn drop(&mut self) {
        let failed = self
            .watch
            .as_ref()
            .is_some_and(|(watch, _)| watch.failure().is_some());
        if !failed {
            // SAFETY: each field is dropped once, here, and not used after.
            unsafe {
                ManuallyDrop::drop(&mut self.convs);
                ManuallyDrop::drop(&mut self.blas);
            }
        }
    }
}

/// A kernel argument: a device pointer or a scalar.
pub trait KernelArg {
    fn push<'a>(&'a self, builder: &mut cudarc::driver::LaunchArgs<'a>);
}

macro_rules! kernel_arg {
    ($($t:ty),*) => {$(
        impl KernelArg for $t {
            fn push<'a>(&'a self, builder: &mut cudarc::driver::LaunchArgs<'a>) {
                builder.arg(self);
            }
        }
    )*};
}
kernel_arg!(u64, u32, f32);

/// Launches `f` on `stream`.
pub fn launch(
    stream: &CudaStream,
    f: &CudaFunction,
    config: LaunchConfig,
    args: &[&dyn KernelArg],
) -> Result<()> {
    let mut builder = stream.launch_builder(f);
    for arg in args {
        arg.push(&mut builder);
    }
    // SAFETY: every caller passes the argument list its kernel declares, with
    // buffers whose lengths the caller checked.
    unsafe { builder.launch(config) }
        .map(|_| ())
        .map_err(|e| Error::cuda("launching a kernel", e))
}

/// Fails unless `buf` holds at least `len` elements.
fn need<T>(buf: &CudaSlice<T>, len: usize, what: &str) -> Result<()> {
    if buf.len() < len {
        return Err(Error::cuda(
            what,
            format!("buffer of {} elements, {len} needed", buf.len()),
        ));
    }
    Ok(())
}

fn u32_of(v: usize) -> u32 {
    u32::try_from(v).expect("layer dimensions fit in 32 bits")
}

impl Device for CudaDevice {
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

    fn download(&mut self, src: &Self::Buf) -> Result<Vec<f32>> {
        // cudarc's copy to a Vec ends in a blocking stream synchronize: drain
        // the stream first by the polled wait, so that it waits for the copy
        // alone.
        self.synchronize()?;
        let host = self
            .stream
            .clone_dtoh(src)
            .map_err(|e| Error::cuda("copying from the GPU", e))?;
        self.synchronize()?;
        Ok(host)
    }

    fn fence(&mut self) -> Result<()> {
        self.synchronize()
    }

    fn prepare_conv(&mut self, shape: &ConvShape, batch: usize) -> Result<()> {
        self.convs.search(shape, batch)
    }

    fn conv_forward(
        &mut self,
        x: &Self::Buf,
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
        need(x, s.sources * in_len, "conv input")?;
        need(y, out_len, "conv output")?;
        need(bias, s.out_c, "conv bias")?;
        self.bias_fill(y, bias, out_len, s.out_c, s.out_h * s.out_w)?;
        for (src, w) in w.iter().enumerate() {
            need(w, s.block_len(), "conv weights")?;
            let x_src = self.ptr(x) + (src * in_len * 4) as u64;
            let (w, y) = (self.ptr(w), self.ptr(y));
            self.convs.forward(s, batch, x_src, w, y)?;
        }
        Ok(())
    }

    fn conv_backward(
        &mut self,
        x: &Self::Buf,
        w: &[Self::Buf],
        dy: &Self::Buf,
        dx: Option<&mut Self::Buf>,
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
        self.bias_grad(dy, dbias, batch, s.out_c, s.out_h * s.out_w)?;
        let dy_ptr = self.ptr(dy);
        for (src, dw) in dw.iter().enumerate() {
            need(dw, s.block_len(), "conv weight gradient")?;
            let x_src = self.ptr(x) + (src * in_len * 4) as u64;
            let dw_src = self.ptr(dw);
            self.convs
                .backward_filter(s, batch, x_src, dy_ptr, dw_src)?;
        }
        if let Some(dx) = dx {
            need(dx, s.sources * in_len, "conv input gradient")?;
            for (src, w) in w.iter().enumerate() {
                let dx_src = self.ptr(dx) + (src * in_len * 4) as u64;
                let w = self.ptr(w);
                self.convs.backward_data(s, batch, w, dy_ptr, dx_src)?;
            }
        }
        Ok(())
    }

    fn fc_forward(
        &mut self,
        x: &Self::Buf,
        w: &[Self::Buf],
        bias: &Self::Buf,
        y: &mut Self::Buf,
        s: &FcShape,
        batch: usize,
    ) -> Result<()> {
        let in_len = batch * s.inputs;
        need(x, s.sources * in_len, "fc input")?;
        need(y, batch * s.outputs, "fc output")?;
        need(bias, s.outputs, "fc bias")?;
        self.bias_fill(y, bias, batch * s.outputs, s.outputs, 1)?;
        for (src, w) in w.iter().enumerate() {
            need(w, s.block_len(), "fc weights")?;
            let x_src = self.ptr(x) + (src * in_len * 4) as u64;
            self.blas
                .forward(batch, s.inputs, s.outputs, x_src, self.ptr(w), self.ptr(y))?;
        }
        Ok(())
    }

    fn fc_backward(
        &mut self,
        x: &Self::Buf,
        w: &[Self::Buf],
        dy: &Self::Buf,
        dx: Option<&mut Self::Buf>,
        dw: &mut [Self::Buf],
        dbias: &mut Self::Buf,
        s: &FcShape,
        batch: usize,
    ) -> Result<()> {
        let in_len = batch * s.inputs;
        need(x, s.sources * in_len, "fc input")?;
        need(dy, batch * s.outputs, "fc output gradient")?;
        self.bias_grad(dy, dbias, batch, s.outputs, 1)?;
        let dy_ptr = self.ptr(dy);
        for (src, dw) in dw.iter().enumerate() {
            need(dw, s.block_len(), "fc weight gradient")?;
            let x_src = self.ptr(x) + (src * in_len * 4) as u64;
            self.blas
                .weight_grad(batch, s.inputs, s.outputs, x_src, dy_ptr, self.ptr(dw))?;
        }
        if let Some(dx) = dx {
            need(dx, s.sources * in_len, "fc input gradient")?;
            for (src, w) in w.iter().enumerate() {
                let dx_src = self.ptr(dx) + (src * in_len * 4) as u64;
                self.blas
                    .input_grad(batch, s.inputs, s.outputs, self.ptr(w), dy_ptr, dx_src)?;
            }
        }
        Ok(())
    }

    fn relu_forward(&mut self, x: &Self::Buf, y: &mut Self::Buf) -> Result<()> {
        let n = x.len();
        need(y, n, "relu output")?;
        let (x, y, len) = (self.ptr(x), self.ptr(y), n as u64);
        self.launch(&self.kernels.relu_forward, grid(n), &[&x, &y, &len])
    }

    fn relu_backward(&mut self, y: &Self::Buf, dy: &Self::Buf, dx: &mut Self::Buf) -> Result<()> {
        let n = y.len();
        need(dy, n, "relu output gradient")?;
        need(dx, n, "relu input gradient")?;
        let (y, dy, dx, len) = (self.ptr(y), self.ptr(dy), self.ptr(dx), n as u64);
        self.launch(&self.kernels.relu_backward, grid(n), &[&y, &dy, &dx, &len])
    }

    fn tanh_forward(&mut self, x: &Self::Buf, y: &mut Self::Buf) -> Result<()> {
        let n = x.len();
        need(y, n, "tanh output")?;
        let (x, y, len) = (self.ptr(x), self.ptr(y), n as u64);
        self.launch(&self.kernels.tanh_forward, grid(n), &[&x, &y, &len])
    }

    fn tanh_backward(&mut self, y: &Self::Buf, dy: &Self::Buf, dx: &mut Self::Buf) -> Result<()> {
        let n = y.len();
        need(dy, n, "tanh output gradient")?;
        need(dx, n, "tanh input gradient")?;
        let (y, dy, dx, len) = (self.ptr(y), self.ptr(dy), self.ptr(dx), n as u64);
        self.launch(&self.kernels.tanh_backward, grid(n), &[&y, &dy, &dx, &len])
    }

    fn lrn_forward(
        &mut self,
        x: &Self::Buf,
        y: &mut Self::Buf,
        scale: &mut Self::Buf,
        s: &LrnShape,
        batch: usize,
    ) -> Result<()> {
        let n = batch * s.c * s.plane;
        for (buf, what) in [
            (x, "lrn input"),
            (&*y, "lrn output"),
            (&*scale, "lrn scale"),
        ] {
            need(buf, n, what)?;
        }
        let (x, y, scale) = (self.ptr(x), self.ptr(y), self.ptr(scale));
        let dims = [batch, s.c, s.plane, s.size].map(u32_of);
        self.launch(
            &self.kernels.lrn_forward,
            grid(n),
            &[
                &x, &y, &scale, &dims[0], &dims[1], &dims[2], &dims[3], &s.alpha, &s.beta, &s.k,
            ],
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
        let n = batch * s.c * s.plane;
        for (buf, what) in [
            (x, "lrn input"),
            (y, "lrn output"),
            (scale, "lrn scale"),
            (dy, "lrn output gradient"),
            (&*dx, "lrn input gradient"),
        ] {
            need(buf, n, what)?;
        }
        let ptrs = [x, y, scale, dy, &*dx].map(|b| self.ptr(b));
        let dims = [batch, s.c, s.plane, s.size].map(u32_of);
        self.launch(
            &self.kernels.lrn_backward,
            grid(n),
            &[
                &ptrs[0], &ptrs[1], &ptrs[2], &ptrs[3], &ptrs[4], &dims[0], &dims[1], &dims[2],
                &dims[3], &s.alpha, &s.beta,
            ],
        )
    }

    fn maxpool_forward(
        &mut self,
        x: &Self::Buf,
        y: &mut Self::Buf,
        s: &PoolShape,
        batch: usize,
    ) -> Result<()> {
        let planes = batch * s.c;
        need(x, planes * s.in_h * s.in_w, "pool input")?;
        need(y, planes * s.out_h * s.out_w, "pool output")?;
        let (x, y, p) = (self.ptr(x), self.ptr(y), planes as u64);
        let d = [s.in_h, s.in_w, s.size, s.stride, s.out_h, s.out_w].map(u32_of);
        self.launch(
            &self.kernels.maxpool_forward,
            grid(planes * s.out_h * s.out_w),
            &[&x, &y, &p, &d[0], &d[1], &d[2], &d[3], &d[4], &d[5]],
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
        let planes = batch * s.c;
        let (in_len, out_len) = (planes * s.in_h * s.in_w, planes * s.out_h * s.out_w);
        need(x, in_len, "pool input")?;
        need(dx, in_len, "pool input gradient")?;
        need(y, out_len, "pool output")?;
        need(dy, out_len, "pool output gradient")?;
        let ptrs = [x, y, dy, &*dx].map(|b| self.ptr(b));
        let p = planes as u64;
        let d = [s.in_h, s.in_w, s.size, s.stride, s.out_h, s.out_w].map(u32_of);
        self.launch(
            &self.kernels.maxpool_backward,
            grid(in_len),
            &[
                &ptrs[0], &ptrs[1], &ptrs[2], &ptrs[3], &p, &d[0], &d[1], &d[2], &d[3], &d[4],
                &d[5],
            ],
        )
    }

    fn dropout_forward(
        &mut self,
        x: &Self::Buf,
        y: &mut Self::Buf,
        p: f32,
        key: u64,
    ) -> Result<()> {
        self.dropout(x, y, p, key)
    }

    fn dropout_backward(
        &mut self,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
        p: f32,
        key: u64,
    ) -> Result<()> {
        self.dropout(dy, dx, p, key)
    }

    fn softmax_cross_entropy(
        &mut self,
        logits: &Self::Buf,
        labels: &[u32],
        tower: usize,
        per_tower: usize,
        dlogits: &mut Self::Buf,
    ) -> Result<LossStats> {
        let batch = labels.len();
        let towers = logits.len() / (batch * per_tower);
        need(dlogits, batch * per_tower, "logit gradient")?;
        if self.labels.as_ref().is_none_or(|l| l.len() != batch) {
            self.labels = Some(
                self.stream
                    .alloc_zeros(batch)
                    .map_err(|e| Error::cuda("allocating labels", e))?,
            );
            self.stats = Some(
                self.stream
                    .alloc_zeros(3 * batch)
                    .map_err(|e| Error::cuda("allocating loss statistics", e))?,
            );
        }
        if let Some(device_labels) = self.labels.as_mut() {
            self.stream
                .memcpy_htod(labels, device_labels)
                .map_err(|e| Error::cuda("copying labels", e))?;
        }
        let (Some(device_labels), Some(stats)) = (self.labels.as_ref(), self.stats.as_ref()) else {
            unreachable!("allocated above");
        };
        let ptrs = [
            self.ptr(logits),
            self.ptr(device_labels),
            self.ptr(dlogits),
            self.ptr(stats),
        ];
        let d = [batch, towers, per_tower, tower].map(u32_of);
        // One block of 256 threads per image (kernels/reduce.cu).
        let config = LaunchConfig {
            grid_dim: (u32_of(batch.min(65_535)), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch(
            &self.kernels.softmax_cross_entropy,
            config,
            &[
                &ptrs[0], &ptrs[1], &ptrs[2], &ptrs[3], &d[0], &d[1], &d[2], &d[3],
            ],
        )?;
        // As in `download`: the polled wait first (the logits came by NCCL).
        self.synchronize()?;
        let per_image = self
            .stream
            .clone_dtoh(stats)
            .map_err(|e| Error::cuda("copying loss statistics", e))?;
        self.synchronize()?;
        let mut total = LossStats::default();
        for image in per_image.chunks_exact(3) {
            total.loss_sum += image[0];
            total.top1 += usize::from(image[1] > 0.5);
            total.top5 += usize::from(image[2] > 0.5);
        }
        Ok(total)
    }

    fn sgd_update(
        &mut self,
        w: &mut Self::Buf,
        g: &Self::Buf,
        v: &mut Self::Buf,
        step: SgdStep,
    ) -> Result<()> {
        let n = w.len();
        need(g, n, "gradient")?;
        need(v, n, "momentum")?;
        let (w, g, v, len) = (self.ptr(w), self.ptr(g), self.ptr(v), n as u64);
        self.launch(
            &self.kernels.sgd_update,
            grid(n),
            &[
                &w,
                &g,
                &v,
                &len,
                &step.lr,
                &step.momentum,
                &step.weight_decay,
            ],
        )
    }
}

impl CudaDevice {
    /// `y[n][c][p] = bias[c]`.
    fn bias_fill(
        &self,
        y: &CudaSlice<f32>,
        bias: &CudaSlice<f32>,
        n: usize,
        channels: usize,
        plane: usize,
    ) -> Result<()> {
        let (y, bias, len) = (self.ptr(y), self.ptr(bias), n as u64);
        let (c, p) = (u32_of(channels), u32_of(plane));
        self.launch(&self.kernels.bias_fill, grid(n), &[&y, &bias, &len, &c, &p])
    }

    /// `dbias[c] = Σ dy[n][c][p]` in two deterministic passes: blocks over
    /// (chunk of images, channel) into partial sums, then each channel's
    /// chunks in order; one pass straight into `dbias` where one chunk
    /// already fills the GPU.
    fn bias_grad(
        &mut self,
        dy: &CudaSlice<f32>,
        dbias: &CudaSlice<f32>,
        batch: usize,
        channels: usize,
        plane: usize,
    ) -> Result<()> {
        need(dbias, channels, "bias gradient")?;
        need(dy, batch * channels * plane, "output gradient")?;
        let per_chunk = batch.div_ceil((FILL_BLOCKS / channels).clamp(1, batch.max(1)));
        let chunks = batch.div_ceil(per_chunk.max(1)).max(1);
        let partial = if chunks == 1 {
            self.ptr(dbias)
        } else {
            let len = channels * chunks;
            let partials = match &mut self.bias_partials {
                Some(p) if p.len() >= len => p,
                // A smaller old buffer is freed in stream order, after the work queued on it.
                slot => slot.insert(
                    self.stream
                        .alloc_zeros(len)
                        .map_err(|e| Error::cuda("allocating bias partial sums", e))?,
                ),
            };
            partials.device_ptr(&self.stream).0
        };
        let dy = self.ptr(dy);
        let d = [batch, channels, plane, per_chunk].map(u32_of);
        let config = LaunchConfig {
            grid_dim: (u32_of(chunks), d[1].min(65_535), 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch(
            &self.kernels.bias_grad_partial,
            config,
            &[&dy, &partial, &d[0], &d[1], &d[2], &d[3]],
        )?;
        if chunks > 1 {
            let (dbias, chunks) = (self.ptr(dbias), u32_of(chunks));
            self.launch(
                &self.kernels.bias_grad_finish,
                grid(channels),
                &[&partial, &dbias, &d[1], &chunks],
            )?;
        }
        Ok(())
    }

    fn dropout(
        &self,
        input: &CudaSlice<f32>,
        out: &CudaSlice<f32>,
        p: f32,
        key: u64,
    ) -> Result<()> {
        let n = input.len();
        need(out, n, "dropout output")?;
        let (i, o, len) = (self.ptr(input), self.ptr(out), n as u64);
        self.launch(&self.kernels.dropout, grid(n), &[&i, &o, &len, &p, &key])
    }
}
