//! What every labelled image set offers the loader, whatever its format
//! (folders, Fashion-MNIST, shards), and a dataset: class names with a
//! training and a validation set.

use super::decode::{Buffers, Canvas, Decoded, Region, RgbImage};
use std::path::PathBuf;
use std::sync::Arc;

/// A labelled set of images, read one at a time from any thread.
pub trait ImageSet: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The label of image `i`.
    fn label(&self, i: usize) -> u32;
    /// Where image `i` comes from, for messages.
    fn describe(&self, i: usize) -> String;
    /// Image `i`, decoded; an error says why it cannot be.
    fn load(&self, i: usize) -> std::result::Result<RgbImage, String>;
    /// Image `i` decoded at least `side` pixels on its shorter side where
    /// that is cheaper than at full size (JPEG's DCT-domain scaling); smaller
    /// images come at full size.
    fn load_at_least(&self, i: usize, side: usize) -> std::result::Result<RgbImage, String> {
        let _ = side;
        self.load(i)
    }
    /// Image `i` decoded into `buffers.pixels` as [`ImageSet::load_at_least`]
    /// gives it, of which only the part that `needed` asks for (given the
    /// size the image decodes at) need be decoded, where the set can decode
    /// less than the whole image (JPEG files); none where it cannot.
    fn load_within(
        &self,
        i: usize,
        side: usize,
        needed: &dyn Fn(usize, usize) -> Region,
        buffers: &mut Buffers,
    ) -> Option<std::result::Result<Canvas, String>> {
        let _ = (i, side, needed, buffers);
        None
    }
    /// Image `i`'s stored RGB bytes when the set stores it as the `side ×
    /// side` square the net crops from (raw shards), to crop without a copy.
    fn stored_square(&self, i: usize, side: usize) -> Option<std::result::Result<&[u8], String>> {
        let _ = (i, side);
        None
    }
    /// At least `region` of image `i`, when the set stores it compressed as
    /// the `side × side` square the net crops from (JPEG shards), decoding
    /// only the part of it that the region needs.
    fn stored_region(
        &self,
        i: usize,
        side: usize,
        region: Region,
    ) -> Option<std::result::Result<Decoded, String>> {
        let _ = (i, side, region);
        None
    }
}

/// A dataset: class names and its training and validation sets.
pub struct Dataset {
    /// What it is, in words (`folders at PATH`, `Fashion-MNIST at PATH`).
    pub kind: String,
    pub root: PathBuf,
    pub classes: Vec<String>,
    pub train: Arc<dyn ImageSet>,
    pub val: Arc<dyn ImageSet>,
}
