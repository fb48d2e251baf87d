//! Launchers of `reduce.cu`, beside it: the bias gradient's two passes,
//! softmax cross-entropy, and one batch's loss statistics, over typed
//! device buffers; the bias gradient and the loss in any storage, their
//! sums f32 and f64 at every one.

use super::{ByStorage, Loaded, Stored, run};
use crate::device::cuda::{grid, need, u32_of};
use crate::error::Result;
use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaViewMut, LaunchConfig, PushKernelArg,
};

/// Threads per block of the bias gradient's and the loss's kernels
/// (`BIAS_THREADS`, `LOSS_THREADS`).
const BLOCK: u32 = 256;

/// The kernels of `reduce.cu`.
pub struct Reduce {
    bias_grad_partial: ByStorage,
    bias_grad_rows_partial: ByStorage,
    bias_grad_finish: ByStorage,
    softmax_cross_entropy: ByStorage,
    loss_stats_sum: CudaFunction,
}

/// The layout of one bias gradient: `dy` is `[batch][channels][plane]`,
/// summed in `chunks` chunks of `per_chunk` images (for
/// [`Reduce::bias_grad_rows_partial`], `[batch][channels]` with `plane` 1:
/// a channels-last map's rows, images times positions).
#[derive(Debug, Clone, Copy)]
pub struct BiasGrad {
    pub batch: usize,
    pub channels: usize,
    pub plane: usize,
    pub per_chunk: usize,
    pub chunks: usize,
}

/// Blocks a bias gradient aims for: enough to fill every SM of a large GPU
/// several times over.
pub const FILL_BLOCKS: usize = 1024;

impl BiasGrad {
    /// `dy` as `[batch][channels][plane]`, in chunks of images so that the
    /// (chunk, channel) blocks of the first pass number about
    /// [`FILL_BLOCKS`] (one chunk where the channels alone fill the GPU).
    pub fn over_images(batch: usize, channels: usize, plane: usize) -> BiasGrad {
        let per_chunk = batch.div_ceil((FILL_BLOCKS / channels.max(1)).clamp(1, batch.max(1)));
        BiasGrad {
            batch,
            channels,
            plane,
            per_chunk,
            chunks: batch.div_ceil(per_chunk.max(1)).max(1),
        }
    }

    /// `dy` as `rows` of `channels` (a channels-last map), in at most
    /// [`FILL_BLOCKS`] chunks of rows, the last one short.
    pub fn over_rows(rows: usize, channels: usize) -> BiasGrad {
        let per_chunk = rows.div_ceil(FILL_BLOCKS).max(1);
        BiasGrad {
            batch: rows,
            channels,
            plane: 1,
            per_chunk,
            chunks: rows.div_ceil(per_chunk).max(1),
        }
    }
}

/// The layout of one loss: `logits` is `[towers][batch][per_tower]`, and
/// the gradient is of tower `tower`'s own logits, times `grad_scale`.
#[derive(Debug, Clone, Copy)]
pub struct Loss {
    pub batch: usize,
    pub towers: usize,
    pub per_tower: usize,
    pub tower: usize,
    pub grad_scale: f32,
}

impl Reduce {
    pub(super) fn load(file: &Loaded) -> Result<Self> {
        Ok(Reduce {
            bias_grad_partial: file.by_storage("bias_grad_partial")?,
            bias_grad_rows_partial: file.by_storage("bias_grad_rows_partial")?,
            bias_grad_finish: file.by_storage("bias_grad_finish")?,
            softmax_cross_entropy: file.by_storage("softmax_cross_entropy")?,
            loss_stats_sum: file.function("loss_stats_sum_f64")?,
        })
    }

