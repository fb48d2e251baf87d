//! The transforms of Winograd's F(2×2, r×r) (Lavin & Gray 2016, built by
//! Toom–Cook on the points 0, ±1, ∞ for r = 3 and 0, ±1, ±2, ∞ for r = 5):
//! `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` for each α×α block `d` of input
//! (α = r + 1) and 2×2 block `Y` of output, and the adjoints of the filter
//! and output transforms that the weight gradient needs. The matrices are
//! constants of each algorithm's type, so each kernel is compiled for its
//! own and its zero coefficients cost nothing.

use super::super::real::Real;
use super::super::simd;
use crate::net::plan::ConvShape;

/// The widest input block of the algorithms here.
const MAX_ALPHA: usize = 6;

/// One algorithm F(2×2, r×r): its three matrices, row-major.
pub trait Algorithm {
    /// The kernel's size `r`.
    const R: usize;
    /// The input blocks' width α = r + 1.
    const A: usize = Self::R + 1;
    /// `Aᵀ`, 2 × α.
    const AT: &'static [f64];
    /// `G`, α × r.
    const G: &'static [f64];
    /// `Bᵀ`, α × α.
    const BT: &'static [f64];
}

/// F(2×2, 3×3): 16 products per 2×2 outputs instead of 36.
pub struct F2x3;

impl Algorithm for F2x3 {
    const R: usize = 3;
    const AT: &'static [f64] = &[1.0, 1.0, 1.0, 0.0, 0.0, 1.0, -1.0, -1.0];
    const G: &'static [f64] = &[1.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5, -0.5, 0.5, 0.0, 0.0, 1.0];
    const BT: &'static [f64] = &[
        1.0, 0.0, -1.0, 0.0, //
        0.0, 1.0, 1.0, 0.0, //
        0.0, -1.0, 1.0, 0.0, //
        0.0, 1.0, 0.0, -1.0,
    ];
}

/// F(2×2, 5×5): 36 products per 2×2 outputs instead of 100. `Bᵀ` is
/// integral, so the input's transform rounds only its sums.
pub struct F2x5;

impl Algorithm for F2x5 {
    const R: usize = 5;
    const AT: &'static [f64] = &[
        1.0, 1.0, 1.0, 1.0, 1.0, 0.0, //
        0.0, 1.0, -1.0, 2.0, -2.0, 1.0,
    ];
    const G: &'static [f64] = &[
        1.0 / 4.0,
        0.0,
        0.0,
        0.0,
        0.0, //
        -1.0 / 6.0,
        -1.0 / 6.0,
        -1.0 / 6.0,
        -1.0 / 6.0,
        -1.0 / 6.0, //
        -1.0 / 6.0,
        1.0 / 6.0,
        -1.0 / 6.0,
        1.0 / 6.0,
        -1.0 / 6.0, //
        1.0 / 24.0,
        1.0 / 12.0,
        1.0 / 6.0,
        1.0 / 3.0,
        2.0 / 3.0, //
        1.0 / 24.0,
        -1.0 / 12.0,
        1.0 / 6.0,
        -1.0 / 3.0,
        2.0 / 3.0, //
        0.0,
        0.0,
        0.0,
        0.0,
        1.0,
    ];
    const BT: &'static [f64] = &[
        4.0, 0.0, -5.0, 0.0, 1.0, 0.0, //
        0.0, -4.0, -4.0, 1.0, 1.0, 0.0, //
        0.0, 4.0, -4.0, -1.0, 1.0, 0.0, //
        0.0, -2.0, -1.0, 2.0, 1.0, 0.0, //
        0.0, 2.0, -1.0, -2.0, 1.0, 0.0, //
        0.0, 4.0, 0.0, -5.0, 0.0, 1.0,
    ];
}

/// Lanes of [`combine_chunk`]: one AVX-512 register of f32.
const CHUNK: usize = 16;

/// `Σ_j c[j] · ins[j][at..at + CHUNK]`, skipping zero coefficients (from
/// −0, which adds nothing, so a lone coefficient of 1 costs no addition),
/// on a fixed width that the compiler keeps in a register whatever the
/// slices' lengths.
#[inline(always)]
fn combine_chunk<T: Real>(c: &[f64], ins: &[&[T]], at: usize) -> [T; CHUNK] {
    let mut acc = [-T::zero(); CHUNK];
    for (&c, input) in c.iter().zip(ins) {
        if c == 0.0 {
            continue;
        }
        let c = T::of(c);
        for (o, &v) in acc.iter_mut().zip(&input[at..][..CHUNK]) {
            *o += c * v;
        }
    }
    acc
}

