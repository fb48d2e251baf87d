//! The paper's preprocessing and augmentation (§2, §4.1; docs/network.md, "Data"):
//! the shorter side resized to 256 and the centre 256×256 cropped (scaled
//! for smaller nets: the base side is input × 256/227); in training a random
//! input-sized crop, a horizontal flip with p = ½ and PCA lighting (add
//! Σᵢ αᵢ λᵢ pᵢ, αᵢ ~ N(0, 0.1²) once per image per pass); then pixels scaled
//! to [0, 1] and the per-channel mean subtracted. At test time the centre
//! crop, or the ten crops (corners and centre, each also mirrored).

use super::decode::{Region, RgbImage};
use super::flip::mirror_row;
use crate::rng::Rng;
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use serde::{Deserialize, Serialize};

/// A dataset's colour statistics, on pixels scaled to [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Per-channel mean, RGB.
    pub mean: [f32; 3],
    /// Eigenvalues of the RGB covariance, largest first.
    pub eigenvalues: [f32; 3],
    /// The matching eigenvectors: `eigenvectors[c][i]` is channel c of vector i.
    pub eigenvectors: [[f32; 3]; 3],
}

impl Stats {
    /// The widely used ImageNet statistics (docs/network.md; fb.resnet.torch's lighting).
    pub fn imagenet() -> Stats {
        Stats {
            mean: [0.485, 0.456, 0.406],
            eigenvalues: [0.2175, 0.0188, 0.0045],
            eigenvectors: [
                [-0.5675, 0.7192, 0.4009],
                [-0.5808, -0.0045, -0.8140],
                [-0.5836, -0.6948, 0.4203],
            ],
        }
    }
}

/// Where an image's input-sized crop lies in its `base` square (§4.1):
/// top left corner, whether it is mirrored, and the per-channel offsets
/// the device adds to its pixels (the lighting shift minus the mean).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Crop {
    pub x: usize,
    pub y: usize,
    pub flip: bool,
    pub offsets: [f32; 3],
}

/// σ of the lighting coefficients αᵢ (§4.1).
pub const LIGHTING_STD: f64 = 0.1;

/// Everything that turns a decoded image into the net's input.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    /// The net's input side (227 in the paper).
    pub input: usize,
    /// The square the image is first brought to (256 in the paper).
    pub base: usize,
    pub stats: Stats,
}

impl Pipeline {
    /// The pipeline for a net of input side `input`.
    pub fn new(input: usize, stats: Stats) -> Pipeline {
        Pipeline {
            input,
            base: ((input as f64 * 256.0 / 227.0).round() as usize).max(input),
            stats,
        }
    }

    /// A pipeline that takes `side`×`side` squares whole (input = base =
    /// side): colour statistics of prepared shards, at their stored size.
    pub fn whole_square(side: usize, stats: Stats) -> Pipeline {
        Pipeline {
            input: side,
            base: side,
            stats,
        }
    }

    /// Elements of one output image (bytes of its u8 crop, floats of the net's input).
    pub fn output_len(&self) -> usize {
        3 * self.input * self.input
    }

    /// The shorter side resized to `base`, the centre `base × base` kept
    /// (one resampling, antialiased); an image that is that square already
    /// (from shards) is returned as it is.
    pub fn square(&self, image: RgbImage, resizer: &mut Resizer) -> Result<RgbImage, String> {
        if image.width == self.base && image.height == self.base {
            return Ok(image);
        }
        let mut pixels = Vec::new();
        self.square_into(
            image.width,
            image.height,
            &image.pixels,
            resizer,
            &mut pixels,
        )?;
        Ok(RgbImage {
            width: self.base,
            height: self.base,
            pixels,
        })
    }

    /// [`Pipeline::square`] of the `width × height` RGB `pixels` into `out`
    /// (its length set to the square's), for an image that is not that
    /// square already.
    pub fn square_into(
        &self,
        width: usize,
        height: usize,
        pixels: &[u8],
        resizer: &mut Resizer,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let (w, h) = (width as f64, height as f64);
        let side = w.min(h);
        let src = ImageRef::new(width as u32, height as u32, pixels, PixelType::U8x3)
            .map_err(|e| format!("resize: {e}"))?;
        out.resize(self.base * self.base * 3, 0);
        let mut dst =
            Image::from_slice_u8(self.base as u32, self.base as u32, out, PixelType::U8x3)
                .map_err(|e| format!("resize: {e}"))?;
        let options = ResizeOptions::new()
            .crop((w - side) / 2.0, (h - side) / 2.0, side, side)
            .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        resizer
            .resize(&src, &mut dst, &options)
            .map_err(|e| format!("resize: {e}"))
    }

