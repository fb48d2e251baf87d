//! The training loop (paper §5): momentum SGD over shuffled epochs,
//! validation after each, the learning-rate schedule, checkpoints, resume,
//! and a clean stop on SIGINT or SIGTERM.

pub mod checkpoint;
pub mod config;
mod losses;
pub mod metrics;
pub mod schedule;

use crate::data::TrainingData;
use crate::data::augment::{Pipeline, Stats};
use crate::data::stream::Stream;
use crate::data::synthetic::{Split, Synthetic};
use crate::data::{sets, stats};
use crate::device::{LossStats, SgdStep};
use crate::error::{Error, Result};
use crate::net::init::init_twin;
use crate::net::params::{TwinTensor, twin_shapes};
use crate::net::plan::{Op, Plan};
use crate::placement::Placement;
use crate::plot::filters::Filters;
use crate::progress::Progress;
use crate::rng::{Rng, derive};
use crate::tensorboard::{EventWriter, Value};
use crate::tower::ParamSet;
use crate::towers::{Batch, TowerPair};
use checkpoint::{Checkpoint, FORMAT, RunState};
use config::TrainConfig;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use metrics::{Metric, MetricsLog};
use schedule::ScheduleState;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Steps done in all, counting those before a resume.
    pub steps: usize,
    pub final_loss: f64,
    pub val_top1: f64,
    pub val_top5: f64,
    /// Over this process's steps.
    pub images_per_s: f64,
    /// The newest checkpoint.
    pub checkpoint: Option<PathBuf>,
    /// Whether a signal stopped the run before its end.
    pub stopped: bool,
    /// Training images left out because they could not be read.
    pub skipped_images: usize,
    /// The fraction of this process's wall time spent waiting for batches.
    pub data_wait: f64,
}

/// Sums of [`LossStats`] over several batches.
#[derive(Debug, Default)]
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

/// Refuses a run folder that is a file or already holds a run (a
/// checkpoint, or metrics of at least one step).
fn check_run_dir(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(Error::Input(format!(
            "--run-dir {}: is a file, not a folder",
            dir.display()
        )));
    }
    let has_checkpoint = !checkpoint::list(&dir.join("checkpoints"))?.is_empty();
    let has_metrics = std::fs::metadata(dir.join("metrics.jsonl")).is_ok_and(|m| m.len() > 0);
    if has_checkpoint || has_metrics {
        return Err(Error::Input(format!(
            "--run-dir {}: already holds a run; choose another folder, or --resume it",
            dir.display()
        )));
    }
    Ok(())
}

/// The run folder a config names, or `runs/<preset>-<unix time>`.
pub fn run_dir_for(config: &TrainConfig) -> PathBuf {
    config.run_dir.clone().unwrap_or_else(|| {
        let stem = Path::new(&config.preset)
            .file_stem()
            .map_or_else(|| "run".into(), |s| s.to_string_lossy().into_owned());
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        PathBuf::from("runs").join(format!("{stem}-{secs}"))
    })
}

/// Where a run starts: fresh, or from a checkpoint.
pub enum Start {
    Fresh,
    Resume(Box<Checkpoint>),
}

