//! Typed errors of the format crate. Every variant names the file, tensor or
//! manifest entry it concerns, so a user can act on the message alone.

use std::path::PathBuf;

/// An error from a quantization codec, before it is attached to a tensor name.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    /// The input holds NaN or an infinity at the given element index.
    #[error("non-finite value {value} at element {index}")]
    NonFinite {
        /// Flat element index of the offending value.
        index: usize,
        /// The value itself.
        value: f32,
    },
    /// A block's absolute maximum does not fit the f16 scale.
    #[error(
        "block starting at element {index} has absmax {absmax}, above the f16 scale range (65504)"
    )]
    ScaleOverflow {
        /// Flat element index where the block starts.
        index: usize,
        /// The block's absolute maximum.
        absmax: f32,
    },
    /// A finite input value does not fit the target encoding (e.g. above 65504 for f16).
    #[error("value {value} at element {index} is out of range for {dtype}")]
    OutOfRange {
        /// Flat element index of the offending value.
        index: usize,
        /// The value itself.
        value: f32,
        /// The target encoding's name.
        dtype: &'static str,
    },
    /// The encoding is one that is only ever copied from a source file (the
    /// GGML block encodings, SPEC.md §4.6), never encoded from values.
    #[error("{dtype} is kept from GGUF files as stored; values are not encoded into it")]
    NotEncodable {
        /// The encoding's name.
        dtype: &'static str,
    },
    /// The input or output buffer length does not match the shape.
    #[error("expected {expected} {what}, got {actual}")]
    Length {
        /// What was being counted (elements, bytes).
        what: &'static str,
        /// Length the shape implies.
        expected: usize,
        /// Length provided.
        actual: usize,
    },
    /// A stored scale is NaN, infinite or negative.
    #[error("block {block} has an invalid scale {scale}")]
    BadScale {
        /// Index of the block within the tensor.
        block: usize,
        /// The decoded scale.
        scale: f32,
    },
    /// The block size is not allowed by the spec.
    #[error("block size {0} is not allowed (a multiple of 32 from 32 to 4096)")]
    BlockSize(u32),
}

/// Any error reading, writing or validating strata container files.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// An operating-system error on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the strata magic bytes.
    #[error("{}: not a strata stage file (bad magic bytes)", path.display())]
    BadMagic {
        /// The file concerned.
        path: PathBuf,
    },
    /// The file or manifest declares a major version this reader does not know.
    #[error("{}: format version {major}.{minor} is not supported (this reader reads {}.x)", path.display(), crate::FORMAT_MAJOR)]
    UnsupportedVersion {
        /// The file concerned.
        path: PathBuf,
        /// Declared major version.
        major: u32,
        /// Declared minor version.
        minor: u32,
    },
    /// The stage file's header is malformed or inconsistent.
    #[error("{}: invalid header: {reason}", path.display())]
    BadHeader {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// One tensor entry of a stage file is invalid.
    #[error("{}: tensor `{tensor}`: {reason}", path.display())]
    BadTensor {
        /// The file concerned.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// The manifest is malformed, inconsistent or unsafe.
    #[error("{}: invalid manifest: {reason}", path.display())]
    BadManifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file's sha256 does not match the manifest.
    #[error("{}: sha256 mismatch (file has {actual}, manifest says {expected}): the file is damaged or from another container", path.display())]
    ChecksumMismatch {
        /// The file concerned.
        path: PathBuf,
        /// Digest recorded in the manifest.
        expected: String,
        /// Digest of the file on disk.
        actual: String,
    },
    /// A file's size does not match what the manifest or header says.
    #[error("{}: file is {actual} bytes, expected {expected}", path.display())]
    SizeMismatch {
        /// The file concerned.
        path: PathBuf,
        /// Expected size in bytes.
        expected: u64,
        /// Size on disk.
        actual: u64,
    },
    /// A quantization codec failed on a named tensor.
    #[error("tensor `{tensor}`: {source}")]
    Codec {
        /// The tensor's name.
        tensor: String,
        /// The codec's error.
        #[source]
        source: CodecError,
    },
    /// The writer was used out of order (a caller bug surfaced as an error, never a panic).
    #[error("{}: writer misuse: {reason}", path.display())]
    WriterMisuse {
        /// The file being written.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

impl FormatError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias of the format crate.
pub type Result<T, E = FormatError> = std::result::Result<T, E>;
