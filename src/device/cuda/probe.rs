//! What CUDA this machine has, asked without touching anything that panics
//! when a library is missing: `alexnet info`, and the checks before a GPU run.

use crate::error::{Error, Result};
use std::fmt::Write;

/// Whether the CUDA driver library can be loaded.
pub fn driver_present() -> bool {
    // SAFETY: only asks the dynamic loader whether libcuda exists.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Fails with a one-line reason unless the CUDA driver is present.
pub fn require_driver() -> Result<()> {
    if driver_present() {
        Ok(())
    } else {
        Err(Error::cuda(
            "CUDA",
            "no CUDA driver on this machine: libcuda.so not found",
        ))
    }
}

/// How many GPUs the driver sees, or why none can be used.
pub fn gpu_count() -> std::result::Result<usize, String> {
    if !driver_present() {
        return Err("no CUDA driver on this machine: libcuda.so not found".into());
    }
    cudarc::driver::result::init().map_err(|e| format!("the CUDA driver does not start: {e}"))?;
    match cudarc::driver::result::device::get_count() {
        Ok(0) => Err("the CUDA driver sees no GPU".into()),
        Ok(n) => Ok(n as usize),
        Err(e) => Err(format!("the CUDA driver cannot count GPUs: {e}")),
    }
}

/// The driver, each GPU, and the cuDNN, cuBLAS, NCCL and NVRTC versions, or
/// why each is missing.
pub fn report() -> String {
    let mut out = String::new();
    let version = |v: i32| format!("{}.{}", v / 1000, (v % 1000) / 10);
    match gpu_count() {
        Err(why) => {
            let _ = writeln!(out, "driver:  {why}");
        }
        Ok(count) => {
            let mut driver = 0;
            // SAFETY: the driver library is loaded and initialized (gpu_count).
            unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) };
            let _ = writeln!(
                out,
                "driver:  CUDA {} ({count} GPU{})",
                version(driver),
                if count == 1 { "" } else { "s" }
            );
            for ordinal in 0..count {
                let _ = writeln!(out, "gpu {ordinal}:   {}", describe_gpu(ordinal));
            }
        }
    }
    let _ = writeln!(
        out,
        "cuDNN:   {}",
        library(
            // SAFETY: only asks the dynamic loader.
            unsafe { cudarc::cudnn::sys::is_culib_present() },
            "libcudnn.so",
            || {
                let v = cudarc::cudnn::result::get_version();
                format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100)
            },
        )
    );
    let _ = writeln!(
        out,
        "cuBLAS:  {}",
        library(
            // SAFETY: only asks the dynamic loader.
            unsafe { cudarc::cublas::sys::is_culib_present() },
            "libcublas.so",
            || "present".into(),
        )
    );
    let nccl = super::nccl_lib::version().unwrap_or_else(|why| why);
    let _ = writeln!(out, "NCCL:    {nccl}");
    let _ = writeln!(
        out,
        "NVRTC:   {}",
        library(
            // SAFETY: only asks the dynamic loader.
            unsafe { cudarc::nvrtc::sys::is_culib_present() },
            "libnvrtc.so",
            || {
                let (mut major, mut minor) = (0, 0);
                // SAFETY: the library is present; two out-parameters.
                unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
                format!("{major}.{minor}")
            },
        )
    );
    let _ = writeln!(out, "kernels: compiled by {}", super::kernels::COMPILED_BY);
    out
}

/// Bytes in use on GPU `ordinal` (all processes, the contexts included).
pub fn memory_in_use(ordinal: usize) -> Result<usize> {
    require_driver()?;
    let ctx = cudarc::driver::CudaContext::new(ordinal)
        .map_err(|e| Error::cuda(format!("opening GPU {ordinal}"), e))?;
    let (free, total) = ctx
        .mem_get_info()
        .map_err(|e| Error::cuda("reading GPU memory", e))?;
    Ok(total - free)
}

/// Bytes free on GPU `ordinal`.
pub fn memory_free(ordinal: usize) -> Result<usize> {
    require_driver()?;
    let ctx = cudarc::driver::CudaContext::new(ordinal)
        .map_err(|e| Error::cuda(format!("opening GPU {ordinal}"), e))?;
    let (free, _) = ctx
        .mem_get_info()
        .map_err(|e| Error::cuda("reading GPU memory", e))?;
    Ok(free)
}

fn library(present: bool, file: &str, version: impl FnOnce() -> String) -> String {
    if present {
        version()
    } else {
        format!("not found ({file} is not on the loader's path)")
    }
}

fn describe_gpu(ordinal: usize) -> String {
    match cudarc::driver::CudaContext::new(ordinal) {
        Err(e) => format!("cannot open: {e}"),
        Ok(ctx) => {
            let name = ctx.name().unwrap_or_else(|e| format!("unnamed ({e})"));
            let cc = ctx
                .compute_capability()
                .map_or_else(|e| format!("unknown ({e})"), |(a, b)| format!("{a}.{b}"));
            let memory = ctx.total_mem().map_or_else(
                |e| format!("unknown ({e})"),
                |m| format!("{:.1} GiB", m as f64 / (1u64 << 30) as f64),
            );
            format!("{name}, compute capability {cc}, {memory}")
        }
    }
}
