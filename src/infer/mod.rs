//! Using what a run learned: evaluation and prediction from a checkpoint.
//! The checkpoint carries the whole network, so no preset is needed.

pub mod predict;

use crate::data::ImageSet;
use crate::data::augment::Pipeline;
use crate::data::decode::decode;
use crate::data::input::Images;
use crate::data::loader::{Loader, Mode};
use crate::data::synthetic::{Split, Synthetic};
use crate::error::{Error, Result};
use crate::net::params::twin_shapes;
use crate::net::plan::Plan;
use crate::placement::Placement;
use crate::progress::Progress;
use crate::towers::{Batch, TowerPair};
use crate::train::checkpoint::{self, RunState};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A trained net, loaded and ready.
pub struct Model {
    pub plan: Arc<Plan>,
    pub towers: TowerPair,
    pub state: RunState,
    /// The checkpoint folder it came from.
    pub folder: PathBuf,
}

/// Accuracy over a set.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Evaluation {
    pub images: usize,
    pub loss: f64,
    pub top1: f64,
    pub top5: f64,
}

impl Model {
    /// Loads a checkpoint (its folder, or a run folder for the newest) onto `placement`.
    pub fn load(path: &Path, placement: Placement, batch: usize) -> Result<Model> {
        let (folder, ckpt) = checkpoint::load(path)?;
        let plan = Arc::new(Plan::new(ckpt.state.spec.clone())?);
        crate::limits::check_fits(&plan, batch, placement)?;
        let weights = checkpoint::in_order(ckpt.weights, &twin_shapes(&plan), &folder)?;
        let towers = TowerPair::new(placement, Arc::clone(&plan), batch, &weights)?;
        Ok(Model {
            plan,
            towers,
            state: ckpt.state,
            folder,
        })
    }

    /// Elements of one input image.
    pub fn image_len(&self) -> usize {
        self.plan.input.len()
    }

    /// Logits, `[image][class]`, of `images` (each [`Model::image_len`]
    /// values, CHW), evaluated in batches of `batch` with dropout off.
    pub fn logits(&self, images: &[f32], batch: usize) -> Result<Vec<f32>> {
        let len = self.image_len();
        let mut out = Vec::with_capacity(images.len() / len * self.plan.classes());
        for chunk in images.chunks(batch * len) {
            let n = chunk.len() / len;
            self.towers.evaluate(&Batch {
                images: Arc::new(chunk.to_vec().into()),
                labels: Arc::new(vec![0; n]),
            })?;
            out.extend(self.towers.logits()?);
        }
        Ok(out)
    }

    /// Top-1 and top-5 on the validation split of the synthetic set the run
    /// trained with (`images` of it, or as many as the run validated on).
    pub fn evaluate_synthetic(&self, images: Option<usize>, batch: usize) -> Result<Evaluation> {
        let dataset = &self.state.dataset;
        if !dataset.is_synthetic() {
            return Err(Error::Input(format!(
                "--checkpoint {}: was not trained on the synthetic set; give its data with --data",
                self.folder.display()
            )));
        }
        let count = images.unwrap_or(dataset.val_images);
        crate::limits::check_count("--images", count, crate::limits::MAX_IMAGES)?;
        let input = &self.plan.spec.input;
        let set = Synthetic::new(
            self.state.seed,
            Split::Validation,
            count,
            input.channels,
            input.size,
        );
        let mut eval = Evaluation {
            images: 0,
            loss: 0.0,
            top1: 0.0,
            top5: 0.0,
        };
        let mut progress = Progress::new("eval", "images", count, false);
        for first in (0..count).step_by(batch) {
            let chunk: Vec<usize> = (first..count.min(first + batch)).collect();
            let (pixels, labels) = set.batch(&chunk);
            let stats = self.towers.evaluate(&Batch {
                images: Arc::new(pixels.into()),
                labels: Arc::new(labels),
            })?;
            eval.images += chunk.len();
            eval.loss += stats.loss_sum;
            eval.top1 += stats.top1 as f64;
            eval.top5 += stats.top5 as f64;
            progress.add(chunk.len());
        }
        progress.finish();
        let n = eval.images.max(1) as f64;
        eval.loss /= n;
        eval.top1 /= n;
        eval.top5 /= n;
        Ok(eval)
    }
}

impl Model {
    /// The preprocessing the run trained with, when it trained on images.
    pub fn pipeline(&self) -> Result<Pipeline> {
        self.state.dataset.pipeline.ok_or_else(|| {
                Error::Input(format!(
                    "--checkpoint {}: was trained on the synthetic set, not on images; give it .npy batches",
                    self.folder.display()
                ))
            })
    }

