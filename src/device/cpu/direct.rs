//! Direct convolution for an unpadded layer read from one tower, such as the
//! paper's conv1 (11×11, stride 4, §3.5): no unfolded copy of the image. A
//! tile of 8 neighbouring outputs of one row × 48 filters is held in
//! registers; each input sample under a tile's windows is broadcast against
//! 16 filters at a time, read straight from the image. With only 48 filters
//! an unfolded copy is read 48 times per write, so writing and packing it
//! cost as much as the product (the im2col path of `conv.rs`). The weight
//! gradient runs alike: a tile of 48 filters × up to 6 kernel columns of one
//! kernel row is held in registers over a chunk of output rows, whose
//! gradients are first transposed so that one load reads 16 filters.

use crate::net::plan::ConvShape;

/// Filters per register tile (3 vectors of 16) and outputs per tile.
const FILTERS: usize = 48;
const OUTPUTS: usize = 8;
/// Kernel columns per register tile of the weight gradient.
const TAPS: usize = 6;
/// Bytes of output gradients transposed at a time (a share of a core's L1).
const CHUNK_BYTES: usize = 32 << 10;

/// Whether the direct kernels take layer `s` of a batch whose operands are
/// as long as given: unpadded, read from one tower, filters in multiples
/// of 16, every window inside its image; panics where an operand is short.
fn applies(s: &ConvShape, batch: usize, x: usize, y: usize, w: usize) -> bool {
    if s.pad != 0 || s.sources != 1 || !s.out_c.is_multiple_of(16) || s.out_c == 0 {
        return false;
    }
    let windows_fit = s.out_h == 0
        || s.out_w == 0
        || (s.out_h - 1) * s.stride + s.kernel <= s.in_h
            && (s.out_w - 1) * s.stride + s.kernel <= s.in_w;
    assert!(
        windows_fit
            && x >= batch * s.in_c * s.in_h * s.in_w
            && y >= batch * s.out_c * s.out_h * s.out_w
            && w >= s.out_c * s.in_c * s.kernel * s.kernel,
        "direct convolution operands out of bounds"
    );
    true
}

/// `y = bias + conv(x, w)` for a batch, by the AVX-512 kernel; false (and
/// nothing done) where the CPU lacks AVX-512F or the layer is not unpadded,
/// read from one tower, with filters in multiples of 16. `wt` is scratch.
pub fn conv_forward_f32(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    y: &mut [f32],
    s: &ConvShape,
    batch: usize,
    wt: &mut Vec<f32>,
) -> bool {
    if !applies(s, batch, x.len(), y.len(), w.len()) {
        return false;
    }
    assert!(bias.len() >= s.out_c, "direct convolution bias too short");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        let ick = s.in_c * s.kernel * s.kernel;
        // The filters transposed, `wt[i][o] = w[o][i]`, so that one load
        // reads 16 filters; after them, one output row `[output][filter]`.
        wt.resize((ick + s.out_w) * s.out_c, 0.0);
        let (wt, row) = wt.split_at_mut(ick * s.out_c);
        for (o, filter) in w.chunks_exact(ick).take(s.out_c).enumerate() {
            for (i, &v) in filter.iter().enumerate() {
                wt[i * s.out_c + o] = v;
            }
        }
        // SAFETY: the CPU has AVX-512F, and `applies` keeps every window of
        // every output inside its image.
        unsafe { avx512::images(x, wt, bias, row, y, s, batch) };
        return true;
    }
    let _ = (x, w, bias, y, batch, wt);
    false
}

