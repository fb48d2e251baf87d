//! Element-wise layers: ReLU (paper §3.1) and the tanh it is measured against
//! (Figure 1), inverted dropout (§4.2) and the momentum-SGD update (§5).

use super::real::Real;
use super::simd;
use crate::device::{DropoutMask, SgdStep};
use crate::rng::uniform_at;

simd::kernel! {
/// `y = max(x, 0)`, +0 for −0 and NaN (as the GPU kernel).
pub fn relu_forward<T: Real>(x: &[T], y: &mut [T]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = if v > T::zero() { v } else { T::zero() };
    }
}
}

simd::kernel! {
/// `dx = dy · [y > 0]`.
pub fn relu_backward<T: Real>(y: &[T], dy: &[T], dx: &mut [T]) {
    for ((d, &g), &out) in dx.iter_mut().zip(dy).zip(y) {
        *d = if out > T::zero() { g } else { T::zero() };
    }
}
}

/// `y = tanh(x)`, the saturating nonlinearity of the paper's Figure 1.
pub fn tanh_forward<T: Real>(x: &[T], y: &mut [T]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = v.tanh();
    }
}

/// `dx = dy · (1 − y²)`.
pub fn tanh_backward<T: Real>(y: &[T], dy: &[T], dx: &mut [T]) {
    for ((d, &g), &out) in dx.iter_mut().zip(dy).zip(y) {
        *d = g * (T::one() - out * out);
    }
}

/// Whether element `index` survives dropout with probability `p` under mask
/// stream `key`. Counter-based, so any device can draw the same mask.
pub fn dropout_keeps(key: u64, index: usize, p: f32) -> bool {
    uniform_at(key, index as u64) >= f64::from(p)
}

/// `out = inp / (1 − p)` where `mask` keeps an element, 0 elsewhere. The
/// same for forward and backward. With p = 0 (the test-time identity) every
/// element is kept at scale 1: a copy, no draws.
pub fn dropout_apply<T: Real>(inp: &[T], out: &mut [T], mask: &DropoutMask) {
    let p = mask.p;
    if p == 0.0 {
        let n = out.len().min(inp.len());
        out[..n].copy_from_slice(&inp[..n]);
        return;
    }
    let keep_scale = T::of(1.0 / (1.0 - f64::from(p)));
    let apply = |out: &mut [T], inp: &[T], key: u64, first: usize| {
        for (i, (o, &v)) in out.iter_mut().zip(inp).enumerate() {
            *o = if dropout_keeps(key, first + i, p) {
                v * keep_scale
            } else {
                T::zero()
            };
        }
    };
    if mask.groups == 1 {
        return apply(out, inp, mask.keys[0], mask.first);
    }
    let runs = out.chunks_mut(mask.run).zip(inp.chunks(mask.run));
    for (chunk, (out, inp)) in runs.enumerate() {
        let (key, first) = mask.draws(chunk * mask.run);
        apply(out, inp, key, first);
    }
}

