//! Fully connected layers, forward and backward, reading one or more source
//! towers (paper §3.2: fc6, fc7 and fc8 read both).

use super::matmul::matmul_nt;
use super::matmul::{Mat, matmul};
use super::real::Real;
use crate::net::plan::FcShape;

/// `y = bias + Σ_s x_s · w_sᵀ`; `x` is `[source][image][inputs]`, `w_s` outputs × inputs.
pub fn fc_forward<T: Real>(
    x: &[T],
    w: &[&[T]],
    bias: &[T],
    y: &mut [T],
    s: &FcShape,
    batch: usize,
) {
    for row in y[..batch * s.outputs].chunks_exact_mut(s.outputs) {
        row.copy_from_slice(bias);
    }
    for (src, w_s) in w.iter().enumerate().take(s.sources) {
        let x_s = &x[src * batch * s.inputs..][..batch * s.inputs];
        matmul_nt(batch, s.outputs, s.inputs, x_s, w_s, y);
    }
}

/// Gradients of [`fc_forward`]: `dw_s`, `dbias`, and `dx_s` when `dx` is given.
#[allow(clippy::too_many_arguments)]
pub fn fc_backward<T: Real>(
    x: &[T],
    w: &[&[T]],
    dy: &[T],
    mut dx: Option<&mut [T]>,
    dw: &mut [&mut [T]],
    dbias: &mut [T],
    s: &FcShape,
    batch: usize,
) {
    dbias.fill(T::zero());
    for row in dy[..batch * s.outputs].chunks_exact(s.outputs) {
        for (d, &g) in dbias.iter_mut().zip(row) {
            *d += g;
        }
    }
    for src in 0..s.sources {
        let x_s = &x[src * batch * s.inputs..][..batch * s.inputs];
        matmul(
            s.outputs,
            s.inputs,
            batch,
            Mat::rows_transposed(dy, s.outputs),
            Mat::rows(x_s, s.inputs),
            dw[src],
            false,
        );
        if let Some(dx) = dx.as_deref_mut() {
            let dx_s = &mut dx[src * batch * s.inputs..][..batch * s.inputs];
            matmul(
                batch,
                s.inputs,
                s.outputs,
                Mat::rows(dy, s.outputs),
                Mat::rows(w[src], s.inputs),
                dx_s,
                false,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cpu::gradcheck::{check_gradient, dot, random};

    const SHAPE: FcShape = FcShape {
        sources: 2,
        inputs: 7,
        outputs: 4,
    };
    const BATCH: usize = 3;

    fn forward(x: &[f64], w: &[Vec<f64>], b: &[f64]) -> Vec<f64> {
        let mut y = vec![0.0; BATCH * SHAPE.outputs];
        let blocks: Vec<&[f64]> = w.iter().map(Vec::as_slice).collect();
        fc_forward(x, &blocks, b, &mut y, &SHAPE, BATCH);
        y
    }

    fn inputs() -> (Vec<f64>, Vec<Vec<f64>>, Vec<f64>) {
        let x = random(SHAPE.sources * BATCH * SHAPE.inputs, 1);
        let w = (0..SHAPE.sources)
            .map(|s| random(SHAPE.block_len(), 2 + s as u64))
            .collect();
        (x, w, random(SHAPE.outputs, 9))
    }

    #[test]
    fn forward_matches_the_definition() {
        let (x, w, b) = inputs();
        let y = forward(&x, &w, &b);
        for n in 0..BATCH {
            for o in 0..SHAPE.outputs {
                let mut want = b[o];
                for (s, w_s) in w.iter().enumerate() {
                    for i in 0..SHAPE.inputs {
                        want += x[(s * BATCH + n) * SHAPE.inputs + i] * w_s[o * SHAPE.inputs + i];
                    }
                }
                assert!((y[n * SHAPE.outputs + o] - want).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let (x, w, b) = inputs();
        let r = random(BATCH * SHAPE.outputs, 5);
        let mut dx = vec![0.0; x.len()];
        let mut dw: Vec<Vec<f64>> = w.iter().map(|w| vec![0.0; w.len()]).collect();
        let mut db = vec![0.0; b.len()];
        {
            let blocks: Vec<&[f64]> = w.iter().map(Vec::as_slice).collect();
            let mut grads: Vec<&mut [f64]> = dw.iter_mut().map(Vec::as_mut_slice).collect();
            fc_backward(
                &x,
                &blocks,
                &r,
                Some(&mut dx),
                &mut grads,
                &mut db,
                &SHAPE,
                BATCH,
            );
        }
        check_gradient("fc dx", &x, &dx, |x| dot(&r, &forward(x, &w, &b)));
        check_gradient("fc dbias", &b, &db, |b| dot(&r, &forward(&x, &w, b)));
        for src in 0..SHAPE.sources {
            check_gradient("fc dw", &w[src], &dw[src], |ws| {
                let mut w = w.clone();
                w[src] = ws.to_vec();
                dot(&r, &forward(&x, &w, &b))
            });
        }
    }
}
