//! The link by device copies: both towers on one GPU (emulation mode), or
//! one tower per GPU where NCCL is missing or fails to start. Each tower
//! publishes the address (and CUDA context) of what it sends; each copies
//! what it needs onto its own GPU on its own stream (`cuMemcpyPeerAsync`:
//! direct where the GPUs have peer access, which this link enables, staged
//! through host memory by the driver otherwise), waits for it, and only then
//! lets the other tower go on and overwrite its buffer.
//!
//! Buffers come from cudarc's stream-ordered pool (`cuMemAllocAsync`),
//! which `cuCtxEnablePeerAccess` does not govern: each tower also grants
//! the other GPU access to its own pool (`cuMemPoolSetAccess`), and both
//! grants are in place before either tower's first copy.

use super::rendezvous::Rendezvous;
use super::{Link, check_sizes, slice_of};
use crate::device::cuda::kernels::Kernels;
use crate::device::cuda::{CudaDevice, grid, launch};
use crate::error::{Error, Result};
use crate::net::plan::TOWERS;
use cudarc::driver::sys::CUcontext;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use std::sync::Arc;

/// A buffer's address and the context that owns it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Published {
    address: u64,
    /// The owning context, as an integer so that it can cross threads.
    context: usize,
    /// The GPU the buffer lives on.
    ordinal: usize,
}

/// What both ends share; make one per pair with [`Rendezvous::new`].
pub type CopyShared = Arc<Rendezvous<Published>>;

/// One tower's end of the copy link.
pub struct CopyLink {
    rank: usize,
    stream: Arc<CudaStream>,
    kernels: Arc<Kernels>,
    shared: CopyShared,
    /// The other tower's part of a reduce-scatter, copied here first.
    scratch: Option<CudaSlice<f32>>,
    /// Whether peer access to the other tower's context was attempted.
    peer_checked: bool,
}

impl CopyLink {
    /// Tower `rank`'s end, working on `device`'s stream.
    pub fn new(rank: usize, device: &CudaDevice, shared: CopyShared) -> Self {
        CopyLink {
            rank,
            stream: Arc::clone(device.stream()),
            kernels: Arc::clone(device.kernels()),
            shared,
            scratch: None,
            peer_checked: false,
        }
    }

    fn context(&self) -> CUcontext {
        self.stream.context().cu_ctx()
    }

    /// Waits for this tower's queued work, publishes `buf`, and returns every tower's.
    fn publish(&mut self, buf: &CudaSlice<f32>) -> Result<[Published; TOWERS]> {
        self.sync()?;
        let mine = Published {
            address: buf.device_ptr(&self.stream).0,
            context: self.context() as usize,
            ordinal: self.stream.context().ordinal(),
        };
        let all = self
            .shared
            .meet(self.rank, |slot| *slot = mine, |slots| *slots)?;
        if !self.peer_checked {
            self.peer_checked = true;
            for other in all.iter().filter(|p| p.context != mine.context) {
                self.grant_peer(other);
            }
            // Neither tower copies before both have granted access.
            self.shared.meet(self.rank, |_| {}, |_| ())?;
        }
        Ok(all)
    }

    /// Enables peer access from this context to `other`'s, and lets `other`'s
    /// GPU read and write this GPU's memory pool. Any failure (no P2P between
    /// these GPUs, or already enabled) leaves the copies to the driver,
    /// staged through host memory if need be.
    fn grant_peer(&self, other: &Published) {
        use cudarc::driver::sys;
        // SAFETY: both contexts live as long as their towers; this thread's
        // context is bound (CudaDevice::new); the pool and the access
        // descriptor are plain values read during the call.
        unsafe {
            let _ = sys::cuCtxEnablePeerAccess(other.context as CUcontext, 0);
            let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
            if sys::cuDeviceGetMemPool(&mut pool, self.stream.context().cu_device())
                != sys::CUresult::CUDA_SUCCESS
            {
                return;
            }
            let access = sys::CUmemAccessDesc {
                location: sys::CUmemLocation {
                    type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
                    id: other.ordinal as i32,
                },
                flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
            };
            let _ = sys::cuMemPoolSetAccess(pool, &access, 1);
        }
    }

    /// Queues a copy of `bytes` from `src` to this tower's `dst`.
    fn copy(&self, dst: u64, src: Published, bytes: usize) -> Result<()> {
        // SAFETY: `src` stays untouched until `done_reading`; `dst` is ours.
        unsafe {
            cudarc::driver::result::memcpy_peer_async(
                self.context(),
                dst,
                src.context as CUcontext,
                src.address,
                bytes,
                self.stream.cu_stream(),
            )
        }
        .map_err(|e| Error::cuda("copying between towers", e))
    }

    /// Waits for this tower's copies, then for the other tower's.
    fn done_reading(&self) -> Result<()> {
        self.sync()?;
        self.shared.meet(self.rank, |_| {}, |_| ())
    }

    fn sync(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| Error::cuda("synchronizing an exchange", e))
    }
}

impl Drop for CopyLink {
    fn drop(&mut self) {
        self.shared.abandon();
    }
}

impl Link<CudaSlice<f32>> for CopyLink {
    fn rank(&self) -> usize {
        self.rank
    }

    fn all_gather(&mut self, local: &CudaSlice<f32>, gathered: &mut CudaSlice<f32>) -> Result<()> {
        let len = local.len();
        check_sizes("all-gather", len, gathered.len())?;
        let sources = self.publish(local)?;
        let base = gathered.device_ptr(&self.stream).0;
        for (r, &src) in sources.iter().enumerate() {
            self.copy(base + (slice_of(r, len).start * 4) as u64, src, len * 4)?;
        }
        self.done_reading()
    }

    fn reduce_scatter(&mut self, full: &CudaSlice<f32>, local: &mut CudaSlice<f32>) -> Result<()> {
        let len = local.len();
        check_sizes("reduce-scatter", len, full.len())?;
        if self.scratch.as_ref().is_none_or(|s| s.len() < len) {
            self.scratch = Some(
                self.stream
                    .alloc_zeros(len)
                    .map_err(|e| Error::cuda("allocating the exchange buffer", e))?,
            );
        }
        let offset = (slice_of(self.rank, len).start * 4) as u64;
        let parts = self.publish(full)?;
        let scratch = match self.scratch.as_ref() {
            Some(s) => s.device_ptr(&self.stream).0,
            None => unreachable!("allocated above"),
        };
        // Each tower's part of this slice, on this GPU, in rank order.
        let mut on_this_gpu = [0u64; TOWERS];
        for (r, part) in parts.iter().enumerate() {
            on_this_gpu[r] = if r == self.rank {
                part.address + offset
            } else {
                let moved = Published {
                    address: part.address + offset,
                    ..*part
                };
                self.copy(scratch, moved, len * 4)?;
                scratch
            };
        }
        let [a, b] = on_this_gpu;
        let out = local.device_ptr(&self.stream).0;
        let n = len as u64;
        launch(
            &self.stream,
            &self.kernels.add,
            grid(len),
            &[&out, &a, &b, &n],
        )?;
        self.done_reading()
    }
}
