//! Checkpoints that survive anything. Each is a folder
//! `checkpoints/step-NNNNNNNN/` holding
//! - `weights.safetensors`: the single-device twin's parameters, named and
//!   shaped as docs/network.md gives them (`conv1.weight` [96, 3, 11, 11] …), so a PyTorch
//!   `groups=2` AlexNet loads them directly;
//! - `state.safetensors`: the momentum of every parameter under the same
//!   names, and the run's metadata ([`RunState`]) as JSON in the header.
//!
//! A checkpoint is written into `step-NNNNNNNN.tmp/`, each file fsynced,
//! then the folder renamed into place and its parent fsynced: a crash at any
//! moment leaves either the whole checkpoint or none (leftover `.tmp`
//! folders are ignored and removed by the next save). The last `keep` and
//! the best by validation top-1 are kept.

use crate::data::DataRecord;
use crate::device::precision::LossScale;
use crate::error::{Error, Result};
use crate::net::params::TwinTensor;
use crate::net::spec::NetSpec;
use crate::train::schedule::ScheduleState;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Checkpoint layout version.
pub const FORMAT: u32 = 1;

/// Everything besides tensors that resuming, evaluating and predicting need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub format: u32,
    /// The network, whole (LRN constants included): a checkpoint needs no preset file.
    pub spec: NetSpec,
    /// Training steps done.
    pub step: usize,
    /// Epochs begun (the step's epoch, 0-based).
    pub epoch: usize,
    /// Images of the current epoch's order already consumed.
    pub data_position: usize,
    /// Every random stream (data order, dropout masks) derives from the seed
    /// and the step by a counter-based hash: this is the whole RNG state.
    pub seed: u64,
    pub schedule: ScheduleState,
    /// The rate of the last step.
    pub lr: f32,
    /// Class names in label order.
    pub classes: Vec<String>,
    /// The dataset and its statistics (mean, PCA lighting), when it has any.
    pub dataset: DataRecord,
    /// Validation top-1 and top-5 at this step, when measured.
    pub val_top1: Option<f64>,
    pub val_top5: Option<f64>,
    /// fp16's dynamic loss scale at this step, so that a resume goes on
    /// exactly; absent at other precisions (and in older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<LossScale>,
}

/// A checkpoint in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub state: RunState,
    pub weights: Vec<TwinTensor>,
    pub momentum: Vec<TwinTensor>,
}

const STATE_KEY: &str = "alexnet";

fn serialize(tensors: &[TwinTensor], metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            TensorView::new(Dtype::F32, t.shape.clone(), b)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| Error::Training(format!("tensor {}: {e}", t.name)))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::Training(format!("serializing a checkpoint: {e}")))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create(path).map_err(|e| Error::io(path, e))?;
    file.write_all(bytes).map_err(|e| Error::io(path, e))?;
    file.sync_all().map_err(|e| Error::io(path, e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// The folder name of the checkpoint after `step` steps.
pub fn folder_name(step: usize) -> String {
    format!("step-{step:08}")
}

/// Writes `ckpt` under `dir` (a run's `checkpoints/`), atomically; then
/// keeps the newest `keep` and the best by validation top-1, removing the
/// rest and any half-written leftovers. Returns the checkpoint's folder.
pub fn save(dir: &Path, ckpt: &Checkpoint, keep: usize) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = folder_name(ckpt.state.step);
    let (tmp, done) = (dir.join(format!("{name}.tmp")), dir.join(&name));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let pt = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_synced(
        &tmp.join("weights.safetensors"),
        &serialize(&ckpt.weights, pt)?,
    )?;
    let state = serde_json::to_string(&ckpt.state).expect("run state serializes");
    let meta = HashMap::from([(STATE_KEY.to_string(), state)]);
    write_synced(
        &tmp.join("state.safetensors"),
        &serialize(&ckpt.momentum, meta)?,
    )?;
    sync_dir(&tmp)?;
    if done.exists() {
        std::fs::remove_dir_all(&done).map_err(|e| Error::io(&done, e))?;
    }
    std::fs::rename(&tmp, &done).map_err(|e| Error::io(&done, e))?;
    sync_dir(dir)?;
    prune(dir, keep)?;
    Ok(done)
}

/// Complete checkpoints under `dir`, oldest first, as (step, folder).
pub fn list(dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let step = path
                .file_name()?
                .to_str()?
                .strip_prefix("step-")?
                .parse()
                .ok()?;
            Some((step, path))
        })
        .collect();
    found.sort();
    Ok(found)
}

