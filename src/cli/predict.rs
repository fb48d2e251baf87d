//! `predict`: each input's five most probable classes, and optionally the
//! raw logits as `.npy`.

use super::{DeviceArgs, batch_range, stop_flag};
use alexnet::error::Result;
use alexnet::infer::Model;
use alexnet::infer::predict::{Input, logits_npy, predict};
use alexnet::output::Output;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct PredictArgs {
    /// A checkpoint folder, or a run folder for its newest checkpoint.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Images (JPEG, PNG), folders of them, or `.npy` files each holding an
    /// already preprocessed float32 N×C×H×W batch.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// One JSON object per image.
    #[arg(long)]
    json: bool,
    /// Write the raw logits, images × classes, to this `.npy` file.
    #[arg(long, value_name = "FILE")]
    logits: Option<PathBuf>,
    #[arg(long, default_value_t = 64, value_parser = batch_range())]
    batch: u32,
    #[command(flatten)]
    device: DeviceArgs,
}

impl PredictArgs {
    pub fn run(self) -> Result<()> {
        // The destination is created first, so one that cannot be written fails at once.
        let pending = self
            .logits
            .as_deref()
            .map(|p| Output::create(p, "--logits"))
            .transpose()?;
        let (placement, note) = self.device.placement()?;
        let batch = self.batch as usize;
        let model = Model::load(&self.checkpoint, placement, batch)?;
        // Every input is read and checked before any work (and before the note).
        let inputs: Vec<(PathBuf, Input)> = self
            .inputs
            .into_iter()
            .map(|path| Input::read(&path, &model).map(|read| (path, read)))
            .collect::<Result<_>>()?;
        if !self.json {
            eprintln!("{note}");
        }
        let stop = stop_flag()?;
        let predictions = predict(&model, &inputs, batch, &stop)?;
        let names = &model.state.classes;
        for prediction in &predictions {
            if self.json {
                println!("{}", prediction.json(names));
            } else {
                println!("{}", prediction.text(names));
            }
        }
        if let Some(pending) = pending {
            pending.commit(&logits_npy(&predictions, model.plan.classes()))?;
        }
        Ok(())
    }
}
