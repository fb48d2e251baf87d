//! The paper's Figure 3: the first convolution's kernels drawn as small
//! images, one row block per tower (tower 1 above tower 2), each kernel
//! stretched to its own range and enlarged; and each tower's mean colour
//! saturation, the number that shows the towers specialising (paper §6.1:
//! one tower's kernels come out largely colour-agnostic, the other's
//! colour-specific).

use crate::error::{Error, Result};
use crate::net::params::TwinTensor;
use crate::net::plan::{Op, Plan, TOWERS};
use crate::output::Output;
use crate::train::checkpoint;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Kernels per row of a tower's block (the paper's figure has 16).
const COLUMNS: usize = 16;
/// Blank kernel pixels between the two towers' blocks.
const TOWER_GAP: usize = 3;
/// The colour between tiles.
const BACKGROUND: [u8; 3] = [255, 255, 255];

/// The first convolution's kernels, each as RGB pixels in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Filters {
    /// Kernels in each tower.
    pub per_tower: usize,
    /// The kernel's side.
    pub kernel: usize,
    /// `tiles[t * per_tower + o]`: kernel `o` of tower `t`, row-major pixels.
    tiles: Vec<Vec<[f32; 3]>>,
}

impl Filters {
    /// The first convolution's kernels from a run's twin weights (`conv1.weight`
    /// of shape [towers × filters, channels, k, k], tower 1's rows first).
    /// Three channels are drawn as RGB, any other number as grey (their mean).
    pub fn from_weights(plan: &Plan, weights: &[TwinTensor]) -> Result<Filters> {
        let layer = plan
            .layers
            .iter()
            .find(|l| matches!(l.op, Op::Conv(_)))
            .ok_or_else(|| {
                Error::Input(format!("preset {}: no convolution to draw", plan.spec.name))
            })?;
        let Op::Conv(conv) = layer.op else {
            unreachable!("found a convolution above")
        };
        let name = format!("{}.weight", layer.name);
        let tensor = weights
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| Error::Input(format!("the weights hold no {name}")))?;
        let channels = conv.sources * conv.in_c;
        let area = conv.kernel * conv.kernel;
        if tensor.data.len() != TOWERS * conv.out_c * channels * area {
            return Err(Error::Input(format!(
                "{name} has shape {:?}, the net needs [{}, {channels}, {k}, {k}]",
                tensor.shape,
                TOWERS * conv.out_c,
                k = conv.kernel
            )));
        }
        let tiles = tensor
            .data
            .chunks_exact(channels * area)
            .map(|kernel| tile(kernel, channels, area))
            .collect();
        Ok(Filters {
            per_tower: conv.out_c,
            kernel: conv.kernel,
            tiles,
        })
    }

    /// Each tower's mean colour saturation: the mean over its kernels and
    /// their pixels of max(R, G, B) − min(R, G, B) of the drawn (stretched)
    /// kernel. 0 when every kernel is grey; 1 at most.
    pub fn saturation(&self) -> [f64; TOWERS] {
        std::array::from_fn(|t| {
            let tower = &self.tiles[t * self.per_tower..(t + 1) * self.per_tower];
            let (sum, n) = tower.iter().flatten().fold((0.0, 0usize), |(s, n), p| {
                let hi = p[0].max(p[1]).max(p[2]);
                let lo = p[0].min(p[1]).min(p[2]);
                (s + f64::from(hi - lo), n + 1)
            });
            sum / n.max(1) as f64
        })
    }

    /// Rows and columns of kernels in each tower's block.
    fn grid(&self) -> (usize, usize) {
        let columns = self.per_tower.min(COLUMNS);
        (self.per_tower.div_ceil(columns), columns)
    }

    /// Where kernel `index` (of all towers) starts, in kernel pixels.
    fn origin(&self, index: usize) -> (usize, usize) {
        let (rows, columns) = self.grid();
        let (t, o) = (index / self.per_tower, index % self.per_tower);
        let pitch = self.kernel + 1;
        let block = rows * pitch + TOWER_GAP;
        (
            1 + (o % columns) * pitch,
            1 + t * block + (o / columns) * pitch,
        )
    }

    /// The figure's size in kernel pixels.
    fn extent(&self) -> (usize, usize) {
        let (rows, columns) = self.grid();
        let pitch = self.kernel + 1;
        (
            columns * pitch + 1,
            TOWERS * rows * pitch + (TOWERS - 1) * TOWER_GAP + 1,
        )
    }

    /// How many screen pixels each kernel pixel takes: tiles about 48 wide.
    fn scale(&self) -> usize {
        (48 / self.kernel).max(1)
    }

    /// The figure's width and height in screen pixels.
    pub fn size(&self) -> (usize, usize) {
        let (w, h) = self.extent();
        (w * self.scale(), h * self.scale())
    }

    /// The figure as 8-bit RGB: (width, height, pixels).
    pub fn rgb(&self) -> (usize, usize, Vec<u8>) {
        let s = self.scale();
        let (width, height) = self.size();
        let mut pixels: Vec<u8> = BACKGROUND.repeat(width * height);
        for (index, tile) in self.tiles.iter().enumerate() {
            let (x0, y0) = self.origin(index);
            for (p, rgb) in tile.iter().enumerate() {
                let (x, y) = (x0 + p % self.kernel, y0 + p / self.kernel);
                let colour = byte(*rgb);
                for dy in 0..s {
                    for dx in 0..s {
                        let at = 3 * ((y * s + dy) * width + x * s + dx);
                        pixels[at..at + 3].copy_from_slice(&colour);
                    }
                }
            }
        }
        (width, height, pixels)
    }

    /// The figure as a PNG file's bytes.
    pub fn png(&self) -> Vec<u8> {
        let (width, height, pixels) = self.rgb();
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, width as u32, height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder
            .write_header()
            .and_then(|mut w| w.write_image_data(&pixels))
            .expect("a PNG encodes into memory");
        out
    }

    /// The figure as SVG: one square per kernel pixel.
    pub fn svg(&self) -> String {
        let (w, h) = self.extent();
        let s = self.scale();
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" viewBox=\"0 0 {w} {h}\" shape-rendering=\"crispEdges\">\n<rect width=\"{w}\" height=\"{h}\" fill=\"{}\"/>\n",
            w * s,
            h * s,
            hex(BACKGROUND)
        );
        for (index, tile) in self.tiles.iter().enumerate() {
            let (x0, y0) = self.origin(index);
            for (p, rgb) in tile.iter().enumerate() {
                let (x, y) = (x0 + p % self.kernel, y0 + p / self.kernel);
                let _ = writeln!(
                    svg,
                    "<rect x=\"{x}\" y=\"{y}\" width=\"1\" height=\"1\" fill=\"{}\"/>",
                    hex(byte(*rgb))
                );
            }
        }
        svg.push_str("</svg>\n");
        svg
    }

    /// Writes `stem.png` and `stem.svg`; returns both paths.
    pub fn write(&self, stem: &Path) -> Result<[PathBuf; 2]> {
        let (png, svg) = (stem.with_extension("png"), stem.with_extension("svg"));
        Output::create(&png, "plot")?.commit(&self.png())?;
        Output::create(&svg, "plot")?.commit(self.svg().as_bytes())?;
        Ok([png, svg])
    }
}

