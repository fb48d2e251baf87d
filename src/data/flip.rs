//! A row of RGB pixels mirrored (the horizontal flip of §4.1). Pixel by
//! pixel a flip costs several times a plain row copy; with SSSE3 five
//! pixels move in one 16-byte shuffle, reading the source front to back.

/// `dst`'s pixel `k` is `src`'s pixel `n - 1 - k`, for rows of `n` RGB
/// pixels (`3n` bytes each).
pub fn mirror_row(src: &[u8], dst: &mut [u8]) {
    assert_eq!(src.len(), dst.len(), "rows of equal length");
    let n = src.len() / 3;
    let rest = shuffled(src, dst).unwrap_or(n);
    for k in 0..rest {
        let j = n - 1 - k;
        dst[3 * k..3 * k + 3].copy_from_slice(&src[3 * j..3 * j + 3]);
    }
}

/// Mirrors the row five pixels at a time where the CPU has SSSE3, all but
/// its first few output pixels; returns how many are left (from the row's
/// start), or `None` without SSSE3.
fn shuffled(src: &[u8], dst: &mut [u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("ssse3") {
        // SAFETY: the CPU has SSSE3; `src` and `dst` have equal lengths.
        return Some(unsafe { ssse3::blocks(src, dst) });
    }
    let _ = (src, dst);
    None
}

#[cfg(target_arch = "x86_64")]
mod ssse3 {
    use std::arch::x86_64::*;

    /// A block's 16 loaded bytes hold source pixels j..j+5 in bytes 0..15
    /// (byte 15 is the next pixel's); stored one byte before output pixel
    /// k = n - 5 - j, byte 1 + 3m + c is output pixel k + m, source pixel
    /// j + 4 - m. Byte 0 (zero) lands on the last byte of output pixel
    /// k - 1, written after it.
    const ORDER: [i8; 16] = [-128, 12, 13, 14, 9, 10, 11, 6, 7, 8, 3, 4, 5, 0, 1, 2];

    /// Blocks of five output pixels at k = n - 5, n - 10, ... down to k ≥ 1,
    /// so that the source is read front to back, as the hardware prefetches
    /// best. Returns the output pixels left at the row's start.
    ///
    /// # Safety
    /// SSSE3; `src.len() == dst.len()`.
    #[target_feature(enable = "ssse3")]
    pub unsafe fn blocks(src: &[u8], dst: &mut [u8]) -> usize {
        let n = src.len() / 3;
        if n < 6 {
            return n;
        }
        let order = unsafe { _mm_loadu_si128(ORDER.as_ptr().cast()) };
        let mut k = n - 5;
        loop {
            let j = n - 5 - k;
            // SAFETY: k ≥ 1, so the load's end 3j + 16 = 3(n - k) + 1 ≤ 3n
            // and the store's start 3k - 1 ≥ 0; the store ends at 3(k + 5) ≤ 3n.
            unsafe {
                let v = _mm_loadu_si128(src.as_ptr().add(3 * j).cast());
                let m = _mm_shuffle_epi8(v, order);
                _mm_storeu_si128(dst.as_mut_ptr().add(3 * k - 1).cast(), m);
            }
            if k < 6 {
                return k;
            }
            k -= 5;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_every_length_mirror_pixel_by_pixel() {
        for n in 0..40 {
            let src: Vec<u8> = (0..3 * n).map(|i| (i * 37 % 251) as u8).collect();
            let mut dst = vec![0xee; 3 * n];
            mirror_row(&src, &mut dst);
            for k in 0..n {
                let j = n - 1 - k;
                assert_eq!(
                    dst[3 * k..3 * k + 3],
                    src[3 * j..3 * j + 3],
                    "n {n}, pixel {k}"
                );
            }
        }
    }

    #[test]
    fn a_row_inside_a_larger_buffer_is_mirrored_without_touching_its_neighbours() {
        let n = 227;
        let src: Vec<u8> = (0..3 * (n + 4)).map(|i| (i * 13 % 256) as u8).collect();
        let mut out = vec![7u8; 3 * (n + 4)];
        mirror_row(&src[6..6 + 3 * n], &mut out[6..6 + 3 * n]);
        assert!(out[..6].iter().chain(&out[6 + 3 * n..]).all(|&b| b == 7));
        for k in 0..n {
            let j = n - 1 - k;
            assert_eq!(out[6 + 3 * k..][..3], src[6 + 3 * j..][..3], "pixel {k}");
        }
    }
}
