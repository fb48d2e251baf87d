//! The transforms of Winograd's F(2×2, r×r) (Lavin & Gray 2016, built by
//! Toom–Cook on the points 0, ±1, ∞ for r = 3 and 0, ±1, ±2, ∞ for r = 5):
//! `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` for each α×α block `d` of input
//! (α = r + 1) and 2×2 block `Y` of output, and the adjoints of the filter
//! and output transforms that the weight gradient needs. Each transform
//! runs its coefficients' loops outside and the loops over pixels or blocks
//! inside, skipping the zero coefficients.

use super::super::real::Real;
use super::super::simd;
use super::Scratch;
use crate::net::plan::ConvShape;

/// The widest input block of the algorithms here.
const MAX_ALPHA: usize = 6;

/// One algorithm F(2×2, r×r): its three matrices, row-major.
#[derive(Debug)]
pub struct Transforms {
    /// The kernel's size `r`; input blocks are `r + 1` wide.
    pub r: usize,
    /// `Aᵀ`, 2 × α.
    at: &'static [f64],
    /// `G`, α × r.
    g: &'static [f64],
    /// `Bᵀ`, α × α.
    bt: &'static [f64],
}

/// F(2×2, 3×3): 16 products per 2×2 outputs instead of 36.
pub const F2_3: Transforms = Transforms {
    r: 3,
    at: &[1.0, 1.0, 1.0, 0.0, 0.0, 1.0, -1.0, -1.0],
    g: &[1.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5, -0.5, 0.5, 0.0, 0.0, 1.0],
    bt: &[
        1.0, 0.0, -1.0, 0.0, //
        0.0, 1.0, 1.0, 0.0, //
        0.0, -1.0, 1.0, 0.0, //
        0.0, 1.0, 0.0, -1.0,
    ],
};

/// F(2×2, 5×5): 36 products per 2×2 outputs instead of 100. `Bᵀ` is
/// integral, so the input's transform is exact but for its sums' rounding.
pub const F2_5: Transforms = Transforms {
    r: 5,
    at: &[
        1.0, 1.0, 1.0, 1.0, 1.0, 0.0, //
        0.0, 1.0, -1.0, 2.0, -2.0, 1.0,
    ],
    g: &[
        1.0 / 4.0, 0.0, 0.0, 0.0, 0.0, //
        -1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0, //
        -1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0, //
        1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0, 1.0 / 3.0, 2.0 / 3.0, //
        1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0, -1.0 / 3.0, 2.0 / 3.0, //
        0.0, 0.0, 0.0, 0.0, 1.0,
    ],
    bt: &[
        4.0, 0.0, -5.0, 0.0, 1.0, 0.0, //
        0.0, -4.0, -4.0, 1.0, 1.0, 0.0, //
        0.0, 4.0, -4.0, -1.0, 1.0, 0.0, //
        0.0, -2.0, -1.0, 2.0, 1.0, 0.0, //
        0.0, 2.0, -1.0, -2.0, 1.0, 0.0, //
        0.0, 4.0, 0.0, -5.0, 0.0, 1.0,
    ],
};

impl Transforms {
    /// The input blocks' width α.
    pub fn alpha(&self) -> usize {
        self.r + 1
    }

    /// `Bᵀ` row `i`.
    fn bt_row(&self, i: usize) -> &'static [f64] {
        let a = self.alpha();
        &self.bt[i * a..][..a]
    }
}

/// `out = Σ_j c[j] · ins[j]`, elementwise, skipping zero coefficients.
#[inline(always)]
fn combine<T: Real>(c: &[f64], ins: &[&[T]], out: &mut [T]) {
    out.fill(T::zero());
    for (&c, input) in c.iter().zip(ins) {
        if c == 0.0 {
            continue;
        }
        let c = T::of(c);
        for (o, &v) in out.iter_mut().zip(input.iter()) {
            *o += c * v;
        }
    }
}

