//! The prefetching loader: worker threads decode and augment whole batches
//! ahead of the trainer, at most `prefetch` batches ahead, and hand them over
//! in order. Each image's random crop, flip and lighting come from a stream
//! keyed by (seed, epoch, image), so the batches are the same whatever the
//! number of workers. A file that cannot be read or decoded is left out of
//! its batch and reported; with `strict` it stops the run instead.

use super::augment::Pipeline;
use super::decode::{Buffers, Decoded, Region};
use super::image_set::ImageSet;
use super::input::{Images, Pool};
use crate::error::{Error, Result};
use crate::rng::derive;
use fast_image_resize::Resizer;
use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Decoding threads when none are asked for: one per core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// How each image becomes the net's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Random crop, flip and lighting from the streams of `(seed, epoch)`.
    Train { seed: u64, epoch: usize },
    /// The centre crop.
    Centre,
    /// The ten crops, one after another for each image.
    TenCrop,
}

/// One batch, ready for the towers: u8 crops one after another (ten per
/// image in [`Mode::TenCrop`]) with their offsets, their labels, and the
/// files left out.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedBatch {
    pub images: Images,
    pub labels: Vec<u32>,
    /// (file, why) of each image that could not be used.
    pub skipped: Vec<(String, String)>,
}

/// u8 crops per image in `mode`: ten in [`Mode::TenCrop`], else one.
pub fn crops(mode: Mode) -> usize {
    if mode == Mode::TenCrop { 10 } else { 1 }
}

/// A worker's buffers and resizer, kept from one image to the next.
#[derive(Debug, Default)]
pub struct Scratch {
    resizer: Resizer,
    decoded: Buffers,
    square: Vec<u8>,
}

/// Crops image `index` of `set` as `mode` says into `out` (its
/// [`crops`] u8 crops one after another) and returns their offsets. A set
/// that stores the `base` square as it is (raw shards) is cropped straight
/// from its storage; one that stores it as JPEG (JPEG shards) decodes only
/// the rows and columns of a single crop; JPEG files decode only the part
/// of the image that the single crop is resampled from.
pub fn prepare(
    set: &dyn ImageSet,
    pipeline: &Pipeline,
    mode: Mode,
    index: usize,
    scratch: &mut Scratch,
    out: &mut [u8],
) -> std::result::Result<[f32; 3], String> {
    let crop = match mode {
        Mode::Train { seed, epoch } => {
            Some(pipeline.draw(derive(derive(seed, epoch as u64), index as u64)))
        }
        Mode::Centre => Some(pipeline.centre_crop()),
        Mode::TenCrop => None,
    };
    if let Some(crop) = crop {
        let region = Region {
            x: crop.x,
            y: crop.y,
            width: pipeline.input,
            height: pipeline.input,
        };
        if let Some(part) = set.stored_region(index, pipeline.base, region) {
            let Decoded { x, y, image } = part?;
            let holds = x <= region.x
                && y <= region.y
                && x + image.width >= region.x + region.width
                && y + image.height >= region.y + region.height;
            if !holds {
                return Err(format!(
                    "not the {0}×{0} square its shards promise",
                    pipeline.base
                ));
            }
            pipeline.cut(&crop, &image.pixels, (x, y, image.width), out);
            return Ok(crop.offsets);
        }
        let needed = |width, height| pipeline.source_of(width, height, &crop);
        if let Some(canvas) = set.load_within(index, pipeline.base, &needed, &mut scratch.decoded) {
            let canvas = canvas?;
            let Scratch {
                resizer,
                decoded,
                square,
            } = scratch;
            let square = to_square(
                pipeline,
                canvas.width,
                canvas.height,
                &decoded.pixels,
                resizer,
                square,
            )?;
            pipeline.cut(&crop, square, (0, 0, pipeline.base), out);
            return Ok(crop.offsets);
        }
    }
    let Scratch {
        resizer, square, ..
    } = scratch;
    let image;
    let pixels: &[u8] = match set.stored_square(index, pipeline.base) {
        Some(stored) => stored?,
        None => {
            image = set.load_at_least(index, pipeline.base)?;
            to_square(
                pipeline,
                image.width,
                image.height,
                &image.pixels,
                resizer,
                square,
            )?
        }
    };
    Ok(match crop {
        Some(crop) => {
            pipeline.cut(&crop, pixels, (0, 0, pipeline.base), out);
            crop.offsets
        }
        None => pipeline.ten_crops(pixels, out),
    })
}

