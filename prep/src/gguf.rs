//! GGUF files (llama.cpp's model format, versions 2 and 3): the header, the
//! metadata key/value pairs and the tensor table, read with checked
//! arithmetic on every count, length and offset a file states, so that a
//! damaged or hostile file is an error naming it, never a panic or a huge
//! allocation.
//!
//! Layout (little-endian): magic `GGUF`, u32 version, u64 tensor count, u64
//! metadata count; the metadata (`string key`, u32 value type, value); the
//! tensor infos (`string name`, u32 dimension count, u64 dimensions
//! fastest-varying first, u32 GGML type, u64 offset); padding to
//! `general.alignment` (default 32); the tensor data, each tensor at its
//! offset from the data start, a multiple of the alignment. Strings are a u64
//! byte length and UTF-8 bytes.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use strata_format::codec::ggml::GgmlType;

use crate::error::{PrepError, Result};

/// The file's first four bytes.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// Upper bound on one string (a key, a token, a chat template).
const MAX_STRING: u64 = 64 << 20;
/// Upper bound on the elements of one array (a vocabulary, merges).
const MAX_ARRAY: u64 = 1 << 24;
/// Upper bound on the metadata pairs and on the tensors.
const MAX_COUNT: u64 = 1 << 20;
/// Upper bound on dimensions of one tensor (ggml's GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;
/// Upper bound on nested arrays.
const MAX_DEPTH: u32 = 2;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Any of the integer types, widened.
    Int(i128),
    /// `f32` or `f64`, widened.
    Float(f64),
    /// A bool.
    Bool(bool),
    /// A UTF-8 string.
    Str(String),
    /// An array (of one element type).
    Array(Vec<Value>),
}

impl Value {
    /// The value as a non-negative integer that fits `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Int(i) => u64::try_from(*i).ok(),
            _ => None,
        }
    }

    /// The value as a number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// How a tensor's elements are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    /// IEEE single precision.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
    /// A GGML block encoding.
    Block(GgmlType),
}

impl TensorType {
    /// The type of a GGML type id, if this reader knows it.
    pub fn from_id(id: u32) -> Option<TensorType> {
        Some(match id {
            0 => TensorType::F32,
            1 => TensorType::F16,
            30 => TensorType::Bf16,
            other => TensorType::Block(GgmlType::from_id(other)?),
        })
    }

    /// llama.cpp's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            TensorType::F32 => "F32",
            TensorType::F16 => "F16",
            TensorType::Bf16 => "BF16",
            TensorType::Block(t) => t.name(),
        }
    }

    /// Bytes of a row of `cols` values, or `None` when `cols` is not a whole
    /// number of blocks or the size overflows.
    pub fn row_bytes(self, cols: u64) -> Option<u64> {
        match self {
            TensorType::F32 => cols.checked_mul(4),
            TensorType::F16 | TensorType::Bf16 => cols.checked_mul(2),
            TensorType::Block(t) => {
                let cols = usize::try_from(cols).ok()?;
                t.row_bytes(cols).and_then(|b| u64::try_from(b).ok())
            }
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Its GGUF name (`blk.0.attn_q.weight`, …).
    pub name: String,
    /// Dimensions, fastest-varying first (`[cols, rows]` for a matrix).
    pub dims: Vec<u64>,
    /// Element storage.
    pub ty: TensorType,
    /// Absolute byte offset of its data in the file.
    pub start: u64,
    /// Bytes of its data.
    pub len: u64,
}

impl Tensor {
    /// The shape outermost first, as safetensors and the container write it.
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }
}

/// A GGUF file's header, metadata and tensor table (the data stays on disk).
#[derive(Debug, Clone)]
pub struct Gguf {
    /// The file.
    pub path: PathBuf,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata by key.
    pub metadata: BTreeMap<String, Value>,
    /// Tensors in table order.
    pub tensors: Vec<Tensor>,
    /// Byte offset of the data section.
    pub data_start: u64,
}

/// Whether the file at `path` starts with the GGUF magic.
pub fn is_gguf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == MAGIC
}

impl Gguf {
    /// Reads the header, metadata and tensor table of the file at `path` and
    /// checks every tensor's data lies within the file.
    pub fn open(path: &Path) -> Result<Gguf> {
        let file = std::fs::File::open(path).map_err(|e| PrepError::io(path, e))?;
        let size = file.metadata().map_err(|e| PrepError::io(path, e))?.len();
        Gguf::parse(std::io::BufReader::with_capacity(1 << 20, file), size, path)
    }

