//! A batch's way onto the GPU: pinned, double-buffered staging uploaded on
//! a copy stream of its own, so that batch k + 1 is copied while the
//! compute stream still runs batch k. Events order the two streams:
//!
//! - the host refills a turn's pinned memory only once the upload that last
//!   read it is done (`uploaded`, polled);
//! - the copy stream overwrites a turn's device buffers only after the
//!   compute work that last read them (`consumed`);
//! - the compute stream reads a turn only after its upload (`uploaded`).
//!
//! cudarc's own tracking of pinned memory is off with its event tracking
//! (see the module docs of [`super`]), so these events are the only guard:
//! every turn's buffers are made at the first batch, before any turn is
//! read (so later batches no larger allocate no pinned memory), only grow
//! (a batch larger than any before; a smaller one uses a prefix), are
//! replaced only behind the same waits, and their device memory is freed
//! on the copy stream after them. A drop never waits: pinned memory whose
//! copy may still run is leaked rather than freed.

use super::kernels::Stored;
use super::{CudaDevice, need};
use crate::data::input;
use crate::error::{Error, Result};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaSlice, CudaStream, CudaView, DeviceRepr, PinnedHostSlice,
    ValidAsZeroBits,
};
use std::sync::Arc;

/// Batches in flight between the host and the compute stream.
pub const TURNS: usize = 2;
/// Label buffers in turn: the labels of pass k are copied during its loss,
/// on the compute stream, and pass k + 3 reuses their pinned memory once
/// that copy is done (with the towers' two passes of run-ahead, pass k is
/// then finished and nothing waits).
pub const LABEL_TURNS: usize = 3;

/// The copy stream and its turns.
pub struct Staging {
    copy: Arc<CudaStream>,
    turns: [Turn; TURNS],
    next: usize,
    labels: [Option<Staged<u32>>; LABEL_TURNS],
    /// Recorded on the compute stream after each label turn's copy.
    labels_copied: [CudaEvent; LABEL_TURNS],
    next_labels: usize,
}

/// One turn's buffers, each kept from batch to batch, grown when a batch
/// needs more.
struct Turn {
    pixels: Option<Staged<u8>>,
    offsets: Option<Staged<f32>>,
    images: Option<Staged<f32>>,
    /// Recorded on the copy stream after this turn's upload.
    uploaded: CudaEvent,
    /// Recorded on the compute stream after the work that read this turn.
    consumed: CudaEvent,
}

/// Pinned host memory and its device copy, of the same length: the most
/// a batch has needed so far.
struct Staged<T> {
    host: PinnedHostSlice<T>,
    device: CudaSlice<T>,
}

impl Staging {
    /// A copy stream on `ctx` and empty turns.
    pub fn new(ctx: &Arc<CudaContext>) -> Result<Self> {
        let failed = |e| Error::cuda("creating the input's copy stream", e);
        let copy = ctx.new_stream().map_err(failed)?;
        let turn = || -> Result<Turn> {
            Ok(Turn {
                pixels: None,
                offsets: None,
                images: None,
                uploaded: ctx.new_event(None).map_err(failed)?,
                consumed: ctx.new_event(None).map_err(failed)?,
            })
        };
        let event = || ctx.new_event(None).map_err(failed);
        Ok(Staging {
            copy,
            turns: [turn()?, turn()?],
            next: 0,
            labels: [None, None, None],
            labels_copied: [event()?, event()?, event()?],
            next_labels: 0,
        })
    }
}

impl Drop for Staging {
    /// The turns' device buffers are freed on the copy stream: first it
    /// waits for the compute work that read them. Pinned memory is freed
    /// at once (cudarc's drop waits on an event it records only with event
    /// tracking on), so only where the copy that read it is known done; the
    /// rest is leaked.
    fn drop(&mut self) {
        for turn in &mut self.turns {
            let _ = self.copy.wait(&turn.consumed);
            let done = done(&turn.uploaded);
            release(turn.pixels.take(), done);
            release(turn.offsets.take(), done);
            release(turn.images.take(), done);
        }
        for (slot, copied) in self.labels.iter_mut().zip(&self.labels_copied) {
            release(slot.take(), done(copied));
        }
    }
}

