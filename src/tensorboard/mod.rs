//! TensorBoard event files, written without TensorFlow: every run writes
//! `RUN_DIR/tensorboard/events.out.tfevents.<time>.alexnet.<pid>` with the
//! run's scalars and, at each checkpoint, conv1's kernels as an image.
//! `tensorboard --logdir RUN_DIR/tensorboard` shows them.

mod proto;
pub mod record;

pub use proto::Value;

use crate::error::{Error, Result};
use proto::What;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// One event file, open for appending; each event is flushed as written.
pub struct EventWriter {
    path: PathBuf,
    file: File,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl EventWriter {
    /// A new event file in `dir` (created if need be). A run resumed at
    /// `first_step` > 0 also logs a session start there, so that readers drop
    /// what the earlier process wrote past that step.
    pub fn create(dir: &Path, first_step: usize) -> Result<EventWriter> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(format!(
            "events.out.tfevents.{:010}.alexnet.{}",
            now() as u64,
            std::process::id()
        ));
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut writer = EventWriter { path, file };
        writer.write(first_step, &What::FileVersion)?;
        if first_step > 0 {
            writer.write(first_step, &What::Start)?;
        }
        Ok(writer)
    }

    /// Writes `values` as one summary at `step`.
    pub fn summary(&mut self, step: usize, values: &[Value]) -> Result<()> {
        self.write(step, &What::Summary(values))
    }

    fn write(&mut self, step: usize, what: &What) -> Result<()> {
        let record = record::frame(&proto::event(now(), step as u64, what));
        self.file
            .write_all(&record)
            .and_then(|()| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits a file into its records' data, checking every length and CRC.
    fn records(bytes: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let length = &bytes[at..at + 8];
            let crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            assert_eq!(crc, record::masked_crc(length));
            let n = u64::from_le_bytes(length.try_into().unwrap()) as usize;
            let data = &bytes[at + 12..at + 12 + n];
            let crc = u32::from_le_bytes(bytes[at + 12 + n..at + 16 + n].try_into().unwrap());
            assert_eq!(crc, record::masked_crc(data));
            out.push(data);
            at += 16 + n;
        }
        out
    }

    #[test]
    fn a_file_starts_with_its_version_and_a_resumed_one_with_a_session_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path(), 40).unwrap();
        w.summary(50, &[Value::Scalar("train/loss", 1.0)]).unwrap();
        let bytes = std::fs::read(&w.path).unwrap();
        let events = records(&bytes);
        assert_eq!(events.len(), 3);
        assert!(events[0].ends_with(b"brain.Event:2"));
        // Field 6 (session_log) holding status 1 (START).
        assert!(events[1].ends_with(&[0x32, 2, 0x08, 1]));
        assert!(events[2].windows(10).any(|w| w == b"train/loss"));
        let name = w.path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
    }
}
