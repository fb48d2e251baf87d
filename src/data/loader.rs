//! The prefetching loader: worker threads decode and augment whole batches
//! ahead of the trainer, at most `prefetch` batches ahead, and hand them over
//! in order. Each image's random crop, flip and lighting come from a stream
//! keyed by (seed, epoch, image), so the batches are the same whatever the
//! number of workers. A file that cannot be read or decoded is left out of
//! its batch and reported; with `strict` it stops the run instead.

use super::augment::Pipeline;
use super::sets::ImageSet;
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

/// One batch, ready for the towers: images CHW one after another (ten per
/// image in [`Mode::TenCrop`]), their labels, and the files left out.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedBatch {
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
    /// (file, why) of each image that could not be used.
    pub skipped: Vec<(String, String)>,
}

/// Turns image `index` of `set` into the net's input, appending to `out`.
pub fn prepare(
    set: &dyn ImageSet,
    pipeline: &Pipeline,
    mode: Mode,
    index: usize,
    resizer: &mut Resizer,
    out: &mut Vec<f32>,
) -> std::result::Result<(), String> {
    let image = set.load(index)?;
    if image.width == 0 || image.height == 0 {
        return Err("an empty image".into());
    }
    let square = pipeline.square(image, resizer)?;
    let len = pipeline.output_len();
    let start = out.len();
    match mode {
        Mode::Train { seed, epoch } => {
            out.resize(start + len, 0.0);
            let key = derive(derive(seed, epoch as u64), index as u64);
            pipeline.train(&square, key, &mut out[start..]);
        }
        Mode::Centre => {
            out.resize(start + len, 0.0);
            pipeline.centre(&square, &mut out[start..]);
        }
        Mode::TenCrop => {
            out.resize(start + 10 * len, 0.0);
            pipeline.ten_crops(&square, &mut out[start..]);
        }
    }
    Ok(())
}

/// One batch of `indices`, prepared on this thread.
pub fn load_batch(
    set: &dyn ImageSet,
    pipeline: &Pipeline,
    mode: Mode,
    indices: &[usize],
    resizer: &mut Resizer,
) -> LoadedBatch {
    let mut batch = LoadedBatch {
        images: Vec::with_capacity(indices.len() * pipeline.output_len()),
        labels: Vec::with_capacity(indices.len()),
        skipped: Vec::new(),
    };
    for &i in indices {
        match prepare(set, pipeline, mode, i, resizer, &mut batch.images) {
            Ok(()) => batch.labels.push(set.label(i)),
            Err(why) => batch.skipped.push((set.describe(i), why)),
        }
    }
    batch
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
        let workers = (0..workers.max(1))
            .map(|w| {
                let (set, pipeline, batches, shared, tx): (_, _, _, _, Sender<_>) = (
                    Arc::clone(&set),
                    Arc::clone(&pipeline),
                    Arc::clone(&batches),
                    Arc::clone(&shared),
                    tx.clone(),
                );
                std::thread::Builder::new()
                    .name(format!("loader{w}"))
                    .spawn(move || {
                        let mut resizer = Resizer::new();
                        while let Some(b) = take(&shared, batches.len(), prefetch) {
                            let batch = load_batch(
                                set.as_ref(),
                                &pipeline,
                                mode,
                                &batches[b],
                                &mut resizer,
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
        assert_ne!(one[0].images, other[0].images);
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
        let strict = run(3, Mode::TenCrop, true);
        let e = strict[0].as_ref().unwrap_err().to_string();
        assert!(e.starts_with("image3.jpg: truncated"), "{e}");
    }
}