/// Whether the work `event` marks is done, without waiting (not known done
/// on an error).
fn done(event: &CudaEvent) -> bool {
    event.try_is_complete().unwrap_or(false)
}

/// Frees `staged`, but leaks its pinned memory unless the copy that reads
/// it is `done` (its device memory is freed in its stream's order).
fn release<T>(staged: Option<Staged<T>>, done: bool) {
    if let Some(Staged { host, device }) = staged {
        if !done {
            std::mem::forget(host);
        }
        drop(device);
    }
}

impl Staging {
    /// The labels staged in turn `at`.
    pub(super) fn labels(&self, at: usize) -> Result<&CudaSlice<u32>> {
        match &self.labels[at] {
            Some(staged) => Ok(&staged.device),
            None => Err(Error::cuda("the labels", "their buffer was not staged")),
        }
    }
}

/// Pinned memory for `n` elements, zeroed (so that a later, shorter batch
/// reads only written memory), and its device copy.
fn staged<T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    n: usize,
    what: &str,
) -> Result<Staged<T>> {
    let failed = |e| Error::cuda(format!("staging {what}"), e);
    // SAFETY: the pinned memory is uninitialized only until the write
    // below zeroes all of it, through a raw pointer, before anything reads it.
    let mut host = unsafe { stream.context().alloc_pinned::<T>(n) }.map_err(failed)?;
    let start = host.as_mut_ptr().map_err(failed)?;
    // SAFETY: `start` points to `n` elements this slice owns; all-zero bytes
    // are a valid `T` (`ValidAsZeroBits`).
    unsafe { std::ptr::write_bytes(start, 0, n) };
    let device = stream.alloc_zeros::<T>(n).map_err(failed)?;
    Ok(Staged { host, device })
}

/// Gives each of `slots` (one buffer of every turn) room for `n` elements
/// at their first use, while no turn has been read: batches of that size or
/// smaller then allocate and free no pinned memory mid-run, where an
/// allocation or free of pinned memory may wait for the whole GPU (and, on
/// two GPUs, for a collective that waits for the other tower).
fn reserve<T: DeviceRepr + ValidAsZeroBits, const N: usize>(
    slots: [&mut Option<Staged<T>>; N],
    stream: &Arc<CudaStream>,
    n: usize,
    what: &str,
) -> Result<()> {
    if slots.iter().any(|slot| slot.is_some()) {
        return Ok(());
    }
    for slot in slots {
        *slot = Some(staged(stream, n, what)?);
    }
    Ok(())
}

/// Copies `data` into the start of `slot`'s pinned memory and queues its
/// upload on `copy`, replacing the buffers (freed on `copy`, behind the
/// waits its callers queue first) when they are too small.
fn fill<T: DeviceRepr + ValidAsZeroBits + Copy>(
    slot: &mut Option<Staged<T>>,
    copy: &Arc<CudaStream>,
    data: &[T],
    what: &str,
) -> Result<()> {
    let failed = |e| Error::cuda(format!("staging {what}"), e);
    let n = data.len();
    if slot.as_ref().is_none_or(|s| s.host.len() < n) {
        *slot = Some(staged(copy, n, what)?);
    }
    let Some(staged) = slot.as_mut() else {
        return Err(Error::cuda(format!("staging {what}"), "no buffer"));
    };
    staged.host.as_mut_slice().map_err(failed)?[..n].copy_from_slice(data);
    let host = staged.host.as_slice().map_err(failed)?;
    copy.memcpy_htod(&host[..n], &mut staged.device.slice_mut(..n))
        .map_err(failed)
}

impl<S: Stored> CudaDevice<S> {
    /// Queues `labels`' copy to the GPU on the compute stream, from pinned
    /// memory (a copy from pageable memory may wait for the stream);
    /// returns their turn, for [`Staging::labels`].
    pub(super) fn stage_labels(&mut self, labels: &[u32]) -> Result<usize> {
        let at = self.staging.next_labels;
        self.staging.next_labels = (at + 1) % LABEL_TURNS;
        self.wait_for(&self.staging.labels_copied[at])?;
        let every = self.staging.labels.each_mut();
        reserve(every, &self.stream, labels.len(), "labels")?;
        fill(&mut self.staging.labels[at], &self.stream, labels, "labels")?;
        self.staging.labels_copied[at]
            .record(&self.stream)
            .map_err(|e| Error::cuda("ordering the labels' copy", e))?;
        Ok(at)
    }

