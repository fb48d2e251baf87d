//! A training run's configuration: defaults (the paper's §5 where it has
//! one), overridden by a TOML file (`--config`), overridden by flags. The
//! effective configuration is printed at start and saved as the run's
//! `config.toml`, which `--config` and `--resume` read back.

use crate::device::precision::LossScale;
use crate::error::{Error, Result};
use crate::limits::{MAX_BATCH, MAX_IMAGES, MAX_WORKERS};
use crate::net::spec::InitScheme;
use crate::train::schedule::Schedule;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Everything a training run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// A built-in preset or a preset TOML file.
    pub preset: String,
    pub batch: usize,
    /// Steps to run in all; when absent, `epochs` passes over the training set.
    pub steps: Option<usize>,
    pub epochs: usize,
    pub seed: u64,
    /// Where config.toml, metrics.jsonl and checkpoints/ go.
    pub run_dir: Option<PathBuf>,
    /// Weight initialization; when absent, the preset's.
    pub init: Option<InitScheme>,
    /// §5: 0.01 at the start.
    pub lr: f32,
    /// §5: 0.9.
    pub momentum: f32,
    /// §5: 0.0005, applied to weights and biases alike.
    pub weight_decay: f32,
    pub schedule: Schedule,
    /// Save a checkpoint every this many steps (0: at the end of each epoch only).
    pub checkpoint_every: usize,
    /// Checkpoints kept besides the best.
    pub keep: usize,
    /// The dataset: an ImageNet-style folder or Fashion-MNIST's; when absent,
    /// the built-in synthetic set.
    pub data: Option<PathBuf>,
    /// Image-decoding threads (0: one per core).
    pub workers: usize,
    /// Stop at the first unreadable image instead of skipping it.
    pub strict: bool,
    /// Synthetic training and validation set sizes.
    pub train_images: usize,
    pub val_images: usize,
    /// Print a progress line every this many steps.
    pub log_every: usize,
    /// Print validation results and the end only.
    pub quiet: bool,
    /// fp16's first loss scale, a power of two (the scale then moves by
    /// itself, and a checkpoint keeps where it stands).
    pub loss_scale: f32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            preset: "small".into(),
            batch: 64,
            steps: None,
            epochs: 1,
            seed: 1,
            run_dir: None,
            init: None,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 0.0005,
            schedule: Schedule::default(),
            checkpoint_every: 0,
            keep: 3,
            data: None,
            workers: 0,
            strict: false,
            train_images: 10_000,
            val_images: 1_000,
            log_every: 10,
            quiet: false,
            loss_scale: LossScale::INITIAL,
        }
    }
}

impl TrainConfig {
    /// Reads a TOML configuration file, missing keys taking the defaults,
    /// and checks its values.
    pub fn from_file(path: &Path) -> Result<TrainConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let file = |message: String| Error::File {
            path: path.to_path_buf(),
            message,
        };
        let config: TrainConfig = toml::from_str(&text).map_err(|e| file(e.message().into()))?;
        config.validate().map_err(|e| file(e.to_string()))?;
        Ok(config)
    }

    /// The settings that differ from `saved`, as `key old -> new`, for a resumed run.
    pub fn changes_from(&self, saved: &TrainConfig) -> Vec<String> {
        let table =
            |c: &TrainConfig| toml::from_str::<toml::Table>(&c.to_toml()).unwrap_or_default();
        let (old, new) = (table(saved), table(self));
        let show = |v: Option<&toml::Value>| v.map_or_else(|| "(none)".into(), |v| v.to_string());
        let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|k| old.get(*k) != new.get(*k))
            .map(|k| format!("{k} {} -> {}", show(old.get(k)), show(new.get(k))))
            .collect()
    }

    /// The configuration as TOML, as saved with the run.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the configuration serializes")
    }

    /// Image-decoding threads to start.
    pub fn worker_threads(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            crate::data::loader::default_workers()
        }
    }

    /// Checks values no run can use, naming the flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |flag: &str, value: &dyn std::fmt::Display, why: &str| {
            Err(Error::Input(format!("--{flag} {value}: {why}")))
        };
        if self.batch == 0 || self.batch > MAX_BATCH as usize {
            return bad("batch", &self.batch, &format!("must be in 1..={MAX_BATCH}"));
        }
        if self.epochs == 0 && self.steps.is_none() {
            return bad("epochs", &self.epochs, "must be at least 1");
        }
        if self.steps == Some(0) {
            return bad("steps", &0, "must be at least 1");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", &self.lr, "must be a positive number");
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad("momentum", &self.momentum, "must be in [0, 1)");
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad("weight-decay", &self.weight_decay, "must be 0 or more");
        }
        if self.keep == 0 {
            return bad("keep", &0, "must be at least 1");
        }
        if self.workers > MAX_WORKERS as usize {
            return bad("workers", &self.workers, &format!("at most {MAX_WORKERS}"));
        }
        for (flag, value) in [
            ("train-images", self.train_images),
            ("val-images", self.val_images),
        ] {
            if value > MAX_IMAGES {
                return bad(flag, &value, &format!("at most {MAX_IMAGES}"));
            }
        }
        self.schedule
            .validate(self.lr)
            .map_err(|why| Error::Input(format!("--schedule: {why}")))?;
        let power_of_two = |v: f32| v.is_finite() && v >= 1.0 && (v.to_bits() & 0x007f_ffff) == 0;
        if !power_of_two(self.loss_scale) || self.loss_scale > LossScale::LARGEST {
            return bad(
                "loss-scale",
                &self.loss_scale,
                "must be a power of two from 1 to 2^64",
            );
        }
        if self.log_every == 0 {
            return bad("log-every", &0, "must be at least 1");
        }
        if self.data.is_none() && self.train_images < self.batch {
            return bad(
                "train-images",
                &self.train_images,
                &format!("is smaller than --batch {}", self.batch),
            );
        }
        if self.val_images == 0 {
            return bad("val-images", &0, "must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_round_trips_and_fills_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(
            &path,
            "batch = 32\nlr = 0.02\n[schedule]\nkind = \"cosine\"\nmin_lr = 0.0001\n",
        )
        .unwrap();
        let config = TrainConfig::from_file(&path).unwrap();
        assert_eq!(config.batch, 32);
        assert_eq!(config.lr, 0.02);
        assert_eq!(config.schedule, Schedule::Cosine { min_lr: 0.0001 });
        assert_eq!(config.momentum, 0.9);
        let again: TrainConfig = toml::from_str(&config.to_toml()).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "batchsize = 32\n").unwrap();
        let e = TrainConfig::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("bad.toml") && e.contains("batchsize"), "{e}");
        let config = TrainConfig {
            momentum: 1.5,
            ..TrainConfig::default()
        };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "--momentum 1.5: must be in [0, 1)"
        );
        std::fs::write(
            &path,
            "[schedule]\nkind = \"step\"\nevery = 0\ngamma = 0.1\n",
        )
        .unwrap();
        let e = TrainConfig::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("bad.toml") && e.contains("every = 0"), "{e}");
    }

    #[test]
    fn changes_name_each_key_that_differs() {
        let saved = TrainConfig::default();
        let now = TrainConfig {
            lr: 0.5,
            quiet: true,
            ..saved.clone()
        };
        assert_eq!(
            now.changes_from(&saved),
            vec![
                "lr 0.01 -> 0.5".to_string(),
                "quiet false -> true".to_string()
            ]
        );
    }
}