fn prune(dir: &Path, keep: usize) -> Result<()> {
    let all = list(dir)?;
    let best = all
        .iter()
        .filter_map(|(step, path)| Some((read_state(path).ok()?.val_top1?, *step)))
        .max_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
        .map(|(_, step)| step);
    let newest = all.len().saturating_sub(keep.max(1));
    for (i, (step, path)) in all.iter().enumerate() {
        if i < newest && Some(*step) != best {
            std::fs::remove_dir_all(path).map_err(|e| Error::io(path, e))?;
        }
    }
    for entry in std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "tmp") {
            std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

fn bad(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.to_path_buf(),
        message: format!("not a readable checkpoint file: {why}"),
    }
}

fn tensors(path: &Path, bytes: &[u8]) -> Result<Vec<TwinTensor>> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| bad(path, e))?;
    let mut out: Vec<TwinTensor> = file
        .iter()
        .map(|(name, view)| {
            if view.dtype() != Dtype::F32 {
                return Err(bad(path, format!("{name} is {:?}, not F32", view.dtype())));
            }
            let data = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Ok(TwinTensor {
                name: name.to_string(),
                shape: view.shape().to_vec(),
                data,
            })
        })
        .collect::<Result<_>>()?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn read_state(folder: &Path) -> Result<RunState> {
    let path = folder.join("state.safetensors");
    let bytes = read_file(&path)?;
    let (_, metadata) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(&path, e))?;
    let json = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATE_KEY))
        .ok_or_else(|| bad(&path, "no run state in its header"))?;
    let state: RunState = serde_json::from_str(json).map_err(|e| bad(&path, e))?;
    if state.format != FORMAT {
        return Err(bad(
            &path,
            format!("format {} (this build reads {FORMAT})", state.format),
        ));
    }
    Ok(state)
}

/// Reads the checkpoint folder `folder`.
pub fn load_folder(folder: &Path) -> Result<Checkpoint> {
    let state = read_state(folder)?;
    let weights_path = folder.join("weights.safetensors");
    let weights = tensors(&weights_path, &read_file(&weights_path)?)?;
    let state_path = folder.join("state.safetensors");
    let momentum = tensors(&state_path, &read_file(&state_path)?)?;
    for (path, set) in [(&weights_path, &weights), (&state_path, &momentum)] {
        if let Some(t) = set.iter().find(|t| t.data.iter().any(|v| !v.is_finite())) {
            return Err(bad(
                path,
                format!("{} holds NaN or infinite values", t.name),
            ));
        }
    }
    Ok(Checkpoint {
        state,
        weights,
        momentum,
    })
}

/// Reads a checkpoint given as its folder, a run's `checkpoints/` folder or
/// a run folder (then the newest readable one).
pub fn load(path: &Path) -> Result<(PathBuf, Checkpoint)> {
    if path.join("state.safetensors").exists() {
        return load_folder(path).map(|c| (path.to_path_buf(), c));
    }
    let dir = if path.join("checkpoints").is_dir() {
        path.join("checkpoints")
    } else {
        path.to_path_buf()
    };
    if !dir.exists() {
        return Err(Error::Input(format!(
            "{}: no such checkpoint or run",
            path.display()
        )));
    }
    let mut last_error = None;
    for (_, folder) in list(&dir)?.into_iter().rev() {
        match load_folder(&folder) {
            Ok(c) => {
                if let Some(e) = &last_error {
                    eprintln!(
                        "warning: passing over a newer checkpoint ({e}); using {}",
                        folder.display()
                    );
                }
                return Ok((folder, c));
            }
            Err(e) => {
                if let Some(newer) = &last_error {
                    eprintln!("warning: passing over a newer checkpoint ({newer})");
                }
                last_error = Some(e)
            }
        }
    }
    Err(last_error
        .unwrap_or_else(|| Error::Input(format!("{}: holds no checkpoint", path.display()))))
}