    /// The next turn, ready to be filled: its last upload is done (so its
    /// pinned memory is free) and the copy stream waits for the compute
    /// work that read it (so its device buffers may be overwritten).
    fn turn(&mut self) -> Result<usize> {
        let at = self.staging.next;
        self.staging.next = (at + 1) % TURNS;
        let turn = &self.staging.turns[at];
        self.wait_for(&turn.uploaded)?;
        self.staging
            .copy
            .wait(&turn.consumed)
            .map_err(|e| Error::cuda("ordering the input's copy", e))?;
        Ok(at)
    }

    /// Records the end of turn `at`'s upload and makes the compute stream
    /// wait for it.
    fn uploaded(&self, at: usize) -> Result<()> {
        let failed = |e| Error::cuda("ordering the input's copy", e);
        let turn = &self.staging.turns[at];
        turn.uploaded.record(&self.staging.copy).map_err(failed)?;
        self.stream.wait(&turn.uploaded).map_err(failed)
    }

    /// Records that the compute stream has queued everything that reads turn `at`.
    fn consumed(&self, at: usize) -> Result<()> {
        self.staging.turns[at]
            .consumed
            .record(&self.stream)
            .map_err(|e| Error::cuda("ordering the input's copy", e))
    }

    /// [`crate::device::Device::input_from_u8`]: the crops and offsets
    /// staged, then turned into the net's input on the compute stream. The
    /// host slices may go as soon as this returns.
    pub(super) fn u8_input(
        &mut self,
        pixels: &[u8],
        offsets: &[f32],
        y: &mut CudaSlice<S>,
    ) -> Result<()> {
        input::check_u8(pixels, offsets, y.len()).map_err(Error::Training)?;
        let at = self.turn()?;
        let Staging { copy, turns, .. } = &mut self.staging;
        let every = turns.each_mut().map(|t| &mut t.pixels);
        reserve(every, copy, pixels.len(), "u8 crops")?;
        let every = turns.each_mut().map(|t| &mut t.offsets);
        reserve(every, copy, offsets.len(), "input offsets")?;
        let turn = &mut turns[at];
        fill(&mut turn.pixels, copy, pixels, "u8 crops")?;
        fill(&mut turn.offsets, copy, offsets, "input offsets")?;
        self.uploaded(at)?;
        let turn = &self.staging.turns[at];
        let (Some(dp), Some(doff)) = (&turn.pixels, &turn.offsets) else {
            return Err(Error::cuda("the u8 input", "its buffers were not staged"));
        };
        let plane = pixels.len() / offsets.len();
        self.kernels.input.from_u8(
            &self.stream,
            &dp.device,
            &doff.device,
            y,
            pixels.len(),
            plane,
            self.data_layout(),
        )?;
        self.consumed(at)
    }

    /// [`crate::device::Device::input_from_f32`]: the images staged, then
    /// put into the net's input `y` on the compute stream by `put(device,
    /// staged, y)` (a copy at f32, a rounding at 16 bits).
    pub(super) fn f32_input(
        &mut self,
        images: &[f32],
        y: &mut CudaSlice<S>,
        put: impl FnOnce(&Self, &CudaView<'_, f32>, &mut CudaSlice<S>) -> Result<()>,
    ) -> Result<()> {
        need(y, images.len(), "net input")?;
        let at = self.turn()?;
        let Staging { copy, turns, .. } = &mut self.staging;
        let every = turns.each_mut().map(|t| &mut t.images);
        reserve(every, copy, images.len(), "input images")?;
        fill(&mut turns[at].images, copy, images, "input images")?;
        self.uploaded(at)?;
        let Some(staged) = &self.staging.turns[at].images else {
            return Err(Error::cuda("the input", "its buffer was not staged"));
        };
        put(self, &staged.device.slice(..images.len()), y)?;
        self.consumed(at)
    }
}
