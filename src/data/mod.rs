//! Where batches come from: the built-in synthetic set, or images on disk
//! (ImageNet-style folders, Fashion-MNIST) decoded, augmented and batched
//! ahead of the trainer by the loader.

pub mod augment;
pub mod bench;
pub mod decode;
pub mod input;
pub mod loader;
pub mod sets;
pub mod shards;
pub mod stats;
pub mod stream;
pub mod synthetic;

use crate::error::Result;
use augment::Pipeline;
use loader::{LoadedBatch, Loader, Mode};
use sets::Dataset;
use std::sync::Arc;
use synthetic::Synthetic;

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

/// Batches ahead of the trainer.
pub type Batches = Box<dyn Iterator<Item = Result<LoadedBatch>>>;

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
        batch: usize,
        first: usize,
        count: usize,
        seed: u64,
        epoch: usize,
    ) -> Batches {
        let lists: Vec<Vec<usize>> = (first..count)
            .map(|b| order[b * batch..][..batch].to_vec())
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

    /// The whole validation set in batches of `batch`, centre crops.
    pub fn val_batches(&self, batch: usize) -> Batches {
        let indices: Vec<usize> = (0..self.val_len()).collect();
        let lists = indices.chunks(batch).map(<[usize]>::to_vec).collect();
        self.batches(lists, Mode::Centre, false)
    }

    fn batches(&self, lists: Vec<Vec<usize>>, mode: Mode, training: bool) -> Batches {
        match self {
            TrainingData::Synthetic { train, val } => {
                let set = if training { train.clone() } else { val.clone() };
                let batches = lists.into_iter().map(move |indices| {
                    let (images, labels) = set.batch(&indices);
                    Ok(LoadedBatch {
                        images: images.into(),
                        labels,
                        skipped: Vec::new(),
                    })
                });
                stream::prefetched(batches, 2)
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
    pub fn describe(&self) -> serde_json::Value {
        match self {
            TrainingData::Synthetic { train, val } => serde_json::json!({
                "kind": "synthetic",
                "train_images": train.len,
                "val_images": val.len,
            }),
            TrainingData::Images {
                dataset, pipeline, ..
            } => serde_json::json!({
                "kind": dataset.kind,
                "path": dataset.root,
                "train_images": dataset.train.len(),
                "val_images": dataset.val.len(),
                "pipeline": **pipeline,
            }),
        }
    }
}