/// Orders `tensors` as `reference` names them (the plan's twin order).
pub fn in_order(
    tensors: Vec<TwinTensor>,
    reference: &[(String, Vec<usize>)],
    origin: &Path,
) -> Result<Vec<TwinTensor>> {
    let mut by_name: HashMap<String, TwinTensor> =
        tensors.into_iter().map(|t| (t.name.clone(), t)).collect();
    reference
        .iter()
        .map(|(name, shape)| {
            let t = by_name
                .remove(name)
                .ok_or_else(|| bad(origin, format!("{name} is missing")))?;
            if &t.shape != shape {
                return Err(bad(
                    origin,
                    format!("{name} has shape {:?}, the net wants {shape:?}", t.shape),
                ));
            }
            Ok(t)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::init::init_twin;
    use crate::net::plan::Plan;
    use crate::net::spec::InitScheme;

    fn sample(step: usize, val_top1: Option<f64>) -> Checkpoint {
        let plan = Plan::load("small").unwrap();
        let weights = init_twin(&plan, InitScheme::He, step as u64);
        let momentum = init_twin(&plan, InitScheme::He, 100 + step as u64);
        Checkpoint {
            state: RunState {
                format: FORMAT,
                spec: plan.spec.clone(),
                step,
                epoch: 0,
                data_position: 64 * step,
                seed: 1,
                schedule: ScheduleState::new(0.01),
                lr: 0.01,
                classes: vec!["a".into(); 10],
                dataset: crate::data::DataRecord {
                    kind: crate::data::SYNTHETIC.into(),
                    path: None,
                    train_images: 640,
                    val_images: 64,
                    pipeline: None,
                },
                val_top1,
                val_top5: None,
                loss_scale: None,
            },
            weights,
            momentum,
        }
    }

    fn sorted(mut t: Vec<TwinTensor>) -> Vec<TwinTensor> {
        t.sort_by(|a, b| a.name.cmp(&b.name));
        t
    }

    #[test]
    fn a_checkpoint_reads_back_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = sample(7, Some(0.5));
        let folder = save(dir.path(), &ckpt, 3).unwrap();
        let back = load_folder(&folder).unwrap();
        assert_eq!(back.state, ckpt.state);
        assert_eq!(back.weights, sorted(ckpt.weights.clone()));
        assert_eq!(back.momentum, sorted(ckpt.momentum.clone()));
        // The weights file holds exactly the twin's tensors, names and shapes.
        let plan = Plan::load("small").unwrap();
        let names: Vec<_> = crate::net::params::twin_shapes(&plan);
        assert_eq!(
            in_order(back.weights, &names, &folder).unwrap(),
            ckpt.weights
        );
    }

    #[test]
    fn keeps_the_newest_and_the_best_and_sweeps_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("step-00000099.tmp")).unwrap();
        for (step, top1) in [(1, 0.2), (2, 0.9), (3, 0.3), (4, 0.4), (5, 0.1)] {
            save(dir.path(), &sample(step, Some(top1)), 2).unwrap();
        }
        let steps: Vec<usize> = list(dir.path())
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(steps, vec![2, 4, 5]);
        assert!(!dir.path().join("step-00000099.tmp").exists());
        let (folder, newest) = load(dir.path()).unwrap();
        assert_eq!(newest.state.step, 5);
        assert!(folder.ends_with("step-00000005"));
    }

    #[test]
    fn a_damaged_newest_checkpoint_falls_back_to_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &sample(1, None), 3).unwrap();
        let second = save(dir.path(), &sample(2, None), 3).unwrap();
        std::fs::write(second.join("weights.safetensors"), b"garbage").unwrap();
        assert!(load_folder(&second).is_err());
        assert_eq!(load(dir.path()).unwrap().1.state.step, 1);
    }

    #[test]
    fn non_finite_weights_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut ckpt = sample(3, None);
        ckpt.weights[0].data[5] = f32::NAN;
        let name = ckpt.weights[0].name.clone();
        let folder = save(dir.path(), &ckpt, 3).unwrap();
        let e = load_folder(&folder).unwrap_err().to_string();
        assert!(
            e.contains("weights.safetensors") && e.contains(&name),
            "{e}"
        );
        assert!(e.contains("NaN or infinite"), "{e}");
    }
}
