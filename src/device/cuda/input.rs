//! The launcher of kernels/input.cu: a batch of u8 crops and their offsets
//! copied to the GPU (a quarter of the bytes of its f32 input) and turned
//! into the net's input there.

use super::{CudaDevice, need};
use crate::data::input;
use crate::error::{Error, Result};
use cudarc::driver::CudaSlice;

/// The GPU copies of the last batch's crops and offsets, kept from batch to
/// batch and replaced when the batch size changes.
#[derive(Default)]
pub struct Staging {
    pixels: Option<CudaSlice<u8>>,
    offsets: Option<CudaSlice<f32>>,
}

impl CudaDevice {
    /// [`crate::device::Device::input_from_u8`] on this device's stream. The
    /// copies are queued before the kernel on the same stream, and the next
    /// batch's copies after it, so one pair of staging buffers serves every
    /// step; the host slices may go as soon as this returns (copies from
    /// pageable memory are staged by the driver before the call returns).
    pub(super) fn u8_input(
        &mut self,
        pixels: &[u8],
        offsets: &[f32],
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        input::check_u8(pixels, offsets, pixels.len()).map_err(Error::Training)?;
        need(y, pixels.len(), "net input")?;
        let stream = &self.stream;
        let staging = &mut self.staging;
        if staging.pixels.as_ref().map(CudaSlice::len) != Some(pixels.len()) {
            staging.pixels = Some(
                stream
                    .alloc_zeros(pixels.len())
                    .map_err(|e| Error::cuda("allocating the u8 input", e))?,
            );
        }
        if staging.offsets.as_ref().map(CudaSlice::len) != Some(offsets.len()) {
            staging.offsets = Some(
                stream
                    .alloc_zeros(offsets.len())
                    .map_err(|e| Error::cuda("allocating the input offsets", e))?,
            );
        }
        let (Some(dp), Some(doff)) = (staging.pixels.as_mut(), staging.offsets.as_mut()) else {
            return Err(Error::cuda(
                "the u8 input",
                "its buffers were not allocated",
            ));
        };
        stream
            .memcpy_htod(pixels, dp)
            .map_err(|e| Error::cuda("copying u8 crops to the GPU", e))?;
        stream
            .memcpy_htod(offsets, doff)
            .map_err(|e| Error::cuda("copying input offsets to the GPU", e))?;
        let plane = pixels.len() / offsets.len();
        self.kernels
            .input
            .from_u8(stream, dp, doff, y, pixels.len(), plane)
    }
}
