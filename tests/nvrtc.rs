//! NVRTC, through cudarc, compiles every `kernels/*.cu` for the data-centre
//! GPUs, with no GPU present. Needs `libnvrtc.so` on the loader's path (CI
//! installs NVIDIA's pip wheel); without it the test is reported as ignored
//! (libtest-mimic's harness), saying why, unless `ALEXNET_REQUIRE_NVRTC=1`
//! makes that a failure.

use alexnet::device::cuda::kernels::nvrtc_compile;
use libtest_mimic::{Arguments, Trial};
use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let name = "nvrtc_compiles_every_kernel_file";
    // SAFETY: only asks the dynamic loader whether the library exists.
    let present = unsafe { cudarc::nvrtc::sys::is_culib_present() };
    let why = "libnvrtc.so not found on the loader's path";
    let trial = match (present, std::env::var("ALEXNET_REQUIRE_NVRTC").is_ok()) {
        (true, _) => Trial::test(name, || {
            nvrtc_compiles_every_kernel_file();
            Ok(())
        }),
        (false, true) => Trial::test(name, move || {
            Err(format!("ALEXNET_REQUIRE_NVRTC is set but {why}").into())
        }),
        (false, false) => {
            eprintln!("nvrtc test skipped, reported as ignored: {why}");
            Trial::test(name, || Ok(())).with_ignored_flag(true)
        }
    };
    libtest_mimic::run(&args, vec![trial]).exit_code()
}

fn nvrtc_compiles_every_kernel_file() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("kernels/ exists")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "kernel files: {files:?}");
    for file in files {
        let name = file.file_stem().unwrap().to_string_lossy().into_owned();
        let source = std::fs::read_to_string(&file).expect("readable kernel source");
        let entries: Vec<&str> = source
            .split("extern \"C\" __global__ void ")
            .skip(1)
            .map(|rest| rest.split('(').next().unwrap().trim())
            .collect();
        assert!(!entries.is_empty(), "{name}.cu declares no kernel");
        for arch in ["compute_80", "compute_90"] {
            let ptx = nvrtc_compile(&name, &source, arch).unwrap_or_else(|e| panic!("{e}"));
            for entry in &entries {
                assert!(
                    ptx.contains(&format!(".entry {entry}(")),
                    "{name}.cu for {arch}: no entry point {entry} in the PTX"
                );
            }
        }
    }
}
