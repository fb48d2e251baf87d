//! Local response normalization across channels (paper §3.3):
//! `b[c] = a[c] / (k + α Σ_{|j−c| ≤ n/2} a[j]²)^β`, α multiplying the sum
//! directly as the paper writes it.

use super::real::Real;
use super::simd;
use crate::net::plan::LrnShape;

/// Channels `c − n/2 ..= c + n/2` that exist.
fn window(c: usize, s: &LrnShape) -> std::ops::Range<usize> {
    let half = s.size / 2;
    c.saturating_sub(half)..(c + half + 1).min(s.c)
}

/// `s ↦ s^−β`, chosen once per call so that no test on β sits in the loops.
trait NegPow<T>: Copy {
    fn of(self, s: T) -> T;
}

/// The paper's β = ¾ by two square roots instead of `powf`
/// (`s^−¾ = 1 / (√s · √√s)`): the same value to a few ulps, and it
/// vectorizes, which `powf` does not.
#[derive(Clone, Copy)]
struct ThreeQuarters;

impl<T: Real> NegPow<T> for ThreeQuarters {
    #[inline(always)]
    fn of(self, s: T) -> T {
        let root = s.sqrt();
        (root * root.sqrt()).recip()
    }
}

/// Any other β, by `powf` with the exponent −β.
#[derive(Clone, Copy)]
struct Powf<T>(T);

impl<T: Real> NegPow<T> for Powf<T> {
    #[inline(always)]
    fn of(self, s: T) -> T {
        s.powf(self.0)
    }
}

/// Runs `$body` with `$p` bound to the [`NegPow`] for β.
macro_rules! with_neg_pow {
    ($beta:expr, $p:ident => $body:expr) => {
        if $beta == 0.75 {
            let $p = ThreeQuarters;
            $body
        } else {
            let $p = Powf(T::of(-f64::from($beta)));
            $body
        }
    };
}

simd::kernel! {
/// `y = x · scale^−β` with `scale = k + α Σ x²`, kept for the backward pass;
/// one channel at a time, so its window of planes is still in cache for `y`.
/// Each of the shape's groups is a run of channels windows stay inside,
/// laid out as an image of its own would be.
pub fn lrn_forward<T: Real>(x: &[T], y: &mut [T], scale: &mut [T], s: &LrnShape, batch: usize) {
    with_neg_pow!(s.beta, p => forward(x, y, scale, s, batch * s.groups, p));
}
}

#[inline(always)]
fn forward<T: Real>(
    x: &[T],
    y: &mut [T],
    scale: &mut [T],
    s: &LrnShape,
    batch: usize,
    neg_pow: impl NegPow<T>,
) {
    let (alpha, k) = (T::of(s.alpha.into()), T::of(s.k.into()));
    let image = s.c * s.plane;
    for n in 0..batch {
        let x_n = &x[n * image..][..image];
        for c in 0..s.c {
            let at = (n * image + c * s.plane)..(n * image + (c + 1) * s.plane);
            let out = &mut scale[at.clone()];
            let mut planes = window(c, s).map(|j| &x_n[j * s.plane..][..s.plane]);
            let first = planes.next().expect("a window holds its own channel");
            for (o, &v) in out.iter_mut().zip(first) {
                *o = v * v;
            }
            for plane in planes {
                for (o, &v) in out.iter_mut().zip(plane) {
                    *o += v * v;
                }
            }
            let x_c = &x_n[c * s.plane..][..s.plane];
            for ((o, y), &x) in out.iter_mut().zip(&mut y[at]).zip(x_c) {
                *o = k + alpha * *o;
                *y = x * neg_pow.of(*o);
            }
        }
    }
}

