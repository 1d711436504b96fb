//! Fused dequantize × multiply kernels: `x · Wᵀ` computed straight from a
//! weight's encoded bytes (SPEC.md §4), with no f32 copy of `W`.
//!
//! * `nf4` and `int8` weights, by default ([`ActQuant::Int8`]): as the GGML
//!   types below, with activations in int8 blocks of 32, NF4 codes looked up
//!   as signed bytes (code × 127) by a byte shuffle, dotted in integers
//!   (`vpmaddubsw` / `vpdpbusd`; `sdot` on NEON) and scaled by `weight
//!   scale × activation scale` in f32 (`ggml::own`).
//! * `nf4` and `int8` weights with [`ActQuant::Int16`] (`STRATA_ACTS=int16`,
//!   and for blocks the int8 kernels do not take): the
//!   activation rows are quantized to int16 per weight block (`quant_act`),
//!   NF4 codes become int16 through a 16-entry table (`vpermw`, or byte
//!   shuffles), int8 weights are widened, and blocks are dotted in integers
//!   (`vpdpwssd` / `vpmaddwd`), then scaled in f32.
//! * the GGML block encodings kept from GGUF files (`q4_0` … `q6_k`), as
//!   llama.cpp's ggml-cpu computes them: activations quantized once per call
//!   to int8 blocks (Q8_0 / Q8_K style), weight blocks unpacked to small
//!   integers and dotted in integers (`vpmaddubsw` / `vpdpbusd`), the block
//!   scales and minimums applied in f32 ([`ggml`]; `sdot` on NEON).
//! * `f32`, `f16` and `bf16` weights: converted to f32 in registers and
//!   multiplied with f32 FMA (no activation quantization).
//!
//! Each encoding has a scalar reference and AVX2, AVX-512 (x86-64) and NEON
//! (aarch64) paths, chosen at run time ([`Isa::selected`]). Rows of `W` are
//! shared out to rayon's global pool; for each row, up to four activation
//! rows are computed together so that a weight row is decoded once per four
//! tokens.

mod dispatch;
mod float;
mod ggml;
mod int8;
mod nf4;
mod quant_act;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

use rayon::prelude::*;
use strata_format::codec::ggml::GgmlType;
use strata_format::codec::{decode_row, row_bytes};
use strata_format::dtype::check_block_size;
use strata_format::{CodecError, DType};

use crate::container::Weight;
pub use dispatch::{ActQuant, Isa, ACTS_ENV, ISA_ENV};
pub use ggml::Layout;
use quant_act::{quantize, Order};

/// Up to this many activation rows, [`linear_t`] beats decoding `W` to f32
/// and calling candle's matrix product; the runner's `linear_into` switches
/// there. Measured on SmolLM2-135M NF4 prefill, 2 threads: the fused kernels
/// were ahead at 16, 32 and 64 tokens (by 1.4–3×) and behind at 128 (by 2×),
/// where one decoded weight row serves many more tokens.
pub const MAX_FUSED_ROWS: usize = 64;

/// Elements of one exact integer sum in the `nf4` and `int8` kernels before
/// it is converted to f32: `256 × 1024 × 8191 < 2³¹` (|weight| ≤ 1024,
/// |activation| ≤ 8191), so no sum can overflow whatever the block size.
const SEGMENT: usize = 256;

/// Multiply-adds one parallel task should at least get (smaller products run
/// on fewer tasks, down to one, on the calling thread).
const MIN_TASK_MACS: usize = 1 << 16;

/// Computes `out[r * n + t] = Σ_c x[t * cols + c] · W[r, c]` for every row `r`
/// of `w` and every row `t < n` of `x` (so for `n = 1`, `out` is `x · Wᵀ`).
///
/// Uses the `isa` path when this machine runs it, else the scalar reference.
/// Fails on inconsistent lengths or block sizes, and on a weight block whose
/// stored scale is invalid (SPEC.md §4.4), naming the block like
/// [`strata_format::codec::decode_row`].
pub fn linear_t(
    isa: Isa,
    w: &Weight<'_>,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) -> Result<(), CodecError> {
    linear_t_with(isa, ActQuant::selected(), w, x, n, out)
}

/// Whether [`linear_t`] computes `w` with the int8 kernels of strata's own
/// encodings on the `isa` path (as [`ActQuant::selected`] says): those beat
/// decoding `W` to f32 for a matrix product at any number of activation
/// rows, so the runner's `linear_into` uses them beyond [`MAX_FUSED_ROWS`].
pub fn fuses_any_rows(isa: Isa, w: &Weight<'_>) -> bool {
    let isa = if isa.is_available() { isa } else { Isa::Scalar };
    ActQuant::selected() == ActQuant::Int8
        && !matches!(isa, Isa::Scalar)
        && ggml::Own::of(w.dtype, w.block, w.cols).is_some()
}

