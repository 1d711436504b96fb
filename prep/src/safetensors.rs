//! A hardened reader of safetensors files: the header is parsed and checked
//! (bounded length, no duplicate names, checked arithmetic, offsets contiguous
//! and in bounds, sizes equal to shape × element size) before any offset is
//! used, and the data is memory-mapped so a tensor is read without copying.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, UncheckedAdvice};
use rayon::prelude::*;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use strata_format::codec::ggml::GgmlType;
use strata_format::dtype::{DType, ALL_DTYPES};

use crate::error::{PrepError, Result};

/// Largest header accepted (the limit of the reference implementation).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// The element types `prep` converts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceDType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    Bf16,
    /// A GGML block encoding (GGUF sources).
    Ggml(GgmlType),
}

impl SourceDType {
    /// Bytes of a row of `cols` elements, or `None` when `cols` is not a
    /// whole number of GGML blocks or the size overflows.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        match self {
            SourceDType::F32 => cols.checked_mul(4),
            SourceDType::F16 | SourceDType::Bf16 => cols.checked_mul(2),
            SourceDType::Ggml(t) => t.row_bytes(cols),
        }
    }

    /// Elements held by `bytes` stored bytes (whole elements or blocks).
    pub fn elements(self, bytes: usize) -> usize {
        match self {
            SourceDType::F32 => bytes / 4,
            SourceDType::F16 | SourceDType::Bf16 => bytes / 2,
            SourceDType::Ggml(t) => bytes / t.block_bytes() * t.block_elems(),
        }
    }

    /// The container encoding that stores these bytes unchanged.
    pub fn kept(self) -> DType {
        match self {
            SourceDType::F32 => DType::F32,
            SourceDType::F16 => DType::F16,
            SourceDType::Bf16 => DType::Bf16,
            SourceDType::Ggml(t) => DType::from_ggml(t),
        }
    }
}

/// Element size of every dtype the safetensors format defines, or `None`
/// for a name it does not define.
fn element_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// One tensor of a safetensors file, with its absolute position in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name as stored.
    pub name: String,
    /// Element type name as stored (`BF16`, `F32`, ...).
    pub dtype: String,
    /// Shape, outermost first.
    pub shape: Vec<u64>,
    /// Absolute offset of the first data byte in the file.
    pub start: u64,
    /// Number of data bytes.
    pub len: u64,
}

