//! Labelled image sets on disk: ImageNet-style folders and Fashion-MNIST's
//! IDX files.

use super::decode::{Buffers, Canvas, Region, RgbImage, decode_at_least, decode_within};
use super::image_set::{Dataset, ImageSet};
use crate::error::{Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A file `name` or `name.gz` in `dir`.
pub(super) fn find_idx(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(format!("{name}.gz"))]
        .into_iter()
        .find(|p| p.is_file())
}

// ---- ImageNet-style folders -------------------------------------------------

const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// Files in a folder tree: (path, label).
struct FileSet {
    files: Vec<(PathBuf, u32)>,
}

impl ImageSet for FileSet {
    fn len(&self) -> usize {
        self.files.len()
    }
    fn label(&self, i: usize) -> u32 {
        self.files[i].1
    }
    fn describe(&self, i: usize) -> String {
        self.files[i].0.display().to_string()
    }
    fn load(&self, i: usize) -> std::result::Result<RgbImage, String> {
        self.load_at_least(i, usize::MAX)
    }
    fn load_at_least(&self, i: usize, side: usize) -> std::result::Result<RgbImage, String> {
        let bytes = std::fs::read(&self.files[i].0).map_err(|e| e.to_string())?;
        decode_at_least(&bytes, side)
    }
    fn load_within(
        &self,
        i: usize,
        side: usize,
        needed: &dyn Fn(usize, usize) -> Region,
        buffers: &mut Buffers,
    ) -> Option<std::result::Result<Canvas, String>> {
        let Buffers { file, pixels } = buffers;
        file.clear();
        let read = std::fs::File::open(&self.files[i].0).and_then(|mut f| f.read_to_end(file));
        Some(match read {
            Ok(_) => decode_within(file, side, needed, pixels),
            Err(e) => Err(e.to_string()),
        })
    }
}

/// Whether `path` names a JPEG or PNG file, by its extension.
pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// A folder's entries, sorted by path.
pub fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    Ok(entries)
}

/// Image files and their labels.
type Labelled = Vec<(PathBuf, u32)>;

/// `root/train/<class>/*` and `root/val/<class>/*`, or a flat `root/val/*`
/// with `root/val_labels.txt` (one class folder name per line, in the
/// sorted order of the files). Classes are the sorted folder names of train/.
pub(super) fn folders(root: &Path) -> Result<Dataset> {
    let train_dir = root.join("train");
    if !train_dir.is_dir() {
        return Err(Error::Input(format!(
            "--data {}: no train/ folder (expected train/<class>/* and val/<class>/*)",
            root.display()
        )));
    }
    let classes: Vec<String> = sorted_entries(&train_dir)?
        .into_iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    if classes.is_empty() {
        return Err(Error::Input(format!(
            "{}: no class folders",
            train_dir.display()
        )));
    }
    // Each class folder's images, and the folders that hold none.
    let by_class = |dir: &Path| -> Result<(Labelled, Vec<String>)> {
        let (mut files, mut empty) = (Vec::new(), Vec::new());
        for (label, class) in classes.iter().enumerate() {
            let folder = dir.join(class);
            let found: Vec<PathBuf> = if folder.is_dir() {
                sorted_entries(&folder)?
                    .into_iter()
                    .filter(|p| is_image(p))
                    .collect()
            } else {
                Vec::new()
            };
            if found.is_empty() {
                empty.push(folder.display().to_string());
            }
            files.extend(found.into_iter().map(|p| (p, label as u32)));
        }
        Ok((files, empty))
    };
    let (train, empty_train) = by_class(&train_dir)?;
    for folder in &empty_train {
        eprintln!("warning: {folder}: no images; the class keeps its index");
    }
    let val_dir = root.join("val");
    let val = if !val_dir.is_dir() {
        return Err(Error::Input(format!(
            "--data {}: no val/ folder",
            root.display()
        )));
    } else if root.join("val_labels.txt").is_file() {
        flat_val(&val_dir, &root.join("val_labels.txt"), &classes)?
    } else {
        let (files, empty) = by_class(&val_dir)?;
        if files.is_empty() {
            return Err(Error::Input(format!(
                "{}: no images in val/<class>/ (or give val_labels.txt for a flat val/)",
                val_dir.display()
            )));
        }
        for folder in &empty {
            eprintln!("warning: {folder}: no validation images");
        }
        for folder in unknown_classes(&val_dir, &classes)? {
            eprintln!("warning: {folder}: a class train/ does not have; its images are left out");
        }
        files
    };
    if train.is_empty() {
        return Err(Error::Input(format!("{}: no images", train_dir.display())));
    }
    Ok(Dataset {
        kind: format!("image folders at {}", root.display()),
        root: root.to_path_buf(),
        classes,
        train: Arc::new(FileSet { files: train }),
        val: Arc::new(FileSet { files: val }),
    })
}

