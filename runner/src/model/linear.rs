//! `y = x · Wᵀ` straight from a weight's encoded bytes.
//!
//! Up to [`kernels::MAX_FUSED_ROWS`] input rows (decode, small batches) go
//! through the fused dequantize × multiply kernels of [`crate::kernels`], and
//! any number of rows for the int8 kernels of `nf4` / `int8` weights
//! ([`kernels::fuses_any_rows`]). Longer inputs (prefill) of other weights
//! decode `W` in bounded chunks of rows (so a 940 MB
//! matrix never needs 940 MB of f32) and multiply each chunk with candle's
//! CPU matmul, which reuses each decoded row across many input rows.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::container::Weight;
use crate::error::{Result, RunnerError};
use crate::kernels::{self, Isa, Layout};

/// Largest decoded chunk, in f32 elements (16 MiB).
const CHUNK_ELEMS: usize = 4 << 20;

/// Rows of W whose outputs [`fused_into`] moves into place together.
const TRANSPOSE_ROWS: usize = 16;

/// Computes `x[n, cols] · W[rows, cols]ᵀ` into `out`, writing row `t` of the
/// result at `out[t * out_stride + col0 ..][.. w.rows]`.
pub fn linear_into(
    x: &[f32],
    n: usize,
    w: &Weight<'_>,
    out: &mut [f32],
    out_stride: usize,
    col0: usize,
    what: (&str, &str),
) -> Result<()> {
    let cols = w.cols;
    let err = |reason: String| RunnerError::Tensor {
        file: what.0.into(),
        tensor: what.1.into(),
        reason,
    };
    if x.len() != n * cols {
        return Err(err(format!(
            "input has {} values, expected {n} × {cols}",
            x.len()
        )));
    }
    if n > 0 && (n - 1) * out_stride + col0 + w.rows > out.len() {
        return Err(err(format!(
            "output of {} values cannot hold {n} rows of {} at column {col0} (stride {out_stride})",
            out.len(),
            w.rows
        )));
    }
    if fused(n, w) {
        return fused_into(x, n, w, out, out_stride, col0, what);
    }
    let xt = Tensor::from_slice(x, (n, cols), &Device::Cpu)?;
    let chunk_rows = (CHUNK_ELEMS / cols.max(1)).clamp(1, w.rows.max(1));
    let rb = w.row_bytes();
    // Decoded row by row: as stored.
    let stored = kernels::stored_rows(w);
    let mut scratch = vec![0f32; chunk_rows * cols];
    let mut r0 = 0;
    while r0 < w.rows {
        let m = chunk_rows.min(w.rows - r0);
        let dec = &mut scratch[..m * cols];
        let src = &stored[r0 * rb..(r0 + m) * rb];
        dec.par_chunks_mut(cols)
            .zip(src.par_chunks(rb))
            .try_for_each(|(d, s)| strata_format::codec::decode_row(w.dtype, s, w.block, d))
            .map_err(|e| err(e.to_string()))?;
        let wt = Tensor::from_slice(&*dec, (m, cols), &Device::Cpu)?;
        let y = xt.matmul(&wt.t()?)?.flatten_all()?.to_vec1::<f32>()?;
        for t in 0..n {
            let dst = t * out_stride + col0 + r0;
            out[dst..dst + m].copy_from_slice(&y[t * m..(t + 1) * m]);
        }
        r0 += m;
    }
    Ok(())
}

/// Whether [`linear_into`] takes the fused kernels for `n` rows of `w`: up to
/// [`kernels::MAX_FUSED_ROWS`], or at any `n` for the int8 kernels
/// ([`kernels::fuses_any_rows`]).
fn fused(n: usize, w: &Weight<'_>) -> bool {
    n <= kernels::MAX_FUSED_ROWS || kernels::fuses_any_rows(Isa::selected(), w)
}

