//! What a few training steps changed, compared between two devices or
//! links: the update w − w₀ of every weight, not the weights themselves
//! (three small steps move them by a thousandth of their size, so a wrong
//! update hides under a bound on the weights).

use alexnet::device::LossStats;
use alexnet::net::params::TwinTensor;

/// How far a GPU's (or two GPUs') three-step update of the small preset may
/// be from the CPU's, norm-wise and element-wise: f32 rounding in other
/// summation orders. Three f32 CPU steps come within about 1e-5 of f64
/// ones in both; tests/twin.rs holds them to a twentieth of these.
pub const UPDATE_NORM_TOL: f64 = 1e-3;
pub const UPDATE_ELEMENT_TOL: f64 = 1e-3;

/// Checks that `got`'s update from `start` matches `want`'s, tensor by
/// tensor: ‖Δgot − Δwant‖ / ‖Δwant‖ within `norm_tol`, and each element
/// within `element_tol` of the tensor's largest |Δwant|. `Ok` holds the
/// largest of each error over the tensors; `Err` names the first tensor (or
/// element) that differs.
pub fn compare_updates(
    start: &[TwinTensor],
    want: &[TwinTensor],
    got: &[TwinTensor],
    norm_tol: f64,
    element_tol: f64,
) -> Result<(f64, f64), String> {
    if start.len() != want.len() || want.len() != got.len() {
        return Err(format!(
            "{} tensors at the start, {} and {} after",
            start.len(),
            want.len(),
            got.len()
        ));
    }
    let (mut worst_norm, mut worst_element) = (0.0f64, 0.0f64);
    for ((s, w), g) in start.iter().zip(want).zip(got) {
        let name = &s.name;
        if w.name != *name || g.name != *name {
            return Err(format!(
                "{name} at the start, {} and {} after",
                w.name, g.name
            ));
        }
        if w.data.len() != s.data.len() || g.data.len() != s.data.len() {
            return Err(format!("{name}: lengths differ"));
        }
        let delta = |after: &[f32]| -> Vec<f64> {
            after
                .iter()
                .zip(&s.data)
                .map(|(&a, &b)| f64::from(a) - f64::from(b))
                .collect()
        };
        let (dw, dg) = (delta(&w.data), delta(&g.data));
        let norm = dw.iter().map(|v| v * v).sum::<f64>().sqrt();
        let largest = dw.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        if largest == 0.0 {
            return Err(format!("{name}: the steps did not change it"));
        }
        let diff = dg
            .iter()
            .zip(&dw)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        if diff > norm_tol * norm {
            return Err(format!(
                "{name}: the updates differ by {:e} of their norm {norm:e}",
                diff / norm
            ));
        }
        worst_norm = worst_norm.max(diff / norm);
        for (i, (a, b)) in dg.iter().zip(&dw).enumerate() {
            let err = (a - b).abs() / largest;
            worst_element = worst_element.max(err);
            if err > element_tol {
                return Err(format!(
                    "{name}[{i}]: update {a:e} against {b:e}, {err:e} of the largest {largest:e}"
                ));
            }
        }
    }
    Ok((worst_norm, worst_element))
}

/// Panics, naming `what`, unless `got`'s update from `start` is within
/// [`UPDATE_NORM_TOL`] and [`UPDATE_ELEMENT_TOL`] of `want`'s (the CPU's).
#[allow(dead_code)]
pub fn assert_updates_close(
    what: &str,
    start: &[TwinTensor],
    want: &[TwinTensor],
    got: &[TwinTensor],
) {
    if let Err(e) = compare_updates(start, want, got, UPDATE_NORM_TOL, UPDATE_ELEMENT_TOL) {
        panic!("{what}: {e}");
    }
}

/// Panics, naming `what`, unless `got`'s f32 loss is within 1e-4
/// (relative) of `want`'s, the CPU's.
#[allow(dead_code)]
pub fn assert_loss_close(what: &str, got: &LossStats, want: &LossStats) {
    let rel = (got.loss_sum - want.loss_sum).abs() / want.loss_sum.abs();
    assert!(
        rel < 1e-4,
        "{what}: loss {}, {} on the CPU",
        got.loss_sum,
        want.loss_sum
    );
}
