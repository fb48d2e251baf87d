//! `predict`: each input's five most probable classes, as text or JSON
//! lines, and the raw logits as one `.npy` array.

use super::{Model, top_k};
use crate::data::sets;
use crate::error::{Error, Result};
use crate::npy;
use crate::progress::Progress;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// How many classes each prediction names.
const TOP: usize = 5;

/// One `predict` input, read and checked.
pub enum Input {
    /// Image files: one given, or those of a folder.
    Files(Vec<PathBuf>),
    /// An `.npy` batch, already preprocessed.
    Array(npy::Array),
}

impl Input {
    /// Reads an `.npy` batch (refusing other shapes and values that are not
    /// finite), or lists the image files `input` names.
    pub fn read(input: &Path, model: &Model) -> Result<Input> {
        if input.extension().is_none_or(|e| e != "npy") {
            return image_files(input).map(Input::Files);
        }
        let (c, size) = (model.plan.spec.input.channels, model.plan.spec.input.size);
        let array = npy::read(input)?;
        let bad = |message: String| Error::File {
            path: input.to_path_buf(),
            message,
        };
        if array.shape.len() != 4 || array.shape[1..] != [c, size, size] {
            return Err(bad(format!(
                "shape {:?}; the net takes N×{c}×{size}×{size}",
                array.shape
            )));
        }
        if let Some(i) = array.data.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!(
                "value {i} is {}; the net takes finite numbers only",
                array.data[i]
            )));
        }
        Ok(Input::Array(array))
    }

    /// Image files to decode (an `.npy` batch needs none).
    fn files(&self) -> usize {
        match self {
            Input::Files(files) => files.len(),
            Input::Array(_) => 0,
        }
    }
}

/// An image file, or the image files in a folder (sorted).
fn image_files(input: &Path) -> Result<Vec<PathBuf>> {
    if input.is_dir() {
        let files: Vec<PathBuf> = sets::sorted_entries(input)?
            .into_iter()
            .filter(|p| sets::is_image(p))
            .collect();
        if files.is_empty() {
            return Err(Error::Input(format!(
                "{}: no .jpg, .jpeg or .png files",
                input.display()
            )));
        }
        Ok(files)
    } else if input.is_file() {
        Ok(vec![input.to_path_buf()])
    } else {
        Err(Error::Input(format!(
            "{}: no such file or folder",
            input.display()
        )))
    }
}

/// One image's prediction.
pub struct Prediction {
    /// The input it came from.
    pub input: String,
    /// Its row in an `.npy` batch; `None` for an image file.
    pub index: Option<usize>,
    pub logits: Vec<f32>,
}

/// The logits of every image of `inputs` (each read by [`Input::read`]), in
/// order, `batch` images at a time; an error once `stop` is set.
pub fn predict(
    model: &Model,
    inputs: &[(PathBuf, Input)],
    batch: usize,
    stop: &AtomicBool,
) -> Result<Vec<Prediction>> {
    let classes = model.plan.classes();
    let total = inputs.iter().map(|(_, i)| i.files()).sum();
    let mut progress = Progress::new("predict", "images", total, total == 0);
    let mut predictions = Vec::new();
    for (path, input) in inputs {
        match input {
            Input::Files(files) => {
                for chunk in files.chunks(batch) {
                    if stop.load(Ordering::SeqCst) {
                        return Err(Error::Training(
                            "stopped by a signal; nothing written".into(),
                        ));
                    }
                    let out = model.logits(&model.prepare_files(chunk)?, batch)?;
                    for (file, row) in chunk.iter().zip(out.chunks_exact(classes)) {
                        predictions.push(Prediction {
                            input: file.display().to_string(),
                            index: None,
                            logits: row.to_vec(),
                        });
                    }
                    progress.add(chunk.len());
                }
            }
            Input::Array(array) => {
                let out = model.logits(&array.data, batch)?;
                for (i, row) in out.chunks_exact(classes).enumerate() {
                    predictions.push(Prediction {
                        input: path.display().to_string(),
                        index: Some(i),
                        logits: row.to_vec(),
                    });
                }
            }
        }
    }
    progress.finish();
    Ok(predictions)
}

impl Prediction {
    /// The five most probable classes by name, with their probabilities.
    /// Outputs beyond the data's classes were never trained toward: left out.
    pub fn top(&self, class_names: &[String]) -> Vec<(String, f64)> {
        let named = class_names.len().clamp(1, self.logits.len());
        top_k(&self.logits[..named], TOP)
            .into_iter()
            .map(|(k, p)| {
                let name = class_names.get(k).cloned().unwrap_or_else(|| k.to_string());
                (name, p)
            })
            .collect()
    }

    /// `input[index]: class p%, ...`.
    pub fn text(&self, class_names: &[String]) -> String {
        let ranked: Vec<String> = self
            .top(class_names)
            .iter()
            .map(|(n, p)| format!("{n} {:.1}%", 100.0 * p))
            .collect();
        let at = self.index.map_or_else(String::new, |i| format!("[{i}]"));
        format!("{}{at}: {}", self.input, ranked.join(", "))
    }

    /// `{"input", "index", "top5": [{"class", "p"}, ...]}`.
    pub fn json(&self, class_names: &[String]) -> serde_json::Value {
        let top: Vec<serde_json::Value> = self
            .top(class_names)
            .iter()
            .map(|(n, p)| serde_json::json!({"class": n, "p": p}))
            .collect();
        serde_json::json!({"input": self.input, "index": self.index, "top5": top})
    }
}

/// All predictions' logits as one images × classes `.npy` file.
pub fn logits_npy(predictions: &[Prediction], classes: usize) -> Vec<u8> {
    let data: Vec<f32> = predictions
        .iter()
        .flat_map(|p| p.logits.iter().copied())
        .collect();
    npy::encode(&npy::Array {
        shape: vec![data.len() / classes.max(1), classes],
        data,
    })
}
