//! Runs that last: checkpoints, exact resume, stopping by signal, kill -9,
//! divergence, evaluation and prediction, through the binary on the CPU.

mod common;
mod reference;

use alexnet::data::synthetic::{Split, Synthetic};
use alexnet::net::plan::Plan;
use alexnet::npy;
use alexnet::train::checkpoint;
use common::{alexnet, bits, newest, ok, scratch};
use reference::Twin;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A small, fast run: 10 steps per epoch of 16 images.
const SMALL: [&str; 10] = [
    "--cpu",
    "--batch",
    "16",
    "--train-images",
    "160",
    "--val-images",
    "32",
    "--log-every",
    "5",
    "--quiet",
];

fn train(run_dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["train", "--run-dir", run_dir.to_str().unwrap()];
    args.extend(SMALL);
    args.extend(extra);
    alexnet(&args)
}

#[test]
fn a_resumed_run_equals_an_unbroken_one_bit_for_bit() {
    let dir = scratch("resume");
    let (whole, halves) = (dir.join("whole"), dir.join("halves"));
    // Plateau: its rate does not depend on the run's length, which the resume changes.
    ok(&train(&whole, &["--steps", "14", "--schedule", "plateau"]));
    // Stop mid-epoch (step 7 of 10), then resume to the same end.
    ok(&train(&halves, &["--steps", "7", "--schedule", "plateau"]));
    assert_eq!(newest(&halves).state.step, 7);
    let out = ok(&alexnet(&[
        "train",
        "--resume",
        halves.to_str().unwrap(),
        "--steps",
        "14",
        "--cpu",
        "--quiet",
    ]));
    assert!(out.contains("resuming"), "{out}");
    let (a, b) = (newest(&whole), newest(&halves));
    assert_eq!(a.state.step, 14);
    assert_eq!(b.state.step, 14);
    assert_eq!(bits(&a.weights), bits(&b.weights), "weights differ");
    assert_eq!(bits(&a.momentum), bits(&b.momentum), "momentum differs");
    // The resumed run's metrics carry on without repeating steps.
    let text = std::fs::read_to_string(halves.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = text
        .lines()
        .filter(|l| l.contains("\"train\""))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, vec![5, 7, 10, 14]);
}

