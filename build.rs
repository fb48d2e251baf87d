//! Embeds the CUDA kernels of `kernels/*.cu`: as PTX compiled by nvcc when one
//! is found (`$CUDA_HOME/bin/nvcc`, then `nvcc` on `PATH`), otherwise as
//! source that the CUDA device compiles with NVRTC at start. The kernels are
//! the same either way. `ALEXNET_NVCC=0` forces the NVRTC path;
//! `ALEXNET_PTX_ARCH` picks the PTX target (default `compute_80`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    for var in ["CUDA_HOME", "ALEXNET_NVCC", "ALEXNET_PTX_ARCH", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut sources: Vec<PathBuf> = std::fs::read_dir("kernels")
        .expect("kernels/ exists")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();

    let nvcc = find_nvcc();
    let arch = std::env::var("ALEXNET_PTX_ARCH").unwrap_or_else(|_| "compute_80".into());
    let mut table = String::from("&[\n");
    for source in &sources {
        let name = source
            .file_stem()
            .expect("a .cu file has a stem")
            .to_string_lossy();
        let absolute = std::fs::canonicalize(source).expect("the kernel source exists");
        let code = match &nvcc {
            Some(nvcc) => {
                let ptx = out.join(format!("{name}.ptx"));
                let status = Command::new(nvcc)
                    .args(["--ptx", &format!("-arch={arch}"), "-o"])
                    .arg(&ptx)
                    .arg(&absolute)
                    .status()
                    .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
                assert!(status.success(), "nvcc failed on {}", source.display());
                format!(
                    "KernelCode::Ptx(include_str!({:?}))",
                    ptx.display().to_string()
                )
            }
            None => format!(
                "KernelCode::Source(include_str!({:?}))",
                absolute.display().to_string()
            ),
        };
        table.push_str(&format!("    ({name:?}, {code}),\n"));
    }
    table.push(']');
    std::fs::write(out.join("kernels.rs"), table).expect("OUT_DIR is writable");
    let how = if nvcc.is_some() { "nvcc" } else { "nvrtc" };
    println!("cargo:rustc-env=ALEXNET_KERNELS_COMPILED_BY={how}");
}

fn find_nvcc() -> Option<PathBuf> {
    if std::env::var("ALEXNET_NVCC").is_ok_and(|v| v == "0") {
        return None;
    }
    let from_home = std::env::var_os("CUDA_HOME").map(|h| Path::new(&h).join("bin/nvcc"));
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("nvcc"));
    from_home.into_iter().chain(on_path).find(|p| p.is_file())
}
