//! A dataset's colour statistics for mean subtraction and PCA lighting
//! (§4.1): the per-channel mean and the eigen-decomposition of the RGB
//! covariance, over the pixels of a sample of training images as the net
//! sees them (resized and centre-cropped). Computed on first use and cached
//! with the dataset (`alexnet-stats.json` in its folder, or in the user's
//! cache folder when the dataset's is read-only).

use super::augment::{Pipeline, Stats};
use super::image_set::ImageSet;
use crate::error::{Error, Result};
use fast_image_resize::Resizer;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Images sampled, evenly spaced over the training set.
pub const SAMPLE: usize = 2000;

#[derive(Serialize, Deserialize)]
struct Cached {
    base: usize,
    sample: usize,
    images: usize,
    stats: Stats,
}

/// Eigenvalues (descending) and eigenvectors (columns) of a symmetric 3×3
/// matrix, by Jacobi rotations.
pub fn eigen3(m: [[f64; 3]; 3]) -> ([f64; 3], [[f64; 3]; 3]) {
    let mut a = m;
    let mut v = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    for _ in 0..64 {
        let off = a[0][1].abs() + a[0][2].abs() + a[1][2].abs();
        if off < 1e-15 {
            break;
        }
        for (p, q) in [(0, 1), (0, 2), (1, 2)] {
            if a[p][q].abs() < 1e-300 {
                continue;
            }
            let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
            let sign = if theta >= 0.0 { 1.0 } else { -1.0 };
            let t = sign / (theta.abs() + (theta * theta + 1.0).sqrt());
            let c = 1.0 / (t * t + 1.0).sqrt();
            let s = t * c;
            for row in &mut a {
                let (akp, akq) = (row[p], row[q]);
                row[p] = c * akp - s * akq;
                row[q] = s * akp + c * akq;
            }
            let (row_p, row_q) = (a[p], a[q]);
            for (k, (apk, aqk)) in row_p.into_iter().zip(row_q).enumerate() {
                a[p][k] = c * apk - s * aqk;
                a[q][k] = s * apk + c * aqk;
            }
            for row in &mut v {
                let (vp, vq) = (row[p], row[q]);
                row[p] = c * vp - s * vq;
                row[q] = s * vp + c * vq;
            }
        }
    }
    let mut order = [0, 1, 2];
    order.sort_by(|&i, &j| a[j][j].total_cmp(&a[i][i]));
    let values = order.map(|i| a[i][i]);
    let vectors = std::array::from_fn(|r| order.map(|i| v[r][i]));
    (values, vectors)
}

/// Sums over pixels of one share of the sample, in integers (exact, so the
/// result does not depend on how the sample is shared out).
#[derive(Default)]
struct Sums {
    sum: [u64; 3],
    outer: [[u64; 3]; 3],
    pixels: u64,
    used: usize,
}

/// Mean and covariance of the sampled images' pixels, scaled to [0, 1],
/// the sample shared out over one thread per core.
pub fn compute(set: &dyn ImageSet, pipeline: &Pipeline) -> Result<(Stats, usize)> {
    let count = SAMPLE.min(set.len());
    let threads = super::loader::default_workers().min(count).max(1);
    let shares: Vec<Sums> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut resizer = Resizer::new();
                    let mut s = Sums::default();
                    for k in (t..count).step_by(threads) {
                        let i = k * set.len() / count;
                        let Ok(image) = set.load_at_least(i, pipeline.base) else {
                            continue;
                        };
                        let Ok(square) = pipeline.square(image, &mut resizer) else {
                            continue;
                        };
                        s.used += 1;
                        for p in square.pixels.chunks_exact(3) {
                            let x = [0, 1, 2].map(|c| u64::from(p[c]));
                            for a in 0..3 {
                                s.sum[a] += x[a];
                                for b in 0..3 {
                                    s.outer[a][b] += x[a] * x[b];
                                }
                            }
                            s.pixels += 1;
                        }
                    }
                    s
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a statistics thread"))
            .collect()
    });
    let mut all = Sums::default();
    for s in shares {
        for a in 0..3 {
            all.sum[a] += s.sum[a];
            for b in 0..3 {
                all.outer[a][b] += s.outer[a][b];
            }
        }
        all.pixels += s.pixels;
        all.used += s.used;
    }
    let (used, pixels) = (all.used, all.pixels);
    if used == 0 {
        return Err(Error::Training(
            "no training image could be read to compute the colour statistics".into(),
        ));
    }
    let sum = all.sum.map(|v| v as f64 / 255.0);
    let outer = all.outer.map(|row| row.map(|v| v as f64 / (255.0 * 255.0)));
    let n = pixels as f64;
    let mean = sum.map(|s| s / n);
    let cov: [[f64; 3]; 3] =
        std::array::from_fn(|a| std::array::from_fn(|b| outer[a][b] / n - mean[a] * mean[b]));
    let (values, vectors) = eigen3(cov);
    Ok((
        Stats {
            mean: mean.map(|m| m as f32),
            eigenvalues: values.map(|v| v.max(0.0) as f32),
            eigenvectors: vectors.map(|row| row.map(|v| v as f32)),
        },
        used,
    ))
}

