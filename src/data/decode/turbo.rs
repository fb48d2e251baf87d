//! libjpeg-turbo through its TurboJPEG 3 API: one decompressor per thread,
//! decoding a whole JPEG (DCT-scaled by 1/2, 1/4 or 1/8 when asked) or only
//! the rows and columns of a region, with libjpeg-turbo's accurate integer
//! IDCT and smooth ("fancy") chroma upsampling. Its fast IDCT and fast
//! upsampling change pixels (by up to 8 and 162 levels on prepared shards)
//! for a gain lost in the noise of the whole loader, and are not used.

use super::{MAX_PIXELS, Region, RgbImage};
use std::ffi::CStr;
use turbojpeg::raw;

/// What the header of a JPEG says.
pub struct Header {
    pub width: usize,
    pub height: usize,
    /// CMYK or YCCK, which the loader leaves to zune-jpeg.
    pub four_channels: bool,
    pub lossless: bool,
    /// The width of the image's iMCU (8, 16 or 32 pixels), the unit a
    /// region's left edge is aligned to; none for an unusual subsampling.
    pub mcu_width: Option<usize>,
}

/// The iMCU width of each TurboJPEG subsampling (`TJSAMP_444` to
/// `TJSAMP_441`: turbojpeg.h's `tjMCUWidth`, which the library does not export).
const MCU_WIDTH: [usize; 7] = [8, 16, 16, 8, 8, 32, 8];

/// One TurboJPEG decompression instance.
pub struct Turbo {
    handle: raw::tjhandle,
}

// SAFETY: a TurboJPEG instance is used by one thread at a time (it is held
// in a thread-local), and TurboJPEG keeps no state tied to the thread that
// made it.
unsafe impl Send for Turbo {}

impl Drop for Turbo {
    fn drop(&mut self) {
        // SAFETY: `handle` came from tj3Init and is destroyed once, here.
        unsafe { raw::tj3Destroy(self.handle) }
    }
}

impl Turbo {
    /// A decompressor that stops at the first warning (a truncated or
    /// corrupt file's made-up pixels are an error).
    pub fn new() -> Result<Turbo, String> {
        // SAFETY: tj3Init takes no pointers; a null answer is checked.
        let handle = unsafe { raw::tj3Init(raw::TJINIT_TJINIT_DECOMPRESS as libc::c_int) };
        if handle.is_null() {
            return Err("JPEG: libjpeg-turbo could not start a decompressor".into());
        }
        let mut turbo = Turbo { handle };
        turbo.set(raw::TJPARAM_TJPARAM_STOPONWARNING, 1)?;
        Ok(turbo)
    }

    fn set(&mut self, param: raw::TJPARAM, value: libc::c_int) -> Result<(), String> {
        // SAFETY: a live handle; tj3Set checks the parameter and value.
        let answer = unsafe { raw::tj3Set(self.handle, param as libc::c_int, value) };
        self.check(answer)
    }

    fn get(&mut self, param: raw::TJPARAM) -> libc::c_int {
        // SAFETY: a live handle; an unknown parameter answers -1.
        unsafe { raw::tj3Get(self.handle, param as libc::c_int) }
    }

    /// An error naming libjpeg-turbo's message where `answer` is not 0.
    fn check(&mut self, answer: libc::c_int) -> Result<(), String> {
        if answer == 0 {
            return Ok(());
        }
        // SAFETY: tj3GetErrorStr answers a NUL-terminated string owned by the
        // handle, valid until the next call on it; it is copied at once.
        let message = unsafe { CStr::from_ptr(raw::tj3GetErrorStr(self.handle)) };
        Err(format!("JPEG: {}", message.to_string_lossy().trim()))
    }

