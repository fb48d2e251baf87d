//! Mixed precision on the CPU, the reference of the GPU's 16-bit path:
//! bf16 and fp16 train as well as fp32, an fp16 step that overflows is
//! skipped and leaves the weights as they were, and a 16-bit run resumes
//! bit for bit.

mod common;

use alexnet::device::SgdStep;
use alexnet::device::precision::{LossScale, Storage};
use alexnet::net::init::init_twin;
use alexnet::net::plan::Plan;
use alexnet::net::spec::InitScheme;
use alexnet::tower::ParamSet;
use alexnet::towers::{Batch, TowerPair};
use common::{alexnet, bits, newest, ok, scratch};
use std::path::Path;
use std::process::Output;
use std::sync::Arc;

fn train(run_dir: &Path, precision: &str, seed: u64, extra: &[&str]) -> Output {
    let seed = seed.to_string();
    let mut args = vec![
        "train",
        "--cpu",
        "--precision",
        precision,
        "--run-dir",
        run_dir.to_str().unwrap(),
        "--seed",
        &seed,
        "--quiet",
    ];
    args.extend(extra);
    alexnet(&args)
}

/// Trained until the small preset settles: 1200 steps of 32 images, the
/// rate decayed to 0 along a cosine. Earlier, top-1 measures mostly when a
/// run happened to leave its first plateau (loss near ln 10), which differs
/// by 20 points and more between seeds at any one precision and between
/// precisions at one seed. Settled, one seed still is not enough: measured
/// (through the binary, validation top-1 in %, seeds 1–6) fp32 99.3, 99.4,
/// 100, 99.7, 100, 100; bf16 99.7, 98.5, 96.6, 99.9, 99.8, 100; fp16 99.5,
/// 100, 100, 99.0 (seeds 1–4). One trajectory in six (bf16, seed 3) settles
/// 3.4 points low, and any change to an f32 sum's order moves which one. So
/// each precision's top-1 is the mean over seeds 3 and 4: 3 points is room
/// for rounding and for one low trajectory, not for a broken 16-bit path
/// (one that does not learn stays near chance, 10 %).
#[test]
fn bf16_and_fp16_reach_the_top1_of_fp32_within_three_points() {
    let dir = scratch("precision-accuracy");
    let settled = [
        "--batch",
        "32",
        "--steps",
        "1200",
        "--schedule",
        "cosine",
        "--train-images",
        "4800",
        "--val-images",
        "1000",
    ];
    let seeds = [3, 4];
    let mut mean_top1 = Vec::new();
    let mut weights = Vec::new();
    for precision in ["fp32", "bf16", "fp16"] {
        // Every run learned the set (chance is 0.1); fp32's each run settled.
        let floor = if precision == "fp32" { 0.9 } else { 0.5 };
        let mut sum = 0.0;
        for seed in seeds {
            let run = dir.join(format!("{precision}-{seed}"));
            ok(&train(&run, precision, seed, &settled));
            let ckpt = newest(&run);
            assert_eq!(ckpt.state.step, 1200);
            let top1 = ckpt.state.val_top1.expect("the last step validates");
            assert!(top1 > floor, "{precision} seed {seed}: top-1 {top1}");
            sum += top1;
            if seed == seeds[0] {
                weights.push(bits(&ckpt.weights));
            }
            let scale = ckpt.state.loss_scale;
            assert_eq!(
                scale.is_some(),
                precision == "fp16",
                "{precision}: {scale:?}"
            );
        }
        mean_top1.push(sum / seeds.len() as f64);
    }
    // The 16-bit runs rounded: their weights are not fp32's.
    assert_ne!(weights[0], weights[1], "bf16 trained exactly as fp32");
    assert_ne!(weights[0], weights[2], "fp16 trained exactly as fp32");
    for (precision, t) in ["bf16", "fp16"].iter().zip(&mean_top1[1..]) {
        assert!(
            (t - mean_top1[0]).abs() <= 0.03,
            "{precision} mean top-1 {t} against fp32's {}",
            mean_top1[0]
        );
    }
}

