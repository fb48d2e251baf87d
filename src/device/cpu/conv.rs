//! Convolution by im2col and GEMM (or, for an unpadded one-tower layer in
//! f32, the direct kernel of `direct.rs`), forward and backward, reading one or
//! more source towers (the cross-tower conv3 of paper §3.2 sums two). Each
//! image is unfolded a band of output rows at a time, so that the unfolded
//! band stays in the core's cache while the product reads it.

use super::matmul::{Mat, matmul, matmul_strided};
use super::real::Real;
use super::simd;
use super::winograd;
use crate::net::plan::ConvShape;
use std::ops::Range;

/// Unfolded bytes per band the banding aims at (a share of a core's L2).
const BAND_BYTES: usize = 512 << 10;
/// Fewest columns (output pixels) per band, so each product stays wide.
const BAND_MIN_COLUMNS: usize = 256;

/// Output rows per band of [`im2col`].
fn band_rows<T>(s: &ConvShape) -> usize {
    let row_bytes = s.in_c * s.kernel * s.kernel * s.out_w * size_of::<T>();
    let rows = (BAND_BYTES / row_bytes.max(1)).max(BAND_MIN_COLUMNS.div_ceil(s.out_w.max(1)));
    rows.clamp(1, s.out_h.max(1))
}

/// The bands of output rows, in order.
fn bands<T>(s: &ConvShape) -> impl Iterator<Item = Range<usize>> {
    let rows = band_rows::<T>(s);
    (0..s.out_h)
        .step_by(rows)
        .map(move |start| start..(start + rows).min(s.out_h))
}

/// The outputs `ox` whose input column `ox·stride + kx − pad` lies inside a
/// line of `in_w`, as a range (empty when none does).
fn valid_columns(s: &ConvShape, kx: usize) -> Range<usize> {
    // ox·stride ≥ pad − kx, and ox·stride ≤ in_w − 1 + pad − kx.
    let lo = s.pad.saturating_sub(kx).div_ceil(s.stride);
    let hi = match (s.in_w + s.pad).checked_sub(kx + 1) {
        Some(last) => (last / s.stride + 1).min(s.out_w),
        None => 0,
    };
    lo.min(hi)..hi
}

/// The input row under output row `oy` and kernel row `ky`, if inside the image.
fn input_row(s: &ConvShape, oy: usize, ky: usize) -> Option<usize> {
    (oy * s.stride + ky)
        .checked_sub(s.pad)
        .filter(|&iy| iy < s.in_h)
}

/// Unfolds output rows `rows` of one image (`in_c × in_h × in_w`) into `col`
/// (`in_c·k·k × rows·out_w`), zero where the window hangs over the padding.
/// With a stride, each input line is first split into its `stride` phases
/// (`phases[r][i] = line[i·stride + r]`), so every kernel column's samples
/// are one contiguous copy.
fn im2col<T: Real>(x: &[T], s: &ConvShape, rows: Range<usize>, col: &mut [T], phases: &mut Vec<T>) {
    let k = s.kernel;
    let band = rows.len() * s.out_w;
    let phase_len = s.in_w.div_ceil(s.stride);
    phases.resize(s.stride * phase_len, T::zero());
    let columns: Vec<Range<usize>> = (0..k).map(|kx| valid_columns(s, kx)).collect();
    for c in 0..s.in_c {
        for ky in 0..k {
            let first_row = (c * k + ky) * k;
            for (r, oy) in rows.clone().enumerate() {
                let at = r * s.out_w;
                let Some(iy) = input_row(s, oy, ky) else {
                    for kx in 0..k {
                        col[(first_row + kx) * band + at..][..s.out_w].fill(T::zero());
                    }
                    continue;
                };
                let line = &x[(c * s.in_h + iy) * s.in_w..][..s.in_w];
                if s.stride > 1 {
                    for (r, phase) in phases.chunks_exact_mut(phase_len).enumerate() {
                        let samples = line.get(r..).unwrap_or_default().iter().step_by(s.stride);
                        for (p, &v) in phase.iter_mut().zip(samples) {
                            *p = v;
                        }
                    }
                }
                for (kx, cols) in columns.iter().enumerate() {
                    let out = &mut col[(first_row + kx) * band + at..][..s.out_w];
                    out[..cols.start].fill(T::zero());
                    out[cols.end..].fill(T::zero());
                    if cols.is_empty() {
                        continue;
                    }
                    let first = cols.start * s.stride + kx - s.pad;
                    let source = if s.stride == 1 {
                        &line[first..]
                    } else {
                        &phases[(first % s.stride) * phase_len + first / s.stride..]
                    };
                    out[cols.clone()].copy_from_slice(&source[..cols.len()]);
                }
            }
        }
    }
}

