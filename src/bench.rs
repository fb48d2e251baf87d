//! `alexnet bench`: images/s of a full training step (forward, backward,
//! update) and of inference, as the median over timed steps after warm-up.

use crate::data::synthetic::{Split, Synthetic};
use crate::device::SgdStep;
use crate::device::cuda::probe;
use crate::device::precision::{LossScale, Precision};
use crate::error::Result;
use crate::link;
use crate::net::init::init_twin;
use crate::net::plan::Plan;
use crate::net::spec::InitScheme;
use crate::placement::Placement;
use crate::summary::DevicePeak;
use crate::tower::LayerTiming;
use crate::towers::{Batch, TowerPair};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub preset: String,
    pub batch: usize,
    /// Timed steps of each kind.
    pub steps: usize,
    /// Untimed steps before them.
    pub warmup: usize,
    pub placement: Placement,
}

/// Times of one kind of step.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub step_seconds: Vec<f64>,
    pub median_seconds: f64,
    pub images_per_s: f64,
}

impl Timing {
    fn new(step_seconds: Vec<f64>, batch: usize) -> Self {
        let median = median(step_seconds.clone());
        Timing {
            step_seconds,
            median_seconds: median,
            images_per_s: batch as f64 / median,
        }
    }
}

/// One row of the per-layer breakdown: tower 0's medians, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub name: String,
    /// Forward multiply-adds per image in one tower.
    pub macs_per_image: usize,
    pub train_forward_ms: f64,
    pub train_backward_ms: f64,
    pub inference_ms: f64,
    /// Against the layer's multiply-adds (2 FLOP each); 0 for layers without.
    pub forward_gflops: f64,
    pub backward_gflops: f64,
}

/// One step's per-layer times of each tower, tower 0's first.
type PairTimings = Vec<Vec<LayerTiming>>;

/// Milliseconds in exchanges per step, one entry per tower.
#[derive(Debug, Clone, Serialize)]
pub struct ExchangeTimes {
    pub training: Vec<f64>,
    pub inference: Vec<f64>,
}

/// A benchmark's result, as printed and as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub preset: String,
    pub batch: usize,
    pub device: String,
    /// How the towers meet.
    pub link: String,
    pub train: Timing,
    pub inference: Timing,
    /// Bytes each tower sends per training step, and tower 0's median time
    /// in exchanges per training step (including any wait for the other tower).
    pub exchange_bytes_per_step: usize,
    pub exchange_ms_per_step: f64,
    /// Each tower's median time in exchanges per training step and per
    /// inference batch, tower 0's first: the copies, and the waits for the
    /// other tower that a work split between the cores could win back at most.
    pub exchange_ms_by_tower: ExchangeTimes,
    /// Bytes of gradients each tower would all-reduce per step with other
    /// replicas of the pair (bench times one pair, which all-reduces none).
    pub allreduce_bytes_per_step: usize,
    /// Per GPU used, (ordinal, bytes in use after the timed steps).
    pub gpu_memory_in_use: Vec<(usize, usize)>,
    /// Per GPU used, (ordinal, bytes in use before the towers were built:
    /// the CUDA context and anything else on the GPU).
    pub gpu_memory_before: Vec<(usize, usize)>,
    /// What `summary --batch N` predicts each GPU's towers hold, to compare
    /// with the difference of the two above.
    pub gpu_peak_predicted: Option<DevicePeak>,
    /// Forward multiply-adds per image of the whole net.
    pub macs_per_image: usize,
    pub layers: Vec<LayerReport>,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Medians per layer over the timed steps.
fn layer_reports(
    plan: &Plan,
    batch: usize,
    train: &[Vec<LayerTiming>],
    inference: &[Vec<LayerTiming>],
) -> Vec<LayerReport> {
    let names = plan
        .layers
        .iter()
        .map(|l| (l.name.clone(), l.macs()))
        .chain([("loss".to_string(), 0), ("update".to_string(), 0)]);
    names
        .enumerate()
        .map(|(i, (name, macs))| {
            let column = |steps: &[Vec<LayerTiming>], pick: fn(&LayerTiming) -> f64| {
                median(steps.iter().map(|t| pick(&t[i])).collect())
            };
            let forward = column(train, |t| t.forward_s);
            let backward = column(train, |t| t.backward_s);
            let flops = 2.0 * macs as f64 * batch as f64;
            // The first layer computes no input gradient: one product, not two.
            let backward_flops = if i == 0 { flops } else { 2.0 * flops };
            let rate = |f: f64, s: f64| if s > 0.0 { f / s / 1e9 } else { 0.0 };
            LayerReport {
                name,
                macs_per_image: macs,
                train_forward_ms: 1e3 * forward,
                train_backward_ms: 1e3 * backward,
                inference_ms: 1e3 * column(inference, |t| t.forward_s),
                forward_gflops: rate(flops, forward),
                backward_gflops: rate(backward_flops, backward),
            }
        })
        .collect()
}

