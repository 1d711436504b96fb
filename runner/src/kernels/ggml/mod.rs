//! GGML block encodings (SPEC.md §4.6) × f32 activations, computed the way
//! llama.cpp's ggml-cpu does: the activation rows are quantized once per call
//! to int8 blocks ([`acts`]: Q8_0-style blocks of 32 for the 32-element
//! types, Q8_K-style blocks of 256 with 16-element sums for the K types),
//! then every weight block is unpacked to small integers and dotted with
//! them in exact integer sums, and the block scales are applied in f32.
//!
//! * [`scalar`]: the portable reference (integers straight from the spec).
//! * [`simd`]: the kernels written once against a per-ISA vocabulary, with
//!   the x86-64 vocabulary in `x86` (AVX2 `vpmaddubsw`/`vpmaddwd`; AVX-512
//!   VNNI `vpdpbusd` for the unscaled dot products) and the aarch64 one in
//!   `neon` (`sdot` where the CPU has the dot product extension, else
//!   `smull`/`sadalp`).
//!
//! Up to four activation rows are computed together, so that a weight block
//! is unpacked once per four tokens; each row's result does not depend on
//! how the rows were grouped (bit for bit).
//!
//! Against the exact product of the decoded weights, the outputs differ by
//! the activations' rounding (at most `d_x / 2` per element, `d_x = max|x| /
//! 127` of its block) and f32 rounding.

mod acts;
#[cfg(target_arch = "aarch64")]
mod neon;
mod own;
mod scalar;
mod simd;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

use strata_format::codec::ggml::GgmlType;

pub(crate) use acts::{quantize, Q8Acts};
pub use own::Layout;
pub(crate) use own::{deinterleave, interleave, Own, ACT_BLOCK as OWN_ACT_BLOCK};
#[cfg(test)]
pub(crate) use own::{NF4_I8, NF4_ONE};

use super::Isa;

/// Computes `out[r * n + t] = Σ_c W[r, c] · x[t, c]` for the rows of `w`
/// (`rb` bytes of type-`t` blocks each) and the `n` rows of `acts` (quantized
/// from `x` in blocks of `t.block_elems()`), with the vocabulary of `isa`
/// (the scalar reference for an ISA without one). The caller has checked
/// every length.
pub(crate) fn rows(
    isa: Isa,
    t: GgmlType,
    w: &[u8],
    rb: usize,
    acts: &Q8Acts,
    n: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        Isa::Avx512 => {
            if let Some(v) = x86::Avx512::new() {
                // SAFETY: `v` exists only on a CPU with the function's target
                // features (AVX-512 F/BW/VL/VNNI, AVX2, FMA, F16C).
                return unsafe { x86::rows_avx512(v, t, w, rb, acts, n, out) };
            }
        }
        Isa::Avx2 => {
            if let Some(v) = x86::Avx2::new() {
                // SAFETY: `v` exists only on a CPU with AVX2, FMA and F16C.
                return unsafe { x86::rows_avx2(v, t, w, rb, acts, n, out) };
            }
        }
        _ => {}
    }
    #[cfg(target_arch = "aarch64")]
    if isa == Isa::Neon {
        if let Some(v) = neon::NeonDot::new() {
            // SAFETY: `v` exists only on a CPU with NEON and the dot product
            // extension.
            return unsafe { neon::rows_dot(v, t, w, rb, acts, n, out) };
        }
        if let Some(v) = neon::NeonPlain::new() {
            // SAFETY: `v` exists only on a CPU with NEON.
            return unsafe { neon::rows_plain(v, t, w, rb, acts, n, out) };
        }
    }
    let _ = isa;
    scalar::rows(t, w, rb, acts, n, out)
}

