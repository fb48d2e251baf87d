//! `alexnet bench-data`: how fast images become batches, per core, with
//! several workers and with every core of the host, and how many cores of
//! this speed would feed a fast GPU. The u8 path the loader takes: decode
//! (DCT-scaled where the image is at least twice the size needed), shorter
//! side to 256 (or a prepared square read in place), random crop and flip
//! into u8 HWC, and each image's lighting offsets; the device makes the f32
//! input.

use super::augment::{Pipeline, Stats};
use super::decode::RgbImage;
use super::image_set::ImageSet;
use super::input::Pool;
use super::loader::{Loader, Mode, Scratch, default_workers, load_batch};
use super::synthetic::{CLASSES, Split, Synthetic};
use crate::error::{Error, Result};
use fast_image_resize::Resizer;
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// The rate to feed: one fast GPU's appetite for the paper's net.
pub const TARGET: f64 = 20_000.0;

/// Images per timed batch.
const BATCH: usize = 32;

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
    /// The host's cores, and what all of them feed together.
    pub cores: usize,
    pub all_cores_images_per_s: f64,
    pub cores_for_target: f64,
    /// One core's images/s reading and decoding alone; none for raw shards.
    pub decode_images_per_s: Option<f64>,
}

/// Times the u8 path over the first `images` training images of `path`.
pub fn run(path: &Path, images: usize, workers: usize, input: usize) -> Result<DataBench> {
    let dataset = super::open(path)?;
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
    // Warm the page cache and the mapping of shards with one untimed pass,
    // whose time sets how many passes make about a second of one core's
    // work, so that a fast path is timed over enough images.
    let warm = Instant::now();
    let mut scratch = Scratch::default();
    let pool = Pool::new(1);
    for chunk in indices.chunks(BATCH) {
        load_batch(set.as_ref(), &pipeline, mode, chunk, &mut scratch, &pool);
    }
    let passes = (1.0 / warm.elapsed().as_secs_f64().max(1e-6)).ceil() as usize;
    // Images/s with `workers` threads, and the images they could not read.
    let parallel = |workers: usize| -> Result<(f64, usize)> {
        let lists: Vec<Vec<usize>> = (0..passes)
            .flat_map(|_| indices.chunks(BATCH).map(<[usize]>::to_vec))
            .collect();
        let start = Instant::now();
        let loader = Loader::start(
            Arc::clone(&set),
            Arc::clone(&pipeline),
            mode,
            lists,
            workers,
            2 * workers,
            false,
        );
        let mut skipped = 0;
        for batch in loader {
            skipped += std::hint::black_box(batch?).skipped.len();
        }
        Ok((
            (passes * count) as f64 / start.elapsed().as_secs_f64(),
            skipped,
        ))
    };
    // One core as training uses it: one worker of the loader, its batch
    // buffers going round as many as the trainer holds.
    let (single, _) = parallel(1)?;
    let (multi, skipped) = parallel(workers)?;
    // Each image once in each pass: the first pass's count is the set's.
    let skipped = skipped / passes;
    if skipped == count {
        return Err(Error::Input(format!(
            "--data {}: none of the {count} images timed could be read",
            path.display()
        )));
    }
    let decode = decode_alone(set.as_ref(), count, pipeline.base);
    let cores = default_workers();
    let all = if cores == workers {
        multi
    } else {
        parallel(cores)?.0
    };
    Ok(DataBench {
        data: dataset.kind,
        images: count,
        skipped,
        per_core_images_per_s: single,
        workers,
        workers_images_per_s: multi,
        scaling: multi / single,
        cores,
        all_cores_images_per_s: all,
        cores_for_target: TARGET / single,
        decode_images_per_s: decode,
    })
}

/// Images/s of reading and decoding alone (at least `base` on the shorter
/// side, DCT-scaled where that applies) on this thread, over the first
/// `count` images of `set`, for at least half a second: the part of the u8
/// path no change to resizing or cropping can speed up. None for a set
/// cropped in place (raw shards), which decodes nothing.
fn decode_alone(set: &dyn ImageSet, count: usize, base: usize) -> Option<f64> {
    set.stored_square(0, base).is_none().then(|| {
        let start = Instant::now();
        let mut images = 0;
        while images == 0 || start.elapsed().as_secs_f64() < 0.5 {
            for i in 0..count {
                let _ = std::hint::black_box(set.load_at_least(i, base));
            }
            images += count;
        }
        images as f64 / start.elapsed().as_secs_f64()
    })
}

