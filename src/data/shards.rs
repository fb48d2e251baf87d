//! Packed shards: a folder dataset converted once (`alexnet prepare`) into
//! large files of pre-resized images (the `base × base` centre square the
//! net crops from: 256×256 for the paper), read back through mmap.
//!
//! Layout of the output folder:
//! - `index.json`: encoding (`raw` RGB bytes, about 196 KB per image at 256,
//!   or `jpeg` re-encoded at quality 90, about 26 KB), side, classes, and per
//!   split its shards with image counts, byte sizes and CRC-32 checksums;
//! - `<split>.index`: 16 bytes per image, little-endian: u64 offset of the
//!   image in its split's shards taken end to end, u32 byte length, u32 label;
//! - `<split>-NNNNN.shard`: the images, end to end.

use super::augment::Pipeline;
use super::decode::{Decoded, Region, RgbImage, decode_at_least, decode_region};
use super::image_set::{Dataset, ImageSet};
use crate::error::{Error, Result};
use fast_image_resize::Resizer;
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// How images are stored in shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// RGB bytes: the fastest to read, about 196 KB per image at 256×256.
    Raw,
    /// JPEG at quality 90: about 26 KB per image at 256×256.
    Jpeg,
}

/// Quality of re-encoded JPEG shards.
pub const JPEG_QUALITY: u8 = 90;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub file: String,
    pub images: usize,
    pub bytes: u64,
    pub crc32: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitInfo {
    pub images: usize,
    pub shards: Vec<ShardInfo>,
}

/// `index.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Index {
    pub format: u32,
    pub encoding: Encoding,
    /// Every image is `side × side`.
    pub side: usize,
    pub classes: Vec<String>,
    pub train: SplitInfo,
    pub val: SplitInfo,
    /// Where the images came from.
    pub source: String,
}

const ENTRY: usize = 16;

/// Whether `path` holds prepared shards.
pub fn is_shards(path: &Path) -> bool {
    path.join("index.json").is_file()
}

/// One split of a shard folder, mapped into memory.
struct ShardSet {
    maps: Vec<Mmap>,
    /// Where each shard starts, in the split's bytes taken end to end.
    starts: Vec<u64>,
    entries: Mmap,
    encoding: Encoding,
    side: usize,
    name: String,
}

impl ShardSet {
    fn open(dir: &Path, split: &str, info: &SplitInfo, index: &Index) -> Result<ShardSet> {
        let map = |path: &Path| -> Result<Mmap> {
            let file = File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: shard files are written once by `prepare` and only read
            // afterwards; a file changed under a running process is outside
            // what this reader promises.
            unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))
        };
        let entries_path = dir.join(format!("{split}.index"));
        let entries = map(&entries_path)?;
        if entries.len() != ENTRY * info.images {
            return Err(Error::File {
                path: entries_path,
                message: format!("{} bytes for {} images", entries.len(), info.images),
            });
        }
        let (mut maps, mut starts, mut at) = (Vec::new(), Vec::new(), 0u64);
        for shard in &info.shards {
            let path = dir.join(&shard.file);
            let m = map(&path)?;
            if m.len() as u64 != shard.bytes {
                return Err(Error::File {
                    path,
                    message: format!(
                        "{} bytes, index.json says {} (truncated?)",
                        m.len(),
                        shard.bytes
                    ),
                });
            }
            starts.push(at);
            at += shard.bytes;
            maps.push(m);
        }
        Ok(ShardSet {
            maps,
            starts,
            entries,
            encoding: index.encoding,
            side: index.side,
            name: dir.join(split).display().to_string(),
        })
    }

    fn entry(&self, i: usize) -> (u64, usize, u32) {
        let e = &self.entries[i * ENTRY..][..ENTRY];
        let word = |r: std::ops::Range<usize>| {
            e[r].iter()
                .rev()
                .fold(0u64, |a, &b| (a << 8) | u64::from(b))
        };
        (word(0..8), word(8..12) as usize, word(12..16) as u32)
    }

    fn bytes(&self, i: usize) -> std::result::Result<&[u8], String> {
        let (offset, len, _) = self.entry(i);
        let shard = self.starts.partition_point(|&s| s <= offset) - 1;
        let local = (offset - self.starts[shard]) as usize;
        self.maps[shard]
            .get(local..local + len)
            .ok_or_else(|| format!("entry {i} lies outside its shard"))
    }
}

