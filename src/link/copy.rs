//! The link by device copies: both towers on one GPU (emulation mode), or
//! one tower per GPU where NCCL is missing or fails to start. Each tower
//! copies what it needs of the other's buffers onto its own GPU, on its own
//! stream (`cuMemcpyPeerAsync`: direct where the GPUs have peer access,
//! which this link enables, staged through host memory by the driver
//! otherwise).
//!
//! The copies (and the sum of a reduce-scatter) run on the tower's exchange
//! stream ([`SideStream`]), which waits for the tower's work before each
//! exchange; the tower's work waits for the exchanges at [`Link::land`], so
//! what it queues in between runs beside them.
//!
//! No exchange waits for a GPU. The streams are ordered by CUDA events that
//! the tower threads hand each other ([`Handoff`]): at each exchange a tower
//! records "my buffer is written" on its compute stream and posts that event
//! with the buffer's address; the other makes its exchange stream wait for
//! the event (`cuStreamWaitEvent`) before its copy. The host only orders the
//! record before the wait (a wait on an event not yet recorded would not
//! wait). A pass sends each buffer once and the next pass overwrites it, so
//! at the end of a pass ([`Link::end_pass`]) each tower records "I have read
//! yours" on its exchange stream and the other's compute stream waits for it
//! before anything it queues later.
//! Every wait is thus on an event already recorded, which the GPU reaches
//! as long as the other tower's queued work runs; the host-side handoffs
//! give up on the other tower's failure or after the pair's timeout.
//! A failure breaks that order (a tower's stream no longer waits for the
//! other's reads of its buffers), so a tower of a failed pair leaks its
//! buffers rather than free them ([`crate::device::Device::leak_on_drop`]).
//!
//! The link moves what the towers store: f32, or 16 bits at `--precision
//! bf16|fp16` (half the bytes), a reduce-scatter's sum rounded once as it
//! is stored, as the CPU's host link rounds it.
//!
//! Buffers come from cudarc's stream-ordered pool (`cuMemAllocAsync`),
//! which `cuCtxEnablePeerAccess` does not govern: each tower also grants
//! the other GPU access to its own pool (`cuMemPoolSetAccess`), and both
//! grants are in place before either tower's first copy.

use super::handoff::Handoff;
use super::rendezvous::Rendezvous;
use super::side::SideStream;
use super::{Link, check_sizes, slice_of};
use crate::device::cuda::CudaDevice;
use crate::device::cuda::buffer::StoredBuf;
use crate::device::cuda::kernels::{Kernels, Stored};
use crate::error::{Error, Result};
use crate::net::plan::TOWERS;
use crate::watch::Watch;
use cudarc::driver::sys::{CUcontext, CUevent, CUevent_wait_flags};
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, DevicePtr};
use std::collections::VecDeque;
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

/// A CUDA event recorded on the sending tower's stream, as an integer so
/// that it can cross threads. The sender owns it and destroys it only once
/// the other tower has taken it (or after the handoff is abandoned).
#[derive(Debug, Clone, Copy)]
struct SentEvent(usize);

/// What a tower hands the other at each exchange: the buffer it sends, and
/// the event after which that buffer holds what it sends.
struct Ready {
    source: Published,
    written: SentEvent,
}

/// What both ends share; make one per pair with [`CopyShared::new`].
pub struct CopyShared {
    /// The one meeting of the towers: their contexts, before the first copy.
    grant: Rendezvous<Published>,
    ready: Handoff<Ready>,
    /// "I have read what you sent this pass", at each pass's end.
    read: Handoff<SentEvent>,
}

impl CopyShared {
    /// What the two ends of one pair's link share.
    pub fn new(watch: Arc<Watch>) -> Arc<CopyShared> {
        Arc::new(CopyShared {
            grant: Rendezvous::new(Arc::clone(&watch)),
            ready: Handoff::new(Arc::clone(&watch)),
            read: Handoff::new(watch),
        })
    }
}

/// One tower's end of the copy link, between towers that store `S`.
pub struct CopyLink<S: Stored = f32> {
    rank: usize,
    /// The tower's compute stream.
    stream: Arc<CudaStream>,
    /// Where the copies run.
    side: SideStream,
    kernels: Arc<Kernels>,
    shared: Arc<CopyShared>,
    /// The other tower's part of a reduce-scatter, copied here first.
    scratch: Option<CudaSlice<S>>,
    /// Whether peer access to the other tower's context was granted.
    peer_checked: bool,
    /// Events posted to the other tower and not yet known to be taken.
    sent_ready: Sent,
    sent_read: Sent,
    /// Whether this pass copied anything of the other tower's.
    read_this_pass: bool,
    /// Whether both towers are on one GPU.
    one_gpu: bool,
}

