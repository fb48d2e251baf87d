//! Awkward input, through the binary: each gets a clear answer (exit status
//! 2 and a first stderr line naming the problem), never a panic, an abort or
//! a kill, never a silent wrong result, and nothing half-made left behind.

mod common;

use common::{alexnet, scratch};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exit status 2, no panic, and a first stderr line holding `needle`.
fn refused(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let first = err.lines().next().unwrap_or("");
    assert!(
        first.contains(needle),
        "{needle:?} not in the first line {first:?}"
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The files under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// A two-step run of the small preset on a tiny synthetic set.
fn tiny_run(run: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--cpu",
        "--preset",
        "small",
        "--batch",
        "8",
        "--steps",
        "2",
        "--train-images",
        "16",
        "--val-images",
        "8",
        "--log-every",
        "1",
        "--run-dir",
        s(run),
    ];
    args.extend(extra);
    let out = alexnet(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    out
}

fn png(path: &Path, seed: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, 12, 12);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let data: Vec<u8> = (0..12 * 12 * 3)
        .map(|i| (i * 7 + seed as usize * 50) as u8)
        .collect();
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&data).unwrap();
    writer.finish().unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// A folder dataset: `per_class` training and validation PNGs in each class.
fn folder_set(root: &Path, classes: &[&str], per_class: usize) {
    for (c, class) in classes.iter().enumerate() {
        for split in ["train", "val"] {
            for i in 0..per_class {
                png(
                    &root.join(split).join(class).join(format!("{i}.png")),
                    (c * 3 + i) as u8,
                );
            }
        }
    }
}

#[test]
fn flags_given_with_resume_override_the_saved_config_and_are_named() {
    let dir = scratch("resume-flags");
    let run = dir.join("run");
    let first = tiny_run(&run, &["--quiet"]);
    assert!(
        !stdout(&first).contains("step     1/2"),
        "{}",
        stdout(&first)
    );
    let out = alexnet(&[
        "train",
        "--cpu",
        "--resume",
        s(&run),
        "--steps",
        "4",
        "--lr",
        "0.0001",
        "--schedule",
        "constant",
        "--quiet=false",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let changed = text
        .lines()
        .find(|l| l.starts_with("changed from the saved config: "))
        .unwrap_or_else(|| panic!("no changes line in {text}"));
    for part in [
        "lr 0.01 -> 0.0001",
        "quiet true -> false",
        "steps 2 -> 4",
        "schedule ",
    ] {
        assert!(changed.contains(part), "{part:?} not in {changed:?}");
    }
    // --quiet=false undid the saved quiet: the step lines are back.
    assert!(text.contains("step     3/4"), "{text}");
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("lr = 0.0001"), "{config}");
    // The steps after the resume ran at the new rate, whatever the checkpoint's was.
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let rates: Vec<f64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train" && v["step"].as_u64().unwrap() > 2)
        .map(|v| v["lr"].as_f64().unwrap())
        .collect();
    assert_eq!(rates.len(), 2, "{metrics}");
    assert!(rates.iter().all(|&r| (r - 1e-4).abs() < 1e-9), "{rates:?}");
    // --init cannot apply to a resumed run: a usage mistake.
    refused(
        &alexnet(&["train", "--resume", s(&run), "--init", "he"]),
        "error: the argument '--resume <RUN_DIR>' cannot be used with '--init <INIT>'",
    );
}

#[test]
fn a_failed_start_leaves_no_run_folder() {
    let dir = scratch("half-made");
    let data = dir.join("set");
    folder_set(&data, &["a", "b"], 2);
    let eleven = dir.join("eleven");
    let names: Vec<String> = (0..11).map(|i| format!("c{i:02}")).collect();
    folder_set(
        &eleven,
        &names.iter().map(String::as_str).collect::<Vec<_>>(),
        1,
    );
    let run = dir.join("run");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--preset", "nonesuch"],
            "--preset nonesuch: no such preset",
        ),
        (vec!["--data", "/nonexistent/set"], "/nonexistent/set"),
        (
            vec!["--data", s(&data), "--batch", "8"],
            "--batch 8: the training set has only 4 images",
        ),
        (
            vec!["--data", s(&eleven)],
            "--preset small: the net has 10 outputs, the data 11 classes",
        ),
        (
            vec!["--batch", "1048576", "--train-images", "1048576"],
            "--batch 1048576: needs about",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["train", "--cpu", "--steps", "1", "--run-dir", s(&run)];
        args.extend(&extra);
        refused(&alexnet(&args), needle);
        assert!(!run.exists(), "{extra:?} left {:?}", files(&run));
    }
    // What older versions left behind (config.toml and an empty
    // metrics.jsonl) does not block the same command.
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("config.toml"), "").unwrap();
    std::fs::write(run.join("metrics.jsonl"), "").unwrap();
    tiny_run(&run, &[]);
    // A run folder that is a file.
    let file = dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    refused(
        &alexnet(&["train", "--cpu", "--steps", "1", "--run-dir", s(&file)]),
        "is a file, not a folder",
    );
}

