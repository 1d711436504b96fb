//! Element encodings of stored tensors and their exact byte sizes.

use serde::{Deserialize, Serialize};

use crate::codec::ggml::GgmlType;
use crate::error::CodecError;

/// Smallest allowed quantization block size.
pub const MIN_BLOCK: u32 = 32;
/// Largest allowed quantization block size.
pub const MAX_BLOCK: u32 = 4096;
/// Default quantization block size (elements along the input dimension).
pub const DEFAULT_BLOCK: u32 = 64;

/// How the elements of a stored tensor are encoded (SPEC.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// IEEE 754 binary32, little-endian.
    F32,
    /// IEEE 754 binary16, little-endian.
    F16,
    /// bfloat16 (upper 16 bits of binary32), little-endian.
    Bf16,
    /// 4-bit NormalFloat codes in blocks with an f16 absmax scale.
    Nf4,
    /// Symmetric 8-bit integers in blocks with an f16 scale.
    Int8,
    /// GGML `Q4_0` blocks (SPEC.md §4.6), kept as a GGUF stored them.
    #[serde(rename = "q4_0")]
    Q4_0,
    /// GGML `Q4_1` blocks (SPEC.md §4.6).
    #[serde(rename = "q4_1")]
    Q4_1,
    /// GGML `Q5_0` blocks (SPEC.md §4.6).
    #[serde(rename = "q5_0")]
    Q5_0,
    /// GGML `Q5_1` blocks (SPEC.md §4.6).
    #[serde(rename = "q5_1")]
    Q5_1,
    /// GGML `Q8_0` blocks (SPEC.md §4.6).
    #[serde(rename = "q8_0")]
    Q8_0,
    /// GGML `Q2_K` super-blocks (SPEC.md §4.6).
    #[serde(rename = "q2_k")]
    Q2K,
    /// GGML `Q3_K` super-blocks (SPEC.md §4.6).
    #[serde(rename = "q3_k")]
    Q3K,
    /// GGML `Q4_K` super-blocks (SPEC.md §4.6).
    #[serde(rename = "q4_k")]
    Q4K,
    /// GGML `Q5_K` super-blocks (SPEC.md §4.6).
    #[serde(rename = "q5_k")]
    Q5K,
    /// GGML `Q6_K` super-blocks (SPEC.md §4.6).
    #[serde(rename = "q6_k")]
    Q6K,
}

/// Every encoding, in the order of SPEC.md §4.
pub const ALL_DTYPES: [DType; 15] = [
    DType::F32,
    DType::F16,
    DType::Bf16,
    DType::Nf4,
    DType::Int8,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q2K,
    DType::Q3K,
    DType::Q4K,
    DType::Q5K,
    DType::Q6K,
];

impl DType {
    /// Whether this encoding is block-quantized with a chosen block size
    /// (`nf4`, `int8`: the header's `block_size` says it). The GGML
    /// encodings have their own fixed blocks and no `block_size`
    /// ([`DType::ggml`]).
    pub fn is_quantized(self) -> bool {
        matches!(self, DType::Nf4 | DType::Int8)
    }

    /// The GGML block encoding this is, for the encodings kept from GGUF files.
    pub fn ggml(self) -> Option<GgmlType> {
        Some(match self {
            DType::Q4_0 => GgmlType::Q4_0,
            DType::Q4_1 => GgmlType::Q4_1,
            DType::Q5_0 => GgmlType::Q5_0,
            DType::Q5_1 => GgmlType::Q5_1,
            DType::Q8_0 => GgmlType::Q8_0,
            DType::Q2K => GgmlType::Q2K,
            DType::Q3K => GgmlType::Q3K,
            DType::Q4K => GgmlType::Q4K,
            DType::Q5K => GgmlType::Q5K,
            DType::Q6K => GgmlType::Q6K,
            DType::F32 | DType::F16 | DType::Bf16 | DType::Nf4 | DType::Int8 => return None,
        })
    }

    /// The encoding that keeps a GGML block type as it is.
    pub fn from_ggml(t: GgmlType) -> DType {
        match t {
            GgmlType::Q4_0 => DType::Q4_0,
            GgmlType::Q4_1 => DType::Q4_1,
            GgmlType::Q5_0 => DType::Q5_0,
            GgmlType::Q5_1 => DType::Q5_1,
            GgmlType::Q8_0 => DType::Q8_0,
            GgmlType::Q2K => DType::Q2K,
            GgmlType::Q3K => DType::Q3K,
            GgmlType::Q4K => DType::Q4K,
            GgmlType::Q5K => DType::Q5K,
            GgmlType::Q6K => DType::Q6K,
        }
    }