    /// Reads a GGUF file of `size` bytes from its start (`path` names it in
    /// errors), as [`Gguf::open`] does.
    pub fn parse(reader: impl Read, size: u64, path: &Path) -> Result<Gguf> {
        let mut r = Reader {
            inner: reader,
            pos: 0,
            size,
            path,
        };
        let mut magic = [0u8; 4];
        r.exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(r.bad(format!("not a GGUF file (magic {magic:02x?})")));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(r.bad(format!(
                "GGUF version {version} is not supported (2 and 3 are)"
            )));
        }
        let n_tensors = r.count("tensor count")?;
        let n_kv = r.count("metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            let value = r.value(ty, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(r.bad(format!("metadata key `{key}` appears twice")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(r.bad(format!(
                        "general.alignment {v:?} is not a power of two up to 1 MiB"
                    )))
                }
            },
        };
        let mut infos = Vec::new();
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(r.bad(format!(
                    "tensor `{name}` has {n_dims} dimensions (1 to {MAX_DIMS})"
                )));
            }
            let dims = (0..n_dims).map(|_| r.u64()).collect::<Result<Vec<_>>>()?;
            let id = r.u32()?;
            let offset = r.u64()?;
            infos.push((name, dims, id, offset));
        }
        let data_start = r
            .pos
            .div_ceil(alignment)
            .checked_mul(alignment)
            .ok_or_else(|| r.bad("the data section's offset overflows".into()))?;
        let mut tensors = Vec::with_capacity(infos.len());
        let mut names = std::collections::HashSet::new();
        for (name, dims, id, offset) in infos {
            let bad = |reason: String| r.bad(format!("tensor `{name}`: {reason}"));
            if !names.insert(name.clone()) {
                return Err(bad("appears twice in the tensor table".into()));
            }
            let ty = TensorType::from_id(id).ok_or_else(|| {
                bad(format!(
                    "GGML type {id} is not supported (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K to Q6_K are)"
                ))
            })?;
            let rows = dims[1..]
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
            let row = ty.row_bytes(dims[0]).ok_or_else(|| {
                bad(format!(
                    "rows of {} values are not a whole number of {} blocks",
                    dims[0],
                    ty.name()
                ))
            })?;
            let len = row
                .checked_mul(rows)
                .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
            if offset % alignment != 0 {
                return Err(bad(format!(
                    "offset {offset} is not a multiple of the alignment {alignment}"
                )));
            }
            let start = data_start
                .checked_add(offset)
                .ok_or_else(|| bad("offset overflows".into()))?;
            match start.checked_add(len) {
                Some(end) if end <= size => {}
                _ => {
                    return Err(bad(format!(
                    "data at {start}..{} lies past the end of the file ({size} bytes): truncated?",
                    start.saturating_add(len)
                )))
                }
            }
            tensors.push(Tensor {
                name,
                dims,
                ty,
                start,
                len,
            });
        }
        Ok(Gguf {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            data_start,
        })
    }

    /// The metadata value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// A bounded, position-tracking reader of the header.
struct Reader<'a, R> {
    inner: R,
    pos: u64,
    size: u64,
    path: &'a Path,
}

