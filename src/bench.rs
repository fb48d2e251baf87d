//! `alexnet bench`: images/s of a full training step (forward, backward,
//! update) and of inference, as the median over timed steps after warm-up.

use crate::data::synthetic::{Split, Synthetic};
use crate::device::SgdStep;
use crate::error::Result;
use crate::net::init::{InitScheme, init_twin};
use crate::net::plan::Plan;
use crate::towers::{Batch, TowerPair};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub preset: String,
    pub batch: usize,
    /// Timed steps of each kind.
    pub steps: usize,
    /// Untimed steps before them.
    pub warmup: usize,
}

/// Times of one kind of step.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub step_seconds: Vec<f64>,
    pub median_seconds: f64,
    pub images_per_s: f64,
}

impl Timing {
    fn new(step_seconds: Vec<f64>, batch: usize) -> Self {
        let mut sorted = step_seconds.clone();
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 {
            sorted[mid]
        } else {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        };
        Timing {
            step_seconds,
            median_seconds: median,
            images_per_s: batch as f64 / median,
        }
    }
}

/// A benchmark's result, as printed and as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub preset: String,
    pub batch: usize,
    pub device: String,
    pub train: Timing,
    pub inference: Timing,
    /// Forward multiply-adds per image of the whole net.
    pub macs_per_image: usize,
}

/// Runs the benchmark on the CPU (one thread per tower).
pub fn run(config: &BenchConfig) -> Result<BenchReport> {
    let plan = Arc::new(Plan::load(&config.preset)?);
    let init = init_twin(&plan, InitScheme::Caffe, 1);
    let towers = TowerPair::cpu::<f32>(Arc::clone(&plan), config.batch, &init)?;
    let (channels, size) = (plan.spec.input.channels, plan.spec.input.size);
    let set = Synthetic::new(1, Split::Train, config.batch, channels, size);
    let (images, labels) = set.batch(&(0..config.batch).collect::<Vec<_>>());
    let mut labels = labels;
    labels.iter_mut().for_each(|l| *l %= plan.classes() as u32);
    let batch = Batch {
        images: Arc::new(images),
        labels: Arc::new(labels),
    };
    let sgd = SgdStep {
        lr: 1e-4,
        momentum: 0.9,
        weight_decay: 5e-4,
    };
    let time = |f: &mut dyn FnMut(u64) -> Result<()>| -> Result<Vec<f64>> {
        for i in 0..config.warmup {
            f(i as u64)?;
        }
        (0..config.steps)
            .map(|i| {
                let start = Instant::now();
                f((config.warmup + i) as u64)?;
                Ok(start.elapsed().as_secs_f64())
            })
            .collect()
    };
    let train = time(&mut |key| towers.train_step(&batch, key, Some(sgd)).map(drop))?;
    let inference = time(&mut |_| towers.evaluate(&batch).map(drop))?;
    Ok(BenchReport {
        preset: config.preset.clone(),
        batch: config.batch,
        device: "cpu (one thread per tower)".into(),
        train: Timing::new(train, config.batch),
        inference: Timing::new(inference, config.batch),
        macs_per_image: plan.macs(),
    })
}

/// The human-readable report.
pub fn render(r: &BenchReport) -> String {
    let gflops =
        |t: &Timing, passes: f64| passes * 2.0 * r.macs_per_image as f64 * t.images_per_s / 1e9;
    let steps = r.train.step_seconds.len();
    format!(
        "bench: preset {}, batch {}, {}; median of {steps} steps after warm-up\n\
         training   {:8.1} images/s  ({:.3} s/step, ≈{:.0} GFLOP/s)\n\
         inference  {:8.1} images/s  ({:.3} s/batch, ≈{:.0} GFLOP/s)\n",
        r.preset,
        r.batch,
        r.device,
        r.train.images_per_s,
        r.train.median_seconds,
        gflops(&r.train, 3.0),
        r.inference.images_per_s,
        r.inference.median_seconds,
        gflops(&r.inference, 1.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(Timing::new(vec![3.0, 1.0, 2.0], 4).median_seconds, 2.0);
        let t = Timing::new(vec![4.0, 1.0, 2.0, 3.0], 10);
        assert_eq!(t.median_seconds, 2.5);
        assert_eq!(t.images_per_s, 4.0);
    }
}