/// `out = Σ_j c[j] · ins[j]`, elementwise, skipping zero coefficients: a
/// register of elements at a time, each term added to it there.
#[inline(always)]
fn combine<T: Real>(c: &[f64], ins: &[&[T]], out: &mut [T]) {
    let start = out.len() - out.len() % CHUNK;
    let mut chunks = out.chunks_exact_mut(CHUNK);
    for (n, o) in (&mut chunks).enumerate() {
        o.copy_from_slice(&combine_chunk(c, ins, n * CHUNK));
    }
    let rest = chunks.into_remainder();
    for (n, o) in rest.iter_mut().enumerate() {
        let mut acc = -T::zero();
        for (&c, input) in c.iter().zip(ins) {
            if c != 0.0 {
                acc += T::of(c) * input[start + n];
            }
        }
        *o = acc;
    }
}

/// The blocks of one image: rows and columns of 2×2 output blocks.
pub fn tiles(s: &ConvShape) -> (usize, usize) {
    (s.out_h.div_ceil(2), s.out_w.div_ceil(2))
}

simd::kernel! {
/// `u[ξ][o][c] = (G g Gᵀ)[ξ]` for each filter `g = w[o][c]` (r × r), `u`
/// `[α²][out_c][channels]` from its column `c = 0` (one source's columns
/// of several sources' filters): `w` turned to `[tap][o][c]` in `work`,
/// then `G` and `Gᵀ` applied over all the filters at once.
pub fn filters<T: Real, F: Algorithm>(
    w: &[T],
    s: &ConvShape,
    channels: usize,
    u: &mut [T],
    work: &mut Vec<T>,
) {
    let (r, a) = (F::R, F::A);
    let block = s.out_c * s.in_c;
    work.resize((r * r + a * r) * block, T::zero());
    let (taps, gg) = work.split_at_mut(r * r * block);
    for (e, tap) in taps.chunks_exact_mut(block).enumerate() {
        for (x, g) in tap.iter_mut().zip(w.chunks_exact(r * r)) {
            *x = g[e];
        }
    }
    // G g: `gg[i][b] = Σ_k G[i][k] g[k][b]`.
    for (ib, out) in gg.chunks_exact_mut(block).enumerate() {
        let (i, b) = (ib / r, ib % r);
        let mut ins: [&[T]; MAX_ALPHA] = [&[]; MAX_ALPHA];
        for (k, input) in ins.iter_mut().take(r).enumerate() {
            *input = &taps[(k * r + b) * block..][..block];
        }
        combine(&F::G[i * r..][..r], &ins[..r], out);
    }
    // Then each row times Gᵀ, one output channel's row of `u` at a time.
    for xi in 0..a * a {
        let (i, j) = (xi / a, xi % a);
        for o in 0..s.out_c {
            let mut ins: [&[T]; MAX_ALPHA] = [&[]; MAX_ALPHA];
            for (b, input) in ins.iter_mut().take(r).enumerate() {
                *input = &gg[(i * r + b) * block + o * s.in_c..][..s.in_c];
            }
            let out = &mut u[(xi * s.out_c + o) * channels..][..s.in_c];
            combine(&F::G[j * r..][..r], &ins[..r], out);
        }
    }
}
}

simd::kernel! {
/// The adjoint of [`filters`]: `dw[o][c] = Gᵀ du[·][o][c] G` (r × r) from
/// `du` (`[α²][out_c][channels]` from its column `c = 0`), overwriting
/// `dw`: over all the filters at once into `work` (`[tap][o][c]`), then
/// turned to `dw`'s `[o][c][tap]`.
pub fn filters_adjoint<T: Real, F: Algorithm>(
    du: &[T],
    s: &ConvShape,
    channels: usize,
    dw: &mut [T],
    work: &mut Vec<T>,
) {
    let (r, a) = (F::R, F::A);
    let block = s.out_c * s.in_c;
    let mut gt = [0.0; MAX_ALPHA * MAX_ALPHA];
    for (i, row) in F::G.chunks_exact(r).enumerate() {
        for (b, &v) in row.iter().enumerate() {
            gt[b * a + i] = v;
        }
    }
    work.resize((a * r + r * r) * block, T::zero());
    let (h, taps) = work.split_at_mut(a * r * block);
    // du G: `h[i][b] = Σ_j du[i][j] G[j][b]`, one output channel's row at a time.
    for (ib, h) in h.chunks_exact_mut(block).enumerate() {
        let (i, b) = (ib / r, ib % r);
        for (o, out) in h.chunks_exact_mut(s.in_c).enumerate() {
            let mut ins: [&[T]; MAX_ALPHA] = [&[]; MAX_ALPHA];
            for (j, input) in ins.iter_mut().take(a).enumerate() {
                *input = &du[((i * a + j) * s.out_c + o) * channels..][..s.in_c];
            }
            combine(&gt[b * a..][..a], &ins[..a], out);
        }
    }
    // Then Gᵀ times it: `taps[x][b] = Σ_i G[i][x] h[i][b]`.
    for (xb, out) in taps.chunks_exact_mut(block).enumerate() {
        let (x, b) = (xb / r, xb % r);
        let mut ins: [&[T]; MAX_ALPHA] = [&[]; MAX_ALPHA];
        for (i, input) in ins.iter_mut().take(a).enumerate() {
            *input = &h[(i * r + b) * block..][..block];
        }
        combine(&gt[x * a..][..a], &ins[..a], out);
    }
    for (oc, g) in dw.chunks_exact_mut(r * r).take(block).enumerate() {
        for (e, v) in g.iter_mut().enumerate() {
            *v = taps[e * block + oc];
        }
    }
}
}

