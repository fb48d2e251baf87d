//! 3×3 and 5×5 stride-1 convolutions (the paper's conv2 to conv5, §3.5) by
//! Winograd's minimal filtering F(2×2, r×r) (Lavin & Gray, "Fast Algorithms
//! for Convolutional Neural Networks", 2016): each 2×2 block of outputs
//! comes from an α×α block of input (α = r + 1) through α² products instead
//! of 4r². The filters and the input blocks are transformed, the α²
//! products of every block become α² matrix products over channels, and
//! those are transformed back. The input gradient is the same algorithm on
//! the turned filters; the weight gradient runs the adjoints of the filter
//! and output transforms around α² products over blocks. The transforms'
//! entries are small (`transforms.rs`), so the results differ from the
//! direct sums by a few roundings of the terms' size.

mod transforms;

use super::matmul::{Mat, matmul};
use super::real::Real;
use crate::net::plan::ConvShape;
use transforms::{Algorithm, F2x3, F2x5, tiles};

/// Output blocks per pass, so that the transformed blocks of a pass stay
/// in cache while its products read them.
const TILES_PER_PASS: usize = 196;
/// Output channels per block of the forward products, so that a block's
/// products stay in the core's cache until they are transformed back.
const OUT_BLOCK: usize = 64;

/// The transformed filters, input and products of one pass.
#[derive(Debug, Default)]
pub struct Scratch<T> {
    /// `[source][α²][out_c][in_c]`: the filters, or their gradients.
    u: Vec<T>,
    /// `[α²][in_c][tiles]`.
    v: Vec<T>,
    /// `[α²][out_c][tiles]`: the products, or their gradients.
    m: Vec<T>,
    /// One input channel's even and odd rows and columns
    /// (`transforms::input`).
    halves: Vec<T>,
    /// One input channel's blocks times `B` along their rows.
    rows: Vec<T>,
    /// The filters turned to `[tap][out_c][in_c]`, and their products by
    /// `G` (`transforms::filters`).
    filter_work: Vec<T>,
    /// The filters of the backward-data pass, and its zero bias.
    flipped: Vec<T>,
    zeros: Vec<T>,
}

/// Whether [`conv_forward`] computes this layer: stride 1, and a kernel
/// with an algorithm here.
pub fn applies(s: &ConvShape) -> bool {
    s.stride == 1 && s.out_h > 0 && s.out_w > 0 && [F2x3::R, F2x5::R].contains(&s.kernel)
}

/// Whether [`conv_backward_data`] and [`conv_backward_weights`] compute
/// this layer's gradients (its padding at most `r − 1`).
pub fn applies_backward(s: &ConvShape) -> bool {
    applies(s) && s.pad < s.kernel && s.in_h > 0 && s.in_w > 0
}

/// Images per pass, and the blocks of one image.
fn pass(s: &ConvShape, batch: usize) -> (usize, usize) {
    let (th, tw) = tiles(s);
    let per_image = th * tw;
    (
        (TILES_PER_PASS / per_image).clamp(1, batch.max(1)),
        per_image,
    )
}

/// `dx_s = conv_transpose(dy, w_s)` for each source, overwriting `dx`
/// (`[source][image][in_c][in_h][in_w]`): for an r×r stride-1 layer, the
/// convolution of `dy` padded by `r − 1 − pad` with each filter turned by
/// 180° and its input and output channels swapped, by [`conv_forward`].
pub fn conv_backward_data<T: Real>(
    dy: &[T],
    w: &[&[T]],
    dx: &mut [T],
    s: &ConvShape,
    batch: usize,
    scratch: &mut Scratch<T>,
) {
    assert!(applies_backward(s), "no Winograd input gradient for {s:?}");
    let k = s.kernel;
    let back = ConvShape {
        groups: 1,
        sources: 1,
        in_c: s.out_c,
        in_h: s.out_h,
        in_w: s.out_w,
        out_c: s.in_c,
        kernel: k,
        stride: 1,
        pad: k - 1 - s.pad,
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
        for (oc, g) in w_s.chunks_exact(k * k).take(s.out_c * s.in_c).enumerate() {
            let (o, c) = (oc / s.in_c, oc % s.in_c);
            for (i, &v) in g.iter().enumerate() {
                flipped[(c * s.out_c + o) * k * k + k * k - 1 - i] = v;
            }
        }
        conv_forward(dy, &[&flipped], &zeros, dx_s, &back, batch, scratch);
    }
    (scratch.flipped, scratch.zeros) = (flipped, zeros);
}