/// Starts a long run in the background.
fn spawn_long(run_dir: &Path, extra: &[&str]) -> std::process::Child {
    let mut args = vec![
        "train",
        "--run-dir",
        run_dir.to_str().unwrap(),
        "--steps",
        "100000",
    ];
    args.extend(SMALL);
    args.extend(extra);
    Command::new(env!("CARGO_BIN_EXE_alexnet"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts")
}

/// Waits until the run has logged a metrics line.
fn wait_for_progress(run_dir: &Path) {
    let start = Instant::now();
    while std::fs::read_to_string(run_dir.join("metrics.jsonl")).map_or(true, |t| t.is_empty()) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no progress in a minute"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigint_and_sigterm_finish_the_step_save_and_exit_zero() {
    for (name, signal) in [("int", libc::SIGINT), ("term", libc::SIGTERM)] {
        let run_dir = scratch(&format!("signal-{name}"));
        let child = spawn_long(&run_dir, &[]);
        wait_for_progress(&run_dir);
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(child.id() as i32, signal) };
        let out = child.wait_with_output().unwrap();
        let stdout = ok(&out);
        assert!(
            stdout.contains("stopped by a signal after step"),
            "{stdout}"
        );
        let step = newest(&run_dir).state.step;
        assert!(step >= 5, "checkpoint at step {step}");
        assert!(stdout.contains(&format!("step-{step:08}")), "{stdout}");
    }
}

#[test]
fn kill_9_at_any_moment_leaves_a_readable_checkpoint() {
    let run_dir = scratch("kill9");
    let mut killed_at = Vec::new();
    // A checkpoint every step, so kills land in and around writes.
    for round in 0..6u64 {
        let child = if round == 0 {
            spawn_long(&run_dir, &["--checkpoint-every", "1"])
        } else {
            Command::new(env!("CARGO_BIN_EXE_alexnet"))
                .args([
                    "train",
                    "--resume",
                    run_dir.to_str().unwrap(),
                    "--cpu",
                    "--quiet",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        if round == 0 {
            wait_for_progress(&run_dir);
        }
        std::thread::sleep(Duration::from_millis(150 + 97 * round));
        let mut child = child;
        child.kill().unwrap();
        child.wait().unwrap();
        let ckpt = newest(&run_dir);
        killed_at.push(ckpt.state.step);
        assert!(!ckpt.weights.is_empty());
    }
    // Every kill left a checkpoint and training moved on between kills.
    assert!(killed_at.windows(2).all(|w| w[0] <= w[1]), "{killed_at:?}");
    assert!(killed_at.last() > killed_at.first(), "{killed_at:?}");
}

#[test]
fn a_diverging_run_stops_naming_the_step_and_the_last_good_checkpoint() {
    // At this rate the loss of step 3 is infinite, after the checkpoints of
    // steps 1 and 2 were saved.
    let run_dir = scratch("nan");
    let out = train(
        &run_dir,
        &["--steps", "40", "--lr", "1e4", "--checkpoint-every", "1"],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let good = run_dir.join("checkpoints/step-00000002");
    let want = format!(
        "error: a NaN or infinity in the loss at step 3: the last good checkpoint is {}; \
         resume it with a smaller --lr: alexnet train --resume {} --lr …",
        good.display(),
        run_dir.display()
    );
    assert!(stderr.lines().any(|l| l == want), "{stderr}");
    // It is the newest checkpoint, and good: its weights are finite.
    let (folder, ckpt) = checkpoint::load(&run_dir).expect("a readable checkpoint");
    assert_eq!((folder, ckpt.state.step), (good, 2));
    assert!(
        ckpt.weights
            .iter()
            .all(|t| t.data.iter().all(|v| v.is_finite()))
    );

    // Without a checkpoint by then, the message says so.
    let run_dir = scratch("nan-unsaved");
    let out = train(
        &run_dir,
        &["--steps", "40", "--lr", "1e4", "--checkpoint-every", "20"],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = "error: a NaN or infinity in the loss at step 3: no checkpoint was saved before it";
    assert!(stderr.lines().any(|l| l == want), "{stderr}");
}

#[test]
fn a_loss_stuck_at_chance_gets_a_hint_and_quiet_mode_prints_no_steps() {
    let run_dir = scratch("stuck");
    // The paper's std-0.01 initialization starves the narrow small preset.
    let out = ok(&alexnet(&[
        "train",
        "--run-dir",
        run_dir.to_str().unwrap(),
        "--cpu",
        "--quiet",
        "--steps",
        "600",
        "--init",
        "paper",
        "--batch",
        "4",
        "--train-images",
        "2400",
        "--val-images",
        "16",
    ]));
    assert!(
        out.contains("hint: the loss has stayed near ln(10)"),
        "{out}"
    );
    assert!(!out.lines().any(|l| l.starts_with("step ")), "{out}");
}

#[test]
fn eval_and_predict_read_a_checkpoint_and_predicts_logits_are_the_f64_twins() {
    let dir = scratch("predict");
    let run_dir = dir.join("run");
    ok(&train(&run_dir, &["--steps", "10"]));
    let out = ok(&alexnet(&[
        "eval",
        "--checkpoint",
        run_dir.to_str().unwrap(),
        "--cpu",
        "--json",
    ]));
    let eval: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(eval["images"], 32);

    // The logits of the grouped f64 twin with the checkpoint's weights, at
    // test time (no dropout).
    let ckpt = newest(&run_dir);
    let plan = Plan::new(ckpt.state.spec.clone()).unwrap();
    let shapes = alexnet::net::params::twin_shapes(&plan);
    let weights = checkpoint::in_order(ckpt.weights.clone(), &shapes, &run_dir).unwrap();
    let input = plan.spec.input.clone();
    let set = Synthetic::new(5, Split::Validation, 8, input.channels, input.size);
    let (images, _) = set.batch(&(0..8).collect::<Vec<_>>());
    let wide: Vec<f64> = images.iter().map(|&v| f64::from(v)).collect();
    let twin = Twin::new(plan.clone(), &weights);
    let expected = twin.forward(&wide, 8, None).pop().unwrap();

    let batch = dir.join("batch.npy");
    npy::write(
        &batch,
        &npy::Array {
            shape: vec![8, input.channels, input.size, input.size],
            data: images,
        },
    )
    .unwrap();
    let logits = dir.join("logits.npy");
    let out = ok(&alexnet(&[
        "predict",
        "--checkpoint",
        run_dir.to_str().unwrap(),
        "--cpu",
        "--json",
        "--batch",
        "3",
        "--logits",
        logits.to_str().unwrap(),
        batch.to_str().unwrap(),
    ]));
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 8);
    assert_eq!(lines[0]["top5"].as_array().unwrap().len(), 5);
    let got = npy::read(&logits).unwrap();
    assert_eq!(got.shape, vec![8, plan.classes()]);
    // f32 rounding: the twin's test on random nets reaches 1e-7 of the largest.
    let largest = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (i, (&g, e)) in got.data.iter().zip(&expected).enumerate() {
        assert!(
            (f64::from(g) - e).abs() <= 1e-5 * largest,
            "logit {i}: predict {g}, the f64 twin {e}"
        );
    }
    // The top class of each line is the largest logit.
    for (n, line) in lines.iter().enumerate() {
        let row = &got.data[n * plan.classes()..][..plan.classes()];
        let best = (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap();
        assert_eq!(line["top5"][0]["class"], ckpt.state.classes[best]);
    }
}