impl TensorInfo {
    /// The element type, if it is one `prep` converts.
    pub fn source_dtype(&self) -> Option<SourceDType> {
        match self.dtype.as_str() {
            "F32" => Some(SourceDType::F32),
            "F16" => Some(SourceDType::F16),
            "BF16" => Some(SourceDType::Bf16),
            other => ALL_DTYPES
                .iter()
                .filter_map(|d| d.ggml())
                .find(|t| t.name() == other)
                .map(SourceDType::Ggml),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// The header's tensor entries in file order; duplicate names are an error
/// (a JSON map would silently keep only the last one).
struct RawHeader(Vec<(String, RawEntry)>);

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawHeader;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object mapping tensor names to entries")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<RawHeader, A::Error> {
                let mut seen = HashSet::new();
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(de::Error::custom(format!("duplicate entry {key:?}")));
                    }
                    if key == "__metadata__" {
                        map.next_value::<IgnoredAny>()?;
                    } else {
                        let entry: RawEntry = map
                            .next_value()
                            .map_err(|e| de::Error::custom(format!("tensor {key:?}: {e}")))?;
                        out.push((key, entry));
                    }
                }
                Ok(RawHeader(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Parses and validates a safetensors header. `json` is the header text,
/// `data_len` the number of bytes after it; returned offsets are absolute
/// (they include the 8-byte length prefix and the header), sorted by offset.
pub fn parse_header(json: &[u8], data_len: u64, path: &Path) -> Result<Vec<TensorInfo>> {
    let bad = |reason: String| PrepError::Safetensors {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::str::from_utf8(json).map_err(|e| bad(format!("header is not UTF-8: {e}")))?;
    let RawHeader(entries) =
        serde_json::from_str(text).map_err(|e| bad(format!("header is not valid: {e}")))?;
    let base = 8 + json.len() as u64;
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, e) in entries {
        let size = element_size(&e.dtype)
            .ok_or_else(|| bad(format!("tensor `{name}` has unknown dtype {:?}", e.dtype)))?;
        let expected = e
            .shape
            .iter()
            .try_fold(size, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(format!("tensor `{name}`: shape {:?} overflows", e.shape)))?;
        let [begin, end] = e.data_offsets;
        if end < begin || end - begin != expected {
            return Err(bad(format!(
                "tensor `{name}`: data_offsets [{begin}, {end}] hold {} bytes but shape {:?} of {} needs {expected}",
                end.wrapping_sub(begin),
                e.shape,
                e.dtype
            )));
        }
        tensors.push(TensorInfo {
            name,
            dtype: e.dtype,
            shape: e.shape,
            start: begin,
            len: expected,
        });
    }
    tensors.sort_by_key(|t| (t.start, t.len));
    let mut cursor = 0u64;
    for t in &tensors {
        if t.start != cursor {
            return Err(bad(format!(
                "tensor `{}` starts at data byte {} but the previous tensor ends at {cursor} (offsets must be contiguous)",
                t.name, t.start
            )));
        }
        cursor = t.start + t.len;
    }
    if cursor != data_len {
        let what = if cursor > data_len {
            "truncated"
        } else {
            "has trailing bytes"
        };
        return Err(bad(format!(
            "{what}: the header describes {cursor} bytes of tensor data, the file holds {data_len}"
        )));
    }
    for t in &mut tensors {
        t.start += base;
    }
    Ok(tensors)
}

/// An open, validated, memory-mapped safetensors file.
pub struct Shard {
    path: PathBuf,
    tensors: Vec<TensorInfo>,
    map: Mmap,
}

impl fmt::Debug for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shard")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Shard {
    /// Opens `path`, validates its header against the file length and maps it.
    pub fn open(path: &Path) -> Result<Shard> {
        let bad = |reason: String| PrepError::Safetensors {
            path: path.to_path_buf(),
            reason,
        };
        let mut file = File::open(path).map_err(|e| PrepError::io(path, e))?;
        let len = file.metadata().map_err(|e| PrepError::io(path, e))?.len();
        if len < 8 {
            return Err(bad(format!(
                "{len} bytes, shorter than the 8-byte header length"
            )));
        }
        let mut prefix = [0u8; 8];
        file.read_exact(&mut prefix)
            .map_err(|e| PrepError::io(path, e))?;
        let header_len = u64::from_le_bytes(prefix);
        if header_len > MAX_HEADER_LEN {
            return Err(bad(format!(
                "header length {header_len} is above the {MAX_HEADER_LEN}-byte limit"
            )));
        }
        if 8 + header_len > len {
            return Err(bad(format!(
                "truncated: header length {header_len} runs past the end of the {len}-byte file"
            )));
        }
        let mut json = vec![0u8; header_len as usize];
        file.read_exact(&mut json)
            .map_err(|e| PrepError::io(path, e))?;
        let tensors = parse_header(&json, len - 8 - header_len, path)?;
        let map = map_file(&file, path, len, bad)?;
        Ok(Shard {
            path: path.to_path_buf(),
            tensors,
            map,
        })
    }

    /// Maps a weight file of another format (a GGUF) whose tensor table the
    /// caller has read and checked: `tensors` with absolute offsets, each
    /// within the file's `len` bytes (refused otherwise).
    pub fn map_with(path: &Path, len: u64, tensors: Vec<TensorInfo>) -> Result<Shard> {
        if let Some(t) = tensors
            .iter()
            .find(|t| t.start.checked_add(t.len).is_none_or(|end| end > len))
        {
            return Err(PrepError::Gguf {
                path: path.to_path_buf(),
                reason: format!("tensor `{}` lies past the end of the file", t.name),
            });
        }
        let file = File::open(path).map_err(|e| PrepError::io(path, e))?;
        let map = map_file(&file, path, len, |reason| PrepError::Gguf {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(Shard {
            path: path.to_path_buf(),
            tensors,
            map,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The stored bytes of `t`, which must be a tensor of this shard.
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        &self.map[t.start as usize..(t.start + t.len) as usize]
    }

    /// Drops the mapped pages of a byte range of the file from this process
    /// (they stay in the page cache), so converted data stops counting as
    /// resident memory. `range` is in absolute file offsets.
    pub fn release(&self, start: u64, len: u64) {
        let end = start.checked_add(len);
        if len == 0 || end.is_none_or(|end| end > self.map.len() as u64) {
            return;
        }
        // SAFETY: the range lies inside the mapping (checked just above;
        // madvise rounds it out to whole pages, still of this mapping, whose
        // end is page-aligned). The mapping is a read-only shared file
        // mapping: after MADV_DONTNEED its pages are re-read from the
        // (unchanged) file on the next access, so no slice ever observes
        // different contents. A failure only returns an error, logged below.
        let res = unsafe {
            self.map
                .unchecked_advise_range(UncheckedAdvice::DontNeed, start as usize, len as usize)
        };
        if let Err(e) = res {
            log::debug!("{}: madvise(DONTNEED) failed: {e}", self.path.display());
        }
    }
}

/// Maps the whole of `file` (at `path`) read-only, refusing it (through
/// `bad`) unless it is still the `len` bytes its header was checked against.
fn map_file(
    file: &File,
    path: &Path,
    len: u64,
    bad: impl FnOnce(String) -> PrepError,
) -> Result<Mmap> {
    // SAFETY: memmap2 requires that the file not change while mapped. The
    // mapping is read-only and prep never writes its sources; a source file
    // changed by another process while we convert it is outside what prep
    // can defend against (a size change is caught just below). On the error
    // path the mapping is dropped before anything reads it.
    let map = unsafe { Mmap::map(file) }.map_err(|e| PrepError::io(path, e))?;
    if map.len() as u64 != len {
        return Err(bad("the file changed size while being opened".into()));
    }
    Ok(map)
}

/// Converts stored little-endian elements to `f32`, in parallel. `out` must
/// hold exactly `dtype.elements(bytes.len())` elements.
pub fn to_f32(dtype: SourceDType, bytes: &[u8], out: &mut [f32]) {
    const GRAIN: usize = 1 << 16;
    // GGML blocks are never cut: a grain is a whole number of them.
    let unit = match dtype {
        SourceDType::Ggml(t) => t.block_elems(),
        _ => 1,
    };
    let grain = GRAIN.div_ceil(unit) * unit;
    let grain_bytes = dtype.row_bytes(grain).unwrap_or(usize::MAX);
    out.par_chunks_mut(grain)
        .zip(bytes.par_chunks(grain_bytes))
        .for_each(|(o, b)| convert_slice(dtype, b, o));
}

/// Serial conversion of one slice (see [`to_f32`]).
pub fn convert_slice(dtype: SourceDType, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        SourceDType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        SourceDType::F16 => f16_to_f32(bytes, out),
        // Whole blocks, as callers cut them; a length mismatch gives NaNs,
        // which the encoders refuse as non-finite values.
        SourceDType::Ggml(t) => {
            if t.decode(bytes, out).is_err() {
                out.fill(f32::NAN);
            }
        }
        SourceDType::Bf16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
            }
        }
    }
}

/// Little-endian f16 bytes to f32, with the F16C instructions when the CPU has them.
fn f16_to_f32(bytes: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU supports F16C and AVX (checked just above).
        unsafe { f16_to_f32_f16c(bytes, out) };
        return;
    }
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
    }
}

/// [`f16_to_f32`] with the F16C instructions.
///
/// # Safety
///
/// The CPU must support F16C and AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "f16c,avx")]
unsafe fn f16_to_f32_f16c(bytes: &[u8], out: &mut [f32]) {
    use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
    let n = out.len().min(bytes.len() / 2);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: 16 bytes from 2·i and 8 floats from i are in bounds (i + 8 ≤ n);
        // the unaligned load and store instructions accept any address.
        unsafe {
            let h = _mm_loadu_si128(bytes.as_ptr().add(2 * i).cast::<__m128i>());
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
        i += 8;
    }
    for (o, c) in out[i..n].iter_mut().zip(bytes[2 * i..].chunks_exact(2)) {
        *o = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn header(json: &str, data_len: u64) -> Result<Vec<TensorInfo>> {
        parse_header(json.as_bytes(), data_len, Path::new("x.safetensors"))
    }

    #[test]
    fn parses_and_sorts() {
        let h = r#"{"__metadata__":{"format":"pt"},
            "b":{"dtype":"BF16","shape":[2,3],"data_offsets":[8,20]},
            "a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let t = header(h, 20).unwrap();
        assert_eq!(t[0].name, "a");
        assert_eq!(t[0].start, 8 + h.len() as u64);
        assert_eq!(t[1].name, "b");
        assert_eq!(t[1].len, 12);
        assert_eq!(t[1].source_dtype(), Some(SourceDType::Bf16));
    }

    #[test]
    fn rejects_bad_headers() {
        let cases = [
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#,
                16,
                "duplicate",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                8,
                "needs 12",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                12,
                "contiguous",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                4,
                "truncated",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                9,
                "trailing",
            ),
            (
                r#"{"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}}"#,
                8,
                "unknown dtype",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#,
                8,
                "overflows",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
                8,
                "data_offsets",
            ),
            (r#"[1,2]"#, 0, "not valid"),
            (r#"{"a":{"dtype":"F32","shape":[2]}}"#, 8, "not valid"),
        ];
        for (json, len, want) in cases {
            let e = header(json, len).unwrap_err().to_string();
            assert!(e.contains(want), "{json}: {e}");
            assert!(e.contains("x.safetensors"), "{e}");
        }
    }

    fn write_file(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f.flush().unwrap();
        f
    }

    #[test]
    fn open_checks_lengths() {
        let json = br#"{"w":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}"#;
        let mut good = (json.len() as u64).to_le_bytes().to_vec();
        good.extend_from_slice(json);
        good.extend_from_slice(&half::f16::from_f32(1.5).to_le_bytes());
        good.extend_from_slice(&half::f16::from_f32(-2.0).to_le_bytes());
        let f = write_file(&good);
        let s = Shard::open(f.path()).unwrap();
        let t = &s.tensors()[0];
        let mut out = [0f32; 2];
        to_f32(t.source_dtype().unwrap(), s.data(t), &mut out);
        assert_eq!(out, [1.5, -2.0]);
        s.release(t.start, t.len);
        assert_eq!(s.data(t).len(), 4);

        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        let e = Shard::open(write_file(&huge).path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("above the"), "{e}");

        let mut past = 1000u64.to_le_bytes().to_vec();
        past.extend_from_slice(b"{}");
        let e = Shard::open(write_file(&past).path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("runs past the end"), "{e}");

        let e = Shard::open(write_file(b"abc").path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("shorter"), "{e}");

        let e = Shard::open(write_file(&good[..good.len() - 1]).path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn f16_conversion_matches_half_on_every_value() {
        // A leading byte makes the f16 data unaligned, as it may be in a shard.
        let mut bytes = vec![0xABu8];
        bytes.extend((0..=u16::MAX).flat_map(|b| b.to_le_bytes()));
        for len in [65536usize, 13, 8, 7] {
            let src = &bytes[1..1 + 2 * len];
            let mut out = vec![0f32; len];
            convert_slice(SourceDType::F16, src, &mut out);
            for (i, o) in out.iter().enumerate() {
                let want =
                    half::f16::from_bits(u16::from_le_bytes([src[2 * i], src[2 * i + 1]])).to_f32();
                assert!(
                    o.to_bits() == want.to_bits() || (o.is_nan() && want.is_nan()),
                    "{i}"
                );
            }
        }
    }

    #[test]
    fn conversions() {
        let v = [1.0f32, -0.5, 3.25, 0.0];
        let f32b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let f16b: Vec<u8> = v
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect();
        let bf16b: Vec<u8> = v
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect();
        for (d, b) in [
            (SourceDType::F32, &f32b),
            (SourceDType::F16, &f16b),
            (SourceDType::Bf16, &bf16b),
        ] {
            let mut out = [0f32; 4];
            to_f32(d, b, &mut out);
            assert_eq!(out, v, "{d:?}");
        }
    }
}
