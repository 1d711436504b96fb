//! Reference encoders and decoders for every element encoding of SPEC.md §4.
//!
//! Encoders take `f32` values laid out row-major with shape `[rows, cols]`
//! (for quantized types the last dimension is `cols`, every other dimension is
//! folded into `rows`). Encoding runs rows in parallel with rayon; decoding is
//! a plain scalar reference that runners may replace with fused kernels.

pub mod float;
pub mod ggml;
pub mod int8;
pub mod nf4;

use rayon::prelude::*;

use crate::dtype::{check_block_size, DType};
use crate::error::CodecError;

/// Splits a shape into `(rows, cols)`: `cols` is the last dimension.
pub fn rows_cols(shape: &[u64]) -> Option<(usize, usize)> {
    let (&cols, outer) = shape.split_last()?;
    let rows = outer.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))?;
    Some((usize::try_from(rows).ok()?, usize::try_from(cols).ok()?))
}

/// Refuses the first NaN or infinity of `data`, naming its index.
pub fn check_finite(data: &[f32]) -> Result<(), CodecError> {
    match data.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(CodecError::NonFinite {
            index,
            value: data[index],
        }),
        None => Ok(()),
    }
}

/// Encodes `data` (row-major, `shape`) into `dtype`. `block` is required for
/// quantized encodings and ignored otherwise. Non-finite inputs are refused.
pub fn encode(
    dtype: DType,
    data: &[f32],
    shape: &[u64],
    block: Option<u32>,
) -> Result<Vec<u8>, CodecError> {
    let elements = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(usize::MAX);
    if elements != data.len() {
        return Err(CodecError::Length {
            what: "elements",
            expected: elements,
            actual: data.len(),
        });
    }
    check_finite(data)?;
    match dtype {
        DType::F32 => Ok(float::encode_f32(data)),
        DType::F16 => float::encode_f16(data),
        DType::Bf16 => Ok(float::encode_bf16(data)),
        DType::Nf4 | DType::Int8 => {
            let block = block.ok_or(CodecError::BlockSize(0))?;
            check_block_size(block)?;
            let (rows, cols) = rows_cols(shape).ok_or(CodecError::Length {
                what: "dimensions",
                expected: 1,
                actual: 0,
            })?;
            encode_blocks(dtype, data, rows, cols, block as usize)
        }
        _ => Err(CodecError::NotEncodable {
            dtype: dtype.name(),
        }),
    }
}

fn encode_blocks(
    dtype: DType,
    data: &[f32],
    rows: usize,
    cols: usize,
    block: usize,
) -> Result<Vec<u8>, CodecError> {
    let row_bytes = row_bytes(dtype, cols, block);
    let mut out = vec![0u8; rows * row_bytes];
    if rows == 0 || cols == 0 {
        return Ok(out);
    }
    out.par_chunks_mut(row_bytes)
        .zip(data.par_chunks(cols))
        .enumerate()
        .try_for_each(|(r, (dst, src))| {
            let res = match dtype {
                DType::Nf4 => nf4::encode_row(src, block, dst),
                _ => int8::encode_row(src, block, dst),
            };
            // Report element indices relative to the whole tensor.
            res.map_err(|e| offset_error(e, r * cols))
        })?;
    Ok(out)
}

fn offset_error(e: CodecError, base: usize) -> CodecError {
    match e {
        CodecError::ScaleOverflow { index, absmax } => CodecError::ScaleOverflow {
            index: index + base,
            absmax,
        },
        other => other,
    }
}

/// Checks that a quantized row of `values` elements, in blocks of `block`
/// elements stored in `block_bytes` bytes each, takes exactly `bytes` bytes
/// (whole blocks, the last one padded), and that `block` is usable.
pub(crate) fn check_quantized_row(
    block: usize,
    block_bytes: usize,
    values: usize,
    bytes: usize,
) -> Result<(), CodecError> {
    if block == 0 || block % 2 != 0 {
        return Err(CodecError::BlockSize(
            u32::try_from(block).unwrap_or(u32::MAX),
        ));
    }
    let expected = values.div_ceil(block).saturating_mul(block_bytes);
    if bytes != expected {
        return Err(CodecError::Length {
            what: "bytes",
            expected,
            actual: bytes,
        });
    }
    Ok(())
}

