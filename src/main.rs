//! The command line: `summary`, `bench`, `train` and `info`.

use alexnet::bench::{self, BenchConfig};
use alexnet::device::cuda::{CudaOptions, probe};
use alexnet::error::{Error, Result};
use alexnet::net::init::InitScheme;
use alexnet::net::plan::Plan;
use alexnet::net::summary;
use alexnet::placement::Placement;
use alexnet::train::{self, TrainConfig};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

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
    /// Train on the built-in synthetic set.
    Train(TrainArgs),
}

#[derive(clap::Args)]
struct TrainArgs {
    #[arg(long, default_value = "small")]
    preset: String,
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Steps to train (overrides --epochs).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    steps: Option<u32>,
    /// Passes over the training set.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    epochs: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where config.json and metrics.jsonl go (default runs/<preset>-<time>).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
    /// Weight initialization (default: the preset's `init`).
    #[arg(long, value_enum)]
    init: Option<InitScheme>,
    /// Learning rate (paper §5: 0.01).
    #[arg(long, default_value_t = 0.01)]
    lr: f32,
    /// Momentum (paper §5: 0.9).
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    /// Weight decay, on weights and biases alike (paper §5: 0.0005).
    #[arg(long, default_value_t = 0.0005)]
    weight_decay: f32,
    /// Size of the synthetic training set.
    #[arg(long, default_value_t = 10_000)]
    train_images: usize,
    /// Size of the synthetic validation set.
    #[arg(long, default_value_t = 1_000)]
    val_images: usize,
    /// Print progress every this many steps.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    log_every: u32,
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
        Command::Train(args) => {
            let (placement, note) = args.device.placement()?;
            println!("{note}");
            let run_dir = args.run_dir.unwrap_or_else(|| {
                let stem = PathBuf::from(&args.preset)
                    .file_stem()
                    .map_or_else(|| "run".into(), |s| s.to_string_lossy().into_owned());
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                PathBuf::from("runs").join(format!("{stem}-{secs}"))
            });
            let plan = Plan::load(&args.preset)?;
            let config = TrainConfig {
                preset: args.preset.clone(),
                batch: args.batch as usize,
                steps: args.steps.map(|s| s as usize),
                epochs: args.epochs as usize,
                seed: args.seed,
                run_dir,
                init: args.init.unwrap_or(plan.spec.init),
                lr: args.lr,
                momentum: args.momentum,
                weight_decay: args.weight_decay,
                train_images: args.train_images,
                val_images: args.val_images,
                log_every: args.log_every as usize,
                placement,
            };
            if !(config.lr > 0.0 && config.lr.is_finite()) {
                return Err(Error::Input(format!(
                    "--lr {}: must be a positive number",
                    config.lr
                )));
            }
            println!(
                "config: {}",
                serde_json::to_string(&config).expect("config serializes")
            );
            let done = train::train(Arc::new(plan), &config, &mut std::io::stdout())?;
            println!(
                "done: {} steps, {:.1} images/s, validation top-1 {:.1}%, top-5 {:.1}%; run in {}",
                done.steps,
                done.images_per_s,
                100.0 * done.val_top1,
                100.0 * done.val_top5,
                config.run_dir.display()
            );
        }
    }
    Ok(())
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
