//! 3×3 stride-1 convolutions (the paper's conv3, conv4 and conv5, §3.5) by
//! Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray, "Fast Algorithms
//! for Convolutional Neural Networks", 2016): each 2×2 block of outputs
//! comes from a 4×4 block of input through 16 products instead of 36. The
//! filters and the input blocks are transformed, the 16 products of every
//! block become 16 matrix products over channels, and those are transformed
//! back. The transforms have entries 0, ±1 and ±½ only, so the result
//! differs from the direct sum by a few roundings of the input's size.

use super::matmul::{Mat, matmul};
use super::real::Real;
use super::simd;
use crate::net::plan::ConvShape;

/// Output blocks per pass, so that the transformed blocks of a pass stay
/// in the last-level cache while its 16 products read them.
const TILES_PER_PASS: usize = 512;

/// The transformed filters, input and products of one pass.
#[derive(Debug, Default)]
pub struct Scratch<T> {
    /// `[source][16][out_c][in_c]`.
    u: Vec<T>,
    /// `[16][in_c][tiles]`.
    v: Vec<T>,
    /// `[16][out_c][tiles]`.
    m: Vec<T>,
    /// One input plane inside its zero padding, rounded up to whole blocks.
    plane: Vec<T>,
    /// One plane's transformed blocks, `[16][blocks]`.
    block: Vec<T>,
    /// The filters of the backward-data pass, and its zero bias.
    flipped: Vec<T>,
    zeros: Vec<T>,
}

/// Whether [`conv_forward`] computes this layer.
pub fn applies(s: &ConvShape) -> bool {
    s.kernel == 3 && s.stride == 1 && s.out_h > 0 && s.out_w > 0
}

/// Whether [`conv_backward_data`] computes this layer's input gradient.
pub fn applies_backward(s: &ConvShape) -> bool {
    applies(s) && s.pad <= 2 && s.in_h > 0 && s.in_w > 0
}

/// `dx_s = conv_transpose(dy, w_s)` for each source, overwriting `dx`
/// (`[source][image][in_c][in_h][in_w]`): for a 3×3 stride-1 layer, the
/// convolution of `dy` padded by `2 − pad` with each filter turned by 180°
/// and its input and output channels swapped, by [`conv_forward`].
pub fn conv_backward_data<T: Real>(
    dy: &[T],
    w: &[&[T]],
    dx: &mut [T],
    s: &ConvShape,
    batch: usize,
    scratch: &mut Scratch<T>,
) {
    assert!(applies_backward(s), "no Winograd input gradient for {s:?}");
    let back = ConvShape {
        sources: 1,
        in_c: s.out_c,
        in_h: s.out_h,
        in_w: s.out_w,
        out_c: s.in_c,
        kernel: 3,
        stride: 1,
        pad: 2 - s.pad,
        out_h: s.in_h,
        out_w: s.in_w,
    };
    let mut flipped = std::mem::take(&mut scratch.flipped);
    let mut zeros = std::mem::take(&mut scratch.zeros);
    flipped.resize(s.block_len(), T::zero());
    zeros.clear();
    zeros.resize(s.in_c, T::zero());
    let in_len = batch * s.in_c * s.in_h * s.in_w;
    for (w_s, dx_s) in w.iter().zip(dx.chunks_exact_mut(in_len)).take(s.sources) {
        for (oc, g) in w_s.chunks_exact(9).take(s.out_c * s.in_c).enumerate() {
            let (o, c) = (oc / s.in_c, oc % s.in_c);
            for (i, &v) in g.iter().enumerate() {
                flipped[(c * s.out_c + o) * 9 + 8 - i] = v;
            }
        }
        conv_forward(dy, &[&flipped], &zeros, dx_s, &back, batch, scratch);
    }
    (scratch.flipped, scratch.zeros) = (flipped, zeros);
}

/// The blocks of one image: rows and columns of 2×2 output blocks.
fn tiles(s: &ConvShape) -> (usize, usize) {
    (s.out_h.div_ceil(2), s.out_w.div_ceil(2))
}

