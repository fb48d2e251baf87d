//! Finding NCCL's library and naming its errors, without touching anything
//! that panics when the library is missing: what `alexnet info` reports and
//! what the NCCL link checks before it starts.

use crate::error::{Error, Result};
use cudarc::nccl::result::NcclError;
use cudarc::nccl::sys::ncclResult_t;
use std::path::PathBuf;

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
    let v = cudarc::nccl::result::get_nccl_version().map_err(|e| message(&e))?;
    let version = format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100);
    // Non-blocking communicators (ncclCommInitRankConfig) came in 2.14;
    // cudarc's loader panics on a symbol an older library lacks.
    if v < 21400 {
        return Err(format!(
            "NCCL {version} is older than 2.14, which the non-blocking communicators need"
        ));
    }
    Ok(version)
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
}
