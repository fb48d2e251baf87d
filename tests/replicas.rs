//! Replicas of the pair give the training of one pair on the whole batch:
//! R replicas at batch B/R against one pair at batch B, from the same
//! weights on the same batches, on the CPU. In f64 the weights after ten
//! steps agree to 1e-10 (the only difference is the order of the sums over
//! images), in f32 through the binary to 1e-5; a resumed run with replicas
//! equals an unbroken one bit for bit; and a replica that fails stops the
//! others at once with its error.

use alexnet::device::precision::Storage;
mod common;

use alexnet::device::SgdStep;
use alexnet::device::cpu::Real;
use alexnet::net::init::init_twin;
use alexnet::net::params::TwinTensor;
use alexnet::net::plan::Plan;
use alexnet::net::spec::InitScheme;
use alexnet::replicas::Replicas;
use alexnet::rng::Rng;
use alexnet::tower::ParamSet;
use alexnet::towers::Batch;
use common::{alexnet, newest, ok, scratch};
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The largest ‖a − b‖ / ‖b − init‖ over the tensors: how far apart two
/// runs' updates are, relative to the updates.
fn update_gap(init: &[TwinTensor], a: &[TwinTensor], b: &[TwinTensor]) -> f64 {
    let mut worst = 0.0f64;
    for ((i, a), b) in init.iter().zip(a).zip(b) {
        assert_eq!((&i.name, &a.name), (&b.name, &b.name));
        let (mut diff, mut update) = (0.0, 0.0);
        for ((&i, &a), &b) in i.data.iter().zip(&a.data).zip(&b.data) {
            diff += (f64::from(a) - f64::from(b)).powi(2);
            update += (f64::from(b) - f64::from(i)).powi(2);
        }
        assert!(update > 0.0, "{} did not move", b.name);
        worst = worst.max((diff / update).sqrt());
    }
    worst
}

/// The largest ‖a − b‖ / ‖b‖ over the tensors.
fn weight_gap(a: &[TwinTensor], b: &[TwinTensor]) -> f64 {
    let zero: Vec<TwinTensor> = b
        .iter()
        .map(|t| TwinTensor {
            data: vec![0.0; t.data.len()],
            ..t.clone()
        })
        .collect();
    update_gap(&zero, a, b)
}

/// Ten momentum-SGD steps of `batch` images, with dropout and weight
/// decay, on `replicas` CPU replicas in `T`: the weights after.
fn ten_steps<T: Real>(
    plan: &Arc<Plan>,
    init: &[TwinTensor],
    replicas: usize,
    batch: usize,
) -> Vec<TwinTensor> {
    let run =
        Replicas::cpu::<T>(replicas, Arc::clone(plan), batch, init, Storage::Full, None).unwrap();
    for step in 0..10u64 {
        let mut rng = Rng::new(500 + step);
        let images: Vec<f32> = (0..16 * plan.input.len())
            .map(|_| (2.0 * rng.uniform() - 1.0) as f32)
            .collect();
        let labels: Vec<u32> = (0..16).map(|_| rng.below(plan.classes()) as u32).collect();
        let sgd = SgdStep {
            lr: 0.02,
            momentum: 0.9,
            weight_decay: 5e-4,
        };
        let batch = Batch {
            images: Arc::new(alexnet::data::input::Images::F32(
                images[..batch * plan.input.len()].to_vec().into(),
            )),
            labels: Arc::new(labels[..batch].to_vec()),
        };
        let stats = run.train_step(&batch, 77 + step, Some(sgd)).unwrap();
        assert!(stats.loss_sum > 0.0);
    }
    run.download(ParamSet::Weights).unwrap()
}

#[test]
fn f64_replicas_at_a_share_of_the_batch_train_as_one_pair_on_all_of_it() {
    let plan = Arc::new(Plan::load("small").unwrap());
    assert!(
        plan.layers
            .iter()
            .any(|l| matches!(l.op, alexnet::net::plan::Op::Dropout { .. }))
    );
    let init = init_twin(&plan, InitScheme::He, 11);
    let one = ten_steps::<f64>(&plan, &init, 1, 16);
    for replicas in [2, 4] {
        let many = ten_steps::<f64>(&plan, &init, replicas, 16);
        let gap = update_gap(&init, &many, &one);
        eprintln!("f64, {replicas} replicas against one pair: updates differ by {gap:e}");
        assert!(gap < 1e-10, "{replicas} replicas: {gap:e}");
    }
    // The measure sees a different training: one pair on the first half
    // of each batch only.
    let half = ten_steps::<f64>(&plan, &init, 1, 8);
    let gap = update_gap(&init, &half, &one);
    assert!(gap > 1e-2, "half the batch: {gap:e}");
}

/// `alexnet train --cpu --batch 16` on 160 synthetic images with `extra`.
fn train(run_dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--cpu",
        "--batch",
        "16",
        "--train-images",
        "160",
        "--val-images",
        "32",
        "--schedule",
        "plateau",
        "--quiet",
        "--run-dir",
        run_dir.to_str().unwrap(),
    ];
    args.extend(extra);
    alexnet(&args)
}

