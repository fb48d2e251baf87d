//! Test helpers: random data and central finite differences in f64.

use crate::rng::Rng;

/// `n` values uniform in (−1, 1) from stream `seed`.
pub fn random(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| 2.0 * rng.uniform() - 1.0).collect()
}

/// `Σ r·y`, the scalar whose gradient with respect to `y` is `r`.
pub fn dot(r: &[f64], y: &[f64]) -> f64 {
    r.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// Checks `analytic` against central differences of `loss` at `x`, on every
/// index (or 400 spread ones for big inputs), to 1e-6 of the largest gradient.
pub fn check_gradient(what: &str, x: &[f64], analytic: &[f64], loss: impl Fn(&[f64]) -> f64) {
    assert_eq!(x.len(), analytic.len(), "{what}: gradient length");
    let h = 1e-5;
    let step = (x.len() / 400).max(1);
    let scale = analytic.iter().fold(1e-8f64, |m, g| m.max(g.abs()));
    let mut probe = x.to_vec();
    for i in (0..x.len()).step_by(step) {
        probe[i] = x[i] + h;
        let up = loss(&probe);
        probe[i] = x[i] - h;
        let down = loss(&probe);
        probe[i] = x[i];
        let numeric = (up - down) / (2.0 * h);
        let err = (numeric - analytic[i]).abs() / scale;
        assert!(
            err < 1e-6,
            "{what}[{i}]: finite difference {numeric}, backward {}, relative error {err:e}",
            analytic[i]
        );
    }
}
