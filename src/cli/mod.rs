//! The command line: one module per command, each with its flags and its
//! `run`; this file holds the command list, the flags they share and the
//! dispatch.

mod data;
mod eval;
mod predict;
mod report;
mod train;

use alexnet::device::precision::Precision;
use alexnet::error::{Error, Result};
use alexnet::limits;
use alexnet::placement::Placement;
use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::flag;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// Train the two-tower AlexNet of Krizhevsky, Sutskever and Hinton (2012).
#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print each layer's shape, parameters, multiply-adds and memory.
    Summary(report::SummaryArgs),
    /// Time training and inference steps.
    Bench(report::BenchArgs),
    /// Show the CUDA driver, GPUs, and the cuDNN, cuBLAS, NCCL and NVRTC found.
    Info,
    /// Convert an image folder into shards of pre-resized images, read by mmap.
    Prepare(data::PrepareArgs),
    /// Time decoding and augmentation: images/s per core and with several workers.
    BenchData(data::BenchDataArgs),
    /// Train (on the built-in synthetic set); SIGINT or SIGTERM saves and stops.
    Train(Box<train::TrainArgs>),
    /// Draw a run's loss, accuracy, learning-rate and conv1 colour-saturation
    /// curves to PNG and SVG; or conv1's kernels; or two runs' training error.
    Plot(report::PlotArgs),
    /// Top-1 and top-5 of a checkpoint on its validation set.
    Eval(eval::EvalArgs),
    /// The five most probable classes of each input.
    Predict(predict::PredictArgs),
}

/// Runs the command `cli` names.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Summary(args) => args.run(),
        Command::Bench(args) => args.run(),
        Command::Info => {
            print!("{}", alexnet::device::cuda::probe::report());
            Ok(())
        }
        Command::Prepare(args) => args.run(),
        Command::BenchData(args) => args.run(),
        Command::Train(args) => args.run(),
        Command::Plot(args) => args.run(),
        Command::Eval(args) => args.run(),
        Command::Predict(args) => args.run(),
    }
}

/// Where the towers run.
#[derive(clap::Args)]
struct DeviceArgs {
    /// Run on the CPU even where a GPU is found.
    #[arg(long)]
    cpu: bool,
    /// GPUs to run on: `0,1` one tower each, `0` both towers on GPU 0 as
    /// one grouped network. Default: GPUs 0 and 1 where there are two or
    /// more, GPU 0 where there is one, else the CPU.
    #[arg(long, value_name = "LIST")]
    gpus: Option<String>,
    /// On one GPU, run the two towers as two (two streams meeting by device
    /// copies: the two-GPU dataflow, emulation mode) instead of one grouped
    /// network.
    #[arg(long)]
    emulate: bool,
    /// Number format: fp32 (exact), tf32 (TF32 tensor cores on a GPU, exact
    /// f32 on the CPU), bf16 or fp16 (16-bit storage, f32 master weights).
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    precision: Precision,
    /// The same as `--precision tf32`.
    #[arg(long, conflicts_with = "precision")]
    tf32: bool,
}

impl DeviceArgs {
    /// The precision these flags ask for (`--tf32` is `--precision tf32`).
    fn precision(&self) -> Precision {
        if self.tf32 {
            Precision::Tf32
        } else {
            self.precision
        }
    }

    /// The placement these flags choose, and the line that says so.
    fn placement(&self) -> Result<(Placement, String)> {
        let chosen = Placement::choose(
            self.cpu,
            self.gpus.as_deref(),
            self.emulate,
            self.precision(),
        )?;
        if matches!(chosen.0, Placement::TwoGpus { .. }) {
            alexnet::device::cuda::nccl_lib::relaunch_with_unversioned_name()?;
        }
        Ok(chosen)
    }
}

/// The largest batch any command takes.
fn batch_range() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=i64::from(limits::MAX_BATCH))
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

/// Prints a report as pretty JSON.
fn print_json(report: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(report).expect("a report serializes")
    );
}

/// clap's message without its blank lines, usage and help hint: the error
/// and what it lists (the missing arguments, the valid values).
pub fn usage_error(text: &str) -> String {
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