/// The blocks of one image: rows and columns of 2×2 output blocks.
pub fn tiles(s: &ConvShape) -> (usize, usize) {
    (s.out_h.div_ceil(2), s.out_w.div_ceil(2))
}

/// `u[ξ][o][c] = (G g Gᵀ)[ξ]` for each filter `g = w[o][c]` (r × r).
pub fn filters<T: Real>(f: &Transforms, w: &[T], s: &ConvShape, u: &mut [T]) {
    let (r, a) = (f.r, f.alpha());
    let block = s.out_c * s.in_c;
    let mut gg = vec![T::zero(); a * r];
    for (oc, g) in w.chunks_exact(r * r).take(block).enumerate() {
        // G g: α rows of r.
        for i in 0..a {
            for j in 0..r {
                gg[i * r + j] = (0..r).fold(T::zero(), |acc, k| acc + T::of(f.g[i * r + k]) * g[k * r + j]);
            }
        }
        // Then each row times Gᵀ.
        for i in 0..a {
            for j in 0..a {
                let v = (0..r).fold(T::zero(), |acc, k| acc + gg[i * r + k] * T::of(f.g[j * r + k]));
                u[(i * a + j) * block + oc] = v;
            }
        }
    }
}

/// The adjoint of [`filters`]: `dw[o][c] = Gᵀ du[·][o][c] G` (r × r) from
/// `du` (`[α²][out_c][in_c]`), overwriting `dw`.
pub fn filters_adjoint<T: Real>(f: &Transforms, du: &[T], s: &ConvShape, dw: &mut [T]) {
    let (r, a) = (f.r, f.alpha());
    let block = s.out_c * s.in_c;
    let mut h = vec![T::zero(); a * r];
    for (oc, g) in dw.chunks_exact_mut(r * r).take(block).enumerate() {
        // du G: α rows of r.
        for i in 0..a {
            for b in 0..r {
                h[i * r + b] = (0..a).fold(T::zero(), |acc, j| {
                    acc + du[(i * a + j) * block + oc] * T::of(f.g[j * r + b])
                });
            }
        }
        // Then Gᵀ times it.
        for (ab, v) in g.iter_mut().enumerate() {
            let (x, b) = (ab / r, ab % r);
            *v = (0..a).fold(T::zero(), |acc, i| acc + T::of(f.g[i * r + x]) * h[i * r + b]);
        }
    }
}