/// One channel split four ways for [`input`], `split[q][p][r][m] =
/// d(2r + p, 2m + q)`, `d` the channel inside its zero padding: the even
/// and odd columns of the even and odd rows, `width` columns each. Writes
/// only the samples inside the image: the padding's entries stay as they
/// are.
fn split<T: Real>(channel: &[T], s: &ConvShape, width: usize, split: &mut [T]) {
    let part = (split.len() - 2 * CHUNK) / 4;
    for (iy, line) in channel.chunks_exact(s.in_w).take(s.in_h).enumerate() {
        let y = iy + s.pad;
        let (p, r) = (y % 2, y / 2);
        for q in 0..2 {
            let lo = s.pad.saturating_sub(q).div_ceil(2);
            let hi = (s.in_w + s.pad).saturating_sub(q).div_ceil(2).min(width);
            if lo >= hi {
                continue;
            }
            let row = &mut split[(2 * q + p) * part + r * width..][..width];
            let src = &line[2 * lo + q - s.pad..];
            for (d, &x) in row[lo..hi].iter_mut().zip(src.iter().step_by(2)) {
                *d = x;
            }
        }
    }
}

simd::kernel! {
/// The transformed blocks `Bᵀ d B` of one image's input, `d` each α×α
/// block at stride 2, into columns `first..` of `v` (`[α²][channels][t]`,
/// from channel 0: one source's rows of several sources' blocks).
/// Each channel is [`split`], then `B` runs along the rows of all its
/// blocks at once, a few blocks a register (into `rows`, `[k][p][r][tx]`:
/// plane row `2r + p`, block column `tx`, each register's lanes past a
/// row's end overwritten by the next row), then `Bᵀ` down them, each of
/// the α² results one contiguous slice of `v`. `halves` and `rows` are
/// its to use.
#[allow(clippy::too_many_arguments)]
pub fn input<T: Real, F: Algorithm>(
    image: &[T],
    s: &ConvShape,
    first: usize,
    t: usize,
    channels: usize,
    v: &mut [T],
    halves: &mut Vec<T>,
    rows: &mut Vec<T>,
) {
    let a = F::A;
    let (th, tw) = tiles(s);
    let per_image = th * tw;
    let rh = th + a / 2 - 1;
    let width = tw + a / 2 - 1;
    let (half, part) = (rh * width, rh * tw);
    halves.clear();
    halves.resize(4 * half + 2 * CHUNK, T::zero());
    rows.resize(2 * a * part + CHUNK, T::zero());
    for (c, channel) in image.chunks_exact(s.in_h * s.in_w).take(s.in_c).enumerate() {
        split(channel, s, width, halves);
        for kp in 0..2 * a {
            let (k, p) = (kp / 2, kp % 2);
            for r in 0..rh {
                for x in (0..tw).step_by(CHUNK) {
                    let mut ins: [&[T]; MAX_ALPHA] = [&[]; MAX_ALPHA];
                    for (j, input) in ins.iter_mut().take(a).enumerate() {
                        *input = &halves[(2 * (j % 2) + p) * half + r * width + x + j / 2..];
                    }
                    let sum = combine_chunk(&F::BT[k * a..][..a], &ins[..a], 0);
                    rows[kp * part + r * tw + x..][..CHUNK].copy_from_slice(&sum);
                }
            }
        }
        for xi in 0..a * a {
            let (i, k) = (xi / a, xi % a);
            let mut ins: [&[T]; MAX_ALPHA] = [&[]; MAX_ALPHA];
            for (j, input) in ins.iter_mut().take(a).enumerate() {
                *input = &rows[(2 * k + j % 2) * part + j / 2 * tw..][..per_image];
            }
            let out = &mut v[(xi * channels + c) * t + first..][..per_image];
            combine(&F::BT[i * a..][..a], &ins[..a], out);
        }
    }
}
}

