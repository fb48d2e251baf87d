//! Real images end to end: a folder dataset holding every kind of awkward
//! file the loader must survive, trained on, evaluated with ten crops and
//! predicted from, through the binary.

mod common;

use common::{alexnet, scratch};
use std::path::Path;
use std::process::Output;

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn jpeg(width: u16, height: u16, color: jpeg_encoder::ColorType, seed: usize) -> Vec<u8> {
    let channels = match color {
        jpeg_encoder::ColorType::Luma => 1,
        jpeg_encoder::ColorType::Cmyk => 4,
        _ => 3,
    };
    let data: Vec<u8> = (0..width as usize * height as usize * channels)
        .map(|i| ((i / channels / 7 + seed * 40 + i % channels * 60) % 256) as u8)
        .collect();
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 90)
        .encode(&data, width, height, color)
        .unwrap();
    out
}

fn png(width: u32, height: u32, color: png::ColorType, depth: png::BitDepth) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(color);
    encoder.set_depth(depth);
    let samples = match color {
        png::ColorType::Grayscale | png::ColorType::Indexed => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
    };
    if color == png::ColorType::Indexed {
        encoder.set_palette(vec![0, 0, 0, 255, 0, 0, 0, 255, 0]);
    }
    let width_bytes = if depth == png::BitDepth::Sixteen {
        2
    } else {
        1
    };
    let data: Vec<u8> = (0..(width * height) as usize * samples * width_bytes)
        .map(|i| {
            if color == png::ColorType::Indexed {
                (i % 3) as u8
            } else {
                (i * 5 % 256) as u8
            }
        })
        .collect();
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&data).unwrap();
    writer.finish().unwrap();
    out
}

/// Two classes of ordinary JPEGs, plus awkward files that decode (CMYK and
/// grey JPEG, 16-bit and palette PNG, an image smaller than the crop) and
/// broken ones that do not (corrupt, truncated, empty), and an empty class.
fn awkward_dataset(root: &Path) -> Vec<&'static str> {
    for (class, seed) in [("cat", 0), ("dog", 3)] {
        for i in 0..6 {
            write(
                &root.join(format!("train/{class}/{i}.jpg")),
                &jpeg(90, 70, jpeg_encoder::ColorType::Rgb, seed + i),
            );
        }
        write(
            &root.join(format!("val/{class}/v.jpg")),
            &jpeg(80, 80, jpeg_encoder::ColorType::Rgb, seed),
        );
    }
    write(
        &root.join("train/cat/cmyk.jpg"),
        &jpeg(60, 50, jpeg_encoder::ColorType::Cmyk, 1),
    );
    write(
        &root.join("train/cat/grey.jpg"),
        &jpeg(60, 50, jpeg_encoder::ColorType::Luma, 2),
    );
    write(
        &root.join("train/dog/deep.png"),
        &png(40, 30, png::ColorType::Rgb, png::BitDepth::Sixteen),
    );
    write(
        &root.join("train/dog/palette.png"),
        &png(40, 30, png::ColorType::Indexed, png::BitDepth::Eight),
    );
    write(
        &root.join("train/dog/tiny.png"),
        &png(3, 2, png::ColorType::Grayscale, png::BitDepth::Eight),
    );
    let good = jpeg(90, 70, jpeg_encoder::ColorType::Rgb, 9);
    write(&root.join("train/cat/zero.jpg"), b"");
    write(&root.join("train/cat/truncated.jpg"), &good[..40]);
    let mut corrupt = b"\x89PNG\r\n\x1a\n".to_vec();
    corrupt.extend_from_slice(&[0x5a; 64]);
    write(&root.join("train/dog/corrupt.png"), &corrupt);
    std::fs::create_dir_all(root.join("train/empty")).unwrap();
    vec![
        "train/cat/zero.jpg",
        "train/cat/truncated.jpg",
        "train/dog/corrupt.png",
    ]
}

fn train(root: &Path, run: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--cpu",
        "--data",
        root.to_str().unwrap(),
        "--run-dir",
        run.to_str().unwrap(),
        "--batch",
        "4",
        "--epochs",
        "1",
        "--log-every",
        "1",
    ];
    args.extend(extra);
    alexnet(&args)
}

