//! Everything a run checks and builds before its first step: the run
//! folder, the data, the starting weights, and (on resume) that the run
//! goes on with the batch, seed and data it was saved with.

use super::checkpoint::{self, Checkpoint, RunState};
use super::config::TrainConfig;
use super::schedule::ScheduleState;
use crate::data::augment::{Pipeline, Stats};
use crate::data::synthetic::{Split, Synthetic};
use crate::data::{self, TrainingData, stats};
use crate::device::precision::Precision;
use crate::error::{Error, Result};
use crate::net::init::init_twin;
use crate::net::params::{TwinTensor, twin_shapes};
use crate::net::plan::Plan;
use crate::nodes::{NodeSpec, Nodes};
use crate::placement::Placement;
use crate::replicas::Replicas;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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

/// Refuses a run folder that is a file or already holds a run (a
/// checkpoint, or metrics of at least one step).
pub fn check_run_dir(dir: &Path) -> Result<()> {
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

/// Makes the run folder and writes `config.toml` into it (through a
/// temporary file, so a crash leaves the old one or the new one).
pub fn create_run_dir(dir: &Path, config: &TrainConfig) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join("config.toml");
    let tmp = dir.join("config.toml.tmp");
    std::fs::write(&tmp, config.to_toml()).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}

/// A checkpoint a run goes on from: its metadata, its folder, and its
/// weights and momentum in the single-device twin's order.
pub struct Resumed {
    pub state: RunState,
    pub folder: PathBuf,
    pub weights: Vec<TwinTensor>,
    pub momentum: Vec<TwinTensor>,
}

impl Resumed {
    /// Takes `ckpt`'s tensors (moved, not copied) into the twin's order;
    /// `checkpoints` is the run's checkpoint folder.
    pub fn new(ckpt: Checkpoint, plan: &Plan, checkpoints: &Path) -> Result<Resumed> {
        let folder = checkpoints.join(checkpoint::folder_name(ckpt.state.step));
        let shapes = twin_shapes(plan);
        Ok(Resumed {
            weights: checkpoint::in_order(ckpt.weights, &shapes, &folder)?,
            momentum: checkpoint::in_order(ckpt.momentum, &shapes, &folder)?,
            state: ckpt.state,
            folder,
        })
    }
}

/// A fresh run's weights (the single-device twin's tensors), initialized
/// from the seed (paper §5), and its schedule.
pub fn fresh_weights(plan: &Plan, config: &TrainConfig) -> (Vec<TwinTensor>, ScheduleState) {
    let init = config.init.unwrap_or(plan.spec.init);
    (
        init_twin(plan, init, config.seed),
        ScheduleState::new(config.lr),
    )
}

/// Refuses to resume a run with another seed, batch or data set: each
/// changes which images and dropout masks the remaining steps would see, so
/// the run would no longer be the one that was saved.
pub fn check_resume(saved: &RunState, config: &TrainConfig, data: &TrainingData) -> Result<()> {
    if config.seed != saved.seed {
        return Err(Error::Input(format!(
            "--seed {}: the run was saved with seed {}, which orders its data and draws its dropout masks; \
             resume with its seed, or start a new run",
            config.seed, saved.seed
        )));
    }
    if let Some(why) = saved.dataset.difference(&data.describe()) {
        return Err(Error::Input(format!(
            "--data: the run was trained on {} ({} training images); this data has {why}",
            saved.dataset.kind, saved.dataset.train_images
        )));
    }
    let steps_per_epoch = (data.train_len() / config.batch).max(1);
    let (epoch, position) = (
        saved.step / steps_per_epoch,
        (saved.step % steps_per_epoch) * config.batch,
    );
    if (epoch, position) != (saved.epoch, saved.data_position) {
        return Err(Error::Input(format!(
            "--batch {}: the run was saved at image {} of epoch {}, where batch {} would put step {} \
             at image {position} of epoch {}; resume with the batch it was saved with",
            config.batch,
            saved.data_position,
            saved.epoch + 1,
            config.batch,
            saved.step,
            epoch + 1
        )));
    }
    Ok(())
}

/// The run's data: the synthetic set, or the dataset at `config.data` with
/// its colour statistics (paper §4.1), announced on `out`.
pub fn training_data(
    config: &TrainConfig,
    plan: &Plan,
    out: &mut dyn Write,
) -> Result<TrainingData> {
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
            let dataset = data::open(path)?;
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
    if data.train_len() < config.batch {
        return Err(Error::Input(format!(
            "--batch {}: the training set has only {} images",
            config.batch,
            data.train_len()
        )));
    }
    Ok(data)
}

/// This node's replicas on `placements`, from `weights` at `first_step`,
/// after joining the other nodes when `nodes` names a run over several
/// (`stop` ends that wait).
pub fn start_towers(
    config: &TrainConfig,
    (placements, nodes, stop): (&[Placement], Option<&NodeSpec>, &AtomicBool),
    (plan, data): (&Arc<Plan>, &TrainingData),
    (first_step, weights): (usize, Vec<TwinTensor>),
) -> Result<(Replicas, Option<Arc<Nodes>>)> {
    let nodes = nodes
        .map(|spec| {
            let start = (first_step, &weights[..]);
            join_nodes((spec, stop), config, data, start, placements).map(Arc::new)
        })
        .transpose()?;
    let towers = Replicas::new(
        placements,
        Arc::clone(plan),
        config.batch,
        &weights,
        nodes.clone(),
    )?;
    Ok((towers, nodes))
}

/// Joins the run of several nodes `spec` names, on `placements` here:
/// every node must run the same configuration on the same data from the
/// same step and weights, and as many replicas, or node 0 refuses it.
pub fn join_nodes(
    (spec, stop): (&NodeSpec, &AtomicBool),
    config: &TrainConfig,
    data: &TrainingData,
    (first_step, weights): (usize, &[TwinTensor]),
    placements: &[Placement],
) -> Result<Nodes> {
    let local = TrainConfig {
        run_dir: None,
        data: None,
        workers: 0,
        quiet: false,
        ..config.clone()
    };
    let record = data.describe();
    let mut crc = crc32fast::Hasher::new();
    for tensor in weights {
        crc.update(tensor.name.as_bytes());
        for v in &tensor.data {
            crc.update(&v.to_le_bytes());
        }
    }
    let kind = if placements.iter().any(Placement::is_gpu) {
        "pairs of GPUs"
    } else {
        "CPU"
    };
    let fingerprint = format!(
        "{}data kind = {}\ntraining images = {}\nvalidation images = {}\nfirst step = {first_step}\n\
         starting weights crc32 = {:08x}\nreplicas per node = {}\ndevice = {kind}\nprecision = {:?}\n",
        local.to_toml(),
        record.kind,
        record.train_images,
        record.val_images,
        crc.finalize(),
        placements.len(),
        placements
            .first()
            .map_or(Precision::Fp32, |p| p.precision()),
    );
    let timeout = crate::watch::timeout()?;
    let alive = || {
        if stop.load(Ordering::SeqCst) {
            return Err(Error::Training(
                "stopped by a signal while waiting for the other nodes".into(),
            ));
        }
        Ok(())
    };
    Nodes::join(
        spec.clone(),
        &fingerprint,
        || Replicas::handout(placements),
        (JOIN_WAITS * timeout, timeout),
        &alive,
    )
}

/// How many tower timeouts a node waits at the start for the others (they
/// may still be computing the colour statistics of their data).
const JOIN_WAITS: u32 = 5;