/// Adds `col` (output rows `rows`) back into the image it was unfolded from
/// (the adjoint of [`im2col`]).
fn col2im<T: Real>(col: &[T], s: &ConvShape, rows: Range<usize>, dx: &mut [T]) {
    let k = s.kernel;
    let band = rows.len() * s.out_w;
    for c in 0..s.in_c {
        for ky in 0..k {
            for kx in 0..k {
                let row = &col[((c * k + ky) * k + kx) * band..][..band];
                let cols = valid_columns(s, kx);
                if cols.is_empty() {
                    continue;
                }
                let first = cols.start * s.stride + kx - s.pad;
                for (r, oy) in rows.clone().enumerate() {
                    let Some(iy) = input_row(s, oy, ky) else {
                        continue;
                    };
                    let line = &mut dx[(c * s.in_h + iy) * s.in_w..][..s.in_w];
                    let inside = &row[r * s.out_w..][cols.clone()];
                    for (d, &v) in line[first..].iter_mut().step_by(s.stride).zip(inside) {
                        *d += v;
                    }
                }
            }
        }
    }
}

/// The buffers a convolution works in, kept from call to call.
#[derive(Debug, Default)]
pub struct ConvScratch<T> {
    /// One band of the unfolded image (or the direct kernel's filters).
    col: Vec<T>,
    phases: Vec<T>,
    winograd: winograd::Scratch<T>,
}

/// `y = bias + Σ_s conv(x_s, w_s)` for a batch; `x` is `[source][image][in_c][in_h][in_w]`.
/// In f32, an unpadded one-tower layer runs by the direct kernel and a 3×3
/// or 5×5 stride-1 layer by Winograd's F(2×2, r×r); otherwise, and always in f64
/// (the reference), by im2col and GEMM.
pub fn conv_forward<T: Real>(
    x: &[T],
    w: &[&[T]],
    bias: &[T],
    y: &mut [T],
    s: &ConvShape,
    batch: usize,
    scratch: &mut ConvScratch<T>,
) {
    if let [w] = w
        && T::conv_forward_direct(x, w, bias, y, s, batch, &mut scratch.col)
    {
        return;
    }
    if T::WINOGRAD && winograd::applies(s) {
        winograd::conv_forward(x, w, bias, y, s, batch, &mut scratch.winograd);
        return;
    }
    let ConvScratch { col, phases, .. } = scratch;
    let (in_len, plane) = (s.in_c * s.in_h * s.in_w, s.out_h * s.out_w);
    let ick = s.in_c * s.kernel * s.kernel;
    col.resize(ick * band_rows::<T>(s) * s.out_w, T::zero());
    for n in 0..batch {
        let y_n = &mut y[n * s.out_c * plane..][..s.out_c * plane];
        for (c, out) in y_n.chunks_exact_mut(plane).enumerate() {
            out.fill(bias[c]);
        }
        for (src, w_s) in w.iter().enumerate().take(s.sources) {
            let image = &x[(src * batch + n) * in_len..][..in_len];
            for rows in bands::<T>(s) {
                let (at, width) = (rows.start * s.out_w, rows.len() * s.out_w);
                im2col(image, s, rows, col, phases);
                matmul_strided(
                    s.out_c,
                    width,
                    ick,
                    Mat::rows(w_s, ick),
                    Mat::rows(col, width),
                    &mut y_n[at..],
                    plane,
                    true,
                );
            }
        }
    }
}

/// Gradients of [`conv_forward`]: `dw_s`, `dbias`, and `dx_s` when `dx` is
/// given; in f32, `dw` of an unpadded one-tower layer without `dx` (conv1)
/// by the direct kernel, and those of a 3×3 or 5×5 stride-1 layer by
/// Winograd's F(2×2, r×r).
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
    scratch: &mut ConvScratch<T>,
) {
    let ConvScratch {
        col,
        phases,
        winograd: transforms,
    } = scratch;
    if dx.is_none()
        && let [dw] = dw
        && T::conv_backward_weights_direct(x, dy, dw, s, batch, col)
    {
        bias_gradient(dy, dbias, s, batch);
        return;
    }
    if T::WINOGRAD && winograd::applies_backward(s) {
        bias_gradient(dy, dbias, s, batch);
        winograd::conv_backward_weights(x, dy, dw, s, batch, transforms);
        if let Some(dx) = dx {
            winograd::conv_backward_data(dy, w, dx, s, batch, transforms);
        }
        return;
    }
    let (in_len, plane) = (s.in_c * s.in_h * s.in_w, s.out_h * s.out_w);
    let ick = s.in_c * s.kernel * s.kernel;
    col.resize(ick * band_rows::<T>(s) * s.out_w, T::zero());
    bias_gradient(dy, dbias, s, batch);
    for g in dw.iter_mut() {
        g.fill(T::zero());
    }
    if let Some(dx) = dx.as_deref_mut() {
        dx.fill(T::zero());
    }
    for n in 0..batch {
        let dy_n = &dy[n * s.out_c * plane..][..s.out_c * plane];
        for src in 0..s.sources {
            let image = (src * batch + n) * in_len;
            for rows in bands::<T>(s) {
                let (at, width) = (rows.start * s.out_w, rows.len() * s.out_w);
                let dy_band = Mat::strided(&dy_n[at..], plane);
                im2col(&x[image..][..in_len], s, rows.clone(), col, phases);
                // dw_s += dy_band (out_c × B) · colᵀ (B × ick)
                matmul(
                    s.out_c,
                    ick,
                    width,
                    dy_band,
                    Mat::rows_transposed(col, width),
                    dw[src],
                    true,
                );
                if let Some(dx) = dx.as_deref_mut() {
                    // dcol = w_sᵀ (ick × out_c) · dy_band (out_c × B), folded back into dx_s.
                    matmul(
                        ick,
                        width,
                        s.out_c,
                        Mat::rows_transposed(w[src], ick),
                        dy_band,
                        col,
                        false,
                    );
                    col2im(col, s, rows, &mut dx[image..][..in_len]);
                }
            }
        }
    }
}