#[test]
fn huge_counts_and_sizes_are_refused_before_allocation() {
    let dir = scratch("huge");
    let run = dir.join("run");
    let near_max = "18446744073709551615";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["train", "--train-images", near_max], "--train-images"),
        (vec!["train", "--val-images", near_max], "--val-images"),
        (vec!["train", "--batch", "4294967295"], "--batch"),
        (vec!["summary", "--batch", "4294967295"], "--batch"),
        (
            vec!["bench", "--cpu", "--batch", "1048576"],
            "--batch 1048576: needs about",
        ),
        (
            vec!["bench-data", "--data", "/x", "--images", near_max],
            "--images",
        ),
        (
            vec!["bench-data", "--data", "/x", "--input", "100000"],
            "--input",
        ),
        (
            vec!["bench-data", "--data", "/x", "--workers", "100000"],
            "--workers",
        ),
        (vec!["prepare", "/x", "/y", "--side", "65000"], "--side"),
        (
            vec!["eval", "--checkpoint", s(&run), "--images", near_max],
            "--images",
        ),
    ];
    for (args, needle) in cases {
        refused(&alexnet(&args), needle);
    }
    // Presets whose sizes overflow or cannot be held.
    let layers = "[[layers]]\ntype = \"fc\"\nname = \"fc\"\nunits = 5\n";
    for (input, conv, needle) in [
        (
            "channels = 3\nsize = 1000000000",
            "",
            "input 3×1000000000×1000000000",
        ),
        (
            "channels = 3\nsize = 64",
            "[[layers]]\ntype = \"conv\"\nname = \"c\"\nfilters = 1000000000000\nkernel = 3\n",
            "too large",
        ),
        (
            "channels = 3\nsize = 64",
            "[[layers]]\ntype = \"conv\"\nname = \"c\"\nfilters = 4\nkernel = 3\npad = 9223372036854775807\n",
            "pad",
        ),
    ] {
        let preset = dir.join("huge.toml");
        std::fs::write(
            &preset,
            format!("name = \"huge\"\n[input]\n{input}\n{conv}{layers}"),
        )
        .unwrap();
        refused(&alexnet(&["summary", "--preset", s(&preset)]), needle);
        refused(
            &alexnet(&[
                "train",
                "--cpu",
                "--preset",
                s(&preset),
                "--run-dir",
                s(&run),
            ]),
            needle,
        );
        assert!(!run.exists());
    }
    // A batch that fits no host, in eval and predict.
    let small = dir.join("small");
    tiny_run(&small, &[]);
    refused(
        &alexnet(&[
            "eval",
            "--cpu",
            "--checkpoint",
            s(&small),
            "--batch",
            "1048576",
        ]),
        "--batch 1048576: needs about",
    );
    let npy = dir.join("x.npy");
    let header =
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 3, 64, 64), }\n";
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    std::fs::write(&npy, bytes).unwrap();
    refused(
        &alexnet(&["predict", "--cpu", "--checkpoint", s(&small), s(&npy)]),
        "x.npy: not a float32 .npy array",
    );
}

