//! kernels/lrn.cu, compiled as C++ through kernels/shim/lrn_host.cpp and run
//! on the CPU, against the CPU device's LRN: in f32 against the f64
//! reference, and at bf16 and fp16 storage against the CPU 16-bit reference
//! (`CpuDevice::with_storage`), so the GPU's LRN source is checked on every
//! machine, GPU or not. The shim's own 16-bit conversions (storage.cuh's C++
//! half; a GPU's are the hardware's) are checked against the `half` crate.

use alexnet::device::Device;
use alexnet::device::cpu::{CpuDevice, lrn_backward, lrn_forward};
use alexnet::device::precision::Storage;
use alexnet::net::plan::LrnShape;
use alexnet::rng::Rng;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The shim, compiled once per test process: the tests run in parallel,
/// and one compiling over the executable while another runs it would fail.
fn build_shim() -> &'static Path {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(compile_shim)
}

fn compile_shim() -> PathBuf {
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

/// The shim's name for `storage`.
fn storage_arg(storage: Storage) -> &'static str {
    match storage {
        Storage::Full => "f32",
        Storage::Bf16 => "bf16",
        Storage::F16 => "f16",
    }
}

/// Runs the shim's kernels at `storage`; returns (y, scale, dx) widened to f32.
fn run_shim(
    exe: &Path,
    storage: Storage,
    s: &LrnShape,
    batch: usize,
    x: &[f32],
    dy: &[f32],
) -> [Vec<f32>; 3] {
    let mut child = Command::new(exe)
        .arg(storage_arg(storage))
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
            groups: 1,
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
        let [y, scale, dx] = run_shim(exe, Storage::Full, &s, batch, &x, &dy);

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

/// `v`'s position on the line of `storage`'s values, in steps from zero
/// (`v` must be one of them).
fn steps_from_zero(storage: Storage, v: f32) -> i32 {
    let bits = match storage {
        Storage::Bf16 => half::bf16::from_f32(v).to_bits(),
        Storage::F16 => half::f16::from_f32(v).to_bits(),
        Storage::Full => unreachable!("16-bit storage only"),
    };
    let magnitude = i32::from(bits & 0x7fff);
    if bits & 0x8000 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// Every kernel output is a `storage` value within one step of the CPU
/// reference's, and nearly all equal it: only where the two sides' f32
/// arithmetic (the kernel's `powf`, the CPU's square roots; the order of
/// f32 operations) lands on opposite sides of a rounding boundary may they
/// differ. Rounding at a different point than the reference does (y from
/// the rounded scale, say) moves far more than that.
fn assert_same_storage(storage: Storage, what: &str, got: &[f32], want: &[f32]) {
    let mut differing = 0;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            storage.round(g),
            g,
            "{what}[{i}] = {g} is not a {storage:?} value"
        );
        let apart = (steps_from_zero(storage, g) - steps_from_zero(storage, w)).abs();
        assert!(
            apart <= 1,
            "{what}[{i}]: kernel {g}, CPU reference {w}: {apart} {storage:?} steps apart"
        );
        differing += usize::from(apart != 0);
    }
    assert!(
        differing * 1000 <= got.len(),
        "{what}: {differing} of {} values one {storage:?} step off the CPU reference",
        got.len()
    );
}

