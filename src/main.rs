//! The command line: `summary`, `bench`, `train`, `eval`, `predict`, `plot` and `info`.

use alexnet::bench::{self, BenchConfig};
use alexnet::bench_pytorch;
use alexnet::data::loader::default_workers;
use alexnet::data::sets;
use alexnet::data::shards::{self, Encoding};
use alexnet::device::cuda::{CudaOptions, probe};
use alexnet::error::{Error, Result};
use alexnet::infer::{Model, top_k};
use alexnet::limits::{self, MAX_IMAGES, MAX_SIDE, MAX_WORKERS};
use alexnet::net::init::InitScheme;
use alexnet::net::plan::Plan;
use alexnet::net::summary;
use alexnet::npy;
use alexnet::output::Output;
use alexnet::placement::Placement;
use alexnet::plot;
use alexnet::progress::Progress;
use alexnet::train::checkpoint;
use alexnet::train::config::TrainConfig;
use alexnet::train::schedule::{Schedule, ScheduleState};
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
        #[arg(long, default_value_t = 128, value_parser = batch_range())]
        batch: u32,
    },
    /// Time training and inference steps.
    Bench {
        #[arg(long, default_value = "paper")]
        preset: String,
        #[arg(long, default_value_t = 128, value_parser = batch_range())]
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
        /// Then time PyTorch on the twin of the net (CPU, fp32, one thread
        /// per tower) and print both and the ratio.
        #[arg(long)]
        against_pytorch: bool,
        /// The Python that `--against-pytorch` runs [default: $ALEXNET_PYTHON, else python3].
        #[arg(long, value_name = "PATH", requires = "against_pytorch")]
        python: Option<String>,
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
        #[arg(required_unless_present = "verify")]
        dst: Option<PathBuf>,
        /// `raw` RGB bytes (fastest, about 196 KB per image) or `jpeg` at quality 90 (about 26 KB).
        #[arg(long, value_enum, default_value = "jpeg")]
        encoding: Encoding,
        /// The side of the stored square (the paper's 256).
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SIDE)))]
        side: u32,
        /// Images per shard file.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        shard_images: u32,
        /// Check every shard's checksum instead (of the folder given as SRC).
        #[arg(long, conflicts_with = "dst")]
        verify: bool,
    },
    /// Time decoding and augmentation: images/s per core and with several workers.
    BenchData {
        /// A dataset: image folders, shards or Fashion-MNIST.
        #[arg(long, required_unless_present = "generate")]
        data: Option<PathBuf>,
        /// Training images to time.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        images: u32,
        /// Workers for the parallel figure [default: one per core].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_WORKERS)))]
        workers: Option<u32>,
        /// The net's input side.
        #[arg(long, default_value_t = 227, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SIDE)))]
        input: u32,
        /// Instead, write an ImageNet-like JPEG folder (500×375, quality 97) of `--images` images here.
        #[arg(long, value_name = "DIR")]
        generate: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Train (on the built-in synthetic set); SIGINT or SIGTERM saves and stops.
    Train(TrainArgs),
    /// Draw a run's loss, accuracy, learning-rate and conv1 colour-saturation
    /// curves to PNG and SVG; or conv1's kernels; or two runs' training error.
    Plot {
        /// The run folder (holding metrics.jsonl).
        #[arg(required_unless_present = "compare")]
        run_dir: Option<PathBuf>,
        /// Also draw conv1's kernels as the paper's Figure 3, one row block
        /// per tower, to RUN_DIR/filters.png and .svg.
        #[arg(long)]
        filters: bool,
        /// With --filters: one figure per saved checkpoint, in RUN_DIR/filters/.
        #[arg(long, requires = "filters")]
        every_epoch: bool,
        /// Instead, draw two runs' training error against epochs with the
        /// 25 % line (the paper's Figure 1) to --out.
        #[arg(long, num_args = 2, value_names = ["RUN_A", "RUN_B"], conflicts_with_all = ["run_dir", "filters"])]
        compare: Option<Vec<PathBuf>>,
        /// Where --compare draws: this path with .png and .svg.
        #[arg(long, default_value = "figure1", requires = "compare")]
        out: PathBuf,
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
        /// Validation images, evenly spaced over the set [default: all; on
        /// the synthetic set, as many as the run validated on].
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_IMAGES as u64))]
        images: Option<u64>,
        /// Average the ten crops of each image (corners, centre, and flips).
        #[arg(long)]
        ten_crop: bool,
        #[arg(long, default_value_t = 64, value_parser = batch_range())]
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
        #[arg(long, default_value_t = 64, value_parser = batch_range())]
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
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["config", "preset", "run_dir", "init"])]
    resume: Option<PathBuf>,
    /// A built-in preset (paper, small) or a preset TOML file [default: small].
    #[arg(long)]
    preset: Option<String>,
    /// Images per step [default: 64].
    #[arg(long, value_parser = batch_range())]
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
    /// Learning-rate schedule, with its default constants (set them in --config):
    /// plateau is the paper's divide-by-10 [default: cosine, to 0 over the run].
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
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_WORKERS)))]
    workers: Option<u32>,
    /// Stop at the first unreadable image, naming it, instead of skipping it
    /// (`--strict=false` undoes a saved `strict = true`).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    strict: Option<bool>,
    /// Size of the synthetic training set [default: 10000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_IMAGES as u64))]
    train_images: Option<u64>,
    /// Size of the synthetic validation set [default: 1000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_IMAGES as u64))]
    val_images: Option<u64>,
    /// Print a progress line every this many steps [default: 10].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    log_every: Option<u32>,
    /// No step lines and no progress: for logs (`--quiet=false` undoes a saved `quiet = true`).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    quiet: Option<bool>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ScheduleKind {
    Plateau,
    Step,
    Cosine,
    Constant,
}

