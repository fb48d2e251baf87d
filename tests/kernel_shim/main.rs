//! kernels/lrn.cu, pool.cu and input.cu, compiled as C++ through
//! kernels/shim/kernels_host.cpp and run on the CPU, against the CPU
//! device in both of the GPU's layouts (NCHW, and NHWC as the GPU stores
//! 16-bit maps): in f32 against the f64 reference, and at bf16 and fp16
//! storage against the CPU 16-bit reference (`CpuDevice::with_storage`),
//! so the GPU's kernel sources are checked on every machine, GPU or not;
//! elementwise.cu and reduce.cu in the modules below.
//! The shim's own 16-bit conversions (storage.cuh's C++ half; a GPU's are
//! the hardware's) are checked against the `half` crate.

mod elementwise;
mod reduce;

use alexnet::device::Device;
use alexnet::device::cpu::{CpuDevice, lrn_backward, lrn_forward};
use alexnet::device::cuda::kernels::{lrn, pool};
use alexnet::device::layout::{Layout, transpose_rows};
use alexnet::device::precision::Storage;
use alexnet::net::plan::{LrnShape, PoolShape};
use alexnet::rng::Rng;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Which build of the shim runs.
#[derive(Debug, Clone, Copy)]
enum Build {
    Plain,
    /// With ThreadSanitizer: threads of a block that touch its shared
    /// memory with no barrier between them fail the run.
    RaceChecked,
}

/// The shim, compiled once per test process and build: the tests run in
/// parallel, and one compiling over the executable while another runs it
/// would fail.
fn build_shim(build: Build) -> &'static Path {
    static PLAIN: OnceLock<PathBuf> = OnceLock::new();
    static RACE_CHECKED: OnceLock<PathBuf> = OnceLock::new();
    match build {
        Build::Plain => PLAIN.get_or_init(|| compile_shim("kernels_host", &["-O2"])),
        Build::RaceChecked => RACE_CHECKED
            .get_or_init(|| compile_shim("kernels_host_tsan", &["-O1", "-g", "-fsanitize=thread"])),
    }
}

