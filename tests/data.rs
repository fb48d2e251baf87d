//! Real images end to end: a folder dataset holding every kind of awkward
//! file the loader must survive, trained on, evaluated with ten crops and
//! predicted from, through the binary.

mod common;
mod reference;

use alexnet::data::ImageSet;
use alexnet::data::augment::{Pipeline, Stats};
use alexnet::data::decode::{RgbImage, decode_at_least};
use alexnet::data::loader::{self, Mode, prepare};
use alexnet::net::params::twin_shapes;
use alexnet::net::plan::Plan;
use alexnet::rng::Rng;
use alexnet::train::checkpoint;
use common::{alexnet, scratch};
use fast_image_resize::Resizer;
use reference::Twin;
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

/// The ten crops (corners, centre, then mirrored) or the centre crop of a
/// `base` square, as the net's f64 input (CHW, scaled to [0, 1], the mean
/// subtracted), one crop after another.
fn crops_f64(square: &RgbImage, input: usize, mean: [f32; 3], ten: bool) -> Vec<f64> {
    let base = square.width;
    let far = base - input;
    let centre = [(far / 2, far / 2, false)];
    let mut places = vec![(0, 0), (far, 0), (0, far), (far, far), (far / 2, far / 2)]
        .into_iter()
        .map(|(x, y)| (x, y, false))
        .collect::<Vec<_>>();
    places.extend(places.clone().into_iter().map(|(x, y, _)| (x, y, true)));
    let mut out = Vec::new();
    for &(x0, y0, mirror) in if ten { &places[..] } else { &centre[..] } {
        for (c, &m) in mean.iter().enumerate() {
            for y in 0..input {
                for x in 0..input {
                    let sx = if mirror { input - 1 - x } else { x };
                    let v = square.pixels[((y0 + y) * base + x0 + sx) * 3 + c];
                    out.push(f64::from(v) / 255.0 - f64::from(m));
                }
            }
        }
    }
    out
}

