//! A bounds-checked front to the `gemm` crate.

use super::real::Real;

/// A matrix operand: a slice with row and column strides.
#[derive(Clone, Copy)]
pub struct Mat<'a, T> {
    pub data: &'a [T],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a, T> Mat<'a, T> {
    /// Row-major with `cols` columns.
    pub fn rows(data: &'a [T], cols: usize) -> Self {
        Mat {
            data,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// Row-major with rows `row_stride` apart (a block of columns).
    pub fn strided(data: &'a [T], row_stride: usize) -> Self {
        Mat {
            data,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub fn rows_transposed(data: &'a [T], cols: usize) -> Self {
        Mat {
            data,
            row_stride: 1,
            col_stride: cols,
        }
    }

    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0
            || cols == 0
            || (rows - 1) * self.row_stride + (cols - 1) * self.col_stride < self.data.len()
    }
}

/// `c = a · b` (or `c += a · b` when `accumulate`), with `a` m×k, `b` k×n and
/// `c` m×n row-major. Single-threaded: each tower owns one core.
pub fn matmul<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    c: &mut [T],
    accumulate: bool,
) {
    matmul_strided(m, n, k, a, b, c, n, accumulate);
}

/// [`matmul`] into `c` whose rows lie `ldc ≥ n` apart (a block of columns
/// of a wider matrix).
#[allow(clippy::too_many_arguments)]
pub fn matmul_strided<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    c: &mut [T],
    ldc: usize,
    accumulate: bool,
) {
    assert!(
        a.fits(m, k) && b.fits(k, n) && ldc >= n && (m == 0 || c.len() >= (m - 1) * ldc + n),
        "matmul operands out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for row in c.chunks_mut(ldc).take(m) {
                row[..n].fill(T::zero());
            }
        }
        return;
    }
    // SAFETY: the assert above keeps every index gemm touches inside the slices,
    // and `c` is borrowed mutably, so it cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `c += a · bᵀ`: `a` m×k, `b` n×k, `c` m×n, all row-major. Uses the AVX-512
/// kernel for f32 where the CPU has it, the `gemm` crate otherwise. Either
/// way each element's sum runs in a fixed order, so results repeat bitwise.
pub fn matmul_nt<T: Real>(m: usize, n: usize, k: usize, a: &[T], b: &[T], c: &mut [T]) {
    assert!(
        a.len() >= m * k && b.len() >= n * k && c.len() >= m * n,
        "matmul_nt operands out of bounds"
    );
    if !T::matmul_nt_fast(m, n, k, a, b, c) {
        matmul(
            m,
            n,
            k,
            Mat::rows(a, k),
            Mat::rows_transposed(b, k),
            c,
            true,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_product_with_transposes_and_accumulation() {
        let (m, n, k) = (7, 5, 9);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let bt: Vec<f64> = (0..n * k).map(|i| (i as f64 * 0.11).cos()).collect();
        let mut c = vec![1.0; m * n];
        matmul(
            m,
            n,
            k,
            Mat::rows(&a, k),
            Mat::rows_transposed(&bt, k),
            &mut c,
            true,
        );
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k).map(|p| a[i * k + p] * bt[j * k + p]).sum();
                assert!((c[i * n + j] - 1.0 - dot).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn strided_output_leaves_the_other_columns_alone() {
        let (m, n, k, ldc) = (3, 4, 5, 7);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.29).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.13).cos()).collect();
        let mut c = vec![9.0; m * ldc];
        matmul_strided(
            m,
            n,
            k,
            Mat::rows(&a, k),
            Mat::rows(&b, n),
            &mut c,
            ldc,
            false,
        );
        for i in 0..m {
            for j in 0..ldc {
                let want = if j < n {
                    (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum()
                } else {
                    9.0
                };
                assert!((c[i * ldc + j] - want).abs() < 1e-12);
            }
        }
    }
}