    /// Pass 1: `partial[c · chunks + chunk]` = the sum of channel `c` over the
    /// chunk's images, in f32 (with one chunk, `partial` may be an f32 bias
    /// gradient).
    pub fn bias_grad_partial<S: Stored>(
        &self,
        stream: &CudaStream,
        dy: &CudaSlice<S>,
        partial: &mut CudaSlice<f32>,
        s: BiasGrad,
    ) -> Result<()> {
        need(dy, s.batch * s.channels * s.plane, "output gradient")?;
        need(partial, s.channels * s.chunks, "bias partial sums")?;
        let d = [s.batch, s.channels, s.plane, s.per_chunk].map(u32_of);
        let config = LaunchConfig {
            grid_dim: (u32_of(s.chunks), d[1].min(65_535), 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = stream.launch_builder(self.bias_grad_partial.of::<S>());
        b.arg(dy).arg(partial);
        for dim in &d {
            b.arg(dim);
        }
        run(b, config)
    }

    /// Pass 1 of a channels-last map (`s.plane` 1, `s.batch` its rows):
    /// `partial[c · chunks + chunk]` = the sum of channel `c` over the
    /// chunk's rows in row order, in f32, each block reading whole rows.
    pub fn bias_grad_rows_partial<S: Stored>(
        &self,
        stream: &CudaStream,
        dy: &CudaSlice<S>,
        partial: &mut CudaSlice<f32>,
        s: BiasGrad,
    ) -> Result<()> {
        need(dy, s.batch * s.channels, "output gradient")?;
        need(partial, s.channels * s.chunks, "bias partial sums")?;
        let (rows, per_chunk) = (s.batch as u64, s.per_chunk as u64);
        let channels = u32_of(s.channels);
        let config = LaunchConfig {
            grid_dim: (u32_of(s.chunks), 1, 1),
            // A warp's multiple covering the channels, at most BLOCK.
            block_dim: (channels.next_multiple_of(32).min(BLOCK), 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = stream.launch_builder(self.bias_grad_rows_partial.of::<S>());
        b.arg(dy)
            .arg(partial)
            .arg(&rows)
            .arg(&channels)
            .arg(&per_chunk);
        run(b, config)
    }

    /// Pass 2: `dbias[c]` = channel `c`'s chunks summed in chunk order,
    /// rounded as `dbias` stores.
    pub fn bias_grad_finish<S: Stored>(
        &self,
        stream: &CudaStream,
        partial: &CudaSlice<f32>,
        dbias: &mut CudaSlice<S>,
        s: BiasGrad,
    ) -> Result<()> {
        need(partial, s.channels * s.chunks, "bias partial sums")?;
        need(dbias, s.channels, "bias gradient")?;
        let (channels, chunks) = (u32_of(s.channels), u32_of(s.chunks));
        let mut b = stream.launch_builder(self.bias_grad_finish.of::<S>());
        b.arg(partial).arg(dbias).arg(&channels).arg(&chunks);
        run(b, grid(s.channels))
    }

    /// Softmax cross-entropy: the gradient of the batch-mean loss into
    /// `dlogits`, and per image {−log p(label), top-1 hit, top-5 hit} into
    /// `per_image`, in f64 from the stored logits, the gradient rounded as
    /// stored.
    pub fn softmax_cross_entropy<S: Stored>(
        &self,
        stream: &CudaStream,
        logits: &CudaSlice<S>,
        labels: &CudaSlice<u32>,
        dlogits: &mut CudaSlice<S>,
        per_image: &mut CudaSlice<f64>,
        s: Loss,
    ) -> Result<()> {
        need(logits, s.towers * s.batch * s.per_tower, "logits")?;
        need(labels, s.batch, "labels")?;
        need(dlogits, s.batch * s.per_tower, "logit gradient")?;
        need(per_image, 3 * s.batch, "loss statistics")?;
        let d = [s.batch, s.towers, s.per_tower, s.tower].map(u32_of);
        // One block per image (grid-stride over images).
        let config = LaunchConfig {
            grid_dim: (u32_of(s.batch.min(65_535)), 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = stream.launch_builder(self.softmax_cross_entropy.of::<S>());
        b.arg(logits).arg(labels).arg(dlogits).arg(per_image);
        for dim in &d {
            b.arg(dim);
        }
        b.arg(&s.grad_scale);
        run(b, config)
    }

    /// One batch's {loss sum, top-1 hits, top-5 hits} from the per-image
    /// statistics of [`Reduce::softmax_cross_entropy`], into `out` (three
    /// elements), summed in image order.
    pub fn loss_stats_sum(
        &self,
        stream: &CudaStream,
        per_image: &CudaSlice<f64>,
        batch: usize,
        out: &mut CudaViewMut<f64>,
    ) -> Result<()> {
        need(per_image, 3 * batch, "loss statistics")?;
        if out.len() < 3 {
            return Err(crate::error::Error::cuda(
                "summing loss statistics",
                format!("{} elements for three sums", out.len()),
            ));
        }
        let n = u32_of(batch);
        let config = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = stream.launch_builder(&self.loss_stats_sum);
        b.arg(per_image).arg(&n).arg(out);
        run(b, config)
    }
}
