//! Initialization presets. Weights are drawn in the single-device twin's
//! layout from a stream named after the tensor, so the same seed gives the
//! same net whatever the split, and a twin initialized this way matches.

use super::params::{TwinTensor, twin_shapes};
use super::plan::Plan;
use crate::rng::{Rng, derive_str};
use serde::{Deserialize, Serialize};

/// Layers whose biases the paper sets to 1 (§5), Caffe to 0.1.
pub const POSITIVE_BIAS_LAYERS: [&str; 5] = ["conv2", "conv4", "conv5", "fc6", "fc7"];

/// How to draw the initial weights and biases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum InitScheme {
    /// Paper §5: weights N(0, 0.01²); biases 1 in conv2, conv4, conv5, fc6,
    /// fc7 and 0 elsewhere. Known to sit at loss ln(classes) for a while.
    Paper,
    /// Caffe's `bvlc_alexnet`: as the paper but std 0.005 in fc6 and fc7 and
    /// bias 0.1 instead of 1.
    Caffe,
    /// He et al. (2015): weights N(0, 2/fan_in), biases 0. Not the paper's;
    /// for the small presets, where std 0.01 starves the signal.
    He,
}

impl InitScheme {
    fn weight_std(self, layer: &str, fan_in: usize) -> f64 {
        match self {
            InitScheme::Paper => 0.01,
            InitScheme::Caffe if layer == "fc6" || layer == "fc7" => 0.005,
            InitScheme::Caffe => 0.01,
            InitScheme::He => (2.0 / fan_in as f64).sqrt(),
        }
    }

    fn bias(self, layer: &str) -> f32 {
        let positive = POSITIVE_BIAS_LAYERS.contains(&layer);
        match self {
            InitScheme::Paper if positive => 1.0,
            InitScheme::Caffe if positive => 0.1,
            _ => 0.0,
        }
    }
}

/// The twin's tensors, freshly initialized.
pub fn init_twin(plan: &Plan, scheme: InitScheme, seed: u64) -> Vec<TwinTensor> {
    twin_shapes(plan)
        .into_iter()
        .map(|(name, shape)| {
            let len: usize = shape.iter().product();
            let (layer, kind) = name.rsplit_once('.').unwrap_or((&name, ""));
            let data = if kind == "bias" {
                vec![scheme.bias(layer); len]
            } else {
                let fan_in = shape[1..].iter().product();
                let std = scheme.weight_std(layer, fan_in);
                let mut rng = Rng::new(derive_str(seed, &name));
                (0..len).map(|_| (std * rng.normal()) as f32).collect()
            };
            TwinTensor { name, shape, data }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_init_has_the_papers_constants() {
        let plan = Plan::load("paper").unwrap();
        let tensors = init_twin(&plan, InitScheme::Paper, 1);
        for t in &tensors {
            let layer = t.name.split('.').next().unwrap();
            if t.name.ends_with(".bias") {
                let want = if POSITIVE_BIAS_LAYERS.contains(&layer) {
                    1.0
                } else {
                    0.0
                };
                assert!(t.data.iter().all(|&b| b == want), "{}", t.name);
            } else if t.data.len() > 100_000 {
                let n = t.data.len() as f64;
                let var = t.data.iter().map(|&w| f64::from(w).powi(2)).sum::<f64>() / n;
                assert!(
                    (var.sqrt() - 0.01).abs() < 2e-4,
                    "{}: std {}",
                    t.name,
                    var.sqrt()
                );
            }
        }
        assert_eq!(init_twin(&plan, InitScheme::Paper, 1), tensors);
        assert_ne!(init_twin(&plan, InitScheme::Paper, 2)[0], tensors[0]);
    }

    #[test]
    fn caffe_init_differs_where_caffe_does() {
        let plan = Plan::load("paper").unwrap();
        let tensors = init_twin(&plan, InitScheme::Caffe, 1);
        let get = |n: &str| tensors.iter().find(|t| t.name == n).unwrap();
        assert!(get("fc6.bias").data.iter().all(|&b| b == 0.1));
        assert!(get("conv3.bias").data.iter().all(|&b| b == 0.0));
        let fc7 = &get("fc7.weight").data;
        let std =
            (fc7.iter().map(|&w| f64::from(w).powi(2)).sum::<f64>() / fc7.len() as f64).sqrt();
        assert!((std - 0.005).abs() < 1e-4, "{std}");
    }
}