impl ImageSet for ShardSet {
    fn len(&self) -> usize {
        self.entries.len() / ENTRY
    }
    fn label(&self, i: usize) -> u32 {
        self.entry(i).2
    }
    fn describe(&self, i: usize) -> String {
        format!("{} image {i}", self.name)
    }
    fn load(&self, i: usize) -> std::result::Result<RgbImage, String> {
        self.load_at_least(i, usize::MAX)
    }
    fn load_at_least(&self, i: usize, side: usize) -> std::result::Result<RgbImage, String> {
        let bytes = self.bytes(i)?;
        match self.encoding {
            Encoding::Raw => {
                if bytes.len() != self.side * self.side * 3 {
                    return Err(format!(
                        "{} bytes for a {1}×{1} image",
                        bytes.len(),
                        self.side
                    ));
                }
                Ok(RgbImage {
                    width: self.side,
                    height: self.side,
                    pixels: bytes.to_vec(),
                })
            }
            Encoding::Jpeg => decode_at_least(bytes, side),
        }
    }
    fn stored_square(&self, i: usize, side: usize) -> Option<std::result::Result<&[u8], String>> {
        if self.encoding != Encoding::Raw || self.side != side {
            return None;
        }
        Some(self.bytes(i).and_then(|bytes| {
            if bytes.len() == side * side * 3 {
                Ok(bytes)
            } else {
                Err(format!("{} bytes for a {side}×{side} image", bytes.len()))
            }
        }))
    }
    fn stored_region(
        &self,
        i: usize,
        side: usize,
        region: Region,
    ) -> Option<std::result::Result<Decoded, String>> {
        if self.encoding != Encoding::Jpeg || self.side != side {
            return None;
        }
        Some(self.bytes(i).and_then(|bytes| decode_region(bytes, region)))
    }
}

/// Opens prepared shards (checksums are checked by `verify`, not here: a
/// training start should not read 250 GB).
pub fn open(dir: &Path) -> Result<Dataset> {
    let path = dir.join("index.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let index: Index = serde_json::from_str(&text).map_err(|e| Error::File {
        path: path.clone(),
        message: e.to_string(),
    })?;
    Ok(Dataset {
        kind: format!("{:?} shards at {}", index.encoding, dir.display()).to_lowercase(),
        root: dir.to_path_buf(),
        classes: index.classes.clone(),
        train: Arc::new(ShardSet::open(dir, "train", &index.train, &index)?),
        val: Arc::new(ShardSet::open(dir, "val", &index.val, &index)?),
    })
}

/// Checks every shard's CRC-32 against `index.json`; names the first bad one.
pub fn verify(dir: &Path) -> Result<usize> {
    let path = dir.join("index.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let index: Index = serde_json::from_str(&text).map_err(|e| Error::File {
        path,
        message: e.to_string(),
    })?;
    let mut checked = 0;
    for shard in index.train.shards.iter().chain(&index.val.shards) {
        let file = dir.join(&shard.file);
        let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
        if crc32fast::hash(&bytes) != shard.crc32 {
            return Err(Error::File {
                path: file,
                message: "checksum differs from index.json: damaged".into(),
            });
        }
        checked += 1;
    }
    Ok(checked)
}

/// What `prepare` did.
pub struct Prepared {
    pub images: usize,
    pub skipped: Vec<(String, String)>,
    pub bytes: u64,
}