/// Loss, top-1 and top-5 of the checkpoint in `run` on the folder `val`,
/// from the f64 twin: each image's softmax averaged over its crops.
fn twin_evaluation(run: &Path, val: &Path, ten: bool) -> (f64, f64, f64) {
    let (folder, ckpt) = checkpoint::load(run).unwrap();
    let plan = Plan::new(ckpt.state.spec.clone()).unwrap();
    let weights = checkpoint::in_order(ckpt.weights, &twin_shapes(&plan), &folder).unwrap();
    let pipeline: Pipeline = ckpt.state.dataset.pipeline.expect("trained on images");
    let twin = Twin::new(plan.clone(), &weights);
    let (classes, crops) = (plan.classes(), if ten { 10 } else { 1 });
    let (mut loss, mut top1, mut top5, mut images) = (0.0, 0.0, 0.0, 0);
    let mut resizer = Resizer::new();
    for (label, class) in ckpt.state.classes.iter().enumerate() {
        let Ok(files) = std::fs::read_dir(val.join(class)) else {
            continue;
        };
        for file in files {
            let bytes = std::fs::read(file.unwrap().path()).unwrap();
            let image = decode_at_least(&bytes, pipeline.base).unwrap();
            let square = pipeline.square(image, &mut resizer).unwrap();
            let x = crops_f64(&square, pipeline.input, pipeline.stats.mean, ten);
            let logits = twin.forward(&x, crops, None).pop().unwrap();
            let mut p = vec![0.0; classes];
            for row in logits.chunks(classes) {
                let sum: f64 = row.iter().map(|v| v.exp()).sum();
                for (q, v) in p.iter_mut().zip(row) {
                    *q += v.exp() / sum / crops as f64;
                }
            }
            let above = p.iter().filter(|&&q| q > p[label]).count();
            loss -= p[label].ln();
            top1 += f64::from(u8::from(above == 0));
            top5 += f64::from(u8::from(above < 5));
            images += 1;
        }
    }
    let n = f64::from(images);
    (loss / n, top1 / n, top5 / n)
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
    // Validation images of other sizes: wide, tall, smaller than the crop.
    write(
        &root.join("val/cat/wide.png"),
        &png(150, 60, png::ColorType::Rgb, png::BitDepth::Eight),
    );
    write(
        &root.join("val/dog/tall.jpg"),
        &jpeg(50, 130, jpeg_encoder::ColorType::Rgb, 5),
    );
    write(
        &root.join("val/dog/small.png"),
        &png(30, 20, png::ColorType::Rgb, png::BitDepth::Eight),
    );
    for ten in [false, true] {
        let mut args = vec![
            "eval",
            "--cpu",
            "--json",
            "--checkpoint",
            run.to_str().unwrap(),
            "--data",
            root.to_str().unwrap(),
        ];
        if ten {
            args.push("--ten-crop");
        }
        let out = alexnet(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let eval: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(eval["images"], 5, "ten crops: {ten}");
        let (loss, top1, top5) = twin_evaluation(&run, &root.join("val"), ten);
        let got = eval["loss"].as_f64().unwrap();
        assert!(
            (got - loss).abs() <= 1e-5 * loss,
            "ten crops: {ten}: loss {got}, the f64 twin's {loss}"
        );
        assert_eq!(eval["top1"].as_f64(), Some(top1), "ten crops: {ten}");
        assert_eq!(eval["top5"].as_f64(), Some(top5), "ten crops: {ten}");
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

/// Images in memory, for the loader.
struct Pictures(Vec<RgbImage>);

impl ImageSet for Pictures {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn label(&self, i: usize) -> u32 {
        i as u32
    }
    fn describe(&self, i: usize) -> String {
        format!("picture {i}")
    }
    fn load(&self, i: usize) -> Result<RgbImage, String> {
        Ok(self.0[i].clone())
    }
}

/// Noise, so that any crop misplaced by a pixel differs.
fn noise(width: usize, height: usize, seed: u64) -> RgbImage {
    let mut rng = Rng::new(seed);
    RgbImage {
        width,
        height,
        pixels: (0..width * height * 3)
            .map(|_| rng.below(256) as u8)
            .collect(),
    }
}

#[test]
fn ten_crops_are_the_corners_and_the_centre_and_their_mirrors_for_images_of_any_size() {
    let mut resizer = Resizer::new();
    // Nets of several input sides: the room a crop has is 29 (the paper's), 8 and 3.
    for (input, room) in [(227, 29), (64, 8), (24, 3)] {
        let pipeline = Pipeline::new(input, Stats::imagenet());
        let (base, far) = (pipeline.base, pipeline.base - input);
        assert_eq!(far, room);
        // Square already, wide, tall, and small (smaller than the larger crops).
        let sizes = [
            (base, base),
            (base + 13, base),
            (base, 2 * base + 1),
            (40, 25),
        ];
        let set = Pictures(
            sizes
                .iter()
                .enumerate()
                .map(|(i, &(w, h))| noise(w, h, i as u64))
                .collect(),
        );
        for (index, image) in set.0.iter().enumerate() {
            let mut pixels = vec![0; 10 * pipeline.output_len()];
            let offsets = prepare(
                &set,
                &pipeline,
                Mode::TenCrop,
                index,
                &mut loader::Scratch::default(),
                &mut pixels,
            )
            .unwrap();
            // The square the crops come from (the image itself where it is one).
            let square = pipeline.square(image.clone(), &mut resizer).unwrap();
            if (image.width, image.height) == (base, base) {
                assert_eq!(square, *image);
            }
            let at = |x: usize, y: usize| &square.pixels[(y * base + x) * 3..][..3];
            let crop = |x0: usize, y0: usize, mirror: bool| -> Vec<u8> {
                (0..input)
                    .flat_map(|y| {
                        (0..input).flat_map(move |x| {
                            let sx = if mirror { input - 1 - x } else { x };
                            at(x0 + sx, y0 + y).to_vec()
                        })
                    })
                    .collect()
            };
            let len = 3 * input * input;
            assert_eq!(pixels.len(), 10 * len, "{input}: image {index}");
            let crops: Vec<&[u8]> = pixels.chunks(len).collect();
            // The four corners and the centre, in some order, then the same mirrored.
            let places = [(0, 0), (far, 0), (0, far), (far, far), (far / 2, far / 2)];
            for (j, &(x0, y0)) in places.iter().enumerate() {
                let want = crop(x0, y0, false);
                let k = crops[..5]
                    .iter()
                    .position(|c| *c == want)
                    .unwrap_or_else(|| {
                        panic!("{input}: image {index} has no crop at ({x0}, {y0})")
                    });
                assert_eq!(
                    crops[5 + k],
                    crop(x0, y0, true),
                    "{input}: image {index}, crop {j} mirrored"
                );
            }
            // The crops' offset is minus the mean (no lighting at test time).
            let mean = Stats::imagenet().mean;
            assert_eq!(offsets, mean.map(|m| -m));
        }
    }
}
