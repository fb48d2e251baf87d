//! Overlapping max-pooling (paper §3.4), forward and backward.

use super::real::Real;
use crate::net::plan::PoolShape;

/// Calls `f(output index, input indices of its window)` for every output of one plane.
fn for_each_window(s: &PoolShape, mut f: impl FnMut(usize, &mut dyn Iterator<Item = usize>)) {
    for oy in 0..s.out_h {
        for ox in 0..s.out_w {
            let (y0, x0) = (oy * s.stride, ox * s.stride);
            let mut window = (y0..(y0 + s.size).min(s.in_h))
                .flat_map(|iy| (x0..(x0 + s.size).min(s.in_w)).map(move |ix| iy * s.in_w + ix));
            f(oy * s.out_w + ox, &mut window);
        }
    }
}

/// `y` = the maximum of each window.
pub fn maxpool_forward<T: Real>(x: &[T], y: &mut [T], s: &PoolShape, batch: usize) {
    let (in_plane, out_plane) = (s.in_h * s.in_w, s.out_h * s.out_w);
    for p in 0..batch * s.c {
        let x_p = &x[p * in_plane..][..in_plane];
        let y_p = &mut y[p * out_plane..][..out_plane];
        for_each_window(s, |o, window| {
            y_p[o] = window.map(|i| x_p[i]).fold(T::neg_infinity(), T::max);
        });
    }
}

/// Adds each output's gradient to the first input of its window that equals
/// the output (the max); `dx` is overwritten.
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
        for_each_window(s, |o, mut window| {
            if let Some(i) = Iterator::find(&mut window, |&i| x_p[i] == y_p[o]) {
                dx_p[i] += dy_p[o];
            }
        });
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
