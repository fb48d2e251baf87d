//! Convolutions through cuDNN: forward, backward-data and backward-filter,
//! with descriptors and algorithms chosen once per shape and batch size.
//!
//! Algorithms are chosen by measurement (`cudnnFind*`), keeping only
//! deterministic ones that fit the shared workspace ([`WORKSPACE_LIMIT`]) and,
//! unless TF32 is allowed, use plain FMA math; the heuristic (`_v7`) answers
//! where measuring finds none.

use crate::error::{Error, Result};
use crate::net::plan::ConvShape;
use cudarc::cudnn::{result, sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

/// The most workspace one device lends its convolutions: 256 MiB.
pub const WORKSPACE_LIMIT: usize = 256 << 20;

/// cuDNN state of one device: its handle, a plan per shape, the workspace.
pub struct Convolutions {
    handle: Handle,
    stream: Arc<CudaStream>,
    plans: HashMap<(ConvShape, usize), ConvPlan>,
    workspace: Option<CudaSlice<u8>>,
    tf32: bool,
}

struct Handle(sys::cudnnHandle_t);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created by create_handle and destroyed once, here.
        let _ = unsafe { result::destroy_handle(self.0) };
    }
}

macro_rules! descriptor {
    ($name:ident, $raw:ty, $destroy:path) => {
        struct $name($raw);
        impl Drop for $name {
            fn drop(&mut self) {
                // SAFETY: created by its create_* function and destroyed once, here.
                let _ = unsafe { $destroy(self.0) };
            }
        }
    };
}
descriptor!(
    TensorDesc,
    sys::cudnnTensorDescriptor_t,
    result::destroy_tensor_descriptor
);
descriptor!(
    FilterDesc,
    sys::cudnnFilterDescriptor_t,
    result::destroy_filter_descriptor
);
descriptor!(
    ConvDesc,
    sys::cudnnConvolutionDescriptor_t,
    result::destroy_convolution_descriptor
);

/// Descriptors of one source's convolution and the algorithms chosen for it.
struct ConvPlan {
    x: TensorDesc,
    y: TensorDesc,
    w: FilterDesc,
    conv: ConvDesc,
    forward: sys::cudnnConvolutionFwdAlgo_t,
    backward_data: sys::cudnnConvolutionBwdDataAlgo_t,
    backward_filter: sys::cudnnConvolutionBwdFilterAlgo_t,
}

fn cudnn(what: &str) -> impl FnOnce(result::CudnnError) -> Error + '_ {
    move |e| Error::cuda(format!("cuDNN {what}"), e)
}

/// Exact f32 allows plain FMA math only; TF32 allows tensor cores too, but
/// never the down-conversion of f32 data to f16.
fn allowed_math(math: sys::cudnnMathType_t, tf32: bool) -> bool {
    use sys::cudnnMathType_t::*;
    match math {
        CUDNN_DEFAULT_MATH | CUDNN_FMA_MATH => true,
        CUDNN_TENSOR_OP_MATH => tf32,
        _ => false,
    }
}

/// Picks the first (fastest) result that succeeded, is deterministic, fits
/// the workspace and uses an allowed math type.
macro_rules! choose {
    ($perfs:expr, $tf32:expr) => {
        $perfs.iter().find(|p| {
            p.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS
                && p.determinism == sys::cudnnDeterminism_t::CUDNN_DETERMINISTIC
                && p.memory <= WORKSPACE_LIMIT
                && allowed_math(p.mathType, $tf32)
        })
    };
}

impl Convolutions {
    /// cuDNN on `stream`; `tf32` lets convolutions use TF32 tensor cores.
    pub fn new(stream: Arc<CudaStream>, tf32: bool) -> Result<Self> {
        let handle = Handle(result::create_handle().map_err(cudnn("handle"))?);
        // SAFETY: a live handle and the stream this device owns.
        unsafe { result::set_stream(handle.0, stream.cu_stream() as sys::cudaStream_t) }
            .map_err(cudnn("set stream"))?;
        Ok(Convolutions {
            handle,
            stream,
            plans: HashMap::new(),
            workspace: None,
            tf32,
        })
    }

    /// `y = beta·y + conv(x, w)` for one source, all raw device pointers.
    pub fn forward(&mut self, s: &ConvShape, batch: usize, x: u64, w: u64, y: u64) -> Result<()> {
        let handle = self.handle.0;
        let (plan, ws, ws_len) = self.prepare(s, batch)?;
        let (alpha, beta) = (1.0f32, 1.0f32);
        // SAFETY: the pointers hold the shapes the descriptors describe (the device checks lengths).
        unsafe {
            result::convolution_forward(
                handle,
                ptr(&alpha),
                plan.x.0,
                x as *const c_void,
                plan.w.0,
                w as *const c_void,
                plan.conv.0,
                plan.forward,
                ws,
                ws_len,
                ptr(&beta),
                plan.y.0,
                y as *mut c_void,
            )
        }
        .map_err(cudnn("convolution forward"))
    }

