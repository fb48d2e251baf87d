//! Convolution by im2col and GEMM, forward and backward, reading one or
//! more source towers (the cross-tower conv3 of paper §3.2 sums two).

use super::matmul::{Mat, matmul};
use super::real::Real;
use crate::net::plan::ConvShape;

/// Unfolds one image (`in_c × in_h × in_w`) into `col`
/// (`in_c·k·k × out_h·out_w`), zero where the window hangs over the padding.
fn im2col<T: Real>(x: &[T], s: &ConvShape, col: &mut [T]) {
    let (k, plane) = (s.kernel, s.out_h * s.out_w);
    for c in 0..s.in_c {
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut col[((c * k + ky) * k + kx) * plane..][..plane];
                for oy in 0..s.out_h {
                    let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                    let out = &mut row[oy * s.out_w..][..s.out_w];
                    if iy < 0 || iy >= s.in_h as isize {
                        out.fill(T::zero());
                        continue;
                    }
                    let line = &x[(c * s.in_h + iy as usize) * s.in_w..][..s.in_w];
                    for (ox, o) in out.iter_mut().enumerate() {
                        let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                        *o = if ix >= 0 && ix < s.in_w as isize {
                            line[ix as usize]
                        } else {
                            T::zero()
                        };
                    }
                }
            }
        }
    }
}

/// Adds `col` back into the image it was unfolded from (the adjoint of [`im2col`]).
fn col2im<T: Real>(col: &[T], s: &ConvShape, dx: &mut [T]) {
    let (k, plane) = (s.kernel, s.out_h * s.out_w);
    for c in 0..s.in_c {
        for ky in 0..k {
            for kx in 0..k {
                let row = &col[((c * k + ky) * k + kx) * plane..][..plane];
                for oy in 0..s.out_h {
                    let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                    if iy < 0 || iy >= s.in_h as isize {
                        continue;
                    }
                    let line = &mut dx[(c * s.in_h + iy as usize) * s.in_w..][..s.in_w];
                    for (ox, &v) in row[oy * s.out_w..][..s.out_w].iter().enumerate() {
                        let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                        if ix >= 0 && ix < s.in_w as isize {
                            line[ix as usize] += v;
                        }
                    }
                }
            }
        }
    }
}

fn col_len(s: &ConvShape) -> usize {
    s.in_c * s.kernel * s.kernel * s.out_h * s.out_w
}

/// `y = bias + Σ_s conv(x_s, w_s)` for a batch; `x` is `[source][image][in_c][in_h][in_w]`.
pub fn conv_forward<T: Real>(
    x: &[T],
    w: &[&[T]],
    bias: &[T],
    y: &mut [T],
    s: &ConvShape,
    batch: usize,
    col: &mut Vec<T>,
) {
    let (in_len, plane) = (s.in_c * s.in_h * s.in_w, s.out_h * s.out_w);
    let ick = s.in_c * s.kernel * s.kernel;
    col.resize(col_len(s), T::zero());
    for n in 0..batch {
        let y_n = &mut y[n * s.out_c * plane..][..s.out_c * plane];
        for (c, out) in y_n.chunks_exact_mut(plane).enumerate() {
            out.fill(bias[c]);
        }
        for (src, w_s) in w.iter().enumerate().take(s.sources) {
            im2col(&x[(src * batch + n) * in_len..][..in_len], s, col);
            matmul(
                s.out_c,
                plane,
                ick,
                Mat::rows(w_s, ick),
                Mat::rows(col, plane),
                y_n,
                true,
            );
        }
    }
}

