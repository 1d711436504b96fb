//! Streaming writer of one stage file (SPEC.md §3): the header is fixed up
//! front from the tensor specs, tensors are then streamed in order (in as many
//! parts as the caller likes), the sha256 is computed while writing, and the
//! file only takes its final name after it is complete and fsynced.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::checksum::hex_digest;
use crate::dtype::DType;
use crate::error::{FormatError, Result};
use crate::fsutil::{commit_tmp, tmp_path};
use crate::header::{
    align_up, valid_tensor_name, Compression, FileHeader, Prefix, StageKind, TensorEntry, ALIGN,
    MAX_HEADER_LEN, PREFIX_LEN,
};

/// What a tensor will be, before its bytes exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Normalized name.
    pub name: String,
    /// Encoding.
    pub dtype: DType,
    /// Logical shape.
    pub shape: Vec<u64>,
    /// Block size for quantized encodings.
    pub block_size: Option<u32>,
    /// Compression of the stored bytes (with its frame table, which fixes the
    /// stored length); `None`: stored as encoded.
    pub compression: Option<Compression>,
}

/// A completed stage file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFile {
    /// Final path.
    pub path: PathBuf,
    /// Total size in bytes.
    pub bytes: u64,
    /// sha256 of the whole file, lowercase hex.
    pub sha256: String,
}

/// Writes one stage file; see the module documentation.
pub struct StageWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    hasher: Sha256,
    header: FileHeader,
    pos: u64,
    next: usize,
    written_in_current: u64,
}

const ZEROS: [u8; ALIGN as usize] = [0; ALIGN as usize];

/// Lays out the tensor table for `specs`: offsets depend on the header's own
/// length, so iterate until the layout is stable (it converges in ≤ 3 rounds
/// because offsets only grow).
pub fn layout_header(
    stage: StageKind,
    layer: Option<u32>,
    specs: &[TensorSpec],
    path: &Path,
) -> Result<(Prefix, FileHeader)> {
    let misuse = |reason: String| FormatError::WriterMisuse {
        path: path.to_path_buf(),
        reason,
    };
    let mut tensors = Vec::with_capacity(specs.len());
    for s in specs {
        if !valid_tensor_name(&s.name) {
            return Err(misuse(format!("invalid tensor name {:?}", s.name)));
        }
        let length = s.dtype.encoded_len(&s.shape, s.block_size).ok_or_else(|| {
            misuse(format!(
                "tensor `{}`: shape {:?} has no valid {} size",
                s.name, s.shape, s.dtype
            ))
        })?;
        let mut entry = TensorEntry {
            name: s.name.clone(),
            dtype: s.dtype,
            shape: s.shape.clone(),
            block_size: s.block_size,
            offset: 0,
            length,
            compression: None,
        };
        if let Some(c) = &s.compression {
            let frames = c.frames.as_ref().ok_or_else(|| {
                misuse(format!(
                    "tensor `{}`: compression without a frame table",
                    s.name
                ))
            })?;
            entry.length = frames
                .iter()
                .try_fold(0u64, |a, &f| a.checked_add(f))
                .ok_or_else(|| misuse(format!("tensor `{}`: frame lengths overflow", s.name)))?;
            if c.decoded_length != length {
                return Err(misuse(format!(
                    "tensor `{}`: decoded_length {} but the encoding is {length} bytes",
                    s.name, c.decoded_length
                )));
            }
            entry.compression = Some(c.clone());
            crate::compress::validate(&entry, c)
                .map_err(|r| misuse(format!("tensor `{}`: {r}", s.name)))?;
        }
        tensors.push(entry);
    }
    let mut header = FileHeader {
        stage,
        layer,
        tensors,
    };
    let mut data_start = ALIGN;
    loop {
        let mut cursor = data_start;
        for t in &mut header.tensors {
            t.offset = cursor;
            cursor = align_up(cursor + t.length)
                .ok_or_else(|| misuse("file size overflows u64".into()))?;
        }
        let json = serde_json::to_vec(&header).map_err(|e| misuse(e.to_string()))?;
        let header_len = u32::try_from(json.len())
            .ok()
            .filter(|&l| l <= MAX_HEADER_LEN)
            .ok_or_else(|| {
                misuse(format!(
                    "header of {} bytes exceeds {MAX_HEADER_LEN}",
                    json.len()
                ))
            })?;
        let prefix = Prefix {
            major: crate::FORMAT_MAJOR as u16,
            minor: crate::FORMAT_MINOR as u16,
            header_len,
        };
        if prefix.data_start() == data_start {
            return Ok((prefix, header));
        }
        data_start = prefix.data_start();
    }
}

