//! kernels/elementwise.cu's dropout through the shim: the mask the CPU
//! device draws (paper §4.2), element for element, at every storage, and
//! on a feature map in both of the GPU's layouts.

use super::{LAYOUTS, reorder, run_shim};
use alexnet::device::cpu::CpuDevice;
use alexnet::device::cuda::kernels::elementwise::dropout_units;
use alexnet::device::layout::Layout;
use alexnet::device::precision::Storage;
use alexnet::device::{Device, DropoutMask};
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
