//! The stage file header (SPEC.md §3): fixed prefix, JSON tensor table, and
//! the validation every reader must apply before trusting an offset.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::dtype::DType;
use crate::error::{FormatError, Result};

/// Magic bytes at offset 0 of every stage file.
pub const MAGIC: [u8; 8] = *b"STRATA\0\0";
/// Size of the fixed prefix: magic, major, minor, header length.
pub const PREFIX_LEN: usize = 16;
/// Alignment of every tensor's data and of the file's length.
pub const ALIGN: u64 = 4096;
/// Upper bound on the JSON header length.
pub const MAX_HEADER_LEN: u32 = 16 << 20;
/// Upper bound on a tensor name's length in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Upper bound on a tensor's number of dimensions.
pub const MAX_DIMS: usize = 8;

/// Which part of the model a stage file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    /// Token embeddings.
    Embed,
    /// One decoder layer.
    Layer,
    /// Final norm and output head.
    Head,
}

/// Per-tensor compression of the stored bytes (SPEC.md §3.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compression {
    /// Codec name: `zstd` or `zstd-bytesplit` (see [`crate::compress`]).
    pub codec: String,
    /// Length of the bytes after decompression (the encoded tensor).
    pub decoded_length: u64,
    /// Rows per frame; absent: the stored bytes are one frame of all rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_rows: Option<u64>,
    /// Stored length of each frame, in order (present with `frame_rows`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames: Option<Vec<u64>>,
}

/// One entry of a stage file's tensor table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorEntry {
    /// Normalized tensor name (SPEC.md §6), e.g. `attn.q`.
    pub name: String,
    /// Element encoding.
    pub dtype: DType,
    /// Logical shape, outermost first; for matrices `[out_features, in_features]`.
    pub shape: Vec<u64>,
    /// Quantization block size (quantized encodings only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// Absolute byte offset of the data in the file (a multiple of 4096).
    pub offset: u64,
    /// Number of stored bytes.
    pub length: u64,
    /// Compression of the stored bytes, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
}

impl TensorEntry {
    /// Length of the encoded (uncompressed) tensor bytes.
    pub fn encoded_length(&self) -> u64 {
        self.compression
            .as_ref()
            .map_or(self.length, |c| c.decoded_length)
    }

    /// Byte range of the stored data within the file (its end saturates for
    /// an entry no validated header holds).
    pub fn range(&self) -> std::ops::Range<u64> {
        self.offset..self.offset.saturating_add(self.length)
    }
}

/// The JSON header of a stage file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHeader {
    /// What the file holds.
    pub stage: StageKind,
    /// Decoder layer index, for `layer` stages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<u32>,
    /// The tensor table, in file order.
    pub tensors: Vec<TensorEntry>,
}

/// Rounds `n` up to a multiple of [`ALIGN`] (checked).
pub fn align_up(n: u64) -> Option<u64> {
    n.checked_add(ALIGN - 1).map(|v| v / ALIGN * ALIGN)
}

/// The fixed prefix of a stage file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    /// Format major version.
    pub major: u16,
    /// Format minor version.
    pub minor: u16,
    /// Length of the JSON header that follows the prefix.
    pub header_len: u32,
}

impl Prefix {
    /// Parses and checks the 16-byte prefix (magic, known major, bounded header length).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Prefix> {
        if bytes.len() < PREFIX_LEN || bytes[..8] != MAGIC {
            return Err(FormatError::BadMagic {
                path: path.to_path_buf(),
            });
        }
        let major = u16::from_le_bytes([bytes[8], bytes[9]]);
        let minor = u16::from_le_bytes([bytes[10], bytes[11]]);
        if u32::from(major) != crate::FORMAT_MAJOR {
            return Err(FormatError::UnsupportedVersion {
                path: path.to_path_buf(),
                major: major.into(),
                minor: minor.into(),
            });
        }
        let header_len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        if header_len == 0 || header_len > MAX_HEADER_LEN {
            return Err(bad_header(
                path,
                format!("header length {header_len} is outside 1..={MAX_HEADER_LEN}"),
            ));
        }
        Ok(Prefix {
            major,
            minor,
            header_len,
        })
    }

    /// Serializes the prefix.
    pub fn to_bytes(self) -> [u8; PREFIX_LEN] {
        let mut b = [0u8; PREFIX_LEN];
        b[..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&self.major.to_le_bytes());
        b[10..12].copy_from_slice(&self.minor.to_le_bytes());
        b[12..16].copy_from_slice(&self.header_len.to_le_bytes());
        b
    }

    /// Offset where tensor data may start: the end of the header, aligned.
    pub fn data_start(self) -> u64 {
        (PREFIX_LEN as u64 + u64::from(self.header_len)).div_ceil(ALIGN) * ALIGN
    }
}

fn bad_header(path: &Path, reason: String) -> FormatError {
    FormatError::BadHeader {
        path: path.to_path_buf(),
        reason,
    }
}

fn bad_tensor(path: &Path, tensor: &str, reason: String) -> FormatError {
    FormatError::BadTensor {
        path: path.to_path_buf(),
        tensor: tensor.to_string(),
        reason,
    }
}

