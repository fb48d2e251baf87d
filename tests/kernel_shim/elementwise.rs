//! kernels/elementwise.cu through the shim, at every storage: dropout
//! draws the CPU device's mask (paper §4.2), element for element, and on a
//! feature map in both of the GPU's layouts; ReLU (§3.1), tanh, the sum,
//! the overflow flag and momentum SGD (§5) give the CPU device's values;
//! the bias broadcast fills each channel in both layouts; the conversions
//! to 16 bits round as the `half` crate.

use super::{LAYOUTS, reorder, run_shim};
use alexnet::device::cpu::CpuDevice;
use alexnet::device::cuda::kernels::elementwise::{bias_plane, dropout_units};
use alexnet::device::layout::Layout;
use alexnet::device::precision::Storage;
use alexnet::device::{Device, DropoutMask, SgdStep};
use alexnet::rng::Rng;

/// The shim's dropout of `x` (in `layout`'s order) under `mask`, with the
/// launcher's arguments (the second key that of the last run).
fn dropout_shim(storage: Storage, layout: Layout, x: &[f32], mask: &DropoutMask) -> Vec<f32> {
    let (channels, plane) = dropout_units(mask, layout);
    let args = [
        x.len().to_string(),
        format!("{:e}", mask.p),
        mask.keys[0].to_string(),
        mask.keys[mask.groups - 1].to_string(),
        mask.run.to_string(),
        mask.groups.to_string(),
        mask.first.to_string(),
        channels.to_string(),
        plane.to_string(),
    ];
    run_shim("dropout", storage, &args, &[x], &[x.len()]).remove(0)
}

/// The CPU's dropout of `x` (channels first) against the shim's in
/// `layout`, its result brought back to channels first.
fn check(storage: Storage, layout: Layout, x: &[f32], mask: &DropoutMask) {
    let (channels, plane) = mask.map.unwrap_or((x.len(), 1));
    let stored = reorder(layout, channels, plane, x, false);
    let got = reorder(
        layout,
        channels,
        plane,
        &dropout_shim(storage, layout, &stored, mask),
        true,
    );
    let mut want = vec![0.0; x.len()];
    CpuDevice::<f32>::with_storage(storage)
        .dropout_forward(&x.to_vec(), &mut want, mask)
        .expect("the CPU dropout");
    // A mask that keeps all or none would hide a wrong index.
    let kept = want.iter().filter(|v| **v != 0.0).count();
    if mask.p > 0.0 {
        assert!(
            kept > x.len() / 4 && kept < x.len(),
            "{mask:?}: {kept} of {} kept",
            x.len()
        );
    } else {
        assert_eq!(want, x, "p = 0 keeps every unit as it is");
    }
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "{storage:?} {layout:?} {mask:?}: unit {i}");
    }
}

fn random(storage: Storage, n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| storage.round((4.0 * rng.uniform() - 2.0) as f32))
        .collect()
}

#[test]
fn dropout_kernel_draws_the_cpu_devices_mask() {
    // One tower's units from a replica's shard on; both towers' runs of
    // 300 units an image, each run under its own key; the test-time identity.
    let masks = [
        DropoutMask::tower(0.5, 0x9e37_79b9_7f4a_7c15, 7),
        DropoutMask::towers(0.5, [11, u64::MAX - 3], 300, 2 * 300),
        DropoutMask::towers(0.3, [5, 6], 300, 0),
        DropoutMask::IDENTITY,
    ];
    for storage in [Storage::Full, Storage::Bf16, Storage::F16] {
        for mask in &masks {
            let x = random(storage, 3 * 2 * 300, mask.keys[0]);
            check(storage, Layout::Nchw, &x, mask);
        }
    }
}

/// Units of a feature map: 3 images of one tower's 6 channels of 5×7, and
/// of both towers' 2 × 4 channels (the grouped network's), each unit's
/// mask the CPU's wherever the layout puts it.
#[test]
fn dropout_on_a_feature_map_draws_each_units_mask_in_both_layouts() {
    let plane = 5 * 7;
    let masks = [
        DropoutMask::tower(0.5, 21, 6 * plane).on_map(6, plane),
        DropoutMask::towers(0.4, [22, 23], 4 * plane, 5 * 4 * plane).on_map(8, plane),
    ];
    for storage in [Storage::Full, Storage::Bf16, Storage::F16] {
        for layout in LAYOUTS {
            for mask in &masks {
                let (channels, plane) = mask.map.expect("a feature map");
                let x = random(storage, 3 * channels * plane, channels as u64);
                check(storage, layout, &x, mask);
            }
        }
    }
}

