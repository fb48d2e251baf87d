//! A built-in synthetic dataset: procedurally drawn shapes and textures at
//! any size, one class each, on random backgrounds with noise. Image `i` is a
//! pure function of the seed and `i`, so any order and any thread give the
//! same pixels. Learnable, but not at a glance: position, scale, colours and
//! noise vary.

use super::input::{Pool, Pooled};
use crate::rng::{Rng, derive};
use std::sync::{Arc, Mutex};

/// The class names, in label order.
pub const CLASSES: [&str; 10] = [
    "disc",
    "square",
    "ring",
    "horizontal stripes",
    "vertical stripes",
    "diagonal stripes",
    "checkerboard",
    "cross",
    "triangle",
    "two dots",
];

/// Which split of the synthetic set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Validation,
}

/// `len` images of `channels × size × size`.
#[derive(Debug, Clone)]
pub struct Synthetic {
    pub channels: usize,
    pub size: usize,
    pub len: usize,
    key: u64,
}

/// Whether shape `class` covers the point (u, v), in units of the shape's radius.
fn covers(class: usize, u: f32, v: f32) -> bool {
    let inside_box = u.abs() < 1.0 && v.abs() < 1.0;
    let even = |x: f32| (x.floor() as i32).rem_euclid(2) == 0;
    let radius = (u * u + v * v).sqrt();
    match class {
        0 => radius < 1.0,
        1 => u.abs().max(v.abs()) < 0.8,
        2 => (0.6..1.0).contains(&radius),
        3 => inside_box && even(v * 3.0),
        4 => inside_box && even(u * 3.0),
        5 => inside_box && even((u + v) * 2.5),
        6 => inside_box && even(u * 2.0) == even(v * 2.0),
        7 => (u.abs() < 0.3 || v.abs() < 0.3) && inside_box,
        8 => v > -0.8 && v < 0.8 && u.abs() < (v + 0.8) * 0.6,
        _ => (u - 0.5).powi(2) + v * v < 0.16 || (u + 0.5).powi(2) + v * v < 0.16,
    }
}

impl Synthetic {
    /// A split of `len` images for the stream `seed`.
    pub fn new(seed: u64, split: Split, len: usize, channels: usize, size: usize) -> Self {
        Synthetic {
            channels,
            size,
            len,
            key: derive(seed, split as u64 + 1),
        }
    }

    /// Elements per image.
    pub fn image_len(&self) -> usize {
        self.channels * self.size * self.size
    }

    /// Draws image `index` into `out` (CHW, roughly zero-mean) and returns its label.
    pub fn draw(&self, index: usize, out: &mut [f32]) -> u32 {
        let mut rng = Rng::new(derive(self.key, index as u64));
        let class = rng.below(CLASSES.len());
        let size = self.size as f32;
        let radius = size * (0.22 + 0.2 * rng.uniform() as f32);
        let cx = size * (0.3 + 0.4 * rng.uniform() as f32);
        let cy = size * (0.3 + 0.4 * rng.uniform() as f32);
        let angle = (rng.uniform() as f32 - 0.5) * 0.5;
        let (sin, cos) = angle.sin_cos();
        // Foreground and background differ by at least 0.8 in every channel.
        let colours: Vec<(f32, f32)> = (0..self.channels)
            .map(|_| {
                let sign = if rng.uniform() < 0.5 { -1.0 } else { 1.0 };
                let fg = sign * (0.4 + 0.6 * rng.uniform() as f32);
                let bg = -sign * (0.4 + 0.6 * rng.uniform() as f32);
                (fg, bg)
            })
            .collect();
        let plane = self.size * self.size;
        for y in 0..self.size {
            for x in 0..self.size {
                let (dx, dy) = (
                    (x as f32 + 0.5 - cx) / radius,
                    (y as f32 + 0.5 - cy) / radius,
                );
                let (u, v) = (cos * dx + sin * dy, -sin * dx + cos * dy);
                let on = covers(class, u, v);
                for (c, &(fg, bg)) in colours.iter().enumerate() {
                    let noise = 0.2 * (rng.uniform() as f32 - 0.5);
                    out[c * plane + y * self.size + x] = if on { fg } else { bg } * 0.5 + noise;
                }
            }
        }
        class as u32
    }

    /// Draws the images `indices` as one NCHW batch.
    pub fn batch(&self, indices: &[usize]) -> (Vec<f32>, Vec<u32>) {
        let mut images = vec![0.0; indices.len() * self.image_len()];
        let labels = self.batch_into(indices, &mut images);
        (images, labels)
    }

    /// Draws the images `indices` into `images` (NCHW, `indices.len()`
    /// images) on every core, and returns their labels.
    pub fn batch_into(&self, indices: &[usize], images: &mut [f32]) -> Vec<u32> {
        let len = self.image_len();
        let mut labels = vec![0; indices.len()];
        // Drawn on every core (this thread too), an image at a time so that
        // no core idles at the end: each image is a pure function of its index.
        let threads = super::loader::default_workers().min(indices.len()).max(1);
        let work = Mutex::new(
            indices
                .iter()
                .zip(images.chunks_exact_mut(len))
                .zip(labels.iter_mut()),
        );
        let draw = || {
            while let Some(((&i, out), label)) = work.lock().ok().and_then(|mut w| w.next()) {
                *label = self.draw(i, out);
            }
        };
        std::thread::scope(|scope| {
            for _ in 1..threads {
                scope.spawn(draw);
            }
            draw();
        });
        labels
    }

    /// Draws the images `indices` into a buffer of `pool`.
    pub fn pooled_batch(
        &self,
        indices: &[usize],
        pool: &Arc<Pool<f32>>,
    ) -> (Pooled<f32>, Vec<u32>) {
        let mut images = pool.take();
        images.resize(indices.len() * self.image_len(), 0.0);
        let labels = self.batch_into(indices, &mut images);
        (pool.wrap(images), labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_a_function_of_seed_and_index() {
        let set = Synthetic::new(5, Split::Train, 100, 3, 32);
        let (a, la) = set.batch(&[3, 7]);
        let (b, lb) = set.batch(&[3, 7]);
        assert_eq!((a.clone(), la.clone()), (b, lb));
        let (c, _) = set.batch(&[7, 3]);
        assert_eq!(&a[..set.image_len()], &c[set.image_len()..]);
        assert_eq!(la[0], set.batch(&[3]).1[0]);
        let other = Synthetic::new(5, Split::Validation, 100, 3, 32);
        assert_ne!(other.batch(&[3]).0, set.batch(&[3]).0);
    }

    #[test]
    fn pooled_batches_reuse_their_buffers_and_draw_the_same_images() {
        let set = Synthetic::new(2, Split::Train, 50, 3, 16);
        let pool = Pool::new(1);
        for indices in [vec![4, 9, 1], vec![30, 2], vec![7, 8, 11, 12]] {
            let (images, labels) = set.pooled_batch(&indices, &pool);
            assert_eq!((images.to_vec(), labels), set.batch(&indices));
        }
        assert_eq!(pool.take().len(), 4 * set.image_len());
    }

    #[test]
    fn every_class_appears_and_draws_differ() {
        let set = Synthetic::new(1, Split::Train, 1000, 3, 24);
        let mut seen = [0usize; CLASSES.len()];
        for label in set.batch(&(0..1000).collect::<Vec<_>>()).1 {
            seen[label as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 60), "{seen:?}");
        let (images, _) = set.batch(&[0, 1]);
        let (first, second) = images.split_at(set.image_len());
        assert_ne!(first, second);
        assert!(images.iter().all(|v| v.abs() <= 0.61));
    }
}