fn compile_shim(name: &str, flags: &[&str]) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    // No contraction of a multiply and an add into one rounding: the
    // kernels' __fmul_rn and __fadd_rn round each.
    let status = Command::new(&compiler)
        .args(flags)
        .args(["-std=c++20", "-pthread", "-ffp-contract=off"])
        .args(["-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg(root.join("kernels/shim/kernels_host.cpp"))
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C++ compiler `{compiler}` (set CXX): {e}"));
    assert!(
        status.success(),
        "{compiler} {flags:?} failed on kernels/shim/kernels_host.cpp"
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

/// Runs the shim's `op` at `storage` with `args` and `stdin`; its stdout.
fn shim_bytes(op: &str, storage: Storage, args: &[String], stdin: &[u8]) -> Vec<u8> {
    shim_output(Build::Plain, op, storage, args, stdin)
}

/// Runs `build` of the shim's `op` at `storage` with `args` and `stdin`;
/// its stdout, once it has succeeded.
fn shim_output(build: Build, op: &str, storage: Storage, args: &[String], stdin: &[u8]) -> Vec<u8> {
    let mut child = Command::new(build_shim(build))
        .args([op, storage_arg(storage)])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the shim starts");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin)
        .expect("the shim reads its input");
    let out = child.wait_with_output().expect("the shim finishes");
    assert!(
        out.status.success(),
        "the {build:?} shim's {op} failed: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `inputs` one after another as the shim reads them: little-endian f32.
fn le_bytes(inputs: &[&[f32]]) -> Vec<u8> {
    inputs
        .iter()
        .flat_map(|v| v.iter())
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// Runs the shim's `op` at `storage` with `args`, `inputs` on its stdin;
/// returns its outputs, of the lengths `outputs` gives, widened to f32.
fn run_shim(
    op: &str,
    storage: Storage,
    args: &[String],
    inputs: &[&[f32]],
    outputs: &[usize],
) -> Vec<Vec<f32>> {
    let out = shim_bytes(op, storage, args, &le_bytes(inputs));
    let floats: Vec<f32> = out
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(
        floats.len(),
        outputs.iter().sum::<usize>(),
        "the shim's {op} output length"
    );
    let mut rest = &floats[..];
    outputs
        .iter()
        .map(|&len| {
            let (part, after) = rest.split_at(len);
            rest = after;
            part.to_vec()
        })
        .collect()
}

/// Maps `[image][channels][plane]` (NCHW) into `layout`'s order, or back.
fn reorder(layout: Layout, channels: usize, plane: usize, data: &[f32], back: bool) -> Vec<f32> {
    match (layout, back) {
        (Layout::Nchw, _) => data.to_vec(),
        (Layout::Nhwc, false) => transpose_rows(data, channels, plane),
        (Layout::Nhwc, true) => transpose_rows(data, plane, channels),
    }
}

const LAYOUTS: [Layout; 2] = [Layout::Nchw, Layout::Nhwc];

/// The shim's LRN in `layout` on NCHW data, its outputs back in NCHW, with
/// the launcher's arguments (each group's channels an image of their own,
/// its channel stride).
fn lrn_shim(
    layout: Layout,
    storage: Storage,
    s: &LrnShape,
    batch: usize,
    x: &[f32],
    dy: &[f32],
) -> Vec<Vec<f32>> {
    let stride = lrn::channel_stride(s, layout);
    let channels = s.groups * s.c;
    let into = |v: &[f32]| reorder(layout, channels, s.plane, v, false);
    let mut args: Vec<String> = [batch * s.groups, s.c, s.plane, stride, s.size]
        .map(|v| v.to_string())
        .to_vec();
    args.extend([s.alpha, s.beta, s.k].map(|v| format!("{v:e}")));
    let n = x.len();
    run_shim("lrn", storage, &args, &[&into(x), &into(dy)], &[n, n, n])
        .into_iter()
        .map(|v| reorder(layout, channels, s.plane, &v, true))
        .collect()
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

/// The paper's constants on a wide layer, on two groups (the grouped
/// network's), and on fewer channels than the window so both edges clip.
fn lrn_shapes() -> [(LrnShape, usize); 3] {
    let lrn = |groups, c, plane| LrnShape {
        groups,
        c,
        plane,
        size: 5,
        alpha: 1e-4,
        beta: 0.75,
        k: 2.0,
    };
    [
        (lrn(1, 48, 27 * 27), 2),
        (lrn(2, 12, 7 * 5), 2),
        (lrn(1, 3, 5), 3),
    ]
}

#[test]
fn lrn_kernels_match_the_cpu_device() {
    for layout in LAYOUTS {
        for (s, batch) in lrn_shapes() {
            let n = batch * s.groups * s.c * s.plane;
            let mut rng = Rng::new(s.c as u64);
            // Values large enough that α Σ x² matters.
            let x: Vec<f32> = (0..n)
                .map(|_| (60.0 * rng.uniform() - 20.0) as f32)
                .collect();
            let dy: Vec<f32> = (0..n).map(|_| (2.0 * rng.uniform() - 1.0) as f32).collect();
            let out = lrn_shim(layout, Storage::Full, &s, batch, &x, &dy);

            let wide = |v: &[f32]| v.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>();
            let (x64, dy64) = (wide(&x), wide(&dy));
            let (mut y_ref, mut scale_ref, mut dx_ref) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            lrn_forward(&x64, &mut y_ref, &mut scale_ref, &s, batch);
            lrn_backward(&x64, &y_ref, &scale_ref, &dy64, &mut dx_ref, &s, batch);
            let what = |v: &str| format!("{layout:?} {v}, {} groups of {}", s.groups, s.c);
            assert_close(&what("y"), &out[0], &y_ref);
            assert_close(&what("scale"), &out[1], &scale_ref);
            assert_close(&what("dx"), &out[2], &dx_ref);
        }
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
        let apart = (storage.steps_from_zero(g) - storage.steps_from_zero(w)).abs();
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
    for (storage, layout) in [Storage::Bf16, Storage::F16]
        .into_iter()
        .flat_map(|storage| LAYOUTS.map(|layout| (storage, layout)))
    {
        for (s, batch) in lrn_shapes() {
            let n = batch * s.groups * s.c * s.plane;
            let mut rng = Rng::new(s.c as u64 + 7);
            // Stored inputs, as the layers before hand them over.
            let x: Vec<f32> = (0..n)
                .map(|_| storage.round((60.0 * rng.uniform() - 20.0) as f32))
                .collect();
            let dy: Vec<f32> = (0..n)
                .map(|_| storage.round((2.0 * rng.uniform() - 1.0) as f32))
                .collect();
            let out = lrn_shim(layout, storage, &s, batch, &x, &dy);

            let mut cpu = CpuDevice::<f32>::with_storage(storage);
            let (mut y_ref, mut scale_ref, mut dx_ref) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            cpu.lrn_forward(&x, &mut y_ref, &mut scale_ref, &s, batch)
                .expect("the CPU forward pass");
            cpu.lrn_backward(&x, &y_ref, &scale_ref, &dy, &mut dx_ref, &s, batch)
                .expect("the CPU backward pass");
            let what = |v: &str| format!("{layout:?} {v}, {} groups of {}", s.groups, s.c);
            assert_same_storage(storage, &what("y"), &out[0], &y_ref);
            assert_same_storage(storage, &what("scale"), &out[1], &scale_ref);
            assert_same_storage(storage, &what("dx"), &out[2], &dx_ref);
        }
    }
}

/// Max-pooling at every storage and in both layouts against the CPU
/// device at that storage: the maxima exactly, the routed gradients (a
/// few outputs' sums, in output order) as [`assert_same_storage`] allows.
#[test]
fn pool_kernels_match_the_cpu_device_in_both_layouts() {
    // The paper's pool1 on a narrower map, and a map whose last window is cut short.
    let shapes = [
        PoolShape {
            c: 6,
            in_h: 55,
            in_w: 55,
            size: 3,
            stride: 2,
            out_h: 27,
            out_w: 27,
        },
        PoolShape {
            c: 5,
            in_h: 8,
            in_w: 7,
            size: 3,
            stride: 2,
            out_h: 4,
            out_w: 3,
        },
    ];
    for storage in [Storage::Full, Storage::Bf16, Storage::F16] {
        for layout in LAYOUTS {
            for s in &shapes {
                let batch = 2;
                let (in_plane, out_plane) = (s.in_h * s.in_w, s.out_h * s.out_w);
                let (in_len, out_len) = (batch * s.c * in_plane, batch * s.c * out_plane);
                let mut rng = Rng::new(in_len as u64);
                // Few distinct values, so windows hold ties the routing must break alike.
                let x: Vec<f32> = (0..in_len)
                    .map(|_| storage.round((rng.below(9) as f64 * 0.37 - 1.5) as f32))
                    .collect();
                let dy: Vec<f32> = (0..out_len)
                    .map(|_| storage.round((2.0 * rng.uniform() - 1.0) as f32))
                    .collect();
                let mut cpu = CpuDevice::<f32>::with_storage(storage);
                let (mut y, mut dx) = (vec![0.0; out_len], vec![0.0; in_len]);
                cpu.maxpool_forward(&x, &mut y, s, batch)
                    .expect("the CPU forward pass");
                cpu.maxpool_backward(&x, &y, &dy, &mut dx, s, batch)
                    .expect("the CPU backward pass");

                let (planes, interleaved) = pool::planes(s, batch, layout);
                let args: Vec<String> = std::iter::once(planes as u32)
                    .chain(pool::dims(s, interleaved))
                    .map(|v| v.to_string())
                    .collect();
                let out = run_shim(
                    "pool",
                    storage,
                    &args,
                    &[
                        &reorder(layout, s.c, in_plane, &x, false),
                        &reorder(layout, s.c, out_plane, &dy, false),
                    ],
                    &[out_len, in_len],
                );
                let what = format!("{storage:?} {layout:?} pool of {}×{}", s.in_h, s.in_w);
                assert_eq!(
                    reorder(layout, s.c, out_plane, &out[0], true),
                    y,
                    "{what} y"
                );
                let dx_shim = reorder(layout, s.c, in_plane, &out[1], true);
                if storage == Storage::Full {
                    assert_eq!(dx_shim, dx, "{what} dx");
                } else {
                    assert_same_storage(storage, &format!("{what} dx"), &dx_shim, &dx);
                }
            }
        }
    }
}

/// The net's input from u8 crops in both layouts, bit for bit as the CPU
/// device makes it at every storage, and f32 images stored channels last.
#[test]
fn input_kernels_match_the_cpu_device_in_both_layouts() {
    let (images, plane) = (3, 13 * 11);
    let mut rng = Rng::new(31);
    let pixels: Vec<u8> = (0..images * 3 * plane)
        .map(|_| rng.below(256) as u8)
        .collect();
    let offsets: Vec<f32> = (0..images * 3)
        .map(|_| (1.2 * rng.uniform() - 0.6) as f32)
        .collect();
    let f32_images: Vec<f32> = (0..images * 3 * plane)
        .map(|_| (4.0 * rng.uniform() - 2.0) as f32)
        .collect();
    let as_f32: Vec<f32> = pixels.iter().map(|&p| f32::from(p)).collect();
    for storage in [Storage::Full, Storage::Bf16, Storage::F16] {
        let mut cpu = CpuDevice::<f32>::with_storage(storage);
        let mut want = vec![0.0; pixels.len()];
        cpu.input_from_u8(&pixels, &offsets, &mut want)
            .expect("the CPU's input");
        for layout in LAYOUTS {
            let last = usize::from(layout == Layout::Nhwc);
            let args = [images, plane, last].map(|v| v.to_string());
            let out = run_shim("input", storage, &args, &[&as_f32, &offsets], &[want.len()]);
            let got = reorder(layout, 3, plane, &out[0], true);
            assert_eq!(got, want, "{storage:?} {layout:?} input");
        }
        let args = [images, 3, plane].map(|v| v.to_string());
        let out = run_shim(
            "channels_last",
            storage,
            &args,
            &[&f32_images],
            &[f32_images.len()],
        );
        let rounded: Vec<f32> = f32_images.iter().map(|&v| storage.round(v)).collect();
        assert_eq!(
            reorder(Layout::Nhwc, 3, plane, &out[0], true),
            rounded,
            "{storage:?} f32 images stored channels last"
        );
    }
}

/// The shim's conversions (kernels/storage.cuh written out in C++) against
/// the `half` crate, the CPU reference's: rounding to nearest even across
/// ties, subnormals, overflow and both signs, and every bit pattern widened.
#[test]
fn the_shims_16_bit_conversions_are_the_half_crates() {
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
        let out = shim_bytes("round", storage, &[], &le_bytes(&[&values]));
        assert_eq!(out.len(), 2 * values.len() + 4 * 65536);
        let (rounded, widened) = out.split_at(2 * values.len());
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