/// `y = bias + Σ_s conv(x_s, w_s)` for a batch, as `conv::conv_forward`
/// (`x` is `[source][image][in_c][in_h][in_w]`), for a layer that [`applies`].
#[allow(clippy::too_many_arguments)]
pub fn conv_forward<T: Real>(
    x: &[T],
    w: &[&[T]],
    bias: &[T],
    y: &mut [T],
    s: &ConvShape,
    batch: usize,
    scratch: &mut Scratch<T>,
) {
    assert!(applies(s), "not a 3×3 stride-1 convolution: {s:?}");
    let (th, tw) = tiles(s);
    let per_image = th * tw;
    let images = (TILES_PER_PASS / per_image).clamp(1, batch.max(1));
    let in_len = s.in_c * s.in_h * s.in_w;
    let filters = 16 * s.out_c * s.in_c;
    scratch.u.resize(s.sources * filters, T::zero());
    for (w_s, u) in w.iter().zip(scratch.u.chunks_exact_mut(filters)) {
        transform_filters(w_s, s, u);
    }
    scratch
        .v
        .resize(16 * s.in_c * images * per_image, T::zero());
    scratch
        .m
        .resize(16 * s.out_c * images * per_image, T::zero());
    for first in (0..batch).step_by(images) {
        let count = images.min(batch - first);
        let t = count * per_image;
        for src in 0..s.sources {
            for i in 0..count {
                let image = &x[(src * batch + first + i) * in_len..][..in_len];
                transform_input(image, s, i * per_image, t, scratch);
            }
            for xi in 0..16 {
                matmul(
                    s.out_c,
                    t,
                    s.in_c,
                    Mat::rows(&scratch.u[src * filters + xi * s.out_c * s.in_c..], s.in_c),
                    Mat::rows(&scratch.v[xi * s.in_c * t..], t),
                    &mut scratch.m[xi * s.out_c * t..][..s.out_c * t],
                    src > 0,
                );
            }
        }
        let plane = s.out_c * s.out_h * s.out_w;
        for i in 0..count {
            let y_n = &mut y[(first + i) * plane..][..plane];
            transform_output(&scratch.m, bias, s, i * per_image, t, y_n);
        }
    }
}

/// `u[ξ][o][c] = (G g Gᵀ)[ξ]` for each filter `g = w[o][c]`, with
/// `G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1]`.
fn transform_filters<T: Real>(w: &[T], s: &ConvShape, u: &mut [T]) {
    let half = T::of(0.5);
    let block = s.out_c * s.in_c;
    for (oc, g) in w.chunks_exact(9).take(block).enumerate() {
        // G g: four rows of three.
        let mut gg = [T::zero(); 12];
        for j in 0..3 {
            let (a, b, c) = (g[j], g[3 + j], g[6 + j]);
            gg[j] = a;
            gg[3 + j] = half * (a + b + c);
            gg[6 + j] = half * (a - b + c);
            gg[9 + j] = c;
        }
        // Then each row times Gᵀ.
        for i in 0..4 {
            let (a, b, c) = (gg[3 * i], gg[3 * i + 1], gg[3 * i + 2]);
            u[(i * 4) * block + oc] = a;
            u[(i * 4 + 1) * block + oc] = half * (a + b + c);
            u[(i * 4 + 2) * block + oc] = half * (a - b + c);
            u[(i * 4 + 3) * block + oc] = c;
        }
    }
}