/// `dw[o][c][ky][kx] = Σ_n Σ_(oy,ox) dy[n][o][oy][ox] · x[n][c][oy·stride +
/// ky][ox·stride + kx]`, the weight gradient of [`conv_forward_f32`]
/// (overwriting `dw`), by the AVX-512 kernel; false (and nothing done) where
/// that one does not run. `scratch` holds the transposed gradients.
pub fn conv_backward_weights_f32(
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    s: &ConvShape,
    batch: usize,
    scratch: &mut Vec<f32>,
) -> bool {
    if !applies(s, batch, x.len(), dy.len(), dw.len()) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        let ick = s.in_c * s.kernel * s.kernel;
        let row_len = s.out_w * s.out_c;
        let rows = (CHUNK_BYTES / size_of::<f32>() / row_len.max(1)).clamp(1, s.out_h.max(1));
        scratch.clear();
        scratch.resize(ick * s.out_c + rows * row_len, 0.0);
        let (dwt, dyt) = scratch.split_at_mut(ick * s.out_c);
        // SAFETY: the CPU has AVX-512F, and `applies` keeps every window of
        // every output inside its image.
        unsafe { avx512::weight_gradient(x, dy, dwt, dyt, s, batch) };
        // `dwt[i][o]` back to `dw[o][i]`.
        for (o, row) in dw.chunks_exact_mut(ick).take(s.out_c).enumerate() {
            for (i, g) in row.iter_mut().enumerate() {
                *g = dwt[i * s.out_c + o];
            }
        }
        return true;
    }
    let _ = (x, dy, dw, batch, scratch);
    false
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{FILTERS, OUTPUTS, TAPS};
    use crate::net::plan::ConvShape;
    use std::arch::x86_64::*;

    /// Where one tile reads and writes.
    struct Tile {
        /// The image's first sample under the tile's first window.
        x: *const f32,
        /// The tile's first filter in the transposed weights.
        wt: *const f32,
        bias: *const f32,
        /// The tile's first output of its first filter in the row buffer.
        y: *mut f32,
    }

    /// `R × 16` filters × `J` outputs of one row: bias, then every sample
    /// of every window (channel, kernel row, kernel column) broadcast
    /// against each filter vector; then into the row buffer (`[output][filter]`).
    ///
    /// # Safety
    /// AVX-512F; `t` points inside the image, weights and output of `s`
    /// such that all `R·16` filters and `J` windows exist.
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const R: usize, const J: usize>(t: &Tile, s: &ConvShape) {
        let (k, stride) = (s.kernel, s.stride);
        let mut acc = [[_mm512_setzero_ps(); J]; R];
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: filters r·16 .. r·16 + 16 exist.
            let b = unsafe { _mm512_loadu_ps(t.bias.add(r * 16)) };
            row.fill(b);
        }
        for c in 0..s.in_c {
            for ky in 0..k {
                // SAFETY: row ky of channel c under the first window.
                let line = unsafe { t.x.add((c * s.in_h + ky) * s.in_w) };
                let taps = unsafe { t.wt.add((c * k + ky) * k * s.out_c) };
                for kx in 0..k {
                    let mut wv = [_mm512_setzero_ps(); R];
                    for (r, v) in wv.iter_mut().enumerate() {
                        // SAFETY: tap (c, ky, kx) of filters r·16 .. r·16 + 16.
                        *v = unsafe { _mm512_loadu_ps(taps.add(kx * s.out_c + r * 16)) };
                    }
                    for j in 0..J {
                        // SAFETY: window j's sample at (ky, kx) lies in the line.
                        let xv = _mm512_set1_ps(unsafe { *line.add(j * stride + kx) });
                        for (row, &w) in acc.iter_mut().zip(&wv) {
                            row[j] = _mm512_fmadd_ps(w, xv, row[j]);
                        }
                    }
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                // SAFETY: output j of filters r·16 .. r·16 + 16 in the row buffer.
                unsafe { _mm512_storeu_ps(t.y.add(j * s.out_c + r * 16), *v) };
            }
        }
    }

    /// Every tile of every image: rows, then runs of [`OUTPUTS`] outputs
    /// along the row, then blocks of [`FILTERS`] filters, into `row`
    /// (`[output][filter]`), transposed into the filters' planes at the
    /// row's end.
    ///
    /// # Safety
    /// AVX-512F; the operands hold `batch` images of `s`, every window
    /// lies inside its image (see `conv_forward_f32`) and `row` holds one
    /// output row of every filter.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn images(
        x: &[f32],
        wt: &[f32],
        bias: &[f32],
        row: &mut [f32],
        y: &mut [f32],
        s: &ConvShape,
        batch: usize,
    ) {
        let (in_len, plane) = (s.in_c * s.in_h * s.in_w, s.out_h * s.out_w);
        let out_len = s.out_c * plane;
        assert!(row.len() >= s.out_w * s.out_c);
        for n in 0..batch {
            for oy in 0..s.out_h {
                for ox in (0..s.out_w).step_by(OUTPUTS) {
                    let j = OUTPUTS.min(s.out_w - ox);
                    for f in (0..s.out_c).step_by(FILTERS) {
                        let t = Tile {
                            x: x[n * in_len + oy * s.stride * s.in_w + ox * s.stride..].as_ptr(),
                            wt: wt[f..].as_ptr(),
                            bias: bias[f..].as_ptr(),
                            y: row[ox * s.out_c + f..].as_mut_ptr(),
                        };
                        macro_rules! run {
                            ($r:expr) => {
                                match j {
                                    1 => unsafe { tile::<$r, 1>(&t, s) },
                                    2 => unsafe { tile::<$r, 2>(&t, s) },
                                    3 => unsafe { tile::<$r, 3>(&t, s) },
                                    4 => unsafe { tile::<$r, 4>(&t, s) },
                                    5 => unsafe { tile::<$r, 5>(&t, s) },
                                    6 => unsafe { tile::<$r, 6>(&t, s) },
                                    7 => unsafe { tile::<$r, 7>(&t, s) },
                                    _ => unsafe { tile::<$r, OUTPUTS>(&t, s) },
                                }
                            };
                        }
                        match (s.out_c - f) / 16 {
                            1 => run!(1),
                            2 => run!(2),
                            _ => run!(3),
                        }
                    }
                }
                let to = &mut y[n * out_len + oy * s.out_w..];
                assert!(to.len() >= (s.out_c - 1) * plane + s.out_w);
                // SAFETY: the asserts above.
                unsafe {
                    transpose(
                        row.as_ptr(),
                        s.out_c,
                        to.as_mut_ptr(),
                        plane,
                        s.out_w,
                        s.out_c,
                    )
                };
            }
        }
    }

    /// Where one tile of the weight gradient reads and accumulates.
    struct GradTile {
        /// The image's sample under the chunk's first window at the tile's first tap.
        x: *const f32,
        /// The chunk's transposed gradients, from the tile's first filter.
        dyt: *const f32,
        /// The tile's first tap of its first filter in the transposed gradient.
        dwt: *mut f32,
    }

    /// `R × 16` filters × `J` kernel columns of one kernel row: their
    /// gradients loaded, then every output of `rows` output rows adds its
    /// 16-filter gradient vectors times each of its `J` samples; stored back.
    ///
    /// # Safety
    /// AVX-512F; `t` points inside the image, the chunk and the transposed
    /// gradient of `s` such that all `R·16` filters, `J` taps and `rows`
    /// output rows exist.
    #[target_feature(enable = "avx512f")]
    unsafe fn grad_tile<const R: usize, const J: usize>(t: &GradTile, s: &ConvShape, rows: usize) {
        let (oc, stride) = (s.out_c, s.stride);
        let mut acc = [[_mm512_setzero_ps(); J]; R];
        for (r, row) in acc.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                // SAFETY: tap j of filters r·16 .. r·16 + 16.
                *v = unsafe { _mm512_loadu_ps(t.dwt.add(j * oc + r * 16)) };
            }
        }
        for row in 0..rows {
            // SAFETY: output row `row` of the chunk exists, and so its windows.
            let line = unsafe { t.x.add(row * stride * s.in_w) };
            let grads = unsafe { t.dyt.add(row * s.out_w * oc) };
            for ox in 0..s.out_w {
                let mut dv = [_mm512_setzero_ps(); R];
                for (r, v) in dv.iter_mut().enumerate() {
                    // SAFETY: output ox's gradients of filters r·16 .. r·16 + 16.
                    *v = unsafe { _mm512_loadu_ps(grads.add(ox * oc + r * 16)) };
                }
                for j in 0..J {
                    // SAFETY: window ox's sample at tap j lies in the line.
                    let xv = _mm512_set1_ps(unsafe { *line.add(ox * stride + j) });
                    for (row, &d) in acc.iter_mut().zip(&dv) {
                        row[j] = _mm512_fmadd_ps(d, xv, row[j]);
                    }
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                // SAFETY: as the loads above.
                unsafe { _mm512_storeu_ps(t.dwt.add(j * oc + r * 16), *v) };
            }
        }
    }

    /// `to[c·to_stride + r] = from[r·from_stride + c]` for `rows × cols`
    /// floats: blocks of 16 × 16 transposed in registers, the rows and
    /// columns after the last whole block one by one.
    ///
    /// # Safety
    /// AVX-512F; `from` holds `(rows − 1)·from_stride + cols` floats, `to`
    /// `(cols − 1)·to_stride + rows`.
    #[target_feature(enable = "avx512f")]
    unsafe fn transpose(
        from: *const f32,
        from_stride: usize,
        to: *mut f32,
        to_stride: usize,
        rows: usize,
        cols: usize,
    ) {
        let (whole_rows, whole_cols) = (rows - rows % 16, cols - cols % 16);
        for r in (0..whole_rows).step_by(16) {
            for c in (0..whole_cols).step_by(16) {
                // SAFETY: rows r .. r + 16, columns c .. c + 16 exist.
                let block: [__m512; 16] = std::array::from_fn(|i| unsafe {
                    _mm512_loadu_ps(from.add((r + i) * from_stride + c))
                });
                for (i, column) in transpose16(block).iter().enumerate() {
                    // SAFETY: as above, transposed.
                    unsafe { _mm512_storeu_ps(to.add((c + i) * to_stride + r), *column) };
                }
            }
        }
        for r in 0..rows {
            let first_col = if r < whole_rows { whole_cols } else { 0 };
            for c in first_col..cols {
                // SAFETY: row r, column c exists.
                unsafe { *to.add(c * to_stride + r) = *from.add(r * from_stride + c) };
            }
        }
    }

    /// A 16 × 16 block transposed: column `c` of `r` as vector `c`. Pairs
    /// of rows interleaved, then groups of 4 rows per 128-bit lane, then
    /// the lanes exchanged twice.
    #[target_feature(enable = "avx512f")]
    fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        // Lane L of `u[4g + c]` holds rows 4g .. 4g + 4 of column 4L + c.
        let mut u = [_mm512_setzero_ps(); 16];
        for g in 0..4 {
            let (a, b) = (&r[4 * g..4 * g + 2], &r[4 * g + 2..4 * g + 4]);
            let lo01 = _mm512_unpacklo_ps(a[0], a[1]);
            let hi01 = _mm512_unpackhi_ps(a[0], a[1]);
            let lo23 = _mm512_unpacklo_ps(b[0], b[1]);
            let hi23 = _mm512_unpackhi_ps(b[0], b[1]);
            u[4 * g] = _mm512_shuffle_ps::<0x44>(lo01, lo23);
            u[4 * g + 1] = _mm512_shuffle_ps::<0xee>(lo01, lo23);
            u[4 * g + 2] = _mm512_shuffle_ps::<0x44>(hi01, hi23);
            u[4 * g + 3] = _mm512_shuffle_ps::<0xee>(hi01, hi23);
        }
        // `v[c]` (c < 4): columns c and c + 8 of rows 0–7, 8–15 of them in
        // `v[c + 8]`; `v[c + 4]`: columns c + 4 and c + 12 alike.
        let mut v = [_mm512_setzero_ps(); 16];
        for c in 0..4 {
            for half in [0, 8] {
                let (a, b) = (u[half + c], u[half + 4 + c]);
                v[half + c] = _mm512_shuffle_f32x4::<0x88>(a, b);
                v[half + 4 + c] = _mm512_shuffle_f32x4::<0xdd>(a, b);
            }
        }
        let mut out = [_mm512_setzero_ps(); 16];
        for c in 0..8 {
            out[c] = _mm512_shuffle_f32x4::<0x88>(v[c], v[c + 8]);
            out[c + 8] = _mm512_shuffle_f32x4::<0xdd>(v[c], v[c + 8]);
        }
        out
    }

    /// The weight gradient of every image into `dwt` (`[tap][filter]`,
    /// zero on entry): chunks of output rows, their gradients transposed
    /// into `dyt` (`[output][filter]`), then every tile of taps and filters.
    ///
    /// # Safety
    /// AVX-512F; the operands hold `batch` images of `s`, every window lies
    /// inside its image (see `conv_backward_weights_f32`), `dwt` holds
    /// every tap of every filter and `dyt` at least one output row.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn weight_gradient(
        x: &[f32],
        dy: &[f32],
        dwt: &mut [f32],
        dyt: &mut [f32],
        s: &ConvShape,
        batch: usize,
    ) {
        let (k, oc, plane) = (s.kernel, s.out_c, s.out_h * s.out_w);
        let (in_len, out_len) = (s.in_c * s.in_h * s.in_w, oc * plane);
        let chunk_rows = dyt.len() / (s.out_w * oc).max(1);
        for n in 0..batch {
            for oy in (0..s.out_h).step_by(chunk_rows) {
                let rows = chunk_rows.min(s.out_h - oy);
                let outputs = rows * s.out_w;
                let from = &dy[n * out_len + oy * s.out_w..];
                assert!(from.len() >= (oc - 1) * plane + outputs && dyt.len() >= outputs * oc);
                // SAFETY: the assert above.
                unsafe { transpose(from.as_ptr(), plane, dyt.as_mut_ptr(), oc, oc, outputs) };
                for c in 0..s.in_c {
                    for ky in 0..k {
                        for kx in (0..k).step_by(TAPS) {
                            let j = TAPS.min(k - kx);
                            for f in (0..oc).step_by(FILTERS) {
                                let first = (c * s.in_h + oy * s.stride + ky) * s.in_w + kx;
                                let t = GradTile {
                                    x: x[n * in_len + first..].as_ptr(),
                                    dyt: dyt[f..].as_ptr(),
                                    dwt: dwt[((c * k + ky) * k + kx) * oc + f..].as_mut_ptr(),
                                };
                                macro_rules! run {
                                    ($r:expr) => {
                                        match j {
                                            1 => unsafe { grad_tile::<$r, 1>(&t, s, rows) },
                                            2 => unsafe { grad_tile::<$r, 2>(&t, s, rows) },
                                            3 => unsafe { grad_tile::<$r, 3>(&t, s, rows) },
                                            4 => unsafe { grad_tile::<$r, 4>(&t, s, rows) },
                                            5 => unsafe { grad_tile::<$r, 5>(&t, s, rows) },
                                            _ => unsafe { grad_tile::<$r, TAPS>(&t, s, rows) },
                                        }
                                    };
                                }
                                match (oc - f) / 16 {
                                    1 => run!(1),
                                    2 => run!(2),
                                    _ => run!(3),
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cpu::gradcheck::{conv_definition, conv_weight_gradient_definition, random};

    /// Against the f64 definition, on shapes with partial tiles of outputs
    /// (rows of 13 = 8 + 5) and of filters (80 = 48 + 32), strides 1 and 4,
    /// and rows of 40 outputs (two whole 16 × 16 blocks to transpose, and 8).
    #[test]
    fn matches_the_definition_in_f64() {
        for (out_c, kernel, stride, in_hw) in [
            (80, 3, 1, 15),
            (48, 11, 4, 59),
            (16, 5, 2, 17),
            (32, 3, 1, 40),
        ] {
            let out = (in_hw - kernel) / stride + 1;
            let s = ConvShape {
                groups: 1,
                sources: 1,
                in_c: 3,
                in_h: in_hw,
                in_w: in_hw + 2,
                out_c,
                kernel,
                stride,
                pad: 0,
                out_h: out,
                out_w: (in_hw + 2 - kernel) / stride + 1,
            };
            let batch = 2;
            let x = random(batch * s.in_c * s.in_h * s.in_w, 1);
            let w = random(s.block_len(), 2);
            let b = random(s.out_c, 3);
            let narrow = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
            let mut y = vec![f32::NAN; batch * s.out_c * s.out_h * s.out_w];
            let ran = conv_forward_f32(
                &narrow(&x),
                &narrow(&w),
                &narrow(&b),
                &mut y,
                &s,
                batch,
                &mut Vec::new(),
            );
            if !ran {
                eprintln!("no AVX-512F here: the direct convolution is not checked");
                return;
            }
            // The f32 inputs exactly, so only the f32 sums' rounding remains:
            // |error| ≤ terms · ε · Σ|x·w| with ε = 2⁻²³, twice the bound of
            // summing in order.
            let (xe, we, be) = (widen(&narrow(&x)), widen(&narrow(&w)), widen(&narrow(&b)));
            let want = conv_definition(&xe, std::slice::from_ref(&we), &be, &s, batch);
            let size: Vec<f64> = conv_definition(&abs(&xe), &[abs(&we)], &abs(&be), &s, batch);
            let terms = (s.in_c * kernel * kernel + 1) as f64;
            for ((g, e), m) in y.iter().zip(&want).zip(&size) {
                let bound = terms * f64::from(f32::EPSILON) * m;
                assert!(
                    (f64::from(*g) - e).abs() <= bound,
                    "{out_c} {kernel} {stride}: {g} vs {e}"
                );
            }
        }
    }

    /// The weight gradient against the f64 definition, on shapes with
    /// partial tiles of taps (11 = 6 + 5 columns) and of filters (80 = 48 +
    /// 32), strides 1, 2 and 4, and one whose output rows take several chunks.
    #[test]
    fn weight_gradient_matches_the_definition_in_f64() {
        for (out_c, kernel, stride, in_hw) in [
            (80, 3, 1, 15),
            (48, 11, 4, 59),
            (16, 5, 2, 17),
            (16, 3, 1, 40),
        ] {
            let s = ConvShape {
                groups: 1,
                sources: 1,
                in_c: 3,
                in_h: in_hw,
                in_w: in_hw + 2,
                out_c,
                kernel,
                stride,
                pad: 0,
                out_h: (in_hw - kernel) / stride + 1,
                out_w: (in_hw + 2 - kernel) / stride + 1,
            };
            let batch = 2;
            let narrow = |v: Vec<f64>| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
            let x = narrow(random(batch * s.in_c * s.in_h * s.in_w, 4));
            let dy = narrow(random(batch * s.out_c * s.out_h * s.out_w, 5));
            let mut dw = vec![f32::NAN; s.block_len()];
            if !conv_backward_weights_f32(&x, &dy, &mut dw, &s, batch, &mut Vec::new()) {
                eprintln!("no AVX-512F here: the direct weight gradient is not checked");
                return;
            }
            // Each weight sums batch · out_h · out_w products in f32:
            // |error| ≤ terms · ε · Σ|dy·x|, twice the bound of summing in order.
            let (xe, dye) = (widen(&x), widen(&dy));
            let want = conv_weight_gradient_definition(&xe, &dye, &s, batch);
            let size = conv_weight_gradient_definition(&abs(&xe), &abs(&dye), &s, batch);
            let terms = (batch * s.out_h * s.out_w) as f64;
            for ((g, e), m) in dw.iter().zip(&want).zip(&size) {
                let bound = terms * f64::from(f32::EPSILON) * m;
                assert!(
                    (f64::from(*g) - e).abs() <= bound,
                    "{out_c} {kernel} {stride} {in_hw}: {g} vs {e}"
                );
            }
        }
    }

    fn widen(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| f64::from(x)).collect()
    }

    fn abs(v: &[f64]) -> Vec<f64> {
        v.iter().map(|x| x.abs()).collect()
    }

    #[test]
    fn padded_or_two_tower_layers_are_left_to_im2col() {
        let s = ConvShape {
            groups: 1,
            sources: 1,
            in_c: 1,
            in_h: 4,
            in_w: 4,
            out_c: 16,
            kernel: 3,
            stride: 1,
            pad: 1,
            out_h: 4,
            out_w: 4,
        };
        let mut y = vec![0.0; 16 * 16];
        let (x, w, b) = (vec![1.0; 16], vec![1.0; 16 * 9], vec![0.0; 16]);
        let mut wt = Vec::new();
        assert!(!conv_forward_f32(&x, &w, &b, &mut y, &s, 1, &mut wt));
        let two = ConvShape {
            sources: 2,
            pad: 0,
            out_h: 2,
            out_w: 2,
            ..s
        };
        assert!(!conv_forward_f32(&x, &w, &b, &mut y, &two, 1, &mut wt));
    }
}
