//! Activations quantized to int8 once per call, the way llama.cpp's
//! `quantize_row_q8_0` / `quantize_row_q8_K` prepare the right-hand side of
//! its integer dot products.
//!
//! Each row of `x` is cut into blocks of `B` elements — 32 for the 32-element
//! weight types (llama.cpp's Q8_0 / Q8_1), 256 for the "K" types (Q8_K) — and
//! a block stores `q[i] = round_half_even(x[i] / d)` with `d = max|x| / 127`,
//! so `x[i] ≈ q[i] · d` within `d / 2`, and `|q| ≤ 127` (never −128: the
//! kernels' `maddubs` pair sums then cannot saturate). With each block come
//! the sums of every 16 consecutive `q` (Q8_K's `bsums`, for the K types'
//! minimums and offsets) and `d · Σ q` of the whole block (Q8_1's `s`, for
//! Q4_1 / Q5_1's minimum).

use rayon::prelude::*;

use crate::kernels::quant_act::round_even;

/// `n` activation rows quantized in blocks of [`Q8Acts::block`].
#[derive(Debug, Clone)]
pub(crate) struct Q8Acts {
    /// Elements per block: 32 or 256.
    pub block: usize,
    /// Blocks per row.
    pub blocks: usize,
    /// `n × blocks × block` quantized values, each in `-127..=127`.
    pub qs: Vec<i8>,
    /// `n × blocks` scales `d`.
    pub d: Vec<f32>,
    /// `n × blocks × block / 16` sums of 16 consecutive `qs`.
    pub sums: Vec<i16>,
    /// `n × blocks` values `d · Σ q` of each block.
    pub sx: Vec<f32>,
    /// `n × blocks` sums `Σ q` of each block.
    pub totals: Vec<i32>,
}

/// One quantized activation row (slices of a [`Q8Acts`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Q8Row<'a> {
    /// `blocks × block` quantized values.
    pub qs: &'a [i8],
    /// One scale per block.
    pub d: &'a [f32],
    /// One sum per 16 values.
    pub sums: &'a [i16],
    /// `d · Σ q` per block.
    pub sx: &'a [f32],
    /// `Σ q` per block.
    pub totals: &'a [i32],
}

impl Q8Acts {
    /// Row `t`.
    #[inline(always)]
    pub fn row(&self, t: usize) -> Q8Row<'_> {
        let (nb, per) = (self.blocks, self.blocks * self.block);
        Q8Row {
            qs: &self.qs[t * per..(t + 1) * per],
            d: &self.d[t * nb..(t + 1) * nb],
            sums: &self.sums[t * per / 16..(t + 1) * per / 16],
            sx: &self.sx[t * nb..(t + 1) * nb],
            totals: &self.totals[t * nb..(t + 1) * nb],
        }
    }

    /// Rows `t0 .. t0 + T`.
    #[inline(always)]
    pub fn rows<const T: usize>(&self, t0: usize) -> [Q8Row<'_>; T] {
        let empty = Q8Row {
            qs: &[],
            d: &[],
            sums: &[],
            sx: &[],
            totals: &[],
        };
        let mut rows = [empty; T];
        for (t, r) in rows.iter_mut().enumerate() {
            *r = self.row(t0 + t);
        }
        rows
    }
}

/// Largest quantized magnitude.
const Q_MAX: f32 = 127.0;

/// Activation rows from which [`quantize`] splits the rows among threads
/// (a prompt's rows; a decode step's one row stays on its thread).
const PARALLEL_ROWS: usize = 8;

/// One activation row's share of every array of a [`Q8Acts`], with its index.
type RowOut<'a> = (
    usize,
    (
        (
            ((&'a mut [i8], &'a mut [f32]), &'a mut [i16]),
            &'a mut [f32],
        ),
        &'a mut [i32],
    ),
);