/// Runs `config` where `placement` says, writing progress to `out`, until
/// its last step or until `stop` is set (then it saves and returns).
///
/// Steps are queued on the towers, which run ahead of the host by a few
/// steps; their loss statistics are read at each progress line and before
/// each checkpoint. A NaN or infinite loss is therefore found at the next
/// such read (at most `log_every` steps, or the steps to the next
/// checkpoint, after it) and reported with the step it came from; no
/// checkpoint is written after it.
pub fn train(
    config: &TrainConfig,
    placement: Placement,
    start: Start,
    stop: &AtomicBool,
    out: &mut dyn Write,
) -> Result<RunSummary> {
    config.validate()?;
    // Everything is checked and allocated before the run folder is made,
    // so a failed start leaves nothing behind.
    let run_dir = run_dir_for(config);
    let (plan, resume) = match start {
        Start::Fresh => {
            check_run_dir(&run_dir)?;
            (Plan::load(&config.preset)?, None)
        }
        Start::Resume(ckpt) => (Plan::new(ckpt.state.spec.clone())?, Some(*ckpt)),
    };
    let plan = Arc::new(plan);
    let first_step = resume.as_ref().map_or(0, |c| c.state.step);
    let checkpoints = run_dir.join("checkpoints");

    let data = training_data(config, &plan, out)?;
    if data.train_len() < config.batch {
        return Err(Error::Input(format!(
            "--batch {}: the training set has only {} images",
            config.batch,
            data.train_len()
        )));
    }
    crate::limits::check_fits(&plan, config.batch, placement)?;
    let shapes = twin_shapes(&plan);
    let (weights, mut schedule_state, mut last_checkpoint) = match &resume {
        Some(c) => {
            let folder = checkpoints.join(checkpoint::folder_name(c.state.step));
            let weights = checkpoint::in_order(c.weights.clone(), &shapes, &folder)?;
            (weights, c.state.schedule, Some(folder))
        }
        None => {
            let init = config.init.unwrap_or(plan.spec.init);
            (
                init_twin(&plan, init, config.seed),
                ScheduleState::new(config.lr),
                None,
            )
        }
    };
    let towers = TowerPair::new(placement, Arc::clone(&plan), config.batch, &weights)?;
    drop(weights);
    if let Some(c) = &resume {
        let folder = last_checkpoint.clone().unwrap_or_default();
        let momentum = checkpoint::in_order(c.momentum.clone(), &shapes, &folder)?;
        towers.upload(ParamSet::Momentum, &momentum)?;
    }
    std::fs::create_dir_all(&run_dir).map_err(|e| Error::io(&run_dir, e))?;
    let config_path = run_dir.join("config.toml");
    let tmp = run_dir.join("config.toml.tmp");
    std::fs::write(&tmp, config.to_toml()).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &config_path).map_err(|e| Error::io(&config_path, e))?;
    let mut log = MetricsLog::open(&run_dir, first_step)?;
    let mut board = EventWriter::create(&run_dir.join("tensorboard"), first_step)?;
    let say = |out: &mut dyn Write, bar: &ProgressBar, line: &str| {
        bar.suspend(|| {
            let _ = writeln!(out, "{line}");
        });
    };

    let steps_per_epoch = data.train_len() / config.batch;
    let total_steps = config.steps.unwrap_or(config.epochs * steps_per_epoch);
    let target = if config.quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = progress_bar(total_steps, first_step, target);
    if placement.is_gpu() {
        say(out, &bar, towers.link_note());
    }
    if let Some(c) = &resume {
        say(
            out,
            &bar,
            &format!(
                "resuming {} at step {} of {total_steps}",
                run_dir.display(),
                c.state.step
            ),
        );
    }
    let lead = match &data {
        TrainingData::Images { workers, .. } => 2 * workers,
        TrainingData::Synthetic { .. } => 2,
    };
    let mut stream = Stream::new(
        &data,
        config.seed,
        config.batch,
        first_step,
        total_steps,
        lead,
    );
    let mut reported_val = std::collections::HashSet::new();
    let (mut window_start, mut window_waited) = (Instant::now(), 0.0);
    let mut reported = std::collections::HashSet::new();
    let mut skipped = 0usize;
    let mut losses = losses::Losses::new(plan.classes());
    let mut window_seconds = 0.0;
    let run_start = Instant::now();
    let mut summary = RunSummary {
        steps: first_step,
        final_loss: f64::NAN,
        val_top1: resume
            .as_ref()
            .and_then(|c| c.state.val_top1)
            .unwrap_or(0.0),
        val_top5: resume
            .as_ref()
            .and_then(|c| c.state.val_top5)
            .unwrap_or(0.0),
        images_per_s: 0.0,
        checkpoint: last_checkpoint.clone(),
        stopped: false,
        skipped_images: 0,
        data_wait: 0.0,
    };
    for step in first_step..total_steps {
        let (epoch, within) = (step / steps_per_epoch, step % steps_per_epoch);
        let lr = config
            .schedule
            .lr_at(&schedule_state, config.lr, step, total_steps);
        let sgd = SgdStep {
            lr,
            momentum: config.momentum,
            weight_decay: config.weight_decay,
        };
        let step_start = Instant::now();
        let loaded = match stream.next_batch() {
            Some(loaded) => loaded?,
            None => {
                return Err(Error::Training(format!(
                    "the data ran out at step {}",
                    step + 1
                )));
            }
        };
        skipped += note_skipped(&loaded.skipped, &mut reported, out, &bar);
        if loaded.labels.is_empty() {
            continue;
        }
        let images_in_step = loaded.labels.len();
        let batch = Batch {
            images: Arc::new(loaded.images),
            labels: Arc::new(loaded.labels),
        };
        towers.queue_step(&batch, derive(config.seed, step as u64), Some(sgd))?;
        losses.queued(step, images_in_step);
        window_seconds += step_start.elapsed().as_secs_f64();
        summary.steps = step + 1;
        bar.set_position((step + 1) as u64);
        let last = step + 1 == total_steps;
        if (step + 1) % config.log_every == 0 || last {
            read_losses(
                &mut losses,
                &towers,
                &mut window_seconds,
                last_checkpoint.as_deref(),
                &run_dir,
                out,
                &bar,
            )?;
            let window = &losses.window;
            let images_per_s = window.images as f64 / window_seconds;
            if !config.quiet {
                say(
                    out,
                    &bar,
                    &format!(
                        "step {:>5}/{total_steps}  epoch {:>3}  loss {:.4}  top-1 {:5.1}%  {:7.1} img/s  lr {}",
                        step + 1,
                        epoch + 1,
                        window.loss(),
                        100.0 * window.top1(),
                        images_per_s,
                        schedule::show_lr(lr)
                    ),
                );
            }
            let data_wait = (stream.waited_s() - window_waited)
                / window_start.elapsed().as_secs_f64().max(1e-9);
            log.write(&Metric::Train {
                step: step + 1,
                epoch: epoch + 1,
                loss: window.loss(),
                top1: window.top1(),
                images_per_s,
                lr,
                data_wait,
            })?;
            board.summary(
                step + 1,
                &[
                    Value::Scalar("train/loss", window.loss() as f32),
                    Value::Scalar("train/top1", window.top1() as f32),
                    Value::Scalar("train/learning_rate", lr),
                    Value::Scalar("train/images_per_s", images_per_s as f32),
                    Value::Scalar("train/data_wait", data_wait as f32),
                ],
            )?;
            summary.final_loss = window.loss();
            losses.window = Running::default();
            window_seconds = 0.0;
            (window_start, window_waited) = (Instant::now(), stream.waited_s());
        }
        let epoch_end = within + 1 == steps_per_epoch;
        let mut val_at = None;
        if epoch_end || last {
            let mut progress = Progress::new("validation", "images", data.val_len(), config.quiet);
            let mut val_skipped = Vec::new();
            let val = bar.suspend(|| {
                evaluate(
                    &towers,
                    stream.validation(),
                    stop,
                    &mut progress,
                    &mut val_skipped,
                )
            });
            progress.finish();
            note_skipped(&val_skipped, &mut reported_val, out, &bar);
            let Some(val) = val? else {
                read_losses(
                    &mut losses,
                    &towers,
                    &mut window_seconds,
                    last_checkpoint.as_deref(),
                    &run_dir,
                    out,
                    &bar,
                )?;
                let (folder, _) = save(
                    &towers,
                    run_state(
                        &plan,
                        &data,
                        config,
                        step,
                        steps_per_epoch,
                        schedule_state,
                        lr,
                        None,
                    ),
                    &checkpoints,
                    config.keep,
                    last_checkpoint.as_deref(),
                    &run_dir,
                )?;
                bar.abandon();
                summary.stopped = true;
                summary.checkpoint = Some(folder.clone());
                let _ = writeln!(
                    out,
                    "stopped by a signal during the validation after step {} of {total_steps}; saved {} (without that validation); continue with: alexnet train --resume {}",
                    step + 1,
                    folder.display(),
                    run_dir.display()
                );
                break;
            };
            say(
                out,
                &bar,
                &format!(
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
            board.summary(
                step + 1,
                &[
                    Value::Scalar("val/loss", val.loss() as f32),
                    Value::Scalar("val/top1", val.top1() as f32),
                    Value::Scalar("val/top5", val.top5() as f32),
                ],
            )?;
            summary.val_top1 = val.top1();
            summary.val_top5 = val.top5();
            val_at = Some((val.top1(), val.top5()));
            let change = epoch_end
                .then(|| {
                    config
                        .schedule
                        .end_epoch(&mut schedule_state, epoch + 1, 1.0 - val.top1())
                })
                .flatten();
            if let Some(line) = change {
                say(out, &bar, &line);
            }
        }
        let stopping = stop.load(Ordering::SeqCst);
        let periodic = config.checkpoint_every > 0 && (step + 1) % config.checkpoint_every == 0;
        if epoch_end || last || periodic || stopping {
            read_losses(
                &mut losses,
                &towers,
                &mut window_seconds,
                last_checkpoint.as_deref(),
                &run_dir,
                out,
                &bar,
            )?;
            let (folder, weights) = save(
                &towers,
                run_state(
                    &plan,
                    &data,
                    config,
                    step,
                    steps_per_epoch,
                    schedule_state,
                    lr,
                    val_at,
                ),
                &checkpoints,
                config.keep,
                last_checkpoint.as_deref(),
                &run_dir,
            )?;
            record_filters(&plan, &weights, step + 1, epoch + 1, &mut log, &mut board)?;
            last_checkpoint = Some(folder.clone());
            summary.checkpoint = Some(folder);
        }
        if stopping && !last {
            bar.abandon();
            summary.stopped = true;
            let _ = writeln!(
                out,
                "stopped by a signal after step {} of {total_steps}; saved {}; continue with: alexnet train --resume {}",
                step + 1,
                last_checkpoint
                    .as_deref()
                    .unwrap_or(Path::new("?"))
                    .display(),
                run_dir.display()
            );
            break;
        }
    }
    bar.finish_and_clear();
    summary.skipped_images = skipped;
    let images = ((summary.steps - first_step) * config.batch) as f64;
    summary.images_per_s = images / run_start.elapsed().as_secs_f64();
    summary.data_wait = stream.waited_s() / run_start.elapsed().as_secs_f64().max(1e-9);
    Ok(summary)
}

/// What a checkpoint after step `step` (0-based) records besides tensors.
#[allow(clippy::too_many_arguments)]
fn run_state(
    plan: &Plan,
    data: &TrainingData,
    config: &TrainConfig,
    step: usize,
    steps_per_epoch: usize,
    schedule: ScheduleState,
    lr: f32,
    val: Option<(f64, f64)>,
) -> RunState {
    RunState {
        format: FORMAT,
        spec: plan.spec.clone(),
        step: step + 1,
        epoch: (step + 1) / steps_per_epoch,
        data_position: ((step + 1) % steps_per_epoch) * config.batch,
        seed: config.seed,
        schedule,
        lr,
        classes: data.classes(),
        dataset: data.describe(),
        val_top1: val.map(|v| v.0),
        val_top5: val.map(|v| v.1),
    }
}

/// The shuffled image order of `epoch` (a pure function of the seed and the epoch).
pub fn epoch_order(seed: u64, epoch: usize, images: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..images).collect();
    Rng::new(derive(seed, 1_000_000 + epoch as u64)).shuffle(&mut order);
    order
}

