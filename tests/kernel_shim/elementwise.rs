//! kernels/elementwise.cu's dropout through the shim: the mask the CPU
//! device draws (paper §4.2), element for element, at every storage.

use super::run_shim;
use alexnet::device::cpu::CpuDevice;
use alexnet::device::precision::Storage;
use alexnet::device::{Device, DropoutMask};
use alexnet::rng::Rng;

/// The shim's dropout of `x` under `mask`, with the launcher's arguments
/// (the second key that of the last run).
fn dropout_shim(storage: Storage, x: &[f32], mask: &DropoutMask) -> Vec<f32> {
    let args = [
        x.len().to_string(),
        format!("{:e}", mask.p),
        mask.keys[0].to_string(),
        mask.keys[mask.groups - 1].to_string(),
        mask.run.to_string(),
        mask.groups.to_string(),
        mask.first.to_string(),
    ];
    run_shim("dropout", storage, &args, &[x], &[x.len()]).remove(0)
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
            let n = 3 * 2 * 300;
            let mut rng = Rng::new(mask.keys[0]);
            let x: Vec<f32> = (0..n)
                .map(|_| storage.round((4.0 * rng.uniform() - 2.0) as f32))
                .collect();
            let got = dropout_shim(storage, &x, mask);
            let mut want = vec![0.0; n];
            CpuDevice::<f32>::with_storage(storage)
                .dropout_forward(&x, &mut want, mask)
                .expect("the CPU dropout");
            // A mask that keeps all or none would hide a wrong index.
            let kept = want.iter().filter(|v| **v != 0.0).count();
            if mask.p > 0.0 {
                assert!(kept > n / 4 && kept < n, "{mask:?}: {kept} of {n} kept");
            } else {
                assert_eq!(want, x, "p = 0 keeps every unit as it is");
            }
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g, w, "{storage:?} {mask:?}: element {i}");
            }
        }
    }
}