simd::kernel! {
/// One image's outputs `bias + Aᵀ m A` from its products in columns
/// `first..` of `m` (`[α²][out_c][t]`), all the image's blocks at once;
/// the blocks' rows and columns past the image's edge are dropped.
pub fn output<T: Real, F: Algorithm>(
    m: &[T],
    bias: &[T],
    s: &ConvShape,
    first: usize,
    t: usize,
    y: &mut [T],
) {
    let a = F::A;
    let (th, tw) = tiles(s);
    let per_image = th * tw;
    let mut half = vec![T::zero(); 2 * a * per_image];
    let mut out = vec![T::zero(); 4 * per_image];
    for o in 0..s.out_c {
        let p = |xi: usize| &m[(xi * s.out_c + o) * t + first..][..per_image];
        // Aᵀ m: two rows of α.
        for (ij, h) in half.chunks_exact_mut(per_image).enumerate() {
            let (i, j) = (ij / a, ij % a);
            let mut ins: [&[T]; MAX_ALPHA] = [&[]; MAX_ALPHA];
            for (k, input) in ins.iter_mut().take(a).enumerate() {
                *input = p(k * a + j);
            }
            combine(&F::AT[i * a..][..a], &ins[..a], h);
        }
        // Then times A: each row's two outputs.
        for (il, values) in out.chunks_exact_mut(per_image).enumerate() {
            let (i, l) = (il / 2, il % 2);
            let mut ins: [&[T]; MAX_ALPHA] = [&[]; MAX_ALPHA];
            for (j, h) in half[i * a * per_image..][..a * per_image].chunks_exact(per_image).enumerate() {
                ins[j] = h;
            }
            combine(&F::AT[l * a..][..a], &ins[..a], values);
        }
        let plane = &mut y[o * s.out_h * s.out_w..][..s.out_h * s.out_w];
        for (oy, line) in plane.chunks_exact_mut(s.out_w).enumerate() {
            let (ty, i) = (oy / 2, oy % 2);
            let left = &out[2 * i * per_image + ty * tw..][..tw];
            let right = &out[(2 * i + 1) * per_image + ty * tw..][..tw];
            interleave(left, right, bias[o], line);
        }
    }
}
}

/// `line = bias + (left[0], right[0], left[1], right[1], …)`, as far as
/// `line` goes: one row of outputs from its blocks' two columns.
#[inline(always)]
fn interleave<T: Real>(left: &[T], right: &[T], bias: T, line: &mut [T]) {
    let mut pairs = line.chunks_exact_mut(2);
    for ((pair, &l), &r) in (&mut pairs).zip(left).zip(right) {
        pair[0] = l + bias;
        pair[1] = r + bias;
    }
    if let Some(last) = pairs.into_remainder().first_mut() {
        *last = left[left.len() - 1] + bias;
    }
}

simd::kernel! {
/// The adjoint of [`output`]: `dm = A dy Aᵀ` for each 2×2 block of one
/// image's output gradient `dy` (`[out_c][out_h][out_w]`, zero past the
/// image's edge), into columns `first..` of `m` (`[α²][out_c][t]`).
pub fn output_adjoint<T: Real, F: Algorithm>(
    dy: &[T],
    s: &ConvShape,
    first: usize,
    t: usize,
    m: &mut [T],
) {
    let a = F::A;
    let (th, tw) = tiles(s);
    let per_image = th * tw;
    let mut corners = vec![T::zero(); 4 * per_image];
    let mut half = vec![T::zero(); 2 * a * per_image];
    for o in 0..s.out_c {
        let plane = &dy[o * s.out_h * s.out_w..][..s.out_h * s.out_w];
        for (corner, values) in corners.chunks_exact_mut(per_image).enumerate() {
            let (i, j) = (corner / 2, corner % 2);
            for (ty, row) in values.chunks_exact_mut(tw).enumerate() {
                let oy = 2 * ty + i;
                if oy >= s.out_h {
                    row.fill(T::zero());
                    continue;
                }
                let line = &plane[oy * s.out_w..][..s.out_w];
                for (tx, value) in row.iter_mut().enumerate() {
                    *value = line.get(2 * tx + j).copied().unwrap_or(T::zero());
                }
            }
        }
        // dy A: two rows (i) of α (j), `Σ_l Aᵀ[l][j] dy[i][l]`.
        for (ij, h) in half.chunks_exact_mut(per_image).enumerate() {
            let (i, j) = (ij / a, ij % a);
            let ins = [&corners[2 * i * per_image..][..per_image], &corners[(2 * i + 1) * per_image..][..per_image]];
            combine(&[F::AT[j], F::AT[a + j]], &ins, h);
        }
        // Then A times it: `dm[k][j] = Σ_i Aᵀ[i][k] half[i][j]`.
        for xi in 0..a * a {
            let (k, j) = (xi / a, xi % a);
            let ins = [&half[j * per_image..][..per_image], &half[(a + j) * per_image..][..per_image]];
            let out = &mut m[(xi * s.out_c + o) * t + first..][..per_image];
            combine(&[F::AT[k], F::AT[a + k]], &ins, out);
        }
    }
}
}
