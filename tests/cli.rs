//! The binary end to end: reports, training, and bad input.

mod common;

use common::{alexnet, scratch};
use std::path::Path;
use std::process::Output;

/// Exit status 2, one line on stderr that mentions `needle`, no panic.
fn assert_input_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr:?}");
}

#[test]
fn summary_prints_the_paper_totals() {
    let out = alexnet(&["summary"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("60,965,224 parameters"));
    assert!(text.contains("724.4 M multiply-adds per image"));
    assert!(text.contains("fits a 3 GB GTX 580"));
}

#[test]
fn bad_input_is_one_line_and_exit_status_two() {
    assert_input_error(&alexnet(&["summary", "--preset", "nonesuch"]), "nonesuch");
    assert_input_error(&alexnet(&["train", "--batch", "0"]), "--batch");
    assert_input_error(&alexnet(&["bench", "--batch", "0"]), "--batch");
    assert_input_error(
        &alexnet(&["train", "--lr=0", "--run-dir", "/nonexistent/x"]),
        "--lr",
    );

    let dir = scratch("presets");
    let misfit = dir.join("misfit.toml");
    std::fs::write(
        &misfit,
        "name = \"misfit\"\n[input]\nchannels = 3\nsize = 8\n\
         [[layers]]\ntype = \"conv\"\nname = \"conv1\"\nfilters = 4\nkernel = 11\n\
         [[layers]]\ntype = \"fc\"\nname = \"fc\"\nunits = 5\n",
    )
    .unwrap();
    assert_input_error(
        &alexnet(&["summary", "--preset", misfit.to_str().unwrap()]),
        "does not fit",
    );
    let malformed = dir.join("malformed.toml");
    std::fs::write(&malformed, "name = \"x\"\n[[layers]\n").unwrap();
    assert_input_error(
        &alexnet(&["summary", "--preset", malformed.to_str().unwrap()]),
        "malformed.toml",
    );
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn small_preset_learns_the_synthetic_set_deterministically() {
    let dir = scratch("train");
    let run = |name: &str| {
        let run_dir = dir.join(name);
        let out = alexnet(&[
            "train",
            "--cpu",
            "--preset",
            "small",
            "--batch",
            "32",
            "--steps",
            "360",
            "--train-images",
            "2400",
            "--val-images",
            "500",
            "--log-every",
            "40",
            "--seed",
            "3",
            "--schedule",
            "constant",
            "--run-dir",
            run_dir.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        run_dir
    };
    let first = run("a");
    let lines = metrics(&first);
    let last_val = lines.iter().rev().find(|m| m["kind"] == "val").unwrap();
    let top1 = last_val["top1"].as_f64().unwrap();
    assert!(
        top1 > 0.35,
        "validation top-1 {top1} is not well above chance (0.1)"
    );
    assert!(first.join("config.toml").exists());

    // The same seed gives the same losses to the last bit.
    let second = run("b");
    let losses = |lines: &[serde_json::Value]| -> Vec<f64> {
        lines.iter().filter_map(|m| m["loss"].as_f64()).collect()
    };
    assert_eq!(losses(&lines), losses(&metrics(&second)));

    // A run directory that holds a run is refused and left as it was.
    let before = std::fs::read(first.join("metrics.jsonl")).unwrap();
    let out = alexnet(&[
        "train",
        "--steps",
        "1",
        "--run-dir",
        first.to_str().unwrap(),
    ]);
    assert_input_error(&out, "already holds a run");
    assert_eq!(std::fs::read(first.join("metrics.jsonl")).unwrap(), before);
}

/// A stand-in for Python: a shell script with `body`, in its own folder.
fn fake_python(name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = scratch(name).join("python");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_string()
}

fn bench_against(python: &str, json: bool) -> Output {
    let mut args = vec![
        "bench", "--cpu", "--batch", "1", "--steps", "1", "--warmup", "0",
    ];
    args.extend(["--against-pytorch", "--python", python]);
    if json {
        args.push("--json");
    }
    alexnet(&args)
}

#[test]
fn against_pytorch_without_torch_says_so_in_one_line_and_still_reports() {
    let python = fake_python(
        "no-torch",
        "echo 'Traceback (most recent call last):' >&2\n\
         echo \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1",
    );
    let out = bench_against(&python, false);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("training") && text.contains("images/s"),
        "{text}"
    );
    let notes: Vec<&str> = text.lines().filter(|l| l.contains("PyTorch")).collect();
    assert_eq!(notes.len(), 1, "{text}");
    assert!(notes[0].contains("not importable") && notes[0].contains(&python));

    let missing = bench_against("/nonexistent/python3", false);
    let text = String::from_utf8(missing.stdout).unwrap();
    assert!(missing.status.success());
    assert!(text.contains("cannot run /nonexistent/python3"), "{text}");
}

#[test]
fn against_pytorch_prints_both_rates_and_their_ratio() {
    // A Python that answers as the twin script does, with fixed rates.
    let python = fake_python(
        "fake-torch",
        r#"echo '{"torch": "0.0-test", "train": {"images_per_s": 0.5}, "inference": {"images_per_s": 2.0}}'"#,
    );
    let out = bench_against(&python, true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ours = |kind: &str| report[kind]["images_per_s"].as_f64().unwrap();
    let theirs = &report["against_pytorch"]["pytorch"];
    assert_eq!(theirs["torch_version"], "0.0-test");
    assert_eq!(theirs["threads"], 2);
    let ratio = |key: &str| theirs[key].as_f64().unwrap();
    assert!((ratio("train_ratio") - ours("train") / 0.5).abs() < 1e-9 * ratio("train_ratio"));
    assert!(
        (ratio("inference_ratio") - ours("inference") / 2.0).abs()
            < 1e-9 * ratio("inference_ratio")
    );

    let text = String::from_utf8(bench_against(&python, false).stdout).unwrap();
    assert!(
        text.contains("PyTorch 0.0-test twin, fp32, 2 threads"),
        "{text}"
    );
    assert!(text.contains("× training"), "{text}");
}