#[test]
fn awkward_files_are_converted_or_skipped_once_and_strict_stops() {
    let dir = scratch("awkward");
    let root = dir.join("set");
    let broken = awkward_dataset(&root);
    let out = train(&root, &dir.join("run"), &["--workers", "2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("train/empty: no images; the class keeps its index"),
        "{stderr}"
    );
    for file in &broken {
        let mentions = stdout
            .lines()
            .filter(|l| l.starts_with("skipped") && l.contains(file))
            .count();
        assert_eq!(mentions, 1, "{file} should be reported once:\n{stdout}");
    }
    for converted in [
        "cmyk.jpg",
        "grey.jpg",
        "deep.png",
        "palette.png",
        "tiny.png",
    ] {
        let skipped = stdout
            .lines()
            .any(|l| l.starts_with("skipped") && l.contains(converted));
        assert!(!skipped, "{converted} was skipped:\n{stdout}");
    }
    assert!(
        stdout.contains(&format!(
            "skipped {} unreadable training images",
            broken.len()
        )),
        "{stdout}"
    );

    let strict = train(&root, &dir.join("strict"), &["--strict"]);
    let stderr = String::from_utf8_lossy(&strict.stderr);
    assert_eq!(strict.status.code(), Some(2), "{stderr}");
    assert!(
        broken.iter().any(|f| stderr.contains(f)) && stderr.contains("--strict"),
        "{stderr}"
    );
}

#[test]
fn a_folder_run_evaluates_with_ten_crops_and_predicts_images() {
    let dir = scratch("eval");
    let root = dir.join("set");
    awkward_dataset(&root);
    let run = dir.join("run");
    assert!(train(&root, &run, &[]).status.success());
    // The checkpoint records the data and its colour statistics.
    let stats = std::fs::read_to_string(root.join("alexnet-stats.json")).unwrap();
    assert!(stats.contains("eigenvalues"), "{stats}");
    for extra in [&[][..], &["--ten-crop"][..]] {
        let mut args = vec![
            "eval",
            "--cpu",
            "--json",
            "--checkpoint",
            run.to_str().unwrap(),
            "--data",
            root.to_str().unwrap(),
        ];
        args.extend(extra);
        let out = alexnet(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let eval: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(eval["images"], 2, "{extra:?}");
    }
    let out = alexnet(&[
        "predict",
        "--cpu",
        "--json",
        "--checkpoint",
        run.to_str().unwrap(),
        root.join("val/cat").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value =
        serde_json::from_slice(out.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert!(line["input"].as_str().unwrap().ends_with("v.jpg"));
    let classes: Vec<&str> = line["top5"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["class"].as_str().unwrap())
        .collect();
    assert!(
        classes.iter().all(|c| ["cat", "dog", "empty"].contains(c)),
        "{classes:?}"
    );
}

#[test]
fn the_same_seed_gives_the_same_run_whatever_the_workers() {
    let dir = scratch("determinism");
    let root = dir.join("set");
    awkward_dataset(&root);
    let losses = |workers: &str, name: &str| -> Vec<f64> {
        let run = dir.join(name);
        assert!(train(&root, &run, &["--workers", workers]).status.success());
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64())
            .collect()
    };
    assert_eq!(losses("1", "one"), losses("3", "three"));
}

#[test]
fn a_run_on_images_resumed_mid_epoch_equals_an_unbroken_one() {
    let dir = scratch("resume");
    let root = dir.join("set");
    awkward_dataset(&root);
    // Plateau: its rate does not depend on the run's length, which the resume changes.
    let (whole, halves) = (dir.join("whole"), dir.join("halves"));
    assert!(
        train(
            &root,
            &whole,
            &["--steps", "5", "--workers", "2", "--schedule", "plateau"]
        )
        .status
        .success()
    );
    assert!(
        train(
            &root,
            &halves,
            &["--steps", "2", "--workers", "1", "--schedule", "plateau"]
        )
        .status
        .success()
    );
    let out = alexnet(&[
        "train",
        "--cpu",
        "--resume",
        halves.to_str().unwrap(),
        "--steps",
        "5",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let weights = |run: &Path| {
        std::fs::read(run.join("checkpoints/step-00000005/weights.safetensors")).unwrap()
    };
    assert!(
        weights(&whole) == weights(&halves),
        "the resumed run's weights differ"
    );
}
