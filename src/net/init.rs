//! Initialization presets. Weights are drawn in the single-device twin's
//! layout from a stream named after the tensor, so the same seed gives the
//! same net whatever the split, and a twin initialized this way matches.

use super::params::{TwinTensor, twin_shapes};
use super::plan::Plan;
use super::spec::InitScheme;
use crate::rng::{Rng, derive_str};

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
    use crate::net::spec::POSITIVE_BIAS_LAYERS;

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
