//! `prepare` and `bench-data`: packing a dataset into shards, and timing
//! the loader.

use super::print_json;
use alexnet::data;
use alexnet::data::augment::{Pipeline, Stats};
use alexnet::data::loader::default_workers;
use alexnet::data::shards::{self, Encoding};
use alexnet::error::{Error, Result};
use alexnet::limits::{MAX_SIDE, MAX_WORKERS};
use alexnet::progress::Progress;
use std::path::PathBuf;
use std::sync::Mutex;

#[derive(clap::Args)]
pub struct PrepareArgs {
    /// An ImageNet-style folder (train/<class>/*, val/...).
    src: PathBuf,
    /// The new shard folder.
    #[arg(required_unless_present = "verify")]
    dst: Option<PathBuf>,
    /// `raw` RGB bytes (fastest, about 196 KB per image) or `jpeg` at quality 90 (about 26 KB).
    #[arg(long, value_enum, default_value = "jpeg")]
    encoding: Encoding,
    /// The side of the stored square (the paper's 256).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SIDE)))]
    side: u32,
    /// Images per shard file.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    shard_images: u32,
    /// Check every shard's checksum instead (of the folder given as SRC).
    #[arg(long, conflicts_with = "dst")]
    verify: bool,
}

impl PrepareArgs {
    pub fn run(self) -> Result<()> {
        let Some(dst) = self.dst.filter(|_| !self.verify) else {
            let checked = shards::verify(&self.src)?;
            println!(
                "{}: {checked} shards, every checksum matches",
                self.src.display()
            );
            return Ok(());
        };
        let source = data::open(&self.src)?;
        let total = source.train.len() + source.val.len();
        let progress = Mutex::new(Progress::new("prepare", "images", total, false));
        let side = self.side as usize;
        let done = shards::prepare(
            &source,
            &dst,
            self.encoding,
            side,
            self.shard_images as usize,
            default_workers(),
            &|n| {
                if let Ok(mut p) = progress.lock() {
                    p.set(n);
                }
            },
        )?;
        if let Ok(p) = progress.lock() {
            p.finish();
        }
        for (file, why) in &done.skipped {
            eprintln!("skipped {file}: {why}");
        }
        let dataset = data::open(&dst)?;
        let pipeline = Pipeline::whole_square(side, Stats::imagenet());
        let (_, how) = data::stats::load_or_compute(&dst, dataset.train.as_ref(), &pipeline)?;
        println!(
            "{}: {} images in {:.1} MB ({:.1} KB each), {} skipped; {how}",
            dst.display(),
            done.images,
            done.bytes as f64 / 1e6,
            done.bytes as f64 / 1e3 / done.images.max(1) as f64,
            done.skipped.len()
        );
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct BenchDataArgs {
    /// A dataset: image folders, shards or Fashion-MNIST.
    #[arg(long, required_unless_present_any = ["generate", "synthetic"])]
    data: Option<PathBuf>,
    /// Training images to time.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    images: u32,
    /// Workers for the parallel figure [default: one per core].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_WORKERS)))]
    workers: Option<u32>,
    /// The net's input side.
    #[arg(long, default_value_t = 227, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SIDE)))]
    input: u32,
    /// Instead, write an ImageNet-like JPEG folder (500×375, quality 97) of `--images` images here.
    #[arg(long, value_name = "DIR")]
    generate: Option<PathBuf>,
    /// Instead, time the built-in synthetic set at `--input`.
    #[arg(long, conflicts_with_all = ["data", "generate"])]
    synthetic: bool,
    #[arg(long)]
    json: bool,
}

impl BenchDataArgs {
    pub fn run(self) -> Result<()> {
        let images = self.images as usize;
        if let Some(dir) = self.generate {
            data::bench::generate(&dir, images)?;
            println!(
                "{}: {images} training JPEGs of 500×375 at quality 97",
                dir.display()
            );
            return Ok(());
        }
        if self.synthetic {
            let report = data::bench::synthetic(images, self.input as usize);
            if self.json {
                print_json(&report);
            } else {
                print!("{}", data::bench::render_synthetic(&report));
            }
            return Ok(());
        }
        let Some(path) = self.data else {
            return Err(Error::Input(
                "bench-data: give --data PATH, or --generate DIR".into(),
            ));
        };
        let workers = self.workers.map_or_else(default_workers, |w| w as usize);
        let report = data::bench::run(&path, images, workers, self.input as usize)?;
        if self.json {
            print_json(&report);
        } else {
            print!("{}", data::bench::render(&report));
        }
        Ok(())
    }
}