/// The `base` square of a decoded `width × height` image: the image itself
/// when it is that square, else resized into `square`.
fn to_square<'a>(
    pipeline: &Pipeline,
    width: usize,
    height: usize,
    pixels: &'a [u8],
    resizer: &mut Resizer,
    square: &'a mut Vec<u8>,
) -> std::result::Result<&'a [u8], String> {
    if width == 0 || height == 0 {
        return Err("an empty image".into());
    }
    if width == pipeline.base && height == pipeline.base {
        return Ok(&pixels[..width * height * 3]);
    }
    pipeline.square_into(width, height, pixels, resizer, square)?;
    Ok(square)
}

/// One batch of `indices`, prepared on this thread into a buffer of `pool`.
pub fn load_batch(
    set: &dyn ImageSet,
    pipeline: &Pipeline,
    mode: Mode,
    indices: &[usize],
    scratch: &mut Scratch,
    pool: &Arc<Pool<u8>>,
) -> LoadedBatch {
    let crops = crops(mode);
    let len = crops * pipeline.output_len();
    // A buffer back from an earlier batch keeps its length: no zeroing.
    let mut pixels = pool.take();
    pixels.resize(indices.len() * len, 0);
    let mut offsets = Vec::with_capacity(indices.len() * crops * 3);
    let mut labels = Vec::with_capacity(indices.len());
    let mut skipped = Vec::new();
    for &i in indices {
        let out = &mut pixels[labels.len() * len..][..len];
        match prepare(set, pipeline, mode, i, scratch, out) {
            Ok(offset) => {
                labels.push(set.label(i));
                for _ in 0..crops {
                    offsets.extend_from_slice(&offset);
                }
            }
            Err(why) => skipped.push((set.describe(i), why)),
        }
    }
    pixels.truncate(labels.len() * len);
    LoadedBatch {
        images: Images::U8 {
            pixels: pool.wrap(pixels),
            offsets,
        },
        labels,
        skipped,
    }
}

struct Progress {
    /// The next batch a worker may take.
    next: usize,
    /// Batches the consumer has taken.
    taken: usize,
    stop: bool,
}

struct Shared {
    progress: Mutex<Progress>,
    turn: Condvar,
}

/// Batches ahead of the trainer.
pub type Batches = Box<dyn Iterator<Item = Result<LoadedBatch>>>;

/// `batches` drawn on a thread of their own, at most `depth` ahead of the
/// consumer (for batches that have no loader, the synthetic set's). The
/// thread stops after its current batch once the consumer is gone.
pub fn prefetched(
    batches: impl Iterator<Item = Result<LoadedBatch>> + Send + 'static,
    depth: usize,
) -> Batches {
    let (tx, rx) = std::sync::mpsc::sync_channel(depth.max(1));
    std::thread::spawn(move || {
        for batch in batches {
            if tx.send(batch).is_err() {
                return;
            }
        }
    });
    Box::new(rx.into_iter())
}

/// Batches of a fixed list, prepared ahead on worker threads, in order.
pub struct Loader {
    shared: Arc<Shared>,
    results: Receiver<(usize, LoadedBatch)>,
    waiting: BTreeMap<usize, LoadedBatch>,
    next: usize,
    total: usize,
    strict: bool,
    workers: Vec<JoinHandle<()>>,
}