    /// The part of a `width × height` image that [`Pipeline::square`] reads
    /// for the pixels of `crop`, with a pixel to spare each side (all of
    /// the image's where it is the square already, the crop itself). The
    /// bilinear filter reaches one source pixel either side of an output
    /// pixel's centre, times the reduction where the image shrinks.
    pub fn source_of(&self, width: usize, height: usize, crop: &Crop) -> Region {
        if width == self.base && height == self.base {
            return Region {
                x: crop.x,
                y: crop.y,
                width: self.input,
                height: self.input,
            };
        }
        let side = width.min(height) as f64;
        let scale = side / self.base as f64;
        let reach = scale.max(1.0);
        let n = self.input as f64;
        // Source pixels [first, last) under output pixels [at, at + n).
        let span = |at: usize, length: usize| {
            let origin = (length as f64 - side) / 2.0;
            let centre = |out: f64| origin + (out + 0.5) * scale;
            let first = (centre(at as f64) - reach).floor() - 1.0;
            let last = (centre(at as f64 + n - 1.0) + reach).ceil() + 1.0;
            let first = first.max(0.0) as usize;
            (first, (last.max(0.0) as usize).min(length).max(first))
        };
        let (x0, x1) = span(crop.x, width);
        let (y0, y1) = span(crop.y, height);
        Region {
            x: x0,
            y: y0,
            width: x1 - x0,
            height: y1 - y0,
        }
    }

    /// A training sample's random crop, flip and PCA lighting (§4.1), drawn
    /// from the stream `key`.
    pub fn draw(&self, key: u64) -> Crop {
        let mut rng = Rng::new(key);
        let room = self.base - self.input;
        let (x, y) = (rng.below(room + 1), rng.below(room + 1));
        let flip = rng.uniform() < 0.5;
        let alpha: [f64; 3] = std::array::from_fn(|_| LIGHTING_STD * rng.normal());
        let s = &self.stats;
        let shift: [f32; 3] = std::array::from_fn(|c| {
            (0..3)
                .map(|i| alpha[i] * f64::from(s.eigenvalues[i]) * f64::from(s.eigenvectors[c][i]))
                .sum::<f64>() as f32
        });
        Crop {
            x,
            y,
            flip,
            offsets: self.offsets(shift),
        }
    }

    /// The centre crop, unmirrored and unlit.
    pub fn centre_crop(&self) -> Crop {
        let at = (self.base - self.input) / 2;
        Crop {
            x: at,
            y: at,
            flip: false,
            offsets: self.offsets([0.0; 3]),
        }
    }

    /// A training sample from a `base` square (RGB bytes, HWC): the random
    /// crop and flip drawn from the stream `key` into `out` (u8 HWC), and the
    /// image's per-channel offset: its PCA lighting shift minus the mean.
    pub fn train(&self, square: &[u8], key: u64, out: &mut [u8]) -> [f32; 3] {
        let crop = self.draw(key);
        self.cut(&crop, square, (0, 0, self.base), out);
        crop.offsets
    }

    /// The centre crop into `out` (u8 HWC), and its offsets (minus the mean).
    pub fn centre(&self, square: &[u8], out: &mut [u8]) -> [f32; 3] {
        let crop = self.centre_crop();
        self.cut(&crop, square, (0, 0, self.base), out);
        crop.offsets
    }

    /// The ten crops (four corners and the centre, then the same mirrored)
    /// into `out`, ten u8 HWC images one after another, and their offsets
    /// (minus the mean, the same for all ten).
    pub fn ten_crops(&self, square: &[u8], out: &mut [u8]) -> [f32; 3] {
        let far = self.base - self.input;
        let corners = [(0, 0), (far, 0), (0, far), (far, far), (far / 2, far / 2)];
        let len = self.output_len();
        for (i, flip) in [false, true].into_iter().enumerate() {
            for (j, &(x, y)) in corners.iter().enumerate() {
                let crop = Crop {
                    x,
                    y,
                    flip,
                    offsets: [0.0; 3],
                };
                let out = &mut out[(i * 5 + j) * len..][..len];
                self.cut(&crop, square, (0, 0, self.base), out);
            }
        }
        self.offsets([0.0; 3])
    }