/// Events a tower posted, numbered, kept alive until the other has taken them.
#[derive(Default)]
struct Sent {
    events: VecDeque<(u64, CudaEvent)>,
    posted: u64,
}

impl Sent {
    /// Keeps `event` as post number `posted`, and drops those the other
    /// tower has taken (`taken` of them): its wait on them is queued.
    fn keep(&mut self, event: CudaEvent, taken: u64) -> SentEvent {
        let sent = SentEvent(event.cu_event() as usize);
        self.events.push_back((self.posted, event));
        self.posted += 1;
        while self.events.front().is_some_and(|(k, _)| *k < taken) {
            self.events.pop_front();
        }
        sent
    }
}

impl<S: Stored> CopyLink<S> {
    /// Tower `rank`'s end, beside `device`'s stream; `one_gpu` when both
    /// towers are on the same GPU.
    pub fn new(
        rank: usize,
        device: &CudaDevice<S>,
        shared: Arc<CopyShared>,
        one_gpu: bool,
    ) -> Result<Self> {
        Ok(CopyLink {
            rank,
            stream: Arc::clone(device.stream()),
            side: SideStream::new(device.stream())?,
            kernels: Arc::clone(device.kernels()),
            shared,
            scratch: None,
            peer_checked: false,
            sent_ready: Sent::default(),
            sent_read: Sent::default(),
            read_this_pass: false,
            one_gpu,
        })
    }

    fn context(&self) -> CUcontext {
        self.stream.context().cu_ctx()
    }

    fn published(&self, buf: &CudaSlice<S>) -> Published {
        Published {
            address: buf.device_ptr(&self.stream).0,
            context: self.context() as usize,
            ordinal: self.stream.context().ordinal(),
        }
    }

    /// At the first exchange: learns the other tower's context and grants
    /// it peer access, and waits until the other has granted too.
    fn grant_once(&mut self, buf: &CudaSlice<S>) -> Result<()> {
        if self.peer_checked {
            return Ok(());
        }
        self.peer_checked = true;
        let mine = self.published(buf);
        let all = self
            .shared
            .grant
            .meet(self.rank, |slot| *slot = mine, |slots| *slots)?;
        for other in all.iter().filter(|p| p.context != mine.context) {
            self.grant_peer(other);
        }
        // Neither tower copies before both have granted access.
        self.shared.grant.meet(self.rank, |_| {}, |_| ())
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

    /// Records on this stream that `buf` is written, and posts it with that
    /// event; returns what this tower sends.
    fn send(&mut self, buf: &CudaSlice<S>) -> Result<Published> {
        let source = self.published(buf);
        let event = Self::record(&self.stream, "marking a buffer sent")?;
        let taken = self.shared.ready.taken_from(self.rank)?;
        let written = self.sent_ready.keep(event, taken);
        self.shared
            .ready
            .post(self.rank, Ready { source, written })?;
        Ok(source)
    }

    /// The other tower's buffer of this exchange, the exchange stream made
    /// to wait until it is written.
    fn receive(&self) -> Result<Published> {
        self.shared.ready.take(self.rank, |ready| {
            Self::wait(self.side.stream(), ready.written)?;
            Ok(ready.source)
        })
    }

    /// An event recorded now on `stream` (this tower's compute or exchange stream).
    fn record(stream: &CudaStream, what: &str) -> Result<CudaEvent> {
        stream.record_event(None).map_err(|e| Error::cuda(what, e))
    }

    /// Makes `stream` (this tower's) wait for the other tower's event `event`.
    fn wait(stream: &CudaStream, event: SentEvent) -> Result<()> {
        // SAFETY: the event is alive: its owner keeps it until this take
        // has returned (the handoff's lock is held through it); the wait is
        // queued on this tower's own stream, in its bound context (an event
        // of another context is allowed).
        unsafe {
            cudarc::driver::result::stream::wait_event(
                stream.cu_stream(),
                event.0 as CUevent,
                CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
            )
        }
        .map_err(|e| Error::cuda("ordering the towers' streams", e))
    }

    /// Queues a copy of `bytes` from `src` to this tower's `dst` on the
    /// exchange stream.
    fn copy(&self, dst: u64, src: Published, bytes: usize) -> Result<()> {
        // SAFETY: `src` is not overwritten before this copy is done (the
        // other tower's later passes wait for this pass's reads, end_pass);
        // `dst` is ours, not read by this tower's work before `land`.
        unsafe {
            cudarc::driver::result::memcpy_peer_async(
                self.context(),
                dst,
                src.context as CUcontext,
                src.address,
                bytes,
                self.side.stream().cu_stream(),
            )
        }
        .map_err(|e| Error::cuda("copying between towers", e))
    }
}

impl<S: Stored> Drop for CopyLink<S> {
    /// Releases the other tower; once the handoffs are abandoned it neither
    /// uses nor takes this tower's events, which are then destroyed with
    /// the link (a destroyed event still pending is released by the driver
    /// when it completes).
    fn drop(&mut self) {
        self.shared.grant.abandon();
        self.shared.ready.abandon();
        self.shared.read.abandon();
    }
}

/// Bytes of `len` stored elements.
fn bytes<S>(len: usize) -> usize {
    len * std::mem::size_of::<S>()
}

impl<S: Stored, B: StoredBuf<Elem = S>> Link<B> for CopyLink<S> {
    fn rank(&self) -> usize {
        self.rank
    }

