//! One training run, step by step (paper §5): a [`Trainer`] trains a
//! step, validates, saves a checkpoint, and stops; [`super::train`] drives it.

use super::checkpoint::{self, Checkpoint, FORMAT, RunState};
use super::config::TrainConfig;
use super::losses::Losses;
use super::metrics::{Metric, MetricsLog};
use super::schedule::{self, ScheduleState};
use super::setup;
use super::window::{Running, Window, bar_message, progress_bar};
use crate::data::Part;
use crate::data::stream::Stream;
use crate::data::{Batches, TrainingData};
use crate::device::SgdStep;
use crate::device::precision::{LossScale, Precision};
use crate::error::{Error, Result};
use crate::net::params::TwinTensor;
use crate::net::plan::{Op, Plan};
use crate::nodes::{NodeSpec, Nodes};
use crate::placement::Placement;
use crate::plot::filters::Filters;
use crate::progress::Progress;
use crate::replicas::Replicas;
use crate::rng::derive;
use crate::tensorboard::{EventWriter, Value};
use crate::tower::ParamSet;
use crate::towers::Batch;
use indicatif::{ProgressBar, ProgressDrawTarget};
use serde::Serialize;
use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
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

impl RunSummary {
    /// Before the first step of this process, at `first_step` (`saved`, the
    /// checkpoint's state, and its folder `checkpoint` on a resume).
    fn starting(
        first_step: usize,
        saved: Option<&RunState>,
        checkpoint: Option<PathBuf>,
    ) -> RunSummary {
        RunSummary {
            steps: first_step,
            final_loss: f64::NAN,
            val_top1: saved.and_then(|s| s.val_top1).unwrap_or(0.0),
            val_top5: saved.and_then(|s| s.val_top5).unwrap_or(0.0),
            images_per_s: 0.0,
            checkpoint,
            stopped: false,
            skipped_images: 0,
            data_wait: 0.0,
        }
    }
}

/// Where a run starts: fresh, or from a checkpoint.
pub enum Start {
    Fresh,
    Resume(Box<Checkpoint>),
}

/// A run in progress: its towers, data, logs and where it stands.
pub struct Trainer<'a> {
    config: &'a TrainConfig,
    plan: Arc<Plan>,
    data: Arc<TrainingData>,
    towers: Replicas,
    stream: Stream,
    run_dir: PathBuf,
    /// The other nodes of a run over several.
    nodes: Option<Arc<Nodes>>,
    /// `metrics.jsonl` and TensorBoard: on node 0 alone, which writes.
    log: Option<MetricsLog>,
    board: Option<EventWriter>,
    bar: ProgressBar,
    out: &'a mut dyn Write,
    schedule: ScheduleState,
    /// The newest checkpoint written (or resumed from).
    last_checkpoint: Option<PathBuf>,
    first_step: usize,
    total_steps: usize,
    steps_per_epoch: usize,
    /// The rate of the last step trained.
    lr: f32,
    /// fp16's dynamic loss scale; `None` at other precisions.
    loss_scale: Option<LossScale>,
    window: Window,
    /// The queued steps' losses, read at progress lines and checkpoints.
    losses: Losses,
    /// Unreadable files already named, in training and in validation.
    named: [HashSet<String>; 2],
    summary: RunSummary,
    started: Instant,
}

/// How a validation ended.
pub enum Validation {
    /// Top-1 and top-5 over the whole validation set.
    Done { top1: f64, top5: f64 },
    /// A signal stopped it before the end.
    Stopped,
}

