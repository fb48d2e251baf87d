//! The crate's error type. User-facing mistakes (bad flags, bad preset files)
//! are `Input` and make the binary exit with status 2.

use std::path::PathBuf;

/// Everything that can go wrong in `alexnet`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag, a value or a file the user gave is unusable.
    #[error("{0}")]
    Input(String),
    /// A preset or config file could not be read or parsed.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A tower failed, stopped, or stopped answering; `place` says where it
    /// ran ("GPU 1", "CPU").
    #[error("tower {tower} ({place}): {message}")]
    Tower {
        tower: usize,
        place: String,
        message: String,
    },
    /// A CUDA library (driver, NVRTC, cuDNN, cuBLAS, NCCL) reported an error.
    #[error("{what}: {message}")]
    Cuda { what: String, message: String },
    /// Training diverged or otherwise cannot go on.
    #[error("{0}")]
    Training(String),
}

impl Error {
    /// Whether the error is the user's input (exit status 2) rather than a
    /// failure at run time: a bad flag or file, or a path given that does
    /// not exist, is not a folder (or is one), or may not be read or written.
    pub fn is_input(&self) -> bool {
        use std::io::ErrorKind::*;
        match self {
            Error::Input(_) | Error::File { .. } => true,
            Error::Io { source, .. } => matches!(
                source.kind(),
                NotFound | PermissionDenied | NotADirectory | IsADirectory | ReadOnlyFilesystem
            ),
            _ => false,
        }
    }

    /// Wraps a CUDA library's error with what was being done.
    pub fn cuda(what: impl Into<String>, error: impl std::fmt::Display) -> Self {
        Error::Cuda {
            what: what.into(),
            message: error.to_string(),
        }
    }

    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Shorthand for results in this crate.
pub type Result<T> = std::result::Result<T, Error>;