    /// `dx = conv_transpose(dy, w)` for one source.
    pub fn backward_data(
        &mut self,
        s: &ConvShape,
        batch: usize,
        w: u64,
        dy: u64,
        dx: u64,
    ) -> Result<()> {
        let handle = self.handle.0;
        let (plan, ws, ws_len) = self.prepare(s, batch)?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: as in `forward`.
        unsafe {
            result::convolution_backward_data(
                handle,
                ptr(&alpha),
                plan.w.0,
                w as *const c_void,
                plan.y.0,
                dy as *const c_void,
                plan.conv.0,
                plan.backward_data,
                ws,
                ws_len,
                ptr(&beta),
                plan.x.0,
                dx as *mut c_void,
            )
        }
        .map_err(cudnn("convolution backward data"))
    }

    /// `dw = Σ_n x ⋆ dy` for one source.
    pub fn backward_filter(
        &mut self,
        s: &ConvShape,
        batch: usize,
        x: u64,
        dy: u64,
        dw: u64,
    ) -> Result<()> {
        let handle = self.handle.0;
        let (plan, ws, ws_len) = self.prepare(s, batch)?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: as in `forward`.
        unsafe {
            result::convolution_backward_filter(
                handle,
                ptr(&alpha),
                plan.x.0,
                x as *const c_void,
                plan.y.0,
                dy as *const c_void,
                plan.conv.0,
                plan.backward_filter,
                ws,
                ws_len,
                ptr(&beta),
                plan.w.0,
                dw as *mut c_void,
            )
        }
        .map_err(cudnn("convolution backward filter"))
    }

    /// The plan for this shape (made on first use), and the workspace as a
    /// raw pointer and its length (null and 0 while no plan needs one).
    fn prepare(&mut self, s: &ConvShape, batch: usize) -> Result<(&ConvPlan, *mut c_void, usize)> {
        let key = (*s, batch);
        if !self.plans.contains_key(&key) {
            let plan = self.make_plan(s, batch)?;
            self.plans.insert(key, plan);
        }
        let (ws, len) = match self.workspace.as_ref() {
            Some(ws) => (ws.device_ptr(&self.stream).0 as *mut c_void, ws.len()),
            None => (std::ptr::null_mut(), 0),
        };
        Ok((&self.plans[&key], ws, len))
    }

    fn make_plan(&mut self, s: &ConvShape, batch: usize) -> Result<ConvPlan> {
        let dims = |v: [usize; 4]| v.map(|d| d as i32);
        let float = sys::cudnnDataType_t::CUDNN_DATA_FLOAT;
        let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        // SAFETY: each descriptor is created just before it is set, and owned by its wrapper.
        let plan = unsafe {
            let x = TensorDesc(result::create_tensor_descriptor().map_err(cudnn("tensor"))?);
            result::set_tensor4d_descriptor(
                x.0,
                nchw,
                float,
                dims([batch, s.in_c, s.in_h, s.in_w]),
            )
            .map_err(cudnn("input shape"))?;
            let y = TensorDesc(result::create_tensor_descriptor().map_err(cudnn("tensor"))?);
            result::set_tensor4d_descriptor(
                y.0,
                nchw,
                float,
                dims([batch, s.out_c, s.out_h, s.out_w]),
            )
            .map_err(cudnn("output shape"))?;
            let w = FilterDesc(result::create_filter_descriptor().map_err(cudnn("filter"))?);
            result::set_filter4d_descriptor(
                w.0,
                float,
                nchw,
                dims([s.out_c, s.in_c, s.kernel, s.kernel]),
            )
            .map_err(cudnn("filter shape"))?;
            let conv =
                ConvDesc(result::create_convolution_descriptor().map_err(cudnn("convolution"))?);
            let (pad, stride) = (s.pad as i32, s.stride as i32);
            result::set_convolution2d_descriptor(
                conv.0,
                pad,
                pad,
                stride,
                stride,
                1,
                1,
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                float,
            )
            .map_err(cudnn("convolution geometry"))?;
            let math = if self.tf32 {
                sys::cudnnMathType_t::CUDNN_DEFAULT_MATH
            } else {
                sys::cudnnMathType_t::CUDNN_FMA_MATH
            };
            result::set_convolution_math_type(conv.0, math).map_err(cudnn("math type"))?;
            let (forward, backward_data, backward_filter) =
                self.choose_algorithms(&x, &y, &w, &conv)?;
            ConvPlan {
                x,
                y,
                w,
                conv,
                forward: forward.0,
                backward_data: backward_data.0,
                backward_filter: backward_filter.0,
            }
            .with_workspace(forward.1.max(backward_data.1).max(backward_filter.1), self)?
        };
        Ok(plan)
    }

