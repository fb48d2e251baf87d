//! Our CUDA kernels (`kernels/*.cu`), embedded by build.rs as PTX compiled by
//! nvcc or as source for NVRTC, loaded once per device. Each file's
//! launchers live beside it (`kernels/NAME.rs`): methods that take typed
//! device buffers and shapes, so that no call site orders raw pointers.

#[path = "../../../kernels/elementwise.rs"]
pub mod elementwise;
#[path = "../../../kernels/input.rs"]
pub mod input;
#[path = "../../../kernels/lrn.rs"]
pub mod lrn;
#[path = "../../../kernels/pool.rs"]
pub mod pool;
#[path = "../../../kernels/reduce.rs"]
pub mod reduce;

use crate::device::precision::Storage;
use crate::error::{Error, Result};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, DeviceRepr, LaunchArgs, LaunchConfig, ValidAsZeroBits,
};
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

/// `kernels/storage.cuh`, which kernel files include for their 16-bit
/// storage types; NVRTC sees one source string, so [`nvrtc_compile`]
/// splices it in.
const STORAGE_HEADER: &str = include_str!("../../../kernels/storage.cuh");

/// The line a kernel file includes [`STORAGE_HEADER`] with.
const STORAGE_INCLUDE: &str = "#include \"storage.cuh\"";

/// Compiles CUDA source to PTX with NVRTC for `arch` (e.g. `compute_90`),
/// with `kernels/storage.cuh` spliced in where the source includes it.
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
    compile_ptx_with_opts(source.replace(STORAGE_INCLUDE, STORAGE_HEADER), options)
        .map(|ptx| ptx.to_src())
        .map_err(|e| Error::cuda(format!("NVRTC on kernels/{name}.cu"), e))
}

/// Every kernel the CUDA device launches, by file.
pub struct Kernels {
    pub elementwise: elementwise::Elementwise,
    pub input: input::Input,
    pub lrn: lrn::Lrn,
    pub pool: pool::Pool,
    pub reduce: reduce::Reduce,
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
        let file = |name: &'static str| Loaded {
            modules: &modules,
            file: name,
        };
        Ok(Kernels {
            elementwise: elementwise::Elementwise::load(&file("elementwise"))?,
            input: input::Input::load(&file("input"))?,
            lrn: lrn::Lrn::load(&file("lrn"))?,
            pool: pool::Pool::load(&file("pool"))?,
            reduce: reduce::Reduce::load(&file("reduce"))?,
        })
    }
}

/// One kernel file among the loaded modules, for its launchers to find their functions in.
pub struct Loaded<'a> {
    modules: &'a [(&'static str, Arc<CudaModule>)],
    file: &'static str,
}

impl Loaded<'_> {
    /// The kernel `function` of this file.
    fn function(&self, function: &str) -> Result<CudaFunction> {
        let file = self.file;
        let (_, module) = self
            .modules
            .iter()
            .find(|(name, _)| *name == file)
            .ok_or_else(|| {
                Error::cuda("loading kernels", format!("kernels/{file}.cu is missing"))
            })?;
        module
            .load_function(function)
            .map_err(|e| Error::cuda(format!("finding {function} in kernels/{file}.cu"), e))
    }

    /// The kernel `name` of this file in each storage.
    fn by_storage(&self, name: &str) -> Result<ByStorage> {
        Ok(ByStorage {
            f32: self.function(&format!("{name}_f32"))?,
            bf16: self.function(&format!("{name}_bf16"))?,
            f16: self.function(&format!("{name}_f16"))?,
        })
    }

    /// The kernel `name` of this file in each 16-bit storage.
    fn by_half(&self, name: &str) -> Result<ByHalf> {
        Ok(ByHalf {
            bf16: self.function(&format!("{name}_bf16"))?,
            f16: self.function(&format!("{name}_f16"))?,
        })
    }
}

/// An element type our kernels store (`kernels/storage.cuh`): f32, or
/// bfloat16 or IEEE half as the `half` crate lays them out (16 bits, the
/// same as the kernels' `bf16` and `f16`).
pub trait Stored: DeviceRepr + ValidAsZeroBits + Copy + Unpin + Send + Sync + 'static {
    /// The storage this type is.
    const STORAGE: Storage;
}

impl Stored for f32 {
    const STORAGE: Storage = Storage::Full;
}

impl Stored for half::bf16 {
    const STORAGE: Storage = Storage::Bf16;
}

impl Stored for half::f16 {
    const STORAGE: Storage = Storage::F16;
}

/// A 16-bit [`Stored`] type: one that has an f32 master to be narrowed from.
pub trait Half: Stored {
    /// Whether this is bfloat16 (else IEEE half).
    const BF16: bool;
}

impl Half for half::bf16 {
    const BF16: bool = true;
}

impl Half for half::f16 {
    const BF16: bool = false;
}

/// One kernel in each 16-bit storage: `NAME_bf16` and `NAME_f16`.
pub struct ByHalf {
    bf16: CudaFunction,
    f16: CudaFunction,
}

impl ByHalf {
    /// The kernel that stores `H`.
    fn of<H: Half>(&self) -> &CudaFunction {
        if H::BF16 { &self.bf16 } else { &self.f16 }
    }
}

/// One kernel in each storage: `NAME_f32`, `NAME_bf16` and `NAME_f16`.
pub struct ByStorage {
    f32: CudaFunction,
    bf16: CudaFunction,
    f16: CudaFunction,
}

impl ByStorage {
    /// The kernel that stores `S`.
    fn of<S: Stored>(&self) -> &CudaFunction {
        match S::STORAGE {
            Storage::Full => &self.f32,
            Storage::Bf16 => &self.bf16,
            Storage::F16 => &self.f16,
        }
    }
}

/// Launches what `builder` holds with `config`.
fn run(mut builder: LaunchArgs, config: LaunchConfig) -> Result<()> {
    // SAFETY: every launcher pushes the arguments its kernel declares, in
    // its order and of its types, with buffers whose lengths it checked.
    unsafe { builder.launch(config) }
        .map(|_| ())
        .map_err(|e| Error::cuda("launching a kernel", e))
}
