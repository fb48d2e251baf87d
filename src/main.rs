//! The command line: `summary`, `bench`, `train`, `eval`, `predict`, `plot` and `info`.

use alexnet::bench::{self, BenchConfig};
use alexnet::data::loader::default_workers;
use alexnet::data::sets;
use alexnet::data::shards::{self, Encoding};
use alexnet::device::cuda::{CudaOptions, probe};
use alexnet::error::{Error, Result};
use alexnet::infer::{Model, top_k};
use alexnet::net::init::InitScheme;
use alexnet::net::plan::Plan;
use alexnet::net::summary;
use alexnet::npy;
use alexnet::placement::Placement;
use alexnet::plot;
use alexnet::train::checkpoint;
use alexnet::train::config::TrainConfig;
use alexnet::train::schedule::Schedule;
use alexnet::train::{self, Start};
use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::flag;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// Train the two-tower AlexNet of Krizhevsky, Sutskever and Hinton (2012).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print each layer's shape, parameters, multiply-adds and memory.
    Summary {
        /// A built-in preset (paper, small) or a preset TOML file.
        #[arg(long, default_value = "paper")]
        preset: String,
        /// Batch size for the memory estimate.
        #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
        batch: u32,
    },
    /// Time training and inference steps.
    Bench {
        #[arg(long, default_value = "paper")]
        preset: String,
        #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
        batch: u32,
        /// Timed steps of each kind (the median is reported).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
        steps: u32,
        /// Untimed steps first.
        #[arg(long, default_value_t = 1)]
        warmup: u32,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Show the CUDA driver, GPUs, and the cuDNN, cuBLAS, NCCL and NVRTC found.
    Info,
    /// Convert an image folder into shards of pre-resized images, read by mmap.
    Prepare {
        /// An ImageNet-style folder (train/<class>/*, val/...).
        src: PathBuf,
        /// The new shard folder.
        dst: PathBuf,
        /// `raw` RGB bytes (fastest, about 196 KB per image) or `jpeg` at quality 90 (about 26 KB).
        #[arg(long, value_enum, default_value = "jpeg")]
        encoding: Encoding,
        /// The side of the stored square (the paper's 256).
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..65535))]
        side: u32,
        /// Images per shard file.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
        shard_images: u32,
        /// Check every shard's checksum instead (of the folder given as SRC).
        #[arg(long)]
        verify: bool,
    },
    /// Time decoding and augmentation: images/s per core and with several workers.
    BenchData {
        /// A dataset: image folders, shards or Fashion-MNIST.
        #[arg(long, required_unless_present = "generate")]
        data: Option<PathBuf>,
        /// Training images to time.
        #[arg(long, default_value_t = 500)]
        images: usize,
        /// Workers for the parallel figure [default: one per core].
        #[arg(long)]
        workers: Option<usize>,
        /// The net's input side.
        #[arg(long, default_value_t = 227)]
        input: usize,
        /// Instead, write an ImageNet-like JPEG folder (500×375, quality 97) of `--images` images here.
        #[arg(long, value_name = "DIR")]
        generate: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Train (on the built-in synthetic set); SIGINT or SIGTERM saves and stops.
    Train(TrainArgs),
    /// Draw a run's loss, accuracy and learning-rate curves to PNG and SVG.
    Plot {
        /// The run folder (holding metrics.jsonl).
        run_dir: PathBuf,
    },
    /// Top-1 and top-5 of a checkpoint on its validation set.
    Eval {
        /// A checkpoint folder, or a run folder for its newest checkpoint.
        #[arg(long)]
        checkpoint: PathBuf,
        /// `synthetic` (the built-in set the run trained on), or a dataset
        /// folder whose validation images to use.
        #[arg(long, default_value = "synthetic")]
        data: String,
        /// Validation images [default: as many as the run validated on].
        #[arg(long)]
        images: Option<usize>,
        /// Average the ten crops of each image (corners, centre, and flips).
        #[arg(long)]
        ten_crop: bool,
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
        batch: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// The five most probable classes of each input.
    Predict {
        /// A checkpoint folder, or a run folder for its newest checkpoint.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Images (JPEG, PNG), folders of them, or `.npy` files each holding an
        /// already preprocessed float32 N×C×H×W batch.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// One JSON object per image.
        #[arg(long)]
        json: bool,
        /// Write the raw logits, images × classes, to this `.npy` file.
        #[arg(long, value_name = "FILE")]
        logits: Option<PathBuf>,
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
        batch: u32,
        #[command(flatten)]
        device: DeviceArgs,
    },
}

/// Training flags. Each overrides the same key of `--config` (or, with
/// `--resume`, of the run's saved config.toml), which overrides the defaults.
#[derive(clap::Args)]
struct TrainArgs {
    /// A TOML file of these settings (keys as the flags, with `_` for `-`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Continue the run in this folder from its newest checkpoint.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["config", "preset", "run_dir"])]
    resume: Option<PathBuf>,
    /// A built-in preset (paper, small) or a preset TOML file [default: small].
    #[arg(long)]
    preset: Option<String>,
    /// Images per step [default: 64].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    batch: Option<u32>,
    /// Steps to train in all (overrides --epochs).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    steps: Option<u32>,
    /// Passes over the training set [default: 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    epochs: Option<u32>,
    /// [default: 1]
    #[arg(long)]
    seed: Option<u64>,
    /// Where config.toml, metrics.jsonl and checkpoints/ go [default: runs/<preset>-<time>].
    #[arg(long)]
    run_dir: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
    /// Weight initialization [default: the preset's].
    #[arg(long, value_enum)]
    init: Option<InitScheme>,
    /// Learning rate [default: 0.01, paper §5].
    #[arg(long)]
    lr: Option<f32>,
    /// Momentum [default: 0.9, paper §5].
    #[arg(long)]
    momentum: Option<f32>,
    /// Weight decay, on weights and biases alike [default: 0.0005, paper §5].
    #[arg(long)]
    weight_decay: Option<f32>,
    /// Learning-rate schedule, with its default constants (set them in --config)
    /// [default: plateau, the paper's divide-by-10].
    #[arg(long, value_enum)]
    schedule: Option<ScheduleKind>,
    /// Save a checkpoint every this many steps, besides each epoch's end [default: 0, epochs only].
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Checkpoints kept besides the best [default: 3].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    keep: Option<u32>,
    /// The dataset: an ImageNet-style folder (train/<class>/*, val/<class>/*
    /// or a flat val/ with val_labels.txt) or Fashion-MNIST's folder
    /// [default: the built-in synthetic set].
    #[arg(long, value_name = "PATH")]
    data: Option<PathBuf>,
    /// Image-decoding threads [default: one per core].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    workers: Option<u32>,
    /// Stop at the first unreadable image, naming it, instead of skipping it.
    #[arg(long)]
    strict: bool,
    /// Size of the synthetic training set [default: 10000].
    #[arg(long)]
    train_images: Option<usize>,
    /// Size of the synthetic validation set [default: 1000].
    #[arg(long)]
    val_images: Option<usize>,
    /// Print a progress line every this many steps [default: 10].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    log_every: Option<u32>,
    /// Only validation results and the end: for logs.
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ScheduleKind {
    Plateau,
    Step,
    Cosine,
    Constant,
}

impl TrainArgs {
    /// The defaults, then the config file (or the resumed run's), then the flags.
    fn config(&self) -> Result<TrainConfig> {
        let mut c = match (&self.resume, &self.config) {
            (Some(run), _) => {
                let mut c =
                    TrainConfig::from_file(&run.join("config.toml")).map_err(|e| match e {
                        Error::Io { .. } => Error::Input(format!(
                            "--resume {}: no config.toml there; is it a run folder?",
                            run.display()
                        )),
                        e => e,
                    })?;
                c.run_dir = Some(run.clone());
                c
            }
            (None, Some(file)) => TrainConfig::from_file(file)?,
            (None, None) => TrainConfig::default(),
        };
        if let Some(v) = &self.preset {
            c.preset = v.clone();
        }
        if let Some(v) = self.batch {
            c.batch = v as usize;
        }
        if let Some(v) = self.steps {
            c.steps = Some(v as usize);
        }
        if let Some(v) = self.epochs {
            c.epochs = v as usize;
            if self.steps.is_none() {
                c.steps = None;
            }
        }
        if let Some(v) = self.seed {
            c.seed = v;
        }
        if let Some(v) = &self.run_dir {
            c.run_dir = Some(v.clone());
        }
        if let Some(v) = self.init {
            c.init = Some(v);
        }
        if let Some(v) = self.lr {
            c.lr = v;
        }
        if let Some(v) = self.momentum {
            c.momentum = v;
        }
        if let Some(v) = self.weight_decay {
            c.weight_decay = v;
        }
        if let Some(kind) = self.schedule {
            c.schedule = match kind {
                ScheduleKind::Plateau => Schedule::default(),
                ScheduleKind::Step => Schedule::Step {
                    every: 30,
                    gamma: 0.1,
                },
                ScheduleKind::Cosine => Schedule::Cosine { min_lr: 0.0 },
                ScheduleKind::Constant => Schedule::Constant,
            };
        }
        if let Some(v) = self.checkpoint_every {
            c.checkpoint_every = v;
        }
        if let Some(v) = self.keep {
            c.keep = v as usize;
        }
        if let Some(v) = self.train_images {
            c.train_images = v;
        }
        if let Some(v) = self.val_images {
            c.val_images = v;
        }
        if let Some(v) = self.log_every {
            c.log_every = v as usize;
        }
        c.quiet |= self.quiet;
        c.strict |= self.strict;
        if let Some(v) = &self.data {
            c.data = Some(v.clone());
        }
        if let Some(v) = self.workers {
            c.workers = v as usize;
        }
        c.validate()?;
        Ok(c)
    }
}

/// Where the towers run.
#[derive(clap::Args)]
struct DeviceArgs {
    /// Run on the CPU even where a GPU is found.
    #[arg(long)]
    cpu: bool,
    /// GPUs to run on: `0` puts both towers on GPU 0 (emulation mode).
    /// Default: GPU 0 where a GPU is found, else the CPU.
    #[arg(long, value_name = "LIST")]
    gpus: Option<String>,
    /// Let cuDNN and cuBLAS use TF32 tensor cores (default: exact f32).
    #[arg(long)]
    tf32: bool,
}

impl DeviceArgs {
    fn placement(&self) -> Result<(Placement, String)> {
        let chosen = Placement::choose(
            self.cpu,
            self.gpus.as_deref(),
            CudaOptions { tf32: self.tf32 },
        )?;
        if matches!(chosen.0, Placement::TwoGpus { .. }) {
            alexnet::link::nccl::relaunch_with_unversioned_name()?;
        }
        Ok(chosen)
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Summary { preset, batch } => {
            print!("{}", summary::render(&Plan::load(&preset)?, batch as usize));
        }
        Command::Bench {
            preset,
            batch,
            steps,
            warmup,
            json,
            device,
        } => {
            let (placement, note) = device.placement()?;
            if !json {
                println!("{note}");
            }
            let report = bench::run(&BenchConfig {
                placement,
                preset,
                batch: batch as usize,
                steps: steps as usize,
                warmup: warmup as usize,
            })?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("report serializes")
                );
            } else {
                print!("{}", bench::render(&report));
            }
        }
        Command::Info => print!("{}", probe::report()),
        Command::Prepare {
            src,
            dst,
            encoding,
            side,
            shard_images,
            verify,
        } => {
            if verify {
                let checked = shards::verify(&src)?;
                println!(
                    "{}: {checked} shards, every checksum matches",
                    src.display()
                );
                return Ok(());
            }
            let source = sets::open(&src)?;
            let total = source.train.len() + source.val.len();
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} images  {per_sec}  ETA {eta}",
                )
                .expect("a valid template"),
            );
            let workers = default_workers();
            let done = shards::prepare(
                &source,
                &dst,
                encoding,
                side as usize,
                shard_images as usize,
                workers,
                &|n| bar.set_position(n as u64),
            )?;
            bar.finish_and_clear();
            for (file, why) in &done.skipped {
                eprintln!("skipped {file}: {why}");
            }
            let dataset = sets::open(&dst)?;
            let pipeline = alexnet::data::augment::Pipeline::new(
                side as usize,
                alexnet::data::augment::Stats::imagenet(),
            );
            let pipeline = alexnet::data::augment::Pipeline {
                base: side as usize,
                ..pipeline
            };
            let (_, how) =
                alexnet::data::stats::load_or_compute(&dst, dataset.train.as_ref(), &pipeline)?;
            println!(
                "{}: {} images in {:.1} MB ({:.1} KB each), {} skipped; {how}",
                dst.display(),
                done.images,
                done.bytes as f64 / 1e6,
                done.bytes as f64 / 1e3 / done.images.max(1) as f64,
                done.skipped.len()
            );
        }
        Command::BenchData {
            data,
            images,
            workers,
            input,
            generate,
            json,
        } => {
            if let Some(dir) = generate {
                alexnet::data::bench::generate(&dir, images)?;
                println!(
                    "{}: {images} training JPEGs of 500×375 at quality 97",
                    dir.display()
                );
                return Ok(());
            }
            let path = data.expect("clap requires --data without --generate");
            let workers = workers.unwrap_or_else(default_workers);
            let report = alexnet::data::bench::run(&path, images, workers, input)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("report serializes")
                );
            } else {
                print!("{}", alexnet::data::bench::render(&report));
            }
        }
        Command::Plot { run_dir } => {
            let [png, svg] = plot::plot(&run_dir, &plot::Curves::read(&run_dir)?)?;
            println!("{}\n{}", png.display(), svg.display());
        }
        Command::Train(args) => {
            let config = args.config()?;
            let (placement, note) = args.device.placement()?;
            println!("{note}");
            let start = match &args.resume {
                Some(run) => {
                    let (_, ckpt) = checkpoint::load(&run.join("checkpoints"))?;
                    Start::Resume(Box::new(ckpt))
                }
                None => Start::Fresh,
            };
            println!("config:\n{}", indent(&config.to_toml()));
            // The first SIGINT or SIGTERM asks for a stop after the current
            // step and a checkpoint; a second one ends the process at once.
            let stop = Arc::new(AtomicBool::new(false));
            for signal in [SIGINT, SIGTERM] {
                flag::register_conditional_shutdown(signal, 130, Arc::clone(&stop))
                    .and_then(|_| flag::register(signal, Arc::clone(&stop)))
                    .map_err(|e| Error::io("signal handler", e))?;
            }
            let done = train::train(&config, placement, start, &stop, &mut std::io::stdout())?;
            if done.skipped_images > 0 {
                println!(
                    "skipped {} unreadable training images (each named above)",
                    done.skipped_images
                );
            }
            println!(
                "{}: {} steps, {:.1} images/s, waiting for data {:.1}% of the wall time, validation top-1 {:.1}%, top-5 {:.1}%; checkpoint {}",
                if done.stopped { "stopped" } else { "done" },
                done.steps,
                done.images_per_s,
                100.0 * done.data_wait,
                100.0 * done.val_top1,
                100.0 * done.val_top5,
                done.checkpoint
                    .as_deref()
                    .map_or_else(|| "none".into(), |p| p.display().to_string())
            );
        }
        Command::Eval {
            checkpoint,
            data,
            images,
            ten_crop,
            batch,
            json,
            device,
        } => {
            let (placement, note) = device.placement()?;
            if !json {
                println!("{note}");
            }
            let model = Model::load(&checkpoint, placement, batch as usize)?;
            let eval = if data == "synthetic" {
                if ten_crop {
                    return Err(Error::Input(
                        "--ten-crop: the synthetic set is drawn at the net's input size and has no crops".into(),
                    ));
                }
                model.evaluate_synthetic(images, batch as usize)?
            } else {
                let dataset = sets::open(Path::new(&data))?;
                let workers = default_workers();
                let (eval, skipped) =
                    model.evaluate_images(dataset.val, ten_crop, batch as usize, workers)?;
                for (file, why) in &skipped {
                    eprintln!("skipped {file}: {why}");
                }
                eval
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&eval).expect("evaluation serializes")
                );
            } else {
                println!(
                    "{}: step {}, {} validation images: loss {:.4}, top-1 {:.2}%, top-5 {:.2}%",
                    model.folder.display(),
                    model.state.step,
                    eval.images,
                    eval.loss,
                    100.0 * eval.top1,
                    100.0 * eval.top5
                );
            }
        }
        Command::Predict {
            checkpoint,
            inputs,
            json,
            logits,
            batch,
            device,
        } => {
            let (placement, note) = device.placement()?;
            if !json {
                eprintln!("{note}");
            }
            let model = Model::load(&checkpoint, placement, batch as usize)?;
            let classes = model.plan.classes();
            let (c, size) = (model.plan.spec.input.channels, model.plan.spec.input.size);
            let mut all_logits = Vec::new();
            // Each prediction: the input it came from, its row in an .npy
            // batch (none for an image file), and its logits.
            let mut rows: Vec<(String, Option<usize>, Vec<f32>)> = Vec::new();
            for input in &inputs {
                if input.extension().is_none_or(|e| e != "npy") {
                    let files = image_files(input)?;
                    for chunk in files.chunks(batch as usize) {
                        let out = model.logits(&model.prepare_files(chunk)?, batch as usize)?;
                        for (file, row) in chunk.iter().zip(out.chunks_exact(classes)) {
                            rows.push((file.display().to_string(), None, row.to_vec()));
                        }
                    }
                    continue;
                }
                let array = npy::read(input)?;
                if array.shape.len() != 4 || array.shape[1..] != [c, size, size] {
                    return Err(Error::File {
                        path: input.clone(),
                        message: format!(
                            "shape {:?}; the net takes N×{c}×{size}×{size}",
                            array.shape
                        ),
                    });
                }
                let out = model.logits(&array.data, batch as usize)?;
                for (i, row) in out.chunks_exact(classes).enumerate() {
                    rows.push((input.display().to_string(), Some(i), row.to_vec()));
                }
            }
            for (input, index, row) in &rows {
                // Outputs beyond the data's classes were never trained toward: left out.
                let named = model.state.classes.len().clamp(1, classes);
                let top: Vec<(String, f64)> = top_k(&row[..named], 5)
                    .into_iter()
                    .map(|(k, p)| {
                        let name = model
                            .state
                            .classes
                            .get(k)
                            .cloned()
                            .unwrap_or_else(|| k.to_string());
                        (name, p)
                    })
                    .collect();
                if json {
                    let line = serde_json::json!({
                        "input": input,
                        "index": index,
                        "top5": top.iter().map(|(n, p)| serde_json::json!({"class": n, "p": p})).collect::<Vec<_>>(),
                    });
                    println!("{line}");
                } else {
                    let text: Vec<String> = top
                        .iter()
                        .map(|(n, p)| format!("{n} {:.1}%", 100.0 * p))
                        .collect();
                    let at = index.map_or_else(String::new, |i| format!("[{i}]"));
                    println!("{input}{at}: {}", text.join(", "));
                }
                all_logits.extend_from_slice(row);
            }
            if let Some(path) = logits {
                let rows = all_logits.len() / classes;
                npy::write(
                    &path,
                    &npy::Array {
                        shape: vec![rows, classes],
                        data: all_logits,
                    },
                )?;
            }
        }
    }
    Ok(())
}

/// An image file, or the image files in a folder (sorted).
fn image_files(input: &Path) -> Result<Vec<PathBuf>> {
    if input.is_dir() {
        let files: Vec<PathBuf> = sets::sorted_entries(input)?
            .into_iter()
            .filter(|p| sets::is_image(p))
            .collect();
        if files.is_empty() {
            return Err(Error::Input(format!(
                "{}: no .jpg, .jpeg or .png files",
                input.display()
            )));
        }
        Ok(files)
    } else if input.is_file() {
        Ok(vec![input.to_path_buf()])
    } else {
        Err(Error::Input(format!(
            "{}: no such file or folder",
            input.display()
        )))
    }
}

/// `text` indented by two spaces, for the printed config.
fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`alexnet summary | head`) as Unix tools do,
    // rather than panicking in println!.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // clap's message, without its blank line and usage hint: one line.
            let text = e.render().to_string();
            eprintln!("{}", text.lines().next().unwrap_or("error: bad arguments"));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(if e.is_input() { 2 } else { 1 })
        }
    }
}
