//! The block encodings of GGML/GGUF files (llama.cpp's `ggml-common.h`):
//! byte layouts and a scalar reference decoder to `f32` for each.
//!
//! These are source encodings `prep` reads from GGUF files (they are not yet
//! container encodings of SPEC.md §4). Each block holds [`GgmlType::block_elems`]
//! consecutive values of a row (32, or 256 for the "K" types) in
//! [`GgmlType::block_bytes`] bytes; a row is a whole number of blocks. Scales
//! are IEEE half precision, little-endian. Every decoder computes in `f32`
//! in the order llama.cpp's `dequantize_row_*` does, so the values are the
//! ones llama.cpp and gguf-py produce (the tests compare with gguf-py's).

use half::f16;

use crate::error::CodecError;

/// Values per "K" super-block.
const QK_K: usize = 256;

/// A GGML block encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32 values: f16 `d`, 16 bytes of 4-bit `q`; `x = (q − 8) · d`.
    Q4_0,
    /// 32 values: f16 `d`, f16 `m`, 16 bytes of 4-bit `q`; `x = q · d + m`.
    Q4_1,
    /// 32 values: f16 `d`, 32 high bits, 16 bytes of low nibbles; `x = (q − 16) · d`.
    Q5_0,
    /// 32 values: f16 `d`, f16 `m`, 32 high bits, 16 bytes of low nibbles; `x = q · d + m`.
    Q5_1,
    /// 32 values: f16 `d`, 32 signed bytes; `x = q · d`.
    Q8_0,
    /// 256 values: 16 bytes of 4-bit scale and min pairs, 64 bytes of 2-bit
    /// `q`, f16 `d` and `dmin`.
    Q2K,
    /// 256 values: 32 bytes of high bits, 64 bytes of 2-bit low bits, 12
    /// bytes of 6-bit scales, f16 `d`.
    Q3K,
    /// 256 values: f16 `d` and `dmin`, 12 bytes of 6-bit scales and mins,
    /// 128 bytes of 4-bit `q`.
    Q4K,
    /// 256 values: f16 `d` and `dmin`, 12 bytes of 6-bit scales and mins, 32
    /// bytes of high bits, 128 bytes of 4-bit low bits.
    Q5K,
    /// 256 values: 128 bytes of low nibbles, 64 bytes of 2-bit high parts, 16
    /// signed 8-bit scales, f16 `d`.
    Q6K,
}

impl GgmlType {
    /// The type of a GGML type id (`ggml_type` in `ggml.h`), if it is one of these.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            10 => GgmlType::Q2K,
            11 => GgmlType::Q3K,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            _ => return None,
        })
    }

    /// llama.cpp's name of the type (`Q4_K`, …).
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q2K => "Q2_K",
            GgmlType::Q3K => "Q3_K",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
        }
    }

    /// Values per block.
    pub fn block_elems(self) -> usize {
        match self {
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => {
                32
            }
            _ => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q2K => 84,
            GgmlType::Q3K => 110,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
        }
    }

    /// Bytes of a row of `cols` values, or `None` when `cols` is not a whole
    /// number of blocks (or the size overflows).
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        if cols % self.block_elems() != 0 {
            return None;
        }
        (cols / self.block_elems()).checked_mul(self.block_bytes())
    }

    /// Decodes whole blocks: `bytes` holds `out.len() / block_elems` blocks.
    /// Fails when the lengths disagree; any bit pattern decodes (a NaN or
    /// infinite scale gives non-finite values, which callers check).
    pub fn decode(self, bytes: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
        let (be, bb) = (self.block_elems(), self.block_bytes());
        if out.len() % be != 0 {
            return Err(CodecError::Length {
                what: "values (a whole number of blocks)",
                expected: out.len().div_ceil(be) * be,
                actual: out.len(),
            });
        }
        let blocks = out.len() / be;
        if bytes.len() != blocks * bb {
            return Err(CodecError::Length {
                what: "bytes",
                expected: blocks * bb,
                actual: bytes.len(),
            });
        }
        let block = match self {
            GgmlType::Q4_0 => q4_0,
            GgmlType::Q4_1 => q4_1,
            GgmlType::Q5_0 => q5_0,
            GgmlType::Q5_1 => q5_1,
            GgmlType::Q8_0 => q8_0,
            GgmlType::Q2K => q2_k,
            GgmlType::Q3K => q3_k,
            GgmlType::Q4K => q4_k,
            GgmlType::Q5K => q5_k,
            GgmlType::Q6K => q6_k,
        };
        for (b, y) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(be)) {
            block(b, y);
        }
        Ok(())
    }
}