simd::kernel! {
/// The transformed blocks `Bᵀ d B` of one image's input, `d` each 4×4
/// block at stride 2, with `Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1]`,
/// into columns `first..` of `v` (`[16][in_c][t]`): `Bᵀ` down whole rows
/// of the padded plane, then `B` along each block's row.
pub fn transform_input<T: Real>(
    image: &[T],
    s: &ConvShape,
    first: usize,
    t: usize,
    scratch: &mut Scratch<T>,
) {
    let (th, tw) = tiles(s);
    let (ph, pw, per_image) = (2 * th + 2, 2 * tw + 2, th * tw);
    let Scratch { v, plane, block, .. } = scratch;
    plane.resize(ph * pw, T::zero());
    block.resize(16 * per_image, T::zero());
    let mut down = vec![T::zero(); 4 * pw];
    for c in 0..s.in_c {
        plane.fill(T::zero());
        for iy in 0..s.in_h {
            let line = &image[(c * s.in_h + iy) * s.in_w..][..s.in_w];
            plane[(iy + s.pad) * pw + s.pad..][..s.in_w].copy_from_slice(line);
        }
        for ty in 0..th {
            let rows = &plane[2 * ty * pw..][..4 * pw];
            let (r0, r1, r2, r3) = (&rows[..pw], &rows[pw..2 * pw], &rows[2 * pw..3 * pw], &rows[3 * pw..]);
            let (d0, rest) = down.split_at_mut(pw);
            let (d1, rest) = rest.split_at_mut(pw);
            let (d2, d3) = rest.split_at_mut(pw);
            for x in 0..pw {
                d0[x] = r0[x] - r2[x];
                d1[x] = r1[x] + r2[x];
                d2[x] = r2[x] - r1[x];
                d3[x] = r1[x] - r3[x];
            }
            for (i, d) in down.chunks_exact(pw).enumerate() {
                for tx in 0..tw {
                    let e = &d[2 * tx..][..4];
                    let at = ty * tw + tx;
                    block[(i * 4) * per_image + at] = e[0] - e[2];
                    block[(i * 4 + 1) * per_image + at] = e[1] + e[2];
                    block[(i * 4 + 2) * per_image + at] = e[2] - e[1];
                    block[(i * 4 + 3) * per_image + at] = e[1] - e[3];
                }
            }
        }
        for (xi, values) in block.chunks_exact(per_image).enumerate() {
            v[(xi * s.in_c + c) * t + first..][..per_image].copy_from_slice(values);
        }
    }
}
}