    /// Reads the header of `bytes`, which the next decode of the same
    /// bytes relies on.
    pub fn header(&mut self, bytes: &[u8]) -> Result<Header, String> {
        // SAFETY: the pointer and length describe `bytes`, which outlives the call.
        let answer =
            unsafe { raw::tj3DecompressHeader(self.handle, bytes.as_ptr(), bytes.len() as _) };
        self.check(answer)?;
        let colorspace = self.get(raw::TJPARAM_TJPARAM_COLORSPACE);
        let subsamp = self.get(raw::TJPARAM_TJPARAM_SUBSAMP);
        let mcu_width = usize::try_from(subsamp)
            .ok()
            .and_then(|s| MCU_WIDTH.get(s).copied());
        Ok(Header {
            width: self.get(raw::TJPARAM_TJPARAM_JPEGWIDTH).max(0) as usize,
            height: self.get(raw::TJPARAM_TJPARAM_JPEGHEIGHT).max(0) as usize,
            four_channels: colorspace == raw::TJCS_TJCS_CMYK as libc::c_int
                || colorspace == raw::TJCS_TJCS_YCCK as libc::c_int,
            lossless: self.get(raw::TJPARAM_TJPARAM_LOSSLESS) == 1,
            mcu_width,
        })
    }

    /// Decodes `bytes`, whose header was just read as `header`, to RGB:
    /// scaled by 1/`denom` (1, 2, 4 or 8), and of that only `region` where
    /// one is given (its left edge a multiple of the scaled iMCU width).
    pub fn decode(
        &mut self,
        bytes: &[u8],
        header: &Header,
        denom: usize,
        region: Option<Region>,
    ) -> Result<RgbImage, String> {
        let r = region.unwrap_or(Region {
            x: 0,
            y: 0,
            width: header.width.div_ceil(denom),
            height: header.height.div_ceil(denom),
        });
        let mut pixels = vec![0; r.width * r.height * 3];
        self.decode_into(bytes, header, denom, r, &mut pixels, r.width * 3)?;
        Ok(RgbImage {
            width: r.width,
            height: r.height,
            pixels,
        })
    }

    /// Decodes `region` of `bytes` (whose header was just read as
    /// `header`), scaled by 1/`denom`, into `dst`: its rows `pitch` bytes
    /// apart, the first at the start of `dst`.
    pub fn decode_into(
        &mut self,
        bytes: &[u8],
        header: &Header,
        denom: usize,
        r: Region,
        dst: &mut [u8],
        pitch: usize,
    ) -> Result<(), String> {
        if header.width * header.height > MAX_PIXELS {
            return Err(format!(
                "JPEG of {}×{} is too large",
                header.width, header.height
            ));
        }
        let row = r.width * 3;
        if r.width == 0 || r.height == 0 || pitch < row || dst.len() < (r.height - 1) * pitch + row
        {
            return Err(format!(
                "JPEG: {} bytes at a pitch of {pitch} cannot hold {}×{} pixels",
                dst.len(),
                r.width,
                r.height
            ));
        }
        let factor = raw::tjscalingfactor {
            num: 1,
            denom: denom as libc::c_int,
        };
        // SAFETY: a live handle; the factor is checked against libjpeg-turbo's list.
        let answer = unsafe { raw::tj3SetScalingFactor(self.handle, factor) };
        self.check(answer)?;
        let scaled = |side: usize| side.div_ceil(denom);
        let whole = r.x == 0 && r.y == 0 && r.width == scaled(header.width);
        let crop = raw::tjregion {
            x: r.x as libc::c_int,
            y: r.y as libc::c_int,
            w: if whole { 0 } else { r.width as libc::c_int },
            h: if whole && r.height == scaled(header.height) {
                0
            } else {
                r.height as libc::c_int
            },
        };
        // SAFETY: a live handle; the region is checked against the header.
        let answer = unsafe { raw::tj3SetCroppingRegion(self.handle, crop) };
        self.check(answer)?;
        // SAFETY: `dst` holds `r.height` rows of `r.width` RGB pixels at a
        // pitch of `pitch` bytes (checked above), which is what
        // libjpeg-turbo writes for this scaling and region; `bytes` outlives
        // the call.
        let answer = unsafe {
            raw::tj3Decompress8(
                self.handle,
                bytes.as_ptr(),
                bytes.len() as _,
                dst.as_mut_ptr(),
                pitch as libc::c_int,
                raw::TJPF_TJPF_RGB as libc::c_int,
            )
        };
        self.check(answer)
    }
}