/// Partial sums per plane in [`bias_gradient`], so that its adds run as
/// one vector instead of one chain.
const BIAS_LANES: usize = 16;

simd::kernel! {
/// `dbias[o] = Σ_n Σ_p dy[n][o][p]`, overwriting `dbias`: each plane summed
/// in [`BIAS_LANES`] interleaved partial sums, added up at its end.
pub fn bias_gradient<T: Real>(dy: &[T], dbias: &mut [T], s: &ConvShape, batch: usize) {
    let plane = s.out_h * s.out_w;
    dbias.fill(T::zero());
    for dy_n in dy.chunks_exact(s.out_c * plane).take(batch) {
        for (c, g) in dy_n.chunks_exact(plane).enumerate() {
            let mut lanes = [T::zero(); BIAS_LANES];
            let mut runs = g.chunks_exact(BIAS_LANES);
            for run in runs.by_ref() {
                for (l, &v) in lanes.iter_mut().zip(run) {
                    *l += v;
                }
            }
            let tail: T = runs.remainder().iter().copied().sum();
            dbias[c] += lanes.iter().copied().sum::<T>() + tail;
        }
    }
}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cpu::gradcheck::{check_gradient, conv_definition, dot, random};

    fn shape(sources: usize, stride: usize, pad: usize) -> ConvShape {
        let (in_h, in_w, kernel) = (7, 6, 3);
        ConvShape {
            groups: 1,
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

    fn forward(x: &[f64], w: &[Vec<f64>], b: &[f64], s: &ConvShape, batch: usize) -> Vec<f64> {
        let mut y = vec![0.0; batch * s.out_c * s.out_h * s.out_w];
        let blocks: Vec<&[f64]> = w.iter().map(Vec::as_slice).collect();
        conv_forward(x, &blocks, b, &mut y, s, batch, &mut ConvScratch::default());
        y
    }

    #[test]
    fn forward_matches_the_definition() {
        for (sources, stride, pad) in [
            (1, 1, 0),
            (1, 2, 1),
            (2, 1, 1),
            (2, 3, 2),
            (1, 4, 0),
            (1, 4, 2),
        ] {
            let s = shape(sources, stride, pad);
            let batch = 2;
            let x = random(sources * batch * s.in_c * s.in_h * s.in_w, 1);
            let w: Vec<Vec<f64>> = (0..sources)
                .map(|i| random(s.block_len(), 10 + i as u64))
                .collect();
            let b = random(s.out_c, 3);
            let (got, want) = (
                forward(&x, &w, &b, &s, batch),
                conv_definition(&x, &w, &b, &s, batch),
            );
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
        for (sources, stride, pad) in [(1, 1, 1), (2, 2, 1), (1, 3, 0), (1, 4, 2)] {
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
                    &mut ConvScratch::default(),
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

    /// The f32 gradients of 3×3 and 5×5 stride-1 layers (by Winograd)
    /// against the f64 ones (by im2col) of the same f32 inputs, within
    /// 16 ε · Σ|dy·w| (or Σ|dy·x|) per element times the sums' length (see
    /// `winograd`'s f32 tests for the bound).
    #[test]
    fn f32_gradients_of_3x3_and_5x5_layers_match_f64() {
        for (kernel, sources, pad) in [
            (3, 1, 1),
            (3, 2, 0),
            (3, 1, 2),
            (5, 1, 2),
            (5, 2, 1),
            (5, 1, 4),
        ] {
            let s = ConvShape {
                kernel,
                out_h: 7 + 2 * pad + 1 - kernel,
                out_w: 6 + 2 * pad + 1 - kernel,
                ..shape(sources, 1, pad)
            };
            let batch = 3;
            let narrow = |v: Vec<f64>| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
            let widen = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
            let x = narrow(random(sources * batch * s.in_c * s.in_h * s.in_w, 1));
            let w: Vec<Vec<f32>> = (0..sources)
                .map(|i| narrow(random(s.block_len(), 2 + i as u64)))
                .collect();
            let dy = narrow(random(batch * s.out_c * s.out_h * s.out_w, 5));
            let gradients = |x: &[f64], w: &[Vec<f64>], dy: &[f64]| {
                let mut dx = vec![0.0; x.len()];
                let mut dw: Vec<Vec<f64>> = w.iter().map(|w| vec![0.0; w.len()]).collect();
                let blocks: Vec<&[f64]> = w.iter().map(Vec::as_slice).collect();
                let mut grads: Vec<&mut [f64]> = dw.iter_mut().map(Vec::as_mut_slice).collect();
                let mut db = vec![0.0; s.out_c];
                conv_backward(
                    x,
                    &blocks,
                    dy,
                    Some(&mut dx),
                    &mut grads,
                    &mut db,
                    &s,
                    batch,
                    &mut ConvScratch::default(),
                );
                (dx, dw, db)
            };
            let mut got = vec![f32::NAN; x.len()];
            let mut dw: Vec<Vec<f32>> = w.iter().map(|w| vec![f32::NAN; w.len()]).collect();
            let mut db = vec![f32::NAN; s.out_c];
            let blocks: Vec<&[f32]> = w.iter().map(Vec::as_slice).collect();
            let mut grads: Vec<&mut [f32]> = dw.iter_mut().map(Vec::as_mut_slice).collect();
            conv_backward(
                &x,
                &blocks,
                &dy,
                Some(&mut got),
                &mut grads,
                &mut db,
                &s,
                batch,
                &mut ConvScratch::default(),
            );
            let wide: Vec<Vec<f64>> = w.iter().map(|w| widen(w)).collect();
            let (want, want_dw, want_db) = gradients(&widen(&x), &wide, &widen(&dy));
            let abs = |v: &[f64]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
            let wide_abs: Vec<Vec<f64>> = wide.iter().map(|w| abs(w)).collect();
            let (size, size_dw, size_db) =
                gradients(&abs(&widen(&x)), &wide_abs, &abs(&widen(&dy)));
            let close = |got: &[f32], want: &[f64], size: &[f64], terms: usize, what: &str| {
                for ((g, e), m) in got.iter().zip(want).zip(size) {
                    let bound = 16.0 * terms as f64 * f64::from(f32::EPSILON) * m;
                    assert!(
                        (f64::from(*g) - e).abs() <= bound,
                        "{kernel} {sources} {pad} {what}: {g} vs {e}"
                    );
                }
            };
            close(&got, &want, &size, s.out_c * kernel * kernel, "dx");
            for ((g, e), m) in dw.iter().zip(&want_dw).zip(&size_dw) {
                close(g, e, m, batch * s.out_h * s.out_w, "dw");
            }
            close(&db, &want_db, &size_db, batch * s.out_h * s.out_w, "dbias");
        }
    }

    /// A layer whose unfolded image takes several bands, forward against the
    /// definition and backward against finite differences.
    #[test]
    fn banded_layers_match_the_definition_and_finite_differences() {
        let s = ConvShape {
            groups: 1,
            sources: 1,
            in_c: 64,
            in_h: 14,
            in_w: 62,
            out_c: 2,
            kernel: 3,
            stride: 1,
            pad: 0,
            out_h: 12,
            out_w: 60,
        };
        assert!(
            bands::<f64>(&s).count() > 1,
            "one band only: {:?}",
            band_rows::<f64>(&s)
        );
        let batch = 1;
        let x = random(s.in_c * s.in_h * s.in_w, 11);
        let w = vec![random(s.block_len(), 12)];
        let b = random(s.out_c, 13);
        for (g, e) in forward(&x, &w, &b, &s, batch)
            .iter()
            .zip(&conv_definition(&x, &w, &b, &s, batch))
        {
            assert!((g - e).abs() < 1e-12, "{g} vs {e}");
        }
        let r = random(s.out_c * s.out_h * s.out_w, 14);
        let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; w[0].len()], vec![0.0; 2]);
        conv_backward(
            &x,
            &[&w[0]],
            &r,
            Some(&mut dx),
            &mut [&mut dw],
            &mut db,
            &s,
            batch,
            &mut ConvScratch::default(),
        );
        check_gradient("banded conv dx", &x, &dx, |x| {
            dot(&r, &forward(x, &w, &b, &s, batch))
        });
        check_gradient("banded conv dw", &w[0], &dw, |ws| {
            dot(&r, &forward(&x, &[ws.to_vec()], &b, &s, batch))
        });
    }
}