/// Whether a tensor name is allowed: 1..=256 bytes of `[A-Za-z0-9._-]`.
pub fn valid_tensor_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl FileHeader {
    /// Parses the JSON header that follows `prefix` and validates every entry
    /// against the file length (SPEC.md §3.3). `json` is exactly the header bytes.
    pub fn parse(prefix: Prefix, json: &[u8], file_len: u64, path: &Path) -> Result<FileHeader> {
        let header: FileHeader = serde_json::from_slice(json)
            .map_err(|e| bad_header(path, format!("not valid header JSON: {e}")))?;
        header.validate(prefix, file_len, path)?;
        Ok(header)
    }

    /// Parses a whole stage file (or its first bytes, holding at least the
    /// prefix and header) whose total length is `file_len`.
    pub fn parse_file_start(
        bytes: &[u8],
        file_len: u64,
        path: &Path,
    ) -> Result<(Prefix, FileHeader)> {
        let prefix = Prefix::parse(bytes, path)?;
        let end = PREFIX_LEN + prefix.header_len as usize;
        let json = bytes.get(PREFIX_LEN..end).ok_or_else(|| {
            bad_header(
                path,
                format!(
                    "header needs {end} bytes but only {} are present",
                    bytes.len()
                ),
            )
        })?;
        let header = FileHeader::parse(prefix, json, file_len, path)?;
        Ok((prefix, header))
    }

    /// Checks the header's invariants (SPEC.md §3.3).
    pub fn validate(&self, prefix: Prefix, file_len: u64, path: &Path) -> Result<()> {
        match (self.stage, self.layer) {
            (StageKind::Layer, None) => {
                return Err(bad_header(path, "layer stage without a layer index".into()))
            }
            (StageKind::Embed | StageKind::Head, Some(_)) => {
                return Err(bad_header(
                    path,
                    "only layer stages carry a layer index".into(),
                ))
            }
            _ => {}
        }
        let mut cursor = prefix.data_start();
        let mut names = std::collections::HashSet::new();
        for t in &self.tensors {
            let name = t.name.as_str();
            if !valid_tensor_name(name) {
                return Err(bad_header(
                    path,
                    format!("invalid tensor name {:?}", truncate(name)),
                ));
            }
            if !names.insert(name) {
                return Err(bad_tensor(path, name, "duplicate tensor name".into()));
            }
            if t.shape.len() > MAX_DIMS {
                return Err(bad_tensor(
                    path,
                    name,
                    format!("{} dimensions (max {MAX_DIMS})", t.shape.len()),
                ));
            }
            match (t.dtype.is_quantized(), t.block_size) {
                (true, None) => {
                    return Err(bad_tensor(
                        path,
                        name,
                        format!("{} needs a block_size", t.dtype),
                    ))
                }
                (false, Some(_)) => {
                    return Err(bad_tensor(
                        path,
                        name,
                        format!("{} takes no block_size", t.dtype),
                    ))
                }
                _ => {}
            }
            let expected = t.dtype.encoded_len(&t.shape, t.block_size).ok_or_else(|| {
                bad_tensor(
                    path,
                    name,
                    format!(
                        "shape {:?} with dtype {} and block {:?} has no valid size",
                        t.shape, t.dtype, t.block_size
                    ),
                )
            })?;
            match &t.compression {
                None if t.length != expected => {
                    return Err(bad_tensor(
                        path,
                        name,
                        format!(
                            "length {} but shape {:?} as {} needs {expected}",
                            t.length, t.shape, t.dtype
                        ),
                    ))
                }
                Some(c) if c.decoded_length != expected => {
                    return Err(bad_tensor(
                        path,
                        name,
                        format!(
                            "decoded_length {} but shape {:?} as {} needs {expected}",
                            c.decoded_length, t.shape, t.dtype
                        ),
                    ))
                }
                Some(c) => crate::compress::validate(t, c)
                    .map_err(|reason| bad_tensor(path, name, reason))?,
                _ => {}
            }
            if t.offset % ALIGN != 0 {
                return Err(bad_tensor(
                    path,
                    name,
                    format!("offset {} is not a multiple of {ALIGN}", t.offset),
                ));
            }
            if t.offset < cursor {
                return Err(bad_tensor(
                    path,
                    name,
                    format!(
                        "offset {} overlaps the header or the previous tensor (ends at {cursor})",
                        t.offset
                    ),
                ));
            }
            let end = t
                .offset
                .checked_add(t.length)
                .filter(|&e| e <= file_len)
                .ok_or_else(|| {
                    bad_tensor(
                        path,
                        name,
                        format!(
                            "bytes {}+{} run past the end of the {file_len}-byte file",
                            t.offset, t.length
                        ),
                    )
                })?;
            cursor = end;
        }
        let expected_len =
            align_up(cursor).ok_or_else(|| bad_header(path, "size overflow".into()))?;
        if file_len != expected_len {
            return Err(FormatError::SizeMismatch {
                path: path.to_path_buf(),
                expected: expected_len,
                actual: file_len,
            });
        }
        Ok(())
    }

    /// Looks up a tensor by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}
