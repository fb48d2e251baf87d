//! Fully connected layers through cuBLAS. Our buffers are row-major; cuBLAS
//! is column-major, so a row-major `rows × cols` matrix is its `cols × rows`
//! transpose and every product below is written in those terms.

use crate::error::{Error, Result};
use cudarc::cublas::{CudaBlas, result, sys};
use std::ffi::c_int;

/// cuBLAS on one stream, exact f32 unless `tf32`.
pub struct Blas {
    blas: CudaBlas,
}

const N: sys::cublasOperation_t = sys::cublasOperation_t::CUBLAS_OP_N;
const T: sys::cublasOperation_t = sys::cublasOperation_t::CUBLAS_OP_T;

impl Blas {
    pub fn new(blas: CudaBlas, tf32: bool) -> Result<Self> {
        let mode = if tf32 {
            sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH
        } else {
            sys::cublasMath_t::CUBLAS_DEFAULT_MATH
        };
        // SAFETY: a live handle.
        unsafe { sys::cublasSetMathMode(*blas.handle(), mode) }
            .result()
            .map_err(|e| Error::cuda("cuBLAS math mode", e))?;
        Ok(Blas { blas })
    }

    /// `y[b][o] += Σ_i x[b][i] · w[o][i]` (x: batch × inputs, w: outputs × inputs).
    pub fn forward(
        &self,
        batch: usize,
        inputs: usize,
        outputs: usize,
        x: u64,
        w: u64,
        y: u64,
    ) -> Result<()> {
        self.gemm(
            T,
            N,
            [outputs, batch, inputs],
            (w, inputs),
            (x, inputs),
            1.0,
            (y, outputs),
        )
    }

    /// `dw[o][i] = Σ_b dy[b][o] · x[b][i]`.
    pub fn weight_grad(
        &self,
        batch: usize,
        inputs: usize,
        outputs: usize,
        x: u64,
        dy: u64,
        dw: u64,
    ) -> Result<()> {
        self.gemm(
            N,
            T,
            [inputs, outputs, batch],
            (x, inputs),
            (dy, outputs),
            0.0,
            (dw, inputs),
        )
    }

    /// `dx[b][i] = Σ_o dy[b][o] · w[o][i]`.
    pub fn input_grad(
        &self,
        batch: usize,
        inputs: usize,
        outputs: usize,
        w: u64,
        dy: u64,
        dx: u64,
    ) -> Result<()> {
        self.gemm(
            N,
            N,
            [inputs, batch, outputs],
            (w, inputs),
            (dy, outputs),
            0.0,
            (dx, inputs),
        )
    }

    /// Column-major `C (m × n) = op(A) · op(B) + beta · C`, `[m, n, k]`, each
    /// matrix as (device pointer, leading dimension).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        op_a: sys::cublasOperation_t,
        op_b: sys::cublasOperation_t,
        [m, n, k]: [usize; 3],
        (a, lda): (u64, usize),
        (b, ldb): (u64, usize),
        beta: f32,
        (c, ldc): (u64, usize),
    ) -> Result<()> {
        let alpha = 1.0f32;
        let int = |v: usize| {
            c_int::try_from(v)
                .map_err(|_| Error::cuda("cuBLAS", format!("dimension {v} exceeds a C int")))
        };
        // SAFETY: the caller's buffers hold the matrices these dimensions describe.
        unsafe {
            result::sgemm(
                *self.blas.handle(),
                op_a,
                op_b,
                int(m)?,
                int(n)?,
                int(k)?,
                &alpha,
                a as *const f32,
                int(lda)?,
                b as *const f32,
                int(ldb)?,
                &beta,
                c as *mut f32,
                int(ldc)?,
            )
        }
        .map_err(|e| Error::cuda("cuBLAS sgemm", e))
    }
}
