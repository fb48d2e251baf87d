//! The link over NCCL: one tower per GPU, one communicator per tower thread,
//! all-gather and summing reduce-scatter queued on the tower's exchange
//! stream ([`SideStream`]), behind the layer that produced the data (by an
//! event) and ahead of the work that reads the result (by another, at
//! [`Link::land`]); what the tower queues in between (the own tower's part
//! of the next layer, the weight gradients of the layer just done) runs
//! beside the exchange. The host never waits at an exchange.
//!
//! The communicator is created non-blocking (`blocking = 0`), so that no
//! NCCL call can hold a tower's thread while the other tower has failed:
//! every call that answers `ncclInProgress` is polled with
//! `ncclCommGetAsyncError` under the pair's [`Watch`] (its timeout, and the
//! other tower's failure), as NCCL requires before the next call. The
//! communicator is our own [`RawComm`], aborted on drop without a panic.
//!
//! The collectives move what the towers store: f32, or bf16 and fp16 at
//! 16-bit storage (`ncclBfloat16`, `ncclFloat16`: half the bytes), whose
//! two-rank sum NCCL rounds once, as the CPU's host link does.

use super::side::SideStream;
use super::{Link, check_sizes};
use crate::device::cuda::CudaDevice;
use crate::device::cuda::buffer::StoredBuf;
use crate::device::cuda::kernels::Stored;
use crate::device::cuda::nccl_lib::{message, version};
use crate::device::precision::Storage;
use crate::error::{Error, Result};
use crate::watch::Watch;
use cudarc::driver::{DevicePtr, DevicePtrMut};
use cudarc::nccl::Id;
use cudarc::nccl::result::NcclError;
use cudarc::nccl::sys::{self, ncclResult_t};
use std::sync::Arc;

/// One tower's end of the NCCL link.
pub struct NcclLink {
    comm: RawComm,
    rank: usize,
    /// Where the collectives run.
    side: SideStream,
    watch: Arc<Watch>,
}

/// An NCCL communicator owned by us. cudarc's `Comm` panics in its drop when
/// the abort fails; this one ignores the abort's answer: dropping it never
/// panics and never waits for the other rank (an abort, not a destroy,
/// which would wait for queued work that may never finish).
pub(crate) struct RawComm(pub(crate) sys::ncclComm_t);

impl Drop for RawComm {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the handle came from ncclCommInitRankConfig and is
            // dropped once; abort is valid in any state of the communicator.
            let _ = unsafe { sys::ncclCommAbort(self.0) };
        }
    }
}

impl RawComm {
    /// Checks what an NCCL call on this communicator answered and, while it
    /// is in progress, polls the communicator until it is done: the next
    /// NCCL call may only follow then. `poll` asks "done yet?" until yes,
    /// giving up where its watch says (another tower's or replica's
    /// failure, the timeout); the communicator is aborted when dropped.
    pub(crate) fn settle(
        &self,
        answer: ncclResult_t,
        what: &str,
        poll: impl FnOnce(&mut dyn FnMut() -> Result<bool>) -> Result<()>,
    ) -> Result<()> {
        let failed = |code| Error::cuda(what, message(&NcclError(code)));
        match answer {
            ncclResult_t::ncclSuccess | ncclResult_t::ncclInProgress => {}
            code => return Err(failed(code)),
        }
        if self.0.is_null() {
            return Err(Error::cuda(what, "NCCL returned no communicator"));
        }
        poll(&mut || {
            let mut state = ncclResult_t::ncclSuccess;
            // SAFETY: a live communicator and an out-parameter.
            let asked = unsafe { sys::ncclCommGetAsyncError(self.0, &mut state) };
            match (asked, state) {
                (ncclResult_t::ncclSuccess, ncclResult_t::ncclSuccess) => Ok(true),
                (ncclResult_t::ncclSuccess, ncclResult_t::ncclInProgress) => Ok(false),
                (ncclResult_t::ncclSuccess, code) | (code, _) => Err(failed(code)),
            }
        })
    }
}

/// `NCCL_VERSION(2, 30, 0)`: the layout of cudarc's `ncclConfig_t`. An
/// older library reads the prefix it knows; a newer one the fields of 2.30.
const CONFIG_VERSION: u32 = 23000;
/// NCCL's `NCCL_CONFIG_UNDEF_INT`: leave the setting to NCCL.
const UNDEF: i32 = i32::MIN;

/// `NCCL_CONFIG_INITIALIZER` with `blocking = 0`.
pub(crate) fn non_blocking_config() -> sys::ncclConfig_t {
    sys::ncclConfig_t {
        size: std::mem::size_of::<sys::ncclConfig_t>(),
        magic: 0xcafe_beef,
        version: CONFIG_VERSION,
        blocking: 0,
        cgaClusterSize: UNDEF,
        minCTAs: UNDEF,
        maxCTAs: UNDEF,
        netName: std::ptr::null(),
        splitShare: UNDEF,
        trafficClass: UNDEF,
        commName: std::ptr::null(),
        collnetEnable: UNDEF,
        CTAPolicy: UNDEF,
        shrinkShare: UNDEF,
        nvlsCTAs: UNDEF,
        nChannelsPerNetPeer: UNDEF,
        nvlinkCentricSched: UNDEF,
        graphUsageMode: UNDEF,
        numRmaCtx: UNDEF,
        maxP2pPeers: UNDEF,
    }
}

