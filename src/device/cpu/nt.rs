//! `c += a · bᵀ` with `a` (m×k) and `b` (n×k) both row-major, for fully
//! connected layers at small batches: a fc layer's weights are `outputs ×
//! inputs`, so its forward product reads both operands along `k`. The `gemm`
//! crate packs such a `b` at a cost a batch of 32 never earns back; this
//! kernel transposes the small `a` instead (k × m, a few hundred kB) and
//! streams `b` once as it lies: 32 rows of `a` as two vectors against 12
//! rows of `b`, one broadcast element of each at a time, so no sum is ever
//! split across lanes.

/// Rows of `a` (two vectors of 16) and of `b` per register block.
const MR: usize = 32;
const NR: usize = 12;

/// The AVX-512 path for f32; false (and nothing done) where the CPU lacks it.
pub fn matmul_nt_f32(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // `at[p][i] = a[i][p]`, its rows padded with zeros to whole blocks.
        let rows = m.div_ceil(MR) * MR;
        let mut at = vec![0.0f32; k * rows];
        for (i, row) in a.chunks_exact(k.max(1)).take(m).enumerate() {
            for (p, &v) in row.iter().enumerate() {
                at[p * rows + i] = v;
            }
        }
        // SAFETY: the CPU has AVX-512F, and `matmul::matmul_nt`, the one
        // caller, checked every operand's length against m, n and k.
        unsafe { avx512::blocks(m, n, k, &at, b, c) };
        return true;
    }
    let _ = (m, n, k, a, b, c);
    false
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// One block of `c`: rows `0..rows` (≤ 32) of `a` against `S` rows of
    /// `b`, summed along `k` in order, then added into `c`.
    ///
    /// # Safety
    /// AVX-512F; `at` holds `k` rows of 32 at stride `lda`, `b` holds `S`
    /// rows of `k` at stride `k`, and `c` holds `rows` rows of `S` at stride `ldc`.
    #[target_feature(enable = "avx512f")]
    unsafe fn block<const S: usize>(
        at: *const f32,
        lda: usize,
        b: *const f32,
        k: usize,
        c: *mut f32,
        ldc: usize,
        rows: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); S]; 2];
        for p in 0..k {
            // SAFETY: row p of `at` holds this block's 32 rows of `a`.
            let (a0, a1) = unsafe {
                (
                    _mm512_loadu_ps(at.add(p * lda)),
                    _mm512_loadu_ps(at.add(p * lda + 16)),
                )
            };
            let [low, high] = &mut acc;
            for (j, (lo, hi)) in low.iter_mut().zip(high.iter_mut()).enumerate() {
                // SAFETY: element p of row j of `b`.
                let bv = _mm512_set1_ps(unsafe { *b.add(j * k + p) });
                *lo = _mm512_fmadd_ps(a0, bv, *lo);
                *hi = _mm512_fmadd_ps(a1, bv, *hi);
            }
        }
        let mut lanes = [0.0f32; 16];
        for (half, row) in acc.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                // SAFETY: `lanes` holds 16 floats.
                unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), *v) };
                for (l, &sum) in lanes
                    .iter()
                    .enumerate()
                    .take(rows.saturating_sub(half * 16))
                {
                    // SAFETY: row half·16 + l < rows and column j < S of the block.
                    unsafe { *c.add((half * 16 + l) * ldc + j) += sum };
                }
            }
        }
    }

    /// Every block of `c`, `NR` rows of `b` at a time (they stay in cache
    /// while all of `a` passes them).
    ///
    /// # Safety
    /// AVX-512F; `at` holds k rows of m rounded up to a multiple of `MR`,
    /// `b` and `c` at least n·k and m·n elements.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn blocks(m: usize, n: usize, k: usize, at: &[f32], b: &[f32], c: &mut [f32]) {
        let lda = m.div_ceil(MR) * MR;
        for j in (0..n).step_by(NR) {
            let s = NR.min(n - j);
            for i in (0..m).step_by(MR) {
                let rows = MR.min(m - i);
                let (pa, pb) = (at[i..].as_ptr(), b[j * k..].as_ptr());
                let pc = c[i * n + j..].as_mut_ptr();
                macro_rules! run {
                    ($($s:literal)*) => {
                        match s {
                            $($s => unsafe { block::<$s>(pa, lda, pb, k, pc, n, rows) },)*
                            _ => unsafe { block::<NR>(pa, lda, pb, k, pc, n, rows) },
                        }
                    };
                }
                run!(1 2 3 4 5 6 7 8 9 10 11);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::device::cpu::matmul::matmul_nt;

    /// Every edge: rows of `a` and `b` not multiples of the blocks (70 =
    /// 2·32 + 6, 25 = 2·12 + 1), and k = 0.
    #[test]
    fn matches_naive_products_in_f32_and_f64() {
        for (m, n, k) in [
            (9, 13, 37),
            (4, 6, 16),
            (1, 1, 1),
            (3, 7, 0),
            (5, 2, 100),
            (70, 25, 19),
        ] {
            let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
            let b: Vec<f64> = (0..n * k).map(|i| (i as f64 * 0.11).cos()).collect();
            let want: Vec<f64> = (0..m * n)
                .map(|ij| {
                    0.5 + (0..k)
                        .map(|p| a[ij / n * k + p] * b[ij % n * k + p])
                        .sum::<f64>()
                })
                .collect();
            let mut c64 = vec![0.5; m * n];
            matmul_nt(m, n, k, &a, &b, &mut c64);
            let narrow = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
            let mut c32 = vec![0.5f32; m * n];
            matmul_nt(m, n, k, &narrow(&a), &narrow(&b), &mut c32);
            for ((w, g64), g32) in want.iter().zip(&c64).zip(&c32) {
                assert!((w - g64).abs() < 1e-12, "{m}×{n}×{k}: f64 {g64} vs {w}");
                assert!(
                    (w - f64::from(*g32)).abs() < 1e-4,
                    "{m}×{n}×{k}: f32 {g32} vs {w}"
                );
            }
        }
    }
}