/// What the progress bar says beside the steps and the ETA.
fn bar_message(loss: f64, images_per_s: f64) -> String {
    format!("loss {loss:.4}  {images_per_s:.1} img/s")
}

/// The progress bar: steps, loss, images/s and the ETA on `target` (stderr,
/// which indicatif leaves blank when it is not a terminal; hidden with `--quiet`).
fn progress_bar(total: usize, done: usize, target: ProgressDrawTarget) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total as u64), target);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
            .expect("a valid template"),
    );
    bar.set_position(done as u64);
    bar
}

/// Reads the queued steps' loss statistics into `losses`: fails, naming the
/// step, at a NaN or infinite loss; says the stuck-loss hint when it first
/// applies; shows the window's loss and speed on the bar. The read waits
/// for the queued steps to finish, and that wait counts in the window's
/// `window_seconds`.
fn read_losses(
    losses: &mut losses::Losses,
    towers: &TowerPair,
    window_seconds: &mut f64,
    last_good: Option<&Path>,
    run_dir: &Path,
    out: &mut dyn Write,
    bar: &ProgressBar,
) -> Result<()> {
    let start = Instant::now();
    let read = losses.read(towers)?;
    *window_seconds += start.elapsed().as_secs_f64();
    if let Some(step) = read.diverged_at {
        return Err(diverged(step, "loss", last_good, run_dir));
    }
    if let Some(hint) = read.hint {
        bar.suspend(|| {
            let _ = writeln!(out, "{hint}");
        });
    }
    let window = &losses.window;
    bar.set_message(bar_message(
        window.loss(),
        window.images as f64 / window_seconds.max(1e-9),
    ));
    Ok(())
}

