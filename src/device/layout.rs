//! How a device orders a feature map's elements: channels outermost (NCHW,
//! the CPU device and the GPU at f32) or innermost (NHWC, the GPU at 16
//! bits, where cuDNN's tensor-core convolutions read channels-last data
//! without transposing it). Parameters cross between host and device in
//! the host's order, the twin's (a checkpoint's, filters `[out][in][kh][kw]`);
//! [`Layout::to_device`] and [`Layout::from_device`] reorder each weight
//! block whose inner dimensions follow the feature map's: a filter becomes
//! `[out][kh][kw][in]`, and a fully connected layer reading a map (fc6)
//! `[out][h][w][c]`, so that no activation is ever transposed.

use crate::device::precision::Storage;
use crate::net::plan::{Op, PlannedLayer, Shape};
use std::borrow::Cow;

/// Where a feature map's channels sit in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[image][channel][row][column]`.
    Nchw,
    /// `[image][row][column][channel]`.
    Nhwc,
}

impl Layout {
    /// The layout of the GPU's buffers at `storage`: channels-last for the
    /// 16-bit storages, whose convolutions run on tensor cores; NCHW at f32.
    pub fn on_gpu(storage: Storage) -> Layout {
        if storage.is_16_bit() {
            Layout::Nhwc
        } else {
            Layout::Nchw
        }
    }

    /// One weight block of `layer` (one source's), from the host's order
    /// into this layout's.
    pub fn to_device<'a>(self, layer: &PlannedLayer, block: &'a [f32]) -> Cow<'a, [f32]> {
        match (self, channel_blocks(layer)) {
            (Layout::Nhwc, Some((channels, positions))) => {
                Cow::Owned(transpose_rows(block, channels, positions))
            }
            _ => Cow::Borrowed(block),
        }
    }

    /// One weight block of `layer` (or its gradient, or momentum), from
    /// this layout's order back into the host's.
    pub fn from_device(self, layer: &PlannedLayer, block: Vec<f32>) -> Vec<f32> {
        match (self, channel_blocks(layer)) {
            (Layout::Nhwc, Some((channels, positions))) => {
                transpose_rows(&block, positions, channels)
            }
            _ => block,
        }
    }
}

/// For a layer whose weight rows run over a feature map's channels and
/// positions (a convolution's filters, a fully connected layer reading a
/// map), the channels and positions each row holds, channels outermost in
/// the host's order.
fn channel_blocks(layer: &PlannedLayer) -> Option<(usize, usize)> {
    match (&layer.op, layer.input) {
        (Op::Conv(c), _) => Some((c.in_c / c.groups, c.kernel * c.kernel)),
        (Op::Fc(_), Shape::Map { c, h, w }) => Some((c, h * w)),
        _ => None,
    }
}

/// Each row of `block` (rows of `a × b` elements) transposed to `b × a`:
/// a weight block's rows, or images `[c][plane]` into `[plane][c]`.
pub fn transpose_rows(block: &[f32], a: usize, b: usize) -> Vec<f32> {
    let row = a * b;
    debug_assert_eq!(block.len() % row.max(1), 0, "whole rows of {a} × {b}");
    let mut out = vec![0.0; block.len()];
    for (src, dst) in block.chunks_exact(row).zip(out.chunks_exact_mut(row)) {
        for i in 0..a {
            for j in 0..b {
                dst[j * a + i] = src[i * b + j];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::plan::Plan;

    /// Each parameter layer of the paper's plan and its grouped network,
    /// with one source's weight block of distinct values.
    fn blocks() -> Vec<(PlannedLayer, Vec<f32>)> {
        let plan = Plan::load("paper").unwrap();
        let grouped = plan.grouped().unwrap();
        plan.layers
            .into_iter()
            .chain(grouped.layers)
            .filter_map(|layer| {
                let len = match layer.op {
                    Op::Conv(c) => c.block_len(),
                    Op::Fc(f) => f.block_len(),
                    _ => return None,
                };
                Some((layer, (0..len).map(|i| i as f32).collect()))
            })
            .collect()
    }

    #[test]
    fn channels_last_filters_are_out_kh_kw_in_and_fc6_reads_h_w_c() {
        let mut fc_reading_maps = 0;
        for (layer, block) in blocks() {
            let device = Layout::Nhwc.to_device(&layer, &block);
            match (&layer.op, layer.input) {
                (Op::Conv(c), _) => {
                    let (cin, k) = (c.in_c / c.groups, c.kernel);
                    for (o, i, y, x) in [(0, 0, 0, 1), (c.out_c - 1, cin - 1, k - 1, k - 2)] {
                        let host = ((o * cin + i) * k + y) * k + x;
                        let nhwc = ((o * k + y) * k + x) * cin + i;
                        assert_eq!(
                            device[nhwc], block[host],
                            "{} ({o},{i},{y},{x})",
                            layer.name
                        );
                    }
                }
                (Op::Fc(f), Shape::Map { c, h, w }) => {
                    let (o, ch, p) = (f.outputs - 1, c - 2, h * w - 3);
                    let host = (o * c + ch) * h * w + p;
                    assert_eq!(
                        device[(o * h * w + p) * c + ch],
                        block[host],
                        "{}",
                        layer.name
                    );
                    fc_reading_maps += 1;
                }
                _ => assert_eq!(device, block, "{} is not reordered", layer.name),
            }
            assert_eq!(Layout::Nhwc.from_device(&layer, device.to_vec()), block);
            assert_eq!(Layout::Nchw.to_device(&layer, &block), block);
            assert_eq!(Layout::Nchw.from_device(&layer, block.clone()), block);
        }
        // fc6 of the towers and of the grouped network.
        assert_eq!(fc_reading_maps, 2);
    }

    #[test]
    fn only_the_16_bit_gpu_storages_are_channels_last() {
        assert_eq!(Layout::on_gpu(Storage::Full), Layout::Nchw);
        assert_eq!(Layout::on_gpu(Storage::Bf16), Layout::Nhwc);
        assert_eq!(Layout::on_gpu(Storage::F16), Layout::Nhwc);
    }
}
