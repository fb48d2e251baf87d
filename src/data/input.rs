//! A batch of net inputs as the host hands it to the towers. Images from disk
//! travel as u8 crops (a quarter of the bytes of f32); the device turns them
//! into the net's input with [`crate::device::Device::input_from_u8`], whose
//! CPU form is [`u8_to_f32`].

use std::sync::{Arc, Mutex};

/// Channels of a u8 crop (RGB).
pub const CHANNELS: usize = 3;

/// Batch buffers handed back for reuse: a batch is megabytes (tens for
/// the synthetic set's f32), and a freshly allocated buffer costs a page
/// fault (and the kernel's zeroing) for every 4 KiB written into it, more
/// than cropping into it.
#[derive(Debug)]
pub struct Pool<T> {
    free: Mutex<Vec<Vec<T>>>,
    /// Buffers kept at most; more are freed.
    keep: usize,
}

impl<T> Pool<T> {
    /// A pool that keeps at most `keep` buffers.
    pub fn new(keep: usize) -> Arc<Pool<T>> {
        Arc::new(Pool {
            free: Mutex::new(Vec::new()),
            keep,
        })
    }

    /// A buffer handed back earlier (with its old contents and length), or
    /// a new empty one.
    pub fn take(&self) -> Vec<T> {
        self.free
            .lock()
            .ok()
            .and_then(|mut free| free.pop())
            .unwrap_or_default()
    }

    /// `items` as a batch's buffer, handed back to this pool when dropped.
    pub fn wrap(self: &Arc<Self>, items: Vec<T>) -> Pooled<T> {
        Pooled {
            items,
            pool: Some(Arc::clone(self)),
        }
    }

    fn give(&self, items: Vec<T>) {
        if let Ok(mut free) = self.free.lock()
            && free.len() < self.keep
        {
            free.push(items);
        }
    }
}

/// A batch's buffer, which goes back to its [`Pool`] when dropped.
pub struct Pooled<T> {
    items: Vec<T>,
    pool: Option<Arc<Pool<T>>>,
}

/// A batch's u8 crops.
pub type Pixels = Pooled<u8>;

impl<T> std::ops::Deref for Pooled<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.items
    }
}

impl<T> From<Vec<T>> for Pooled<T> {
    /// Items of no pool, freed when dropped.
    fn from(items: Vec<T>) -> Pooled<T> {
        Pooled { items, pool: None }
    }
}

impl<T: Clone> Clone for Pooled<T> {
    /// A copy of no pool.
    fn clone(&self) -> Pooled<T> {
        self.items.clone().into()
    }
}

impl<T: PartialEq> PartialEq for Pooled<T> {
    fn eq(&self, other: &Pooled<T>) -> bool {
        self.items == other.items
    }
}

impl<T> std::fmt::Debug for Pooled<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pooled({} items)", self.items.len())
    }
}

impl<T> Drop for Pooled<T> {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.give(std::mem::take(&mut self.items));
        }
    }
}

/// Whether `pixels` and `offsets` describe whole images of `len` elements
/// each (three offsets per image), for a buffer of `len` elements.
pub fn check_u8(pixels: &[u8], offsets: &[f32], len: usize) -> Result<(), String> {
    let images = offsets.len() / CHANNELS;
    if pixels.len() != len
        || !offsets.len().is_multiple_of(CHANNELS)
        || images == 0
        || !len.is_multiple_of(images * CHANNELS)
    {
        return Err(format!(
            "{} u8 pixels and {} offsets for an input of {len} elements",
            pixels.len(),
            offsets.len()
        ));
    }
    Ok(())
}

/// The net's input for one batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Images {
    /// Ready as they are: f32 NCHW, image after image.
    F32(Pooled<f32>),
    /// Crops of `side × side` RGB pixels, rows top to bottom, pixels
    /// interleaved (HWC), image after image; and per image and channel the
    /// offset added after scaling to [0, 1]: the PCA lighting shift (§4.1)
    /// minus the channel's mean.
    U8 { pixels: Pixels, offsets: Vec<f32> },
}

