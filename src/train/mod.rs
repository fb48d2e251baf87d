//! The training loop: batches in, momentum-SGD steps on both towers,
//! progress on stdout, metrics as JSON lines in the run directory.

use crate::data::synthetic::{Split, Synthetic};
use crate::device::{LossStats, SgdStep};
use crate::error::{Error, Result};
use crate::net::init::{InitScheme, init_twin};
use crate::net::plan::Plan;
use crate::placement::Placement;
use crate::rng::{Rng, derive};
use crate::towers::{Batch, TowerPair};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Everything a training run needs; printed at start and saved as `config.json`.
#[derive(Debug, Clone, Serialize)]
pub struct TrainConfig {
    pub preset: String,
    pub batch: usize,
    /// Steps to run; when `None`, `epochs` passes over the training set.
    pub steps: Option<usize>,
    pub epochs: usize,
    pub seed: u64,
    pub run_dir: PathBuf,
    pub init: InitScheme,
    /// Paper §5: 0.01 at the start.
    pub lr: f32,
    /// Paper §5: 0.9.
    pub momentum: f32,
    /// Paper §5: 0.0005, applied to weights and biases alike.
    pub weight_decay: f32,
    /// Synthetic training and validation set sizes.
    pub train_images: usize,
    pub val_images: usize,
    /// Print a progress line every this many steps.
    pub log_every: usize,
    pub placement: Placement,
}

/// What a finished run reports.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RunSummary {
    pub steps: usize,
    pub final_loss: f64,
    pub val_top1: f64,
    pub val_top5: f64,
    pub images_per_s: f64,
}

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Metric {
    Train {
        step: usize,
        epoch: usize,
        loss: f64,
        top1: f64,
        images_per_s: f64,
        lr: f32,
    },
    Val {
        step: usize,
        epoch: usize,
        loss: f64,
        top1: f64,
        top5: f64,
    },
}

/// Appends metrics to `metrics.jsonl`.
struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    fn create(dir: &std::path::Path) -> Result<Self> {
        let path = dir.join("metrics.jsonl");
        let file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        Ok(MetricsLog { path, file })
    }

    fn write(&mut self, metric: &Metric) -> Result<()> {
        let line = serde_json::to_string(metric).expect("metrics serialize");
        writeln!(self.file, "{line}").map_err(|e| Error::io(&self.path, e))
    }
}

/// Sums of [`LossStats`] over several batches.
#[derive(Default)]
struct Running {
    stats: LossStats,
    images: usize,
}

impl Running {
    fn add(&mut self, s: LossStats, images: usize) {
        self.stats.loss_sum += s.loss_sum;
        self.stats.top1 += s.top1;
        self.stats.top5 += s.top5;
        self.images += images;
    }

    fn loss(&self) -> f64 {
        self.stats.loss_sum / self.images.max(1) as f64
    }

    fn top1(&self) -> f64 {
        self.stats.top1 as f64 / self.images.max(1) as f64
    }

    fn top5(&self) -> f64 {
        self.stats.top5 as f64 / self.images.max(1) as f64
    }
}