/// Computes `out[r * n + t]` for the rows of `w` (`rb` bytes of strata's
/// `kind` blocks of `block` each, laid out as `layout` says) and the `n`
/// rows of `acts` (quantized in blocks of [`OWN_ACT_BLOCK`]) with the
/// vocabulary of `isa` (the scalar reference for an ISA without one);
/// returns whether a block scale was invalid. The caller has checked every
/// length, and that interleaved rows have blocks of 64.
#[allow(clippy::too_many_arguments)] // `rows`'s, with the block size and layout
pub(crate) fn own_rows(
    isa: Isa,
    kind: Own,
    block: usize,
    layout: Layout,
    w: &[u8],
    rb: usize,
    acts: &Q8Acts,
    n: usize,
    out: &mut [f32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    match isa {
        Isa::Avx512 => {
            if let Some(v) = x86::Avx512::new() {
                // SAFETY: `v` exists only on a CPU with the function's target
                // features (AVX-512 F/BW/VL/VNNI, AVX2, FMA, F16C).
                return unsafe {
                    x86::own_rows_avx512(v, kind, block, layout, w, rb, acts, n, out)
                };
            }
        }
        Isa::Avx2 => {
            if let Some(v) = x86::Avx2::new() {
                // SAFETY: `v` exists only on a CPU with AVX2, FMA and F16C.
                return unsafe { x86::own_rows_avx2(v, kind, block, layout, w, rb, acts, n, out) };
            }
        }
        _ => {}
    }
    #[cfg(target_arch = "aarch64")]
    if isa == Isa::Neon {
        if let Some(v) = neon::NeonDot::new() {
            // SAFETY: `v` exists only on a CPU with NEON and the dot product
            // extension.
            return unsafe { neon::own_rows_dot(v, kind, block, layout, w, rb, acts, n, out) };
        }
        if let Some(v) = neon::NeonPlain::new() {
            // SAFETY: `v` exists only on a CPU with NEON.
            return unsafe { neon::own_rows_plain(v, kind, block, layout, w, rb, acts, n, out) };
        }
    }
    let _ = isa;
    match layout {
        Layout::Rows => own::rows_scalar(kind, block, w, rb, acts, n, out),
        Layout::Interleaved8 => {
            // The reference reads rows as stored.
            let mut rows = w.to_vec();
            deinterleave(&mut rows, rb, own::block_bytes(kind, block));
            own::rows_scalar(kind, block, &rows, rb, acts, n, out)
        }
    }
}

/// An f16 value given by its bits, as f32 (exact): normal numbers and zero
/// in a few integer operations, the rest through the `half` crate.
#[inline(always)]
fn f16_to_f32(bits: u16) -> f32 {
    let h = u32::from(bits);
    let (sign, em) = ((h & 0x8000) << 16, h & 0x7fff);
    if (0x0400..0x7c00).contains(&em) {
        // Rebias the exponent (15 → 127) and widen the mantissa (10 → 23 bits).
        f32::from_bits(sign | ((em + ((127 - 15) << 10)) << 13))
    } else if em == 0 {
        f32::from_bits(sign)
    } else {
        half::f16::from_bits(bits).to_f32()
    }
}

/// Computes `out[r * n + t]` like [`rows`] from the f32 activations `x` (`n`
/// rows of `cols`): each weight row decoded to f32 by the format's reference
/// decoder, then multiplied with the f32 kernels of [`super::float`] (the
/// product of the decoded weights up to f32 rounding): the benchmarks'
/// baseline. The caller has checked every length (a row that failed to
/// decode would give NaN).
#[cfg(test)]
#[allow(clippy::too_many_arguments)] // `float::rows`'s, with the block type
pub(crate) fn decoded_rows(
    isa: Isa,
    t: GgmlType,
    w: &[u8],
    rb: usize,
    x: &[f32],
    cols: usize,
    n: usize,
    out: &mut [f32],
) {
    use super::float::{self, Kind};
    let mut dec = vec![0f32; cols];
    let mut bytes = vec![0u8; cols * 4];
    for (row, o) in w.chunks_exact(rb).zip(out.chunks_exact_mut(n)) {
        if t.decode(row, &mut dec).is_err() {
            o.fill(f32::NAN);
            continue;
        }
        for (b, v) in bytes.chunks_exact_mut(4).zip(&dec) {
            b.copy_from_slice(&v.to_le_bytes());
        }
        float::rows(isa, Kind::F32, &bytes, x, cols, n, o);
    }
}
