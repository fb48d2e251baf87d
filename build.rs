//! Embeds the CUDA kernels of `kernels/*.cu` (`KERNEL_DIR`): compiled by
//! nvcc when one is found (`$CUDA_HOME/bin/nvcc`, then `nvcc` on `PATH`),
//! otherwise as source that the CUDA device compiles with NVRTC at start.
//! The kernels are the same either way. With nvcc, `ALEXNET_CUDA_ARCHS`
//! (e.g. `80,86,89,90`) builds a fat binary of those architectures plus PTX
//! of the last, for newer GPUs; without it, PTX for `ALEXNET_PTX_ARCH`
//! (default `compute_80`). `ALEXNET_NVCC=0` forces the NVRTC path.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the kernel sources live (docker/Dockerfile copies the same folder;
/// tests/docker.rs checks that it does).
const KERNEL_DIR: &str = "kernels";

fn main() {
    println!("cargo:rerun-if-changed={KERNEL_DIR}");
    for var in [
        "CUDA_HOME",
        "ALEXNET_NVCC",
        "ALEXNET_PTX_ARCH",
        "ALEXNET_CUDA_ARCHS",
        "PATH",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut sources: Vec<PathBuf> = std::fs::read_dir(KERNEL_DIR)
        .expect("the kernel folder exists")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();

    let nvcc = find_nvcc();
    let arch = std::env::var("ALEXNET_PTX_ARCH").unwrap_or_else(|_| "compute_80".into());
    let fat: Vec<String> = std::env::var("ALEXNET_CUDA_ARCHS")
        .map(|v| {
            v.split(',')
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let mut table = String::from("&[\n");
    for source in &sources {
        let name = source
            .file_stem()
            .expect("a .cu file has a stem")
            .to_string_lossy();
        let absolute = std::fs::canonicalize(source).expect("the kernel source exists");
        let code = match (&nvcc, fat.last()) {
            (Some(nvcc), Some(last)) => {
                let bin = out.join(format!("{name}.fatbin"));
                let mut args = vec!["-fatbin".to_string()];
                for a in &fat {
                    args.push(format!("-gencode=arch=compute_{a},code=sm_{a}"));
                }
                args.push(format!("-gencode=arch=compute_{last},code=compute_{last}"));
                run_nvcc(nvcc, &args, &bin, &absolute);
                format!(
                    "KernelCode::Fatbin(include_bytes!({:?}))",
                    bin.display().to_string()
                )
            }
            (Some(nvcc), None) => {
                let ptx = out.join(format!("{name}.ptx"));
                run_nvcc(
                    nvcc,
                    &["--ptx".into(), format!("-arch={arch}")],
                    &ptx,
                    &absolute,
                );
                format!(
                    "KernelCode::Ptx(include_str!({:?}))",
                    ptx.display().to_string()
                )
            }
            (None, _) => format!(
                "KernelCode::Source(include_str!({:?}))",
                absolute.display().to_string()
            ),
        };
        table.push_str(&format!("    ({name:?}, {code}),\n"));
    }
    table.push(']');
    std::fs::write(out.join("kernels.rs"), table).expect("OUT_DIR is writable");
    let how = match (&nvcc, fat.is_empty()) {
        (None, _) => "NVRTC at start".to_string(),
        (Some(_), true) => format!("nvcc (PTX for {arch})"),
        (Some(_), false) => format!("nvcc (sm_{} and PTX)", fat.join(", sm_")),
    };
    println!("cargo:rustc-env=ALEXNET_KERNELS_COMPILED_BY={how}");
}

fn run_nvcc(nvcc: &Path, args: &[String], out: &Path, source: &Path) {
    let status = Command::new(nvcc)
        .args(args)
        .arg("-o")
        .arg(out)
        .arg(source)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
    assert!(status.success(), "nvcc failed on {}", source.display());
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