simd::kernel! {
/// The transformed blocks `Bᵀ d B` of one image's input, `d` each α×α
/// block at stride 2, into columns `first..` of `v` (`[α²][in_c][t]`):
/// `Bᵀ` down whole rows of the padded plane, then `B` along the rows of
/// each row of blocks, gathered a block column at a time.
pub fn input<T: Real>(
    f: &Transforms,
    image: &[T],
    s: &ConvShape,
    first: usize,
    t: usize,
    scratch: &mut Scratch<T>,
) {
    let a = f.alpha();
    let (th, tw) = tiles(s);
    let (ph, pw, per_image) = (2 * th + a - 2, 2 * tw + a - 2, th * tw);
    let Scratch { v, plane, block, .. } = scratch;
    plane.resize(ph * pw, T::zero());
    block.resize(a * a * per_image, T::zero());
    let mut down = vec![T::zero(); a * pw];
    let mut columns = vec![T::zero(); a * tw];
    for c in 0..s.in_c {
        plane.fill(T::zero());
        for iy in 0..s.in_h {
            let line = &image[(c * s.in_h + iy) * s.in_w..][..s.in_w];
            plane[(iy + s.pad) * pw + s.pad..][..s.in_w].copy_from_slice(line);
        }
        for ty in 0..th {
            let mut rows: [&[T]; MAX_ALPHA] = [&[]; MAX_ALPHA];
            for (j, row) in plane[2 * ty * pw..][..a * pw].chunks_exact(pw).enumerate() {
                rows[j] = row;
            }
            for (i, d) in down.chunks_exact_mut(pw).enumerate() {
                combine(f.bt_row(i), &rows[..a], d);
            }
            for (i, d) in down.chunks_exact(pw).enumerate() {
                for (j, col) in columns.chunks_exact_mut(tw).enumerate() {
                    for (tx, value) in col.iter_mut().enumerate() {
                        *value = d[2 * tx + j];
                    }
                }
                let mut ins: [&[T]; MAX_ALPHA] = [&[]; MAX_ALPHA];
                for (j, col) in columns.chunks_exact(tw).enumerate() {
                    ins[j] = col;
                }
                for k in 0..a {
                    let out = &mut block[(i * a + k) * per_image + ty * tw..][..tw];
                    combine(f.bt_row(k), &ins[..a], out);
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
/// `first..` of `m` (`[α²][out_c][t]`), all the image's blocks at once;
/// the blocks' rows and columns past the image's edge are dropped.
pub fn output<T: Real>(
    f: &Transforms,
    m: &[T],
    bias: &[T],
    s: &ConvShape,
    first: usize,
    t: usize,
    y: &mut [T],
) {
    let a = f.alpha();
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
            combine(&f.at[i * a..][..a], &ins[..a], h);
        }
        // Then times A: each row's two outputs.
        for (il, values) in out.chunks_exact_mut(per_image).enumerate() {
            let (i, l) = (il / 2, il % 2);
            let mut ins: [&[T]; MAX_ALPHA] = [&[]; MAX_ALPHA];
            for (j, h) in half[i * a * per_image..][..a * per_image].chunks_exact(per_image).enumerate() {
                ins[j] = h;
            }
            combine(&f.at[l * a..][..a], &ins[..a], values);
            for v in values.iter_mut() {
                *v += bias[o];
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

simd::kernel! {
/// The adjoint of [`output`]: `dm = A dy Aᵀ` for each 2×2 block of one
/// image's output gradient `dy` (`[out_c][out_h][out_w]`, zero past the
/// image's edge), into columns `first..` of `m` (`[α²][out_c][t]`).
pub fn output_adjoint<T: Real>(
    f: &Transforms,
    dy: &[T],
    s: &ConvShape,
    first: usize,
    t: usize,
    m: &mut [T],
) {
    let a = f.alpha();
    let (th, tw) = tiles(s);
    let per_image = th * tw;
    let mut corners = vec![T::zero(); 4 * per_image];
    let mut half = vec![T::zero(); 2 * a * per_image];
    for o in 0..s.out_c {
        let plane = &dy[o * s.out_h * s.out_w..][..s.out_h * s.out_w];
        for (corner, values) in corners.chunks_exact_mut(per_image).enumerate() {
            let (i, j) = (corner / 2, corner % 2);
            for (at, value) in values.iter_mut().enumerate() {
                let (oy, ox) = (2 * (at / tw) + i, 2 * (at % tw) + j);
                *value = if oy < s.out_h && ox < s.out_w {
                    plane[oy * s.out_w + ox]
                } else {
                    T::zero()
                };
            }
        }
        // dy A: two rows (i) of α (j); column j sums Aᵀ[l][j] dy[i][l].
        for (ij, h) in half.chunks_exact_mut(per_image).enumerate() {
            let (i, j) = (ij / a, ij % a);
            let ins = [&corners[2 * i * per_image..][..per_image], &corners[(2 * i + 1) * per_image..][..per_image]];
            combine(&[f.at[j], f.at[a + j]], &ins, h);
        }
        // Then A times it: dm[k][j] = Σ_i Aᵀ[i][k] half[i][j].
        for xi in 0..a * a {
            let (k, j) = (xi / a, xi % a);
            let c = [f.at[k], f.at[a + k]];
            let ins = [&half[j * per_image..][..per_image], &half[(a + j) * per_image..][..per_image]];
            let out = &mut m[(xi * s.out_c + o) * t + first..][..per_image];
            combine(&c, &ins, out);
        }
    }
}
}