    /// Lower-case name as written in headers and manifests.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
            DType::Nf4 => "nf4",
            DType::Int8 => "int8",
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
            DType::Q5_0 => "q5_0",
            DType::Q5_1 => "q5_1",
            DType::Q8_0 => "q8_0",
            DType::Q2K => "q2_k",
            DType::Q3K => "q3_k",
            DType::Q4K => "q4_k",
            DType::Q5K => "q5_k",
            DType::Q6K => "q6_k",
        }
    }

    /// Parses a lower-case encoding name.
    pub fn from_name(name: &str) -> Option<DType> {
        ALL_DTYPES.into_iter().find(|d| d.name() == name)
    }

    /// Bytes of one encoded block of `block` elements (quantized types only):
    /// a 2-byte f16 scale followed by the codes.
    pub fn block_bytes(self, block: u32) -> Option<u64> {
        match self {
            DType::Nf4 => Some(2 + u64::from(block) / 2),
            DType::Int8 => Some(2 + u64::from(block)),
            _ => None,
        }
    }

    /// Exact encoded size of a tensor of `shape` (checked arithmetic; `None` on
    /// overflow, on a missing/invalid block size for quantized types, or on a
    /// quantized tensor with no dimensions).
    pub fn encoded_len(self, shape: &[u64], block: Option<u32>) -> Option<u64> {
        let elements = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))?;
        match self {
            DType::F32 => elements.checked_mul(4),
            DType::F16 | DType::Bf16 => elements.checked_mul(2),
            DType::Nf4 | DType::Int8 => {
                let block = block?;
                check_block_size(block).ok()?;
                let (&cols, outer) = shape.split_last()?;
                let rows = outer.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))?;
                let blocks_per_row = cols.div_ceil(u64::from(block));
                rows.checked_mul(blocks_per_row)?
                    .checked_mul(self.block_bytes(block)?)
            }
            _ => {
                // GGML blocks: no block size, and no padded last block.
                let t = self.ggml()?;
                if block.is_some() {
                    return None;
                }
                let (&cols, outer) = shape.split_last()?;
                let rows = outer.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))?;
                let be = t.block_elems() as u64;
                if cols % be != 0 {
                    return None;
                }
                rows.checked_mul(cols / be)?
                    .checked_mul(t.block_bytes() as u64)
            }
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Checks that a block size is allowed: a multiple of 32 in `32..=4096`.
pub fn check_block_size(block: u32) -> Result<(), CodecError> {
    if (MIN_BLOCK..=MAX_BLOCK).contains(&block) && block % 32 == 0 {
        Ok(())
    } else {
        Err(CodecError::BlockSize(block))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(DType::F32.encoded_len(&[3, 5], None), Some(60));
        assert_eq!(DType::Bf16.encoded_len(&[3, 5], None), Some(30));
        // 2 rows of 100 columns, block 64: 2 blocks per row.
        assert_eq!(
            DType::Nf4.encoded_len(&[2, 100], Some(64)),
            Some(2 * 2 * 34)
        );
        assert_eq!(
            DType::Int8.encoded_len(&[2, 100], Some(64)),
            Some(2 * 2 * 66)
        );
        assert_eq!(DType::Nf4.encoded_len(&[2, 100], None), None);
        assert_eq!(DType::Nf4.encoded_len(&[2, 100], Some(48)), None);
        assert_eq!(DType::F32.encoded_len(&[u64::MAX, 2], None), None);
        assert_eq!(DType::Nf4.encoded_len(&[], Some(64)), None);
    }

    #[test]
    fn names_round_trip() {
        for d in ALL_DTYPES {
            assert_eq!(DType::from_name(d.name()), Some(d));
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{}\"", d.name()));
            assert_eq!(serde_json::from_str::<DType>(&json).unwrap(), d);
            if let Some(t) = d.ggml() {
                assert_eq!(DType::from_ggml(t), d);
                assert_eq!(d.name(), t.name().to_ascii_lowercase());
            }
        }
        assert_eq!(DType::from_name("q4_K"), None);
        assert_eq!(DType::from_name("iq4_xs"), None);
    }

    #[test]
    fn ggml_sizes() {
        assert_eq!(DType::Q4K.encoded_len(&[3, 512], None), Some(3 * 2 * 144));
        assert_eq!(DType::Q8_0.encoded_len(&[2, 64], None), Some(2 * 2 * 34));
        // Not a whole number of blocks, or a block size given: refused.
        assert_eq!(DType::Q4K.encoded_len(&[3, 500], None), None);
        assert_eq!(DType::Q4_0.encoded_len(&[3, 64], Some(64)), None);
        assert_eq!(DType::Q6K.encoded_len(&[], None), None);
        assert_eq!(DType::Q6K.encoded_len(&[u64::MAX, 256], None), None);
    }
}
