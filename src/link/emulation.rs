//! The link of emulation mode: both towers on one GPU, each on its own
//! stream, meeting through device-to-device copies. Each tower publishes the
//! device address of what it sends; each copies (or adds) what it needs on
//! its own stream, waits for it, and only then lets the other tower go on
//! and overwrite its buffer.

use super::rendezvous::Rendezvous;
use super::{Link, slice_of};
use crate::device::cuda::kernels::Kernels;
use crate::device::cuda::{CudaDevice, launch};
use crate::error::{Error, Result};
use crate::net::plan::TOWERS;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, LaunchConfig};
use std::sync::Arc;

/// One tower's end of the one-GPU link.
pub struct EmulationLink {
    rank: usize,
    stream: Arc<CudaStream>,
    kernels: Arc<Kernels>,
    shared: Arc<Rendezvous<u64>>,
}

/// What both ends share; make one per pair with `Default`.
pub type EmulationShared = Arc<Rendezvous<u64>>;

impl EmulationLink {
    /// Tower `rank`'s end, working on `device`'s stream.
    pub fn new(rank: usize, device: &CudaDevice, shared: EmulationShared) -> Self {
        EmulationLink {
            rank,
            stream: Arc::clone(device.stream()),
            kernels: Arc::clone(device.kernels()),
            shared,
        }
    }

    /// Waits for this tower's queued work, publishes `buf`'s address, and
    /// returns every tower's.
    fn publish(&self, buf: &CudaSlice<f32>) -> Result<[u64; TOWERS]> {
        self.sync()?;
        let address = buf.device_ptr(&self.stream).0;
        self.shared
            .meet(self.rank, |slot| *slot = address, |slots| *slots)
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

impl Drop for EmulationLink {
    fn drop(&mut self) {
        self.shared.abandon();
    }
}

impl Link<CudaSlice<f32>> for EmulationLink {
    fn rank(&self) -> usize {
        self.rank
    }

    fn all_gather(&mut self, local: &CudaSlice<f32>, gathered: &mut CudaSlice<f32>) -> Result<()> {
        let len = local.len();
        let sources = self.publish(local)?;
        let base = gathered.device_ptr(&self.stream).0;
        for (r, &src) in sources.iter().enumerate() {
            let dst = base + (slice_of(r, len).start * 4) as u64;
            // SAFETY: both towers' buffers live on this GPU and stay untouched
            // until `done_reading`; `gathered` holds TOWERS × len elements.
            unsafe {
                cudarc::driver::result::memcpy_dtod_async(
                    dst,
                    src,
                    len * 4,
                    self.stream.cu_stream(),
                )
            }
            .map_err(|e| Error::cuda("copying between towers", e))?;
        }
        self.done_reading()
    }

    fn reduce_scatter(&mut self, full: &CudaSlice<f32>, local: &mut CudaSlice<f32>) -> Result<()> {
        let len = local.len();
        let offset = (slice_of(self.rank, len).start * 4) as u64;
        let [a, b] = self.publish(full)?.map(|address| address + offset);
        let out = local.device_ptr(&self.stream).0;
        let n = len as u64;
        let config = LaunchConfig {
            grid_dim: (len.div_ceil(256).clamp(1, 1 << 16) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        launch(&self.stream, &self.kernels.add, config, &[&out, &a, &b, &n])?;
        self.done_reading()
    }
}
