//! Fully connected layers through cuBLAS. Our buffers are row-major; cuBLAS
//! is column-major, so a row-major `rows × cols` matrix is its `cols × rows`
//! transpose and every product below is written in those terms.

use super::need;
use crate::error::{Error, Result};
use cudarc::cublas::{result, sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use std::ffi::c_int;
use std::sync::Arc;

/// cuBLAS on one stream, exact f32 unless `tf32`.
pub struct Blas {
    handle: Handle,
    stream: Arc<CudaStream>,
}

/// Our own cuBLAS handle: cudarc's `CudaBlas` unwraps the result of its
/// destroy call (a panic in a drop, where the GPU is in an error state).
struct Handle(sys::cublasHandle_t);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created by create_handle and destroyed once, here.
        let _ = unsafe { result::destroy_handle(self.0) };
    }
}

const N: sys::cublasOperation_t = sys::cublasOperation_t::CUBLAS_OP_N;
const T: sys::cublasOperation_t = sys::cublasOperation_t::CUBLAS_OP_T;

impl Blas {
    /// cuBLAS on `stream`.
    pub fn new(stream: Arc<CudaStream>, tf32: bool) -> Result<Self> {
        let handle = Handle(result::create_handle().map_err(|e| Error::cuda("cuBLAS", e))?);
        // SAFETY: a live handle and the stream this device owns.
        unsafe { result::set_stream(handle.0, stream.cu_stream() as sys::cudaStream_t) }
            .map_err(|e| Error::cuda("cuBLAS stream", e))?;
        let mode = if tf32 {
            sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH
        } else {
            sys::cublasMath_t::CUBLAS_DEFAULT_MATH
        };
        // SAFETY: a live handle.
        unsafe { sys::cublasSetMathMode(handle.0, mode) }
            .result()
            .map_err(|e| Error::cuda("cuBLAS math mode", e))?;
        Ok(Blas { handle, stream })
    }

    /// `y[b][o] += Σ_i x[b][i] · w[o][i]` (x: batch × inputs, w: outputs × inputs).
    pub fn forward(
        &self,
        [batch, inputs, outputs]: [usize; 3],
        x: &impl DevicePtr<f32>,
        w: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        need(x, batch * inputs, "fc input")?;
        need(w, outputs * inputs, "fc weights")?;
        need(y, batch * outputs, "fc output")?;
        let (x, w, y) = (self.read(x), self.read(w), self.write(y));
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
        [batch, inputs, outputs]: [usize; 3],
        x: &impl DevicePtr<f32>,
        dy: &CudaSlice<f32>,
        dw: &mut CudaSlice<f32>,
    ) -> Result<()> {
        need(x, batch * inputs, "fc input")?;
        need(dy, batch * outputs, "fc output gradient")?;
        need(dw, outputs * inputs, "fc weight gradient")?;
        let (x, dy, dw) = (self.read(x), self.read(dy), self.write(dw));
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
        [batch, inputs, outputs]: [usize; 3],
        w: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dx: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        need(w, outputs * inputs, "fc weights")?;
        need(dy, batch * outputs, "fc output gradient")?;
        need(dx, batch * inputs, "fc input gradient")?;
        let (w, dy, dx) = (self.read(w), self.read(dy), self.write(dx));
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

    /// The address of a buffer cuBLAS reads, on this stream.
    fn read(&self, buf: &impl DevicePtr<f32>) -> u64 {
        buf.device_ptr(&self.stream).0
    }

    /// The address of a buffer cuBLAS writes, on this stream.
    fn write(&self, buf: &mut impl DevicePtrMut<f32>) -> u64 {
        buf.device_ptr_mut(&self.stream).0
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
        // SAFETY: the buffers hold the matrices these dimensions describe
        // (checked by the callers above).
        unsafe {
            result::sgemm(
                self.handle.0,
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
