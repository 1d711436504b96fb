//! Typed errors of the runner library. Each variant names the container file,
//! tensor or setting it concerns.

use std::path::PathBuf;

use crate::text::TextError;

/// Any error of the runner library.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// A container file failed the format's checks.
    #[error(transparent)]
    Format(#[from] strata_format::FormatError),
    /// An operating-system error on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file's sha256 differs from the manifest.
    #[error("{}: sha256 mismatch (file has {actual}, manifest says {expected}): the file is damaged; run `runner verify`", path.display())]
    Checksum {
        /// The file concerned.
        path: PathBuf,
        /// Digest in the manifest.
        expected: String,
        /// Digest of the bytes read.
        actual: String,
    },
    /// A tensor the architecture needs is absent or has the wrong shape.
    #[error("{file}: tensor `{tensor}`: {reason}")]
    Tensor {
        /// The stage file.
        file: String,
        /// The tensor's name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// The container asks for something this runner does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The memory budget cannot hold even the streaming minimum.
    #[error("memory budget of {budget} is too small: {reason}")]
    Memory {
        /// The budget, human-readable.
        budget: String,
        /// What would not fit.
        reason: String,
    },
    /// A request is invalid (e.g. a token id outside the vocabulary).
    #[error("{0}")]
    Invalid(String),
    /// A tokenizer or chat template error.
    #[error(transparent)]
    Text(#[from] TextError),
    /// A compute backend error.
    #[error("compute error: {0}")]
    Compute(#[from] candle_core::Error),
    /// An object of a remote container (named by its URL) could not be used.
    #[error("{object}: {reason}")]
    Remote {
        /// The object's URL.
        object: String,
        /// What went wrong.
        reason: String,
    },
    /// The background reader thread stopped unexpectedly.
    #[error("the prefetch thread stopped: {0}")]
    Prefetch(String),
}

impl RunnerError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RunnerError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias of the runner library.
pub type Result<T, E = RunnerError> = std::result::Result<T, E>;