/// Converts the folder dataset `source` into shards in `dst`, `side × side`
/// images, `per_shard` to a shard, on `workers` threads; `progress(done)` is
/// called as images are written.
pub fn prepare(
    source: &Dataset,
    dst: &Path,
    encoding: Encoding,
    side: usize,
    per_shard: usize,
    workers: usize,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Prepared> {
    if is_shards(dst) {
        return Err(Error::Input(format!(
            "{}: already holds shards; choose another folder",
            dst.display()
        )));
    }
    std::fs::create_dir_all(dst).map_err(|e| Error::io(dst, e))?;
    // The square the net crops from: a pipeline whose base is `side`.
    let pipeline = Pipeline::whole_square(side, super::augment::Stats::imagenet());
    let mut done = 0;
    let mut prepared = Prepared {
        images: 0,
        skipped: Vec::new(),
        bytes: 0,
    };
    let mut splits = Vec::new();
    for (split, set) in [("train", &source.train), ("val", &source.val)] {
        let mut info = SplitInfo {
            images: 0,
            shards: Vec::new(),
        };
        let mut entries = Vec::with_capacity(set.len() * ENTRY);
        let mut offset = 0u64;
        let indices: Vec<usize> = (0..set.len()).collect();
        for (s, chunk) in indices.chunks(per_shard).enumerate() {
            let encoded = encode_in_parallel(set.as_ref(), &pipeline, encoding, chunk, workers);
            let file = format!("{split}-{s:05}.shard");
            let path = dst.join(&file);
            let mut out =
                std::io::BufWriter::new(File::create(&path).map_err(|e| Error::io(&path, e))?);
            let (mut crc, mut bytes, mut images) = (crc32fast::Hasher::new(), 0u64, 0);
            for (&i, result) in chunk.iter().zip(encoded) {
                match result {
                    Ok(data) => {
                        out.write_all(&data).map_err(|e| Error::io(&path, e))?;
                        crc.update(&data);
                        entries.extend_from_slice(&offset.to_le_bytes());
                        entries.extend_from_slice(&(data.len() as u32).to_le_bytes());
                        entries.extend_from_slice(&set.label(i).to_le_bytes());
                        offset += data.len() as u64;
                        bytes += data.len() as u64;
                        images += 1;
                    }
                    Err(skip) => prepared.skipped.push(skip),
                }
            }
            out.into_inner()
                .map_err(|e| Error::io(&path, e.into_error()))?
                .sync_all()
                .map_err(|e| Error::io(&path, e))?;
            info.shards.push(ShardInfo {
                file,
                images,
                bytes,
                crc32: crc.finalize(),
            });
            info.images += images;
            prepared.bytes += bytes;
            done += chunk.len();
            progress(done);
        }
        let entries_path = dst.join(format!("{split}.index"));
        std::fs::write(&entries_path, entries).map_err(|e| Error::io(&entries_path, e))?;
        prepared.images += info.images;
        splits.push(info);
    }
    let val = splits.pop().expect("two splits");
    let train = splits.pop().expect("two splits");
    let index = Index {
        format: 1,
        encoding,
        side,
        classes: source.classes.clone(),
        train,
        val,
        source: source.kind.clone(),
    };
    // index.json last: a folder without it is not (yet) a shard set.
    let json = serde_json::to_string_pretty(&index).expect("the index serializes");
    let tmp = dst.join("index.json.tmp");
    std::fs::write(&tmp, json).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, dst.join("index.json"))
        .map_err(|e| Error::io(dst.join("index.json"), e))?;
    Ok(prepared)
}