/// The f16 at byte `at`.
fn h(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = h(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = ((qs[j] & 0x0f) as i32 - 8) as f32 * d;
        y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (h(b, 0), h(b, 2));
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = (qs[j] & 0x0f) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

/// The 5-bit values of a Q5_0/Q5_1 block: low nibbles `qs`, high bits `qh`.
fn q5_values(qh: u32, qs: &[u8]) -> [i32; 32] {
    let mut v = [0i32; 32];
    for j in 0..16 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        v[j] = ((qs[j] & 0x0f) as u32 | h0) as i32;
        v[j + 16] = ((qs[j] >> 4) as u32 | h1) as i32;
    }
    v
}

fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = h(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (o, v) in y.iter_mut().zip(q5_values(qh, &b[6..22])) {
        *o = (v - 16) as f32 * d;
    }
}

fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (h(b, 0), h(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for (o, v) in y.iter_mut().zip(q5_values(qh, &b[8..24])) {
        *o = v as f32 * d + m;
    }
}

fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = h(b, 0);
    for (o, &q) in y.iter_mut().zip(&b[2..34]) {
        *o = (q as i8) as f32 * d;
    }
}

fn q2_k(b: &[u8], y: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, min) = (h(b, 80), h(b, 82));
    let mut out = 0;
    let mut is = 0;
    for half in 0..2 {
        let q = &qs[half * 32..half * 32 + 32];
        for shift in [0, 2, 4, 6] {
            for part in 0..2 {
                let sc = scales[is];
                is += 1;
                let (dl, ml) = (d * (sc & 0x0f) as f32, min * (sc >> 4) as f32);
                for l in 0..16 {
                    y[out] = dl * ((q[l + 16 * part] >> shift) & 3) as f32 - ml;
                    out += 1;
                }
            }
        }
    }
}

fn q3_k(b: &[u8], y: &mut [f32]) {
    let (hmask, qs, raw) = (&b[0..32], &b[32..96], &b[96..108]);
    let d_all = h(b, 108);
    // The 16 6-bit scales, unpacked as llama.cpp does with its kmask trick.
    let word =
        |i: usize| u32::from_le_bytes([raw[4 * i], raw[4 * i + 1], raw[4 * i + 2], raw[4 * i + 3]]);
    let (a0, a1, tmp) = (word(0), word(1), word(2));
    let (k1, k2) = (0x0303_0303u32, 0x0f0f_0f0fu32);
    let aux = [
        (a0 & k2) | ((tmp & k1) << 4),
        (a1 & k2) | (((tmp >> 2) & k1) << 4),
        ((a0 >> 4) & k2) | (((tmp >> 4) & k1) << 4),
        ((a1 >> 4) & k2) | (((tmp >> 6) & k1) << 4),
    ];
    let mut scales = [0i8; 16];
    for (i, w) in aux.iter().enumerate() {
        for (k, byte) in w.to_le_bytes().iter().enumerate() {
            scales[4 * i + k] = *byte as i8;
        }
    }
    let mut out = 0;
    let mut is = 0;
    let mut m = 1u8;
    for half in 0..2 {
        let q = &qs[half * 32..half * 32 + 32];
        for shift in [0, 2, 4, 6] {
            for part in 0..2 {
                let dl = d_all * (scales[is] as i32 - 32) as f32;
                is += 1;
                for l in 0..16 {
                    let i = l + 16 * part;
                    let low = ((q[i] >> shift) & 3) as i32;
                    let high = if hmask[i] & m != 0 { 0 } else { 4 };
                    y[out] = dl * (low - high) as f32;
                    out += 1;
                }
            }
            m <<= 1;
        }
    }
}

/// Scale and min `j` (0..8) of a Q4_K/Q5_K block's 12 packed bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, min) = (h(b, 0), h(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for (g, (q, ys)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * g, scales);
        let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        for l in 0..32 {
            ys[l] = d1 * (q[l] & 0x0f) as f32 - m1;
            ys[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, min) = (h(b, 0), h(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for (g, (ql, ys)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * g, scales);
        let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let (u1, u2) = (1u8 << (2 * g), 2u8 << (2 * g));
        for l in 0..32 {
            let hi1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let hi2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            ys[l] = d1 * ((ql[l] & 0x0f) + hi1) as f32 - m1;
            ys[l + 32] = d2 * ((ql[l] >> 4) + hi2) as f32 - m2;
        }
    }
}

fn q6_k(b: &[u8], y: &mut [f32]) {
    let (ql_all, qh_all, sc_all) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = h(b, 208);
    for n in 0..2 {
        let (ql, qh) = (&ql_all[64 * n..64 * n + 64], &qh_all[32 * n..32 * n + 32]);
        let sc = &sc_all[8 * n..8 * n + 8];
        let ys = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let s = |k: usize| d * (sc[is + k] as i8) as f32;
            ys[l] = s(0) * q1 as f32;
            ys[l + 32] = s(2) * q2 as f32;
            ys[l + 64] = s(4) * q3 as f32;
            ys[l + 96] = s(6) * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_ggml_common() {
        for (t, be, bb) in [
            (GgmlType::Q4_0, 32, 18),
            (GgmlType::Q8_0, 32, 34),
            (GgmlType::Q4K, 256, 144),
            (GgmlType::Q6K, 256, 210),
        ] {
            assert_eq!((t.block_elems(), t.block_bytes()), (be, bb));
        }
        assert_eq!(GgmlType::Q4K.row_bytes(640), None);
        assert_eq!(GgmlType::Q4K.row_bytes(1024), Some(4 * 144));
        assert_eq!(GgmlType::from_id(12), Some(GgmlType::Q4K));
        assert_eq!(GgmlType::from_id(9), None); // Q8_1: not a storage type
    }

    #[test]
    fn lengths_are_checked() {
        let mut out = [0f32; 32];
        assert!(GgmlType::Q8_0.decode(&[0u8; 33], &mut out).is_err());
        assert!(GgmlType::Q8_0.decode(&[0u8; 34], &mut out[..31]).is_err());
        assert!(GgmlType::Q8_0.decode(&[0u8; 34], &mut out).is_ok());
    }
}
