//! Unquantized encodings: f32, f16 and bf16, all little-endian.

use half::{bf16, f16};

use crate::error::CodecError;

/// Encodes as little-endian f32.
pub fn encode_f32(data: &[f32]) -> Vec<u8> {
    data.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Encodes as little-endian f16 (round to nearest even); refuses values that
/// overflow to infinity.
pub fn encode_f16(data: &[f32]) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(data.len() * 2);
    for (index, &value) in data.iter().enumerate() {
        let h = f16::from_f32(value);
        if !h.is_finite() {
            return Err(CodecError::OutOfRange {
                index,
                value,
                dtype: "f16",
            });
        }
        out.extend_from_slice(&h.to_le_bytes());
    }
    Ok(out)
}

/// Encodes as little-endian bf16 (round to nearest even).
pub fn encode_bf16(data: &[f32]) -> Vec<u8> {
    data.iter()
        .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
        .collect()
}

/// Decodes little-endian f32 bytes into `out` (`bytes.len() == 4 * out.len()`).
pub fn decode_f32(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

/// Decodes little-endian f16 bytes into `out` (`bytes.len() == 2 * out.len()`).
pub fn decode_f16(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
    }
}

/// Decodes little-endian bf16 bytes into `out` (`bytes.len() == 2 * out.len()`).
pub fn decode_bf16(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
    }
}