/// The images `chunk` of `set`, encoded on `workers` threads, in order;
/// an image that cannot be read comes back as (its name, why).
fn encode_in_parallel(
    set: &dyn ImageSet,
    pipeline: &Pipeline,
    encoding: Encoding,
    chunk: &[usize],
    workers: usize,
) -> Vec<std::result::Result<Vec<u8>, (String, String)>> {
    std::thread::scope(|scope| {
        let per = chunk.len().div_ceil(workers.max(1));
        let handles: Vec<_> = chunk
            .chunks(per.max(1))
            .map(|part| {
                scope.spawn(move || {
                    let mut resizer = Resizer::new();
                    part.iter()
                        .map(|&i| {
                            encode(set, pipeline, encoding, i, &mut resizer)
                                .map_err(|why| (set.describe(i), why))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("an encoder thread"))
            .collect()
    })
}

fn encode(
    set: &dyn ImageSet,
    pipeline: &Pipeline,
    encoding: Encoding,
    i: usize,
    resizer: &mut Resizer,
) -> std::result::Result<Vec<u8>, String> {
    let square = pipeline.square(set.load(i)?, resizer)?;
    match encoding {
        Encoding::Raw => Ok(square.pixels),
        Encoding::Jpeg => {
            let mut out = Vec::new();
            let side = u16::try_from(square.width).map_err(|_| "too large for JPEG".to_string())?;
            let mut encoder = jpeg_encoder::Encoder::new(&mut out, JPEG_QUALITY);
            // Chroma at half resolution, as in nearly every photograph's JPEG
            // (the encoder's default at quality 90 keeps it whole, which
            // costs a third more to decode).
            encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_0);
            // Huffman tables fitted to each image: the same pixels in 6 %
            // fewer bytes, so 4–5 % faster to decode, every epoch, for a
            // second pass over each image once, here.
            encoder.set_optimized_huffman_tables(true);
            encoder
                .encode(&square.pixels, side, side, jpeg_encoder::ColorType::Rgb)
                .map_err(|e| format!("JPEG encoding: {e}"))?;
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::decode::tests::jpeg;

    fn folder(root: &Path) -> Dataset {
        for (c, class) in ["a", "b"].iter().enumerate() {
            for i in 0..5 {
                let path = root.join(format!("train/{class}/{i}.jpg"));
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(
                    path,
                    jpeg(40 + i as u16, 30 + c as u16, jpeg_encoder::ColorType::Rgb),
                )
                .unwrap();
            }
            let path = root.join(format!("val/{class}/v.jpg"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, jpeg(33, 33, jpeg_encoder::ColorType::Rgb)).unwrap();
        }
        std::fs::write(root.join("train/a/broken.jpg"), b"\xff\xd8 not really").unwrap();
        crate::data::open(root).unwrap()
    }

    /// A set read only through `load`, never in place.
    struct ThroughLoad<'a>(&'a dyn ImageSet);

    impl ImageSet for ThroughLoad<'_> {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn label(&self, i: usize) -> u32 {
            self.0.label(i)
        }
        fn describe(&self, i: usize) -> String {
            self.0.describe(i)
        }
        fn load(&self, i: usize) -> std::result::Result<RgbImage, String> {
            self.0.load(i)
        }
    }

    #[test]
    fn raw_shards_hold_exactly_the_squares_and_their_labels() {
        let dir = tempfile::tempdir().unwrap();
        let source = folder(&dir.path().join("src"));
        let dst = dir.path().join("raw");
        let prepared = prepare(&source, &dst, Encoding::Raw, 16, 4, 2, &|_| {}).unwrap();
        assert_eq!(prepared.images, 12);
        assert_eq!(prepared.skipped.len(), 1);
        assert_eq!(verify(&dst).unwrap(), 4);
        let shards = open(&dst).unwrap();
        assert_eq!((shards.train.len(), shards.val.len()), (10, 2));
        let pipeline = Pipeline {
            input: 16,
            base: 16,
            stats: crate::data::augment::Stats::imagenet(),
        };
        let mut resizer = Resizer::new();
        // Image k of the shards is the k-th readable source image, squared.
        let readable: Vec<usize> = (0..source.train.len())
            .filter(|&i| source.train.load(i).is_ok())
            .collect();
        for (k, &i) in readable.iter().enumerate() {
            let want = pipeline
                .square(source.train.load(i).unwrap(), &mut resizer)
                .unwrap();
            assert_eq!(shards.train.load(k).unwrap(), want, "image {k}");
            assert_eq!(shards.train.label(k), source.train.label(i));
        }
        // The loader crops raw shards in place: the same crops and offsets
        // as from the squares taken through `load`.
        let pipeline = Pipeline::new(14, crate::data::augment::Stats::imagenet());
        assert_eq!(pipeline.base, 16);
        assert!(shards.train.stored_square(0, 16).is_some());
        let all: Vec<usize> = (0..shards.train.len()).collect();
        let mode = crate::data::loader::Mode::Train { seed: 3, epoch: 1 };
        let in_place = crate::data::loader::load_batch(
            shards.train.as_ref(),
            &pipeline,
            mode,
            &all,
            &mut crate::data::loader::Scratch::default(),
            &crate::data::input::Pool::new(1),
        );
        let loaded = crate::data::loader::load_batch(
            &ThroughLoad(shards.train.as_ref()),
            &pipeline,
            mode,
            &all,
            &mut crate::data::loader::Scratch::default(),
            &crate::data::input::Pool::new(1),
        );
        assert_eq!(in_place, loaded);
        assert_eq!(in_place.labels.len(), 10);
        // Damage is caught by the checksums.
        let shard = dst.join("train-00001.shard");
        let mut bytes = std::fs::read(&shard).unwrap();
        bytes[5] ^= 1;
        std::fs::write(&shard, bytes).unwrap();
        assert!(
            verify(&dst)
                .unwrap_err()
                .to_string()
                .contains("train-00001.shard")
        );
        // A prepared folder is not overwritten.
        assert!(prepare(&source, &dst, Encoding::Raw, 16, 4, 2, &|_| {}).is_err());
    }

    #[test]
    fn jpeg_shards_decode_close_to_the_squares() {
        let dir = tempfile::tempdir().unwrap();
        let source = folder(&dir.path().join("src"));
        let dst = dir.path().join("jpeg");
        prepare(&source, &dst, Encoding::Jpeg, 24, 100, 1, &|_| {}).unwrap();
        let shards = open(&dst).unwrap();
        let image = shards.val.load(1).unwrap();
        assert_eq!((image.width, image.height), (24, 24));
        let pipeline = Pipeline {
            input: 24,
            base: 24,
            stats: crate::data::augment::Stats::imagenet(),
        };
        let want = pipeline
            .square(source.val.load(1).unwrap(), &mut Resizer::new())
            .unwrap();
        let err = image
            .pixels
            .iter()
            .zip(&want.pixels)
            .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
            .sum::<i32>() as f64
            / want.pixels.len() as f64;
        assert!(err < 12.0, "mean absolute error {err} after JPEG q90");
    }
}
