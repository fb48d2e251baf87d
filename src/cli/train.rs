//! `train`: the flags, merged with a config file or a resumed run's saved
//! config, then the training loop ([`alexnet::train`]).

use super::{DeviceArgs, batch_range, stop_flag};
use alexnet::device::cuda::CudaOptions;
use alexnet::error::{Error, Result};
use alexnet::limits::{MAX_IMAGES, MAX_WORKERS};
use alexnet::net::spec::InitScheme;
use alexnet::nodes::NodeSpec;
use alexnet::placement::Placement;
use alexnet::train::checkpoint;
use alexnet::train::config::TrainConfig;
use alexnet::train::schedule::{Schedule, ScheduleState};
use alexnet::train::{self, Start};
use std::path::PathBuf;

/// Training flags. Each overrides the same key of `--config` (or, with
/// `--resume`, of the run's saved config.toml), which overrides the defaults.
#[derive(clap::Args)]
pub struct TrainArgs {
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
    /// Replicas of the two-tower pair on the CPU, each training on its
    /// shard of every batch (--batch stays the whole batch) [default: 1];
    /// on GPUs, give --gpus an even count of four or more instead.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    replicas: Option<u32>,
    /// Hosts in a run over several, each running this command with its own
    /// --node-rank (torchrun's WORLD_SIZE, RANK, MASTER_ADDR and MASTER_PORT
    /// are read when these flags are absent) [default: 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    nodes: Option<u32>,
    /// This host's rank in a run of --nodes: 0 listens at --master and
    /// alone writes the run folder.
    #[arg(long, value_name = "RANK")]
    node_rank: Option<u32>,
    /// Where node 0 listens, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    master: Option<String>,
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
    /// fp16's first loss scale, a power of two [default: 65536].
    #[arg(long, value_name = "SCALE")]
    loss_scale: Option<f32>,
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
    /// Trains as the flags say, printing the device, the config and the end.
    pub fn run(self) -> Result<()> {
        let (config, saved) = self.config()?;
        let nodes =
            NodeSpec::resolve(self.nodes, self.node_rank, self.master.as_deref(), |name| {
                std::env::var(name).ok()
            })?;
        let (placements, note) = self.placements()?;
        println!("{note}");
        if let Some(n) = &nodes {
            let writes = if n.rank == 0 {
                format!(
                    "listening at {}, and the only one to write the run folder",
                    n.master
                )
            } else {
                format!("node 0 at {} writes the run folder", n.master)
            };
            println!("node {} of {}: {writes}", n.rank, n.count);
        }
        let start = match &self.resume {
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
        let mut out = std::io::stdout();
        let done = train::train(&config, &placements, nodes.as_ref(), start, &stop, &mut out)?;
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
        Ok(())
    }

    /// One placement per replica of the pair, and the line that says so:
    /// `--gpus` with four or more GPUs makes a replica of each two, and
    /// `--replicas R` makes R on the CPU.
    fn placements(&self) -> Result<(Vec<Placement>, String)> {
        let options = CudaOptions::at(self.device.precision());
        let gpu_replicas = match (&self.device.gpus, self.device.cpu) {
            (Some(list), false) => Placement::replicas_from_gpus(list, options)?,
            _ => None,
        };
        if let Some(placements) = gpu_replicas {
            if let Some(r) = self.replicas.filter(|&r| r as usize != placements.len()) {
                return Err(Error::Input(format!(
                    "--replicas {r} with --gpus {}: those GPUs make {} replicas",
                    self.device.gpus.as_deref().unwrap_or_default(),
                    placements.len()
                )));
            }
            if self.device.emulate {
                return Err(Error::Input(format!(
                    "--emulate runs both towers on one GPU (--gpus N); it does not apply to {} replicas on --gpus {}",
                    placements.len(),
                    self.device.gpus.as_deref().unwrap_or_default()
                )));
            }
            alexnet::device::cuda::nccl_lib::relaunch_with_unversioned_name()?;
            let list: Vec<String> = placements.iter().map(|p| p.to_string()).collect();
            let note = format!(
                "device: {} replicas of the pair: {}",
                placements.len(),
                list.join("; ")
            );
            return Ok((placements, note));
        }
        let (placement, note) = self.device.placement()?;
        let count = self.replicas.unwrap_or(1) as usize;
        if count == 1 {
            return Ok((vec![placement], note));
        }
        if !matches!(placement, Placement::Cpu { .. }) {
            return Err(Error::Input(format!(
                "--replicas {count}: replicas run on the CPU (with --cpu); on GPUs give --gpus {} GPUs",
                2 * count
            )));
        }
        Ok((
            vec![placement; count],
            format!("{note}; {count} replicas, each on its shard of every batch"),
        ))
    }

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
        if let Some(v) = self.loss_scale {
            c.loss_scale = v;
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

/// `text` indented by two spaces, for the printed config.
fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