simd::kernel! {
/// `v ← m·v − wd·lr·w − lr·g; w ← w + v`, for weights and biases alike.
pub fn sgd_update<T: Real>(w: &mut [T], g: &[T], v: &mut [T], step: SgdStep) {
    let lr = T::of(step.lr.into());
    let momentum = T::of(step.momentum.into());
    let decay = T::of(step.weight_decay.into()) * lr;
    for ((w, &g), v) in w.iter_mut().zip(g).zip(v.iter_mut()) {
        *v = momentum * *v - decay * *w - lr * g;
        *w += *v;
    }
}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cpu::gradcheck::{check_gradient, dot, random};

    #[test]
    fn relu_backward_matches_finite_differences() {
        let x = random(50, 1);
        let r = random(50, 2);
        let forward = |x: &[f64]| {
            let mut y = vec![0.0; x.len()];
            relu_forward(x, &mut y);
            y
        };
        let y = forward(&x);
        assert!(y.iter().zip(&x).all(|(y, x)| *y == x.max(0.0)));
        let mut dx = vec![0.0; 50];
        relu_backward(&y, &r, &mut dx);
        check_gradient("relu dx", &x, &dx, |x| dot(&r, &forward(x)));
    }

    #[test]
    fn tanh_backward_matches_finite_differences() {
        let x: Vec<f64> = random(50, 3).iter().map(|v| 3.0 * v).collect();
        let r = random(50, 4);
        let forward = |x: &[f64]| {
            let mut y = vec![0.0; x.len()];
            tanh_forward(x, &mut y);
            y
        };
        let y = forward(&x);
        // Against the definition (e^x − e^−x) / (e^x + e^−x).
        for (y, x) in y.iter().zip(&x) {
            let want = (x.exp() - (-x).exp()) / (x.exp() + (-x).exp());
            assert!((y - want).abs() < 1e-12, "tanh({x}) = {y}, want {want}");
        }
        let mut dx = vec![0.0; 50];
        tanh_backward(&y, &r, &mut dx);
        check_gradient("tanh dx", &x, &dx, |x| dot(&r, &forward(x)));
        // The f32 path the towers train with agrees with f64.
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let mut y32 = vec![0.0f32; 50];
        tanh_forward(&x32, &mut y32);
        assert!(
            y32.iter()
                .zip(&y)
                .all(|(a, b)| (f64::from(*a) - b).abs() < 1e-6)
        );
    }

    #[test]
    fn dropout_keeps_about_one_minus_p_and_preserves_the_mean() {
        let x = vec![1.0f64; 100_000];
        let mut y = vec![0.0; x.len()];
        dropout_apply(&x, &mut y, &DropoutMask::tower(0.5, 42, 0));
        let kept = y.iter().filter(|v| **v != 0.0).count() as f64 / x.len() as f64;
        let mean = y.iter().sum::<f64>() / x.len() as f64;
        assert!((kept - 0.5).abs() < 0.01, "kept {kept}");
        assert!((mean - 1.0).abs() < 0.02, "mean {mean}");
        assert!(y.iter().all(|v| *v == 0.0 || *v == 2.0));
        let mut again = vec![0.0; x.len()];
        dropout_apply(&x, &mut again, &DropoutMask::tower(0.5, 42, 0));
        assert_eq!(y, again);
        dropout_apply(&x, &mut again, &DropoutMask::tower(0.5, 43, 0));
        assert_ne!(y, again);
    }

    #[test]
    fn dropout_at_p_0_is_the_identity() {
        let x = random(1000, 9);
        let mut y = vec![f64::NAN; x.len()];
        dropout_apply(&x, &mut y, &DropoutMask::tower(0.0, 7, 3));
        assert_eq!(x, y);
    }

    #[test]
    fn dropout_of_a_slice_is_the_same_slice_of_the_whole_mask() {
        let x = vec![1.0f64; 1000];
        let mut whole = vec![0.0; x.len()];
        dropout_apply(&x, &mut whole, &DropoutMask::tower(0.5, 7, 0));
        let mut part = vec![0.0; 300];
        dropout_apply(&x[..300], &mut part, &DropoutMask::tower(0.5, 7, 600));
        assert_eq!(part, whole[600..900]);
        assert_ne!(part, whole[..300]);
    }

    /// A buffer of both towers' units draws, run by run, each tower's own
    /// mask: what each tower's buffer draws on its own.
    #[test]
    fn both_towers_in_one_buffer_draw_each_towers_own_mask() {
        let (batch, run, first_image) = (3, 50, 4);
        let x = random(batch * 2 * run, 11);
        let keys = [21, 22];
        let mut both = vec![0.0; x.len()];
        dropout_apply(
            &x,
            &mut both,
            &DropoutMask::towers(0.5, keys, run, first_image * run),
        );
        // Tower t's runs of `run` units: every other run, from the t-th.
        let tower_rows = |v: &[f64], t: usize| -> Vec<f64> {
            v.chunks(run)
                .skip(t)
                .step_by(2)
                .flatten()
                .copied()
                .collect()
        };
        for (t, &key) in keys.iter().enumerate() {
            let own = tower_rows(&x, t);
            let mut alone = vec![0.0; own.len()];
            dropout_apply(
                &own,
                &mut alone,
                &DropoutMask::tower(0.5, key, first_image * run),
            );
            assert_eq!(tower_rows(&both, t), alone, "tower {t}");
        }
        assert!(both.contains(&0.0) && both.iter().any(|v| *v != 0.0));
    }

    #[test]
    fn dropout_backward_matches_finite_differences() {
        let x = random(64, 4);
        let r = random(64, 5);
        let forward = |x: &[f64]| {
            let mut y = vec![0.0; x.len()];
            dropout_apply(x, &mut y, &DropoutMask::tower(0.5, 9, 0));
            y
        };
        let mut dx = vec![0.0; 64];
        dropout_apply(&r, &mut dx, &DropoutMask::tower(0.5, 9, 0));
        check_gradient("dropout dx", &x, &dx, |x| dot(&r, &forward(x)));
    }

    #[test]
    fn sgd_follows_the_papers_rule() {
        let step = SgdStep {
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 0.0005,
        };
        let (mut w, g, mut v) = (vec![2.0f32], vec![0.5f32], vec![0.1f32]);
        sgd_update(&mut w, &g, &mut v, step);
        let v_want = 0.9 * 0.1 - 0.0005 * 0.01 * 2.0 - 0.01 * 0.5;
        assert!((f64::from(v[0]) - v_want).abs() < 1e-7);
        assert!((f64::from(w[0]) - (2.0 + v_want)).abs() < 1e-6);
    }
}
