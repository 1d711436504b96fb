//! # strata-format
//!
//! The strata container format, version 1 (normative text: `format-spec/SPEC.md`).
//! A container is a directory holding `manifest.json`, one page-aligned stage
//! file per model stage (embeddings, each decoder layer, final norm + head)
//! and the tokenizer files. This crate reads and writes it, validates every
//! field before trusting it, and holds the reference quantization codecs.
//! It contains no model maths.

#![forbid(unsafe_code)]

pub mod checksum;
pub mod codec;
pub mod compress;
pub mod dtype;
pub mod error;
pub mod fsutil;
pub mod header;
pub mod layout;
pub mod manifest;
pub mod names;
pub mod reader;
pub mod shapes;
pub mod verify;
pub mod writer;

pub use dtype::DType;
pub use error::{CodecError, FormatError, Result};
pub use header::{FileHeader, StageKind, TensorEntry};
pub use manifest::Manifest;
pub use reader::StageFile;
pub use writer::{StageWriter, TensorSpec, WrittenFile};

/// Major format version this crate reads and writes.
pub const FORMAT_MAJOR: u32 = 1;
/// Minor format version this crate writes.
pub const FORMAT_MINOR: u32 = 3;

/// The `format_version` string this crate writes into manifests.
pub fn format_version() -> String {
    format!("{FORMAT_MAJOR}.{FORMAT_MINOR}")
}