/// The class folders of `dir` whose names are not among `classes`.
fn unknown_classes(dir: &Path, classes: &[String]) -> Result<Vec<String>> {
    Ok(sorted_entries(dir)?
        .into_iter()
        .filter(|p| p.is_dir())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| !classes.iter().any(|c| *c == *n.to_string_lossy()))
        })
        .map(|p| p.display().to_string())
        .collect())
}

fn flat_val(dir: &Path, labels: &Path, classes: &[String]) -> Result<Vec<(PathBuf, u32)>> {
    let files: Vec<PathBuf> = sorted_entries(dir)?
        .into_iter()
        .filter(|p| is_image(p))
        .collect();
    let text = std::fs::read_to_string(labels).map_err(|e| Error::io(labels, e))?;
    let names: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if names.len() != files.len() {
        return Err(Error::File {
            path: labels.to_path_buf(),
            message: format!(
                "{} labels for {} images in {}",
                names.len(),
                files.len(),
                dir.display()
            ),
        });
    }
    files
        .into_iter()
        .zip(names)
        .enumerate()
        .map(|(line, (file, name))| {
            let label = classes
                .iter()
                .position(|c| c == name)
                .ok_or_else(|| Error::File {
                    path: labels.to_path_buf(),
                    message: format!("line {}: {name} is not a class folder of train/", line + 1),
                })?;
            Ok((file, label as u32))
        })
        .collect()
}

// ---- Fashion-MNIST ------------------------------------------------------------

/// Fashion-MNIST's ten classes, in label order.
pub const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Where Debian's `dataset-fashion-mnist` puts the files.
pub const FASHION_DEBIAN: &str = "/usr/share/datasets/fashion-mnist";

/// Grey images held in memory.
struct GreySet {
    side: usize,
    pixels: Vec<u8>,
    labels: Vec<u8>,
    origin: PathBuf,
}

impl ImageSet for GreySet {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn label(&self, i: usize) -> u32 {
        u32::from(self.labels[i])
    }
    fn describe(&self, i: usize) -> String {
        format!("{} image {i}", self.origin.display())
    }
    fn load(&self, i: usize) -> std::result::Result<RgbImage, String> {
        let plane = self.side * self.side;
        Ok(RgbImage::from_grey(
            self.side,
            self.side,
            &self.pixels[i * plane..][..plane],
        ))
    }
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&raw[..])
        .read_to_end(&mut out)
        .map_err(|e| Error::io(path, e))?;
    Ok(out)
}

/// An IDX file: its dimensions and its bytes.
fn read_idx(path: &Path, dims: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let bytes = read_maybe_gz(path)?;
    let bad = |why: String| Error::File {
        path: path.to_path_buf(),
        message: format!("not an IDX file of {dims} dimension(s): {why}"),
    };
    if bytes.len() < 4 + 4 * dims || bytes[..3] != [0, 0, 8] || bytes[3] as usize != dims {
        return Err(bad("wrong magic".into()));
    }
    let shape: Vec<usize> = (0..dims)
        .map(|d| {
            u32::from_be_bytes(bytes[4 + 4 * d..8 + 4 * d].try_into().expect("4 bytes")) as usize
        })
        .collect();
    let data = bytes[4 + 4 * dims..].to_vec();
    if data.len() != shape.iter().product::<usize>() {
        return Err(bad(format!("{} bytes for shape {shape:?}", data.len())));
    }
    Ok((shape, data))
}

fn fashion_split(root: &Path, prefix: &str) -> Result<GreySet> {
    let find = |name: String| {
        find_idx(root, &name).ok_or_else(|| {
            Error::Input(format!(
                "--data {}: no {name} (or {name}.gz)",
                root.display()
            ))
        })
    };
    let images = find(format!("{prefix}-images-idx3-ubyte"))?;
    let (shape, pixels) = read_idx(&images, 3)?;
    let (label_shape, labels) = read_idx(&find(format!("{prefix}-labels-idx1-ubyte"))?, 1)?;
    if shape[1] != shape[2] || label_shape[0] != shape[0] {
        return Err(Error::File {
            path: images,
            message: format!("{shape:?} images for {} labels", label_shape[0]),
        });
    }
    if let Some(bad) = labels
        .iter()
        .find(|&&l| l as usize >= FASHION_CLASSES.len())
    {
        return Err(Error::File {
            path: images,
            message: format!("label {bad} is not one of the 10 classes"),
        });
    }
    Ok(GreySet {
        side: shape[1],
        pixels,
        labels,
        origin: root.join(prefix),
    })
}

