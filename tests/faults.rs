//! A tower that fails never leaves the other waiting: through the binary on
//! the CPU, with one tower's device made to fail by the test-only fault
//! hook (`ALEXNET_FAULT`, see `src/device/faults.rs`): while it is built, in
//! a forward pass, in a backward pass, or by never answering. The CPU towers
//! meet through the same start barrier and watch as the GPU links. In each
//! case the run must end within 10 s with status 1 and one line naming the
//! tower and its error, and the newest checkpoint must be the one an
//! unbroken run writes at that step, bit for bit.

mod common;

use alexnet::train::checkpoint;
use common::{alexnet, scratch};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The bound on a failing run, start to exit.
const BOUND: Duration = Duration::from_secs(10);

/// One run at a time, so that each is timed on its own.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// 100 steps per epoch of 4 images, a checkpoint after every step.
fn args(run_dir: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "train",
        "--cpu",
        "--batch",
        "4",
        "--train-images",
        "400",
        "--val-images",
        "8",
        "--steps",
        "20",
        "--checkpoint-every",
        "1",
        "--schedule",
        "constant",
        "--quiet",
        "--run-dir",
    ]
    .map(String::from)
    .to_vec();
    args.push(run_dir.display().to_string());
    args
}

/// Runs the binary with `fault` injected, killing it if it outlives `BOUND`.
fn run_with_fault(args: &[String], fault: Option<&str>) -> (Output, Duration) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut command = Command::new(env!("CARGO_BIN_EXE_alexnet"));
    command
        .args(args)
        .env("ALEXNET_TOWER_TIMEOUT_S", "2")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(f) = fault {
        command.env("ALEXNET_FAULT", f);
    }
    let start = Instant::now();
    let mut child = command.spawn().expect("the binary starts");
    while child
        .try_wait()
        .expect("the child can be waited for")
        .is_none()
    {
        if start.elapsed() > BOUND {
            let _ = child.kill();
            let out = child.wait_with_output().expect("the killed child's output");
            panic!(
                "{fault:?}: still running after {BOUND:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = start.elapsed();
    (child.wait_with_output().expect("the output"), took)
}

/// The weights of the newest checkpoint in `run_dir`, and its step.
fn newest(run_dir: &Path) -> (usize, Vec<Vec<u32>>) {
    let (_, ckpt) = checkpoint::load(&run_dir.join("checkpoints")).expect("a readable checkpoint");
    let bits = ckpt
        .weights
        .iter()
        .map(|t| t.data.iter().map(|v| v.to_bits()).collect())
        .collect();
    (ckpt.state.step, bits)
}

/// The newest checkpoint of an unbroken run after `steps` steps.
fn unbroken(name: &str, steps: usize) -> (usize, Vec<Vec<u32>>) {
    let dir = scratch(name);
    let mut a = args(&dir);
    let at = a.iter().position(|x| x == "--steps").unwrap() + 1;
    a[at] = steps.to_string();
    let out = alexnet(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found = newest(&dir);
    let _ = std::fs::remove_dir_all(dir);
    found
}

/// Runs with `fault`, checks the exit, the one-line error and the time.
fn fails(args: &[String], fault: &str, error: &str) {
    let (out, took) = run_with_fault(args, Some(fault));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{fault}: {stderr}");
    assert_eq!(stderr.trim_end(), format!("error: {error}"), "{fault}");
    assert!(took < BOUND, "{fault}: took {took:?}");
}

#[test]
fn a_tower_whose_device_does_not_build_releases_the_other() {
    let dir = scratch("fault-build");
    let mut first = args(&dir);
    let at = first.iter().position(|x| x == "--steps").unwrap() + 1;
    first[at] = "2".into();
    let (out, _) = run_with_fault(&first, None);
    assert!(out.status.success());
    let before = newest(&dir);
    let resume = vec![
        "train".to_string(),
        "--cpu".into(),
        "--resume".into(),
        dir.display().to_string(),
        "--quiet".into(),
    ];
    fails(
        &resume,
        "1:build",
        "tower 1 (CPU): injected fault (ALEXNET_FAULT): the device does not build",
    );
    assert_eq!(newest(&dir), before, "the checkpoint changed");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_tower_failing_in_a_forward_pass_releases_the_other() {
    let dir = scratch("fault-forward");
    fails(
        &args(&dir),
        "1:forward:3",
        "tower 1 (CPU): injected fault (ALEXNET_FAULT): forward pass 3 fails",
    );
    assert_eq!(newest(&dir), unbroken("fault-forward-ref", 2));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_tower_failing_in_a_backward_pass_releases_the_other() {
    let dir = scratch("fault-backward");
    fails(
        &args(&dir),
        "0:backward:4",
        "tower 0 (CPU): injected fault (ALEXNET_FAULT): backward pass 4 fails",
    );
    assert_eq!(newest(&dir), unbroken("fault-backward-ref", 3));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_tower_that_never_answers_is_named_after_the_timeout() {
    let dir = scratch("fault-hang");
    fails(
        &args(&dir),
        "1:hang:3",
        "tower 1 (CPU): did not answer within 2 s while the other tower waited at an exchange",
    );
    assert_eq!(newest(&dir), unbroken("fault-hang-ref", 2));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_malformed_fault_is_bad_input() {
    let dir = scratch("fault-bad");
    let (out, _) = run_with_fault(&args(&dir), Some("1:melt"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: ALEXNET_FAULT=1:melt: give"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
