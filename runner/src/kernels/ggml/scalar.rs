//! Portable reference: each weight block unpacked to its integer values
//! straight from SPEC.md §4.6 (no bit tricks), dotted with the int8
//! activations in `i32`, and scaled in f32. The SIMD kernels
//! ([`super::simd`]) must agree with it up to the order of the f32 sums.

use strata_format::codec::ggml::GgmlType;

use super::acts::{Q8Acts, Q8Row};

/// The f16 at byte `at` of `b`, as f32.
fn h(b: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// A 32-element block as integers: `y[i] = d · v[i] + m`.
struct Ints32 {
    v: [i8; 32],
    d: f32,
    m: f32,
}

/// 4-bit values in element order (low nibbles, then high nibbles), less `off`.
fn q4(qs: &[u8], off: i8) -> [i8; 32] {
    let mut v = [0i8; 32];
    for j in 0..16 {
        v[j] = (qs[j] & 15) as i8 - off;
        v[j + 16] = (qs[j] >> 4) as i8 - off;
    }
    v
}

/// The 5-bit values of a Q5_0 / Q5_1 block (`qh` high bits, `qs` nibbles),
/// less `off`.
fn q5(qh: u32, qs: &[u8], off: i8) -> [i8; 32] {
    let mut v = q4(qs, off);
    for (i, v) in v.iter_mut().enumerate() {
        *v += 16 * ((qh >> i) & 1) as i8;
    }
    v
}

/// A 32-element block of type `t` as integers.
fn ints32(t: GgmlType, b: &[u8]) -> Ints32 {
    let word = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let (v, m) = match t {
        GgmlType::Q4_0 => (q4(&b[2..18], 8), 0.0),
        GgmlType::Q4_1 => (q4(&b[4..20], 0), h(b, 2)),
        GgmlType::Q5_0 => (q5(word(2), &b[6..22], 16), 0.0),
        GgmlType::Q5_1 => (q5(word(4), &b[8..24], 0), h(b, 2)),
        // Q8_0 (the K types never come here).
        _ => {
            let mut v = [0i8; 32];
            for (v, &q) in v.iter_mut().zip(&b[2..34]) {
                *v = q as i8;
            }
            (v, 0.0)
        }
    };
    Ints32 { v, d: h(b, 0), m }
}

/// A 256-element super-block as integers:
/// `y[16g + l] = d · sc[g] · v[16g + l] − dmin · mn[g]`.
struct IntsK {
    v: [i8; 256],
    sc: [i32; 16],
    mn: [i32; 16],
    d: f32,
    dmin: f32,
}

/// Scale and min `j` (0..8) of a Q4_K / Q5_K block's 12 packed bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (i32, i32) {
    let (s, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    };
    (i32::from(s), i32::from(m))
}