/// Per tower, the median over `steps` of its exchange time per step, in ms.
fn exchange_ms(steps: &[PairTimings]) -> Vec<f64> {
    let towers = steps.first().map_or(0, Vec::len);
    (0..towers)
        .map(|t| {
            let per_step = steps
                .iter()
                .map(|s| s[t].iter().map(|l| l.exchange_s).sum());
            1e3 * median(per_step.collect())
        })
        .collect()
}

/// Runs the benchmark where `config.placement` says.
pub fn run(config: &BenchConfig) -> Result<BenchReport> {
    let plan = Arc::new(Plan::load(&config.preset)?);
    let init = init_twin(&plan, InitScheme::Caffe, 1);
    let gpus = config.placement.gpus();
    let memory = || -> Result<Vec<(usize, usize)>> {
        gpus.iter()
            .map(|&g| probe::memory_in_use(g).map(|bytes| (g, bytes)))
            .collect()
    };
    let gpu_memory_before = memory()?;
    let towers = TowerPair::new(config.placement, Arc::clone(&plan), config.batch, &init)?;
    let (channels, size) = (plan.spec.input.channels, plan.spec.input.size);
    let set = Synthetic::new(1, Split::Train, config.batch, channels, size);
    let (images, labels) = set.batch(&(0..config.batch).collect::<Vec<_>>());
    // A net with fewer classes than the synthetic set gets the labels folded.
    let classes = plan.classes() as u32;
    let batch = Batch {
        images: Arc::new(images.into()),
        labels: Arc::new(labels.into_iter().map(|l| l % classes).collect()),
    };
    let sgd = SgdStep {
        lr: 1e-4,
        momentum: 0.9,
        weight_decay: 5e-4,
    };
    // Each timed step's wall time, and tower 0's per-layer times of it. A
    // training step is queued (the towers run a few steps ahead, as in
    // training): after the warm-up fills the queue, each step's time is
    // that of one step through the GPU, and the wait for the last ones to
    // finish counts in the last step's.
    let time = |f: &mut dyn FnMut(u64) -> Result<()>| -> Result<(Vec<f64>, Vec<PairTimings>)> {
        for i in 0..config.warmup {
            f(i as u64)?;
        }
        let (mut steps, mut layers) = (Vec::new(), Vec::new());
        for i in 0..config.steps {
            let start = Instant::now();
            f((config.warmup + i) as u64)?;
            if i + 1 == config.steps {
                towers.take_stats()?;
            }
            steps.push(start.elapsed().as_secs_f64());
            layers.push(towers.timings_each()?);
        }
        // A GPU runs asynchronously: its per-layer times come from further
        // steps that wait after each layer, apart from the timed ones.
        if config.placement.is_gpu() {
            towers.set_profile(true)?;
            for (i, layer) in layers.iter_mut().enumerate() {
                f((config.warmup + config.steps + i) as u64)?;
                *layer = towers.timings_each()?;
            }
            towers.set_profile(false)?;
            towers.take_stats()?;
        }
        Ok((steps, layers))
    };
    // fp16 steps as training makes them: loss-scaled, both towers'
    // gradients checked before the update (the scale held fixed).
    let fp16 = config.placement.precision() == Precision::Fp16;
    let (train, train_layers) = time(&mut |key| {
        if fp16 {
            let scale = LossScale::INITIAL;
            towers.queue_scaled_step(&batch, key, sgd, scale).map(drop)
        } else {
            towers.queue_step(&batch, key, Some(sgd))
        }
    })?;
    let (inference, inference_layers) = time(&mut |_| towers.evaluate(&batch).map(drop))?;
    let exchange_ms_by_tower = ExchangeTimes {
        training: exchange_ms(&train_layers),
        inference: exchange_ms(&inference_layers),
    };
    let tower_0 = |steps: Vec<PairTimings>| -> Vec<Vec<LayerTiming>> {
        steps.into_iter().map(|mut s| s.swap_remove(0)).collect()
    };
    let (train_layers, inference_layers) = (tower_0(train_layers), tower_0(inference_layers));
    let gpu_memory_in_use = memory()?;
    // What each GPU holds: one tower, or all the towers of the plan they
    // run (the two of emulation mode, the grouped network's one).
    let held_per_gpu = match config.placement {
        Placement::Cpu { .. } => None,
        Placement::Grouped { .. } | Placement::OneGpu { .. } => {
            Some((towers.tower_plan().as_ref(), towers.tower_plan().towers))
        }
        Placement::TwoGpus { .. } => Some((plan.as_ref(), 1)),
    };
    Ok(BenchReport {
        gpu_memory_in_use,
        gpu_memory_before,
        gpu_peak_predicted: held_per_gpu.map(|(p, t)| DevicePeak::new(p, config.batch, t)),
        preset: config.preset.clone(),
        batch: config.batch,
        device: config.placement.to_string(),
        link: towers.link_note().to_string(),
        exchange_bytes_per_step: link::bytes_per_step(
            towers.tower_plan(),
            config.batch,
            config.placement.exchange_element_bytes(),
        ),
        exchange_ms_per_step: exchange_ms_by_tower.training[0],
        exchange_ms_by_tower,
        allreduce_bytes_per_step: crate::reduce::bytes_per_step(plan.params_per_tower()),
        train: Timing::new(train, config.batch),
        inference: Timing::new(inference, config.batch),
        macs_per_image: plan.macs(),
        layers: layer_reports(
            towers.tower_plan(),
            config.batch,
            &train_layers,
            &inference_layers,
        ),
    })
}