    /// Each direction's algorithm and its workspace bytes.
    #[allow(clippy::type_complexity)]
    unsafe fn choose_algorithms(
        &self,
        x: &TensorDesc,
        y: &TensorDesc,
        w: &FilterDesc,
        conv: &ConvDesc,
    ) -> Result<(
        (sys::cudnnConvolutionFwdAlgo_t, usize),
        (sys::cudnnConvolutionBwdDataAlgo_t, usize),
        (sys::cudnnConvolutionBwdFilterAlgo_t, usize),
    )> {
        const N: usize = 16;
        let h = self.handle.0;
        let tf32 = self.tf32;
        let mut count = 0;
        // SAFETY: live descriptors; the result arrays hold N entries.
        unsafe {
            let mut fwd: [sys::cudnnConvolutionFwdAlgoPerf_t; N] = std::mem::zeroed();
            let found = sys::cudnnFindConvolutionForwardAlgorithm(
                h,
                x.0,
                w.0,
                conv.0,
                y.0,
                N as i32,
                &mut count,
                fwd.as_mut_ptr(),
            );
            if found.result().is_err() || choose!(fwd[..count as usize], tf32).is_none() {
                sys::cudnnGetConvolutionForwardAlgorithm_v7(
                    h,
                    x.0,
                    w.0,
                    conv.0,
                    y.0,
                    N as i32,
                    &mut count,
                    fwd.as_mut_ptr(),
                )
                .result()
                .map_err(cudnn("forward algorithm"))?;
            }
            let forward =
                choose!(fwd[..count as usize], tf32).ok_or_else(|| no_algorithm("forward"))?;

            let mut data: [sys::cudnnConvolutionBwdDataAlgoPerf_t; N] = std::mem::zeroed();
            let found = sys::cudnnFindConvolutionBackwardDataAlgorithm(
                h,
                w.0,
                y.0,
                conv.0,
                x.0,
                N as i32,
                &mut count,
                data.as_mut_ptr(),
            );
            if found.result().is_err() || choose!(data[..count as usize], tf32).is_none() {
                sys::cudnnGetConvolutionBackwardDataAlgorithm_v7(
                    h,
                    w.0,
                    y.0,
                    conv.0,
                    x.0,
                    N as i32,
                    &mut count,
                    data.as_mut_ptr(),
                )
                .result()
                .map_err(cudnn("backward-data algorithm"))?;
            }
            let data = choose!(data[..count as usize], tf32)
                .ok_or_else(|| no_algorithm("backward-data"))?;

            let mut filter: [sys::cudnnConvolutionBwdFilterAlgoPerf_t; N] = std::mem::zeroed();
            let found = sys::cudnnFindConvolutionBackwardFilterAlgorithm(
                h,
                x.0,
                y.0,
                conv.0,
                w.0,
                N as i32,
                &mut count,
                filter.as_mut_ptr(),
            );
            if found.result().is_err() || choose!(filter[..count as usize], tf32).is_none() {
                sys::cudnnGetConvolutionBackwardFilterAlgorithm_v7(
                    h,
                    x.0,
                    y.0,
                    conv.0,
                    w.0,
                    N as i32,
                    &mut count,
                    filter.as_mut_ptr(),
                )
                .result()
                .map_err(cudnn("backward-filter algorithm"))?;
            }
            let filter = choose!(filter[..count as usize], tf32)
                .ok_or_else(|| no_algorithm("backward-filter"))?;
            Ok((
                (forward.algo, forward.memory),
                (data.algo, data.memory),
                (filter.algo, filter.memory),
            ))
        }
    }
}

impl ConvPlan {
    /// Grows the shared workspace to `bytes` if this plan needs more.
    fn with_workspace(self, bytes: usize, convs: &mut Convolutions) -> Result<Self> {
        if bytes > 0 && convs.workspace.as_ref().is_none_or(|ws| ws.len() < bytes) {
            convs.workspace = Some(
                convs
                    .stream
                    .alloc_zeros::<u8>(bytes)
                    .map_err(|e| Error::cuda("allocating the cuDNN workspace", e))?,
            );
        }
        Ok(self)
    }
}

fn no_algorithm(direction: &str) -> Error {
    Error::cuda(
        format!("cuDNN {direction} convolution"),
        format!(
            "no deterministic algorithm fits the {} MiB workspace",
            WORKSPACE_LIMIT >> 20
        ),
    )
}

fn ptr(v: &f32) -> *const c_void {
    v as *const f32 as *const c_void
}