    /// The rows of `crop` (mirrored when it says so) into `out` (u8 HWC),
    /// from `part`: the rectangle of the `base` square whose top left corner
    /// is at (`part.0`, `part.1`) and which is `part.2` pixels wide, and
    /// which holds the crop.
    pub fn cut(&self, crop: &Crop, pixels: &[u8], part: (usize, usize, usize), out: &mut [u8]) {
        let n = self.input;
        let (x0, y0, width) = (crop.x - part.0, crop.y - part.1, part.2);
        for (y, dst) in out.chunks_exact_mut(n * 3).take(n).enumerate() {
            let row = &pixels[((y0 + y) * width + x0) * 3..][..n * 3];
            if crop.flip {
                mirror_row(row, dst);
            } else {
                dst.copy_from_slice(row);
            }
        }
    }

    fn offsets(&self, shift: [f32; 3]) -> [f32; 3] {
        std::array::from_fn(|c| shift[c] - self.stats.mean[c])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(width: usize, height: usize) -> RgbImage {
        let pixels = (0..height)
            .flat_map(|y| {
                (0..width)
                    .flat_map(move |x| [(x * 255 / width) as u8, (y * 255 / height) as u8, 128])
            })
            .collect();
        RgbImage {
            width,
            height,
            pixels,
        }
    }

    fn zero_stats() -> Stats {
        Stats {
            mean: [0.0; 3],
            eigenvalues: [0.0; 3],
            eigenvectors: [[0.0; 3]; 3],
        }
    }

    #[test]
    fn the_paper_sizes() {
        let p = Pipeline::new(227, Stats::imagenet());
        assert_eq!((p.base, p.input), (256, 227));
        assert_eq!(Pipeline::new(64, Stats::imagenet()).base, 72);
    }

    #[test]
    fn square_keeps_the_centre_of_the_shorter_side() {
        let p = Pipeline::new(8, zero_stats());
        let mut resizer = Resizer::new();
        // A wide image whose middle third is white, the rest black.
        let (w, h) = (90, 30);
        let pixels = (0..h)
            .flat_map(|_| (0..w).flat_map(|x| [if (30..60).contains(&x) { 255 } else { 0 }; 3]))
            .collect();
        let sq = p
            .square(
                RgbImage {
                    width: w,
                    height: h,
                    pixels,
                },
                &mut resizer,
            )
            .unwrap();
        assert_eq!((sq.width, sq.height), (p.base, p.base));
        // The centre square is the white third (the filter may blend the
        // outermost columns with their black neighbours).
        for y in 0..p.base {
            for x in 1..p.base - 1 {
                assert!(
                    sq.pixels[(y * p.base + x) * 3] > 250,
                    "({x}, {y}): {:?}",
                    &sq.pixels[..30]
                );
            }
        }
    }

    /// The net's input of one u8 crop and its offsets (the CPU device op).
    fn net_input(pixels: &[u8], offsets: [f32; 3]) -> Vec<f32> {
        let mut out = vec![0.0; pixels.len()];
        crate::data::input::u8_to_f32(pixels, &offsets, &mut out);
        out
    }

    /// The f32 path the loader took before the u8 one: crop, flip, scale,
    /// subtract the mean and add the lighting shift in one pass on the host.
    fn f32_reference(p: &Pipeline, square: &RgbImage, key: Option<u64>) -> Vec<f32> {
        let (n, plane) = (p.input, p.input * p.input);
        let (mut x0, mut y0) = ((p.base - n) / 2, (p.base - n) / 2);
        let (mut flip, mut shift) = (false, [0.0f32; 3]);
        if let Some(key) = key {
            let mut rng = Rng::new(key);
            x0 = rng.below(p.base - n + 1);
            y0 = rng.below(p.base - n + 1);
            flip = rng.uniform() < 0.5;
            let alpha: [f64; 3] = std::array::from_fn(|_| LIGHTING_STD * rng.normal());
            let s = &p.stats;
            shift = std::array::from_fn(|c| {
                (0..3)
                    .map(|i| {
                        alpha[i] * f64::from(s.eigenvalues[i]) * f64::from(s.eigenvectors[c][i])
                    })
                    .sum::<f64>() as f32
            });
        }
        let mut out = vec![0.0; 3 * plane];
        for y in 0..n {
            for x in 0..n {
                let src = if flip { n - 1 - x } else { x };
                let px = &square.pixels[((y0 + y) * square.width + x0 + src) * 3..];
                for c in 0..3 {
                    out[c * plane + y * n + x] =
                        f32::from(px[c]) * (1.0 / 255.0) + (shift[c] - p.stats.mean[c]);
                }
            }
        }
        out
    }

    #[test]
    fn the_u8_path_gives_the_f32_paths_net_input() {
        let p = Pipeline::new(227, Stats::imagenet());
        let pixels = (0..p.base * p.base * 3)
            .map(|i| ((i * 7919) % 251) as u8)
            .collect();
        let square = RgbImage {
            width: p.base,
            height: p.base,
            pixels,
        };
        let mut crop = vec![0u8; p.output_len()];
        let mut worst = 0.0f32;
        for key in 0..40u64 {
            let offsets = p.train(&square.pixels, key, &mut crop);
            let want = f32_reference(&p, &square, Some(key));
            for (a, b) in net_input(&crop, offsets).iter().zip(&want) {
                worst = worst.max((a - b).abs());
            }
        }
        let offsets = p.centre(&square.pixels, &mut crop);
        for (a, b) in net_input(&crop, offsets)
            .iter()
            .zip(&f32_reference(&p, &square, None))
        {
            worst = worst.max((a - b).abs());
        }
        assert!(worst <= 1e-6, "largest difference {worst}");
    }

    #[test]
    fn crops_flips_and_lighting_follow_their_definitions() {
        let mut stats = Stats::imagenet();
        stats.mean = [0.25, 0.5, 0.75];
        let p = Pipeline::new(6, stats);
        let square = gradient(p.base, p.base);
        let len = p.output_len();
        let mut bytes = vec![0u8; 10 * len];
        let offsets = p.centre(&square.pixels, &mut bytes[..len]);
        let centre = net_input(&bytes[..len], offsets);
        let at = (p.base - p.input) / 2;
        let px = |x: usize, y: usize, c: usize| {
            f32::from(square.pixels[((y + at) * p.base + x + at) * 3 + c]) / 255.0
        };
        assert_eq!(centre[2 * 36 + 6 + 4], px(4, 1, 2) - 0.75);
        let offsets = p.ten_crops(&square.pixels, &mut bytes);
        let ten: Vec<f32> = bytes
            .chunks(len)
            .flat_map(|crop| net_input(crop, offsets))
            .collect();
        assert_eq!(&ten[4 * len..5 * len], &centre[..]);
        // Crop 5 + j mirrors crop j.
        for j in 0..5 {
            for c in 0..3 {
                for y in 0..6 {
                    for x in 0..6 {
                        let a = ten[j * len + c * 36 + y * 6 + x];
                        let b = ten[(5 + j) * len + c * 36 + y * 6 + (5 - x)];
                        assert_eq!(a, b);
                    }
                }
            }
        }
        // Lighting: one shift per channel per image, Σ αᵢ λᵢ pᵢ with small α.
        let mut crop = vec![0u8; len];
        let mut shifts = Vec::new();
        for key in 0..200 {
            let offsets = p.train(&square.pixels, key, &mut crop);
            let sample = net_input(&crop, offsets);
            let mut q = p;
            q.stats.eigenvalues = [0.0; 3];
            let offsets = q.train(&square.pixels, key, &mut crop);
            let plain = net_input(&crop, offsets);
            let d: Vec<f32> = (0..3).map(|c| sample[c * 36] - plain[c * 36]).collect();
            for c in 0..3 {
                assert!(
                    sample[c * 36..(c + 1) * 36]
                        .iter()
                        .zip(&plain[c * 36..])
                        .all(|(a, b)| (a - b - d[c]).abs() < 1e-6)
                );
            }
            shifts.push(d[0]);
        }
        let sd = (shifts.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / 200.0).sqrt();
        // Channel 0's shift has σ = 0.1 · sqrt(Σᵢ (λᵢ p₀ᵢ)²).
        let s = Stats::imagenet();
        let expect = 0.1
            * (0..3)
                .map(|i| f64::from(s.eigenvalues[i] * s.eigenvectors[0][i]).powi(2))
                .sum::<f64>()
                .sqrt();
        assert!((sd / expect - 1.0).abs() < 0.2, "σ {sd} against {expect}");
    }
}
