//! `alexnet bench --against-pytorch`: times PyTorch on the single-device twin
//! of the same net right after alexnet's own steps (`bench/pytorch_twin.py`,
//! built into the binary and run by the Python the user names), with as many
//! threads as alexnet has towers, and reports both and their ratio.

use crate::bench::BenchReport;
use crate::net::plan::TOWERS;
use serde::Serialize;
use std::process::Command;

/// The timing script, run with `python -c`.
const TWIN_SCRIPT: &str = include_str!("../bench/pytorch_twin.py");

/// The Python `--against-pytorch` runs when `--python` is not given: the
/// `ALEXNET_PYTHON` environment variable, else `python3`.
pub fn default_python() -> String {
    std::env::var("ALEXNET_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// PyTorch's figures for the twin and alexnet's over them.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub torch_version: String,
    pub threads: usize,
    pub train_images_per_s: f64,
    pub inference_images_per_s: f64,
    /// alexnet's images/s over PyTorch's.
    pub train_ratio: f64,
    pub inference_ratio: f64,
}

/// What `--against-pytorch` found: a comparison, or in one line why there is none.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Against {
    Pytorch(Comparison),
    Unavailable(String),
}

/// Runs the twin with the same batch and step counts as `report` under
/// `python`. Any failure (no such Python, no PyTorch, a preset the twin is
/// not) comes back as [`Against::Unavailable`]: alexnet's figures stand alone.
pub fn compare(report: &BenchReport, python: &str, steps: usize, warmup: usize) -> Against {
    match run_twin(report, python, steps, warmup) {
        Ok(c) => Against::Pytorch(c),
        Err(why) => Against::Unavailable(why),
    }
}

fn run_twin(
    report: &BenchReport,
    python: &str,
    steps: usize,
    warmup: usize,
) -> Result<Comparison, String> {
    if report.preset != "paper" {
        return Err(format!(
            "no PyTorch comparison: the PyTorch twin is the paper's net, not preset {}",
            report.preset
        ));
    }
    let threads = TOWERS;
    let out = Command::new(python)
        .arg("-c")
        .arg(TWIN_SCRIPT)
        .args(["--device", "cpu", "--json"])
        .args(["--threads", &threads.to_string()])
        .args(["--batch", &report.batch.to_string()])
        .args(["--steps", &steps.to_string()])
        .args(["--warmup", &warmup.to_string()])
        .output()
        .map_err(|e| format!("no PyTorch comparison: cannot run {python}: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if stderr.contains("No module named 'torch'") {
            return Err(format!(
                "no PyTorch comparison: PyTorch is not importable by {python} \
                 (set --python or ALEXNET_PYTHON to a Python that has it)"
            ));
        }
        let last = stderr.lines().last().unwrap_or("no message");
        return Err(format!(
            "no PyTorch comparison: {python} failed ({}): {last}",
            out.status
        ));
    }
    parse(report, &String::from_utf8_lossy(&out.stdout), threads)
        .ok_or_else(|| format!("no PyTorch comparison: {python} printed no twin report"))
}

/// Reads the script's JSON report.
fn parse(report: &BenchReport, stdout: &str, threads: usize) -> Option<Comparison> {
    let json: serde_json::Value = serde_json::from_str(stdout).ok()?;
    let rate = |kind: &str| json[kind]["images_per_s"].as_f64().filter(|r| *r > 0.0);
    let (train, inference) = (rate("train")?, rate("inference")?);
    Some(Comparison {
        torch_version: json["torch"].as_str().unwrap_or("?").to_string(),
        threads,
        train_images_per_s: train,
        inference_images_per_s: inference,
        train_ratio: report.train.images_per_s / train,
        inference_ratio: report.inference.images_per_s / inference,
    })
}

/// The lines `bench` prints under its own figures.
pub fn render(against: &Against) -> String {
    match against {
        Against::Pytorch(c) => format!(
            "pytorch    {:8.1} images/s training, {:.1} inference (PyTorch {} twin, fp32, {} threads)\n\
             ratio      {:8.2}× training, {:.2}× inference (alexnet over PyTorch)\n",
            c.train_images_per_s,
            c.inference_images_per_s,
            c.torch_version,
            c.threads,
            c.train_ratio,
            c.inference_ratio,
        ),
        Against::Unavailable(why) => format!("{why}\n"),
    }
}
