//! An opened container: the manifest, every stage file's validated header,
//! the tensor views the model computes with, and first-read sha256 checks.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use strata_format::compress::{Decoder, Frames};
use strata_format::header::TensorEntry;
use strata_format::verify::check_file;
use strata_format::{names, DType, FileHeader, Manifest, StageFile, StageKind};

use crate::error::{Result, RunnerError};
use crate::io::IO_ALIGN;
use crate::kernels::Layout;
use crate::remote::Remote;

/// One stage file of the container.
#[derive(Debug, Clone)]
pub struct StageInfo {
    /// File name inside the container.
    pub name: String,
    /// Full path.
    pub path: PathBuf,
    /// Size in bytes.
    pub len: u64,
    /// sha256 from the manifest.
    pub sha256: String,
    /// The validated header.
    pub header: FileHeader,
    /// Where the tensors lie once decoded, when some are compressed.
    pub decoded: Option<DecodedLayout>,
    /// The remote container the file is read from (`None`: a local file).
    pub remote: Option<Arc<Remote>>,
}

/// The bytes the model computes with for a stage whose file holds compressed
/// tensors: every tensor decoded, each at a 4096-aligned offset of one buffer.
#[derive(Debug, Clone)]
pub struct DecodedLayout {
    /// The file's tensor table with offsets into the decoded buffer and no compression.
    pub header: FileHeader,
    /// Size of the decoded buffer.
    pub len: u64,
    /// The frames of each compressed tensor of the file, in the file's tensor
    /// order (`None` for a tensor stored plain); built once at open.
    pub frames: Vec<Option<Frames>>,
}

