//! The training loop (paper §5): momentum SGD over shuffled epochs,
//! validation after each, the learning-rate schedule, checkpoints, resume,
//! and a clean stop on SIGINT or SIGTERM.

pub mod checkpoint;
pub mod config;
mod losses;
pub mod metrics;
pub mod schedule;
mod setup;
pub mod trainer;
mod window;

use crate::error::Result;
use crate::nodes::NodeSpec;
use crate::placement::Placement;
use config::TrainConfig;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use trainer::{Trainer, Validation};

pub use setup::run_dir_for;
pub use trainer::{RunSummary, Start};

/// Runs `config` where `placements` say (one pair per placement, each a
/// replica on its shard of every batch; with `nodes`, this node's part of
/// a run over several), writing progress to `out`, until
/// its last step or until `stop` is set (then it saves and returns): each
/// step trains; each epoch's end and the last step validate and save; a
/// checkpoint also every `checkpoint_every` steps and on a stop.
pub fn train(
    config: &TrainConfig,
    placements: &[Placement],
    nodes: Option<&NodeSpec>,
    start: Start,
    stop: &AtomicBool,
    out: &mut dyn Write,
) -> Result<RunSummary> {
    let mut trainer = Trainer::new(config, (placements, nodes), start, stop, out)?;
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
        let stopping = trainer.stopping(stop.load(Ordering::SeqCst))?;
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