/// `y = bias + Σ_s conv(x_s, w_s)` for a batch, as `conv::conv_forward`
/// (`x` is `[source][image][in_c][in_h][in_w]`), for a layer that [`applies`].
pub fn conv_forward<T: Real>(
    x: &[T],
    w: &[&[T]],
    bias: &[T],
    y: &mut [T],
    s: &ConvShape,
    batch: usize,
    scratch: &mut Scratch<T>,
) {
    assert!(applies(s), "no Winograd algorithm for {s:?}");
    if s.kernel == F2x3::R {
        forward::<T, F2x3>(x, w, bias, y, s, batch, scratch);
    } else {
        forward::<T, F2x5>(x, w, bias, y, s, batch, scratch);
    }
}

/// [`conv_forward`] by algorithm `F`.
fn forward<T: Real, F: Algorithm>(
    x: &[T],
    w: &[&[T]],
    bias: &[T],
    y: &mut [T],
    s: &ConvShape,
    batch: usize,
    scratch: &mut Scratch<T>,
) {
    let a2 = F::A * F::A;
    let (images, per_image) = pass(s, batch);
    let in_len = s.in_c * s.in_h * s.in_w;
    let channels = s.sources * s.in_c;
    scratch.u.resize(a2 * s.out_c * channels, T::zero());
    for (src, w_s) in w.iter().enumerate().take(s.sources) {
        let (u, work) = (&mut scratch.u[src * s.in_c..], &mut scratch.filter_work);
        transforms::filters::<T, F>(w_s, s, channels, u, work);
    }
    let Scratch {
        u,
        v,
        m,
        halves,
        rows,
        ..
    } = scratch;
    v.resize(a2 * channels * images * per_image, T::zero());
    m.resize(a2 * OUT_BLOCK.min(s.out_c) * images * per_image, T::zero());
    let out_plane = s.out_h * s.out_w;
    for first in (0..batch).step_by(images) {
        let count = images.min(batch - first);
        let t = count * per_image;
        for src in 0..s.sources {
            for i in 0..count {
                let image = &x[(src * batch + first + i) * in_len..][..in_len];
                let v_s = &mut v[src * s.in_c * t..];
                transforms::input::<T, F>(image, s, i * per_image, t, channels, v_s, halves, rows);
            }
        }
        for o in (0..s.out_c).step_by(OUT_BLOCK) {
            let oc = OUT_BLOCK.min(s.out_c - o);
            for xi in 0..a2 {
                matmul(
                    oc,
                    t,
                    channels,
                    Mat::rows(&u[(xi * s.out_c + o) * channels..], channels),
                    Mat::rows(&v[xi * channels * t..], t),
                    &mut m[xi * oc * t..][..oc * t],
                    false,
                );
            }
            let part = ConvShape { out_c: oc, ..*s };
            for i in 0..count {
                let y_n = &mut y[((first + i) * s.out_c + o) * out_plane..][..oc * out_plane];
                transforms::output::<T, F>(m, &bias[o..], &part, i * per_image, t, y_n);
            }
        }
    }
}