/// [`linear_into`] through the fused kernels, whatever `n` (the caller has
/// checked the lengths).
fn fused_into(
    x: &[f32],
    n: usize,
    w: &Weight<'_>,
    out: &mut [f32],
    out_stride: usize,
    col0: usize,
    what: (&str, &str),
) -> Result<()> {
    let err = |e: strata_format::CodecError| RunnerError::Tensor {
        file: what.0.into(),
        tensor: what.1.into(),
        reason: e.to_string(),
    };
    let isa = Isa::selected();
    if n == 1 {
        let y = &mut out[col0..col0 + w.rows];
        return kernels::linear_t(isa, w, x, 1, y).map_err(err);
    }
    // The kernels write `y[r * n + t]`: transpose into the rows of `out`,
    // a bounded chunk of W's rows at a time (a long prompt through a large
    // head would otherwise need rows × n more f32).
    let rb = w.row_bytes();
    if Some(w.bytes.len()) != w.rows.checked_mul(rb) {
        // Inconsistent: let the kernels name what is wrong.
        let mut y = vec![0f32; w.rows * n];
        return kernels::linear_t(isa, w, x, n, &mut y).map_err(err);
    }
    let mut chunk_rows = (CHUNK_ELEMS / n).clamp(1, w.rows.max(1));
    if w.layout == Layout::Interleaved8 {
        // Whole groups of interleaved rows.
        chunk_rows = chunk_rows.next_multiple_of(8);
    }
    let mut y = vec![0f32; chunk_rows.min(w.rows) * n];
    let mut r0 = 0;
    while r0 < w.rows {
        let m = chunk_rows.min(w.rows - r0);
        let part = Weight {
            rows: m,
            bytes: &w.bytes[r0 * rb..(r0 + m) * rb],
            ..*w
        };
        let y = &mut y[..m * n];
        kernels::linear_t(isa, &part, x, n, y).map_err(err)?;
        // A few of W's rows at a time, so that the rows of `y` being read
        // stay in the L1 cache across `t` (row by row, every read was
        // another cache line: 7% of a 512-token prefill, on one thread).
        for rt in (0..m).step_by(TRANSPOSE_ROWS) {
            let k = TRANSPOSE_ROWS.min(m - rt);
            for t in 0..n {
                let dst = &mut out[t * out_stride + col0 + r0 + rt..][..k];
                for (r, d) in dst.iter_mut().enumerate() {
                    *d = y[(rt + r) * n + t];
                }
            }
        }
        r0 += m;
    }
    Ok(())
}

/// `x[n, cols] · W[rows, cols]ᵀ` as a new `[n, rows]` vector.
pub fn linear(x: &[f32], n: usize, w: &Weight<'_>, what: (&str, &str)) -> Result<Vec<f32>> {
    let mut out = vec![0f32; n * w.rows];
    linear_into(x, n, w, &mut out, w.rows, 0, what)?;
    Ok(out)
}

