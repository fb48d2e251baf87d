//! kernels/reduce.cu through the shim, each block's threads run at once:
//! the bias gradient's two passes in both of the GPU's layouts, chunked as
//! the device chunks them, against exact sums; softmax cross-entropy and a
//! batch's loss statistics against the CPU device at every storage.

use super::{Build, LAYOUTS, assert_same_storage, le_bytes, reorder, run_shim, shim_output};
use alexnet::device::Device;
use alexnet::device::cpu::CpuDevice;
use alexnet::device::cuda::kernels::reduce::BiasGrad;
use alexnet::device::layout::Layout;
use alexnet::device::precision::Storage;
use alexnet::rng::Rng;

const STORAGES: [Storage; 3] = [Storage::Full, Storage::Bf16, Storage::F16];

/// The shim's bias gradient of `dy` (`[batch][channels][plane]`) with the
/// chunks the device uses in `layout`: images in NCHW, rows of a
/// channels-last map in NHWC.
fn bias_grad_shim(
    layout: Layout,
    storage: Storage,
    dy: &[f32],
    batch: usize,
    channels: usize,
    plane: usize,
) -> Vec<f32> {
    let args = match layout {
        Layout::Nchw => bias_grad_args(false, BiasGrad::over_images(batch, channels, plane)),
        Layout::Nhwc => bias_grad_args(true, BiasGrad::over_rows(batch * plane, channels)),
    };
    let dy = reorder(layout, channels, plane, dy, false);
    run_shim("bias_grad", storage, &args, &[&dy], &[channels]).remove(0)
}

/// The shim's `bias_grad` arguments for `shape`, over rows of a
/// channels-last map where `rows`.
fn bias_grad_args(rows: bool, shape: BiasGrad) -> [String; 6] {
    [
        usize::from(rows),
        shape.batch,
        shape.channels,
        shape.plane,
        shape.per_chunk,
        shape.chunks,
    ]
    .map(|v| v.to_string())
}

/// Every sum exact: the gradients are eighths below 1, so every partial
/// sum is an f32 value and only the stored result rounds, once. A missed,
/// doubled or misplaced element moves a sum by at least an eighth.
#[test]
fn bias_gradient_kernels_sum_every_channel_exactly_in_both_layouts() {
    // conv1's 48 channels of 55×55; a few channels over many images (many
    // chunks); channels that do not fill a warp.
    let shapes = [(2, 48, 55 * 55), (40, 2, 3), (3, 5, 7)];
    for storage in STORAGES {
        for layout in LAYOUTS {
            for (batch, channels, plane) in shapes {
                let n = batch * channels * plane;
                let mut rng = Rng::new(n as u64);
                let dy: Vec<f32> = (0..n).map(|_| (rng.below(15) as f32 - 7.0) / 8.0).collect();
                let got = bias_grad_shim(layout, storage, &dy, batch, channels, plane);
                for (c, g) in got.iter().enumerate() {
                    let exact: f64 = (0..batch)
                        .flat_map(|img| (0..plane).map(move |p| (img * channels + c) * plane + p))
                        .map(|i| f64::from(dy[i]))
                        .sum();
                    assert_eq!(
                        *g,
                        storage.round(exact as f32),
                        "{storage:?} {layout:?} {batch}×{channels}×{plane}: channel {c}"
                    );
                }
            }
        }
    }
}

/// The shim's loss: the gradient of tower `tower`'s logits, each image's
/// statistics and their sums.
fn loss_shim(
    storage: Storage,
    logits: &[f32],
    labels: &[u32],
    towers: usize,
    tower: usize,
    grad_scale: f32,
) -> Vec<Vec<f32>> {
    let batch = labels.len();
    let per_tower = logits.len() / (towers * batch);
    let mut args = [batch, towers, per_tower, tower]
        .map(|v| v.to_string())
        .to_vec();
    args.push(format!("{grad_scale:e}"));
    let labels: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
    run_shim(
        "loss",
        storage,
        &args,
        &[logits, &labels],
        &[batch * per_tower, 3 * batch, 3],
    )
}

