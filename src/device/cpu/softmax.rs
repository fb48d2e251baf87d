//! Softmax cross-entropy over logits split across the towers: every tower
//! holds all logits after the all-gather, computes the same loss, and keeps
//! the gradient of its own logits only.

use super::real::Real;
use crate::device::LossStats;

/// See [`crate::device::Device::softmax_cross_entropy`]; `logits` is
/// `[tower][image][per_tower]`, `dlogits` `[image][per_tower]`, scaled by
/// `grad_scale`.
pub fn softmax_cross_entropy<T: Real>(
    logits: &[T],
    labels: &[u32],
    tower: usize,
    per_tower: usize,
    grad_scale: f32,
    dlogits: &mut [T],
) -> LossStats {
    let batch = labels.len();
    let towers = logits.len() / (batch * per_tower);
    let classes = towers * per_tower;
    let mut stats = LossStats::default();
    let mut z = vec![0.0f64; classes];
    for (n, &label) in labels.iter().enumerate() {
        for t in 0..towers {
            let row = &logits[(t * batch + n) * per_tower..][..per_tower];
            for (zi, &v) in z[t * per_tower..][..per_tower].iter_mut().zip(row) {
                *zi = v.wide();
            }
        }
        let label = label as usize;
        let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let log_sum = z.iter().map(|v| (v - max).exp()).sum::<f64>().ln() + max;
        stats.loss_sum += log_sum - z[label];
        let above = z.iter().filter(|&&v| v > z[label]).count();
        stats.top1 += usize::from(above == 0);
        stats.top5 += usize::from(above < 5);
        let own = &mut dlogits[n * per_tower..][..per_tower];
        for (u, d) in own.iter_mut().enumerate() {
            let class = tower * per_tower + u;
            let p = (z[class] - log_sum).exp();
            let target = if class == label { 1.0 } else { 0.0 };
            *d = T::of((p - target) * f64::from(grad_scale) / batch as f64);
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cpu::gradcheck::{check_gradient, random};

    #[test]
    fn loss_and_gradient_match_a_direct_computation() {
        let (towers, batch, per_tower) = (2, 3, 4);
        let logits: Vec<f64> = random(towers * batch * per_tower, 1)
            .iter()
            .map(|v| 3.0 * v)
            .collect();
        let labels = [0u32, 5, 7];
        let loss = |l: &[f64]| {
            let mut scratch = vec![0.0; batch * per_tower];
            softmax_cross_entropy(l, &labels, 0, per_tower, 1.0, &mut scratch).loss_sum
                / batch as f64
        };
        // Direct: class c of image n is logits[(c / per_tower) * batch + n][c % per_tower].
        let mut want = 0.0;
        for (n, &label) in labels.iter().enumerate() {
            let z: Vec<f64> = (0..towers * per_tower)
                .map(|c| logits[((c / per_tower) * batch + n) * per_tower + c % per_tower])
                .collect();
            let sum: f64 = z.iter().map(|v| v.exp()).sum();
            want -= (z[label as usize].exp() / sum).ln();
        }
        assert!((loss(&logits) - want / batch as f64).abs() < 1e-12);
        // Each tower's gradient is the slice of the full gradient for its logits.
        let mut full = vec![0.0; logits.len()];
        for t in 0..towers {
            softmax_cross_entropy(
                &logits,
                &labels,
                t,
                per_tower,
                1.0,
                &mut full[t * batch * per_tower..][..batch * per_tower],
            );
        }
        check_gradient("softmax dlogits", &logits, &full, loss);
    }

    #[test]
    fn a_loss_scale_multiplies_the_gradient_and_leaves_the_loss() {
        let logits = [0.5, -1.0, 2.0, 0.25f32];
        let (mut plain, mut scaled) = ([0.0f32; 4], [0.0f32; 4]);
        let a = softmax_cross_entropy(&logits, &[1, 0], 0, 2, 1.0, &mut plain);
        let b = softmax_cross_entropy(&logits, &[1, 0], 0, 2, 1024.0, &mut scaled);
        assert_eq!(a, b);
        for (p, s) in plain.iter().zip(&scaled) {
            assert_eq!(p * 1024.0, *s);
        }
    }

    #[test]
    fn counts_top1_and_top5() {
        // One tower of 6 classes, label 2 ranked third.
        let logits = [0.0, 5.0, 3.0, 4.0, 1.0, 2.0f32];
        let mut d = [0.0f32; 6];
        let stats = softmax_cross_entropy(&logits, &[2], 0, 6, 1.0, &mut d);
        assert_eq!((stats.top1, stats.top5), (0, 1));
        let stats = softmax_cross_entropy(&logits, &[1], 0, 6, 1.0, &mut d);
        assert_eq!((stats.top1, stats.top5), (1, 1));
        let stats = softmax_cross_entropy(&logits, &[0], 0, 6, 1.0, &mut d);
        assert_eq!((stats.top1, stats.top5), (0, 0));
    }
}