/// Prepares the run directory: refuses one that already holds a run.
fn create_run_dir(dir: &std::path::Path) -> Result<()> {
    if dir.join("metrics.jsonl").exists() {
        return Err(Error::Input(format!(
            "--run-dir {}: already holds a run; choose another directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// Trains on the built-in synthetic set on the CPU.
pub fn train(plan: Arc<Plan>, config: &TrainConfig, out: &mut dyn Write) -> Result<RunSummary> {
    if plan.classes() < crate::data::synthetic::CLASSES.len() {
        return Err(Error::Input(format!(
            "--preset {}: {} classes, the synthetic set needs at least {}",
            config.preset,
            plan.classes(),
            crate::data::synthetic::CLASSES.len()
        )));
    }
    if config.train_images < config.batch {
        return Err(Error::Input(format!(
            "--train-images {} is smaller than --batch {}",
            config.train_images, config.batch
        )));
    }
    create_run_dir(&config.run_dir)?;
    let config_path = config.run_dir.join("config.json");
    let json = serde_json::to_string_pretty(config).expect("config serializes");
    std::fs::write(&config_path, json + "\n").map_err(|e| Error::io(&config_path, e))?;
    let mut log = MetricsLog::create(&config.run_dir)?;

    let (channels, size) = (plan.spec.input.channels, plan.spec.input.size);
    let train_set = Synthetic::new(
        config.seed,
        Split::Train,
        config.train_images,
        channels,
        size,
    );
    let val_set = Synthetic::new(
        config.seed,
        Split::Validation,
        config.val_images,
        channels,
        size,
    );
    let towers = TowerPair::new(
        config.placement,
        Arc::clone(&plan),
        config.batch,
        &init_twin(&plan, config.init, config.seed),
    )?;
    if config.placement.is_gpu() {
        let _ = writeln!(out, "{}", towers.link_note());
    }

    let steps_per_epoch = config.train_images / config.batch;
    let total_steps = config.steps.unwrap_or(config.epochs * steps_per_epoch);
    let sgd = SgdStep {
        lr: config.lr,
        momentum: config.momentum,
        weight_decay: config.weight_decay,
    };
    let mut order: Vec<usize> = Vec::new();
    let mut window = Running::default();
    let mut window_seconds = 0.0;
    let run_start = Instant::now();
    let mut summary = RunSummary {
        steps: total_steps,
        final_loss: f64::NAN,
        val_top1: 0.0,
        val_top5: 0.0,
        images_per_s: 0.0,
    };
    let say = |out: &mut dyn Write, line: String| {
        let _ = writeln!(out, "{line}");
    };
    for step in 0..total_steps {
        let (epoch, within) = (step / steps_per_epoch, step % steps_per_epoch);
        if within == 0 {
            order = (0..config.train_images).collect();
            Rng::new(derive(config.seed, 1_000_000 + epoch as u64)).shuffle(&mut order);
        }
        let step_start = Instant::now();
        let (images, labels) = train_set.batch(&order[within * config.batch..][..config.batch]);
        let batch = Batch {
            images: Arc::new(images),
            labels: Arc::new(labels),
        };
        let stats = towers.train_step(&batch, derive(config.seed, step as u64), Some(sgd))?;
        if !stats.loss_sum.is_finite() {
            return Err(Error::Training(format!(
                "the loss is {} at step {}; lower --lr or try --init caffe",
                stats.loss_sum,
                step + 1
            )));
        }
        window.add(stats, config.batch);
        window_seconds += step_start.elapsed().as_secs_f64();
        let last = step + 1 == total_steps;
        if (step + 1) % config.log_every == 0 || last {
            let images_per_s = window.images as f64 / window_seconds;
            say(
                out,
                format!(
                    "step {:>5}/{total_steps}  epoch {:>3}  loss {:.4}  top-1 {:5.1}%  {:7.1} img/s",
                    step + 1,
                    epoch + 1,
                    window.loss(),
                    100.0 * window.top1(),
                    images_per_s
                ),
            );
            log.write(&Metric::Train {
                step: step + 1,
                epoch: epoch + 1,
                loss: window.loss(),
                top1: window.top1(),
                images_per_s,
                lr: config.lr,
            })?;
            summary.final_loss = window.loss();
            window = Running::default();
            window_seconds = 0.0;
        }
        if within + 1 == steps_per_epoch || last {
            let val = evaluate(&towers, &val_set, config.batch)?;
            say(
                out,
                format!(
                    "validation after epoch {}: loss {:.4}  top-1 {:.1}%  top-5 {:.1}%  ({} images)",
                    epoch + 1,
                    val.loss(),
                    100.0 * val.top1(),
                    100.0 * val.top5(),
                    val.images
                ),
            );
            log.write(&Metric::Val {
                step: step + 1,
                epoch: epoch + 1,
                loss: val.loss(),
                top1: val.top1(),
                top5: val.top5(),
            })?;
            summary.val_top1 = val.top1();
            summary.val_top5 = val.top5();
        }
    }
    let images = (total_steps * config.batch) as f64;
    summary.images_per_s = images / run_start.elapsed().as_secs_f64();
    Ok(summary)
}

/// Top-1/top-5 over a whole set, in batches of at most `batch`.
fn evaluate(towers: &TowerPair, set: &Synthetic, batch: usize) -> Result<Running> {
    let mut total = Running::default();
    let indices: Vec<usize> = (0..set.len).collect();
    for chunk in indices.chunks(batch) {
        let (images, labels) = set.batch(chunk);
        let stats = towers.evaluate(&Batch {
            images: Arc::new(images),
            labels: Arc::new(labels),
        })?;
        total.add(stats, chunk.len());
    }
    Ok(total)
}
