//! NF4: 4-bit NormalFloat codes (QLoRA / bitsandbytes) in blocks with an f16
//! absmax scale. Byte layout of one block of `B` elements (SPEC.md §4.4):
//! `[scale: f16 LE][B/2 bytes]`, where byte `j` holds element `j` in its low
//! nibble and element `j + B/2` in its high nibble.

use crate::codec::{block_scale, scale_to_f16};
use crate::error::CodecError;

/// The 16 NF4 code values, in code order (code `i` decodes to `CODES[i] * scale`).
/// Values from bitsandbytes' `create_normal_map` as published in QLoRA.
pub const CODES: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// Code of the value 0.0; used for padding.
pub const ZERO_CODE: u8 = 7;

/// Midpoints between consecutive codes, computed in f32: `(CODES[i] + CODES[i+1]) / 2`.
fn midpoints() -> [f32; 15] {
    let mut m = [0f32; 15];
    for (i, v) in m.iter_mut().enumerate() {
        *v = (CODES[i] + CODES[i + 1]) / 2.0;
    }
    m
}

/// Nearest code of a value already divided by its scale: the number of
/// midpoints it is greater than or equal to (ties go to the larger code).
#[inline]
pub fn nearest_code(x: f32, mids: &[f32; 15]) -> u8 {
    mids.iter().filter(|&&m| x >= m).count() as u8
}

/// Encodes one row (`src.len()` elements) into `dst` (whole blocks).
pub fn encode_row(src: &[f32], block: usize, dst: &mut [u8]) -> Result<(), CodecError> {
    let mids = midpoints();
    let half = block / 2;
    let block_bytes = 2 + half;
    let mut codes = vec![ZERO_CODE; block];
    for (b, out) in dst.chunks_exact_mut(block_bytes).enumerate() {
        let start = b * block;
        let end = (start + block).min(src.len());
        let vals = &src[start..end];
        let absmax = vals.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = scale_to_f16(absmax, start, absmax)?;
        let df = d.to_f32();
        codes.fill(ZERO_CODE);
        if df > 0.0 {
            for (c, &v) in codes.iter_mut().zip(vals) {
                *c = nearest_code(v / df, &mids);
            }
        }
        out[..2].copy_from_slice(&d.to_le_bytes());
        for j in 0..half {
            out[2 + j] = codes[j] | (codes[j + half] << 4);
        }
    }
    Ok(())
}

/// Decodes one row from whole blocks into `out` (padding is dropped).
pub fn decode_row(bytes: &[u8], block: usize, out: &mut [f32]) -> Result<(), CodecError> {
    let half = block / 2;
    let cols = out.len();
    for (b, blk) in bytes.chunks_exact(2 + half).enumerate() {
        let d = block_scale(blk, b)?;
        let start = b * block;
        for j in 0..half {
            let byte = blk[2 + j];
            let lo = start + j;
            let hi = start + j + half;
            if lo < cols {
                out[lo] = CODES[usize::from(byte & 0x0f)] * d;
            }
            if hi < cols {
                out[hi] = CODES[usize::from(byte >> 4)] * d;
            }
        }
    }
    Ok(())
}
