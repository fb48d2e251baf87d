//! kernels/lrn.cu, compiled as C++ through kernels/shim/lrn_host.cpp and run
//! on the CPU, against the CPU device's LRN in f64: the GPU's LRN source is
//! checked on every machine, GPU or not.

use alexnet::device::cpu::{lrn_backward, lrn_forward};
use alexnet::net::plan::LrnShape;
use alexnet::rng::Rng;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn build_shim() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("lrn_host");
    let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let status = Command::new(&compiler)
        .args(["-O2", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg(root.join("kernels/shim/lrn_host.cpp"))
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C++ compiler `{compiler}` (set CXX): {e}"));
    assert!(
        status.success(),
        "{compiler} failed on kernels/shim/lrn_host.cpp"
    );
    exe
}

/// Runs the shim; returns (y, scale, dx) as f32.
fn run_shim(exe: &Path, s: &LrnShape, batch: usize, x: &[f32], dy: &[f32]) -> [Vec<f32>; 3] {
    let mut child = Command::new(exe)
        .args([batch, s.c, s.plane, s.size].map(|v| v.to_string()))
        .args([s.alpha, s.beta, s.k].map(|v| format!("{v:e}")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the shim starts");
    let bytes: Vec<u8> = x.iter().chain(dy).flat_map(|v| v.to_le_bytes()).collect();
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(&bytes)
        .expect("the shim reads its input");
    let out = child.wait_with_output().expect("the shim finishes");
    assert!(out.status.success(), "the shim failed: {:?}", out.status);
    let floats: Vec<f32> = out
        .stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(floats.len(), 3 * x.len(), "the shim's output length");
    let mut parts = floats.chunks_exact(x.len()).map(<[f32]>::to_vec);
    std::array::from_fn(|_| parts.next().expect("three outputs"))
}

fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    let scale = want.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (f64::from(g) - w).abs() / scale;
        assert!(
            err < 2e-6,
            "{what}[{i}]: kernel {g}, f64 reference {w}, error {err:e} of the largest"
        );
    }
}

#[test]
fn lrn_kernels_match_the_cpu_device() {
    let exe = build_shim();
    // The paper's constants on a wide layer, and fewer channels than the
    // window so both edges clip; values large enough that α Σ x² matters.
    for (c, plane, batch) in [(48, 27 * 27, 2), (3, 5, 3)] {
        let s = LrnShape {
            c,
            plane,
            size: 5,
            alpha: 1e-4,
            beta: 0.75,
            k: 2.0,
        };
        let n = batch * c * plane;
        let mut rng = Rng::new(c as u64);
        let x: Vec<f32> = (0..n)
            .map(|_| (60.0 * rng.uniform() - 20.0) as f32)
            .collect();
        let dy: Vec<f32> = (0..n).map(|_| (2.0 * rng.uniform() - 1.0) as f32).collect();
        let [y, scale, dx] = run_shim(&exe, &s, batch, &x, &dy);

        let wide = |v: &[f32]| v.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>();
        let (x64, dy64) = (wide(&x), wide(&dy));
        let (mut y_ref, mut scale_ref, mut dx_ref) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        lrn_forward(&x64, &mut y_ref, &mut scale_ref, &s, batch);
        lrn_backward(&x64, &y_ref, &scale_ref, &dy64, &mut dx_ref, &s, batch);
        assert_close("y", &y, &y_ref);
        assert_close("scale", &scale, &scale_ref);
        assert_close("dx", &dx, &dx_ref);
    }
}
