//! Our CUDA kernels (`kernels/*.cu`), embedded by build.rs as PTX compiled by
//! nvcc or as source for NVRTC, loaded once per device.

use crate::error::{Error, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};
use std::sync::Arc;

/// How build.rs embedded one kernel file.
pub enum KernelCode {
    /// PTX from nvcc.
    Ptx(&'static str),
    /// CUDA C++ source for NVRTC.
    Source(&'static str),
    /// A fat binary from nvcc: machine code for several GPUs and PTX.
    Fatbin(&'static [u8]),
}

/// Each kernel file's stem and code, from build.rs.
pub const KERNEL_FILES: &[(&str, KernelCode)] = include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// How this build's kernels are compiled, in words.
pub const COMPILED_BY: &str = env!("ALEXNET_KERNELS_COMPILED_BY");

/// Compiles CUDA source to PTX with NVRTC for `arch` (e.g. `compute_90`).
pub fn nvrtc_compile(name: &str, source: &str, arch: &str) -> Result<String> {
    // SAFETY: only asks the dynamic loader whether the library exists.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(Error::cuda(
            format!("compiling kernels/{name}.cu"),
            "NVRTC (libnvrtc.so) not found; put its directory on LD_LIBRARY_PATH",
        ));
    }
    let options = CompileOptions {
        // cudarc wants a 'static str; one per architecture per process.
        arch: Some(Box::leak(arch.to_string().into_boxed_str())),
        ..Default::default()
    };
    compile_ptx_with_opts(source, options)
        .map(|ptx| ptx.to_src())
        .map_err(|e| Error::cuda(format!("NVRTC on kernels/{name}.cu"), e))
}

/// Every kernel the CUDA device launches.
pub struct Kernels {
    pub relu_forward: CudaFunction,
    pub relu_backward: CudaFunction,
    pub tanh_forward: CudaFunction,
    pub tanh_backward: CudaFunction,
    pub dropout: CudaFunction,
    pub sgd_update: CudaFunction,
    pub bias_fill: CudaFunction,
    pub add: CudaFunction,
    pub maxpool_forward: CudaFunction,
    pub maxpool_backward: CudaFunction,
    pub lrn_forward: CudaFunction,
    pub lrn_backward: CudaFunction,
    pub bias_grad_partial: CudaFunction,
    pub bias_grad_finish: CudaFunction,
    pub softmax_cross_entropy: CudaFunction,
    pub input_from_u8: CudaFunction,
}

impl Kernels {
    /// Loads every kernel file into `ctx`, compiling sources for its compute capability.
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Kernels> {
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| Error::cuda("reading the compute capability", e))?;
        let arch = format!("compute_{major}{minor}");
        let modules = KERNEL_FILES
            .iter()
            .map(|(name, code)| {
                let image = match code {
                    KernelCode::Ptx(text) => Ptx::from_src(*text),
                    KernelCode::Source(source) => {
                        Ptx::from_src(nvrtc_compile(name, source, &arch)?)
                    }
                    KernelCode::Fatbin(bytes) => Ptx::from_binary(bytes.to_vec()),
                };
                let module = ctx
                    .load_module(image)
                    .map_err(|e| Error::cuda(format!("loading kernels/{name}.cu"), e))?;
                Ok((*name, module))
            })
            .collect::<Result<Vec<_>>>()?;
        let f = |file: &str, function: &str| function_in(&modules, file, function);
        Ok(Kernels {
            relu_forward: f("elementwise", "relu_forward_f32")?,
            relu_backward: f("elementwise", "relu_backward_f32")?,
            tanh_forward: f("elementwise", "tanh_forward_f32")?,
            tanh_backward: f("elementwise", "tanh_backward_f32")?,
            dropout: f("elementwise", "dropout_f32")?,
            sgd_update: f("elementwise", "sgd_update_f32")?,
            bias_fill: f("elementwise", "bias_fill_f32")?,
            add: f("elementwise", "add_f32")?,
            maxpool_forward: f("pool", "maxpool_forward_f32")?,
            maxpool_backward: f("pool", "maxpool_backward_f32")?,
            lrn_forward: f("lrn", "lrn_forward_f32")?,
            lrn_backward: f("lrn", "lrn_backward_f32")?,
            bias_grad_partial: f("reduce", "bias_grad_partial_f32")?,
            bias_grad_finish: f("reduce", "bias_grad_finish_f32")?,
            softmax_cross_entropy: f("reduce", "softmax_cross_entropy_f32")?,
            input_from_u8: f("input", "input_from_u8_f32")?,
        })
    }
}

fn function_in(
    modules: &[(&str, Arc<CudaModule>)],
    file: &str,
    function: &str,
) -> Result<CudaFunction> {
    let (_, module) = modules
        .iter()
        .find(|(name, _)| *name == file)
        .ok_or_else(|| Error::cuda("loading kernels", format!("kernels/{file}.cu is missing")))?;
    module
        .load_function(function)
        .map_err(|e| Error::cuda(format!("finding {function} in kernels/{file}.cu"), e))
}
