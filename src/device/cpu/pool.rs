//! Overlapping max-pooling (paper §3.4), forward and backward.

use super::real::Real;
use super::simd;
use crate::net::plan::PoolShape;

/// The input rows (or columns) under output row (or column) `o`, clipped to `len`.
fn span(o: usize, s: &PoolShape, len: usize) -> std::ops::Range<usize> {
    let start = o * s.stride;
    start..(start + s.size).min(len)
}

simd::kernel! {
/// `y` = the maximum of each window: the maximum down the window's rows
/// first (a whole line at a time), then across its columns.
pub fn maxpool_forward<T: Real>(x: &[T], y: &mut [T], s: &PoolShape, batch: usize) {
    let (in_plane, out_plane) = (s.in_h * s.in_w, s.out_h * s.out_w);
    let mut down = vec![T::neg_infinity(); s.in_w];
    let planes = x.chunks_exact(in_plane).zip(y.chunks_exact_mut(out_plane));
    for (x_p, y_p) in planes.take(batch * s.c) {
        for (oy, y_row) in y_p.chunks_exact_mut(s.out_w).enumerate() {
            down.fill(T::neg_infinity());
            for iy in span(oy, s, s.in_h) {
                for (m, &v) in down.iter_mut().zip(&x_p[iy * s.in_w..][..s.in_w]) {
                    *m = m.max(v);
                }
            }
            for (ox, out) in y_row.iter_mut().enumerate() {
                *out = down[span(ox, s, s.in_w)]
                    .iter()
                    .fold(T::neg_infinity(), |m, &v| m.max(v));
            }
        }
    }
}
}

simd::kernel! {
/// Adds each output's gradient to the first input of its window (row by
/// row) that equals the output (the max); `dx` is overwritten. The window is
/// scanned from its end keeping the last match seen, which is the first in
/// order, by selects rather than branches the max's position would mispredict.
pub fn maxpool_backward<T: Real>(
    x: &[T],
    y: &[T],
    dy: &[T],
    dx: &mut [T],
    s: &PoolShape,
    batch: usize,
) {
    let (in_plane, out_plane) = (s.in_h * s.in_w, s.out_h * s.out_w);
    dx[..batch * s.c * in_plane].fill(T::zero());
    for p in 0..batch * s.c {
        let x_p = &x[p * in_plane..][..in_plane];
        let (y_p, dy_p) = (
            &y[p * out_plane..][..out_plane],
            &dy[p * out_plane..][..out_plane],
        );
        let dx_p = &mut dx[p * in_plane..][..in_plane];
        for oy in 0..s.out_h {
            let rows = span(oy, s, s.in_h);
            for ox in 0..s.out_w {
                let o = oy * s.out_w + ox;
                let cols = span(ox, s, s.in_w);
                let mut first = usize::MAX;
                for iy in rows.clone().rev() {
                    let line = &x_p[iy * s.in_w..][..s.in_w];
                    for ix in cols.clone().rev() {
                        first = if line[ix] == y_p[o] { iy * s.in_w + ix } else { first };
                    }
                }
                if let Some(d) = dx_p.get_mut(first) {
                    *d += dy_p[o];
                }
            }
        }
    }
}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cpu::gradcheck::{check_gradient, dot, random};

    const SHAPE: PoolShape = PoolShape {
        c: 2,
        in_h: 7,
        in_w: 8,
        size: 3,
        stride: 2,
        out_h: 3,
        out_w: 3,
    };

    fn forward(x: &[f64]) -> Vec<f64> {
        let mut y = vec![0.0; 2 * SHAPE.c * SHAPE.out_h * SHAPE.out_w];
        maxpool_forward(x, &mut y, &SHAPE, 2);
        y
    }

    #[test]
    fn forward_matches_the_definition() {
        let x = random(2 * SHAPE.c * SHAPE.in_h * SHAPE.in_w, 1);
        let y = forward(&x);
        for p in 0..2 * SHAPE.c {
            for oy in 0..SHAPE.out_h {
                for ox in 0..SHAPE.out_w {
                    let mut want = f64::MIN;
                    for dy in 0..3 {
                        for dx in 0..3 {
                            want = want
                                .max(x[(p * SHAPE.in_h + 2 * oy + dy) * SHAPE.in_w + 2 * ox + dx]);
                        }
                    }
                    assert_eq!(y[(p * SHAPE.out_h + oy) * SHAPE.out_w + ox], want);
                }
            }
        }
    }

    /// With many ties (inputs of 0, 1 and 2, as after a ReLU), each output's
    /// gradient goes to the first maximum of its window in row-major order,
    /// against a plain scan; one shape's last windows hang over the edge.
    #[test]
    fn ties_go_to_the_first_maximum_of_each_window() {
        let over = PoolShape {
            in_h: 6,
            in_w: 6,
            ..SHAPE
        };
        for s in [SHAPE, over] {
            let planes = 2 * s.c;
            let x: Vec<f64> = random(planes * s.in_h * s.in_w, 4)
                .iter()
                .map(|v| (v * 1.5 + 1.5).floor())
                .collect();
            let mut y = vec![0.0; planes * s.out_h * s.out_w];
            maxpool_forward(&x, &mut y, &s, 2);
            let dy = random(y.len(), 5);
            let mut dx = vec![f64::NAN; x.len()];
            maxpool_backward(&x, &y, &dy, &mut dx, &s, 2);
            let mut want = vec![0.0; x.len()];
            for p in 0..planes {
                for oy in 0..s.out_h {
                    for ox in 0..s.out_w {
                        let o = (p * s.out_h + oy) * s.out_w + ox;
                        let window = (oy * 2..(oy * 2 + 3).min(s.in_h)).flat_map(|iy| {
                            (ox * 2..(ox * 2 + 3).min(s.in_w))
                                .map(move |ix| (p * s.in_h + iy) * s.in_w + ix)
                        });
                        let max = window.clone().map(|i| x[i]).fold(f64::MIN, f64::max);
                        let i = window.clone().find(|&i| x[i] == max).unwrap();
                        want[i] += dy[o];
                    }
                }
            }
            for (g, e) in dx.iter().zip(&want) {
                assert!((g - e).abs() < 1e-12, "{g} vs {e}");
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let x = random(2 * SHAPE.c * SHAPE.in_h * SHAPE.in_w, 2);
        let y = forward(&x);
        let r = random(y.len(), 3);
        let mut dx = vec![0.0; x.len()];
        maxpool_backward(&x, &y, &r, &mut dx, &SHAPE, 2);
        check_gradient("maxpool dx", &x, &dx, |x| dot(&r, &forward(x)));
    }
}