fn diverged(step: usize, what: &str, last_good: Option<&Path>, run_dir: &Path) -> Error {
    let good = match last_good {
        Some(c) => format!(
            "the last good checkpoint is {}; resume it with a smaller --lr: alexnet train --resume {} --lr …",
            c.display(),
            run_dir.display()
        ),
        None => "no checkpoint was saved before it".into(),
    };
    Error::Training(format!(
        "a NaN or infinity in the {what} at step {step}: {good}"
    ))
}

/// Downloads weights and momentum and writes a checkpoint, refusing to save
/// weights that are not finite; returns its folder and the weights.
fn save(
    towers: &TowerPair,
    state: RunState,
    dir: &Path,
    keep: usize,
    last_good: Option<&Path>,
    run_dir: &Path,
) -> Result<(PathBuf, Vec<TwinTensor>)> {
    let weights = towers.download(ParamSet::Weights)?;
    if !all_finite(&weights) {
        return Err(diverged(state.step, "weights", last_good, run_dir));
    }
    let momentum = towers.download(ParamSet::Momentum)?;
    let ckpt = Checkpoint {
        state,
        weights,
        momentum,
    };
    let folder = checkpoint::save(dir, &ckpt, keep)?;
    Ok((folder, ckpt.weights))
}

/// A checkpoint's conv1 figure and colour saturation (the paper's Figure 3)
/// to `metrics.jsonl` and TensorBoard; nothing for a net without convolutions.
fn record_filters(
    plan: &Plan,
    weights: &[TwinTensor],
    step: usize,
    epoch: usize,
    log: &mut MetricsLog,
    board: &mut EventWriter,
) -> Result<()> {
    if !plan.layers.iter().any(|l| matches!(l.op, Op::Conv(_))) {
        return Ok(());
    }
    let filters = Filters::from_weights(plan, weights)?;
    let saturation = filters.saturation();
    log.write(&Metric::Filters {
        step,
        epoch,
        saturation,
    })?;
    let (width, height) = filters.size();
    board.summary(
        step,
        &[
            Value::Image {
                tag: "conv1",
                png: &filters.png(),
                width: width as u32,
                height: height as u32,
            },
            Value::Scalar("conv1/saturation_tower1", saturation[0] as f32),
            Value::Scalar("conv1/saturation_tower2", saturation[1] as f32),
        ],
    )
}

