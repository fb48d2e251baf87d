//! The link over NCCL: one tower per GPU, one communicator per tower thread,
//! all-gather and summing reduce-scatter queued on the tower's own stream.
//! The host never waits at an exchange: the calls are queued behind the
//! layer that produced the data and ahead of the one that reads it. Nothing
//! overlaps compute yet: the exchanges run on the compute stream, in order.

use super::{Link, check_sizes};
use crate::device::cuda::CudaDevice;
use crate::error::{Error, Result};
use cudarc::driver::CudaSlice;
use cudarc::nccl::result::NcclError;
use cudarc::nccl::sys::ncclResult_t;
use cudarc::nccl::{Comm, Id, ReduceOp};
use std::path::PathBuf;

/// One tower's end of the NCCL link.
pub struct NcclLink {
    comm: Comm,
}

/// Whether NCCL's library can be loaded, and its version.
pub fn version() -> std::result::Result<String, String> {
    // SAFETY: only asks the dynamic loader whether the library exists.
    if !unsafe { cudarc::nccl::sys::is_culib_present() } {
        return Err(match find_versioned_library() {
            Some(path) => format!(
                "libnccl.so not found, though {} is (the loader wants the unversioned name)",
                path.display()
            ),
            None => "libnccl.so not found on the loader's path".into(),
        });
    }
    cudarc::nccl::result::get_nccl_version()
        .map(|v| format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100))
        .map_err(|e| message(&e))
}

/// A fresh communicator id, made once per pair and given to both towers.
pub fn new_id() -> Result<Id> {
    version().map_err(|why| Error::cuda("NCCL", why))?;
    Id::new().map_err(|e| Error::cuda("NCCL unique id", message(&e)))
}

impl NcclLink {
    /// Tower `rank` of `world` joins communicator `id` on `device`'s stream.
    /// Every rank must call this at the same time, each on its own thread.
    pub fn new(rank: usize, world: usize, id: Id, device: &CudaDevice) -> Result<Self> {
        Comm::from_rank(std::sync::Arc::clone(device.stream()), rank, world, id)
            .map(|comm| NcclLink { comm })
            .map_err(|e| Error::cuda(format!("NCCL init of rank {rank} of {world}"), message(&e)))
    }
}

impl Link<CudaSlice<f32>> for NcclLink {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn all_gather(&mut self, local: &CudaSlice<f32>, gathered: &mut CudaSlice<f32>) -> Result<()> {
        check_sizes("all-gather", local.len(), gathered.len())?;
        self.comm
            .all_gather(local, gathered)
            .map(drop)
            .map_err(|e| Error::cuda("NCCL all-gather", message(&e)))
    }

    fn reduce_scatter(&mut self, full: &CudaSlice<f32>, local: &mut CudaSlice<f32>) -> Result<()> {
        check_sizes("reduce-scatter", local.len(), full.len())?;
        self.comm
            .reduce_scatter(full, local, &ReduceOp::Sum)
            .map(drop)
            .map_err(|e| Error::cuda("NCCL reduce-scatter", message(&e)))
    }
}

/// What an NCCL error means, in words (cudarc's error prints only "NcclError").
pub fn message(error: &NcclError) -> String {
    let what = match error.0 {
        ncclResult_t::ncclSuccess => "success",
        ncclResult_t::ncclUnhandledCudaError => "a CUDA call failed inside NCCL",
        ncclResult_t::ncclSystemError => "a system call failed (memory, sockets, shared memory)",
        ncclResult_t::ncclInternalError => "internal NCCL error",
        ncclResult_t::ncclInvalidArgument => "invalid argument",
        ncclResult_t::ncclInvalidUsage => "invalid usage (wrong call order or mismatched ranks)",
        ncclResult_t::ncclRemoteError => "a remote rank failed",
        ncclResult_t::ncclInProgress => "operation still in progress",
        _ => "unknown NCCL error",
    };
    format!("{what} ({:?})", error.0)
}

/// `libnccl.so.2` in the usual places, for the hint that only its
/// unversioned name is missing.
pub fn find_versioned_library() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(
        [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/usr/local/nccl/lib",
            "/usr/local/cuda/lib64",
            "/usr/lib64",
        ]
        .map(PathBuf::from),
    );
    dirs.into_iter()
        .map(|d| d.join("libnccl.so.2"))
        .find(|p| p.exists())
}

/// Where only `libnccl.so.2` exists (a stock NCCL install), the loader
/// cudarc uses cannot find NCCL, which it asks for as `libnccl.so`. This
/// links the unversioned name to it in a private folder and runs this
/// program again with that folder on `LD_LIBRARY_PATH` (the loader reads the
/// variable only at start). Returns without doing anything where NCCL loads
/// already, none is installed, or this is the second run; returns an error
/// only if the new run cannot start.
#[cfg(unix)]
pub fn relaunch_with_unversioned_name() -> Result<()> {
    use std::os::unix::process::CommandExt;
    const GUARD: &str = "ALEXNET_NCCL_LINKED";
    // SAFETY: only asks the dynamic loader whether the library exists.
    let loads = unsafe { cudarc::nccl::sys::is_culib_present() };
    let Some(versioned) = find_versioned_library() else {
        return Ok(());
    };
    if loads || std::env::var_os(GUARD).is_some() {
        return Ok(());
    }
    // SAFETY: getuid has no preconditions.
    let dir = std::env::temp_dir().join(format!("alexnet-nccl-{}", unsafe { libc::getuid() }));
    let link = dir.join("libnccl.so");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&versioned, &link).map_err(|e| Error::io(&link, e))?;
    let path = match std::env::var_os("LD_LIBRARY_PATH") {
        Some(old) => {
            let mut joined = dir.clone().into_os_string();
            joined.push(":");
            joined.push(old);
            joined
        }
        None => dir.clone().into_os_string(),
    };
    let exe = std::env::current_exe().map_err(|e| Error::io("the running program", e))?;
    eprintln!(
        "NCCL: linking libnccl.so to {} in {} and starting again",
        versioned.display(),
        dir.display()
    );
    let error = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env("LD_LIBRARY_PATH", path)
        .env(GUARD, "1")
        .exec();
    Err(Error::io(exe, error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nccl_errors_read_as_words() {
        let e = NcclError(ncclResult_t::ncclInvalidArgument);
        assert_eq!(message(&e), "invalid argument (ncclInvalidArgument)");
        let e = NcclError(ncclResult_t::ncclSystemError);
        assert!(message(&e).starts_with("a system call failed"));
    }

    #[test]
    fn a_missing_library_is_a_clear_error() {
        match version() {
            Ok(v) => {
                let _ = std::io::Write::write_fmt(
                    &mut std::io::stderr(),
                    format_args!(
                        "NCCL {v} is present; the missing-library path is not exercised here\n"
                    ),
                );
            }
            Err(why) => {
                assert!(why.contains("libnccl.so"), "{why}");
                let e = new_id().unwrap_err().to_string();
                assert!(e.starts_with("NCCL: libnccl.so"), "{e}");
            }
        }
    }
}
