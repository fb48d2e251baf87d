//! `c += a · bᵀ` with `a` (m×k) and `b` (n×k) both row-major, for fully
//! connected layers at small batches: a fc layer's weights are `outputs ×
//! inputs`, so its forward product reads both operands along `k`. The `gemm`
//! crate packs such a `b` at a cost a batch of 32 never earns back; this
//! kernel streams both operands as they lie, 4 rows of `a` against 6 of `b`.

/// Rows of `a` and of `b` per register block.
const MR: usize = 4;
const NR: usize = 6;

/// The AVX-512 path for f32; false (and nothing done) where the CPU lacks it.
pub fn matmul_nt_f32(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F, and `matmul::matmul_nt`, the one
        // caller, checked every operand's length against m, n and k.
        unsafe { avx512::blocks(m, n, k, a, b, c) };
        return true;
    }
    let _ = (m, n, k, a, b, c);
    false
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// One `R × S` block of `c`: 16-lane partial sums along `k`, the tail
    /// under a mask, then each lane set summed into its element.
    ///
    /// # Safety
    /// AVX-512F; rows `0..R` of `a` and `0..S` of `b` hold `k` elements at
    /// stride `k`, and `c` holds `R` rows of `S` at stride `ldc`.
    #[target_feature(enable = "avx512f")]
    unsafe fn block<const R: usize, const S: usize>(
        a: *const f32,
        b: *const f32,
        k: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); S]; R];
        // One 16-lane step along k at offset `$at`, loading with `$load`.
        macro_rules! step {
            ($load:expr, $at:expr) => {
                let mut av = [_mm512_setzero_ps(); R];
                for (i, v) in av.iter_mut().enumerate() {
                    *v = $load(unsafe { a.add(i * k + $at) });
                }
                for j in 0..S {
                    let bv = $load(unsafe { b.add(j * k + $at) });
                    for i in 0..R {
                        acc[i][j] = _mm512_fmadd_ps(av[i], bv, acc[i][j]);
                    }
                }
            };
        }
        let full = k / 16;
        for p in 0..full {
            // SAFETY: lanes p·16 .. p·16 + 16 lie within each row's k.
            step!(|at| unsafe { _mm512_loadu_ps(at) }, p * 16);
        }
        let rest = k % 16;
        if rest > 0 {
            let mask = ((1u32 << rest) - 1) as __mmask16;
            // SAFETY: the mask reads only the row's last `rest` elements.
            step!(|at| unsafe { _mm512_maskz_loadu_ps(mask, at) }, full * 16);
        }
        for (i, row) in acc.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                // SAFETY: (i, j) lies inside the block of `c`.
                unsafe { *c.add(i * ldc + j) += _mm512_reduce_add_ps(*v) };
            }
        }
    }

    /// Every block of `c`, `NR` rows of `b` at a time (they stay in cache
    /// while all of `a` passes them).
    ///
    /// # Safety
    /// AVX-512F; `a`, `b` and `c` hold at least m·k, n·k and m·n elements.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn blocks(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
        for j in (0..n).step_by(NR) {
            let s = NR.min(n - j);
            for i in (0..m).step_by(MR) {
                let r = MR.min(m - i);
                let (pa, pb) = (a[i * k..].as_ptr(), b[j * k..].as_ptr());
                let pc = c[i * n + j..].as_mut_ptr();
                macro_rules! row {
                    ($r:expr) => {
                        match s {
                            1 => unsafe { block::<$r, 1>(pa, pb, k, pc, n) },
                            2 => unsafe { block::<$r, 2>(pa, pb, k, pc, n) },
                            3 => unsafe { block::<$r, 3>(pa, pb, k, pc, n) },
                            4 => unsafe { block::<$r, 4>(pa, pb, k, pc, n) },
                            5 => unsafe { block::<$r, 5>(pa, pb, k, pc, n) },
                            _ => unsafe { block::<$r, NR>(pa, pb, k, pc, n) },
                        }
                    };
                }
                match r {
                    1 => row!(1),
                    2 => row!(2),
                    3 => row!(3),
                    _ => row!(MR),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::device::cpu::matmul::matmul_nt;

    /// Every edge: rows of `a` and `b` not multiples of the blocks, `k`
    /// with a masked tail, and k = 0.
    #[test]
    fn matches_naive_products_in_f32_and_f64() {
        for (m, n, k) in [(9, 13, 37), (4, 6, 16), (1, 1, 1), (3, 7, 0), (5, 2, 100)] {
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