const STORAGES: [Storage; 3] = [Storage::Full, Storage::Bf16, Storage::F16];

/// 3·37 + 146 elements: the shim's grid of 3 blocks of 37 threads wraps twice.
const WRAPPING: usize = 257;

fn assert_bitwise(what: &str, storage: Storage, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what} length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{storage:?} {what}[{i}]: {g} against {w}"
        );
    }
}

/// The shim's `pointwise` outputs: ReLU's y and dx, tanh's y and dx,
/// `x + dy`, then the overflow flag of `x`.
fn pointwise_shim(storage: Storage, x: &[f32], dy: &[f32]) -> Vec<Vec<f32>> {
    let n = x.len();
    let outputs = [n, n, n, n, n, 1];
    run_shim("pointwise", storage, &[n.to_string()], &[x, dy], &outputs)
}

/// ReLU, tanh and their gradients against the CPU device at the same
/// storage (tanh within one step, room for a C library's `tanhf` other
/// than the one Rust's `tanh` calls), the sum against the rounded f32 sum, and the flag
/// against `all_finite`, on inputs with zeros of both signs.
#[test]
fn activations_sum_and_flag_match_the_cpu_device() {
    for storage in STORAGES {
        let mut x = random(storage, WRAPPING, 31);
        let dy = random(storage, WRAPPING, 32);
        x[5] = 0.0;
        x[200] = -0.0;
        let n = x.len();
        let out = pointwise_shim(storage, &x, &dy);
        let mut cpu = CpuDevice::<f32>::with_storage(storage);
        let (mut y, mut dx) = (vec![0.0; n], vec![0.0; n]);
        cpu.relu_forward(&x, &mut y).expect("relu");
        cpu.relu_backward(&y, &dy, &mut dx).expect("relu dx");
        assert!(y.iter().filter(|v| **v == 0.0).count() > n / 4);
        assert_bitwise("relu y", storage, &out[0], &y);
        assert_bitwise("relu dx", storage, &out[1], &dx);

        cpu.tanh_forward(&x, &mut y).expect("tanh");
        // From the shim's y, so that a step off in y does not carry into dx.
        cpu.tanh_backward(&out[2], &dy, &mut dx).expect("tanh dx");
        for (what, got, want) in [("tanh y", &out[2], &y), ("tanh dx", &out[3], &dx)] {
            for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
                let steps = storage.steps_from_zero(*g) - storage.steps_from_zero(*w);
                assert!(steps.abs() <= 1, "{storage:?} {what}[{i}]: {g} against {w}");
            }
        }

        let sum: Vec<f32> = x
            .iter()
            .zip(&dy)
            .map(|(a, b)| storage.round(a + b))
            .collect();
        assert_bitwise("x + dy", storage, &out[4], &sum);
        assert_eq!(out[5], [0.0], "{storage:?}: a finite buffer is flagged");
    }
}

/// One infinity or NaN anywhere in the grid-stride loop's range sets the
/// flag; at fp16, a value beyond its range is stored as ∞ and flagged, as
/// the CPU device's `all_finite` finds it after rounding.
#[test]
fn nonfinite_flag_finds_any_overflow() {
    for storage in STORAGES {
        let clean = random(storage, WRAPPING, 33);
        let n = clean.len();
        for at in [0, 36, 110, 111, n - 1] {
            for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 70_000.0] {
                let mut x = clean.clone();
                x[at] = bad;
                let flag = pointwise_shim(storage, &x, &clean).remove(5);
                let rounded: Vec<f32> = x.iter().map(|&v| storage.round(v)).collect();
                let finite = CpuDevice::<f32>::with_storage(storage)
                    .all_finite(&[&rounded])
                    .expect("all_finite");
                assert_eq!(finite, bad == 70_000.0 && storage != Storage::F16);
                assert_eq!(
                    flag,
                    [if finite { 0.0 } else { 1.0 }],
                    "{storage:?} {bad} at {at}"
                );
            }
        }
    }
}