impl Images {
    /// The f32 NCHW input, converted on this thread when the batch is u8.
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Images::F32(v) => v.to_vec(),
            Images::U8 { pixels, offsets } => {
                let mut out = vec![0.0; pixels.len()];
                u8_to_f32(pixels, offsets, &mut out);
                out
            }
        }
    }

    /// Elements of the f32 input.
    pub fn len(&self) -> usize {
        match self {
            Images::F32(v) => v.len(),
            Images::U8 { pixels, .. } => pixels.len(),
        }
    }

    /// Whether the batch holds no image.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Vec<f32>> for Images {
    fn from(v: Vec<f32>) -> Images {
        Images::F32(v.into())
    }
}

/// `out[n][c][p] = pixels[n][p][c] · (1/255) + offsets[n][c]`: HWC u8 crops
/// to CHW f32 net input (the device op's CPU form). `offsets` holds three
/// values per image; `pixels` and `out` the same number of elements.
pub fn u8_to_f32(pixels: &[u8], offsets: &[f32], out: &mut [f32]) {
    u8_to_net(pixels, offsets, out, |v| v);
}

/// [`u8_to_f32`] with each f32 result stored through `of`, in one pass.
pub fn u8_to_net<T>(pixels: &[u8], offsets: &[f32], out: &mut [T], of: impl Fn(f32) -> T) {
    let images = offsets.len() / CHANNELS;
    if images == 0 {
        return;
    }
    let image = pixels.len() / images;
    let plane = image / CHANNELS;
    let scale = 1.0f32 / 255.0;
    for ((src, off), dst) in pixels
        .chunks_exact(image)
        .zip(offsets.chunks_exact(CHANNELS))
        .zip(out.chunks_exact_mut(image))
    {
        let (r, rest) = dst.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (p, px) in src.chunks_exact(CHANNELS).enumerate() {
            r[p] = of(f32::from(px[0]) * scale + off[0]);
            g[p] = of(f32::from(px[1]) * scale + off[1]);
            b[p] = of(f32::from(px[2]) * scale + off[2]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hwc_bytes_become_chw_floats_with_each_images_offsets() {
        // Two 2×1 images; an independent f64 reference per element.
        let pixels: Vec<u8> = (0..12).map(|i| (i * 21) as u8).collect();
        let offsets = [-0.5f32, 0.25, 0.0, 0.1, -0.2, 0.3];
        let mut out = vec![0.0; 12];
        u8_to_f32(&pixels, &offsets, &mut out);
        for n in 0..2 {
            for c in 0..3 {
                for p in 0..2 {
                    let byte = f64::from(pixels[n * 6 + p * 3 + c]);
                    let want = byte / 255.0 + f64::from(offsets[n * 3 + c]);
                    let got = f64::from(out[n * 6 + c * 2 + p]);
                    assert!((got - want).abs() < 1e-6, "[{n}][{c}][{p}] {got} {want}");
                }
            }
        }
        assert_eq!(
            Images::U8 {
                pixels: pixels.into(),
                offsets: offsets.to_vec()
            }
            .to_f32(),
            out
        );
    }

    #[test]
    fn dropped_pixels_go_back_to_their_pool_up_to_its_size() {
        let pool = Pool::<u8>::new(1);
        let first = pool.wrap(vec![1, 2, 3]);
        let second = pool.wrap(vec![4; 5]);
        assert!(pool.take().is_empty());
        let copy = first.clone();
        drop(copy);
        assert!(pool.take().is_empty(), "a clone belongs to no pool");
        drop(first);
        drop(second);
        assert_eq!(pool.take(), [1, 2, 3]);
        assert!(pool.take().is_empty(), "the pool keeps one buffer");
    }
}
