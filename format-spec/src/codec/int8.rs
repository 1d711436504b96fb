//! int8: symmetric absmax quantization in blocks with an f16 scale.
//! Byte layout of one block of `B` elements (SPEC.md §4.5):
//! `[scale: f16 LE][B × i8]`, value = `q × scale`.

use crate::codec::{block_scale, check_quantized_row, scale_to_f16};
use crate::error::CodecError;

/// Encodes one row (`src.len()` elements) into `dst` (whole blocks); an
/// error when `dst` is not exactly those blocks or `block` is unusable.
pub fn encode_row(src: &[f32], block: usize, dst: &mut [u8]) -> Result<(), CodecError> {
    check_quantized_row(block, 2 + block, src.len(), dst.len())?;
    for (b, out) in dst.chunks_exact_mut(2 + block).enumerate() {
        let start = b * block;
        let end = (start + block).min(src.len());
        let vals = &src[start..end];
        let absmax = vals.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = scale_to_f16(absmax / 127.0, start, absmax)?;
        let df = d.to_f32();
        out[..2].copy_from_slice(&d.to_le_bytes());
        let codes = &mut out[2..];
        codes.fill(0);
        if df > 0.0 {
            for (c, &v) in codes.iter_mut().zip(vals) {
                let q = (v / df).round().clamp(-127.0, 127.0) as i8;
                *c = q as u8;
            }
        }
    }
    Ok(())
}

/// Decodes one row from whole blocks into `out` (padding is dropped); an
/// error when `bytes` is not exactly the blocks of `out.len()` elements.
pub fn decode_row(bytes: &[u8], block: usize, out: &mut [f32]) -> Result<(), CodecError> {
    check_quantized_row(block, 2 + block, out.len(), bytes.len())?;
    let cols = out.len();
    for (b, blk) in bytes.chunks_exact(2 + block).enumerate() {
        let d = block_scale(blk, b)?;
        let start = b * block;
        let n = block.min(cols.saturating_sub(start));
        for (o, &c) in out[start..start + n].iter_mut().zip(&blk[2..]) {
            *o = f32::from(c as i8) * d;
        }
    }
    Ok(())
}