impl DecodedLayout {
    /// The decoded layout of `header` (the header of the file at `path`), or
    /// `None` when nothing in it is compressed.
    pub fn of(header: &FileHeader, path: &Path) -> Result<Option<DecodedLayout>> {
        if header.tensors.iter().all(|t| t.compression.is_none()) {
            return Ok(None);
        }
        let frames = header
            .tensors
            .iter()
            .map(|t| {
                t.compression
                    .as_ref()
                    .map(|_| Frames::of(t, path))
                    .transpose()
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut h = header.clone();
        let mut cursor = 0u64;
        for t in &mut h.tensors {
            t.offset = cursor;
            t.length = t.encoded_length();
            t.compression = None;
            cursor = cursor
                .checked_add(t.length)
                .and_then(|end| end.checked_next_multiple_of(IO_ALIGN as u64))
                .ok_or_else(|| RunnerError::Tensor {
                    file: path.display().to_string(),
                    tensor: t.name.clone(),
                    reason: format!(
                        "decoded length {} at offset {} of the decoded layout overflows",
                        t.length, t.offset
                    ),
                })?;
        }
        Ok(Some(DecodedLayout {
            header: h,
            len: cursor.max(IO_ALIGN as u64),
            frames,
        }))
    }
}

impl StageInfo {
    /// Size of the bytes the model is handed: the decoded buffer, or the file.
    pub fn view_len(&self) -> u64 {
        self.decoded.as_ref().map_or(self.len, |d| d.len)
    }

    /// Whether some tensor of the file is compressed.
    pub fn compressed(&self) -> bool {
        self.decoded.is_some()
    }

    /// Decodes the whole file's bytes `file` into `out` (the decoded layout).
    pub fn decode_into(&self, file: &[u8], out: &mut [u8], dec: &mut Decoder) -> Result<()> {
        let Some(d) = &self.decoded else {
            return Err(RunnerError::Invalid(format!(
                "{}: nothing to decode",
                self.name
            )));
        };
        if (out.len() as u64) < d.len || file.len() as u64 != self.len {
            return Err(RunnerError::Invalid(format!(
                "{}: {} file bytes and a {}-byte buffer for a {}-byte file decoding to {}",
                self.name,
                file.len(),
                out.len(),
                self.len,
                d.len
            )));
        }
        for ((e, v), fr) in self
            .header
            .tensors
            .iter()
            .zip(&d.header.tensors)
            .zip(&d.frames)
        {
            let outside = || RunnerError::Tensor {
                file: self.name.clone(),
                tensor: e.name.clone(),
                reason: "lies outside the file or its decoded layout".into(),
            };
            let src = slice_range(e.offset, e.length)
                .and_then(|r| file.get(r))
                .ok_or_else(outside)?;
            let dst = slice_range(v.offset, v.length)
                .and_then(|r| out.get_mut(r))
                .ok_or_else(outside)?;
            match fr {
                Some(fr) => dec.decode(e, fr, 0, fr.count(), src, dst, &self.path)?,
                None => dst.copy_from_slice(src),
            }
        }
        Ok(())
    }

    /// Reads `len` bytes at `offset` of the file (small reads such as
    /// embedding rows): from disk, from the cache of a remote container, or
    /// by a ranged GET when the cache does not keep the file.
    pub fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let Some(remote) = &self.remote else {
            return crate::io::read_small(&self.path, offset, len);
        };
        match remote.local(&self.path)? {
            Some(p) => crate::io::read_small(&p, offset, len),
            None => {
                let mut v = vec![0u8; len];
                remote.read_direct(&self.path, offset, &mut v)?;
                Ok(v)
            }
        }
    }

    /// The file's name for messages: its path, or its URL when remote.
    pub fn display(&self) -> String {
        match &self.remote {
            Some(r) => r.object_url(&self.path),
            None => self.path.display().to_string(),
        }
    }

    /// Reads tensor `name` from the file and returns its encoded bytes
    /// (decompressed when stored compressed): for small tensors read once.
    pub fn read_encoded(&self, name: &str) -> Result<Vec<u8>> {
        let e = self.entry(name)?;
        let stored = self.read_at(e.offset, e.length as usize)?;
        if e.compression.is_none() {
            return Ok(stored);
        }
        let mut dec = Decoder::new().map_err(|err| RunnerError::Prefetch(err.to_string()))?;
        Ok(dec.decode_all(e, &stored, &self.path)?)
    }

    /// A view of tensor `name` given its encoded bytes (see [`StageInfo::read_encoded`]).
    pub fn encoded_weight<'a>(&self, bytes: &'a [u8], name: &str) -> Result<Weight<'a>> {
        let e = self.view_entry(name)?;
        if bytes.len() as u64 != e.length {
            return Err(RunnerError::Tensor {
                file: self.name.clone(),
                tensor: name.into(),
                reason: format!("{} bytes, the encoding needs {}", bytes.len(), e.length),
            });
        }
        Weight::new(e, bytes, &self.name)
    }

    /// A tensor's entry in the bytes the model is handed (decoded layout or file).
    pub fn view_entry(&self, tensor: &str) -> Result<&TensorEntry> {
        match &self.decoded {
            Some(d) => d.header.tensor(tensor).ok_or_else(|| RunnerError::Tensor {
                file: self.name.clone(),
                tensor: tensor.into(),
                reason: "missing".into(),
            }),
            None => self.entry(tensor),
        }
    }

    /// The frames of compressed tensor `tensor` (computed when the container
    /// was opened); an error names the tensor when it is not compressed.
    pub fn frames(&self, tensor: &str) -> Result<&Frames> {
        let i = self.header.tensors.iter().position(|t| t.name == tensor);
        i.and_then(|i| self.decoded.as_ref()?.frames.get(i)?.as_ref())
            .ok_or_else(|| RunnerError::Tensor {
                file: self.name.clone(),
                tensor: tensor.into(),
                reason: "missing, or not stored compressed".into(),
            })
    }

    /// A tensor's header entry, or an error naming the file and tensor.
    pub fn entry(&self, tensor: &str) -> Result<&TensorEntry> {
        self.header
            .tensor(tensor)
            .ok_or_else(|| RunnerError::Tensor {
                file: self.name.clone(),
                tensor: tensor.into(),
                reason: "missing".into(),
            })
    }

    /// A view of rows `r0..r1` of tensor `name`, whose encoded bytes start at
    /// the beginning of `bytes`.
    pub fn weight_rows<'a>(
        &self,
        bytes: &'a [u8],
        name: &str,
        r0: usize,
        r1: usize,
    ) -> Result<Weight<'a>> {
        let e = self.view_entry(name)?;
        let w = Weight::new(e, &[], &self.name)?;
        let need = r1
            .checked_sub(r0)
            .filter(|_| r1 <= w.rows)
            .and_then(|n| n.checked_mul(w.row_bytes()))
            .filter(|&need| need <= bytes.len())
            .ok_or_else(|| RunnerError::Tensor {
                file: self.name.clone(),
                tensor: name.into(),
                reason: format!(
                    "rows {r0}..{r1} of {} are outside the {} bytes read",
                    w.rows,
                    bytes.len()
                ),
            })?;
        Ok(Weight {
            rows: r1 - r0,
            bytes: &bytes[..need],
            ..w
        })
    }

    /// A view of tensor `name` inside `data`, the bytes the model is handed
    /// (the whole file, or its decoded layout when it holds compressed tensors).
    pub fn weight<'a>(&self, data: &'a [u8], base: u64, name: &str) -> Result<Weight<'a>> {
        let e = self.view_entry(name)?;
        let bytes = e
            .offset
            .checked_sub(base)
            .and_then(|start| slice_range(start, e.length))
            .and_then(|r| data.get(r))
            .ok_or_else(|| RunnerError::Tensor {
                file: self.name.clone(),
                tensor: name.into(),
                reason: "outside the bytes read".into(),
            })?;
        Weight::new(e, bytes, &self.name)
    }
}

