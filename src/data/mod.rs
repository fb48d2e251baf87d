//! Where batches come from: the built-in synthetic set, or images on disk
//! (ImageNet-style folders, Fashion-MNIST) decoded, augmented and batched
//! ahead of the trainer by the loader.

pub mod augment;
pub mod bench;
pub mod decode;
pub mod flip;
pub mod image_set;
pub mod input;
pub mod loader;
pub mod sets;
pub mod shards;
pub mod stats;
pub mod stream;
pub mod synthetic;

use crate::error::{Error, Result};
use augment::Pipeline;
use loader::{LoadedBatch, Loader, Mode};

pub use loader::Batches;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub use image_set::{Dataset, ImageSet};
use std::path::PathBuf;
use std::sync::Arc;
use synthetic::Synthetic;

/// Opens the dataset at `path`: shards made by `alexnet prepare` (an
/// `index.json`), a folder holding Fashion-MNIST's
/// `train-images-idx3-ubyte(.gz)` and friends, or a folder with `train/` and `val/`.
pub fn open(path: &Path) -> Result<Dataset> {
    if !path.is_dir() {
        return Err(Error::Input(format!(
            "--data {}: no such folder (give an ImageNet-style folder with train/ and val/, or Fashion-MNIST's folder)",
            path.display()
        )));
    }
    if shards::is_shards(path) {
        return shards::open(path);
    }
    if sets::find_idx(path, "train-images-idx3-ubyte").is_some() {
        return sets::fashion(path);
    }
    sets::folders(path)
}

/// Synthetic batches drawn ahead of the trainer.
const PREFETCH: usize = 2;

/// The data of a training run.
pub enum TrainingData {
    Synthetic {
        train: Synthetic,
        val: Synthetic,
    },
    Images {
        dataset: Dataset,
        pipeline: Arc<Pipeline>,
        /// Decoding threads, and whether an unreadable image stops the run.
        workers: usize,
        strict: bool,
    },
}

/// Which part of every batch this process loads: in a run over several
/// nodes, node `index` of `count` loads the `index`-th of `count`
/// consecutive slices of each batch's images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub index: usize,
    pub count: usize,
}

impl Part {
    /// The whole of every batch.
    pub const WHOLE: Part = Part { index: 0, count: 1 };

    /// This part of `list`: from `index·n/count` to `(index+1)·n/count`.
    pub fn of(&self, list: &[usize]) -> Vec<usize> {
        let n = list.len();
        list[self.index * n / self.count..(self.index + 1) * n / self.count].to_vec()
    }
}

impl TrainingData {
    pub fn train_len(&self) -> usize {
        match self {
            TrainingData::Synthetic { train, .. } => train.len,
            TrainingData::Images { dataset, .. } => dataset.train.len(),
        }
    }

    pub fn classes(&self) -> Vec<String> {
        match self {
            TrainingData::Synthetic { .. } => {
                synthetic::CLASSES.iter().map(|c| c.to_string()).collect()
            }
            TrainingData::Images { dataset, .. } => dataset.classes.clone(),
        }
    }

    /// The training batches of `epoch` from its batch `first` on, in the
    /// order `order` gives.
    pub fn train_batches(
        &self,
        order: &[usize],
        (batch, part): (usize, Part),
        first: usize,
        count: usize,
        seed: u64,
        epoch: usize,
    ) -> Batches {
        let lists: Vec<Vec<usize>> = (first..count)
            .map(|b| part.of(&order[b * batch..][..batch]))
            .collect();
        self.batches(lists, Mode::Train { seed, epoch }, true)
    }

    /// Images in the validation set.
    pub fn val_len(&self) -> usize {
        match self {
            TrainingData::Synthetic { val, .. } => val.len,
            TrainingData::Images { dataset, .. } => dataset.val.len(),
        }
    }

    /// The whole validation set in batches of `batch`, centre crops (of
    /// each batch, `part`).
    pub fn val_batches(&self, batch: usize, part: Part) -> Batches {
        let indices: Vec<usize> = (0..self.val_len()).collect();
        let lists = indices.chunks(batch).map(|b| part.of(b)).collect();
        self.batches(lists, Mode::Centre, false)
    }

    fn batches(&self, lists: Vec<Vec<usize>>, mode: Mode, training: bool) -> Batches {
        match self {
            TrainingData::Synthetic { train, val } => {
                let set = if training { train.clone() } else { val.clone() };
                // The batches ahead, the trainer's and one being drawn.
                let pool = input::Pool::new(PREFETCH + 4);
                let batches = lists.into_iter().map(move |indices| {
                    let (images, labels) = set.pooled_batch(&indices, &pool);
                    Ok(LoadedBatch {
                        images: input::Images::F32(images),
                        labels,
                        skipped: Vec::new(),
                    })
                });
                loader::prefetched(batches, PREFETCH)
            }
            TrainingData::Images {
                dataset,
                pipeline,
                workers,
                strict,
            } => {
                let set = if training {
                    Arc::clone(&dataset.train)
                } else {
                    Arc::clone(&dataset.val)
                };
                Box::new(Loader::start(
                    set,
                    Arc::clone(pipeline),
                    mode,
                    lists,
                    *workers,
                    2 * *workers,
                    *strict,
                ))
            }
        }
    }

    /// What a checkpoint records of the data.
    pub fn describe(&self) -> DataRecord {
        match self {
            TrainingData::Synthetic { train, val } => DataRecord {
                kind: SYNTHETIC.into(),
                path: None,
                train_images: train.len,
                val_images: val.len,
                pipeline: None,
            },
            TrainingData::Images {
                dataset, pipeline, ..
            } => DataRecord {
                kind: dataset.kind.clone(),
                path: Some(dataset.root.clone()),
                train_images: dataset.train.len(),
                val_images: dataset.val.len(),
                pipeline: Some(**pipeline),
            },
        }
    }
}

/// [`DataRecord::kind`] of the built-in synthetic set.
pub const SYNTHETIC: &str = "synthetic";

/// What a checkpoint records of the data it was trained on: enough to
/// evaluate on the same data, and to refuse resuming on other data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataRecord {
    /// `synthetic`, or the dataset in words (`folders at PATH`, ...).
    pub kind: String,
    /// The dataset's folder; none for the synthetic set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    pub train_images: usize,
    pub val_images: usize,
    /// The preprocessing (sizes, mean, PCA lighting); none for the synthetic set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<Pipeline>,
}

impl DataRecord {
    /// Whether this is the built-in synthetic set.
    pub fn is_synthetic(&self) -> bool {
        self.kind == SYNTHETIC
    }

    /// The first way `other` is not this data, in words; `None` when it is
    /// the same (its folder may have moved).
    pub fn difference(&self, other: &DataRecord) -> Option<String> {
        if self.is_synthetic() != other.is_synthetic() {
            return Some(format!("{} instead of {}", other.kind, self.kind));
        }
        if self.train_images != other.train_images {
            return Some(format!(
                "{} training images instead of {}",
                other.train_images, self.train_images
            ));
        }
        (self.val_images != other.val_images).then(|| {
            format!(
                "{} validation images instead of {}",
                other.val_images, self.val_images
            )
        })
    }
}