/// A fresh communicator id, made once per pair and given to both towers.
pub fn new_id() -> Result<Id> {
    version().map_err(|why| Error::cuda("NCCL", why))?;
    Id::new().map_err(|e| Error::cuda("NCCL unique id", message(&e)))
}

/// NCCL's name for the element type `S`.
pub(crate) fn nccl_type<S: Stored>() -> sys::ncclDataType_t {
    match S::STORAGE {
        Storage::Full => sys::ncclDataType_t::ncclFloat32,
        Storage::Bf16 => sys::ncclDataType_t::ncclBfloat16,
        Storage::F16 => sys::ncclDataType_t::ncclFloat16,
    }
}

impl NcclLink {
    /// Tower `rank` of `world` joins communicator `id` on `device`'s stream,
    /// non-blocking, waiting for the other ranks under `watch`. Every rank
    /// calls this at the same time, each on its own thread, after the
    /// pair's start barrier.
    pub fn new<S: Stored>(
        rank: usize,
        world: usize,
        id: Id,
        device: &CudaDevice<S>,
        watch: Arc<Watch>,
    ) -> Result<Self> {
        let what = format!("NCCL init of rank {rank} of {world}");
        device.bind()?;
        let mut config = non_blocking_config();
        let mut raw: sys::ncclComm_t = std::ptr::null_mut();
        let unique = sys::ncclUniqueId {
            internal: *id.internal(),
        };
        // SAFETY: `raw` and `config` outlive the call; NCCL copies the id.
        let started = unsafe {
            sys::ncclCommInitRankConfig(&mut raw, world as i32, unique, rank as i32, &mut config)
        };
        // Owned from here on, so that any failure below aborts it.
        let comm = RawComm(raw);
        let link = NcclLink {
            side: SideStream::new(device.stream())?,
            comm,
            rank,
            watch,
        };
        link.started(started, &what)?;
        Ok(link)
    }

    /// Checks what an NCCL call answered, polling under the pair's watch
    /// (see [`RawComm::settle`]).
    fn started(&self, answer: ncclResult_t, what: &str) -> Result<()> {
        self.comm
            .settle(answer, what, |done| self.watch.poll(self.rank, what, done))
    }

    /// The exchange stream, made to wait for the tower's work so far.
    fn follow(&mut self) -> Result<sys::cudaStream_t> {
        self.side.follow()?;
        Ok(self.side.stream().cu_stream() as sys::cudaStream_t)
    }
}

impl<B: StoredBuf> Link<B> for NcclLink {
    fn rank(&self) -> usize {
        self.rank
    }

    fn all_gather(&mut self, local: &B, gathered: &mut B) -> Result<()> {
        let (local, gathered) = (local.stored()?, gathered.stored_mut()?);
        check_sizes("all-gather", local.len(), gathered.len())?;
        let stream = self.follow()?;
        let (send, _) = local.device_ptr(self.side.stream());
        let (recv, _) = gathered.device_ptr_mut(self.side.stream());
        // SAFETY: both buffers belong to this tower's context, with the
        // sizes checked above; the call is queued on the exchange stream,
        // after the work that wrote `local` and before any that reads
        // `gathered` (`land`); neither is freed or rewritten before the
        // tower's stream has waited for it (`land`, `end_pass`).
        let answer = unsafe {
            sys::ncclAllGather(
                send as *const _,
                recv as *mut _,
                local.len(),
                nccl_type::<B::Elem>(),
                self.comm.0,
                stream,
            )
        };
        self.started(answer, "NCCL all-gather")
    }

    fn reduce_scatter(&mut self, full: &B, local: &mut B) -> Result<()> {
        let (full, local) = (full.stored()?, local.stored_mut()?);
        check_sizes("reduce-scatter", local.len(), full.len())?;
        let stream = self.follow()?;
        let (send, _) = full.device_ptr(self.side.stream());
        let (recv, _) = local.device_ptr_mut(self.side.stream());
        // SAFETY: as in all_gather.
        let answer = unsafe {
            sys::ncclReduceScatter(
                send as *const _,
                recv as *mut _,
                local.len(),
                nccl_type::<B::Elem>(),
                sys::ncclRedOp_t::ncclSum,
                self.comm.0,
                stream,
            )
        };
        self.started(answer, "NCCL reduce-scatter")
    }

    fn land(&mut self) -> Result<()> {
        self.side.land()
    }

    /// No: each GPU uploads the whole batch from the host, beside the other.
    fn splits_input(&self) -> bool {
        false
    }

    /// The tower's later work (which overwrites and frees the buffers the
    /// collectives used) waits for every collective of the pass.
    fn end_pass(&mut self) -> Result<()> {
        self.side.land()
    }
}