    fn all_gather(&mut self, local: &B, gathered: &mut B) -> Result<()> {
        let (local, gathered) = (local.stored()?, gathered.stored_mut()?);
        let len = local.len();
        check_sizes("all-gather", len, gathered.len())?;
        self.grant_once(local)?;
        self.side.follow()?;
        let mine = self.send(local)?;
        let theirs = self.receive()?;
        let base = gathered.device_ptr(self.side.stream()).0;
        for r in 0..TOWERS {
            let src = if r == self.rank { mine } else { theirs };
            let at = bytes::<S>(slice_of(r, len).start) as u64;
            self.copy(base + at, src, bytes::<S>(len))?;
        }
        self.read_this_pass = true;
        Ok(())
    }

    fn reduce_scatter(&mut self, full: &B, local: &mut B) -> Result<()> {
        let (full, local) = (full.stored()?, local.stored_mut()?);
        let len = local.len();
        check_sizes("reduce-scatter", len, full.len())?;
        self.grant_once(full)?;
        self.side.follow()?;
        if self.scratch.as_ref().is_none_or(|s| s.len() < len) {
            // On the exchange stream, so that an old one is freed in its
            // order, after the work queued on it.
            self.scratch = Some(
                self.side
                    .stream()
                    .alloc_zeros(len)
                    .map_err(|e| Error::cuda("allocating the exchange buffer", e))?,
            );
        }
        self.send(full)?;
        let theirs = self.receive()?;
        let own = slice_of(self.rank, len);
        let part = Published {
            address: theirs.address + bytes::<S>(own.start) as u64,
            ..theirs
        };
        let Some(scratch) = self.scratch.as_ref() else {
            return Err(Error::cuda("a reduce-scatter", "no exchange buffer"));
        };
        self.copy(
            scratch.device_ptr(self.side.stream()).0,
            part,
            bytes::<S>(len),
        )?;
        // Two summands: a + b is b + a exactly, so the rank order of the
        // sum needs no care; at 16 bits, summed in f32 and rounded once.
        self.kernels
            .elementwise
            .add(self.side.stream(), local, &full.slice(own), scratch)?;
        self.read_this_pass = true;
        Ok(())
    }

    fn land(&mut self) -> Result<()> {
        self.side.land()
    }

    /// On one GPU: the towers share its link to the host, so each uploads
    /// half of each batch and copies the other half from the other tower.
    fn splits_input(&self) -> bool {
        self.one_gpu
    }

    fn end_pass(&mut self) -> Result<()> {
        // This tower's later work (which overwrites and frees the buffers the
        // copies used) waits for every copy of the pass.
        self.side.land()?;
        // Both towers make the same exchanges, so both skip or neither.
        if !std::mem::take(&mut self.read_this_pass) {
            return Ok(());
        }
        let event = Self::record(self.side.stream(), "marking the other tower's buffers read")?;
        let taken = self.shared.read.taken_from(self.rank)?;
        let read = self.sent_read.keep(event, taken);
        self.shared.read.post(self.rank, read)?;
        self.shared
            .read
            .take(self.rank, |theirs| Self::wait(&self.stream, theirs))
    }
}
