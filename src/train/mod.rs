//! The training loop (paper §5): momentum SGD over shuffled epochs,
//! validation after each, the learning-rate schedule, checkpoints, resume,
//! and a clean stop on SIGINT or SIGTERM.

pub mod checkpoint;
pub mod config;
pub mod metrics;
pub mod schedule;
mod setup;
pub mod trainer;
mod window;

use crate::error::Result;
use crate::placement::Placement;
use checkpoint::Checkpoint;
use config::TrainConfig;
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use trainer::{Trainer, Validation};

pub use setup::run_dir_for;

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

/// Where a run starts: fresh, or from a checkpoint.
pub enum Start {
    Fresh,
    Resume(Box<Checkpoint>),
}

/// Runs `config` where `placement` says, writing progress to `out`, until
/// its last step or until `stop` is set (then it saves and returns): each
/// step trains; each epoch's end and the last step validate and save; a
/// checkpoint also every `checkpoint_every` steps and on a stop.
pub fn train(
    config: &TrainConfig,
    placement: Placement,
    start: Start,
    stop: &AtomicBool,
    out: &mut dyn Write,
) -> Result<RunSummary> {
    let mut trainer = Trainer::new(config, placement, start, out)?;
    for step in trainer.steps() {
        trainer.step(step)?;
        let (epoch_end, last) = trainer.boundary(step);
        let mut val = None;
        if epoch_end || last {
            match trainer.validate(step, stop)? {
                Validation::Done { top1, top5 } => val = Some((top1, top5)),
                Validation::Stopped => {
                    trainer.checkpoint(step, None)?;
                    trainer.stop(step, true);
                    break;
                }
            }
        }
        let stopping = stop.load(Ordering::SeqCst);
        if epoch_end || last || trainer.periodic(step) || stopping {
            trainer.checkpoint(step, val)?;
        }
        if stopping && !last {
            trainer.stop(step, false);
            break;
        }
    }
    Ok(trainer.finish())
}