simd::kernel! {
/// One image's outputs `bias + Aᵀ m A` from its products in columns
/// `first..` of `m` (`[16][out_c][t]`), `Aᵀ = [1 1 1 0; 0 1 −1 −1]`, all
/// the image's blocks at once; the blocks' rows and columns past the
/// image's edge are dropped.
pub fn transform_output<T: Real>(
    m: &[T],
    bias: &[T],
    s: &ConvShape,
    first: usize,
    t: usize,
    y: &mut [T],
) {
    let (th, tw) = tiles(s);
    let per_image = th * tw;
    let mut half = vec![T::zero(); 8 * per_image];
    let mut out = vec![T::zero(); 4 * per_image];
    for o in 0..s.out_c {
        let p = |xi: usize| &m[(xi * s.out_c + o) * t + first..][..per_image];
        // Aᵀ m: two rows of four.
        for j in 0..4 {
            let (a, b, c, d) = (p(j), p(4 + j), p(8 + j), p(12 + j));
            let (top, bottom) = half.split_at_mut(4 * per_image);
            let (top, bottom) = (&mut top[j * per_image..][..per_image], &mut bottom[j * per_image..][..per_image]);
            for k in 0..per_image {
                top[k] = a[k] + b[k] + c[k];
                bottom[k] = b[k] - c[k] - d[k];
            }
        }
        // Then times A: each row's two outputs.
        for (i, row) in half.chunks_exact(4 * per_image).enumerate() {
            let (a, b, c, d) = (&row[..per_image], &row[per_image..2 * per_image], &row[2 * per_image..3 * per_image], &row[3 * per_image..]);
            let (left, right) = out[2 * i * per_image..][..2 * per_image].split_at_mut(per_image);
            for k in 0..per_image {
                left[k] = a[k] + b[k] + c[k] + bias[o];
                right[k] = b[k] - c[k] - d[k] + bias[o];
            }
        }
        let plane = &mut y[o * s.out_h * s.out_w..][..s.out_h * s.out_w];
        for (corner, values) in out.chunks_exact(per_image).enumerate() {
            let (i, j) = (corner / 2, corner % 2);
            for ty in 0..th {
                let oy = 2 * ty + i;
                if oy >= s.out_h {
                    continue;
                }
                let line = &mut plane[oy * s.out_w..][..s.out_w];
                for (tx, &value) in values[ty * tw..][..tw].iter().enumerate() {
                    if let Some(dst) = line.get_mut(2 * tx + j) {
                        *dst = value;
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
    use crate::device::cpu::gradcheck::random;

    /// The definition in f64, one output at a time.
    fn naive(x: &[f64], w: &[Vec<f64>], b: &[f64], s: &ConvShape, batch: usize) -> Vec<f64> {
        let mut y = vec![0.0; batch * s.out_c * s.out_h * s.out_w];
        for n in 0..batch {
            for o in 0..s.out_c {
                for oy in 0..s.out_h {
                    for ox in 0..s.out_w {
                        let mut acc = b[o];
                        for (src, w_s) in w.iter().enumerate() {
                            for c in 0..s.in_c {
                                for ky in 0..3 {
                                    for kx in 0..3 {
                                        let iy = (oy + ky).checked_sub(s.pad);
                                        let ix = (ox + kx).checked_sub(s.pad);
                                        let (Some(iy), Some(ix)) = (iy, ix) else {
                                            continue;
                                        };
                                        if iy >= s.in_h || ix >= s.in_w {
                                            continue;
                                        }
                                        let xi = (((src * batch + n) * s.in_c + c) * s.in_h + iy)
                                            * s.in_w
                                            + ix;
                                        acc += x[xi] * w_s[((o * s.in_c + c) * 3 + ky) * 3 + kx];
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

    fn shape(sources: usize, pad: usize, in_h: usize, in_w: usize) -> ConvShape {
        ConvShape {
            sources,
            in_c: 5,
            in_h,
            in_w,
            out_c: 4,
            kernel: 3,
            stride: 1,
            pad,
            out_h: in_h + 2 * pad - 2,
            out_w: in_w + 2 * pad - 2,
        }
    }

    /// Odd and even sizes (a last block half outside the image), pads 0–2,
    /// two sources, and batches that take several passes (13×13 outputs,
    /// 49 blocks an image, 10 images a pass).
    fn cases() -> Vec<(ConvShape, usize)> {
        vec![
            (shape(1, 1, 13, 13), 23),
            (shape(2, 1, 6, 7), 3),
            (shape(1, 0, 8, 5), 2),
            (shape(1, 2, 4, 4), 1),
        ]
    }

    fn run<T: Real>(x: &[T], w: &[Vec<T>], b: &[T], s: &ConvShape, batch: usize) -> Vec<T> {
        let mut y = vec![T::nan(); batch * s.out_c * s.out_h * s.out_w];
        let blocks: Vec<&[T]> = w.iter().map(Vec::as_slice).collect();
        conv_forward(x, &blocks, b, &mut y, s, batch, &mut Scratch::default());
        y
    }

    #[test]
    fn matches_the_definition_in_f64() {
        for (s, batch) in cases() {
            let x = random(s.sources * batch * s.in_c * s.in_h * s.in_w, 1);
            let w: Vec<Vec<f64>> = (0..s.sources)
                .map(|i| random(s.block_len(), 2 + i as u64))
                .collect();
            let b = random(s.out_c, 9);
            let want = naive(&x, &w, &b, &s, batch);
            for (g, e) in run(&x, &w, &b, &s, batch).iter().zip(&want) {
                assert!((g - e).abs() < 1e-12, "{s:?}: {g} vs {e}");
            }
        }
    }

    /// In f32 against the f64 definition of the same f32 inputs: within
    /// 16 ε · Σ|x·w| per output, a bound of the transforms' growth (each
    /// transformed value sums at most 4 × 4 of the block's terms, each filter
    /// value at most 9 with weights ½) times the sums' length.
    #[test]
    fn f32_is_within_its_rounding_of_the_definition() {
        for (s, batch) in cases() {
            let narrow = |v: Vec<f64>| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
            let widen = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
            let x = narrow(random(s.sources * batch * s.in_c * s.in_h * s.in_w, 3));
            let w: Vec<Vec<f32>> = (0..s.sources)
                .map(|i| narrow(random(s.block_len(), 4 + i as u64)))
                .collect();
            let b = narrow(random(s.out_c, 8));
            let got = run(&x, &w, &b, &s, batch);
            let wide: Vec<Vec<f64>> = w.iter().map(|w| widen(w)).collect();
            let want = naive(&widen(&x), &wide, &widen(&b), &s, batch);
            let abs = |v: &[f64]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
            let wide_abs: Vec<Vec<f64>> = wide.iter().map(|w| abs(w)).collect();
            let size = naive(&abs(&widen(&x)), &wide_abs, &abs(&widen(&b)), &s, batch);
            let terms = (s.sources * s.in_c + 1) as f64;
            for ((g, e), m) in got.iter().zip(&want).zip(&size) {
                let bound = 16.0 * terms * f64::from(f32::EPSILON) * m;
                assert!((f64::from(*g) - e).abs() <= bound, "{s:?}: {g} vs {e}");
            }
        }
    }
}
