//! scripts/gpu-check, run on the CPU against a stand-in bundle
//! (fake_bundle.py under each of the bundle's names, with made-up figures):
//! the steps the goals are measured by run first, each ratio is alexnet's
//! figure over PyTorch's at the same batch, a time budget kills the step it
//! runs out in and skips the rest, and a check killed from outside leaves
//! the report of the steps it finished. The stand-in's bench output has the
//! shape the real `alexnet bench --json` prints.

use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const FAKE: &str = include_str!("fake_bundle.py");
/// 1 info, 3 test rounds, 1 NCCL, 4 precisions × 4 batches, 3 emulated,
/// 4 PyTorch variants × 2 batches.
const STEPS: usize = 1 + 3 + 1 + 16 + 3 + 8;

/// A bundle of stand-ins in a scratch folder, and a report folder beside it.
struct Check {
    dir: tempfile::TempDir,
}

impl Check {
    fn new() -> Check {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle");
        std::fs::create_dir(&bundle).unwrap();
        for name in ["alexnet", "gpu-tests", "nccl-tests", "pytorch_twin.py"] {
            let path = bundle.join(name);
            std::fs::write(&path, FAKE).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(bundle.join("commit"), "abc1234\n").unwrap();
        Check { dir }
    }

    fn report(&self) -> PathBuf {
        self.dir.path().join("report")
    }

    /// gpu-check on the stand-ins, `slow` (a program's name) sleeping a minute.
    fn command(&self, slow: &str, extra: &[&str]) -> Command {
        let mut command = Command::new("python3");
        command
            .arg("scripts/gpu-check")
            .arg("--quick")
            .arg("--bundle")
            .arg(self.dir.path().join("bundle"))
            .arg("--report")
            .arg(self.report())
            .args(extra)
            .env("FAKE_SLOW", slow);
        command
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.report().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// results.json's (step, batch) pairs, in the order they ran.
    fn steps(&self) -> Vec<(String, Option<u64>)> {
        let results: Value = serde_json::from_str(&self.read("results.json")).unwrap();
        results
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["step"].as_str().unwrap().to_owned(), r["batch"].as_u64()))
            .collect()
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn position(steps: &[(String, Option<u64>)], step: &str, batch: Option<u64>) -> usize {
    steps
        .iter()
        .position(|(s, b)| s == step && *b == batch)
        .unwrap_or_else(|| panic!("{step} @ {batch:?} did not run: {steps:?}"))
}

#[test]
fn a_whole_check_runs_the_goals_first_and_prints_each_ratio() {
    let check = Check::new();
    let out = check.command("", &[]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let report = check.read("report.md");
    assert!(report.contains("commit abc1234 (done)"), "{report}");
    // The stand-in's figures: alexnet trains 1,000 (fp32), 2,000 (tf32),
    // 3,000 (bf16), 2,500 (fp16) images/s and infers twice that; PyTorch
    // 2,000/8,000 (exact), 4,000/16,000 (TF32), 5,000/20,000 (AMP),
    // 6,000/30,000 (compiled).
    for line in [
        "| fp32 | 128 | pytorch fp32 exact | 0.50x | 0.25x |",
        "| tf32 | 512 | pytorch tf32 | 0.50x | 0.25x |",
        "| bf16 | 128 | pytorch amp fp16 | 0.60x | 0.30x |",
        "| bf16 | 512 | pytorch compile bf16 channels-last | 0.50x | 0.20x |",
        "| fp16 | 128 | pytorch compile bf16 channels-last | 0.42x | 0.17x |",
        "| conv1 | 1.50 | 3.00 | 20.0 | 25.0 | 1.00 |",
        "ok: GPU 0 towers hold 1.20 GiB, predicted 1.00 GiB to 1.50 GiB",
        "| alexnet bf16 --emulate | 512 | ok | 3,000 | 6,000 |",
        "| gpu tests, round 3 | - | test result: ok. 9 passed; 0 failed; 0 ignored |",
        "```\nGPU 0: a stand-in\n```",
    ] {
        assert!(report.contains(line), "no `{line}` in\n{report}");
    }
    // PyTorch runs at 128 and 512 only: no ratio at 256.
    assert!(!report.contains("| fp32 | 256 |"), "{report}");

    let steps = check.steps();
    assert_eq!(steps.len(), STEPS, "{steps:?}");
    let first: Vec<&str> = steps[..3].iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(first, ["info", "gpu tests, round 1", "nccl tests"]);
    let goals_done = position(&steps, "pytorch compile bf16 channels-last", Some(512));
    for (step, batch) in [
        ("alexnet fp16", Some(512)),
        ("pytorch fp32 exact", Some(512)),
    ] {
        assert!(position(&steps, step, batch) < goals_done, "{steps:?}");
    }
    let round_2 = position(&steps, "gpu tests, round 2", None);
    assert!(goals_done < round_2, "{steps:?}");
    assert!(
        round_2 < position(&steps, "alexnet fp32", Some(256)),
        "{steps:?}"
    );
    assert!(
        check
            .read("steps.log")
            .contains("==== alexnet fp32 --emulate @ 128")
    );
}

#[test]
fn a_time_budget_kills_the_step_it_ends_in_and_skips_the_rest() {
    let check = Check::new();
    let start = Instant::now();
    let out = check
        .command("gpu-tests", &["--budget", "12"])
        .output()
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(40),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = check.read("report.md");
    for line in [
        "| info | - | ok |",
        "| gpu tests, round 1 | - | FAILED (killed after 1",
        "| nccl tests | - | skipped (time budget spent) |",
        "| alexnet fp32 | 128 | skipped (time budget spent) |",
        "| pytorch tf32 | 512 | skipped (time budget spent) |",
        "skipped (the alexnet fp32 bench at batch 128 was)",
        "(done)",
    ] {
        assert!(report.contains(line), "no `{line}` in\n{report}");
    }
    assert_eq!(check.steps().len(), STEPS);
}

#[test]
fn a_killed_check_leaves_the_report_of_the_steps_it_finished() {
    let check = Check::new();
    let mut child = check
        .command("nccl-tests", &[])
        .process_group(0)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let report = check.report().join("report.md");
    let start = Instant::now();
    while !std::fs::read_to_string(&report).is_ok_and(|r| r.contains("| gpu tests, round 1 |")) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no report of round 1"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The whole group (its id is the child's): gpu-check and the sleeping
    // stand-in it waits for, and nothing else.
    let group = libc::pid_t::try_from(child.id()).unwrap();
    assert!(group > 1);
    // SAFETY: a plain system call on a process group this test made.
    let killed = unsafe { libc::kill(-group, libc::SIGKILL) };
    assert_eq!(killed, 0, "{}", std::io::Error::last_os_error());
    child.wait().unwrap();
    let report = check.read("report.md");
    assert!(
        report.contains(&format!("(in progress, {} steps to come)", STEPS - 2)),
        "{report}"
    );
    assert!(
        report.contains("| gpu tests, round 1 | - | test result: ok."),
        "{report}"
    );
    assert_eq!(check.steps().len(), 2);
    assert!(check.read("steps.log").contains("==== gpu tests, round 1"));
}

/// Every key path of `value`, objects' keys joined by dots, an array's
/// first element as `[]`.
fn key_paths(value: &Value, prefix: &str, paths: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                let path = format!("{prefix}{key}");
                paths.push(path.clone());
                key_paths(inner, &format!("{path}."), paths);
            }
        }
        Value::Array(items) if !items.is_empty() && items[0].is_object() => {
            key_paths(&items[0], &format!("{prefix}[]."), paths);
        }
        _ => {}
    }
}