/// `dw_s = Σ_images corr(x_s, dy)`, overwriting each `dw_s`, for a layer
/// that [`applies_backward`]: per pass, the output gradient's blocks through
/// the adjoint output transform (`dm`) against the input's transformed
/// blocks (`v`), `du[ξ] += dm[ξ] · v[ξ]ᵀ` over the blocks, and at the end
/// the adjoint filter transform.
pub fn conv_backward_weights<T: Real>(
    x: &[T],
    dy: &[T],
    dw: &mut [&mut [T]],
    s: &ConvShape,
    batch: usize,
    scratch: &mut Scratch<T>,
) {
    assert!(applies_backward(s), "no Winograd weight gradient for {s:?}");
    if s.kernel == F2x3::R {
        weights::<T, F2x3>(x, dy, dw, s, batch, scratch);
    } else {
        weights::<T, F2x5>(x, dy, dw, s, batch, scratch);
    }
}

/// [`conv_backward_weights`] by algorithm `F`.
fn weights<T: Real, F: Algorithm>(
    x: &[T],
    dy: &[T],
    dw: &mut [&mut [T]],
    s: &ConvShape,
    batch: usize,
    scratch: &mut Scratch<T>,
) {
    let a2 = F::A * F::A;
    let (images, per_image) = pass(s, batch);
    let (in_len, out_len) = (s.in_c * s.in_h * s.in_w, s.out_c * s.out_h * s.out_w);
    let channels = s.sources * s.in_c;
    let Scratch {
        u,
        v,
        m,
        halves,
        rows,
        filter_work,
        ..
    } = scratch;
    u.clear();
    u.resize(a2 * s.out_c * channels, T::zero());
    v.resize(a2 * channels * images * per_image, T::zero());
    m.resize(a2 * s.out_c * images * per_image, T::zero());
    for first in (0..batch).step_by(images) {
        let count = images.min(batch - first);
        let t = count * per_image;
        for i in 0..count {
            let dy_n = &dy[(first + i) * out_len..][..out_len];
            transforms::output_adjoint::<T, F>(dy_n, s, i * per_image, t, m);
        }
        for src in 0..s.sources {
            for i in 0..count {
                let image = &x[(src * batch + first + i) * in_len..][..in_len];
                let v_s = &mut v[src * s.in_c * t..];
                transforms::input::<T, F>(image, s, i * per_image, t, channels, v_s, halves, rows);
            }
        }
        for xi in 0..a2 {
            matmul(
                s.out_c,
                channels,
                t,
                Mat::rows(&m[xi * s.out_c * t..], t),
                Mat::rows_transposed(&v[xi * channels * t..], t),
                &mut u[xi * s.out_c * channels..][..s.out_c * channels],
                true,
            );
        }
    }
    for (src, dw_s) in dw.iter_mut().enumerate().take(s.sources) {
        transforms::filters_adjoint::<T, F>(&u[src * s.in_c..], s, channels, dw_s, filter_work);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cpu::gradcheck::{conv_definition, random};

    /// The input sample under output `(oy, ox)` and tap `(ky, kx)` of
    /// channel `c` of image `image` (`[image][in_c][in_h][in_w]` images), if
    /// inside the image.
    fn sample(x: &[f64], s: &ConvShape, image: usize, c: usize, at: [usize; 4]) -> Option<f64> {
        let [oy, ox, ky, kx] = at;
        let iy = (oy + ky).checked_sub(s.pad).filter(|&iy| iy < s.in_h)?;
        let ix = (ox + kx).checked_sub(s.pad).filter(|&ix| ix < s.in_w)?;
        Some(x[((image * s.in_c + c) * s.in_h + iy) * s.in_w + ix])
    }

    /// The weight gradient's definition in f64: `dw_s[o][c][ky][kx] =
    /// Σ_n Σ_(oy, ox) dy[n][o][oy][ox] · x_s[n][c][oy + ky − pad][ox + kx − pad]`.
    fn naive_weights(x: &[f64], dy: &[f64], s: &ConvShape, batch: usize) -> Vec<Vec<f64>> {
        let k = s.kernel;
        let plane = s.out_h * s.out_w;
        (0..s.sources)
            .map(|src| {
                let mut dw = vec![0.0; s.block_len()];
                for (i, g) in dw.iter_mut().enumerate() {
                    let (oc, ky, kx) = (i / (k * k), i / k % k, i % k);
                    let (o, c) = (oc / s.in_c, oc % s.in_c);
                    for n in 0..batch {
                        for p in 0..plane {
                            let at = [p / s.out_w, p % s.out_w, ky, kx];
                            if let Some(v) = sample(x, s, src * batch + n, c, at) {
                                *g += dy[(n * s.out_c + o) * plane + p] * v;
                            }
                        }
                    }
                }
                dw
            })
            .collect()
    }

    fn shape(kernel: usize, sources: usize, pad: usize, in_h: usize, in_w: usize) -> ConvShape {
        ConvShape {
            groups: 1,
            sources,
            in_c: 5,
            in_h,
            in_w,
            out_c: 4,
            kernel,
            stride: 1,
            pad,
            out_h: in_h + 2 * pad + 1 - kernel,
            out_w: in_w + 2 * pad + 1 - kernel,
        }
    }

    /// 3×3 and 5×5 kernels on odd and even sizes (a last block half outside
    /// the image), pads 0 to r − 1 (and past it, forward), two sources,
    /// batches that take several passes (13×13 outputs: 49 blocks an image,
    /// 4 images a pass; 9×9: 25 blocks, 7 images a pass), output
    /// channels in two blocks (72 = 64 + 8), and rows of more blocks than
    /// one register's lanes of the input transform (35 outputs: 18 blocks).
    fn cases() -> Vec<(ConvShape, usize)> {
        vec![
            (shape(3, 1, 1, 5, 35), 2),
            (shape(5, 2, 2, 3, 36), 2),
            (shape(3, 1, 1, 13, 13), 23),
            (shape(3, 2, 1, 6, 7), 3),
            (shape(3, 1, 0, 8, 5), 2),
            (shape(3, 1, 2, 4, 4), 1),
            (shape(5, 1, 2, 9, 9), 23),
            (shape(5, 2, 2, 6, 7), 3),
            (shape(5, 1, 0, 8, 7), 2),
            (shape(5, 1, 4, 4, 5), 1),
            (shape(5, 1, 3, 3, 3), 2),
            (
                ConvShape {
                    out_c: 72,
                    ..shape(3, 2, 1, 6, 7)
                },
                2,
            ),
            (
                ConvShape {
                    out_c: 72,
                    ..shape(5, 1, 2, 9, 8)
                },
                9,
            ),
        ]
    }

    fn run<T: Real>(x: &[T], w: &[Vec<T>], b: &[T], s: &ConvShape, batch: usize) -> Vec<T> {
        let mut y = vec![T::nan(); batch * s.out_c * s.out_h * s.out_w];
        let blocks: Vec<&[T]> = w.iter().map(Vec::as_slice).collect();
        conv_forward(x, &blocks, b, &mut y, s, batch, &mut Scratch::default());
        y
    }

    fn run_weights<T: Real>(x: &[T], dy: &[T], s: &ConvShape, batch: usize) -> Vec<Vec<T>> {
        let mut dw = vec![vec![T::nan(); s.block_len()]; s.sources];
        let mut grads: Vec<&mut [T]> = dw.iter_mut().map(Vec::as_mut_slice).collect();
        conv_backward_weights(x, dy, &mut grads, s, batch, &mut Scratch::default());
        dw
    }

    fn narrow(v: Vec<f64>) -> Vec<f32> {
        v.iter().map(|&x| x as f32).collect()
    }

    fn widen(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| f64::from(x)).collect()
    }

    fn abs(v: &[f64]) -> Vec<f64> {
        v.iter().map(|x| x.abs()).collect()
    }

    #[test]
    fn matches_the_definition_in_f64() {
        for (s, batch) in cases() {
            let x = random(s.sources * batch * s.in_c * s.in_h * s.in_w, 1);
            let w: Vec<Vec<f64>> = (0..s.sources)
                .map(|i| random(s.block_len(), 2 + i as u64))
                .collect();
            let b = random(s.out_c, 9);
            let want = conv_definition(&x, &w, &b, &s, batch);
            for (g, e) in run(&x, &w, &b, &s, batch).iter().zip(&want) {
                assert!((g - e).abs() < 1e-12, "{s:?}: {g} vs {e}");
            }
        }
    }

    /// In f32 against the f64 definition of the same f32 inputs: within
    /// 16 ε · Σ|x·w| per output times the sums' length, a bound of the
    /// transforms' growth (for F(2×2, 5×5) each transformed input sums at
    /// most 6 × 6 terms with weights up to 5, each filter value 25 with
    /// weights up to ⅔, and `Aᵀ` has weights up to 2) that the measured
    /// errors stay far inside.
    #[test]
    fn f32_is_within_its_rounding_of_the_definition() {
        for (s, batch) in cases() {
            let x = narrow(random(s.sources * batch * s.in_c * s.in_h * s.in_w, 3));
            let w: Vec<Vec<f32>> = (0..s.sources)
                .map(|i| narrow(random(s.block_len(), 4 + i as u64)))
                .collect();
            let b = narrow(random(s.out_c, 8));
            let got = run(&x, &w, &b, &s, batch);
            let wide: Vec<Vec<f64>> = w.iter().map(|w| widen(w)).collect();
            let want = conv_definition(&widen(&x), &wide, &widen(&b), &s, batch);
            let wide_abs: Vec<Vec<f64>> = wide.iter().map(|w| abs(w)).collect();
            let size = conv_definition(&abs(&widen(&x)), &wide_abs, &abs(&widen(&b)), &s, batch);
            let terms = (s.sources * s.in_c + 1) as f64;
            for ((g, e), m) in got.iter().zip(&want).zip(&size) {
                let bound = 16.0 * terms * f64::from(f32::EPSILON) * m;
                assert!((f64::from(*g) - e).abs() <= bound, "{s:?}: {g} vs {e}");
            }
        }
    }

    #[test]
    fn weight_gradient_matches_the_definition_in_f64() {
        for (s, batch) in cases().into_iter().filter(|(s, _)| applies_backward(s)) {
            let x = random(s.sources * batch * s.in_c * s.in_h * s.in_w, 5);
            let dy = random(batch * s.out_c * s.out_h * s.out_w, 6);
            let want = naive_weights(&x, &dy, &s, batch);
            for (got, want) in run_weights(&x, &dy, &s, batch).iter().zip(&want) {
                for (g, e) in got.iter().zip(want) {
                    assert!((g - e).abs() < 1e-11, "{s:?}: {g} vs {e}");
                }
            }
        }
    }

    /// In f32 against the f64 definition of the same f32 inputs, within
    /// 16 ε · Σ|dy·x| per weight times the sums' length (as the forward).
    #[test]
    fn f32_weight_gradient_is_within_its_rounding_of_the_definition() {
        for (s, batch) in cases().into_iter().filter(|(s, _)| applies_backward(s)) {
            let x = narrow(random(s.sources * batch * s.in_c * s.in_h * s.in_w, 7));
            let dy = narrow(random(batch * s.out_c * s.out_h * s.out_w, 8));
            let got = run_weights(&x, &dy, &s, batch);
            let (xe, dye) = (widen(&x), widen(&dy));
            let want = naive_weights(&xe, &dye, &s, batch);
            let size = naive_weights(&abs(&xe), &abs(&dye), &s, batch);
            let terms = (batch * s.out_h * s.out_w) as f64;
            for ((got, want), size) in got.iter().zip(&want).zip(&size) {
                for ((g, e), m) in got.iter().zip(want).zip(size) {
                    let bound = 16.0 * terms * f64::from(f32::EPSILON) * m;
                    assert!((f64::from(*g) - e).abs() <= bound, "{s:?}: {g} vs {e}");
                }
            }
        }
    }
}