/// Exact size in bytes of the stage file `layout_header` lays out for `specs`:
/// the end of its last tensor (or of its header) rounded up to 4096.
pub fn stage_file_size(
    stage: StageKind,
    layer: Option<u32>,
    specs: &[TensorSpec],
    path: &Path,
) -> Result<u64> {
    let (prefix, header) = layout_header(stage, layer, specs, path)?;
    let end = match header.tensors.last() {
        Some(t) => t.offset.checked_add(t.length).and_then(align_up),
        None => Some(prefix.data_start()),
    };
    end.ok_or_else(|| FormatError::WriterMisuse {
        path: path.to_path_buf(),
        reason: "file size overflows u64".into(),
    })
}

impl StageWriter {
    /// Starts writing `path` (as `path.tmp`) with the given tensor table.
    pub fn create(
        path: &Path,
        stage: StageKind,
        layer: Option<u32>,
        specs: &[TensorSpec],
    ) -> Result<StageWriter> {
        let (prefix, header) = layout_header(stage, layer, specs, path)?;
        let tmp = tmp_path(path);
        let file = File::create(&tmp).map_err(|e| FormatError::io(&tmp, e))?;
        let mut w = StageWriter {
            path: path.to_path_buf(),
            tmp,
            out: BufWriter::with_capacity(4 << 20, file),
            hasher: Sha256::new(),
            header,
            pos: 0,
            next: 0,
            written_in_current: 0,
        };
        let json = serde_json::to_vec(&w.header).map_err(|e| w.misuse(e.to_string()))?;
        w.emit(&prefix.to_bytes())?;
        w.emit(&json)?;
        debug_assert_eq!(w.pos, (PREFIX_LEN + json.len()) as u64);
        w.pad_to(prefix.data_start())?;
        Ok(w)
    }

    /// The header being written (offsets are final).
    pub fn header(&self) -> &FileHeader {
        &self.header
    }

    fn misuse(&self, reason: String) -> FormatError {
        FormatError::WriterMisuse {
            path: self.path.clone(),
            reason,
        }
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| FormatError::io(&self.tmp, e))?;
        self.hasher.update(bytes);
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn pad_to(&mut self, target: u64) -> Result<()> {
        while self.pos < target {
            let n = (target - self.pos).min(ALIGN) as usize;
            self.emit(&ZEROS[..n])?;
        }
        Ok(())
    }

    /// Appends bytes of tensor `name`, which must be the next tensor of the
    /// table (or the one in progress). A tensor may arrive in several parts.
    pub fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let Some(entry) = self.header.tensors.get(self.next) else {
            return Err(self.misuse(format!(
                "tensor `{name}` written after the table is complete"
            )));
        };
        if entry.name != name {
            return Err(self.misuse(format!(
                "expected tensor `{}` next, got `{name}`",
                entry.name
            )));
        }
        let (offset, length) = (entry.offset, entry.length);
        if self.written_in_current + bytes.len() as u64 > length {
            return Err(self.misuse(format!(
                "tensor `{name}` is {length} bytes; {} more would exceed it",
                bytes.len()
            )));
        }
        if self.written_in_current == 0 {
            self.pad_to(offset)?;
        }
        self.emit(bytes)?;
        self.written_in_current += bytes.len() as u64;
        if self.written_in_current == length {
            self.next += 1;
            self.written_in_current = 0;
        }
        Ok(())
    }

    /// Pads, flushes, fsyncs and renames the file to its final name.
    pub fn finish(mut self) -> Result<WrittenFile> {
        if self.next != self.header.tensors.len() {
            let missing = &self.header.tensors[self.next].name;
            return Err(self.misuse(format!("finished before tensor `{missing}` was complete")));
        }
        let end = align_up(self.pos).ok_or_else(|| self.misuse("size overflow".into()))?;
        self.pad_to(end)?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| FormatError::io(&self.tmp, e.into_error()))?;
        file.sync_all().map_err(|e| FormatError::io(&self.tmp, e))?;
        drop(file);
        commit_tmp(&self.tmp, &self.path)?;
        Ok(WrittenFile {
            path: self.path,
            bytes: self.pos,
            sha256: hex_digest(self.hasher),
        })
    }
}