/// One drawn checkpoint: its step, the towers' saturation and the figure's files.
pub struct Drawn {
    pub step: usize,
    pub saturation: [f64; TOWERS],
    pub files: [PathBuf; 2],
}

/// Draws the newest checkpoint of the run in `run_dir` to
/// `RUN_DIR/filters.png` and `.svg`, or with `every`, each checkpoint still
/// on disk to `RUN_DIR/filters/step-NNNNNNNN.png` and `.svg`.
pub fn draw_run(run_dir: &Path, every: bool) -> Result<Vec<Drawn>> {
    let folders = if every {
        let all = checkpoint::list(&run_dir.join("checkpoints"))?;
        let out = run_dir.join("filters");
        std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
        all.into_iter().map(|(_, folder)| folder).collect()
    } else {
        vec![checkpoint::load(run_dir)?.0]
    };
    if folders.is_empty() {
        return Err(Error::Input(format!(
            "{}: holds no checkpoint to draw",
            run_dir.display()
        )));
    }
    folders
        .iter()
        .map(|folder| {
            let ckpt = checkpoint::load_folder(folder)?;
            let plan = Plan::new(ckpt.state.spec.clone())?;
            let filters = Filters::from_weights(&plan, &ckpt.weights)?;
            let stem = if every {
                run_dir
                    .join("filters")
                    .join(checkpoint::folder_name(ckpt.state.step))
            } else {
                run_dir.join("filters")
            };
            Ok(Drawn {
                step: ckpt.state.step,
                saturation: filters.saturation(),
                files: filters.write(&stem)?,
            })
        })
        .collect()
}

