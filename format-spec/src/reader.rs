//! Reader of one stage file: validates the prefix and header against the file
//! length before anything else, then reads tensors by positioned reads.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{FormatError, Result};
use crate::header::{FileHeader, Prefix, TensorEntry, PREFIX_LEN};

/// An open, validated stage file.
#[derive(Debug)]
pub struct StageFile {
    path: PathBuf,
    file: File,
    len: u64,
    prefix: Prefix,
    header: FileHeader,
}

impl StageFile {
    /// Opens and validates a stage file. Allocates at most the declared header
    /// length, and only after checking it against the file length.
    pub fn open(path: &Path) -> Result<StageFile> {
        let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
        let len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
        let mut start = [0u8; PREFIX_LEN];
        if len < PREFIX_LEN as u64 {
            return Err(FormatError::BadMagic {
                path: path.to_path_buf(),
            });
        }
        file.read_exact_at(&mut start, 0)
            .map_err(|e| FormatError::io(path, e))?;
        let prefix = Prefix::parse(&start, path)?;
        let header_end = PREFIX_LEN as u64 + u64::from(prefix.header_len);
        if header_end > len {
            return Err(FormatError::BadHeader {
                path: path.to_path_buf(),
                reason: format!(
                    "header of {} bytes runs past the end of the {len}-byte file",
                    prefix.header_len
                ),
            });
        }
        let mut json = vec![0u8; prefix.header_len as usize];
        file.read_exact_at(&mut json, PREFIX_LEN as u64)
            .map_err(|e| FormatError::io(path, e))?;
        let header = FileHeader::parse(prefix, &json, len, path)?;
        Ok(StageFile {
            path: path.to_path_buf(),
            file,
            len,
            prefix,
            header,
        })
    }

    /// The validated header.
    pub fn header(&self) -> &FileHeader {
        &self.header
    }

    /// The fixed prefix (versions, header length).
    pub fn prefix(&self) -> Prefix {
        self.prefix
    }

    /// File length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty (never true for a valid file).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Looks up a tensor, with an error naming the file when absent.
    pub fn entry(&self, name: &str) -> Result<&TensorEntry> {
        self.header
            .tensor(name)
            .ok_or_else(|| FormatError::BadTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
                reason: "no such tensor in this file".into(),
            })
    }

    /// Reads a tensor's stored bytes (compressed bytes if it is compressed).
    pub fn read_stored(&self, name: &str) -> Result<Vec<u8>> {
        let e = self.entry(name)?;
        let mut buf = vec![0u8; e.length as usize];
        self.file
            .read_exact_at(&mut buf, e.offset)
            .map_err(|err| FormatError::io(&self.path, err))?;
        Ok(buf)
    }
}