    /// Top-1 and top-5 on `set` (or on `images` of it, evenly spaced), on
    /// the centre crop or with the softmax averaged over the ten crops;
    /// unreadable images are left out and named.
    pub fn evaluate_images(
        &self,
        set: Arc<dyn ImageSet>,
        images: Option<usize>,
        ten_crop: bool,
        batch: usize,
        workers: usize,
    ) -> Result<(Evaluation, Vec<(String, String)>)> {
        let pipeline = Arc::new(self.pipeline()?);
        let crops = if ten_crop { 10 } else { 1 };
        let mode = if ten_crop {
            Mode::TenCrop
        } else {
            Mode::Centre
        };
        let len = set.len();
        let count = images.unwrap_or(len);
        if count > len {
            return Err(Error::Input(format!(
                "--images {count}: the validation set has {len} images"
            )));
        }
        let indices: Vec<usize> = (0..count).map(|i| i * len / count).collect();
        let per_batch = (batch / crops).max(1);
        let lists = indices.chunks(per_batch).map(<[usize]>::to_vec).collect();
        let classes = self.plan.classes();
        let mut eval = Evaluation {
            images: 0,
            loss: 0.0,
            top1: 0.0,
            top5: 0.0,
        };
        let mut skipped = Vec::new();
        let mut progress = Progress::new("eval", "images", count, false);
        for loaded in Loader::start(set, pipeline, mode, lists, workers, 2 * workers, false) {
            let loaded = loaded?;
            progress.add(loaded.labels.len() + loaded.skipped.len());
            skipped.extend(loaded.skipped);
            let logits = self.logits(&loaded.images.to_f32(), batch)?;
            for (n, &label) in loaded.labels.iter().enumerate() {
                let mut p = vec![0.0f64; classes];
                for crop in 0..crops {
                    let row = &logits[(n * crops + crop) * classes..][..classes];
                    for (class, prob) in top_k(row, classes) {
                        p[class] += prob / crops as f64;
                    }
                }
                let target = p[label as usize];
                let above = p.iter().filter(|&&v| v > target).count();
                eval.loss -= target.max(f64::MIN_POSITIVE).ln();
                eval.top1 += f64::from(u8::from(above == 0));
                eval.top5 += f64::from(u8::from(above < 5));
                eval.images += 1;
            }
        }
        progress.finish();
        let n = eval.images.max(1) as f64;
        eval.loss /= n;
        eval.top1 /= n;
        eval.top5 /= n;
        Ok((eval, skipped))
    }

    /// The net's input for image files: each file's centre crop.
    pub fn prepare_files(&self, files: &[PathBuf]) -> Result<Vec<f32>> {
        let pipeline = self.pipeline()?;
        let mut resizer = fast_image_resize::Resizer::new();
        let mut out = Vec::with_capacity(files.len() * pipeline.output_len());
        for file in files {
            let bytes = std::fs::read(file).map_err(|e| Error::io(file, e))?;
            let image = decode(&bytes).map_err(|why| Error::File {
                path: file.clone(),
                message: why,
            })?;
            let square = pipeline
                .square(image, &mut resizer)
                .map_err(|why| Error::File {
                    path: file.clone(),
                    message: why,
                })?;
            let mut crop = vec![0; pipeline.output_len()];
            let offsets = pipeline.centre(&square.pixels, &mut crop);
            out.extend(
                Images::U8 {
                    pixels: crop.into(),
                    offsets: offsets.to_vec(),
                }
                .to_f32(),
            );
        }
        Ok(out)
    }
}

/// The `k` most probable classes of one row of logits, with their softmax
/// probabilities, most probable first.
pub fn top_k(logits: &[f32], k: usize) -> Vec<(usize, f64)> {
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
    let sum: f64 = logits.iter().map(|&v| (f64::from(v) - max).exp()).sum();
    let mut ranked: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i, (f64::from(v) - max).exp() / sum))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(k);
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_ranks_by_softmax_probability() {
        let ranked = top_k(&[0.0, 2.0, 1.0, 2.0], 3);
        assert_eq!(
            ranked.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![1, 3, 2]
        );
        let total: f64 = top_k(&[0.0, 2.0, 1.0, 2.0], 4).iter().map(|r| r.1).sum();
        assert!((total - 1.0).abs() < 1e-12);
        let e2 = 2f64.exp();
        assert!((ranked[0].1 - e2 / (1.0 + 2.0 * e2 + 1f64.exp())).abs() < 1e-12);
    }
}
