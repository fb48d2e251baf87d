//! The buffers of a CUDA device, by what they hold. At f32 every buffer is
//! a plain `CudaSlice<f32>`. At 16 bits (mixed precision, §5's update in
//! f32) a buffer is a [`HalfBuf`]: activations and gradients in 16 bits
//! only, a weight as its f32 master beside the 16-bit copy the passes read,
//! the momentum in f32 only.

use super::kernels::Stored;
use crate::error::{Error, Result};
use cudarc::driver::CudaSlice;

/// A device buffer whose stored elements the ops and links read and write.
pub trait StoredBuf: Send {
    /// How the elements are stored.
    type Elem: Stored;
    /// The stored elements, as ops and links read them.
    fn stored(&self) -> Result<&CudaSlice<Self::Elem>>;
    /// The stored elements, for an op or a link to overwrite.
    fn stored_mut(&mut self) -> Result<&mut CudaSlice<Self::Elem>>;
}

impl<S: Stored> StoredBuf for CudaSlice<S> {
    type Elem = S;

    fn stored(&self) -> Result<&CudaSlice<S>> {
        Ok(self)
    }

    fn stored_mut(&mut self) -> Result<&mut CudaSlice<S>> {
        Ok(self)
    }
}

/// A buffer of the 16-bit CUDA device. Which parts it holds says what it is:
///
/// - `stored` only: an activation or a gradient (what [`alloc`] makes and
///   every op writes);
/// - both: a weight, `master` its f32 value (what the update changes, the
///   host uploads and downloads) and `stored` its rounding (what the passes
///   read), kept so by the upload and by the update kernel;
/// - `master` only: momentum, read and written by the update alone.
///
/// An op that writes a buffer makes it an activation (its master, now
/// stale, is dropped); the update makes its `w` a weight and its `v`
/// momentum. Dropped parts are freed in the tower stream's order, after
/// the work queued on them.
///
/// [`alloc`]: crate::device::Device::alloc
pub struct HalfBuf<H: Stored> {
    pub(super) stored: Option<CudaSlice<H>>,
    pub(super) master: Option<CudaSlice<f32>>,
    /// Elements, whichever parts are held.
    pub(super) len: usize,
}

impl<H: Stored> HalfBuf<H> {
    /// An activation or gradient buffer.
    pub(super) fn of_stored(stored: CudaSlice<H>) -> Self {
        HalfBuf {
            len: stored.len(),
            stored: Some(stored),
            master: None,
        }
    }

    /// Its length in elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn momentum_read() -> Error {
    Error::cuda(
        "a 16-bit operation",
        "its buffer is momentum, which has no 16-bit copy",
    )
}

impl<H: Stored> StoredBuf for HalfBuf<H> {
    type Elem = H;

    fn stored(&self) -> Result<&CudaSlice<H>> {
        self.stored.as_ref().ok_or_else(momentum_read)
    }

    fn stored_mut(&mut self) -> Result<&mut CudaSlice<H>> {
        let stored = self.stored.as_mut().ok_or_else(momentum_read)?;
        self.master = None;
        Ok(stored)
    }
}