#[test]
fn lrn_kernels_at_16_bits_match_the_cpu_16_bit_reference() {
    let exe = build_shim();
    for storage in [Storage::Bf16, Storage::F16] {
        for (c, plane, batch) in [(48, 27 * 27, 2), (3, 5, 3)] {
            let s = LrnShape {
                groups: 1,
                c,
                plane,
                size: 5,
                alpha: 1e-4,
                beta: 0.75,
                k: 2.0,
            };
            let n = batch * c * plane;
            let mut rng = Rng::new(c as u64 + 7);
            // Stored inputs, as the layers before hand them over.
            let x: Vec<f32> = (0..n)
                .map(|_| storage.round((60.0 * rng.uniform() - 20.0) as f32))
                .collect();
            let dy: Vec<f32> = (0..n)
                .map(|_| storage.round((2.0 * rng.uniform() - 1.0) as f32))
                .collect();
            let [y, scale, dx] = run_shim(exe, storage, &s, batch, &x, &dy);

            let mut cpu = CpuDevice::<f32>::with_storage(storage);
            let (mut y_ref, mut scale_ref, mut dx_ref) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            cpu.lrn_forward(&x, &mut y_ref, &mut scale_ref, &s, batch)
                .expect("the CPU forward pass");
            cpu.lrn_backward(&x, &y_ref, &scale_ref, &dy, &mut dx_ref, &s, batch)
                .expect("the CPU backward pass");
            assert_same_storage(storage, "y", &y, &y_ref);
            assert_same_storage(storage, "scale", &scale, &scale_ref);
            assert_same_storage(storage, "dx", &dx, &dx_ref);
        }
    }
}

/// The shim's conversions (kernels/storage.cuh written out in C++) against
/// the `half` crate, the CPU reference's: rounding to nearest even across
/// ties, subnormals, overflow and both signs, and every bit pattern widened.
#[test]
fn the_shims_16_bit_conversions_are_the_half_crates() {
    let exe = build_shim();
    let mut rng = Rng::new(16);
    let mut values: Vec<f32> = (0..20_000)
        .map(|_| f32::from_bits((rng.uniform() * f64::from(u32::MAX)) as u32))
        .filter(|v| !v.is_nan())
        .collect();
    // Exact ties and their neighbours at several binades, fp16's range ends
    // and subnormals, and zero's two signs.
    for e in [-30, -24, -20, -15, -14, -1, 0, 7, 15, 16, 100] {
        let base = 2f32.powi(e);
        for frac in [1, 3, 5, 257, 1023, 1025] {
            for eps in [-1i32, 0, 1] {
                let tie = base * (1.0 + frac as f32 * 2f32.powi(-11));
                let near = f32::from_bits(tie.to_bits().wrapping_add_signed(eps));
                values.extend([near, -near]);
                let tie8 = base * (1.0 + frac as f32 * 2f32.powi(-8));
                values.push(f32::from_bits(tie8.to_bits().wrapping_add_signed(eps)));
            }
        }
    }
    values.extend([
        0.0,
        -0.0,
        65504.0,
        65519.99,
        65520.0,
        1e-8,
        -1e-8,
        f32::MAX,
        f32::INFINITY,
    ]);
    for storage in [Storage::Bf16, Storage::F16] {
        let mut child = Command::new(exe)
            .args(["round", storage_arg(storage)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the shim starts");
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(&bytes)
            .expect("the shim reads its input");
        let out = child.wait_with_output().expect("the shim finishes");
        assert!(out.status.success(), "the shim failed: {:?}", out.status);
        assert_eq!(out.stdout.len(), 2 * values.len() + 4 * 65536);
        let (rounded, widened) = out.stdout.split_at(2 * values.len());
        for (&v, b) in values.iter().zip(rounded.chunks_exact(2)) {
            let got = u16::from_le_bytes([b[0], b[1]]);
            let want = match storage {
                Storage::Bf16 => half::bf16::from_f32(v).to_bits(),
                _ => half::f16::from_f32(v).to_bits(),
            };
            assert_eq!(got, want, "{storage:?} of {v:e} ({:#010x})", v.to_bits());
        }
        for (bits, w) in widened.chunks_exact(4).enumerate() {
            let got = f32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            let want = match storage {
                Storage::Bf16 => half::bf16::from_bits(bits as u16).to_f32(),
                _ => half::f16::from_bits(bits as u16).to_f32(),
            };
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{storage:?} bits {bits:#06x}: shim {got:e}, half {want:e}"
            );
        }
    }
}