/// A K super-block of type `t` as integers.
fn ints_k(t: GgmlType, b: &[u8]) -> IntsK {
    let mut k = IntsK {
        v: [0; 256],
        sc: [0; 16],
        mn: [0; 16],
        d: 0.0,
        dmin: 0.0,
    };
    match t {
        GgmlType::Q2K => {
            let (sc, qs) = (&b[0..16], &b[16..80]);
            for (g, &s) in sc.iter().enumerate() {
                let (half, shift, part) = (g / 8, 2 * ((g % 8) / 2), g % 2);
                k.sc[g] = i32::from(s & 15);
                k.mn[g] = i32::from(s >> 4);
                for l in 0..16 {
                    k.v[16 * g + l] = ((qs[32 * half + 16 * part + l] >> shift) & 3) as i8;
                }
            }
            (k.d, k.dmin) = (h(b, 80), h(b, 82));
        }
        GgmlType::Q3K => {
            let (hmask, qs, raw) = (&b[0..32], &b[32..96], &b[96..108]);
            // Scale g: low 4 bits from raw[g % 8] (low or high nibble), top 2
            // bits from raw[8 + g % 4] (SPEC.md §4.6, byte by byte).
            for g in 0..16 {
                let lo = if g < 8 { raw[g] & 15 } else { raw[g - 8] >> 4 };
                let hi = (raw[8 + g % 4] >> (2 * (g / 4))) & 3;
                k.sc[g] = i32::from(lo | (hi << 4)) - 32;
                let (half, shift, part) = (g / 8, 2 * ((g % 8) / 2), g % 2);
                for l in 0..16 {
                    let i = 16 * part + l;
                    let low = ((qs[32 * half + i] >> shift) & 3) as i8;
                    let set = (hmask[i] >> (4 * half + shift / 2)) & 1 != 0;
                    k.v[16 * g + l] = low - if set { 0 } else { 4 };
                }
            }
            k.d = h(b, 108);
        }
        GgmlType::Q4K | GgmlType::Q5K => {
            let five = t == GgmlType::Q5K;
            let (sm, qh) = (&b[4..16], &b[16..48]);
            let qs = if five { &b[48..176] } else { &b[16..144] };
            for j in 0..8 {
                let (s, m) = scale_min_k4(j, sm);
                (k.sc[2 * j], k.sc[2 * j + 1]) = (s, s);
                (k.mn[2 * j], k.mn[2 * j + 1]) = (m, m);
                for l in 0..32 {
                    let byte = qs[32 * (j / 2) + l];
                    let nib = if j % 2 == 0 { byte & 15 } else { byte >> 4 };
                    let high = if five { 16 * ((qh[l] >> j) & 1) } else { 0 };
                    k.v[32 * j + l] = (nib + high) as i8;
                }
            }
            (k.d, k.dmin) = (h(b, 0), h(b, 2));
        }
        // Q6_K (the 32-element types never come here).
        _ => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            for (s, &b) in k.sc.iter_mut().zip(sc) {
                *s = i32::from(b as i8);
            }
            // Element 128n + 32·quarter + l.
            for n in 0..2 {
                for quarter in 0..4 {
                    for l in 0..32 {
                        let byte = ql[64 * n + 32 * (quarter % 2) + l];
                        let nib = if quarter < 2 { byte & 15 } else { byte >> 4 };
                        let high = (qh[32 * n + l] >> (2 * quarter)) & 3;
                        k.v[128 * n + 32 * quarter + l] = (nib | (high << 4)) as i8 - 32;
                    }
                }
            }
            k.d = h(b, 208);
        }
    }
    k
}

/// `Σ x · v` of two runs of integers.
fn dot(x: &[i8], v: &[i8]) -> i32 {
    x.iter()
        .zip(v)
        .map(|(&x, &v)| i32::from(x) * i32::from(v))
        .sum()
}

/// Outputs `o[t0 .. t0 + T]` of one weight row and activation rows `x`.
fn tile<const T: usize>(t: GgmlType, row: &[u8], x: [Q8Row<'_>; T], t0: usize, o: &mut [f32]) {
    let (be, bb) = (t.block_elems(), t.block_bytes());
    let mut acc = [0f32; T];
    for (k, blk) in row.chunks_exact(bb).enumerate() {
        if be == 32 {
            let b = ints32(t, blk);
            for (a, x) in acc.iter_mut().zip(&x) {
                let isum = dot(&x.qs[32 * k..32 * k + 32], &b.v);
                *a += isum as f32 * (b.d * x.d[k]) + b.m * x.sx[k];
            }
        } else {
            let b = ints_k(t, blk);
            for (a, x) in acc.iter_mut().zip(&x) {
                let (mut isum, mut imin) = (0i32, 0i32);
                for g in 0..16 {
                    let at = 256 * k + 16 * g;
                    isum += b.sc[g] * dot(&x.qs[at..at + 16], &b.v[16 * g..16 * g + 16]);
                    imin += b.mn[g] * i32::from(x.sums[16 * k + g]);
                }
                *a += isum as f32 * (b.d * x.d[k]) - imin as f32 * (b.dmin * x.d[k]);
            }
        }
    }
    o[t0..t0 + T].copy_from_slice(&acc);
}

/// Computes `out[r * n + t]` for the rows in `w` (`rb` bytes each) and the
/// `n` rows of `acts`.
pub(super) fn rows(t: GgmlType, w: &[u8], rb: usize, acts: &Q8Acts, n: usize, out: &mut [f32]) {
    for (row, o) in w.chunks_exact(rb).zip(out.chunks_exact_mut(n)) {
        let mut t0 = 0;
        while t0 < n {
            match n - t0 {
                1 => tile::<1>(t, row, acts.rows(t0), t0, o),
                2 => tile::<2>(t, row, acts.rows(t0), t0, o),
                3 => tile::<3>(t, row, acts.rows(t0), t0, o),
                _ => tile::<4>(t, row, acts.rows(t0), t0, o),
            }
            t0 += (n - t0).min(4);
        }
    }
}