/// The paper's step, and the same step on gradients carrying a loss scale
/// of 1024 (`SgdStep::unscaled`): the master weights and momentum bit for
/// bit the CPU device's, and the 16-bit copy the new weights rounded.
#[test]
fn sgd_update_matches_the_cpu_device() {
    let paper = SgdStep {
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 0.0005,
    };
    for storage in STORAGES {
        for (step, scale) in [(paper, 1.0), (paper.unscaled(1024.0), 1024.0)] {
            let w = random(Storage::Full, WRAPPING, 34);
            let v: Vec<f32> = random(Storage::Full, WRAPPING, 35)
                .iter()
                .map(|v| v / 100.0)
                .collect();
            let g: Vec<f32> = random(storage, WRAPPING, 36)
                .iter()
                .map(|v| storage.round(v * scale))
                .collect();
            let n = w.len();
            let args = [
                n.to_string(),
                format!("{:e}", step.lr),
                format!("{:e}", step.momentum),
                format!("{:e}", step.weight_decay),
            ];
            let copy = if storage.is_16_bit() { n } else { 0 };
            let out = run_shim("sgd", storage, &args, &[&w, &g, &v], &[n, n, copy]);
            let (mut w_cpu, mut v_cpu) = (w.clone(), v.clone());
            CpuDevice::<f32>::default()
                .sgd_update(&mut w_cpu, &g, &mut v_cpu, step)
                .expect("the CPU step");
            assert!(
                w_cpu.iter().zip(&w).all(|(a, b)| a != b),
                "every weight moves"
            );
            assert_bitwise("w", storage, &out[0], &w_cpu);
            assert_bitwise("v", storage, &out[1], &v_cpu);
            let rounded: Vec<f32> = w_cpu.iter().map(|&v| storage.round(v)).collect();
            assert_bitwise("copy", storage, &out[2], &rounded[..copy]);
        }
    }
}

/// A convolution's output (4 images of 5 channels of 7 positions) in both
/// layouts, with the device's `plane` argument, and an FC layer's (28
/// images): every element its channel's bias as stored, over more
/// elements than the shim's grid has threads.
#[test]
fn bias_fill_broadcasts_each_channel_in_both_layouts() {
    let (images, channels, plane) = (4, 5, 7);
    for storage in STORAGES {
        let bias = random(storage, channels, 37);
        let want: Vec<f32> = (0..images * channels * plane)
            .map(|i| bias[(i / plane) % channels])
            .collect();
        for layout in LAYOUTS {
            let n = want.len();
            let args = [n, channels, bias_plane(layout, plane)].map(|v| v.to_string());
            let got = run_shim("bias_fill", storage, &args, &[&bias], &[n]).remove(0);
            let got = reorder(layout, channels, plane, &got, true);
            assert_bitwise(&format!("{layout:?} y"), storage, &got, &want);
        }
        let rows = plane * images;
        let args = [rows * channels, channels, 1].map(|v| v.to_string());
        let got = run_shim("bias_fill", storage, &args, &[&bias], &[rows * channels]).remove(0);
        assert_bitwise("fc y", storage, &got, &bias.repeat(rows));
    }
}

/// Narrowing f32 to 16 bits and widening back gives the `half` crate's
/// rounding: ties, values between two steps, subnormals, and beyond range.
#[test]
fn narrow_and_widen_round_as_the_half_crate() {
    let mut x = random(Storage::Full, WRAPPING, 38);
    x[..8].copy_from_slice(&[
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
        1.0 + 1.0 / 2048.0,
        3e-6,
        -7e-8,
        1e-40,
        70_000.0,
        -3e38,
    ]);
    for storage in [Storage::Bf16, Storage::F16] {
        let n = x.len();
        let got = run_shim("convert", storage, &[n.to_string()], &[&x], &[n]).remove(0);
        let want: Vec<f32> = x.iter().map(|&v| storage.round(v)).collect();
        assert!(want.iter().zip(&x).filter(|(w, x)| w != x).count() > n / 2);
        assert_bitwise("x", storage, &got, &want);
    }
}
