//! `alexnet bench-data`: how fast images become batches, per core and with
//! several workers, and how many cores of this speed would feed 5,000
//! images/s. The full path: decode, shorter side to 256 (or read a prepared
//! square), random crop, flip, PCA lighting, normalise to f32 CHW.

use super::augment::{Pipeline, Stats};
use super::decode::RgbImage;
use super::loader::{Loader, Mode, load_batch};
use super::sets::{self, ImageSet};
use super::synthetic::{CLASSES, Split, Synthetic};
use crate::error::{Error, Result};
use fast_image_resize::Resizer;
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// The rate to feed: a fast GPU pair's appetite.
pub const TARGET: f64 = 5000.0;

#[derive(Debug, Clone, Serialize)]
pub struct DataBench {
    pub data: String,
    pub images: usize,
    /// Images that could not be read (left out of the timing's batches).
    pub skipped: usize,
    pub per_core_images_per_s: f64,
    pub workers: usize,
    pub workers_images_per_s: f64,
    /// `workers_images_per_s / per_core_images_per_s`.
    pub scaling: f64,
    pub cores_for_target: f64,
}

/// Times the full path over the first `images` training images of `path`.
pub fn run(path: &Path, images: usize, workers: usize, input: usize) -> Result<DataBench> {
    let dataset = sets::open(path)?;
    let set: Arc<dyn ImageSet> = Arc::clone(&dataset.train);
    let count = images.min(set.len());
    if count == 0 {
        return Err(Error::Input(format!(
            "--data {}: no training images",
            path.display()
        )));
    }
    let pipeline = Arc::new(Pipeline::new(input, Stats::imagenet()));
    let mode = Mode::Train { seed: 1, epoch: 0 };
    let indices: Vec<usize> = (0..count).collect();
    // Warm the page cache and the allocator.
    load_batch(
        set.as_ref(),
        &pipeline,
        mode,
        &indices[..count.min(16)],
        &mut Resizer::new(),
    );
    let start = Instant::now();
    let mut resizer = Resizer::new();
    for chunk in indices.chunks(32) {
        std::hint::black_box(load_batch(
            set.as_ref(),
            &pipeline,
            mode,
            chunk,
            &mut resizer,
        ));
    }
    let single = count as f64 / start.elapsed().as_secs_f64();
    let lists: Vec<Vec<usize>> = indices.chunks(32).map(<[usize]>::to_vec).collect();
    let start = Instant::now();
    let mut skipped = Vec::new();
    for batch in Loader::start(set, pipeline, mode, lists, workers, 2 * workers, false) {
        skipped.extend(std::hint::black_box(batch?).skipped);
    }
    let multi = count as f64 / start.elapsed().as_secs_f64();
    if let Some((file, why)) = skipped.first().filter(|_| skipped.len() == count) {
        return Err(Error::Input(format!(
            "--data {}: none of the {count} images timed could be read (the first, {file}: {why})",
            path.display()
        )));
    }
    Ok(DataBench {
        data: dataset.kind,
        images: count,
        skipped: skipped.len(),
        per_core_images_per_s: single,
        workers,
        workers_images_per_s: multi,
        scaling: multi / single,
        cores_for_target: TARGET / single,
    })
}

/// The report as text.
pub fn render(b: &DataBench) -> String {
    format!(
        "bench-data: {}, {} images ({} unreadable, left out), full path (decode, resize, crop, flip, lighting, f32 CHW)\n\
         one core    {:8.0} images/s\n\
         {} workers   {:8.0} images/s  ({:.2}× one core)\n\
         to feed {TARGET:.0} images/s: {:.1} cores of this speed\n",
        b.data,
        b.images,
        b.skipped,
        b.per_core_images_per_s,
        b.workers,
        b.workers_images_per_s,
        b.scaling,
        b.cores_for_target
    )
}

/// Writes an ImageNet-like folder dataset for benchmarks: `images` JPEGs of
/// 500×375 at quality 97 (about the 0.18 megapixels of an average ImageNet
/// image) in `train/<class>/`, and a few in `val/<class>/`, drawn from the
/// synthetic set's ten classes.
pub fn generate(dir: &Path, images: usize) -> Result<()> {
    let (w, h) = (500usize, 375usize);
    // Drawn at half size and enlarged, so that pixel noise does not make the
    // files larger than photographs of the same size (about 100–150 KB).
    let (dw, dh) = (w / 2, h / 2);
    let train = Synthetic::new(7, Split::Train, images, 3, dw);
    let val = Synthetic::new(7, Split::Validation, CLASSES.len(), 3, dw);
    let mut resizer = Resizer::new();
    for (split, set, count) in [("train", &train, images), ("val", &val, CLASSES.len())] {
        for i in 0..count {
            let (pixels, labels) = set.batch(&[i]);
            let plane = dw * dw;
            // The synthetic set's values lie in about [-0.6, 0.6]: to bytes.
            let small: Vec<u8> = (0..dh * dw)
                .flat_map(|p| (0..3).map(move |c| (c, p)))
                .map(|(c, p)| ((pixels[c * plane + p] + 0.6) / 1.2 * 255.0).clamp(0.0, 255.0) as u8)
                .collect();
            let src = fast_image_resize::images::ImageRef::new(
                dw as u32,
                dh as u32,
                &small,
                fast_image_resize::PixelType::U8x3,
            )
            .map_err(|e| Error::Training(format!("resize: {e}")))?;
            let mut dst = fast_image_resize::images::Image::new(
                w as u32,
                h as u32,
                fast_image_resize::PixelType::U8x3,
            );
            resizer
                .resize(&src, &mut dst, None)
                .map_err(|e| Error::Training(format!("resize: {e}")))?;
            let rgb = RgbImage {
                width: w,
                height: h,
                pixels: dst.into_vec(),
            };
            let class = CLASSES[labels[0] as usize].replace(' ', "_");
            let folder = dir.join(split).join(&class);
            std::fs::create_dir_all(&folder).map_err(|e| Error::io(&folder, e))?;
            let mut out = Vec::new();
            jpeg_encoder::Encoder::new(&mut out, 97)
                .encode(
                    &rgb.pixels,
                    w as u16,
                    h as u16,
                    jpeg_encoder::ColorType::Rgb,
                )
                .map_err(|e| Error::Training(format!("JPEG encoding: {e}")))?;
            let path = folder.join(format!("{i:06}.jpg"));
            std::fs::write(&path, out).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}
