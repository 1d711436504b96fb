//! Activations quantized to int16 per block, for the integer dot products of
//! the `nf4` and `int8` kernels.
//!
//! Each row of `x` is cut into the weight's blocks of `B` elements (the last
//! one zero-padded); a block stores `q[i] = round_half_even(x[i] / d)` with
//! `d = max|x| / 8191`, so `x[i] ≈ q[i] × d` within `d / 2` — 1/16382 of the
//! block's largest value, far below the weights' own error. (int8 activations
//! with `d = max|x| / 127`, as llama.cpp's Q8 kernels use, raised SmolLM2's
//! perplexity by about 1% on int8 weights; these cost nothing measurable, at
//! 32 rather than 64 multiply-adds per instruction. 8191 rather than 32767
//! leaves room for the NF4 kernels' 11-bit weights in 32-bit sums.)

/// In which order a block's quantized values are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// Element order.
    Natural,
    /// The order of NF4 codes as the kernels unpack them (SPEC.md §4.4: byte
    /// `j` holds elements `j` and `j + B/2`): for every 32 code bytes `g`,
    /// elements `32g .. 32g+32` (the low nibbles) then `B/2 + 32g .. B/2 + 32g
    /// + 32` (the high nibbles); when `B/2` is an odd multiple of 16, the last
    /// 16 code bytes likewise give `B/2 − 16 .. B/2` then `B − 16 .. B` (for
    /// `B = 32` that is the element order).
    Nf4,
}

/// `n` activation rows quantized for a weight of `blocks` blocks of `block`.
#[derive(Debug, Clone)]
pub(crate) struct QuantActs {
    /// Elements per block.
    pub block: usize,
    /// Blocks per row.
    pub blocks: usize,
    /// `n × blocks × block` quantized values.
    pub qs: Vec<i16>,
    /// `n × blocks` scales `d`.
    pub scales: Vec<f32>,
}

/// One quantized activation row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QRow<'a> {
    /// `blocks × block` quantized values.
    pub qs: &'a [i16],
    /// One scale per block.
    pub scales: &'a [f32],
}

impl QuantActs {
    /// Rows `t0 .. t0 + T`.
    #[inline]
    pub fn rows<const T: usize>(&self, t0: usize) -> [QRow<'_>; T] {
        let mut rows = [QRow {
            qs: &[],
            scales: &[],
        }; T];
        for (t, r) in rows.iter_mut().enumerate() {
            *r = self.row(t0 + t);
        }
        rows
    }

    /// Row `t`.
    #[inline]
    pub fn row(&self, t: usize) -> QRow<'_> {
        let per = self.blocks * self.block;
        QRow {
            qs: &self.qs[t * per..(t + 1) * per],
            scales: &self.scales[t * self.blocks..(t + 1) * self.blocks],
        }
    }
}

/// Largest quantized magnitude.
pub(crate) const Q_MAX: f32 = 8191.0;

/// Rounds to the nearest integer, ties to even, for `|y| ≤ 2²²` (adding and
/// subtracting 1.5 × 2²³ leaves no fraction bits in binary32).
#[inline]
pub(crate) fn round_even(y: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (y + MAGIC) - MAGIC
}

/// Quantizes `x` (`n` rows of `cols`) in blocks of `block` (a multiple of 32).
pub(crate) fn quantize(x: &[f32], n: usize, cols: usize, block: usize, order: Order) -> QuantActs {
    let blocks = cols.div_ceil(block);
    let mut qa = QuantActs {
        block,
        blocks,
        qs: vec![0; n * blocks * block],
        scales: vec![0.0; n * blocks],
    };
    let mut padded = vec![0f32; block];
    let mut q = vec![0i16; block];
    for t in 0..n {
        let xrow = &x[t * cols..(t + 1) * cols];
        for b in 0..blocks {
            let start = b * block;
            let end = (start + block).min(cols);
            padded.fill(0.0);
            padded[..end - start].copy_from_slice(&xrow[start..end]);
            // NaN propagates into the scale (and so into the outputs).
            let amax = padded.iter().fold(0f32, |m, v| {
                let a = v.abs();
                if a > m || a.is_nan() {
                    a
                } else {
                    m
                }
            });
            let d = amax / Q_MAX;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            for (qi, &v) in q.iter_mut().zip(&padded) {
                // |v × id| ≤ Q_MAX up to rounding; the clamp keeps q in ±Q_MAX.
                *qi = round_even(v * id).clamp(-Q_MAX, Q_MAX) as i16;
            }
            let i = t * blocks + b;
            qa.scales[i] = d;
            let dst = &mut qa.qs[i * block..(i + 1) * block];
            match order {
                Order::Natural => dst.copy_from_slice(&q),
                Order::Nf4 => {
                    let half = block / 2;
                    for g in 0..block / 64 {
                        let out = &mut dst[64 * g..64 * g + 64];
                        out[..32].copy_from_slice(&q[32 * g..32 * g + 32]);
                        out[32..].copy_from_slice(&q[half + 32 * g..half + 32 * g + 32]);
                    }
                    if block % 64 == 32 {
                        // The last 16 code bytes: elements B/2 − 16 .. B/2 and B − 16 .. B.
                        dst[block - 32..block - 16].copy_from_slice(&q[half - 16..half]);
                        dst[block - 16..].copy_from_slice(&q[block - 16..]);
                    }
                }
            }
        }
    }
    qa
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_within_half_a_step() {
        let cols = 150;
        let x: Vec<f32> = (0..2 * cols)
            .map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 13.0)
            .collect();
        for block in [32, 64, 128] {
            let qa = quantize(&x, 2, cols, block, Order::Natural);
            for t in 0..2 {
                let r = qa.row(t);
                for c in 0..qa.blocks * block {
                    let b = c / block;
                    let want = if c < cols { x[t * cols + c] } else { 0.0 };
                    let got = f32::from(r.qs[c]) * r.scales[b];
                    assert!(
                        (got - want).abs() <= r.scales[b] * 0.5001,
                        "{block} {t} {c}"
                    );
                }
            }
        }
    }

    #[test]
    fn nf4_order_follows_the_nibbles() {
        let cols = 256;
        let x: Vec<f32> = (0..cols).map(|i| i as f32 - 127.0).collect();
        let nat = quantize(&x, 1, cols, 128, Order::Natural);
        let nf4 = quantize(&x, 1, cols, 128, Order::Nf4);
        for b in 0..2 {
            let (n, p) = (&nat.qs[b * 128..], &nf4.qs[b * 128..]);
            assert_eq!(p[..32], n[..32]);
            assert_eq!(p[32..64], n[64..96]);
            assert_eq!(p[64..96], n[32..64]);
            assert_eq!(p[96..128], n[96..128]);
        }
        let b32 = quantize(&x, 1, cols, 32, Order::Nf4);
        assert_eq!(b32.qs, quantize(&x, 1, cols, 32, Order::Natural).qs);
        let (nat, nf4) = (
            quantize(&x[..192], 1, 192, 96, Order::Natural),
            quantize(&x[..192], 1, 192, 96, Order::Nf4),
        );
        for b in 0..2 {
            let (n, p) = (&nat.qs[b * 96..], &nf4.qs[b * 96..]);
            assert_eq!(p[..32], n[..32]);
            assert_eq!(p[32..64], n[48..80]);
            assert_eq!(p[64..80], n[32..48]);
            assert_eq!(p[80..96], n[80..96]);
        }
    }
}