/// `x · Wᵀ` for a batch whose rows come in consecutive groups (one group per
/// sequence, `groups[i]` rows each), every group computed as [`linear`] would
/// compute it alone: the groups small enough for the fused kernels go through
/// them together (a row's fused product is the same whatever rows share the
/// call), each larger group through the decode + matmul path on its own. So
/// batching sequences never changes one sequence's numbers.
pub fn linear_groups(
    x: &[f32],
    groups: &[usize],
    w: &Weight<'_>,
    what: (&str, &str),
) -> Result<Vec<f32>> {
    let n: usize = groups.iter().sum();
    let large = |g: usize| !fused(g, w);
    let cols = w.cols;
    if fused(n, w) || groups.len() <= 1 || x.len() != n * cols {
        // One way for every row (or an input whose length `linear` refuses).
        return linear(x, n, w, what);
    }
    let mut out = vec![0f32; n * w.rows];
    // The small groups' rows, gathered, through the fused kernels.
    let mut small = Vec::new();
    let mut row = 0;
    for &g in groups {
        if !large(g) {
            small.extend_from_slice(&x[row * cols..(row + g) * cols]);
        }
        row += g;
    }
    let ns = small.len() / cols.max(1);
    let mut ys = vec![0f32; ns * w.rows];
    if ns > 0 {
        fused_into(&small, ns, w, &mut ys, w.rows, 0, what)?;
    }
    let (mut row, mut srow) = (0, 0);
    for &g in groups {
        let dst = &mut out[row * w.rows..(row + g) * w.rows];
        if large(g) {
            linear_into(&x[row * cols..(row + g) * cols], g, w, dst, w.rows, 0, what)?;
        } else {
            dst.copy_from_slice(&ys[srow * w.rows..(srow + g) * w.rows]);
            srow += g;
        }
        row += g;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_format::{codec, DType};

    /// A `rows × cols` weight matrix of varied values in ±0.8.
    fn weights(rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
            .collect()
    }

    /// `n` input rows of varied values in ±1.8.
    fn inputs(n: usize, cols: usize) -> Vec<f32> {
        (0..n * cols)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 8.0)
            .collect()
    }

    /// Both paths (fused kernels for few rows, decode + matmul for many), every
    /// dtype, results placed at a column offset inside wider output rows.
    #[test]
    fn matches_naive_product_for_every_dtype_and_path() {
        let (rows, cols) = (70, 100);
        let wv = weights(rows, cols);
        for n in [1, 3, kernels::MAX_FUSED_ROWS + 1] {
            let x = inputs(n, cols);
            for dtype in [DType::F32, DType::F16, DType::Bf16, DType::Int8, DType::Nf4] {
                let block = dtype.is_quantized().then_some(64);
                let shape = [rows as u64, cols as u64];
                let bytes = codec::encode(dtype, &wv, &shape, block).unwrap();
                let dec = codec::decode(dtype, &bytes, &shape, block).unwrap();
                let w = Weight {
                    dtype,
                    rows,
                    cols,
                    block: block.unwrap_or(1) as usize,
                    bytes: &bytes,
                    layout: Layout::Rows,
                };
                let (stride, col0) = (rows + 9, 5);
                let mut y = vec![f32::NAN; n * stride];
                linear_into(&x, n, &w, &mut y, stride, col0, ("f", "t")).unwrap();
                // The fused NF4 kernel's int16 code table is within 0.6% of each
                // code value; everything else is within f32 rounding.
                let tol = if dtype == DType::Nf4 { 1e-2 } else { 1e-4 };
                for t in 0..n {
                    for r in 0..rows {
                        let terms = (0..cols).map(|c| x[t * cols + c] * dec[r * cols + c]);
                        let want: f32 = terms.clone().sum();
                        let mag: f32 = terms.map(f32::abs).sum();
                        let got = y[t * stride + col0 + r];
                        assert!(
                            (want - got).abs() <= tol * (1.0 + mag),
                            "{dtype} n{n} t{t} r{r}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// A batch of sequences, some small enough for the fused kernels and some
    /// not: every sequence's rows come out bit for bit as they do alone.
    #[test]
    fn grouped_rows_equal_each_group_alone() {
        let (rows, cols) = (40, 96);
        let wv = weights(rows, cols);
        let groups = [
            3,
            kernels::MAX_FUSED_ROWS + 6,
            1,
            kernels::MAX_FUSED_ROWS,
            2,
        ];
        let n: usize = groups.iter().sum();
        let x = inputs(n, cols);
        for dtype in [DType::F32, DType::Bf16, DType::Int8, DType::Nf4] {
            let block = dtype.is_quantized().then_some(32);
            let bytes = codec::encode(dtype, &wv, &[rows as u64, cols as u64], block).unwrap();
            let w = Weight {
                dtype,
                rows,
                cols,
                block: block.unwrap_or(1) as usize,
                bytes: &bytes,
                layout: Layout::Rows,
            };
            let all = linear_groups(&x, &groups, &w, ("f", "t")).unwrap();
            let mut row = 0;
            for &g in &groups {
                let alone = linear(&x[row * cols..(row + g) * cols], g, &w, ("f", "t")).unwrap();
                let got = &all[row * rows..(row + g) * rows];
                assert!(
                    got.iter()
                        .zip(&alone)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{dtype}: group of {g} at row {row}"
                );
                row += g;
            }
        }
    }

    #[test]
    fn outputs_too_small_are_errors() {
        let bytes = codec::encode(DType::F32, &[1.0; 8], &[2, 4], None).unwrap();
        let w = Weight {
            dtype: DType::F32,
            rows: 2,
            cols: 4,
            block: 1,
            bytes: &bytes,
            layout: Layout::Rows,
        };
        let mut y = vec![0f32; 3];
        let e = linear_into(&[1.0; 4], 1, &w, &mut y, 2, 2, ("f", "t")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "f: tensor `t`: output of 3 values cannot hold 1 rows of 2 at column 2 (stride 2)"
        );
        let e = linear_into(&[1.0; 3], 1, &w, &mut y, 2, 0, ("f", "t")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "f: tensor `t`: input has 3 values, expected 1 × 4"
        );
        linear_into(&[1.0; 4], 1, &w, &mut y, 2, 1, ("f", "t")).unwrap();
        assert_eq!(y, [0.0, 4.0, 4.0]);
    }
}
