//! Fully connected layers through cuBLAS. Our buffers are row-major; cuBLAS
//! is column-major, so a row-major `rows × cols` matrix is its `cols × rows`
//! transpose and every product below is written in those terms.
//!
//! f32 buffers go through `cublasSgemm` (exact f32, or TF32 where the
//! precision allows); 16-bit ones through `cublasGemmEx` with 16-bit inputs
//! and outputs and f32 accumulation (`CUBLAS_COMPUTE_32F`), on tensor cores.

use super::kernels::Stored;
use super::need;
use crate::device::precision::{Precision, Storage};
use crate::error::{Error, Result};
use cudarc::cublas::{result, sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use std::ffi::{c_int, c_void};
use std::sync::Arc;

/// cuBLAS on one stream, exact f32 unless the precision allows TF32.
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
    /// cuBLAS on `stream`, at `precision`.
    pub fn new(stream: Arc<CudaStream>, precision: Precision) -> Result<Self> {
        let handle = Handle(result::create_handle().map_err(|e| Error::cuda("cuBLAS", e))?);
        // SAFETY: a live handle and the stream this device owns.
        unsafe { result::set_stream(handle.0, stream.cu_stream() as sys::cudaStream_t) }
            .map_err(|e| Error::cuda("cuBLAS stream", e))?;
        // At 16 bits, CUBLAS_COMPUTE_32F alone lets cuBLAS sum split-K
        // partial products in the 16-bit output type; the CPU reference
        // sums in f32 and rounds once, so reduced-precision reductions are
        // disallowed.
        let mode = match precision {
            Precision::Tf32 => sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
            Precision::Bf16 | Precision::Fp16 => {
                sys::cublasMath_t::CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION
            }
            Precision::Fp32 => sys::cublasMath_t::CUBLAS_DEFAULT_MATH,
        };
        // SAFETY: a live handle.
        unsafe { sys::cublasSetMathMode(handle.0, mode) }
            .result()
            .map_err(|e| Error::cuda("cuBLAS math mode", e))?;
        Ok(Blas { handle, stream })
    }

    /// `y[b][o] += Σ_i x[b][i] · w[o][i]` (x: batch × inputs, w: outputs × inputs).
    pub fn forward<S: Stored>(
        &self,
        [batch, inputs, outputs]: [usize; 3],
        x: &impl DevicePtr<S>,
        w: &CudaSlice<S>,
        y: &mut CudaSlice<S>,
    ) -> Result<()> {
        need(x, batch * inputs, "fc input")?;
        need(w, outputs * inputs, "fc weights")?;
        need(y, batch * outputs, "fc output")?;
        let (x, w, y) = (self.read(x), self.read(w), self.write(y));
        self.gemm::<S>(
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
    pub fn weight_grad<S: Stored>(
        &self,
        [batch, inputs, outputs]: [usize; 3],
        x: &impl DevicePtr<S>,
        dy: &CudaSlice<S>,
        dw: &mut CudaSlice<S>,
    ) -> Result<()> {
        need(x, batch * inputs, "fc input")?;
        need(dy, batch * outputs, "fc output gradient")?;
        need(dw, outputs * inputs, "fc weight gradient")?;
        let (x, dy, dw) = (self.read(x), self.read(dy), self.write(dw));
        self.gemm::<S>(
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
    pub fn input_grad<S: Stored>(
        &self,
        [batch, inputs, outputs]: [usize; 3],
        w: &CudaSlice<S>,
        dy: &CudaSlice<S>,
        dx: &mut impl DevicePtrMut<S>,
    ) -> Result<()> {
        need(w, outputs * inputs, "fc weights")?;
        need(dy, batch * outputs, "fc output gradient")?;
        need(dx, batch * inputs, "fc input gradient")?;
        let (w, dy, dx) = (self.read(w), self.read(dy), self.write(dx));
        self.gemm::<S>(
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
    fn read<S>(&self, buf: &impl DevicePtr<S>) -> u64 {
        buf.device_ptr(&self.stream).0
    }

    /// The address of a buffer cuBLAS writes, on this stream.
    fn write<S>(&self, buf: &mut impl DevicePtrMut<S>) -> u64 {
        buf.device_ptr_mut(&self.stream).0
    }

    /// Column-major `C (m × n) = op(A) · op(B) + beta · C`, `[m, n, k]`, each
    /// matrix as (device pointer, leading dimension) of `S` elements.
    #[allow(clippy::too_many_arguments)]
    fn gemm<S: Stored>(
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
        let (m, n, k, lda, ldb, ldc) = (int(m)?, int(n)?, int(k)?, int(lda)?, int(ldb)?, int(ldc)?);
        let data = match S::STORAGE {
            Storage::Full => None,
            Storage::Bf16 => Some(sys::cudaDataType_t::CUDA_R_16BF),
            Storage::F16 => Some(sys::cudaDataType_t::CUDA_R_16F),
        };
        if let Some(data) = data {
            // SAFETY: as below; alpha and beta are f32, the compute type's.
            return unsafe {
                result::gemm_ex(
                    self.handle.0,
                    op_a,
                    op_b,
                    m,
                    n,
                    k,
                    (&alpha as *const f32).cast::<c_void>(),
                    a as *const c_void,
                    data,
                    lda,
                    b as *const c_void,
                    data,
                    ldb,
                    (&beta as *const f32).cast::<c_void>(),
                    c as *mut c_void,
                    data,
                    ldc,
                    sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
            .map_err(|e| Error::cuda("cuBLAS GemmEx", e));
        }
        // SAFETY: the buffers hold the matrices these dimensions describe
        // (checked by the callers above).
        unsafe {
            result::sgemm(
                self.handle.0,
                op_a,
                op_b,
                m,
                n,
                k,
                &alpha,
                a as *const f32,
                lda,
                b as *const f32,
                ldb,
                &beta,
                c as *mut f32,
                ldc,
            )
        }
        .map_err(|e| Error::cuda("cuBLAS sgemm", e))
    }
}