simd::kernel! {
/// `dx[c] = dy[c]·scale[c]^−β − 2αβ·x[c]·Σ_{j near c} dy[j]·y[j]/scale[j]`.
pub fn lrn_backward<T: Real>(
    x: &[T],
    y: &[T],
    scale: &[T],
    dy: &[T],
    dx: &mut [T],
    s: &LrnShape,
    batch: usize,
) {
    with_neg_pow!(s.beta, p => backward(x, y, scale, dy, dx, s, batch * s.groups, p));
}
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn backward<T: Real>(
    x: &[T],
    y: &[T],
    scale: &[T],
    dy: &[T],
    dx: &mut [T],
    s: &LrnShape,
    batch: usize,
    neg_pow: impl NegPow<T>,
) {
    let two_alpha_beta = T::of(2.0 * f64::from(s.alpha) * f64::from(s.beta));
    let image = s.c * s.plane;
    let mut ratio = vec![T::zero(); image];
    for n in 0..batch {
        let at = n * image..(n + 1) * image;
        let (x_n, y_n, sc_n, dy_n) = (&x[at.clone()], &y[at.clone()], &scale[at.clone()], &dy[at]);
        for (((r, &g), &out), &sc) in ratio.iter_mut().zip(dy_n).zip(y_n).zip(sc_n) {
            *r = g * out / sc;
        }
        let dx_n = &mut dx[n * image..][..image];
        for c in 0..s.c {
            let range = c * s.plane..(c + 1) * s.plane;
            let out = &mut dx_n[range.clone()];
            out.fill(T::zero());
            for j in window(c, s) {
                for (o, &r) in out.iter_mut().zip(&ratio[j * s.plane..][..s.plane]) {
                    *o += r;
                }
            }
            for (((o, &xv), &g), &sc) in out
                .iter_mut()
                .zip(&x_n[range.clone()])
                .zip(&dy_n[range.clone()])
                .zip(&sc_n[range])
            {
                *o = g * neg_pow.of(sc) - two_alpha_beta * xv * *o;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cpu::gradcheck::{check_gradient, dot, random};

    fn shape(c: usize) -> LrnShape {
        LrnShape {
            groups: 1,
            c,
            plane: 6,
            size: 5,
            alpha: 1e-4,
            beta: 0.75,
            k: 2.0,
        }
    }

    fn forward(x: &[f64], s: &LrnShape, batch: usize) -> Vec<f64> {
        let mut y = vec![0.0; x.len()];
        let mut scale = vec![0.0; x.len()];
        lrn_forward(x, &mut y, &mut scale, s, batch);
        y
    }

    #[test]
    fn forward_matches_the_papers_formula() {
        let s = shape(7);
        let batch = 2;
        // Large inputs, so the α term is not negligible next to k.
        let x: Vec<f64> = random(batch * s.c * s.plane, 1)
            .iter()
            .map(|v| 40.0 * v)
            .collect();
        let y = forward(&x, &s, batch);
        for n in 0..batch {
            for c in 0..s.c {
                for p in 0..s.plane {
                    let lo = c.saturating_sub(2);
                    let hi = (c + 2).min(s.c - 1);
                    let sum: f64 = (lo..=hi)
                        .map(|j| x[(n * s.c + j) * s.plane + p].powi(2))
                        .sum();
                    let i = (n * s.c + c) * s.plane + p;
                    let (alpha, beta, k) = (f64::from(s.alpha), f64::from(s.beta), f64::from(s.k));
                    let want = x[i] / (k + alpha * sum).powf(beta);
                    assert!((y[i] - want).abs() < 1e-12 * want.abs().max(1.0));
                }
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        for channels in [1, 3, 9] {
            let s = LrnShape {
                alpha: 0.05,
                ..shape(channels)
            };
            let batch = 2;
            let x: Vec<f64> = random(batch * s.c * s.plane, 2)
                .iter()
                .map(|v| 3.0 * v)
                .collect();
            let r = random(x.len(), 3);
            let mut y = vec![0.0; x.len()];
            let mut scale = vec![0.0; x.len()];
            lrn_forward(&x, &mut y, &mut scale, &s, batch);
            let mut dx = vec![0.0; x.len()];
            lrn_backward(&x, &y, &scale, &r, &mut dx, &s, batch);
            check_gradient("lrn dx", &x, &dx, |x| dot(&r, &forward(x, &s, batch)));
        }
    }
}
