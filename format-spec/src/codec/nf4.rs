//! NF4: 4-bit NormalFloat codes (QLoRA / bitsandbytes) in blocks with an f16
//! scale chosen by a weighted search near the block's absolute maximum. Byte
//! layout of one block of `B` elements (SPEC.md §4.4): `[scale: f16 LE][B/2
//! bytes]`, where byte `j` holds element `j` in its low nibble and element
//! `j + B/2` in its high nibble.

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

/// Midpoints between consecutive codes, computed in f32: `(CODES[i] + CODES[i+1]) / 2`
/// (SPEC.md §4.4), the thresholds of [`nearest_code`].
pub fn midpoints() -> [f32; 15] {
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

/// The scale search tries `k = -SEARCH_STEPS ..= SEARCH_STEPS` (SPEC.md §4.4).
pub const SEARCH_STEPS: i32 = 7;
/// Relative step between the scales the search tries.
pub const SEARCH_STEP: f32 = 0.03;

/// The inverse scale of candidate `k` for a block whose largest `|x|` is
/// `absmax`: `(1 + k × 0.03) / absmax` in binary32 (SPEC.md §4.4). Candidate 0
/// maps the largest element to the code ±1; the others shrink or stretch
/// the grid by 3% steps.
#[inline]
pub fn candidate_inverse(k: i32, absmax: f32) -> f32 {
    (1.0 + k as f32 * SEARCH_STEP) / absmax
}

/// Lanes of the search's sums (SPEC.md §4.4): element `i` adds into lane
/// `i mod 8`, so that an 8-wide SIMD writer adds in the same order.
pub const LANES: usize = 8;

/// The lanes' total in SPEC.md §4.4's order:
/// `((L0 + L1) + (L2 + L3)) + ((L4 + L5) + (L6 + L7))`.
#[inline]
pub fn lane_total(l: &[f32; LANES]) -> f32 {
    ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))
}

/// `Σ x²` of a block's real elements in lane order.
pub fn sum_squares(vals: &[f32]) -> f32 {
    let mut l = [0f32; LANES];
    for (i, &x) in vals.iter().enumerate() {
        l[i % LANES] += x * x;
    }
    lane_total(&l)
}

/// The candidate sums `(Σ (w·q)·x, Σ (w·q)·q)` for inverse scale `id` and
/// `w = sigma2 + x²`, with `q` the value of the code of `x × id`, each sum
/// in lane order (SPEC.md §4.4). The scalar reference of what a SIMD writer
/// computes 8 elements at a time.
pub fn candidate_sums(vals: &[f32], sigma2: f32, id: f32) -> (f32, f32) {
    let mids = midpoints();
    let (mut lx, mut lq) = ([0f32; LANES], [0f32; LANES]);
    for (i, &x) in vals.iter().enumerate() {
        let q = CODES[usize::from(nearest_code(x * id, &mids))];
        let wq = (sigma2 + x * x) * q;
        lx[i % LANES] += wq * x;
        lq[i % LANES] += wq * q;
    }
    (lane_total(&lx), lane_total(&lq))
}

/// Chooses one block's scale and codes by the normative search of SPEC.md
/// §4.4. `vals` are the block's real elements (no padding); `codes` receives
/// the code of each (`codes.len() >= vals.len()`); `block_start` names the
/// block in errors. `sums(sigma2, id)` must return [`candidate_sums`]`(vals,
/// sigma2, id)` and `assign(id, c)` must set `c[i]` to the nearest code of
/// `vals[i] × id` (binary32 product) exactly as [`nearest_code`] does — a
/// vectorized writer passes its own, bit for bit the same.
///
/// For each candidate `id` of [`candidate_inverse`] the codes `q` are
/// weighted by `w = σ² + x²` (`σ² = 2 Σx² / n`, more weight to the large
/// values, which matter most) and the candidate scoring the highest
/// `(Σ w q x)² / Σ w q²` wins — the one whose weighted least-squares scale
/// `Σ w q x / Σ w q²` leaves the smallest weighted squared error; that scale,
/// rounded to binary16, is stored. As llama.cpp's IQ4_NL search does, on the
/// NF4 grid.
pub fn search_block(
    vals: &[f32],
    block_start: usize,
    codes: &mut [u8],
    mut sums: impl FnMut(f32, f32) -> (f32, f32),
    mut assign: impl FnMut(f32, &mut [u8]),
) -> Result<half::f16, CodecError> {
    let n = vals.len();
    let absmax = vals.iter().fold(0f32, |m, v| m.max(v.abs()));
    scale_to_f16(absmax, block_start, absmax)?;
    let codes = &mut codes[..n];
    if absmax == 0.0 {
        codes.fill(ZERO_CODE);
        return scale_to_f16(absmax, block_start, absmax);
    }
    let sigma2 = 2.0 * sum_squares(vals) / n as f32;
    let mut best: Option<(f32, f32, i32)> = None;
    for k in -SEARCH_STEPS..=SEARCH_STEPS {
        let (sqx, sq2) = sums(sigma2, candidate_inverse(k, absmax));
        if sq2 > 0.0 {
            let score = sqx * sqx / sq2;
            if best.is_none_or(|(b, _, _)| score > b) {
                best = Some((score, sqx / sq2, k));
            }
        }
    }
    let d = match best {
        Some((_, d, k)) => {
            assign(candidate_inverse(k, absmax), codes);
            scale_to_f16(d, block_start, absmax)?
        }
        // Every weight underflowed to zero: the plain absmax scale.
        None => {
            assign(candidate_inverse(0, absmax), codes);
            scale_to_f16(absmax, block_start, absmax)?
        }
    };
    if d.to_f32() == 0.0 {
        codes.fill(ZERO_CODE);
    }
    Ok(d)
}

/// Packs one block's codes (`codes[i]` for element `i`, the rest of the
/// block padding, coded as the zero code) into its `B/2` code bytes.
pub fn pack_codes(codes: &[u8], packed: &mut [u8]) {
    let half = packed.len();
    let code = |i: usize| codes.get(i).copied().unwrap_or(ZERO_CODE);
    for (j, b) in packed.iter_mut().enumerate() {
        *b = code(j) | (code(j + half) << 4);
    }
}

/// Encodes one row (`src.len()` elements) into `dst` (whole blocks); an
/// error when `dst` is not exactly those blocks or `block` is unusable.
pub fn encode_row(src: &[f32], block: usize, dst: &mut [u8]) -> Result<(), CodecError> {
    super::check_quantized_row(block, 2 + block / 2, src.len(), dst.len())?;
    let mids = midpoints();
    let block_bytes = 2 + block / 2;
    let mut codes = vec![ZERO_CODE; block];
    for (b, out) in dst.chunks_exact_mut(block_bytes).enumerate() {
        let start = b * block;
        let end = (start + block).min(src.len());
        let vals = &src[start..end];
        let d = search_block(
            vals,
            start,
            &mut codes,
            |sigma2, id| candidate_sums(vals, sigma2, id),
            |id, c| {
                for (c, &x) in c.iter_mut().zip(vals) {
                    *c = nearest_code(x * id, &mids);
                }
            },
        )?;
        out[..2].copy_from_slice(&d.to_le_bytes());
        pack_codes(&codes[..vals.len()], &mut out[2..]);
    }
    Ok(())
}

/// Decodes one row from whole blocks into `out` (padding is dropped); an
/// error when `bytes` is not exactly the blocks of `out.len()` elements.
pub fn decode_row(bytes: &[u8], block: usize, out: &mut [f32]) -> Result<(), CodecError> {
    super::check_quantized_row(block, 2 + block / 2, out.len(), bytes.len())?;
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