#[test]
fn two_replicas_through_the_binary_end_where_one_pair_does() {
    let dir = scratch("replicas-binary");
    let (one, two) = (dir.join("one"), dir.join("two"));
    ok(&train(&one, &["--steps", "10"]));
    let said = ok(&train(&two, &["--steps", "10", "--replicas", "2"]));
    assert!(said.contains("2 replicas"), "{said}");
    let (a, b) = (newest(&one), newest(&two));
    assert_eq!((a.state.step, b.state.step), (10, 10));
    let gap = weight_gap(&b.weights, &a.weights);
    eprintln!("f32, 2 replicas against one pair after 10 steps: weights differ by {gap:e}");
    // The arithmetic is held to 1e-10 in f64 above; in f32 the two runs
    // round apart. The convolutions' Winograd sums (weight gradients summed
    // over each pass's blocks) run in other orders on 8 images than on 16,
    // and ten steps carry that further: measured 1.6e-5 on the weights and
    // 4e-4 to 7e-4 on the conv biases, the tensors of smallest norm (with
    // im2col products it was below 1e-6). An image, a share or a dropout
    // mask in the wrong replica changes a step's gradient by about a
    // sixteenth, which on the biases (whose norm is mostly their updates')
    // is well past this bound.
    assert!(gap < 2e-3, "weights differ by {gap:e}");
    // The validation, split across the replicas, counts the same hits.
    assert_eq!(a.state.val_top1, b.state.val_top1);
    assert_eq!(a.state.val_top5, b.state.val_top5);
}

#[test]
fn a_resumed_run_with_replicas_equals_an_unbroken_one_bit_for_bit() {
    let dir = scratch("replicas-resume");
    let (whole, halves) = (dir.join("whole"), dir.join("halves"));
    ok(&train(&whole, &["--steps", "14", "--replicas", "2"]));
    ok(&train(&halves, &["--steps", "7", "--replicas", "2"]));
    assert_eq!(newest(&halves).state.step, 7);
    let out = ok(&alexnet(&[
        "train",
        "--resume",
        halves.to_str().unwrap(),
        "--steps",
        "14",
        "--cpu",
        "--replicas",
        "2",
        "--quiet",
    ]));
    assert!(out.contains("resuming"), "{out}");
    let bits = |t: &[TwinTensor]| -> Vec<Vec<u32>> {
        t.iter()
            .map(|t| t.data.iter().map(|v| v.to_bits()).collect())
            .collect()
    };
    let (a, b) = (newest(&whole), newest(&halves));
    assert_eq!(b.state.step, 14);
    assert!(bits(&a.weights) == bits(&b.weights), "weights differ");
    assert!(bits(&a.momentum) == bits(&b.momentum), "momentum differs");
}

#[test]
fn a_replica_that_fails_stops_the_others_at_once_with_its_error() {
    let dir = scratch("replicas-fault");
    for fault in ["1.0:forward:3", "1.1:backward:3", "0.1:hang:3"] {
        let run = dir.join(fault.replace([':', '.'], "-"));
        let start = Instant::now();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_alexnet"))
            .args([
                "train",
                "--cpu",
                "--replicas",
                "2",
                "--batch",
                "4",
                "--train-images",
                "400",
                "--val-images",
                "8",
                "--steps",
                "20",
                "--quiet",
                "--run-dir",
                run.to_str().unwrap(),
            ])
            .env("ALEXNET_FAULT", fault)
            .env("ALEXNET_TOWER_TIMEOUT_S", "2")
            .output()
            .unwrap();
        let took = start.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{fault}: {stderr}");
        assert!(took < Duration::from_secs(20), "{fault}: {took:?}");
        let (replica, tower) = (&fault[..1], &fault[2..3]);
        if fault.contains("hang") {
            // Lost after the timeout: by its own pair at an exchange, or by
            // the other replica at the gradient average; either names it.
            let by_pair = format!("tower {tower} (CPU, replica {replica}): did not answer");
            let by_replica = format!("replica {replica} did not reach the gradient all-reduce");
            assert!(
                stderr.contains(&by_pair) || stderr.contains(&by_replica),
                "{fault}: {stderr}"
            );
        } else {
            let named = format!("tower {tower} (CPU, replica {replica}): injected fault");
            assert!(stderr.contains(&named), "{fault}: {stderr}");
        }
    }
}

#[test]
fn a_batch_that_does_not_split_over_the_replicas_is_refused_by_name() {
    let dir = scratch("replicas-bad");
    let run = dir.join("run");
    let out = train(&run, &["--steps", "2", "--replicas", "3"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--batch 16 does not split evenly over 3 replicas"),
        "{stderr}"
    );
    assert!(!run.exists(), "a refused run leaves no folder");
    let out = alexnet(&["train", "--gpus", "0,1,2", "--steps", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--gpus 0,1,2: 3 GPUs"), "{stderr}");
}