#[test]
fn an_fp16_step_that_overflows_is_skipped_and_leaves_the_weights_untouched() {
    let plan = Arc::new(Plan::load("small").unwrap());
    let batch = 4;
    let init = init_twin(&plan, InitScheme::He, 5);
    let towers = TowerPair::cpu_storing::<f32>(Arc::clone(&plan), batch, &init, Storage::F16)
        .expect("a CPU pair");
    let images: Vec<f32> = (0..batch * plan.input.len())
        .map(|i| ((i * 7919 % 255) as f32 / 255.0) - 0.5)
        .collect();
    let batch = Batch {
        images: Arc::new(alexnet::data::input::Images::F32(images.into())),
        labels: Arc::new(vec![0, 3, 7, 9]),
    };
    let sgd = SgdStep {
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 0.0005,
    };
    let before = (
        bits(&towers.download(ParamSet::Weights).unwrap()),
        bits(&towers.download(ParamSet::Momentum).unwrap()),
    );
    // 2⁴⁰ times a loss gradient of order 1/4 is far past fp16's 65504.
    let applied = towers
        .queue_scaled_step(&batch, 1, sgd, 2f32.powi(40))
        .unwrap();
    assert!(!applied, "a step at scale 2^40 did not overflow");
    let after = (
        bits(&towers.download(ParamSet::Weights).unwrap()),
        bits(&towers.download(ParamSet::Momentum).unwrap()),
    );
    assert!(
        before == after,
        "the skipped step changed weights or momentum"
    );
    assert_eq!(
        LossScale::starting_at(2f32.powi(40)).after(applied).scale,
        2f32.powi(39)
    );
    // At a moderate scale the same step is made, and moves the weights.
    assert!(towers.queue_scaled_step(&batch, 1, sgd, 1024.0).unwrap());
    assert_ne!(before.0, bits(&towers.download(ParamSet::Weights).unwrap()));
    let stats = towers.take_stats().unwrap();
    assert_eq!(stats.len(), 2, "each pass, skipped or not, has its loss");
    assert!(stats.iter().all(|s| s.loss_sum.is_finite()));
}

#[test]
fn a_16_bit_run_resumes_bit_for_bit_with_its_loss_scale() {
    let dir = scratch("precision-resume");
    for precision in ["bf16", "fp16"] {
        let (whole, halves) = (
            dir.join(format!("{precision}-whole")),
            dir.join(format!("{precision}-halves")),
        );
        // A first scale of 2²⁴ overflows at once: the scale falls during the
        // first half, and the second half must start from where it fell.
        let common = [
            "--batch",
            "16",
            "--schedule",
            "constant",
            "--train-images",
            "160",
            "--val-images",
            "64",
            "--loss-scale",
            "16777216",
        ];
        let args = |steps: &'static str| [&common[..], &["--steps", steps]].concat();
        ok(&train(&whole, precision, 3, &args("14")));
        ok(&train(&halves, precision, 3, &args("7")));
        let midway = newest(&halves);
        assert_eq!(midway.state.step, 7);
        if precision == "fp16" {
            let scale = midway.state.loss_scale.expect("fp16 saves its loss scale");
            assert!(
                scale.scale < 16_777_216.0,
                "the scale never fell: {scale:?}"
            );
        } else {
            assert_eq!(midway.state.loss_scale, None);
        }
        let out = ok(&alexnet(&[
            "train",
            "--resume",
            halves.to_str().unwrap(),
            "--steps",
            "14",
            "--cpu",
            "--precision",
            precision,
            "--quiet",
        ]));
        assert!(out.contains("resuming"), "{out}");
        let (a, b) = (newest(&whole), newest(&halves));
        assert_eq!(b.state.step, 14);
        assert_eq!(
            bits(&a.weights),
            bits(&b.weights),
            "{precision}: weights differ"
        );
        assert_eq!(
            bits(&a.momentum),
            bits(&b.momentum),
            "{precision}: momentum differs"
        );
        assert_eq!(a.state.loss_scale, b.state.loss_scale);
    }
}

#[test]
fn tf32_is_an_alias_and_16_bits_go_to_a_gpu_as_f32_does() {
    let out = alexnet(&[
        "train",
        "--tf32",
        "--precision",
        "bf16",
        "--cpu",
        "--steps",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    // A GPU no machine has: refused for the GPU, in one line, at 16 bits as
    // at f32, never for the precision.
    for precision in ["fp32", "bf16", "fp16"] {
        let out = alexnet(&["bench", "--gpus", "999", "--precision", precision]);
        assert_eq!(out.status.code(), Some(2), "{precision}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("--gpus 999"), "{stderr}");
        assert!(!stderr.contains("--precision"), "{stderr}");
    }
}
