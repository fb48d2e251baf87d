//! Grouped convolutions (the single-device twin's conv2, conv4 and conv5):
//! group g's filters read only channels `g·in_c/G..` of each image and
//! write only its outputs `g·out_c/G..`. Each group is gathered into a
//! tower-sized buffer, run by the ungrouped kernels and scattered back: the
//! CPU reference of what a GPU runs as one grouped call.

use super::conv::{ConvScratch, conv_backward, conv_forward};
use super::real::Real;
use crate::net::plan::ConvShape;

/// Copies group `g` of `groups` runs of `run` elements per image out of `all`.
fn gather<T: Real>(all: &[T], batch: usize, groups: usize, g: usize, run: usize) -> Vec<T> {
    let mut part = Vec::with_capacity(batch * run);
    for image in all.chunks_exact(groups * run).take(batch) {
        part.extend_from_slice(&image[g * run..][..run]);
    }
    part
}

/// Writes `part` (as [`gather`] took it) back into group `g` of `all`.
fn scatter<T: Real>(part: &[T], all: &mut [T], groups: usize, g: usize, run: usize) {
    for (image, from) in all
        .chunks_exact_mut(groups * run)
        .zip(part.chunks_exact(run))
    {
        image[g * run..][..run].copy_from_slice(from);
    }
}

/// Runs and planes of one group: (input run, output run, weights, biases).
fn runs(s: &ConvShape) -> (usize, usize, usize, usize) {
    let g = s.per_group();
    (
        g.in_c * s.in_h * s.in_w,
        g.out_c * s.out_h * s.out_w,
        g.block_len(),
        g.out_c,
    )
}

/// [`conv_forward`] of a shape with `groups > 1` (and one source).
pub fn grouped_forward<T: Real>(
    x: &[T],
    w: &[T],
    bias: &[T],
    y: &mut [T],
    s: &ConvShape,
    batch: usize,
    scratch: &mut ConvScratch<T>,
) {
    let (x_run, y_run, w_len, b_len) = runs(s);
    let one = s.per_group();
    for g in 0..s.groups {
        let x_g = gather(x, batch, s.groups, g, x_run);
        let mut y_g = vec![T::zero(); batch * y_run];
        let (w_g, b_g) = (&w[g * w_len..][..w_len], &bias[g * b_len..][..b_len]);
        conv_forward(&x_g, &[w_g], b_g, &mut y_g, &one, batch, scratch);
        scatter(&y_g, y, s.groups, g, y_run);
    }
}

/// [`conv_backward`] of a shape with `groups > 1` (and one source).
#[allow(clippy::too_many_arguments)]
pub fn grouped_backward<T: Real>(
    x: &[T],
    w: &[T],
    dy: &[T],
    mut dx: Option<&mut [T]>,
    dw: &mut [T],
    dbias: &mut [T],
    s: &ConvShape,
    batch: usize,
    scratch: &mut ConvScratch<T>,
) {
    let (x_run, y_run, w_len, b_len) = runs(s);
    let one = s.per_group();
    for g in 0..s.groups {
        let x_g = gather(x, batch, s.groups, g, x_run);
        let dy_g = gather(dy, batch, s.groups, g, y_run);
        let mut dx_g = dx.as_ref().map(|_| vec![T::zero(); batch * x_run]);
        let w_g = &w[g * w_len..][..w_len];
        let dw_g = &mut dw[g * w_len..][..w_len];
        let dbias_g = &mut dbias[g * b_len..][..b_len];
        conv_backward(
            &x_g,
            &[w_g],
            &dy_g,
            dx_g.as_deref_mut(),
            &mut [dw_g],
            dbias_g,
            &one,
            batch,
            scratch,
        );
        if let (Some(dx), Some(dx_g)) = (dx.as_deref_mut(), dx_g) {
            scatter(&dx_g, dx, s.groups, g, x_run);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cpu::gradcheck::random;

    /// The grouped convolution against its definition in f64: output
    /// channel o of group g sums over input channels g·C/G.. only.
    #[test]
    fn each_group_reads_its_own_channels_only() {
        let s = ConvShape {
            sources: 1,
            groups: 2,
            in_c: 6,
            in_h: 5,
            in_w: 4,
            out_c: 4,
            kernel: 3,
            stride: 1,
            pad: 1,
            out_h: 5,
            out_w: 4,
        };
        let batch = 2;
        let x = random(batch * 6 * 20, 1);
        let w = random(s.block_len(), 2);
        let bias = random(4, 3);
        let mut y = vec![0.0f64; batch * 4 * 20];
        grouped_forward(
            &x,
            &w,
            &bias,
            &mut y,
            &s,
            batch,
            &mut ConvScratch::default(),
        );
        let (cg, og) = (3, 2);
        for n in 0..batch {
            for o in 0..4 {
                let g = o / og;
                for oy in 0..5i64 {
                    for ox in 0..4i64 {
                        let mut sum = bias[o];
                        for c in 0..cg {
                            for ky in 0..3i64 {
                                for kx in 0..3i64 {
                                    let (iy, ix) = (oy + ky - 1, ox + kx - 1);
                                    if !(0..5).contains(&iy) || !(0..4).contains(&ix) {
                                        continue;
                                    }
                                    let xi =
                                        ((n * 6 + g * cg + c) * 5 + iy as usize) * 4 + ix as usize;
                                    let wi = ((o * cg + c) * 3 + ky as usize) * 3 + kx as usize;
                                    sum += x[xi] * w[wi];
                                }
                            }
                        }
                        let got = y[((n * 4 + o) * 5 + oy as usize) * 4 + ox as usize];
                        assert!((got - sum).abs() < 1e-12, "{got} against {sum}");
                    }
                }
            }
        }
    }

    /// The backward pass is the forward pass's adjoint: for random dy,
    /// ⟨dy, conv(x)⟩ − ⟨dy, bias⟩ = ⟨dx, x⟩ = ⟨dw, w⟩ (all linear), in f64.
    #[test]
    fn the_backward_pass_is_the_adjoint_of_the_forward() {
        let s = ConvShape {
            sources: 1,
            groups: 2,
            in_c: 4,
            in_h: 6,
            in_w: 6,
            out_c: 6,
            kernel: 3,
            stride: 2,
            pad: 1,
            out_h: 3,
            out_w: 3,
        };
        let batch = 3;
        let x = random(batch * 4 * 36, 4);
        let w = random(s.block_len(), 5);
        let dy = random(batch * 6 * 9, 6);
        let zero_bias = vec![0.0f64; 6];
        let mut scratch = ConvScratch::default();
        let mut y = vec![0.0f64; dy.len()];
        grouped_forward(&x, &w, &zero_bias, &mut y, &s, batch, &mut scratch);
        let (mut dx, mut dw, mut dbias) = (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; 6]);
        grouped_backward(
            &x,
            &w,
            &dy,
            Some(&mut dx),
            &mut dw,
            &mut dbias,
            &s,
            batch,
            &mut scratch,
        );
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a * b).sum::<f64>();
        let forward = dot(&dy, &y);
        assert!((dot(&dx, &x) - forward).abs() < 1e-9 * forward.abs().max(1.0));
        assert!((dot(&dw, &w) - forward).abs() < 1e-9 * forward.abs().max(1.0));
        for (o, &db) in dbias.iter().enumerate() {
            let sum: f64 = (0..batch)
                .map(|n| dy[(n * 6 + o) * 9..][..9].iter().sum::<f64>())
                .sum();
            assert!((db - sum).abs() < 1e-12);
        }
    }
}
