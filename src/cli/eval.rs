//! `eval`: a checkpoint's loss, top-1 and top-5 on a validation set.

use super::{DeviceArgs, batch_range};
use alexnet::data;
use alexnet::data::loader::default_workers;
use alexnet::error::{Error, Result};
use alexnet::infer::{Evaluation, Model};
use alexnet::limits::MAX_IMAGES;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A checkpoint folder, or a run folder for its newest checkpoint.
    #[arg(long)]
    checkpoint: PathBuf,
    /// `synthetic` (the built-in set the run trained on), or a dataset
    /// folder whose validation images to use.
    #[arg(long, default_value = "synthetic")]
    data: String,
    /// Validation images, evenly spaced over the set [default: all; on
    /// the synthetic set, as many as the run validated on].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_IMAGES as u64))]
    images: Option<u64>,
    /// Average the ten crops of each image (corners, centre, and flips).
    #[arg(long)]
    ten_crop: bool,
    #[arg(long, default_value_t = 64, value_parser = batch_range())]
    batch: u32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

impl EvalArgs {
    pub fn run(self) -> Result<()> {
        let (placement, note) = self.device.placement()?;
        if !self.json {
            println!("{note}");
        }
        let batch = self.batch as usize;
        let model = Model::load(&self.checkpoint, placement, batch)?;
        let eval = self.evaluate(&model, batch)?;
        if self.json {
            println!(
                "{}",
                serde_json::to_string(&eval).expect("an evaluation serializes")
            );
        } else {
            println!(
                "{}: step {}, {} validation images: loss {:.4}, top-1 {:.2}%, top-5 {:.2}%",
                model.folder.display(),
                model.state.step,
                eval.images,
                eval.loss,
                100.0 * eval.top1,
                100.0 * eval.top5
            );
        }
        Ok(())
    }

    /// On the synthetic set, or on the validation images of `--data`.
    fn evaluate(&self, model: &Model, batch: usize) -> Result<Evaluation> {
        let images = self.images.map(|n| n as usize);
        if self.data == "synthetic" {
            if self.ten_crop {
                return Err(Error::Input(
                    "--ten-crop: the synthetic set is drawn at the net's input size and has no crops".into(),
                ));
            }
            return model.evaluate_synthetic(images, batch);
        }
        let dataset = data::open(Path::new(&self.data))?;
        same_classes(&self.data, &dataset.classes, &model.state.classes)?;
        let (eval, skipped) =
            model.evaluate_images(dataset.val, images, self.ten_crop, batch, default_workers())?;
        for (file, why) in &skipped {
            eprintln!("skipped {file}: {why}");
        }
        Ok(eval)
    }
}

/// Refuses data whose classes are not the ones the checkpoint learned.
fn same_classes(data: &str, found: &[String], learned: &[String]) -> Result<()> {
    if found == learned {
        return Ok(());
    }
    let at = found.iter().zip(learned).position(|(a, b)| a != b);
    let which = match at {
        Some(i) => format!(
            "class {i} is {:?} there, {:?} in the checkpoint",
            found[i], learned[i]
        ),
        None => format!(
            "{} classes there, {} in the checkpoint",
            found.len(),
            learned.len()
        ),
    };
    Err(Error::Input(format!(
        "--data {data}: not the classes the checkpoint learned ({which})"
    )))
}