/// Whether [`interleave`] would lay out a weight of `w`'s encoding and
/// shape for the kernels of the `isa` path (as [`ActQuant::selected`]
/// says): `nf4` or `int8` in blocks of 64 through the int8 kernels of a
/// SIMD path, at least 8 rows, as stored (`w.bytes` is not looked at).
pub fn interleavable(isa: Isa, w: &Weight<'_>) -> bool {
    matches!(isa, Isa::Avx2 | Isa::Avx512 | Isa::Neon)
        && isa.is_available()
        && w.layout == Layout::Rows
        && w.block == 64
        && w.rows >= 8
        && ActQuant::selected() == ActQuant::Int8
        && ggml::Own::of(w.dtype, w.block, w.cols).is_some()
}

/// Lays out, in place, the stored bytes `bytes` of a weight of `w`'s
/// encoding and shape (`w.bytes` is not looked at: it may be empty) for the
/// int8 kernels, where [`interleavable`]: each whole group of 8 rows is
/// interleaved so that the kernels read 8 rows' weights as they multiply
/// them (llama.cpp repacks its weights for its CPU kernels alike), the rows
/// after as stored. Returns the layout the bytes then have:
/// [`Layout::Interleaved8`], or [`Layout::Rows`] (bytes untouched) when the
/// weight is not interleavable, `bytes` is not its length or a block scale is
/// invalid (left for the kernels to report with the block named).
pub fn interleave(isa: Isa, w: &Weight<'_>, bytes: &mut [u8]) -> Layout {
    let len = w
        .rows
        .checked_mul(row_bytes(w.dtype, w.cols, w.block.max(1)));
    if !interleavable(isa, w) || len != Some(bytes.len()) {
        return Layout::Rows;
    }
    let bb = row_bytes(w.dtype, w.block, w.block);
    if bytes
        .chunks_exact(bb)
        .any(|blk| scale_is_bad(scale_bits(blk)))
    {
        return Layout::Rows;
    }
    ggml::interleave(bytes, row_bytes(w.dtype, w.cols, w.block), bb);
    Layout::Interleaved8
}

/// The rows of `w` as stored: its bytes when they are, else a copy with the
/// interleaving ([`interleave`]) undone.
pub fn stored_rows<'a>(w: &Weight<'a>) -> std::borrow::Cow<'a, [u8]> {
    match w.layout {
        Layout::Rows => std::borrow::Cow::Borrowed(w.bytes),
        Layout::Interleaved8 => {
            let mut b = w.bytes.to_vec();
            let rb = row_bytes(w.dtype, w.cols, w.block.max(1));
            let bb = row_bytes(w.dtype, w.block, w.block.max(1));
            if rb > 0 && bb > 0 && b.len().is_multiple_of(rb) && rb.is_multiple_of(bb) {
                ggml::deinterleave(&mut b, rb, bb);
            }
            std::borrow::Cow::Owned(b)
        }
    }
}

/// Row `r` of `w` as stored (a copy), whatever its layout; `None` when `w`
/// has no row `r` in its bytes.
pub fn stored_row(w: &Weight<'_>, r: usize) -> Option<Vec<u8>> {
    let rb = row_bytes(w.dtype, w.cols, w.block.max(1));
    let full = w.rows / 8 * 8;
    if w.layout == Layout::Rows || r >= full {
        return w.bytes.get(r * rb..(r + 1) * rb).map(<[u8]>::to_vec);
    }
    let g = w.bytes.get(r / 8 * 8 * rb..(r / 8 + 1) * 8 * rb)?;
    let mut rows = g.to_vec();
    ggml::deinterleave(&mut rows, rb, row_bytes(w.dtype, w.block, w.block));
    Some(rows[r % 8 * rb..(r % 8 + 1) * rb].to_vec())
}