#[test]
fn the_stand_in_bench_answers_in_the_real_benchs_shape() {
    let real = Command::new(env!("CARGO_BIN_EXE_alexnet"))
        .args(["bench", "--cpu", "--preset", "small", "--batch", "2"])
        .args(["--steps", "1", "--warmup", "0", "--json"])
        .output()
        .unwrap();
    assert!(real.status.success(), "{}", text(&real));
    let check = Check::new();
    let fake = Command::new(check.dir.path().join("bundle/alexnet"))
        .args(["bench", "--gpus", "0", "--batch", "128", "--json"])
        .output()
        .unwrap();
    assert!(fake.status.success(), "{}", text(&fake));
    let parse = |out: &Output| -> Value {
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(&stdout[stdout.find('{').unwrap()..]).unwrap()
    };
    let (mut real_paths, mut fake_paths) = (Vec::new(), Vec::new());
    key_paths(&parse(&real), "", &mut real_paths);
    key_paths(&parse(&fake), "", &mut fake_paths);
    // On the CPU the GPU prediction is null, so its inner keys are not compared.
    for path in fake_paths
        .iter()
        .filter(|p| !p.starts_with("gpu_peak_predicted."))
    {
        assert!(
            real_paths.contains(path),
            "the real bench has no {path}: {real_paths:?}"
        );
    }
}