impl<'a> Trainer<'a> {
    /// Checks everything and allocates the towers (one pair per placement,
    /// each a replica on its shard of every batch; with `nodes`, these are
    /// this node's, and it joins the others), then makes the run folder (so
    /// a failed start leaves nothing behind; on node 0 alone). `stop` ends
    /// the wait for the other nodes.
    pub fn new(
        config: &'a TrainConfig,
        (placements, nodes): (&[Placement], Option<&NodeSpec>),
        start: Start,
        stop: &AtomicBool,
        out: &'a mut dyn Write,
    ) -> Result<Trainer<'a>> {
        config.validate()?;
        let run_dir = setup::run_dir_for(config);
        let writes = nodes.is_none_or(NodeSpec::writes);
        let (plan, resume) = match start {
            Start::Fresh => {
                if writes {
                    setup::check_run_dir(&run_dir)?;
                }
                (Plan::load(&config.preset)?, None)
            }
            Start::Resume(ckpt) => (Plan::new(ckpt.state.spec.clone())?, Some(*ckpt)),
        };
        let plan = Arc::new(plan);
        let data = Arc::new(setup::training_data(config, &plan, out)?);
        if let Some(c) = &resume {
            setup::check_resume(&c.state, config, &data)?;
        }
        let world = placements.len().max(1) * nodes.map_or(1, |n| n.count);
        let shard = config.batch / world;
        for placement in placements {
            crate::limits::check_fits(&plan, shard, *placement)?;
        }
        let checkpoints = run_dir.join("checkpoints");
        let mut resumed = resume
            .map(|c| setup::Resumed::new(c, &plan, &checkpoints))
            .transpose()?;
        let (weights, schedule) = match &mut resumed {
            Some(r) => (std::mem::take(&mut r.weights), r.state.schedule),
            None => setup::fresh_weights(&plan, config),
        };
        let first_step = resumed.as_ref().map_or(0, |r| r.state.step);
        let (towers, nodes) = setup::start_towers(
            config,
            (placements, nodes, stop),
            (&plan, &data),
            (first_step, weights),
        )?;
        if let Some(r) = &mut resumed {
            towers.upload(ParamSet::Momentum, &std::mem::take(&mut r.momentum))?;
        }
        let (log, board) = if writes {
            setup::create_run_dir(&run_dir, config)?;
            let board = EventWriter::create(&run_dir.join("tensorboard"), first_step)?;
            (Some(MetricsLog::open(&run_dir, first_step)?), Some(board))
        } else {
            (None, None)
        };
        let saved = resumed.as_ref().map(|r| &r.state);
        let loss_scale = placements
            .first()
            .is_some_and(|p| p.precision() == Precision::Fp16)
            .then(|| {
                saved
                    .and_then(|s| s.loss_scale)
                    .unwrap_or(LossScale::starting_at(config.loss_scale))
            });
        let last_checkpoint = resumed.as_ref().map(|r| r.folder.clone());
        let steps_per_epoch = data.train_len() / config.batch;
        let total_steps = config.steps.unwrap_or(config.epochs * steps_per_epoch);
        let lead = match &*data {
            TrainingData::Images { workers, .. } => 2 * workers,
            TrainingData::Synthetic { .. } => 2,
        };
        let part = nodes.as_ref().map_or(Part::WHOLE, |n| Part {
            index: n.rank(),
            count: n.count(),
        });
        let stream = Stream::new(
            Arc::clone(&data),
            config.seed,
            (config.batch, part),
            first_step,
            total_steps,
            lead,
        );
        let target = if config.quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let summary = RunSummary::starting(first_step, saved, last_checkpoint.clone());
        let mut trainer = Trainer {
            config,
            losses: Losses::new(plan.classes()),
            plan,
            data,
            towers,
            stream,
            run_dir,
            nodes,
            log,
            board,
            bar: progress_bar(total_steps, first_step, target),
            out,
            schedule,
            last_checkpoint,
            first_step,
            total_steps,
            steps_per_epoch,
            lr: config.lr,
            loss_scale,
            window: Window::open(0.0),
            named: [HashSet::new(), HashSet::new()],
            summary,
            started: Instant::now(),
        };
        let links = placements.len() > 1
            || trainer.nodes.is_some()
            || placements.iter().any(|p| p.is_gpu());
        trainer.announce(links);
        Ok(trainer)
    }

    /// The link in use (on a GPU, or between replicas) and where a resumed
    /// run picks up.
    fn announce(&mut self, links: bool) {
        if links {
            let note = self.towers.link_note().to_string();
            self.say(&note);
        }
        if self.first_step > 0 {
            let line = format!(
                "resuming {} at step {} of {}",
                self.run_dir.display(),
                self.first_step,
                self.total_steps
            );
            self.say(&line);
        }
    }

    /// The steps this process trains (0-based).
    pub fn steps(&self) -> std::ops::Range<usize> {
        self.first_step..self.total_steps
    }

    /// Whether step `step` (0-based) ends an epoch, and whether it is the run's last.
    pub fn boundary(&self, step: usize) -> (bool, bool) {
        (
            (step + 1).is_multiple_of(self.steps_per_epoch),
            step + 1 == self.total_steps,
        )
    }

    /// Whether `--checkpoint-every` asks for a checkpoint after `step`.
    pub fn periodic(&self, step: usize) -> bool {
        let every = self.config.checkpoint_every;
        every > 0 && (step + 1).is_multiple_of(every)
    }

    /// Queues step `step` (0-based) on the towers: its batch, forward,
    /// backward and the momentum update (paper §5), then the progress line
    /// when one is due. The towers run ahead of the host by a few steps; the
    /// loss is read at progress lines and checkpoints, so a loss that is not
    /// finite stops the run at the next read, naming the step it came from
    /// and the last good checkpoint.
    pub fn step(&mut self, step: usize) -> Result<()> {
        let config = self.config;
        self.lr = config
            .schedule
            .lr_at(&self.schedule, config.lr, step, self.total_steps);
        let sgd = SgdStep {
            lr: self.lr,
            momentum: config.momentum,
            weight_decay: config.weight_decay,
        };
        let started = Instant::now();
        let Some(loaded) = self.stream.next_batch() else {
            return Err(Error::Training(format!(
                "the data ran out at step {}",
                step + 1
            )));
        };
        let loaded = loaded?;
        self.summary.skipped_images += self.name_skipped(&loaded.skipped, 0);
        self.summary.steps = step + 1;
        if !loaded.labels.is_empty() {
            let images = loaded.labels.len();
            let batch = Batch {
                images: Arc::new(loaded.images),
                labels: Arc::new(loaded.labels),
            };
            let key = derive(config.seed, step as u64);
            match &mut self.loss_scale {
                None => self.towers.queue_step(&batch, key, Some(sgd))?,
                Some(scale) => {
                    let applied = self
                        .towers
                        .queue_scaled_step(&batch, key, sgd, scale.scale)?;
                    *scale = scale.after(applied);
                }
            }
            self.losses.queued(step, images);
            self.window.seconds += started.elapsed().as_secs_f64();
            self.bar.set_position((step + 1) as u64);
        }
        let (_, last) = self.boundary(step);
        if (step + 1).is_multiple_of(config.log_every) || last {
            self.progress_line(step)?;
        }
        Ok(())
    }

    /// Reads the losses of the steps queued since the last read: a loss
    /// that is not finite is an error naming its step; the stuck-loss hint
    /// is said once.
    fn read_losses(&mut self) -> Result<()> {
        let started = Instant::now();
        let read = self.losses.read(&self.towers)?;
        self.window.seconds += started.elapsed().as_secs_f64();
        if let Some(step) = read.diverged_at {
            return Err(self.diverged(step, "loss"));
        }
        if let Some(hint) = read.hint {
            self.say(&hint);
        }
        let window = &self.losses.window;
        let message = bar_message(window.loss(), self.window.images_per_s(window.images));
        self.bar.set_message(message);
        Ok(())
    }

    /// The progress line after `step`: printed, and written to
    /// `metrics.jsonl` and TensorBoard; then a new window opens.
    fn progress_line(&mut self, step: usize) -> Result<()> {
        self.read_losses()?;
        let epoch = step / self.steps_per_epoch + 1;
        let running = &self.losses.window;
        let images_per_s = self.window.images_per_s(running.images);
        let data_wait = self.window.data_wait(self.stream.waited_s());
        let (loss, top1, lr) = (running.loss(), running.top1(), self.lr);
        if !self.config.quiet {
            let line = format!(
                "step {:>5}/{}  epoch {epoch:>3}  loss {loss:.4}  top-1 {:5.1}%  {images_per_s:7.1} img/s  lr {}",
                step + 1,
                self.total_steps,
                100.0 * top1,
                schedule::show_lr(lr)
            );
            self.say(&line);
        }
        self.metric(&Metric::Train {
            step: step + 1,
            epoch,
            loss,
            top1,
            images_per_s,
            lr,
            data_wait,
        })?;
        self.summarize(
            step + 1,
            &[
                Value::Scalar("train/loss", loss as f32),
                Value::Scalar("train/top1", top1 as f32),
                Value::Scalar("train/learning_rate", lr),
                Value::Scalar("train/images_per_s", images_per_s as f32),
                Value::Scalar("train/data_wait", data_wait as f32),
            ],
        )?;
        self.summary.final_loss = loss;
        self.window = Window::open(self.stream.waited_s());
        self.losses.window = Running::default();
        Ok(())
    }

    /// Validates after `step` on the whole validation set (centre crops),
    /// reports it, and at an epoch's end lets the schedule see the error.
    pub fn validate(&mut self, step: usize, stop: &AtomicBool) -> Result<Validation> {
        let mut progress = Progress::new(
            "validation",
            "images",
            self.data.val_len(),
            self.config.quiet,
        );
        let mut skipped = Vec::new();
        // Over several nodes a stop waits for the validation's end, where
        // the nodes agree on it ([`Trainer::stopping`]).
        let never = AtomicBool::new(false);
        let stop = if self.nodes.is_some() { &never } else { stop };
        let batches = self.stream.validation();
        let towers = &self.towers;
        let val = self
            .bar
            .suspend(|| evaluate(towers, batches, stop, &mut progress, &mut skipped));
        progress.finish();
        self.name_skipped(&skipped, 1);
        let Some(mut val) = val? else {
            return Ok(Validation::Stopped);
        };
        if let Some(nodes) = &self.nodes {
            val = summed_over(nodes, val)?;
        }
        let epoch = step / self.steps_per_epoch + 1;
        let (loss, top1, top5) = (val.loss(), val.top1(), val.top5());
        let line = format!(
            "validation after epoch {epoch}: loss {loss:.4}  top-1 {:.1}%  top-5 {:.1}%  ({} images)",
            100.0 * top1,
            100.0 * top5,
            val.images
        );
        self.say(&line);
        self.metric(&Metric::Val {
            step: step + 1,
            epoch,
            loss,
            top1,
            top5,
        })?;
        self.summarize(
            step + 1,
            &[
                Value::Scalar("val/loss", loss as f32),
                Value::Scalar("val/top1", top1 as f32),
                Value::Scalar("val/top5", top5 as f32),
            ],
        )?;
        (self.summary.val_top1, self.summary.val_top5) = (top1, top5);
        let (epoch_end, _) = self.boundary(step);
        let change = epoch_end
            .then(|| {
                self.config
                    .schedule
                    .end_epoch(&mut self.schedule, epoch, 1.0 - top1)
            })
            .flatten();
        if let Some(line) = change {
            self.say(&line);
        }
        Ok(Validation::Done { top1, top5 })
    }

    /// Saves a checkpoint after `step` (with the validation just measured,
    /// if any), refusing weights that are not finite, and records conv1's
    /// filters (the paper's Figure 3); returns its folder (`None` on a node
    /// that does not write). The queued steps' losses are read first, so
    /// no checkpoint follows a NaN loss.
    pub fn checkpoint(&mut self, step: usize, val: Option<(f64, f64)>) -> Result<Option<PathBuf>> {
        self.read_losses()?;
        if !self.writes() {
            // The others wait while node 0 writes, then go on together.
            self.nodes.as_ref().map_or(Ok(()), |n| n.barrier())?;
            return Ok(None);
        }
        let weights = self.towers.download(ParamSet::Weights)?;
        if !weights.iter().all(|t| t.data.iter().all(|v| v.is_finite())) {
            return Err(self.diverged(step + 1, "weights"));
        }
        let momentum = self.towers.download(ParamSet::Momentum)?;
        let ckpt = Checkpoint {
            state: self.run_state(step, val),
            weights,
            momentum,
        };
        let folder = checkpoint::save(&self.run_dir.join("checkpoints"), &ckpt, self.config.keep)?;
        self.record_filters(&ckpt.weights, step + 1)?;
        self.last_checkpoint = Some(folder.clone());
        self.summary.checkpoint = Some(folder.clone());
        self.nodes.as_ref().map_or(Ok(()), |n| n.barrier())?;
        Ok(Some(folder))
    }

    /// Whether this process writes the run folder: it is alone, or node 0.
    fn writes(&self) -> bool {
        self.nodes.as_deref().is_none_or(Nodes::writes)
    }

    /// Whether the run stops after this step: `here`, this process was
    /// asked to; over several nodes, whether any was (every node must stop
    /// at the same step).
    pub fn stopping(&self, here: bool) -> Result<bool> {
        match &self.nodes {
            Some(nodes) => nodes.any(here),
            None => Ok(here),
        }
    }

    /// Ends the run early after `step`, saying where it was saved and how
    /// to go on; `in_validation` when the signal came during a validation.
    pub fn stop(&mut self, step: usize, in_validation: bool) {
        self.bar.abandon();
        self.summary.stopped = true;
        let saved = match &self.last_checkpoint {
            _ if !self.writes() => "on node 0".to_string(),
            Some(c) => c.display().to_string(),
            None => "?".to_string(),
        };
        let when = if in_validation {
            format!(
                "during the validation after step {} of {}; saved {saved} (without that validation)",
                step + 1,
                self.total_steps
            )
        } else {
            format!(
                "after step {} of {}; saved {saved}",
                step + 1,
                self.total_steps
            )
        };
        let _ = writeln!(
            self.out,
            "stopped by a signal {when}; continue with: alexnet train --resume {}",
            self.run_dir.display()
        );
    }

    /// What the run did, over this process's steps.
    pub fn finish(mut self) -> RunSummary {
        self.bar.finish_and_clear();
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        let images = ((self.summary.steps - self.first_step) * self.config.batch) as f64;
        self.summary.images_per_s = images / wall;
        self.summary.data_wait = self.stream.waited_s() / wall;
        self.summary
    }

    /// What a checkpoint after `step` (0-based) records besides tensors.
    fn run_state(&self, step: usize, val: Option<(f64, f64)>) -> RunState {
        RunState {
            format: FORMAT,
            spec: self.plan.spec.clone(),
            step: step + 1,
            epoch: (step + 1) / self.steps_per_epoch,
            data_position: ((step + 1) % self.steps_per_epoch) * self.config.batch,
            seed: self.config.seed,
            schedule: self.schedule,
            lr: self.lr,
            classes: self.data.classes(),
            dataset: self.data.describe(),
            val_top1: val.map(|v| v.0),
            val_top5: val.map(|v| v.1),
            loss_scale: self.loss_scale,
        }
    }

    /// A checkpoint's conv1 figure and colour saturation to `metrics.jsonl`
    /// and TensorBoard; nothing for a net without convolutions.
    fn record_filters(&mut self, weights: &[TwinTensor], step: usize) -> Result<()> {
        if !self.plan.layers.iter().any(|l| matches!(l.op, Op::Conv(_))) {
            return Ok(());
        }
        let filters = Filters::from_weights(&self.plan, weights)?;
        let saturation = filters.saturation();
        self.metric(&Metric::Filters {
            step,
            epoch: step.div_ceil(self.steps_per_epoch),
            saturation,
        })?;
        let (width, height) = filters.size();
        self.summarize(
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

    /// A NaN or infinity in `what` at `step`: the error names the last good checkpoint.
    fn diverged(&self, step: usize, what: &str) -> Error {
        let good = match &self.last_checkpoint {
            Some(c) => format!(
                "the last good checkpoint is {}; resume it with a smaller --lr: alexnet train --resume {} --lr …",
                c.display(),
                self.run_dir.display()
            ),
            None => "no checkpoint was saved before it".into(),
        };
        Error::Training(format!(
            "a NaN or infinity in the {what} at step {step}: {good}"
        ))
    }

    /// A line of `metrics.jsonl` (on the node that writes).
    fn metric(&mut self, metric: &Metric) -> Result<()> {
        self.log.as_mut().map_or(Ok(()), |log| log.write(metric))
    }

    /// TensorBoard values at `step` (on the node that writes).
    fn summarize(&mut self, step: usize, values: &[Value]) -> Result<()> {
        self.board
            .as_mut()
            .map_or(Ok(()), |board| board.summary(step, values))
    }

    /// A line on the run's output, above the progress bar.
    fn say(&mut self, line: &str) {
        let out = &mut self.out;
        self.bar.suspend(|| {
            let _ = writeln!(out, "{line}");
        });
    }

    /// Names each skipped file once (`which`: 0 training, 1 validation);
    /// returns how many were skipped.
    fn name_skipped(&mut self, skipped: &[(String, String)], which: usize) -> usize {
        for (file, why) in skipped {
            if self.named[which].insert(file.clone()) {
                self.say(&format!("skipped {file}: {why}"));
            }
        }
        skipped.len()
    }
}

/// A validation's counts summed over every node's part of the set.
fn summed_over(nodes: &Nodes, val: Running) -> Result<Running> {
    let s = &val.stats;
    let mut counts = [s.loss_sum, s.top1 as f64, s.top5 as f64, val.images as f64];
    nodes.sum(&mut counts)?;
    let [loss_sum, top1, top5, images] = counts;
    Ok(Running {
        stats: crate::device::LossStats {
            loss_sum,
            top1: top1 as usize,
            top5: top5 as usize,
        },
        images: images as usize,
    })
}

/// Top-1/top-5 over a whole set; `None` when `stop` is set before the end.
/// The images left out go to `skipped`.
fn evaluate(
    towers: &Replicas,
    batches: Batches,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::spec::InitScheme;

    #[test]
    fn a_trainer_steps_validates_saves_and_stops_without_the_binary() {
        let dir = tempfile::tempdir().unwrap();
        // 16 images at batch 8: two steps an epoch, two epochs.
        let config = TrainConfig {
            batch: 8,
            steps: Some(4),
            train_images: 16,
            val_images: 8,
            log_every: 2,
            quiet: true,
            init: Some(InitScheme::He),
            run_dir: Some(dir.path().join("run")),
            ..TrainConfig::default()
        };
        let mut out = Vec::new();
        let mut trainer = Trainer::new(
            &config,
            (&[Placement::cpu()], None),
            Start::Fresh,
            &AtomicBool::new(false),
            &mut out,
        )
        .unwrap();
        assert_eq!(trainer.steps(), 0..4);
        assert_eq!(trainer.boundary(0), (false, false));
        assert_eq!(trainer.boundary(1), (true, false));
        assert_eq!(trainer.boundary(3), (true, true));
        let weights = |t: &Trainer| t.towers.download(ParamSet::Weights).unwrap();
        let before = weights(&trainer);
        trainer.step(0).unwrap();
        assert_ne!(weights(&trainer), before, "a step moves the weights");
        trainer.step(1).unwrap();
        let Validation::Done { top1, top5 } = trainer.validate(1, &AtomicBool::new(false)).unwrap()
        else {
            panic!("a validation with no stop runs to its end");
        };
        // Counts over the 8 validation images.
        assert_eq!((top1 * 8.0).fract(), 0.0, "{top1}");
        assert!(top1 <= top5 && top5 <= 1.0, "{top1} {top5}");
        let folder = trainer.checkpoint(1, Some((top1, top5))).unwrap().unwrap();
        let saved = checkpoint::load_folder(&folder).unwrap();
        assert_eq!(
            (
                saved.state.step,
                saved.state.epoch,
                saved.state.data_position
            ),
            (2, 1, 0)
        );
        assert_eq!(saved.state.val_top1, Some(top1));
        let by_name = |mut tensors: Vec<TwinTensor>| {
            tensors.sort_by(|a, b| a.name.cmp(&b.name));
            tensors
        };
        let same = by_name(saved.weights) == by_name(weights(&trainer));
        assert!(same, "the checkpoint holds the towers' weights");
        let stopped = trainer.validate(1, &AtomicBool::new(true)).unwrap();
        assert!(matches!(stopped, Validation::Stopped));
        trainer.stop(1, false);
        let summary = trainer.finish();
        assert!(summary.stopped);
        assert_eq!(summary.steps, 2);
        assert_eq!(summary.checkpoint, Some(folder.clone()));
        let text = String::from_utf8(out).unwrap();
        let said = format!(
            "stopped by a signal after step 2 of 4; saved {}",
            folder.display()
        );
        assert!(text.contains(&said), "{text}");
    }
}