fn all_finite(tensors: &[TwinTensor]) -> bool {
    tensors.iter().all(|t| t.data.iter().all(|v| v.is_finite()))
}

/// Top-1/top-5 over a whole set; `None` when `stop` is set before the end.
/// The images left out go to `skipped`.
fn evaluate(
    towers: &TowerPair,
    batches: crate::data::Batches,
    stop: &AtomicBool,
    progress: &mut Progress,
    skipped: &mut Vec<(String, String)>,
) -> Result<Option<Running>> {
    let mut total = Running::default();
    for loaded in batches {
        if stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let loaded = loaded?;
        progress.add(loaded.labels.len() + loaded.skipped.len());
        skipped.extend(loaded.skipped);
        if loaded.labels.is_empty() {
            continue;
        }
        let n = loaded.labels.len();
        let stats = towers.evaluate(&Batch {
            images: Arc::new(loaded.images),
            labels: Arc::new(loaded.labels),
        })?;
        total.add(stats, n);
    }
    Ok(Some(total))
}

/// Reports each skipped file once; returns how many were skipped.
fn note_skipped(
    skipped: &[(String, String)],
    reported: &mut std::collections::HashSet<String>,
    out: &mut dyn Write,
    bar: &ProgressBar,
) -> usize {
    for (file, why) in skipped {
        if reported.insert(file.clone()) {
            bar.suspend(|| {
                let _ = writeln!(out, "skipped {file}: {why}");
            });
        }
    }
    skipped.len()
}

