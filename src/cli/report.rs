//! `summary`, `bench` and `plot`: what the net is, how fast it runs, and
//! what a run did.

use super::{DeviceArgs, batch_range, print_json};
use alexnet::bench::{self, BenchConfig};
use alexnet::bench_pytorch;
use alexnet::error::{Error, Result};
use alexnet::net::plan::Plan;
use alexnet::plot;
use alexnet::summary;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct SummaryArgs {
    /// A built-in preset (paper, small) or a preset TOML file.
    #[arg(long, default_value = "paper")]
    preset: String,
    /// Batch size for the memory estimate.
    #[arg(long, default_value_t = 128, value_parser = batch_range())]
    batch: u32,
}

impl SummaryArgs {
    pub fn run(self) -> Result<()> {
        print!(
            "{}",
            summary::render(&Plan::load(&self.preset)?, self.batch as usize)
        );
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct BenchArgs {
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
}

impl BenchArgs {
    pub fn run(self) -> Result<()> {
        let (placement, note) = self.device.placement()?;
        if self.against_pytorch && placement.is_gpu() {
            return Err(Error::Input(
                "--against-pytorch compares the CPU only: add --cpu".into(),
            ));
        }
        alexnet::limits::check_fits(&Plan::load(&self.preset)?, self.batch as usize, placement)?;
        if !self.json {
            println!("{note}");
        }
        let report = bench::run(&BenchConfig {
            placement,
            preset: self.preset,
            batch: self.batch as usize,
            steps: self.steps as usize,
            warmup: self.warmup as usize,
        })?;
        let against = self.against_pytorch.then(|| {
            let python = self.python.unwrap_or_else(bench_pytorch::default_python);
            bench_pytorch::compare(&report, &python, self.steps as usize, self.warmup as usize)
        });
        if self.json {
            let mut value = serde_json::to_value(&report).expect("a report serializes");
            if let Some(a) = &against {
                value["against_pytorch"] =
                    serde_json::to_value(a).expect("a comparison serializes");
            }
            print_json(&value);
        } else {
            print!("{}", bench::render(&report));
            if let Some(a) = &against {
                print!("{}", bench_pytorch::render(a));
            }
        }
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct PlotArgs {
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
}

impl PlotArgs {
    pub fn run(self) -> Result<()> {
        match (self.compare, self.run_dir) {
            (Some(runs), _) => compare_runs(&runs, &self.out),
            (None, Some(run_dir)) => plot_run(&run_dir, self.filters, self.every_epoch),
            (None, None) => Err(Error::Input(
                "plot: give a RUN_DIR, or --compare RUN_A RUN_B".into(),
            )),
        }
    }
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