/// The human-readable report.
pub fn render(r: &BenchReport) -> String {
    let gflops =
        |t: &Timing, passes: f64| passes * 2.0 * r.macs_per_image as f64 * t.images_per_s / 1e9;
    let steps = r.train.step_seconds.len();
    let per_tower = |ms: &[f64]| {
        let each: Vec<String> = ms.iter().map(|m| format!("{m:.1}")).collect();
        each.join(" / ")
    };
    let waiting_towers = if r.exchange_ms_by_tower.training.len() == 1 {
        "the grouped network's one thread (nothing to exchange)"
    } else {
        "tower 0 / 1 (exchanges' copies and waits for the other tower)"
    };
    let mut text = format!(
        "bench: preset {}, batch {}, {}; median of {steps} steps after warm-up\n\
         training   {:8.1} images/s  ({:.3} s/step, ≈{:.0} GFLOP/s)\n\
         inference  {:8.1} images/s  ({:.3} s/batch, ≈{:.0} GFLOP/s)\n\
         exchanges  {:8.2} MB per training step per tower, {:.1} ms ({})\n\
         waits      {} ms per training step, {} ms per inference batch, {}\n\
         all-reduce {:8.2} MB of gradients per step per tower with replicas (none in this one-pair run)\n",
        r.preset,
        r.batch,
        r.device,
        r.train.images_per_s,
        r.train.median_seconds,
        gflops(&r.train, 3.0),
        r.inference.images_per_s,
        r.inference.median_seconds,
        gflops(&r.inference, 1.0),
        r.exchange_bytes_per_step as f64 / 1e6,
        r.exchange_ms_per_step,
        r.link,
        per_tower(&r.exchange_ms_by_tower.training),
        per_tower(&r.exchange_ms_by_tower.inference),
        waiting_towers,
        r.allreduce_bytes_per_step as f64 / 1e6,
    );
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    for ((gpu, after), (_, before)) in r.gpu_memory_in_use.iter().zip(&r.gpu_memory_before) {
        text += &format!(
            "memory     GPU {gpu}: {:.2} GiB in use after the timed steps, {:.2} GiB before the towers",
            gib(*after),
            gib(*before)
        );
        if let Some(p) = &r.gpu_peak_predicted {
            text += &format!(
                "; the towers hold {:.2} GiB, predicted {:.2} to {:.2} (`alexnet summary --batch {}`)",
                gib(after.saturating_sub(*before)),
                gib(p.tensors),
                gib(p.upper()),
                r.batch
            );
        }
        text += "\n";
    }
    text += &format!(
        "\nper layer, tower 0 (medians; a layer reading both towers includes its exchange):\n\
         {:<10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>10}\n",
        "layer", "MACs/img", "fwd ms", "bwd ms", "fwd GF/s", "bwd GF/s", "infer ms"
    );
    for l in &r.layers {
        let (macs, fwd, bwd) = if l.macs_per_image > 0 {
            (
                format!("{:.1} M", l.macs_per_image as f64 / 1e6),
                format!("{:.0}", l.forward_gflops),
                format!("{:.0}", l.backward_gflops),
            )
        } else {
            ("-".into(), "-".into(), "-".into())
        };
        text += &format!(
            "{:<10} {:>10} {:>10.1} {:>10.1} {:>9} {:>9} {:>10.1}\n",
            l.name, macs, l.train_forward_ms, l.train_backward_ms, fwd, bwd, l.inference_ms
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(Timing::new(vec![3.0, 1.0, 2.0], 4).median_seconds, 2.0);
        let t = Timing::new(vec![4.0, 1.0, 2.0, 3.0], 10);
        assert_eq!(t.median_seconds, 2.5);
        assert_eq!(t.images_per_s, 4.0);
    }
}