impl TrainArgs {
    /// The defaults, then the config file (or the resumed run's), then the
    /// flags; with `--resume`, also the saved config.
    fn config(&self) -> Result<(TrainConfig, Option<TrainConfig>)> {
        let mut saved = None;
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
                saved = Some(c.clone());
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
                ScheduleKind::Plateau => Schedule::plateau(),
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
            c.train_images = v as usize;
        }
        if let Some(v) = self.val_images {
            c.val_images = v as usize;
        }
        if let Some(v) = self.log_every {
            c.log_every = v as usize;
        }
        if let Some(v) = self.quiet {
            c.quiet = v;
        }
        if let Some(v) = self.strict {
            c.strict = v;
        }
        if let Some(v) = &self.data {
            c.data = Some(v.clone());
        }
        if let Some(v) = self.workers {
            c.workers = v as usize;
        }
        c.validate()?;
        Ok((c, saved))
    }
}

/// Where the towers run.
#[derive(clap::Args)]
struct DeviceArgs {
    /// Run on the CPU even where a GPU is found.
    #[arg(long)]
    cpu: bool,
    /// GPUs to run on: `0,1` one tower each, `0` both towers on GPU 0
    /// (emulation mode). Default: GPUs 0 and 1 where there are two or more,
    /// GPU 0 where there is one, else the CPU.
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
            against_pytorch,
            python,
            device,
        } => {
            let (placement, note) = device.placement()?;
            if against_pytorch && placement != Placement::Cpu {
                return Err(Error::Input(
                    "--against-pytorch compares the CPU only: add --cpu".into(),
                ));
            }
            alexnet::limits::check_fits(&Plan::load(&preset)?, batch as usize, placement)?;
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
            let against = against_pytorch.then(|| {
                let python = python.unwrap_or_else(bench_pytorch::default_python);
                bench_pytorch::compare(&report, &python, steps as usize, warmup as usize)
            });
            if json {
                let mut value = serde_json::to_value(&report).expect("report serializes");
                if let Some(a) = &against {
                    value["against_pytorch"] = serde_json::to_value(a).expect("serializes");
                }
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).expect("report serializes")
                );
            } else {
                print!("{}", bench::render(&report));
                if let Some(a) = &against {
                    print!("{}", bench_pytorch::render(a));
                }
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
            let Some(dst) = dst.filter(|_| !verify) else {
                let checked = shards::verify(&src)?;
                println!(
                    "{}: {checked} shards, every checksum matches",
                    src.display()
                );
                return Ok(());
            };
            let source = sets::open(&src)?;
            let total = source.train.len() + source.val.len();
            let progress = std::sync::Mutex::new(Progress::new("prepare", "images", total, false));
            let workers = default_workers();
            let done = shards::prepare(
                &source,
                &dst,
                encoding,
                side as usize,
                shard_images as usize,
                workers,
                &|n| {
                    if let Ok(mut p) = progress.lock() {
                        p.set(n);
                    }
                },
            )?;
            if let Ok(p) = progress.lock() {
                p.finish();
            }
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
            let images = images as usize;
            if let Some(dir) = generate {
                alexnet::data::bench::generate(&dir, images)?;
                println!(
                    "{}: {images} training JPEGs of 500×375 at quality 97",
                    dir.display()
                );
                return Ok(());
            }
            let path = data.expect("clap requires --data without --generate");
            let workers = workers.map_or_else(default_workers, |w| w as usize);
            let report = alexnet::data::bench::run(&path, images, workers, input as usize)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("report serializes")
                );
            } else {
                print!("{}", alexnet::data::bench::render(&report));
            }
        }
        Command::Plot {
            run_dir,
            filters,
            every_epoch,
            compare,
            out,
        } => match (run_dir, compare) {
            (_, Some(runs)) => compare_runs(&runs, &out)?,
            (Some(run_dir), None) => plot_run(&run_dir, filters, every_epoch)?,
            (None, None) => unreachable!("clap requires RUN_DIR without --compare"),
        },
        Command::Train(args) => {
            let (config, saved) = args.config()?;
            let (placement, note) = args.device.placement()?;
            println!("{note}");
            let start = match &args.resume {
                Some(run) => {
                    let (_, mut ckpt) = checkpoint::load(&run.join("checkpoints"))?;
                    if let Some(saved) = &saved {
                        rebase_schedule(&mut ckpt.state.schedule, saved, &config);
                    }
                    Start::Resume(Box::new(ckpt))
                }
                None => Start::Fresh,
            };
            println!("config:\n{}", indent(&config.to_toml()));
            if let Some(saved) = &saved {
                let changes = config.changes_from(saved);
                if changes.is_empty() {
                    println!("resuming with the saved config unchanged");
                } else {
                    println!("changed from the saved config: {}", changes.join(", "));
                }
            }
            // The first SIGINT or SIGTERM asks for a stop after the current
            // step (or validation batch) and a checkpoint.
            let stop = stop_flag()?;
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
            let images = images.map(|n| n as usize);
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
                same_classes(&data, &dataset.classes, &model.state.classes)?;
                let workers = default_workers();
                let (eval, skipped) = model.evaluate_images(
                    dataset.val,
                    images,
                    ten_crop,
                    batch as usize,
                    workers,
                )?;
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
            let pending = logits
                .as_deref()
                .map(|p| Output::create(p, "--logits"))
                .transpose()?;
            let (placement, note) = device.placement()?;
            let model = Model::load(&checkpoint, placement, batch as usize)?;
            let classes = model.plan.classes();
            // Every input is read and checked before any work (and before the note).
            let read: Vec<Input> = inputs
                .iter()
                .map(|i| read_input(i, &model))
                .collect::<Result<_>>()?;
            if !json {
                eprintln!("{note}");
            }
            let stop = stop_flag()?;
            let total = read
                .iter()
                .map(|r| match r {
                    Input::Files(files) => files.len(),
                    Input::Array(_) => 0,
                })
                .sum();
            let mut progress = Progress::new("predict", "images", total, total == 0);
            let mut all_logits = Vec::new();
            // Each prediction: the input it came from, its row in an .npy
            // batch (none for an image file), and its logits.
            let mut rows: Vec<(String, Option<usize>, Vec<f32>)> = Vec::new();
            for (input, read) in inputs.iter().zip(&read) {
                match read {
                    Input::Files(files) => {
                        for chunk in files.chunks(batch as usize) {
                            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                                return Err(Error::Training(
                                    "stopped by a signal; nothing written".into(),
                                ));
                            }
                            let out = model.logits(&model.prepare_files(chunk)?, batch as usize)?;
                            for (file, row) in chunk.iter().zip(out.chunks_exact(classes)) {
                                rows.push((file.display().to_string(), None, row.to_vec()));
                            }
                            progress.add(chunk.len());
                        }
                    }
                    Input::Array(array) => {
                        let out = model.logits(&array.data, batch as usize)?;
                        for (i, row) in out.chunks_exact(classes).enumerate() {
                            rows.push((input.display().to_string(), Some(i), row.to_vec()));
                        }
                    }
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
            progress.finish();
            if let Some(pending) = pending {
                let rows = all_logits.len() / classes;
                pending.commit(&npy::encode(&npy::Array {
                    shape: vec![rows, classes],
                    data: all_logits,
                }))?;
            }
        }
    }
    Ok(())
}