#[test]
fn no_silent_wrong_results() {
    let dir = scratch("silent");
    let run = dir.join("run");
    tiny_run(&run, &[]);
    let (_, ckpt) = alexnet::train::checkpoint::load(&run).unwrap();
    // NaN weights are refused when the checkpoint is read.
    let poisoned = dir.join("poisoned");
    let mut bad = ckpt.clone();
    bad.weights[0].data[0] = f32::NAN;
    alexnet::train::checkpoint::save(&poisoned.join("checkpoints"), &bad, 3).unwrap();
    refused(
        &alexnet(&["eval", "--cpu", "--checkpoint", s(&poisoned)]),
        "holds NaN or infinite values",
    );
    // A NaN input to predict is refused, and no --logits file is made.
    let input = dir.join("in.npy");
    let mut pixels = vec![0.0f32; 3 * 64 * 64];
    pixels[17] = f32::NAN;
    alexnet::npy::write(
        &input,
        &alexnet::npy::Array {
            shape: vec![1, 3, 64, 64],
            data: pixels,
        },
    )
    .unwrap();
    let logits = dir.join("out.npy");
    let out = alexnet(&[
        "predict",
        "--cpu",
        "--checkpoint",
        s(&run),
        "--logits",
        s(&logits),
        s(&input),
    ]);
    refused(&out, "in.npy: value 17 is NaN");
    assert!(stdout(&out).is_empty());
    assert!(
        !files(&dir).iter().any(|f| f.contains("out.npy")),
        "{:?}",
        files(&dir)
    );
    // eval --images is honoured on the synthetic set and on a folder; 0 is refused.
    let out = alexnet(&[
        "eval",
        "--cpu",
        "--json",
        "--checkpoint",
        s(&run),
        "--images",
        "5",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("\"images\":5"), "{}", stdout(&out));
    refused(
        &alexnet(&["eval", "--checkpoint", s(&run), "--images", "0"]),
        "--images",
    );
    let set = dir.join("set");
    folder_set(&set, &["a", "b"], 3);
    let folder_run = dir.join("folder-run");
    let out = alexnet(&[
        "train",
        "--cpu",
        "--data",
        s(&set),
        "--batch",
        "2",
        "--steps",
        "1",
        "--run-dir",
        s(&folder_run),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = alexnet(&[
        "eval",
        "--cpu",
        "--json",
        "--checkpoint",
        s(&folder_run),
        "--data",
        s(&set),
        "--images",
        "4",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("\"images\":4"), "{}", stdout(&out));
    refused(
        &alexnet(&[
            "eval",
            "--cpu",
            "--checkpoint",
            s(&folder_run),
            "--data",
            s(&set),
            "--images",
            "7",
        ]),
        "--images 7: the validation set has 6 images",
    );
    // Other class names are named, not silently evaluated.
    let other = dir.join("other");
    folder_set(&other, &["a", "c"], 1);
    refused(
        &alexnet(&[
            "eval",
            "--cpu",
            "--checkpoint",
            s(&folder_run),
            "--data",
            s(&other),
        ]),
        "not the classes the checkpoint learned (class 1 is \"c\" there, \"b\" in the checkpoint)",
    );
    // bench-data on a folder of unreadable images, and with no workers.
    let broken = dir.join("broken");
    for i in 0..3 {
        let path = broken.join(format!("train/a/{i}.jpg"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"not a jpeg").unwrap();
    }
    std::fs::create_dir_all(broken.join("val/a")).unwrap();
    std::fs::write(broken.join("val/a/0.jpg"), b"not a jpeg").unwrap();
    refused(
        &alexnet(&["bench-data", "--data", s(&broken)]),
        "none of the 3 images timed could be read",
    );
    refused(
        &alexnet(&["bench-data", "--data", s(&set), "--workers", "0"]),
        "--workers",
    );
    let out = alexnet(&["bench-data", "--data", s(&set), "--images", "6"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("6 images (0 unreadable, left out)"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("decode alone"), "{}", stdout(&out));
    refused(
        &alexnet(&["bench-data", "--synthetic", "--data", s(&set)]),
        "--synthetic",
    );
    let out = alexnet(&[
        "bench-data",
        "--synthetic",
        "--images",
        "5",
        "--input",
        "24",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("the synthetic set at 24×24, 5 images"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn bad_constants_are_refused_when_read() {
    let dir = scratch("constants");
    let run = dir.join("run");
    for (schedule, needle) in [
        ("kind = \"step\"\nevery = 3\ngamma = -0.1", "gamma = -0.1"),
        ("kind = \"step\"\nevery = 0\ngamma = 0.1", "every = 0"),
        ("kind = \"cosine\"\nmin_lr = 0.5", "min_lr = 0.5"),
        (
            "kind = \"plateau\"\nfactor = nan\npatience = 2\nthreshold = 0.001\nmax_drops = 3",
            "factor = NaN",
        ),
    ] {
        let file = dir.join("run.toml");
        std::fs::write(&file, format!("[schedule]\n{schedule}\n")).unwrap();
        let out = alexnet(&["train", "--cpu", "--config", s(&file), "--run-dir", s(&run)]);
        refused(&out, "run.toml: --schedule: [schedule] ");
        refused(&out, needle);
        assert!(!run.exists());
    }
    let paper = std::fs::read_to_string("presets/small.toml").unwrap();
    let infinite = dir.join("inf.toml");
    std::fs::write(&infinite, paper.replacen("beta = 0.75", "beta = inf", 1)).unwrap();
    refused(
        &alexnet(&["summary", "--preset", s(&infinite)]),
        "beta inf, k ",
    );
}

#[test]
fn validation_and_eval_show_progress_and_stop_on_the_first_interrupt() {
    let dir = scratch("interrupt");
    let run = dir.join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_alexnet"))
        .args([
            "train",
            "--cpu",
            "--batch",
            "8",
            "--steps",
            "1",
            "--train-images",
            "8",
            "--val-images",
            "100000",
            "--run-dir",
        ])
        .arg(&run)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first validation progress line, then interrupt.
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        let n = std::io::BufRead::read_line(&mut err, &mut line).unwrap();
        assert!(n > 0, "no validation progress before the end");
        if line.starts_with("validation: ") {
            break;
        }
    }
    assert!(
        line.contains("/100000 images, ") && line.contains("ETA"),
        "{line}"
    );
    let asked = std::time::Instant::now();
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert!(asked.elapsed().as_secs() < 20, "took {:?}", asked.elapsed());
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(
        text.contains("stopped by a signal during the validation after step 1 of 1"),
        "{text}"
    );
    assert!(
        run.join("checkpoints/step-00000001/weights.safetensors")
            .exists()
    );
    // eval's progress, one line per tenth in a log.
    let out = alexnet(&[
        "eval",
        "--cpu",
        "--checkpoint",
        s(&run),
        "--images",
        "2000",
        "--batch",
        "100",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out)
            .lines()
            .any(|l| l.starts_with("eval: 200/2000 images, ")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn errors_keep_what_users_need_and_exit_two() {
    let dir = scratch("errors");
    let out = alexnet(&["eval"]);
    refused(
        &out,
        "error: the following required arguments were not provided:",
    );
    assert!(
        stderr(&out).contains("--checkpoint <CHECKPOINT>"),
        "{}",
        stderr(&out)
    );
    let out = alexnet(&["train", "--init", "bogus"]);
    refused(&out, "error: invalid value 'bogus' for '--init <INIT>'");
    assert!(
        stderr(&out).contains("[possible values: "),
        "{}",
        stderr(&out)
    );
    // prepare --verify needs no destination.
    let set = dir.join("set");
    folder_set(&set, &["a", "b"], 2);
    let shards = dir.join("shards");
    let out = alexnet(&["prepare", s(&set), s(&shards), "--side", "16"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = alexnet(&["prepare", "--verify", s(&shards)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("every checksum matches"),
        "{}",
        stdout(&out)
    );
    // Missing files and unusable destinations are input errors, exit 2.
    refused(
        &alexnet(&["train", "--config", "/nonexistent/run.toml"]),
        "/nonexistent/run.toml",
    );
    let run = dir.join("run");
    tiny_run(&run, &[]);
    let ckpt = run.join("checkpoints/step-00000002");
    let out = alexnet(&[
        "predict",
        "--cpu",
        "--checkpoint",
        s(&run),
        "--logits",
        "/nonexistent/dir/out.npy",
        s(&set.join("val/a")),
    ]);
    refused(
        &out,
        "--logits /nonexistent/dir/out.npy: cannot write there",
    );
    assert!(
        stdout(&out).is_empty(),
        "the work ran first: {}",
        stdout(&out)
    );
    let moved = dir.join("weights");
    std::fs::rename(ckpt.join("weights.safetensors"), &moved).unwrap();
    refused(
        &alexnet(&["eval", "--cpu", "--checkpoint", s(&ckpt)]),
        "weights.safetensors",
    );
}

#[test]
fn a_damaged_newest_checkpoint_is_passed_over_aloud() {
    let dir = scratch("fallback");
    let run = dir.join("run");
    tiny_run(&run, &["--checkpoint-every", "1"]);
    let newest: PathBuf = run.join("checkpoints/step-00000002");
    std::fs::write(newest.join("weights.safetensors"), b"garbage").unwrap();
    let out = alexnet(&["eval", "--cpu", "--checkpoint", s(&run)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let first = err.lines().next().unwrap_or("");
    assert!(
        first.starts_with("warning: passing over a newer checkpoint (")
            && first.contains("step-00000002")
            && first.ends_with("step-00000001"),
        "{first}"
    );
}

#[test]
fn a_resume_with_another_seed_batch_or_data_set_is_refused_and_says_why() {
    let dir = scratch("resume-refused");
    let run = dir.join("run");
    assert!(tiny_run(&run, &["--quiet"]).status.success());
    let before = files(&run);
    let resume = |extra: &[&str]| {
        let mut args = vec!["train", "--cpu", "--resume", s(&run), "--steps", "4"];
        args.extend(extra);
        alexnet(&args)
    };
    refused(
        &resume(&["--seed", "2"]),
        "--seed 2: the run was saved with seed 1",
    );
    // 16 images at batch 8: step 2 ends epoch 1; at batch 4 it is mid-epoch.
    refused(
        &resume(&["--batch", "4"]),
        "--batch 4: the run was saved at image 0 of epoch 2, where batch 4 would put step 2 at image 8 of epoch 1",
    );
    refused(
        &resume(&["--train-images", "32"]),
        "this data has 32 training images instead of 16",
    );
    assert_eq!(files(&run), before, "a refused resume wrote nothing");
    // The saved batch, seed and data resume.
    assert!(resume(&[]).status.success());
}