/// Fashion-MNIST: train-* for training, t10k-* (the test set) for validation.
pub(super) fn fashion(root: &Path) -> Result<Dataset> {
    Ok(Dataset {
        kind: format!("Fashion-MNIST at {}", root.display()),
        root: root.to_path_buf(),
        classes: FASHION_CLASSES.iter().map(|c| c.to_string()).collect(),
        train: Arc::new(fashion_split(root, "train")?),
        val: Arc::new(fashion_split(root, "t10k")?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::decode::tests::{jpeg, png};
    use crate::data::open;

    fn write(path: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn folders_give_sorted_classes_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let rgb = jpeg(20, 10, jpeg_encoder::ColorType::Rgb);
        for class in ["zebra", "ant", "moth"] {
            write(&root.join(format!("train/{class}/a.jpg")), &rgb);
            write(&root.join(format!("train/{class}/b.JPEG")), &rgb);
            write(
                &root.join(format!("val/{class}/c.png")),
                &png(5, 5, png::ColorType::Rgb, png::BitDepth::Eight),
            );
        }
        write(&root.join("train/ant/notes.txt"), b"not an image");
        let set = open(root).unwrap();
        assert_eq!(set.classes, vec!["ant", "moth", "zebra"]);
        assert_eq!(set.train.len(), 6);
        assert_eq!((set.train.label(0), set.train.label(5)), (0, 2));
        assert!(set.train.describe(0).ends_with("train/ant/a.jpg"));
        assert_eq!(set.val.len(), 3);
        assert_eq!(set.val.load(1).unwrap().width, 5);
    }

    #[test]
    fn a_flat_val_folder_takes_labels_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let img = jpeg(8, 8, jpeg_encoder::ColorType::Rgb);
        for class in ["cat", "dog"] {
            write(&root.join(format!("train/{class}/x.jpg")), &img);
        }
        write(&root.join("val/001.jpg"), &img);
        write(&root.join("val/002.jpg"), &img);
        write(&root.join("val_labels.txt"), b"dog\ncat\n");
        let set = open(root).unwrap();
        assert_eq!((set.val.label(0), set.val.label(1)), (1, 0));
        write(&root.join("val_labels.txt"), b"dog\nbird\n");
        let e = open(root).err().unwrap().to_string();
        assert!(
            e.contains("val_labels.txt") && e.contains("line 2: bird"),
            "{e}"
        );
    }

    #[test]
    fn missing_and_empty_folders_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let e = open(&root.join("nope")).err().unwrap().to_string();
        assert!(e.contains("nope") && e.contains("no such folder"), "{e}");
        let e = open(root).err().unwrap().to_string();
        assert!(e.contains("no train/"), "{e}");
        let img = jpeg(8, 8, jpeg_encoder::ColorType::Rgb);
        write(&root.join("train/cat/x.jpg"), &img);
        std::fs::create_dir_all(root.join("train/empty")).unwrap();
        write(&root.join("val/cat/y.jpg"), &img);
        // An empty class folder keeps its index; the set opens.
        let set = open(root).unwrap();
        assert_eq!(set.classes, vec!["cat", "empty"]);
        assert_eq!(set.train.len(), 1);
        // A validation class that train/ lacks is named.
        write(&root.join("val/dog/z.jpg"), &img);
        let classes = open(root).unwrap().classes;
        let unknown = unknown_classes(&root.join("val"), &classes).unwrap();
        assert_eq!(unknown, [root.join("val/dog").display().to_string()]);
    }

    #[test]
    fn fashion_mnist_reads_from_debians_package_when_installed() {
        let root = Path::new(FASHION_DEBIAN);
        if !root.is_dir() {
            let _ = std::io::Write::write_fmt(
                &mut std::io::stderr(),
                format_args!(
                    "fashion-mnist test skipped: {FASHION_DEBIAN} absent (apt-get install dataset-fashion-mnist)\n"
                ),
            );
            return;
        }
        let set = open(root).unwrap();
        assert_eq!((set.train.len(), set.val.len()), (60_000, 10_000));
        let first = set.train.load(0).unwrap();
        assert_eq!((first.width, first.height), (28, 28));
        // The first training image is an ankle boot (label 9), as the dataset's README shows.
        assert_eq!(set.train.label(0), 9);
    }

    #[test]
    fn idx_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut images = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2];
        images.extend([7u8; 8]);
        write(&root.join("train-images-idx3-ubyte"), &images);
        write(
            &root.join("train-labels-idx1-ubyte"),
            &[0, 0, 8, 1, 0, 0, 0, 2, 3, 4],
        );
        write(&root.join("t10k-images-idx3-ubyte"), &images[..20]);
        write(
            &root.join("t10k-labels-idx1-ubyte"),
            &[0, 0, 8, 1, 0, 0, 0, 2, 3, 4],
        );
        let e = open(root).err().unwrap().to_string();
        assert!(
            e.contains("t10k-images-idx3-ubyte") && e.contains("bytes for shape"),
            "{e}"
        );
        write(&root.join("t10k-images-idx3-ubyte"), &images);
        let set = open(root).unwrap();
        assert_eq!(set.train.load(1).unwrap().pixels, vec![7; 12]);
    }
}