impl<R: Read> Reader<'_, R> {
    fn bad(&self, reason: String) -> PrepError {
        PrepError::Gguf {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<()> {
        self.inner.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.bad(format!("the header ends early (at byte {})", self.pos))
            } else {
                PrepError::io(self.path, e)
            }
        })?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.exact(&mut b)?;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn count(&mut self, what: &str) -> Result<u64> {
        let n = self.u64()?;
        if n > MAX_COUNT {
            return Err(self.bad(format!("{what} {n} is above {MAX_COUNT}")));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String> {
        let len = self.u64()?;
        if len > MAX_STRING || len > self.size.saturating_sub(self.pos) {
            return Err(self.bad(format!(
                "a string of {len} bytes at byte {} does not fit the file",
                self.pos
            )));
        }
        let mut b = vec![0u8; len as usize];
        self.exact(&mut b)?;
        String::from_utf8(b)
            .map_err(|_| self.bad(format!("a string before byte {} is not UTF-8", self.pos)))
    }

    fn value(&mut self, ty: u32, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::Int(self.bytes::<1>()?[0].into()),
            1 => Value::Int((self.bytes::<1>()?[0] as i8).into()),
            2 => Value::Int(u16::from_le_bytes(self.bytes()?).into()),
            3 => Value::Int(i16::from_le_bytes(self.bytes()?).into()),
            4 => Value::Int(self.u32()?.into()),
            5 => Value::Int(i32::from_le_bytes(self.bytes()?).into()),
            6 => Value::Float(f32::from_le_bytes(self.bytes()?).into()),
            7 => match self.bytes::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.bad(format!("a bool holds {b}"))),
            },
            8 => Value::Str(self.string()?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(self.bad("arrays nest too deeply".into()));
                }
                let elem = self.u32()?;
                let n = self.u64()?;
                // Every element takes at least one byte of the file.
                if n > MAX_ARRAY || n > self.size.saturating_sub(self.pos) {
                    return Err(self.bad(format!(
                        "an array of {n} elements at byte {} does not fit the file",
                        self.pos
                    )));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::Int(self.u64()?.into()),
            11 => Value::Int(i64::from_le_bytes(self.bytes()?).into()),
            12 => Value::Float(f64::from_le_bytes(self.bytes()?)),
            other => return Err(self.bad(format!("unknown metadata value type {other}"))),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a GGUF v3 file: `kv` as (key, type id, encoded value bytes),
    /// tensors as (name, dims, type id, data).
    pub(crate) fn write(
        path: &Path,
        kv: &[(&str, u32, Vec<u8>)],
        tensors: &[(&str, Vec<u64>, u32, Vec<u8>)],
    ) {
        let s = |v: &mut Vec<u8>, t: &str| {
            v.extend((t.len() as u64).to_le_bytes());
            v.extend(t.as_bytes());
        };
        let mut b = Vec::new();
        b.extend(MAGIC);
        b.extend(3u32.to_le_bytes());
        b.extend((tensors.len() as u64).to_le_bytes());
        b.extend((kv.len() as u64).to_le_bytes());
        for (k, ty, v) in kv {
            s(&mut b, k);
            b.extend(ty.to_le_bytes());
            b.extend(v);
        }
        let mut offset = 0u64;
        for (name, dims, ty, data) in tensors {
            s(&mut b, name);
            b.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(ty.to_le_bytes());
            b.extend(offset.to_le_bytes());
            offset += (data.len() as u64).div_ceil(32) * 32;
        }
        b.resize(b.len().div_ceil(32) * 32, 0);
        for (_, _, _, data) in tensors {
            b.extend(data);
            b.resize(b.len().div_ceil(32) * 32, 0);
        }
        std::fs::write(path, b).unwrap();
    }

    fn string(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend(s.as_bytes());
        v
    }

    #[test]
    fn reads_metadata_and_tensors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.gguf");
        let mut tokens = 8u32.to_le_bytes().to_vec(); // an array of strings
        tokens.extend(2u64.to_le_bytes());
        tokens.extend(string("<s>"));
        tokens.extend(string("a"));
        write(
            &p,
            &[
                ("general.architecture", 8, string("llama")),
                ("llama.block_count", 4, 2u32.to_le_bytes().to_vec()),
                ("llama.rope.freq_base", 6, 10000f32.to_le_bytes().to_vec()),
                ("tokenizer.ggml.add_bos_token", 7, vec![1]),
                ("tokenizer.ggml.tokens", 9, tokens),
            ],
            &[
                ("output_norm.weight", vec![4], 0, vec![0u8; 16]),
                ("blk.0.attn_q.weight", vec![32, 2], 8, vec![0u8; 68]),
            ],
        );
        assert!(is_gguf(&p));
        let g = Gguf::open(&p).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(
            g.get("general.architecture").unwrap().as_str(),
            Some("llama")
        );
        assert_eq!(g.get("llama.block_count").unwrap().as_u64(), Some(2));
        assert_eq!(
            g.get("llama.rope.freq_base").unwrap().as_f64(),
            Some(10000.0)
        );
        assert_eq!(
            g.get("tokenizer.ggml.add_bos_token").unwrap().as_bool(),
            Some(true)
        );
        assert_eq!(
            g.get("tokenizer.ggml.tokens")
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let q = g.tensor("blk.0.attn_q.weight").unwrap();
        assert_eq!(
            (q.shape(), q.ty, q.len),
            (vec![2, 32], TensorType::Block(GgmlType::Q8_0), 68)
        );
        assert_eq!(q.start % 32, 0);
        assert_eq!(q.start, g.tensor("output_norm.weight").unwrap().start + 32);
    }

    #[test]
    fn fuzz_seed_is_a_valid_file() {
        let p =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz/corpus/gguf_header/small-v3");
        let g = Gguf::open(&p).unwrap();
        assert_eq!(g.tensors.len(), 3);
        assert_eq!(
            g.tensor("blk.0.ffn_down.weight").unwrap().ty,
            TensorType::Block(GgmlType::Q4K)
        );
    }

    #[test]
    fn damaged_files_are_named_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.gguf");
        let err = |p: &Path| Gguf::open(p).unwrap_err().to_string();
        // A tensor whose data runs past the end.
        write(&p, &[], &[("t", vec![32, 4], 8, vec![0u8; 34])]);
        let e = err(&p);
        assert!(
            e.contains("m.gguf") && e.contains("`t`") && e.contains("past the end"),
            "{e}"
        );
        // Rows that are not whole blocks.
        write(&p, &[], &[("t", vec![30], 8, vec![0u8; 34])]);
        assert!(err(&p).contains("whole number"), "{}", err(&p));
        // An unknown type, an unknown value type, a huge string, a bad magic, truncation.
        write(&p, &[], &[("t", vec![4], 99, vec![0u8; 16])]);
        assert!(err(&p).contains("GGML type 99"));
        write(&p, &[("k", 42, vec![])], &[]);
        assert!(err(&p).contains("value type 42"));
        write(&p, &[("k", 8, u64::MAX.to_le_bytes().to_vec())], &[]);
        assert!(err(&p).contains("does not fit"));
        std::fs::write(&p, b"GGUX\x03\0\0\0").unwrap();
        assert!(err(&p).contains("not a GGUF file"));
        std::fs::write(&p, b"GGUF\x03\0\0\0\x01").unwrap();
        assert!(err(&p).contains("ends early"));
        let mut huge = b"GGUF\x03\0\0\0".to_vec();
        huge.extend(u64::MAX.to_le_bytes());
        std::fs::write(&p, huge).unwrap();
        assert!(err(&p).contains("tensor count"));
    }
}