impl Loader {
    /// Starts `workers` threads preparing `batches` (lists of image indices),
    /// at most `prefetch` batches ahead of the consumer.
    pub fn start(
        set: Arc<dyn ImageSet>,
        pipeline: Arc<Pipeline>,
        mode: Mode,
        batches: Vec<Vec<usize>>,
        workers: usize,
        prefetch: usize,
        strict: bool,
    ) -> Loader {
        let shared = Arc::new(Shared {
            progress: Mutex::new(Progress {
                next: 0,
                taken: 0,
                stop: false,
            }),
            turn: Condvar::new(),
        });
        let (tx, results) = channel();
        let batches = Arc::new(batches);
        let total = batches.len();
        let prefetch = prefetch.max(1);
        // Enough buffers for the batches ahead and those the trainer holds.
        let pool = Pool::new(prefetch + workers + 4);
        let workers = (0..workers.max(1))
            .map(|w| {
                let (set, pipeline, batches, shared, tx): (_, _, _, _, Sender<_>) = (
                    Arc::clone(&set),
                    Arc::clone(&pipeline),
                    Arc::clone(&batches),
                    Arc::clone(&shared),
                    tx.clone(),
                );
                let pool = Arc::clone(&pool);
                std::thread::Builder::new()
                    .name(format!("loader{w}"))
                    .spawn(move || {
                        let mut scratch = Scratch::default();
                        while let Some(b) = take(&shared, batches.len(), prefetch) {
                            let batch = load_batch(
                                set.as_ref(),
                                &pipeline,
                                mode,
                                &batches[b],
                                &mut scratch,
                                &pool,
                            );
                            if tx.send((b, batch)).is_err() {
                                return;
                            }
                        }
                    })
                    .expect("a loader thread starts")
            })
            .collect();
        Loader {
            shared,
            results,
            waiting: BTreeMap::new(),
            next: 0,
            total,
            strict,
            workers,
        }
    }
}

/// The next batch index for a worker, waiting while it would run too far ahead.
fn take(shared: &Shared, total: usize, prefetch: usize) -> Option<usize> {
    let mut p = shared.progress.lock().ok()?;
    loop {
        if p.stop || p.next >= total {
            return None;
        }
        if p.next < p.taken + prefetch {
            p.next += 1;
            return Some(p.next - 1);
        }
        p = shared.turn.wait(p).ok()?;
    }
}

impl Iterator for Loader {
    type Item = Result<LoadedBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.total {
            return None;
        }
        let batch = loop {
            if let Some(batch) = self.waiting.remove(&self.next) {
                break batch;
            }
            match self.results.recv() {
                Ok((b, batch)) => {
                    self.waiting.insert(b, batch);
                }
                Err(_) => {
                    return Some(Err(Error::Training(
                        "the data loader's threads stopped".into(),
                    )));
                }
            }
        };
        self.next += 1;
        if let Ok(mut p) = self.shared.progress.lock() {
            p.taken = self.next;
        }
        self.shared.turn.notify_all();
        if let (true, Some((file, why))) = (self.strict, batch.skipped.first()) {
            return Some(Err(Error::Input(format!(
                "{file}: {why} (--strict stops at unreadable images)"
            ))));
        }
        Some(Ok(batch))
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        if let Ok(mut p) = self.shared.progress.lock() {
            p.stop = true;
        }
        self.shared.turn.notify_all();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::augment::Stats;
    use crate::data::decode::RgbImage;

    /// Images of varied sizes; every seventh cannot be read.
    struct Varied;

    impl ImageSet for Varied {
        fn len(&self) -> usize {
            50
        }
        fn label(&self, i: usize) -> u32 {
            (i % 3) as u32
        }
        fn describe(&self, i: usize) -> String {
            format!("image{i}.jpg")
        }
        fn load(&self, i: usize) -> std::result::Result<RgbImage, String> {
            if i % 7 == 3 {
                return Err("truncated".into());
            }
            let (w, h) = (9 + i % 5, 6 + i % 4);
            Ok(RgbImage {
                width: w,
                height: h,
                pixels: (0..w * h * 3).map(|p| ((p * 31 + i) % 256) as u8).collect(),
            })
        }
    }