/// One kernel (`channels` planes of `area` values) stretched to its own
/// range: its smallest value black, its largest full intensity; a constant
/// kernel mid-grey.
fn tile(kernel: &[f32], channels: usize, area: usize) -> Vec<[f32; 3]> {
    let lo = kernel.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = kernel.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let stretch = |v: f32| {
        if hi > lo { (v - lo) / (hi - lo) } else { 0.5 }
    };
    (0..area)
        .map(|p| {
            if channels == 3 {
                std::array::from_fn(|c| stretch(kernel[c * area + p]))
            } else {
                let mean =
                    (0..channels).map(|c| kernel[c * area + p]).sum::<f32>() / channels as f32;
                [stretch(mean); 3]
            }
        })
        .collect()
}

fn byte(rgb: [f32; 3]) -> [u8; 3] {
    rgb.map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
}

fn hex([r, g, b]: [u8; 3]) -> String {
    format!("#{r:02x}{g:02x}{b:02x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::init::init_twin;
    use crate::net::spec::InitScheme;

    /// Small's conv1 with tower 1's kernels grey (equal channels) and
    /// tower 2's kernels pure red and green.
    fn two_kinds() -> (Plan, Vec<TwinTensor>) {
        let plan = Plan::load("small").unwrap();
        let mut weights = init_twin(&plan, InitScheme::He, 3);
        let conv1 = weights
            .iter_mut()
            .find(|t| t.name == "conv1.weight")
            .unwrap();
        let [filters, channels, k, _] = conv1.shape[..] else {
            panic!("{:?}", conv1.shape)
        };
        let area = k * k;
        for (f, kernel) in conv1.data.chunks_exact_mut(channels * area).enumerate() {
            for p in 0..area {
                let v = (p as f32 * 0.37 + f as f32).sin();
                let rgb = if f < filters / 2 {
                    [v, v, v]
                } else {
                    [v.abs(), -v.abs(), -v.abs()]
                };
                for c in 0..3 {
                    kernel[c * area + p] = rgb[c];
                }
            }
        }
        (plan, weights)
    }

    #[test]
    fn grey_kernels_have_no_saturation_and_pure_colours_a_lot() {
        let (plan, weights) = two_kinds();
        let filters = Filters::from_weights(&plan, &weights).unwrap();
        let [grey, colour] = filters.saturation();
        assert!(grey.abs() < 1e-6, "{grey}");
        // Red where |v| is large, black at |v| = 0: the chroma is the stretched |v| itself.
        assert!(colour > 0.4, "{colour}");
    }

    #[test]
    fn each_kernel_is_stretched_to_its_own_range_and_placed_in_its_tower_block() {
        let (plan, weights) = two_kinds();
        let filters = Filters::from_weights(&plan, &weights).unwrap();
        assert_eq!((filters.per_tower, filters.kernel), (16, 5));
        let (width, height, pixels) = filters.rgb();
        let s = filters.scale();
        // One row of 16 tiles per tower: 16 × 6 + 1 kernel pixels wide,
        // 2 × 6 + 3 + 1 high.
        assert_eq!((width, height), (97 * s, 16 * s));
        let at = |x: usize, y: usize| {
            let i = 3 * ((y * s) * width + x * s);
            [pixels[i], pixels[i + 1], pixels[i + 2]]
        };
        for index in [0, 17] {
            let (x0, y0) = filters.origin(index);
            let tile: Vec<[u8; 3]> = (0..25).map(|p| at(x0 + p % 5, y0 + p / 5)).collect();
            let lo = tile.iter().flatten().min().unwrap();
            let hi = tile.iter().flatten().max().unwrap();
            assert_eq!((*lo, *hi), (0, 255), "kernel {index}");
        }
        assert_eq!(filters.origin(16).1, 1 + 6 + TOWER_GAP);
        assert_eq!(at(0, 0), BACKGROUND);
        let svg = filters.svg();
        assert_eq!(svg.matches("<rect").count(), 1 + 32 * 25);
        assert_eq!(&filters.png()[..8], b"\x89PNG\r\n\x1a\n");
    }

    #[test]
    fn a_plan_without_its_first_convolution_weights_is_an_error() {
        let plan = Plan::load("small").unwrap();
        let e = Filters::from_weights(&plan, &[]).unwrap_err().to_string();
        assert!(e.contains("conv1.weight"), "{e}");
    }
}