/// Gradients of [`conv_forward`]: `dw_s`, `dbias`, and `dx_s` when `dx` is given.
#[allow(clippy::too_many_arguments)]
pub fn conv_backward<T: Real>(
    x: &[T],
    w: &[&[T]],
    dy: &[T],
    mut dx: Option<&mut [T]>,
    dw: &mut [&mut [T]],
    dbias: &mut [T],
    s: &ConvShape,
    batch: usize,
    col: &mut Vec<T>,
) {
    let (in_len, plane) = (s.in_c * s.in_h * s.in_w, s.out_h * s.out_w);
    let ick = s.in_c * s.kernel * s.kernel;
    col.resize(col_len(s), T::zero());
    dbias.fill(T::zero());
    for g in dw.iter_mut() {
        g.fill(T::zero());
    }
    if let Some(dx) = dx.as_deref_mut() {
        dx.fill(T::zero());
    }
    for n in 0..batch {
        let dy_n = &dy[n * s.out_c * plane..][..s.out_c * plane];
        for (c, g) in dy_n.chunks_exact(plane).enumerate() {
            dbias[c] += g.iter().copied().sum();
        }
        for src in 0..s.sources {
            let image = (src * batch + n) * in_len;
            im2col(&x[image..][..in_len], s, col);
            // dw_s += dy_n (out_c × P) · colᵀ (P × ick)
            matmul(
                s.out_c,
                ick,
                plane,
                Mat::rows(dy_n, plane),
                Mat::rows_transposed(col, plane),
                dw[src],
                true,
            );
            if let Some(dx) = dx.as_deref_mut() {
                // dcol = w_sᵀ (ick × out_c) · dy_n (out_c × P), folded back into dx_s.
                matmul(
                    ick,
                    plane,
                    s.out_c,
                    Mat::rows_transposed(w[src], ick),
                    Mat::rows(dy_n, plane),
                    col,
                    false,
                );
                col2im(col, s, &mut dx[image..][..in_len]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cpu::gradcheck::{check_gradient, dot, random};

    fn shape(sources: usize, stride: usize, pad: usize) -> ConvShape {
        let (in_h, in_w, kernel) = (7, 6, 3);
        ConvShape {
            sources,
            in_c: 2,
            in_h,
            in_w,
            out_c: 3,
            kernel,
            stride,
            pad,
            out_h: (in_h + 2 * pad - kernel) / stride + 1,
            out_w: (in_w + 2 * pad - kernel) / stride + 1,
        }
    }

    /// The definition, one output at a time.
    fn naive(x: &[f64], w: &[Vec<f64>], b: &[f64], s: &ConvShape, batch: usize) -> Vec<f64> {
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

    fn forward(x: &[f64], w: &[Vec<f64>], b: &[f64], s: &ConvShape, batch: usize) -> Vec<f64> {
        let mut y = vec![0.0; batch * s.out_c * s.out_h * s.out_w];
        let blocks: Vec<&[f64]> = w.iter().map(Vec::as_slice).collect();
        conv_forward(x, &blocks, b, &mut y, s, batch, &mut Vec::new());
        y
    }

    #[test]
    fn forward_matches_the_definition() {
        for (sources, stride, pad) in [(1, 1, 0), (1, 2, 1), (2, 1, 1), (2, 3, 2)] {
            let s = shape(sources, stride, pad);
            let batch = 2;
            let x = random(sources * batch * s.in_c * s.in_h * s.in_w, 1);
            let w: Vec<Vec<f64>> = (0..sources)
                .map(|i| random(s.block_len(), 10 + i as u64))
                .collect();
            let b = random(s.out_c, 3);
            let (got, want) = (forward(&x, &w, &b, &s, batch), naive(&x, &w, &b, &s, batch));
            for (g, e) in got.iter().zip(&want) {
                assert!(
                    (g - e).abs() < 1e-12,
                    "{sources} {stride} {pad}: {g} vs {e}"
                );
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        for (sources, stride, pad) in [(1, 1, 1), (2, 2, 1), (1, 3, 0)] {
            let s = shape(sources, stride, pad);
            let batch = 2;
            let x = random(sources * batch * s.in_c * s.in_h * s.in_w, 4);
            let w: Vec<Vec<f64>> = (0..sources)
                .map(|i| random(s.block_len(), 20 + i as u64))
                .collect();
            let b = random(s.out_c, 6);
            let r = random(batch * s.out_c * s.out_h * s.out_w, 7);
            let mut dx = vec![0.0; x.len()];
            let mut dw: Vec<Vec<f64>> = w.iter().map(|w| vec![0.0; w.len()]).collect();
            let mut db = vec![0.0; b.len()];
            {
                let blocks: Vec<&[f64]> = w.iter().map(Vec::as_slice).collect();
                let mut grads: Vec<&mut [f64]> = dw.iter_mut().map(Vec::as_mut_slice).collect();
                conv_backward(
                    &x,
                    &blocks,
                    &r,
                    Some(&mut dx),
                    &mut grads,
                    &mut db,
                    &s,
                    batch,
                    &mut Vec::new(),
                );
            }
            check_gradient("conv dx", &x, &dx, |x| {
                dot(&r, &forward(x, &w, &b, &s, batch))
            });
            check_gradient("conv dbias", &b, &db, |b| {
                dot(&r, &forward(&x, &w, b, &s, batch))
            });
            for src in 0..sources {
                check_gradient("conv dw", &w[src], &dw[src], |ws| {
                    let mut w = w.clone();
                    w[src] = ws.to_vec();
                    dot(&r, &forward(&x, &w, &b, &s, batch))
                });
            }
        }
    }
}