    fn run(workers: usize, mode: Mode, strict: bool) -> Vec<Result<LoadedBatch>> {
        let batches: Vec<Vec<usize>> = (0..50)
            .collect::<Vec<_>>()
            .chunks(8)
            .map(<[usize]>::to_vec)
            .collect();
        Loader::start(
            Arc::new(Varied),
            Arc::new(Pipeline::new(5, Stats::imagenet())),
            mode,
            batches,
            workers,
            3,
            strict,
        )
        .collect()
    }

    #[test]
    fn batches_are_the_same_whatever_the_number_of_workers() {
        let mode = Mode::Train { seed: 4, epoch: 2 };
        let one: Vec<LoadedBatch> = run(1, mode, false)
            .into_iter()
            .map(|b| b.unwrap())
            .collect();
        let four: Vec<LoadedBatch> = run(4, mode, false)
            .into_iter()
            .map(|b| b.unwrap())
            .collect();
        assert_eq!(one, four);
        assert_eq!(one.len(), 7);
        // Another epoch draws other crops.
        let other: Vec<LoadedBatch> = run(2, Mode::Train { seed: 4, epoch: 3 }, false)
            .into_iter()
            .map(|b| b.unwrap())
            .collect();
        assert_ne!(one[0].images.to_f32(), other[0].images.to_f32());
        assert_eq!(one[0].labels, other[0].labels);
    }

    #[test]
    fn unreadable_images_are_skipped_and_named_or_stop_a_strict_run() {
        let batches: Vec<LoadedBatch> = run(3, Mode::Centre, false)
            .into_iter()
            .map(|b| b.unwrap())
            .collect();
        let skipped: Vec<String> = batches
            .iter()
            .flat_map(|b| b.skipped.iter().map(|s| s.0.clone()))
            .collect();
        assert_eq!(
            skipped,
            [
                "image3.jpg",
                "image10.jpg",
                "image17.jpg",
                "image24.jpg",
                "image31.jpg",
                "image38.jpg",
                "image45.jpg"
            ]
        );
        let kept: usize = batches.iter().map(|b| b.labels.len()).sum();
        assert_eq!(kept, 43);
        assert_eq!(batches[0].images.len(), 7 * 3 * 25);
        let Images::U8 { offsets, .. } = &batches[0].images else {
            panic!("the loader hands over u8 crops")
        };
        assert_eq!(offsets.len(), 7 * 3);
        let strict = run(3, Mode::TenCrop, true);
        let e = strict[0].as_ref().unwrap_err().to_string();
        assert!(e.starts_with("image3.jpg: truncated"), "{e}");
    }

