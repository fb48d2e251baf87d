//! `metrics.jsonl`: one JSON object per progress line, validation and
//! learning-rate change. A resumed run first drops the lines of steps after
//! its checkpoint, which it is about to run again.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Metric {
    Train {
        step: usize,
        epoch: usize,
        loss: f64,
        top1: f64,
        images_per_s: f64,
        lr: f32,
        /// The fraction of the wall time since the previous line spent
        /// waiting for batches (0 in the lines of runs from before it was
        /// measured).
        #[serde(default)]
        data_wait: f64,
    },
    Val {
        step: usize,
        epoch: usize,
        loss: f64,
        top1: f64,
        top5: f64,
    },
    /// Each tower's conv1 colour saturation at a checkpoint
    /// ([`crate::plot::filters::Filters::saturation`]).
    Filters {
        step: usize,
        epoch: usize,
        saturation: [f64; 2],
    },
}

impl Metric {
    /// The step (1-based) the line was written after.
    pub fn step(&self) -> usize {
        match self {
            Metric::Train { step, .. }
            | Metric::Val { step, .. }
            | Metric::Filters { step, .. } => *step,
        }
    }

    /// The line's metric; `None` for a line that is not one (torn by a
    /// crash mid-write, or of a kind this version does not know).
    pub fn parse(line: &str) -> Option<Metric> {
        serde_json::from_str(line).ok()
    }
}

/// The metrics of `RUN_DIR/metrics.jsonl`, in order, leaving out lines
/// [`Metric::parse`] does not understand.
pub fn read(run_dir: &Path) -> Result<Vec<Metric>> {
    let path = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    Ok(text.lines().filter_map(Metric::parse).collect())
}

/// The run's metrics file, open for appending.
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens `dir/metrics.jsonl`, keeping only lines of steps up to `keep_through`.
    pub fn open(dir: &Path, keep_through: usize) -> Result<Self> {
        let path = dir.join("metrics.jsonl");
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let kept: String = text
                .lines()
                .filter(|line| Metric::parse(line).is_some_and(|m| m.step() <= keep_through))
                .map(|line| format!("{line}\n"))
                .collect();
            let tmp = dir.join("metrics.jsonl.tmp");
            std::fs::write(&tmp, kept).map_err(|e| Error::io(&tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(MetricsLog { path, file })
    }

    pub fn write(&mut self, metric: &Metric) -> Result<()> {
        let line = serde_json::to_string(metric).expect("metrics serialize");
        writeln!(self.file, "{line}").map_err(|e| Error::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopening_drops_the_steps_after_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = MetricsLog::open(dir.path(), 0).unwrap();
        for step in [10, 20, 30] {
            log.write(&Metric::Train {
                step,
                epoch: 1,
                loss: 1.0,
                top1: 0.5,
                images_per_s: 1.0,
                lr: 0.01,
                data_wait: 0.0,
            })
            .unwrap();
        }
        drop(log);
        let mut log = MetricsLog::open(dir.path(), 20).unwrap();
        log.write(&Metric::Val {
            step: 25,
            epoch: 1,
            loss: 1.0,
            top1: 0.5,
            top5: 0.9,
        })
        .unwrap();
        let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
        let steps: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(steps, vec![10, 20, 25]);
    }
}
