//! Test helpers: random data, central finite differences and a
//! convolution's definition, in f64.

use crate::net::plan::ConvShape;
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

/// A convolution's definition in f64, one output at a time: `y = bias +
/// Σ_s conv(x_s, w_s)`, `x` being `[source][image][in_c][in_h][in_w]`.
pub fn conv_definition(
    x: &[f64],
    w: &[Vec<f64>],
    b: &[f64],
    s: &ConvShape,
    batch: usize,
) -> Vec<f64> {
    let k = s.kernel;
    let mut y = vec![0.0; batch * s.out_c * s.out_h * s.out_w];
    for n in 0..batch {
        for o in 0..s.out_c {
            for oy in 0..s.out_h {
                for ox in 0..s.out_w {
                    let mut acc = b[o];
                    for (src, w_s) in w.iter().enumerate() {
                        for c in 0..s.in_c {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                                    let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                                    if iy < 0 || ix < 0 {
                                        continue;
                                    }
                                    let (iy, ix) = (iy as usize, ix as usize);
                                    if iy >= s.in_h || ix >= s.in_w {
                                        continue;
                                    }
                                    let xi = (((src * batch + n) * s.in_c + c) * s.in_h + iy)
                                        * s.in_w
                                        + ix;
                                    acc += x[xi] * w_s[((o * s.in_c + c) * k + ky) * k + kx];
                                }
                            }
                        }
                    }
                    y[((n * s.out_c + o) * s.out_h + oy) * s.out_w + ox] = acc;
                }
            }
        }
    }
    y
}

/// The weight gradient of a one-tower convolution's definition in f64, one
/// weight at a time: `dw[o][c][ky][kx] = Σ_n Σ_(oy,ox) dy[n][o][oy][ox] ·
/// x[n][c][oy·stride + ky − pad][ox·stride + kx − pad]` (zero outside the image).
pub fn conv_weight_gradient_definition(
    x: &[f64],
    dy: &[f64],
    s: &ConvShape,
    batch: usize,
) -> Vec<f64> {
    let k = s.kernel;
    let mut dw = vec![0.0; s.out_c * s.in_c * k * k];
    for o in 0..s.out_c {
        for c in 0..s.in_c {
            for ky in 0..k {
                for kx in 0..k {
                    let mut acc = 0.0;
                    for n in 0..batch {
                        for oy in 0..s.out_h {
                            for ox in 0..s.out_w {
                                let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                                let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                                if iy < 0
                                    || ix < 0
                                    || iy as usize >= s.in_h
                                    || ix as usize >= s.in_w
                                {
                                    continue;
                                }
                                let xi = ((n * s.in_c + c) * s.in_h + iy as usize) * s.in_w
                                    + ix as usize;
                                let yi = ((n * s.out_c + o) * s.out_h + oy) * s.out_w + ox;
                                acc += dy[yi] * x[xi];
                            }
                        }
                    }
                    dw[((o * s.in_c + c) * k + ky) * k + kx] = acc;
                }
            }
        }
    }
    dw
}