/// Few classes, and more than a block's 256 threads (each thread's loops
/// over the classes and over its tower's logits wrap).
#[test]
fn loss_kernels_match_the_cpu_device() {
    for (per_tower, batch) in [(7, 6), (300, 3)] {
        loss_matches_the_cpu_device(2, per_tower, batch);
    }
}

fn loss_matches_the_cpu_device(towers: usize, per_tower: usize, batch: usize) {
    let classes = towers * per_tower;
    for storage in STORAGES {
        for (tower, grad_scale) in [(0, 1.0), (1, 1024.0)] {
            let mut rng = Rng::new(tower as u64 + 1);
            // Few distinct logits, so labels tie with others for the top five.
            let logits: Vec<f32> = (0..towers * batch * per_tower)
                .map(|_| storage.round((rng.below(6) as f64 * 1.7 - 4.0) as f32))
                .collect();
            let labels: Vec<u32> = (0..batch).map(|_| rng.below(classes) as u32).collect();
            let out = loss_shim(storage, &logits, &labels, towers, tower, grad_scale);

            let mut cpu = CpuDevice::<f32>::with_storage(storage);
            let mut dlogits = vec![0.0; batch * per_tower];
            cpu.softmax_cross_entropy(&logits, &labels, tower, per_tower, grad_scale, &mut dlogits)
                .expect("the CPU loss");
            let stats = cpu
                .take_loss_stats()
                .expect("the CPU's statistics")
                .remove(0);
            let what = format!("{storage:?} {classes} classes, tower {tower} scale {grad_scale}");
            match storage {
                Storage::Full => {
                    for (i, (g, w)) in out[0].iter().zip(&dlogits).enumerate() {
                        let err = (g - w).abs() / grad_scale;
                        assert!(err < 1e-7, "{what}: dlogits[{i}] kernel {g}, CPU {w}");
                    }
                }
                _ => assert_same_storage(storage, &format!("{what}: dlogits"), &out[0], &dlogits),
            }
            let sums = &out[2];
            let loss = f64::from(sums[0]);
            assert!(
                (loss - stats.loss_sum).abs() <= 1e-6 * stats.loss_sum,
                "{what}: loss sum kernel {loss}, CPU {}",
                stats.loss_sum
            );
            assert_eq!(sums[1] as usize, stats.top1, "{what}: top-1 hits");
            assert_eq!(sums[2] as usize, stats.top5, "{what}: top-5 hits");
            let per_image = &out[1];
            let hits = |k: usize| {
                per_image
                    .iter()
                    .skip(k)
                    .step_by(3)
                    .filter(|v| **v > 0.5)
                    .count()
            };
            assert_eq!(
                (hits(1), hits(2)),
                (stats.top1, stats.top5),
                "{what}: per image"
            );
        }
    }
}

/// The kernels that synchronise their block (the bias gradient's first
/// pass over images, the loss's trees) under ThreadSanitizer: a barrier
/// missing between a tree's writes and its reads fails the run.
#[test]
fn block_reductions_have_no_data_race() {
    let (batch, channels, plane) = (3, 5, 7);
    let args = bias_grad_args(false, BiasGrad::over_images(batch, channels, plane));
    let dy = vec![0.5f32; batch * channels * plane];
    shim_output(
        Build::RaceChecked,
        "bias_grad",
        Storage::Full,
        &args,
        &le_bytes(&[&dy]),
    );
    let (towers, per_tower, batch) = (2, 300, 2);
    let logits: Vec<f32> = (0..towers * batch * per_tower)
        .map(|i| (i % 13) as f32 / 4.0)
        .collect();
    let input = le_bytes(&[&logits, &[3.0, 599.0]]);
    let args = [batch, towers, per_tower, 1, 1].map(|v| v.to_string());
    shim_output(Build::RaceChecked, "loss", Storage::Bf16, &args, &input);
}