/// The report as text.
pub fn render(b: &DataBench) -> String {
    let decode = b.decode_images_per_s.map_or_else(String::new, |d| {
        format!("decode alone{d:8.0} images/s  (one core: reading and decoding only)\n")
    });
    format!(
        "bench-data: {}, {} images ({} unreadable, left out), u8 path (decode, resize, crop, flip into u8; lighting offsets)\n\
         one core    {:8.0} images/s\n\
         {decode}\
         {} workers   {:8.0} images/s  ({:.2}× one core)\n\
         this host   {:8.0} images/s  (all {} cores)\n\
         to feed {TARGET:.0} images/s: {:.1} cores of one core's speed\n",
        b.data,
        b.images,
        b.skipped,
        b.per_core_images_per_s,
        b.workers,
        b.workers_images_per_s,
        b.scaling,
        b.all_cores_images_per_s,
        b.cores,
        b.cores_for_target
    )
}

/// How fast the built-in synthetic set is drawn at the net's input size.
#[derive(Debug, Clone, Serialize)]
pub struct SyntheticBench {
    pub side: usize,
    pub images: usize,
    /// Drawn one after another on one thread.
    pub per_core_images_per_s: f64,
    /// Drawn as `train` draws them: batches of [`SYNTHETIC_BATCH`] on every core.
    pub cores: usize,
    pub all_cores_images_per_s: f64,
}

/// The batch of the synthetic timing (the paper's 128).
pub const SYNTHETIC_BATCH: usize = 128;

/// Times the synthetic set's first `images` training images at `side × side`.
pub fn synthetic(images: usize, side: usize) -> SyntheticBench {
    let set = Synthetic::new(1, Split::Train, images.max(1), 3, side);
    let mut out = vec![0.0; set.image_len()];
    let count = set.len;
    let start = Instant::now();
    for i in 0..count {
        std::hint::black_box(set.draw(i, &mut out));
    }
    let single = count as f64 / start.elapsed().as_secs_f64();
    let indices: Vec<usize> = (0..count).collect();
    let start = Instant::now();
    // Into buffers going round, as `train` draws them.
    let pool = Pool::new(2);
    for chunk in indices.chunks(SYNTHETIC_BATCH) {
        std::hint::black_box(set.pooled_batch(chunk, &pool));
    }
    SyntheticBench {
        side,
        images: count,
        per_core_images_per_s: single,
        cores: default_workers(),
        all_cores_images_per_s: count as f64 / start.elapsed().as_secs_f64(),
    }
}

/// The synthetic report as text.
pub fn render_synthetic(b: &SyntheticBench) -> String {
    format!(
        "bench-data: the synthetic set at {0}×{0}, {1} images\n\
         one core    {2:8.0} images/s\n\
         this host   {3:8.0} images/s  (all {4} cores, batches of {SYNTHETIC_BATCH} as train draws them)\n",
        b.side, b.images, b.per_core_images_per_s, b.all_cores_images_per_s, b.cores
    )
}

/// Writes an ImageNet-like folder dataset for benchmarks: `images` JPEGs of
/// 500×375 at quality 97 (about the 0.18 megapixels of an average ImageNet
/// image) in `train/<class>/`, and a few in `val/<class>/`, drawn from the
/// synthetic set's ten classes. The folder is made whole or not at all: it
/// is written under a temporary name beside `dir` and renamed at the end;
/// an existing `dir` that holds anything is refused.
pub fn generate(dir: &Path, images: usize) -> Result<()> {
    let taken = std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some());
    if taken || dir.is_file() {
        return Err(Error::Input(format!(
            "--generate {}: already exists; name a new folder",
            dir.display()
        )));
    }
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let written = write_folder(&tmp, images).and_then(|()| {
        // An empty `dir` (made beforehand) is replaced.
        let _ = std::fs::remove_dir(dir);
        std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))
    });
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written
}

/// [`generate`]'s images, into `dir`.
fn write_folder(dir: &Path, images: usize) -> Result<()> {
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
