//! A stream beside a tower's compute stream, for the tower's exchanges, so
//! that they overlap the work that does not depend on them (paper §3.2: the
//! towers meet only at some layers, and need not stop to do so).
//!
//! Two events order it against the compute stream, both recorded and waited
//! for on the GPU (`cuStreamWaitEvent`), never by the host: before an
//! exchange the side stream waits for everything the compute stream has
//! queued so far ([`SideStream::follow`]: what is sent is written, and what
//! the exchange overwrites is no longer read); at [`SideStream::land`] the
//! compute stream waits for everything queued on the side stream so far. An
//! event may be recorded again as soon as a wait on it is queued: the wait
//! keeps the record it saw.

use crate::error::{Error, Result};
use cudarc::driver::{CudaEvent, CudaStream};
use std::sync::Arc;

/// A tower's exchange stream and the two events that order it.
pub struct SideStream {
    compute: Arc<CudaStream>,
    side: Arc<CudaStream>,
    /// Recorded on the compute stream, waited for by the side stream.
    to_side: CudaEvent,
    /// Recorded on the side stream, waited for by the compute stream.
    to_compute: CudaEvent,
    /// Whether the side stream has work the compute stream does not wait for yet.
    unlanded: bool,
}

impl SideStream {
    /// A new stream beside `compute`, in its context, at the greatest
    /// priority the GPU offers: an exchange the other tower waits for
    /// should not queue behind this tower's long convolutions.
    pub fn new(compute: &Arc<CudaStream>) -> Result<Self> {
        let failed = |e| Error::cuda("creating the exchange stream", e);
        let context = compute.context();
        context.bind_to_thread().map_err(failed)?;
        let (_, greatest) = cudarc::driver::result::stream::get_priority_range().map_err(failed)?;
        let side = context.new_stream_with_priority(greatest).map_err(failed)?;
        Ok(SideStream {
            compute: Arc::clone(compute),
            side,
            to_side: context.new_event(None).map_err(failed)?,
            to_compute: context.new_event(None).map_err(failed)?,
            unlanded: false,
        })
    }

    /// The stream to queue exchanges on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.side
    }

    /// Makes the side stream's later work wait for what the compute stream
    /// has queued so far; call before queuing an exchange.
    pub fn follow(&mut self) -> Result<()> {
        let failed = |e| Error::cuda("ordering an exchange after the tower's work", e);
        self.to_side.record(&self.compute).map_err(failed)?;
        self.side.wait(&self.to_side).map_err(failed)?;
        self.unlanded = true;
        Ok(())
    }

    /// Makes the compute stream's later work wait for what the side stream
    /// has queued so far (nothing to do when that is already the case).
    pub fn land(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.unlanded) {
            return Ok(());
        }
        let failed = |e| Error::cuda("ordering the tower's work after an exchange", e);
        self.to_compute.record(&self.side).map_err(failed)?;
        self.compute.wait(&self.to_compute).map_err(failed)
    }
}