/// The run's data: the synthetic set, or the dataset at `config.data` with
/// its colour statistics.
fn training_data(config: &TrainConfig, plan: &Plan, out: &mut dyn Write) -> Result<TrainingData> {
    let input = &plan.spec.input;
    let data = match &config.data {
        None => TrainingData::Synthetic {
            train: Synthetic::new(
                config.seed,
                Split::Train,
                config.train_images,
                input.channels,
                input.size,
            ),
            val: Synthetic::new(
                config.seed,
                Split::Validation,
                config.val_images,
                input.channels,
                input.size,
            ),
        },
        Some(path) => {
            if input.channels != 3 {
                return Err(Error::Input(format!(
                    "--data {}: images are RGB, the preset's input has {} channels",
                    path.display(),
                    input.channels
                )));
            }
            let dataset = sets::open(path)?;
            let provisional = Pipeline::new(input.size, Stats::imagenet());
            let (stats, how) =
                stats::load_or_compute(&dataset.root, dataset.train.as_ref(), &provisional)?;
            let _ = writeln!(
                out,
                "data: {}: {} training and {} validation images in {} classes; {how}",
                dataset.kind,
                dataset.train.len(),
                dataset.val.len(),
                dataset.classes.len()
            );
            TrainingData::Images {
                dataset,
                pipeline: Arc::new(Pipeline::new(input.size, stats)),
                workers: config.worker_threads(),
                strict: config.strict,
            }
        }
    };
    let classes = data.classes().len();
    if classes > plan.classes() {
        return Err(Error::Input(format!(
            "--preset {}: the net has {} outputs, the data {classes} classes",
            config.preset,
            plan.classes()
        )));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use indicatif::InMemoryTerm;

    #[test]
    fn the_progress_bar_shows_steps_loss_speed_and_eta() {
        let term = InMemoryTerm::new(4, 120);
        let bar = progress_bar(
            1000,
            250,
            ProgressDrawTarget::term_like(Box::new(term.clone())),
        );
        bar.set_message(bar_message(1.2345, 678.9));
        bar.set_position(251);
        bar.tick();
        let shown = term.contents();
        for part in ["251/1000 steps", "loss 1.2345", "678.9 img/s", "ETA"] {
            assert!(shown.contains(part), "{part:?} not in {shown:?}");
        }
    }
}