    /// A JPEG of `width × height`: smooth gradients under sharp-edged colour
    /// blocks (where resampling and chroma upsampling need their neighbours).
    fn photo(width: u16, height: u16, sampling: jpeg_encoder::SamplingFactor) -> Vec<u8> {
        let data: Vec<u8> = (0..height as usize)
            .flat_map(|y| {
                (0..width as usize).flat_map(move |x| {
                    let block = [[250, 10, 10], [10, 240, 20], [20, 20, 250], [0, 0, 0]]
                        [(x / 9 + 3 * (y / 11)) % 4];
                    let smooth = [(x * 255 / width as usize) as u8, (y * 3 % 256) as u8, 128];
                    std::array::from_fn::<u8, 3, _>(|c| block[c] / 2 + smooth[c] / 2)
                })
            })
            .collect();
        let mut out = Vec::new();
        let mut encoder = jpeg_encoder::Encoder::new(&mut out, 92);
        encoder.set_sampling_factor(sampling);
        encoder
            .encode(&data, width, height, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        out
    }

    #[test]
    fn jpeg_files_decode_only_what_the_crop_needs_and_give_the_whole_decodes_crop() {
        use crate::data::decode::decode_at_least;
        use jpeg_encoder::SamplingFactor as S;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Wide, tall and odd sizes in each subsampling; at 1/2 and 1/4 of
        // their size in the DCT domain; enlarged; the square already.
        let sizes = [
            (500, 375, S::R_4_4_4),
            (500, 375, S::R_4_2_0),
            (375, 500, S::R_4_2_2),
            (333, 301, S::R_4_4_4),
            (640, 560, S::R_4_2_0),
            (1100, 1030, S::R_4_2_0),
            (200, 150, S::R_4_2_0),
            (256, 256, S::R_4_2_0),
        ];
        let mut files = Vec::new();
        for (i, &(w, h, sampling)) in sizes.iter().enumerate() {
            let bytes = photo(w, h, sampling);
            let path = root.join(format!("train/c/{i}.jpg"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
            files.push(bytes);
        }
        std::fs::create_dir_all(root.join("val/c")).unwrap();
        std::fs::write(root.join("val/c/v.jpg"), &files[0]).unwrap();
        let set = crate::data::open(root).unwrap().train;
        let mut scratch = Scratch::default();
        let mut resizer = Resizer::new();
        for pipeline in [
            Pipeline::new(227, Stats::imagenet()),
            Pipeline::new(64, Stats::imagenet()),
        ] {
            let (base, len) = (pipeline.base, pipeline.output_len());
            for (i, bytes) in files.iter().enumerate() {
                // The whole decode's square, by the path that decodes everything.
                let whole = pipeline
                    .square(decode_at_least(bytes, base).unwrap(), &mut resizer)
                    .unwrap();
                let modes = (0..30)
                    .map(|seed| Mode::Train { seed, epoch: 0 })
                    .chain([Mode::Centre]);
                for mode in modes {
                    let crop = match mode {
                        Mode::Train { seed, epoch } => {
                            pipeline.draw(derive(derive(seed, epoch as u64), i as u64))
                        }
                        _ => pipeline.centre_crop(),
                    };
                    let mut want = vec![0; len];
                    pipeline.cut(&crop, &whole.pixels, (0, 0, base), &mut want);
                    // What earlier images left in the buffer must not show.
                    scratch.decoded.pixels = vec![0xa5; 5_000_000];
                    let mut got = vec![0; len];
                    let offsets = prepare(set.as_ref(), &pipeline, mode, i, &mut scratch, &mut got);
                    assert_eq!(offsets, Ok(crop.offsets));
                    assert!(
                        got == want,
                        "image {i} {:?}, input {}, {mode:?}",
                        sizes[i],
                        pipeline.input
                    );
                }
            }
        }
        // The paper's crop of a 500×375 image needs about three fifths of it.
        let pipeline = Pipeline::new(227, Stats::imagenet());
        let crop = pipeline.draw(5);
        let needed = |w, h| pipeline.source_of(w, h, &crop);
        let canvas = set.load_within(0, 256, &needed, &mut scratch.decoded);
        let valid = canvas.unwrap().unwrap().valid;
        assert!(valid.width < 360 && valid.height < 360, "{valid:?}");
        // A file cut short is damaged whichever rows its crop needs.
        let cut = &files[0][..files[0].len() * 9 / 10];
        std::fs::write(root.join("train/c/0.jpg"), cut).unwrap();
        for seed in 0..10 {
            let mut out = vec![0; pipeline.output_len()];
            let mode = Mode::Train { seed, epoch: 0 };
            let e = prepare(set.as_ref(), &pipeline, mode, 0, &mut scratch, &mut out).unwrap_err();
            assert!(e.starts_with("JPEG: "), "{e}");
        }
    }
}