/// The `usize` range of `len` bytes at `offset`, when it is addressable.
pub(crate) fn slice_range(offset: u64, len: u64) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    Some(start..end)
}

/// A tensor's encoded bytes with what is needed to decode them.
#[derive(Debug, Clone, Copy)]
pub struct Weight<'a> {
    /// Encoding.
    pub dtype: DType,
    /// Rows (all dimensions but the last).
    pub rows: usize,
    /// Elements per row.
    pub cols: usize,
    /// Block size of quantized encodings (1 otherwise).
    pub block: usize,
    /// Encoded bytes, `rows * row_bytes()`.
    pub bytes: &'a [u8],
    /// How the rows lie in `bytes`: as stored, or interleaved in groups of 8
    /// for the kernels ([`crate::kernels::interleave`], done to resident
    /// weights when they are loaded).
    pub layout: Layout,
}

impl<'a> Weight<'a> {
    fn new(e: &TensorEntry, bytes: &'a [u8], file: &str) -> Result<Weight<'a>> {
        if e.compression.is_some() {
            return Err(RunnerError::Unsupported(format!(
                "{file}: tensor `{}` is compressed; this runner reads uncompressed tensors only",
                e.name
            )));
        }
        let (rows, cols) = match e.shape.as_slice() {
            [] => (1, 1),
            s => strata_format::codec::rows_cols(s).ok_or_else(|| RunnerError::Tensor {
                file: file.into(),
                tensor: e.name.clone(),
                reason: "shape too large".into(),
            })?,
        };
        Ok(Weight {
            dtype: e.dtype,
            rows,
            cols,
            block: e.block_size.unwrap_or(1) as usize,
            bytes,
            layout: Layout::Rows,
        })
    }

    /// Encoded bytes of one row.
    pub fn row_bytes(&self) -> usize {
        strata_format::codec::row_bytes(self.dtype, self.cols, self.block)
    }

    /// Rows `r0..r1` as their own view; an error when they are not rows of
    /// this view (`r0 > r1`, `r1 > rows`; interleaved, not whole groups of 8
    /// and the rows after them) or its bytes do not hold them.
    pub fn rows_view(&self, r0: usize, r1: usize) -> Result<Weight<'a>> {
        let rb = self.row_bytes();
        // Interleaved rows come in whole groups of 8 (and the rows after).
        let whole = |r: usize| r.is_multiple_of(8) || r == self.rows;
        let grouped = self.layout == Layout::Rows || (whole(r0) && whole(r1));
        let bytes = (r0 <= r1 && r1 <= self.rows && grouped)
            .then(|| Some(r0.checked_mul(rb)?..r1.checked_mul(rb)?))
            .flatten()
            .and_then(|r| self.bytes.get(r))
            .ok_or_else(|| {
                RunnerError::Invalid(format!(
                    "rows {r0}..{r1} of a {}-row weight view of {} bytes",
                    self.rows,
                    self.bytes.len()
                ))
            })?;
        Ok(Weight {
            rows: r1 - r0,
            bytes,
            ..*self
        })
    }