/// Quantizes one row `xrow` into its blocks' `qs`, `d`, `sums`, `sx` and
/// `totals` (as [`quantize`] describes them).
fn quantize_row(
    xrow: &[f32],
    block: usize,
    qs_row: &mut [i8],
    d_row: &mut [f32],
    sums_row: &mut [i16],
    sx_row: &mut [f32],
    totals_row: &mut [i32],
) {
    for (b, xb) in xrow.chunks_exact(block).enumerate() {
        // NaN propagates into the scale (and so into the outputs).
        let amax = xb.iter().fold(0f32, |m, v| {
            let a = v.abs();
            if a > m || a.is_nan() {
                a
            } else {
                m
            }
        });
        let d = amax / Q_MAX;
        let id = if amax > 0.0 { Q_MAX / amax } else { 0.0 };
        let qs = &mut qs_row[b * block..(b + 1) * block];
        for (q, &v) in qs.iter_mut().zip(xb) {
            // |v × id| ≤ 127 up to rounding; the clamp keeps q in ±127
            // (and a NaN becomes 0).
            *q = round_even(v * id).clamp(-Q_MAX, Q_MAX) as i8;
        }
        let mut total = 0i32;
        let sums = &mut sums_row[b * block / 16..(b + 1) * block / 16];
        for (s, q16) in sums.iter_mut().zip(qs.chunks_exact(16)) {
            let v: i32 = q16.iter().map(|&q| i32::from(q)).sum();
            // |v| ≤ 16 × 127.
            *s = v as i16;
            total += v;
        }
        d_row[b] = d;
        sx_row[b] = d * total as f32;
        totals_row[b] = total;
    }
}

/// Quantizes `x` (`n` rows of `cols`) in blocks of `block` (a multiple of
/// 16; `cols` is a multiple of `block` — trailing elements of a partial block
/// would be left out).
pub(crate) fn quantize(x: &[f32], n: usize, cols: usize, block: usize) -> Q8Acts {
    debug_assert!(block.is_multiple_of(16) && cols.is_multiple_of(block));
    let blocks = cols / block;
    let mut qa = Q8Acts {
        block,
        blocks,
        qs: vec![0; n * blocks * block],
        d: vec![0.0; n * blocks],
        sums: vec![0; n * blocks * block / 16],
        sx: vec![0.0; n * blocks],
        totals: vec![0; n * blocks],
    };
    let row = |(t, ((((qs, d), sums), sx), totals)): RowOut<'_>| {
        quantize_row(
            &x[t * cols..t * cols + blocks * block],
            block,
            qs,
            d,
            sums,
            sx,
            totals,
        );
    };
    if blocks == 0 {
        return qa;
    }
    let (qb, sb) = (blocks * block, blocks * block / 16);
    if n >= PARALLEL_ROWS {
        qa.qs
            .par_chunks_mut(qb)
            .zip(qa.d.par_chunks_mut(blocks))
            .zip(qa.sums.par_chunks_mut(sb))
            .zip(qa.sx.par_chunks_mut(blocks))
            .zip(qa.totals.par_chunks_mut(blocks))
            .enumerate()
            .for_each(row);
    } else {
        // A decode step's one row: not worth waking the pool.
        qa.qs
            .chunks_mut(qb)
            .zip(qa.d.chunks_mut(blocks))
            .zip(qa.sums.chunks_mut(sb))
            .zip(qa.sx.chunks_mut(blocks))
            .zip(qa.totals.chunks_mut(blocks))
            .enumerate()
            .for_each(row);
    }
    qa
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_within_half_a_step_and_sums_add_up() {
        let cols = 512;
        let x: Vec<f32> = (0..3 * cols)
            .map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 13.0)
            .collect();
        for block in [32, 256] {
            let qa = quantize(&x, 3, cols, block);
            assert_eq!(qa.blocks, cols / block);
            for t in 0..3 {
                let r = qa.row(t);
                for c in 0..cols {
                    let b = c / block;
                    let got = f32::from(r.qs[c]) * r.d[b];
                    assert!(
                        (got - x[t * cols + c]).abs() <= r.d[b] * 0.5001,
                        "{block} {t} {c}"
                    );
                    assert!(r.qs[c] != -128);
                }
                for (g, &s) in r.sums.iter().enumerate() {
                    let want: i32 = r.qs[16 * g..16 * g + 16]
                        .iter()
                        .map(|&q| i32::from(q))
                        .sum();
                    assert_eq!(i32::from(s), want);
                }
                for b in 0..qa.blocks {
                    let total: i32 = r.qs[b * block..(b + 1) * block]
                        .iter()
                        .map(|&q| i32::from(q))
                        .sum();
                    assert_eq!(r.sx[b], r.d[b] * total as f32);
                    assert_eq!(r.totals[b], total);
                }
            }
        }
    }

    #[test]
    fn zero_and_nan_blocks() {
        let mut x = vec![0f32; 64];
        x[40] = f32::NAN;
        let qa = quantize(&x, 1, 64, 32);
        assert_eq!(qa.d[0], 0.0);
        assert!(qa.qs[..32].iter().all(|&q| q == 0));
        assert!(qa.d[1].is_nan());
        assert!(qa.qs[32..].iter().all(|&q| q == 0));
    }
}
