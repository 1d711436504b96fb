//! `y = x · Wᵀ` straight from a weight's encoded bytes: rows are decoded in
//! bounded chunks (so a 940 MB matrix never needs 940 MB of f32) and each
//! chunk is multiplied with candle's CPU matmul.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::container::Weight;
use crate::error::{Result, RunnerError};

/// Largest decoded chunk, in f32 elements (16 MiB).
const CHUNK_ELEMS: usize = 4 << 20;

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
    if x.len() != n * cols {
        return Err(RunnerError::Tensor {
            file: what.0.into(),
            tensor: what.1.into(),
            reason: format!("input has {} values, expected {n} × {cols}", x.len()),
        });
    }
    let xt = Tensor::from_slice(x, (n, cols), &Device::Cpu)?;
    let chunk_rows = (CHUNK_ELEMS / cols.max(1)).clamp(1, w.rows.max(1));
    let rb = w.row_bytes();
    let mut scratch = vec![0f32; chunk_rows * cols];
    let mut r0 = 0;
    while r0 < w.rows {
        let m = chunk_rows.min(w.rows - r0);
        let dec = &mut scratch[..m * cols];
        let src = &w.bytes[r0 * rb..(r0 + m) * rb];
        dec.par_chunks_mut(cols)
            .zip(src.par_chunks(rb))
            .try_for_each(|(d, s)| strata_format::codec::decode_row(w.dtype, s, w.block, d))
            .map_err(|e| RunnerError::Tensor {
                file: what.0.into(),
                tensor: what.1.into(),
                reason: e.to_string(),
            })?;
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

/// `x[n, cols] · W[rows, cols]ᵀ` as a new `[n, rows]` vector.
pub fn linear(x: &[f32], n: usize, w: &Weight<'_>, what: (&str, &str)) -> Result<Vec<f32>> {
    let mut out = vec![0f32; n * w.rows];
    linear_into(x, n, w, &mut out, w.rows, 0, what)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_format::{codec, DType};

    #[test]
    fn matches_naive_product_for_every_dtype() {
        let (rows, cols, n) = (70, 100, 3);
        let wv: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
            .collect();
        let x: Vec<f32> = (0..n * cols)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 8.0)
            .collect();
        for dtype in [DType::F32, DType::F16, DType::Bf16, DType::Int8, DType::Nf4] {
            let block = dtype.is_quantized().then_some(64);
            let bytes = codec::encode(dtype, &wv, &[rows as u64, cols as u64], block).unwrap();
            let dec = codec::decode(dtype, &bytes, &[rows as u64, cols as u64], block).unwrap();
            let w = Weight {
                dtype,
                rows,
                cols,
                block: block.unwrap_or(1) as usize,
                bytes: &bytes,
            };
            let y = linear(&x, n, &w, ("f", "t")).unwrap();
            for t in 0..n {
                for r in 0..rows {
                    let want: f32 = (0..cols).map(|c| x[t * cols + c] * dec[r * cols + c]).sum();
                    let got = y[t * rows + r];
                    assert!(
                        (want - got).abs() < 1e-3 * (1.0 + want.abs()),
                        "{dtype} t{t} r{r}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
