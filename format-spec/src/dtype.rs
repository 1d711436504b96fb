//! Element encodings of stored tensors and their exact byte sizes.

use serde::{Deserialize, Serialize};

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
}

impl DType {
    /// Whether this encoding is block-quantized (needs a block size).
    pub fn is_quantized(self) -> bool {
        matches!(self, DType::Nf4 | DType::Int8)
    }

    /// Lower-case name as written in headers and manifests.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
            DType::Nf4 => "nf4",
            DType::Int8 => "int8",
        }
    }

    /// Parses a lower-case encoding name.
    pub fn from_name(name: &str) -> Option<DType> {
        Some(match name {
            "f32" => DType::F32,
            "f16" => DType::F16,
            "bf16" => DType::Bf16,
            "nf4" => DType::Nf4,
            "int8" => DType::Int8,
            _ => return None,
        })
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
        for d in [DType::F32, DType::F16, DType::Bf16, DType::Nf4, DType::Int8] {
            assert_eq!(DType::from_name(d.name()), Some(d));
        }
        assert_eq!(DType::from_name("q4_0"), None);
    }
}
