//! Files written whole or not at all: a temporary file in the
//! destination's own folder, created before the work (so that a bad
//! destination fails at once), renamed over the destination at the end, and
//! removed if the work fails.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// An output file on its way.
#[derive(Debug)]
pub struct Output {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
}

impl Output {
    /// Starts writing `path`, which `flag` named; refuses a folder, a
    /// missing or unwritable parent folder, at once.
    pub fn create(path: &Path, flag: &str) -> Result<Output> {
        let bad = |why: String| Error::Input(format!("{flag} {}: {why}", path.display()));
        if path.is_dir() {
            return Err(bad("is a folder".into()));
        }
        let name = path
            .file_name()
            .ok_or_else(|| bad("names no file".into()))?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let tmp = parent.join(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let file = File::create(&tmp).map_err(|e| bad(format!("cannot write there: {e}")))?;
        Ok(Output {
            path: path.to_path_buf(),
            tmp,
            file: Some(file),
        })
    }

    /// Writes `bytes` and puts the file in place.
    pub fn commit(mut self, bytes: &[u8]) -> Result<()> {
        let mut file = self.file.take().expect("an open output");
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(&self.path, e))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// A file that a writer of its own (a plotting backend) draws at a
/// temporary path beside the destination, with the destination's extension
/// (writers that choose their format by extension still do), renamed over
/// the destination by [`Staged::commit`] and removed if dropped before.
#[derive(Debug)]
pub struct Staged {
    path: PathBuf,
    tmp: PathBuf,
    done: bool,
}

impl Staged {
    /// The temporary path for `path`.
    pub fn new(path: &Path) -> Staged {
        let stem = path.file_stem().unwrap_or_default().to_string_lossy();
        let ext = path.extension().unwrap_or_default().to_string_lossy();
        let tmp = path.with_file_name(format!(".{stem}.tmp-{}.{ext}", std::process::id()));
        Staged {
            path: path.to_path_buf(),
            tmp,
            done: false,
        }
    }

    /// Where to draw.
    pub fn tmp(&self) -> &Path {
        &self.tmp
    }

    /// Puts the drawn file in place.
    pub fn commit(mut self) -> Result<PathBuf> {
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        self.done = true;
        Ok(self.path.clone())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staged_file_appears_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curves.png");
        let staged = Staged::new(&path);
        assert_eq!(staged.tmp().extension().unwrap(), "png");
        std::fs::write(staged.tmp(), b"drawn").unwrap();
        assert!(!path.exists());
        assert_eq!(staged.commit().unwrap(), path);
        assert_eq!(std::fs::read(&path).unwrap(), b"drawn");
        let abandoned = Staged::new(&dir.path().join("other.svg"));
        std::fs::write(abandoned.tmp(), b"half").unwrap();
        drop(abandoned);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only curves.png is left");
    }

    #[test]
    fn writes_whole_or_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        Output::create(&path, "--logits")
            .unwrap()
            .commit(b"abc")
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
        drop(Output::create(&dir.path().join("never.bin"), "--logits").unwrap());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        let e = Output::create(&dir.path().join("no/such/x.npy"), "--logits").unwrap_err();
        assert!(e.to_string().starts_with("--logits "), "{e}");
        assert!(Output::create(dir.path(), "--logits").is_err());
    }
}
