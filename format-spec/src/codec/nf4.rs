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

/// Scales a writer tries for a block, as fractions of the block's absolute
/// maximum (SPEC.md §4.4): the one giving the smallest squared error wins,
/// the first (largest) on ties, then the least-squares scale of its codes.
pub const SCALE_SEARCH: [f32; 11] = [
    1.0, 0.97, 0.94, 0.91, 0.88, 0.85, 0.82, 0.79, 0.76, 0.73, 0.70,
];

/// Code of element `i` of a block from its packed bytes (`packed.len()` = B/2).
#[inline]
fn code_at(packed: &[u8], i: usize) -> u8 {
    let half = packed.len();
    if i < half {
        packed[i] & 0x0f
    } else {
        packed[i - half] >> 4
    }
}

/// Squared reconstruction error `Σ (x − CODE·d)²` of a block's `vals` (the
/// block's first elements; the rest is padding) under packed codes and scale
/// `df`, summed in order in binary32.
pub fn block_error(vals: &[f32], packed: &[u8], df: f32) -> f32 {
    let mut e = 0f32;
    for (i, &v) in vals.iter().enumerate() {
        let d = v - CODES[usize::from(code_at(packed, i))] * df;
        e += d * d;
    }
    e
}

/// Packs the nearest codes of `vals / df` (padding: the zero code) into `packed`.
pub fn assign_codes(vals: &[f32], df: f32, packed: &mut [u8]) {
    let mids = midpoints();
    let half = packed.len();
    let code = |i: usize| {
        vals.get(i)
            .map_or(ZERO_CODE, |&v| nearest_code(v / df, &mids))
    };
    for (j, b) in packed.iter_mut().enumerate() {
        *b = code(j) | (code(j + half) << 4);
    }
}

/// Chooses a block's scale (SPEC.md §4.4) and leaves its packed codes in
/// `packed`: every scale of [`SCALE_SEARCH`] (rounded to f16), then the
/// least-squares scale `Σ x·q / Σ q²` of the best codes, keeping the one with
/// the smallest [`block_error`]. `assign(df, packed)` must pack the nearest
/// codes for scale `df` exactly as [`assign_codes`] does (a vectorized
/// writer passes its own). A block of zeros gets scale 0 and the zero code.
pub fn search_block(
    vals: &[f32],
    absmax: f32,
    block_start: usize,
    packed: &mut [u8],
    mut assign: impl FnMut(f32, &mut [u8]),
) -> Result<half::f16, CodecError> {
    let d0 = scale_to_f16(absmax, block_start, absmax)?;
    if d0.to_f32() <= 0.0 {
        packed.fill(ZERO_CODE | (ZERO_CODE << 4));
        return Ok(d0);
    }
    let mut tmp = [0u8; 2048];
    let tmp = &mut tmp[..packed.len()];
    let mut best = (f32::INFINITY, d0);
    let mut consider = |d: half::f16, tmp: &mut [u8], packed: &mut [u8]| {
        let df = d.to_f32();
        if !(df > 0.0 && df.is_finite()) {
            return;
        }
        assign(df, tmp);
        let e = block_error(vals, tmp, df);
        if e < best.0 {
            best = (e, d);
            packed.copy_from_slice(tmp);
        }
    };
    for f in SCALE_SEARCH {
        consider(half::f16::from_f32(absmax * f), tmp, packed);
    }
    let (mut num, mut den) = (0f32, 0f32);
    for (i, &v) in vals.iter().enumerate() {
        let q = CODES[usize::from(code_at(packed, i))];
        num += v * q;
        den += q * q;
    }
    if den > 0.0 {
        consider(half::f16::from_f32(num / den), tmp, packed);
    }
    Ok(best.1)
}

/// Encodes one row (`src.len()` elements) into `dst` (whole blocks).
pub fn encode_row(src: &[f32], block: usize, dst: &mut [u8]) -> Result<(), CodecError> {
    let block_bytes = 2 + block / 2;
    for (b, out) in dst.chunks_exact_mut(block_bytes).enumerate() {
        let start = b * block;
        let end = (start + block).min(src.len());
        let vals = &src[start..end];
        let absmax = vals.iter().fold(0f32, |m, v| m.max(v.abs()));
        let (head, packed) = out.split_at_mut(2);
        let d = search_block(vals, absmax, start, packed, |df, p| {
            assign_codes(vals, df, p)
        })?;
        head.copy_from_slice(&d.to_le_bytes());
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