fn cache_paths(root: &Path) -> [PathBuf; 2] {
    let key = crate::rng::derive_str(0, &root.display().to_string());
    let home = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    [
        root.join("alexnet-stats.json"),
        home.join("alexnet").join(format!("stats-{key:016x}.json")),
    ]
}

/// The dataset's statistics at `pipeline.base`: from its cache, or computed
/// and cached. Returns them and a line saying where they came from.
pub fn load_or_compute(
    root: &Path,
    set: &dyn ImageSet,
    pipeline: &Pipeline,
) -> Result<(Stats, String)> {
    let paths = cache_paths(root);
    for path in &paths {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        let fits = |c: &Cached| c.base == pipeline.base && c.images == set.len();
        if let Some(c) = serde_json::from_str::<Cached>(&text).ok().filter(fits) {
            return Ok((
                c.stats,
                format!("colour statistics from {}", path.display()),
            ));
        }
    }
    let (stats, used) = compute(set, pipeline)?;
    let cached = Cached {
        base: pipeline.base,
        sample: used,
        images: set.len(),
        stats,
    };
    let json = serde_json::to_string_pretty(&cached).expect("statistics serialize");
    for path in &paths {
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(path.with_extension("json.tmp"), &json))
            .and_then(|()| std::fs::rename(path.with_extension("json.tmp"), path));
        if written.is_ok() {
            return Ok((
                stats,
                format!(
                    "colour statistics computed from {used} images, cached in {}",
                    path.display()
                ),
            ));
        }
    }
    Ok((
        stats,
        format!("colour statistics computed from {used} images (no writable cache)"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eigen3_diagonalizes_a_symmetric_matrix() {
        let m = [[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 1.0]];
        let (values, vectors) = eigen3(m);
        assert!(values[0] >= values[1] && values[1] >= values[2]);
        for i in 0..3 {
            // M v = λ v, and |v| = 1.
            let v: Vec<f64> = (0..3).map(|r| vectors[r][i]).collect();
            for r in 0..3 {
                let mv: f64 = (0..3).map(|c| m[r][c] * v[c]).sum();
                assert!(
                    (mv - values[i] * v[r]).abs() < 1e-9,
                    "{i}: {mv} vs {}",
                    values[i] * v[r]
                );
            }
            assert!((v.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-9);
        }
        let trace: f64 = values.iter().sum();
        assert!((trace - 8.0).abs() < 1e-9);
    }

    #[test]
    fn grey_images_have_one_direction_of_colour() {
        struct Grey;
        impl ImageSet for Grey {
            fn len(&self) -> usize {
                10
            }
            fn label(&self, _: usize) -> u32 {
                0
            }
            fn describe(&self, i: usize) -> String {
                format!("grey {i}")
            }
            fn load(
                &self,
                i: usize,
            ) -> std::result::Result<super::super::decode::RgbImage, String> {
                let grey: Vec<u8> = (0..16).map(|p| ((p * 16 + i * 7) % 256) as u8).collect();
                Ok(super::super::decode::RgbImage::from_grey(4, 4, &grey))
            }
        }
        let pipeline = Pipeline::new(4, Stats::imagenet());
        let (stats, used) = compute(&Grey, &pipeline).unwrap();
        assert_eq!(used, 10);
        assert!(stats.mean[0] == stats.mean[1] && stats.mean[1] == stats.mean[2]);
        assert!(stats.eigenvalues[1] < 1e-6 * stats.eigenvalues[0]);
        let third = 1.0 / 3f32.sqrt();
        for c in 0..3 {
            assert!((stats.eigenvectors[c][0].abs() - third).abs() < 1e-4);
        }
    }
}