/// Bytes of one encoded row of `cols` elements of `dtype` (`block` is the
/// block size of `nf4` and `int8`, ignored otherwise).
pub fn row_bytes(dtype: DType, cols: usize, block: usize) -> usize {
    let per_block = match dtype {
        DType::Nf4 => 2 + block / 2,
        DType::Int8 => 2 + block,
        DType::F32 => return cols.saturating_mul(4),
        DType::F16 | DType::Bf16 => return cols.saturating_mul(2),
        _ => match dtype.ggml() {
            // A partial last block is refused by the decoder (SPEC.md §4.6).
            Some(t) => {
                return cols
                    .div_ceil(t.block_elems())
                    .saturating_mul(t.block_bytes())
            }
            None => return usize::MAX,
        },
    };
    cols.div_ceil(block).saturating_mul(per_block)
}

/// Decodes one row of `out.len()` elements from its encoded bytes.
pub fn decode_row(
    dtype: DType,
    bytes: &[u8],
    block: usize,
    out: &mut [f32],
) -> Result<(), CodecError> {
    let expected = row_bytes(dtype, out.len(), block.max(1));
    if bytes.len() != expected {
        return Err(CodecError::Length {
            what: "bytes",
            expected,
            actual: bytes.len(),
        });
    }
    match dtype {
        DType::F32 => float::decode_f32(bytes, out),
        DType::F16 => float::decode_f16(bytes, out),
        DType::Bf16 => float::decode_bf16(bytes, out),
        DType::Nf4 => nf4::decode_row(bytes, block, out)?,
        DType::Int8 => int8::decode_row(bytes, block, out)?,
        // Every other encoding is a GGML one.
        _ => dtype
            .ggml()
            .ok_or(CodecError::NotEncodable {
                dtype: dtype.name(),
            })?
            .decode(bytes, out)?,
    }
    Ok(())
}

/// Decodes a whole tensor of `shape` into `f32`.
pub fn decode(
    dtype: DType,
    bytes: &[u8],
    shape: &[u64],
    block: Option<u32>,
) -> Result<Vec<f32>, CodecError> {
    let (rows, cols, block) = if dtype.is_quantized() {
        let b = block.ok_or(CodecError::BlockSize(0))?;
        check_block_size(b)?;
        let (rows, cols) = rows_cols(shape).ok_or(CodecError::Length {
            what: "dimensions",
            expected: 1,
            actual: 0,
        })?;
        (rows, cols, b as usize)
    } else {
        let n = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(usize::MAX);
        (1, n, 1)
    };
    let rb = row_bytes(dtype, cols, block);
    let total = rows.saturating_mul(rb);
    if bytes.len() != total {
        return Err(CodecError::Length {
            what: "bytes",
            expected: total,
            actual: bytes.len(),
        });
    }
    let n = rows.checked_mul(cols).ok_or(CodecError::Length {
        what: "elements",
        expected: usize::MAX,
        actual: rows,
    })?;
    let mut out = vec![0f32; n];
    if cols == 0 {
        return Ok(out);
    }
    out.par_chunks_mut(cols)
        .zip(bytes.par_chunks(rb))
        .try_for_each(|(dst, src)| decode_row(dtype, src, block, dst))?;
    Ok(out)
}

/// Reads the little-endian f16 scale at the start of a block.
pub(crate) fn block_scale(bytes: &[u8], block_index: usize) -> Result<f32, CodecError> {
    let d = half::f16::from_le_bytes([bytes[0], bytes[1]]).to_f32();
    if d.is_finite() && d >= 0.0 {
        Ok(d)
    } else {
        Err(CodecError::BadScale {
            block: block_index,
            scale: d,
        })
    }
}

/// Converts a block's absolute maximum into its stored f16 scale.
pub(crate) fn scale_to_f16(
    value: f32,
    block_start: usize,
    absmax: f32,
) -> Result<half::f16, CodecError> {
    let d = half::f16::from_f32(value);
    if d.is_finite() {
        Ok(d)
    } else {
        Err(CodecError::ScaleOverflow {
            index: block_start,
            absmax,
        })
    }
}