    /// Decodes the whole tensor as a flat f32 vector (for norms and biases);
    /// an error names `file` and `tensor` when the bytes are not
    /// `rows × row_bytes()`.
    pub fn to_f32(&self, file: &str, tensor: &str) -> Result<Vec<f32>> {
        let rb = self.row_bytes();
        let bad = |reason: String| RunnerError::Tensor {
            file: file.into(),
            tensor: tensor.into(),
            reason,
        };
        let n = self
            .rows
            .checked_mul(self.cols)
            .ok_or_else(|| bad(format!("{} rows of {} overflow", self.rows, self.cols)))?;
        if self.rows.checked_mul(rb) != Some(self.bytes.len()) {
            return Err(bad(format!(
                "{} bytes for {} rows of {rb} bytes",
                self.bytes.len(),
                self.rows
            )));
        }
        let mut out = vec![0f32; n];
        let stored = crate::kernels::stored_rows(self);
        for (dst, src) in out
            .chunks_mut(self.cols.max(1))
            .zip(stored.chunks(rb.max(1)))
        {
            strata_format::codec::decode_row(self.dtype, src, self.block, dst).map_err(|e| {
                RunnerError::Tensor {
                    file: file.into(),
                    tensor: tensor.into(),
                    reason: e.to_string(),
                }
            })?;
        }
        Ok(out)
    }
}

/// An opened container.
pub struct Container {
    /// The container directory.
    pub dir: PathBuf,
    /// The validated manifest.
    pub manifest: Manifest,
    /// The embeddings stage.
    pub embed: StageInfo,
    /// The decoder layers, in order.
    pub layers: Vec<StageInfo>,
    /// The final norm / head stage.
    pub head: StageInfo,
    verify: bool,
    verified: Mutex<HashSet<String>>,
    remote: Option<Arc<Remote>>,
}

impl Container {
    /// Opens `dir`: loads the manifest, checks that every stage file exists with
    /// its listed size and a valid header of the right stage, and every other
    /// listed file its size. When `verify`, the other files' sha256 is checked
    /// now and each stage file's the first time its bytes are read.
    ///
    /// A directory attached to a remote container (see [`crate::remote`]) is
    /// opened from its kept manifest, small files and stage headers; its stage
    /// files are read through the remote.
    pub fn open(dir: &Path, verify: bool) -> Result<Container> {
        let manifest = Manifest::load(dir)?;
        let remote = crate::remote::lookup(dir);
        let stage = |name: &str, kind: StageKind, layer: Option<u32>| -> Result<StageInfo> {
            let path = Manifest::resolve(dir, name)?;
            let entry = manifest.file(name).ok_or_else(|| {
                RunnerError::Invalid(format!("{name} is not listed in the manifest"))
            })?;
            // The header and the name errors give: from the remote's kept
            // headers (the object's URL), or from the file.
            let (header, shown) = match &remote {
                Some(r) => (r.header(&path)?, PathBuf::from(r.object_url(&path))),
                None => {
                    if let Some(problem) = check_file(dir, &manifest, name, false) {
                        return Err(RunnerError::Invalid(format!(
                            "{}: {problem} (run `runner verify {}` for a full report)",
                            path.display(),
                            dir.display()
                        )));
                    }
                    (StageFile::open(&path)?.header().clone(), path.clone())
                }
            };
            if header.stage != kind || header.layer != layer {
                return Err(RunnerError::Invalid(format!(
                    "{}: holds stage {:?} {:?}, the manifest expects {kind:?} {layer:?}",
                    shown.display(),
                    header.stage,
                    header.layer
                )));
            }
            let decoded = DecodedLayout::of(&header, &shown)?;
            Ok(StageInfo {
                name: name.into(),
                path,
                len: entry.bytes,
                sha256: entry.sha256.clone(),
                decoded,
                header,
                remote: remote.clone(),
            })
        };
        let embed = stage(&manifest.stages.embed, StageKind::Embed, None)?;
        let head = stage(&manifest.stages.head, StageKind::Head, None)?;
        let layers = manifest
            .stages
            .layers
            .iter()
            .enumerate()
            .map(|(i, n)| stage(n, StageKind::Layer, Some(i as u32)))
            .collect::<Result<Vec<_>>>()?;
        // The other listed files (tokenizer, generation config) are small and
        // read whole by the text side: size always, sha256 when verifying.
        let stages: HashSet<&str> = std::iter::once(&manifest.stages.embed)
            .chain(&manifest.stages.layers)
            .chain(std::iter::once(&manifest.stages.head))
            .map(String::as_str)
            .collect();
        for f in manifest
            .files
            .iter()
            .filter(|f| !stages.contains(f.path.as_str()))
        {
            if let Some(problem) = check_file(dir, &manifest, &f.path, verify) {
                return Err(RunnerError::Invalid(format!(
                    "{}: {problem} (run `runner verify {}` for a full report)",
                    dir.join(&f.path).display(),
                    dir.display()
                )));
            }
        }
        Ok(Container {
            dir: dir.to_path_buf(),
            manifest,
            embed,
            layers,
            head,
            verify,
            verified: Mutex::new(HashSet::new()),
            remote,
        })
    }