/// One `predict` input, read and checked.
enum Input {
    /// Image files: one given, or those of a folder.
    Files(Vec<PathBuf>),
    /// An `.npy` batch, already preprocessed.
    Array(npy::Array),
}

/// Reads an `.npy` batch (refusing other shapes and values that are not
/// finite), or lists the image files `input` names.
fn read_input(input: &Path, model: &Model) -> Result<Input> {
    if input.extension().is_none_or(|e| e != "npy") {
        return image_files(input).map(Input::Files);
    }
    let (c, size) = (model.plan.spec.input.channels, model.plan.spec.input.size);
    let array = npy::read(input)?;
    let bad = |message: String| Error::File {
        path: input.to_path_buf(),
        message,
    };
    if array.shape.len() != 4 || array.shape[1..] != [c, size, size] {
        return Err(bad(format!(
            "shape {:?}; the net takes N×{c}×{size}×{size}",
            array.shape
        )));
    }
    if let Some(i) = array.data.iter().position(|v| !v.is_finite()) {
        return Err(bad(format!(
            "value {i} is {}; the net takes finite numbers only",
            array.data[i]
        )));
    }
    Ok(Input::Array(array))
}

/// `alexnet plot RUN_DIR [--filters [--every-epoch]]`: the curves, each
/// checkpoint's conv1 saturation, and the kernels.
fn plot_run(run_dir: &Path, filters: bool, every_epoch: bool) -> Result<()> {
    let curves = plot::Curves::read(run_dir)?;
    let [png, svg] = plot::plot(run_dir, &curves)?;
    println!("{}\n{}", png.display(), svg.display());
    let [one, two] = &curves.saturation;
    if !one.is_empty() {
        println!("conv1 colour saturation at each checkpoint (tower 1, tower 2):");
        for ((step, a), (_, b)) in one.iter().zip(two) {
            println!("  step {step:>7}  {a:.3}  {b:.3}");
        }
    }
    if filters {
        for drawn in plot::filters::draw_run(run_dir, every_epoch)? {
            let [a, b] = drawn.saturation;
            println!(
                "{}\n{}\n  conv1 at step {}: colour saturation tower 1 {a:.3}, tower 2 {b:.3}",
                drawn.files[0].display(),
                drawn.files[1].display(),
                drawn.step
            );
        }
    }
    Ok(())
}

