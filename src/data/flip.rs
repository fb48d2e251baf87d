//! A row of RGB pixels mirrored (the horizontal flip of §4.1). Pixel by
//! pixel a flip costs several times a plain row copy; with SSSE3 five
//! pixels move in one 16-byte shuffle.

/// `dst`'s pixel `k` is `src`'s pixel `n - 1 - k`, for rows of `n` RGB
/// pixels (`3n` bytes each).
pub fn mirror_row(src: &[u8], dst: &mut [u8]) {
    assert_eq!(src.len(), dst.len(), "rows of equal length");
    let done = shuffled(src, dst);
    let n = src.len() / 3;
    for k in done..n {
        let j = n - 1 - k;
        dst[3 * k..3 * k + 3].copy_from_slice(&src[3 * j..3 * j + 3]);
    }
}

/// Mirrors the first pixels of `dst` five at a time where the CPU has
/// SSSE3; returns how many pixels it wrote (from the row's start).
fn shuffled(src: &[u8], dst: &mut [u8]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("ssse3") {
        // SAFETY: the CPU has SSSE3; `src` and `dst` have equal lengths.
        return unsafe { ssse3::blocks(src, dst) };
    }
    let _ = (src, dst);
    0
}

#[cfg(target_arch = "x86_64")]
mod ssse3 {
    use std::arch::x86_64::*;

    /// Output pixel m (bytes 3m..3m+3) of a block takes input pixel 4 - m,
    /// which lies at bytes 1 + 3(4 - m).. of the 16 bytes loaded one byte
    /// before the block's first source pixel; byte 15 is overwritten by the
    /// next block or the scalar tail.
    const ORDER: [i8; 16] = [13, 14, 15, 10, 11, 12, 7, 8, 9, 4, 5, 6, 1, 2, 3, 0];

    /// Blocks of five output pixels from the row's start while a 16-byte
    /// store stays inside `dst` and its 16-byte load (from one byte before
    /// the five source pixels) inside `src`: blocks at k = 0, 5, ... up to
    /// k ≤ n - 6. Returns the pixels written.
    ///
    /// # Safety
    /// SSSE3; `src.len() == dst.len()`.
    #[target_feature(enable = "ssse3")]
    pub unsafe fn blocks(src: &[u8], dst: &mut [u8]) -> usize {
        let n = src.len() / 3;
        let order = unsafe { _mm_loadu_si128(ORDER.as_ptr().cast()) };
        let mut k = 0;
        while k + 6 <= n {
            // Source pixels n-5-k ..= n-1-k; load from the byte before them.
            let from = 3 * (n - 5 - k) - 1;
            // SAFETY: from ≥ 3·1 - 1 = 2 as k ≤ n - 6, and from + 16 =
            // 3(n - k) ≤ 3n; the store at 3k ends at 3k + 16 ≤ 3n - 2.
            unsafe {
                let v = _mm_loadu_si128(src.as_ptr().add(from).cast());
                let m = _mm_shuffle_epi8(v, order);
                _mm_storeu_si128(dst.as_mut_ptr().add(3 * k).cast(), m);
            }
            k += 5;
        }
        k
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