    /// The remote container this one is read from, if any.
    pub fn remote(&self) -> Option<&Arc<Remote>> {
        self.remote.as_ref()
    }

    /// Encoded bytes of one row of the output head's weight.
    pub fn head_weight_row_bytes(&self) -> Result<u64> {
        let (stage, name) = self.head_weight_stage();
        let e = stage.entry(name)?;
        let rows = e.shape.first().copied().unwrap_or(1).max(1);
        Ok(e.encoded_length() / rows)
    }

    /// The stage holding the output head's weight, and the tensor's name.
    pub fn head_weight_stage(&self) -> (&StageInfo, &'static str) {
        if self.manifest.architecture.tie_word_embeddings {
            (&self.embed, names::EMBED_TOKENS)
        } else {
            (&self.head, names::HEAD)
        }
    }

    fn needs_check(&self, stage: &StageInfo) -> bool {
        self.verify
            && !self
                .verified
                .lock()
                .map(|v| v.contains(&stage.name))
                .unwrap_or(false)
    }

    fn mark_checked(&self, stage: &StageInfo) {
        if let Ok(mut v) = self.verified.lock() {
            v.insert(stage.name.clone());
        }
    }

    /// Checks the sha256 of a whole file's bytes the first time it is read.
    pub fn check_whole(&self, stage: &StageInfo, bytes: &[u8]) -> Result<()> {
        if !self.needs_check(stage) {
            return Ok(());
        }
        let actual = strata_format::checksum::sha256_hex(bytes);
        if actual != stage.sha256 {
            return Err(RunnerError::Checksum {
                path: stage.path.clone(),
                expected: stage.sha256.clone(),
                actual,
            });
        }
        self.mark_checked(stage);
        Ok(())
    }

    /// Checks a file's sha256 by streaming it from disk (for files that are
    /// only ever read in parts), once per process.
    pub fn check_from_disk(&self, stage: &StageInfo) -> Result<()> {
        if !self.needs_check(stage) {
            return Ok(());
        }
        let actual = match &stage.remote {
            None => strata_format::checksum::sha256_file(&stage.path)?.1,
            Some(remote) => match remote.local(&stage.path)? {
                Some(p) => strata_format::checksum::sha256_file(&p)?.1,
                None => remote.sha256_streamed(&stage.path)?,
            },
        };
        if actual != stage.sha256 {
            return Err(RunnerError::Checksum {
                path: stage.path.clone(),
                expected: stage.sha256.clone(),
                actual,
            });
        }
        self.mark_checked(stage);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_views_outside_the_weight_are_errors() {
        let bytes = [0u8; 24];
        let w = Weight {
            dtype: DType::F32,
            rows: 3,
            cols: 2,
            block: 1,
            bytes: &bytes,
            layout: Layout::Rows,
        };
        let v = w.rows_view(1, 3).unwrap();
        assert_eq!((v.rows, v.bytes.len()), (2, 16));
        assert_eq!(w.rows_view(3, 3).unwrap().rows, 0);
        for (r0, r1) in [(2, 1), (0, 4), (4, 4), (usize::MAX, usize::MAX)] {
            let err = w.rows_view(r0, r1).unwrap_err().to_string();
            assert!(
                err.contains(&format!(
                    "rows {r0}..{r1} of a 3-row weight view of 24 bytes"
                )),
                "{err}"
            );
        }
        assert_eq!(w.to_f32("f", "t").unwrap(), vec![0.0; 6]);
        let short = Weight {
            bytes: &bytes[..20],
            ..w
        };
        let err = short.rows_view(2, 3).unwrap_err().to_string();
        assert!(
            err.contains("rows 2..3 of a 3-row weight view of 20 bytes"),
            "{err}"
        );
        let err = short.to_f32("f", "t").unwrap_err().to_string();
        assert!(err.contains("f: tensor `t`"), "{err}");
        let huge = Weight {
            rows: usize::MAX,
            ..w
        };
        let err = huge.to_f32("f", "t").unwrap_err().to_string();
        assert!(
            err.contains("f: tensor `t`") && err.contains("overflow"),
            "{err}"
        );
    }

    #[test]
    fn slice_ranges_that_overflow_are_none() {
        assert_eq!(slice_range(4, 8), Some(4..12));
        assert_eq!(slice_range(u64::MAX, 1), None);
        assert_eq!(slice_range(1, u64::MAX), None);
    }
}