/// `alexnet plot --compare RUN_A RUN_B`: Figure 1 and the epochs each run
/// took to 25 % training error.
fn compare_runs(runs: &[PathBuf], out: &Path) -> Result<()> {
    use plot::compare::{ErrorCurve, TARGET};
    let curves = [ErrorCurve::read(&runs[0])?, ErrorCurve::read(&runs[1])?];
    let [png, svg] = plot::compare::plot(out, &curves)?;
    println!("{}\n{}", png.display(), svg.display());
    let reached = curves.each_ref().map(ErrorCurve::epochs_to_target);
    for (run, at) in curves.iter().zip(reached) {
        match at {
            Some(x) => println!("{}: {TARGET} % training error at epoch {x:.3}", run.name),
            None => println!("{}: never reached {TARGET} % training error", run.name),
        }
    }
    if let [Some(a), Some(b)] = reached {
        println!(
            "{} took {:.2}× the epochs of {}",
            curves[1].name,
            b / a,
            curves[0].name
        );
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

/// The largest batch any command takes.
fn batch_range() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=i64::from(limits::MAX_BATCH))
}

/// With `--resume`, a learning rate or schedule that differs from the saved
/// config restarts the schedule from the new rate (keeping the best error
/// seen); otherwise the checkpoint's rate, after its drops, goes on.
fn rebase_schedule(state: &mut ScheduleState, saved: &TrainConfig, config: &TrainConfig) {
    if config.schedule != saved.schedule {
        *state = ScheduleState {
            best_error: state.best_error,
            ..ScheduleState::new(config.lr)
        };
    } else if config.lr != saved.lr {
        state.lr = config.lr;
        state.stale_epochs = 0;
    }
}

/// Refuses data whose classes are not the ones the checkpoint learned.
fn same_classes(data: &str, found: &[String], learned: &[String]) -> Result<()> {
    if found == learned {
        return Ok(());
    }
    let at = found.iter().zip(learned).position(|(a, b)| a != b);
    let which = match at {
        Some(i) => format!(
            "class {i} is {:?} there, {:?} in the checkpoint",
            found[i], learned[i]
        ),
        None => format!(
            "{} classes there, {} in the checkpoint",
            found.len(),
            learned.len()
        ),
    };
    Err(Error::Input(format!(
        "--data {data}: not the classes the checkpoint learned ({which})"
    )))
}

/// A flag set by the first SIGINT or SIGTERM; a second one ends the process at once.
fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        flag::register_conditional_shutdown(signal, 130, Arc::clone(&stop))
            .and_then(|_| flag::register(signal, Arc::clone(&stop)))
            .map_err(|e| Error::io("signal handler", e))?;
    }
    Ok(stop)
}

/// `text` indented by two spaces, for the printed config.
fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// clap's message without its blank lines, usage and help hint: the error
/// and what it lists (the missing arguments, the valid values).
fn usage_error(text: &str) -> String {
    let mut out = String::new();
    let mut in_usage = false;
    for line in text.lines() {
        in_usage = line.starts_with("Usage:") || (in_usage && line.starts_with(' '));
        if in_usage || line.trim().is_empty() || line.starts_with("For more information") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str("error: bad arguments\n");
    }
    out
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
            eprint!("{}", usage_error(&e.render().to_string()));
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