/// [`linear_t`] with the activations of `nf4` and `int8` weights quantized
/// as `aq` says (where the `isa` path has int8 kernels for them).
pub fn linear_t_with(
    isa: Isa,
    aq: ActQuant,
    w: &Weight<'_>,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) -> Result<(), CodecError> {
    let (rows, cols) = (w.rows, w.cols);
    let check = |what, expected: usize, actual| {
        if expected == actual {
            Ok(())
        } else {
            Err(CodecError::Length {
                what,
                expected,
                actual,
            })
        }
    };
    check("activations", n * cols, x.len())?;
    check("outputs", n * rows, out.len())?;
    if w.dtype.is_quantized() {
        check_block_size(u32::try_from(w.block).unwrap_or(0))?;
    }
    let rb = row_bytes(w.dtype, cols, w.block.max(1));
    check("weight bytes", rows * rb, w.bytes.len())?;
    let ggml = w.dtype.ggml();
    if let Some(t) = ggml {
        // GGML rows are whole blocks (SPEC.md §4.6), as the decoder says.
        let be = t.block_elems();
        if cols % be != 0 {
            return Err(CodecError::Length {
                what: "values (a whole number of blocks)",
                expected: cols.div_ceil(be) * be,
                actual: cols,
            });
        }
    }
    if n == 0 || rows == 0 || cols == 0 {
        out.fill(0.0);
        return Ok(());
    }
    let isa = if isa.is_available() { isa } else { Isa::Scalar };
    let own = ggml::Own::of(w.dtype, w.block, cols).filter(|_| aq == ActQuant::Int8);
    if w.layout == Layout::Interleaved8 && (own.is_none() || w.block != 64) {
        // Only the int8 kernels read interleaved rows.
        let rows = stored_rows(w);
        let stored = Weight {
            bytes: &rows,
            layout: Layout::Rows,
            ..*w
        };
        return linear_t_with(isa, aq, &stored, x, n, out);
    }
    let acts = match (w.dtype, ggml, own) {
        (_, _, Some(k)) => Acts::Own(k, ggml::quantize(x, n, cols, ggml::OWN_ACT_BLOCK)),
        (DType::Nf4, _, _) => Acts::Int16(quantize(x, n, cols, w.block, Order::Nf4)),
        (DType::Int8, _, _) => Acts::Int16(quantize(x, n, cols, w.block, Order::Natural)),
        (_, Some(t), _) => Acts::Int8(t, ggml::quantize(x, n, cols, t.block_elems())),
        (_, None, _) => Acts::Float,
    };
    let task = |wb: &[u8], o: &mut [f32]| -> bool {
        match (w.dtype, &acts) {
            (_, Acts::Own(k, a)) => ggml::own_rows(isa, *k, w.block, w.layout, wb, rb, a, n, o),
            (DType::Nf4, Acts::Int16(a)) => nf4::rows(isa, wb, rb, a, n, o),
            (_, Acts::Int16(a)) => int8::rows(isa, wb, rb, a, n, o),
            (_, Acts::Int8(t, a)) => {
                ggml::rows(isa, *t, wb, rb, a, n, o);
                false
            }
            (dtype, Acts::Float) => {
                float::rows(isa, float::Kind::of(dtype), wb, x, cols, n, o);
                false
            }
        }
    };
    let threads = rayon::current_num_threads();
    let tasks = (rows * cols * n / MIN_TASK_MACS).clamp(1, 4 * threads);
    let bad = if tasks == 1 || threads == 1 {
        task(w.bytes, out)
    } else {
        // Whole groups of 8 rows per task where possible (the int8 kernels
        // take 8 weight rows at a time against several activation rows).
        let per = rows.div_ceil(tasks).next_multiple_of(8);
        out.par_chunks_mut(per * n)
            .zip(w.bytes.par_chunks(per * rb))
            .map(|(o, wb)| task(wb, o))
            .reduce(|| false, |a, b| a | b)
    };
    if bad {
        // Name the offending block exactly as the reference decoder does.
        let mut scratch = vec![0f32; cols];
        for row in stored_rows(w).chunks_exact(rb) {
            decode_row(w.dtype, row, w.block, &mut scratch)?;
        }
    }
    Ok(())
}

/// The activations as a product's kernel takes them.
enum Acts {
    /// Quantized to int16 per weight block (`nf4`, `int8`).
    Int16(quant_act::QuantActs),
    /// Quantized to int8 blocks of 32 for strata's `nf4` or `int8` weights.
    Own(ggml::Own, ggml::Q8Acts),
    /// Quantized to int8 blocks for a GGML block type.
    Int8(GgmlType, ggml::Q8Acts),
    /// As they are (`f32`, `f16`, `bf16` weights).
    Float,
}

/// Whether an f16 block scale (by its bits) is invalid: NaN, infinite or
/// negative (−0 is allowed), as SPEC.md §4.4 says readers must refuse.
#[inline]
fn scale_is_bad(bits: u16) -> bool {
    bits & 0x7c00 == 0x7c00 || bits > 0x8000
}

/// The f16 scale at the start of a block (little-endian bits).
#[inline]
fn scale_bits(block: &[u8]) -> u16 {
    u16::from_le_bytes([block[0], block[1]])
}

/// Runs `$tile::<T>(args…)` for every weight row (`$row`, `$rb` bytes each,
/// with its `n` outputs `$o`) and every tile of up to four activation rows
/// starting at `$t0`; evaluates to the OR of the tiles' bad-scale flags.
macro_rules! tiled_rows {
    ($w:expr, $rb:expr, $n:expr, $out:expr,
     |$row:ident, $t0:ident, $o:ident| $tile:ident($($arg:expr),* $(,)?)) => {{
        let n: usize = $n;
        let mut bad = false;
        for ($row, $o) in $w.chunks_exact($rb).zip($out.chunks_exact_mut(n)) {
            let mut $t0 = 0;
            while $t0 < n {
                bad |= match n - $t0 {
                    1 => $tile::<1>($($arg),*),
                    2 => $tile::<2>($($arg),*),
                    3 => $tile::<3>($($arg),*),
                    _ => $tile::<4>($($arg),*),
                };
                $t0 += (n - $t0).min(4);
            }
        }
        bad
    }};
}
use tiled_rows;
