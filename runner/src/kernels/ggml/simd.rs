//! The GGML kernels written once, against a small per-ISA vocabulary
//! ([`Simd`], as ggml-cpu writes its kernels against `simd-mappings.h`).
//!
//! Every weight block is unpacked into 32-byte vectors of small integers in
//! element order — unsigned (`0 ..= 63`) for the K types and Q4_1 / Q5_1,
//! signed for Q4_0, Q5_0 and Q8_0 — and dotted with the int8 activations of
//! [`super::acts`] in exact integer sums, then scaled in f32:
//!
//! * 32-element types: `Σ d_w·d_x·Σq_w·q_x (+ m_w · d_x·Σq_x)`, one integer
//!   dot per block (`dot_i8` for the signed ones, `dot_u8` for the others).
//! * K types: weights `y = d·sc[g]·q − dm·m[g]` per group `g` of 16, with `q`
//!   unsigned; `Σ_g sc[g]·Σ q·x` comes from `dot_scaled` and `Σ_g m[g]·bsum[g]`
//!   from one `madd` against the activations' 16-element sums. Q6_K and Q3_K
//!   store signed values `q − 32`, `q − 4`: their offset is such a minimum
//!   term with `m = sc`, taken off in the integers (`Σ sc·q·x − 32·Σ sc·bsum`).
//!
//! Every function here is `#[inline(always)]` and generic over the
//! vocabulary; the per-ISA entry points that call [`rows`] enable the target
//! features, so the whole kernel is compiled, inlined, for each ISA.

use strata_format::codec::ggml::GgmlType;

use super::acts::{Q8Acts, Q8Row};

/// The operations the kernels are written in. `B` is 32 bytes and `H` 16
/// bytes; `I` holds 32-bit integer partial sums and `F` f32 partial sums
/// (8 lanes each, in the order of [`Simd::load_i32x8`] and
/// [`Simd::load_f32x8`]; [`Simd::hsum`] adds them in its own order);
/// `S` is a pair of scales prepared for [`Simd::dot_scaled`] and `M` a K
/// super-block's 16 minimums prepared for [`Simd::dot_mins`].
pub(super) trait Simd: Copy {
    /// 32 bytes.
    type B: Copy;
    /// 16 bytes.
    type H: Copy;
    /// Integer partial sums.
    type I: Copy;
    /// f32 partial sums.
    type F: Copy;
    /// Two scales for [`Simd::dot_scaled`].
    type S: Copy;
    /// 16 minimums for [`Simd::dot_mins`].
    type M: Copy;
    /// Whether [`Simd::dot_u8`] takes any unsigned byte `w` (its products
    /// summed in 32 bits, as `vpdpbusd` does), not only `w ≤ 128`.
    const WIDE_U8: bool;
    /// Whether [`Simd::dot_u8`] is the cheaper product (x86-64: one
    /// `vpmaddubsw` or `vpdpbusd`, where [`Simd::dot_i8`] adds sign tricks),
    /// so that weights that fit are best biased into unsigned bytes; where
    /// false, `dot_u8` need only be right for `w ≤ 127`.
    const DOT_U8: bool;

    /// 32 bytes.
    fn load(self, a: &[u8; 32]) -> Self::B;
    /// 32 signed bytes.
    fn load_i8(self, a: &[i8; 32]) -> Self::B;
    /// Bytes `a[i] & 15` then `a[i] >> 4` (`i < 16`).
    fn nibbles(self, a: &[u8; 16]) -> Self::B;
    /// Byte `i` is `0xff` where bit `i` of `bits` is set, else 0.
    fn bits(self, bits: u32) -> Self::B;
    /// Byte `i` is `0xff` where bit `bit` (`< 8`) of `a[i]` is set, else 0.
    fn test_bit(self, a: Self::B, bit: u32) -> Self::B;
    /// `v` in every byte.
    fn splat(self, v: u8) -> Self::B;
    /// A 16-entry byte table for [`Simd::lookup`].
    fn table(self, t: &[i8; 16]) -> Self::B;
    /// Byte `i` is `table[idx[i]]` (`idx[i] < 16`).
    fn lookup(self, table: Self::B, idx: Self::B) -> Self::B;
    /// `a & b`.
    fn and(self, a: Self::B, b: Self::B) -> Self::B;
    /// `a ^ b`.
    fn xor(self, a: Self::B, b: Self::B) -> Self::B;
    /// `a | b`.
    fn or(self, a: Self::B, b: Self::B) -> Self::B;
    /// `!a & b`.
    fn andnot(self, a: Self::B, b: Self::B) -> Self::B;
    /// `a − b` per byte (wrapping).
    fn sub8(self, a: Self::B, b: Self::B) -> Self::B;
    /// Each byte shifted right by `S`; its top `S` bits may receive bits of
    /// the byte above (x86 shifts 16-bit lanes), so the result is exact only
    /// once masked to the low `8 − S` bits.
    fn srl<const S: i32>(self, a: Self::B) -> Self::B;
    /// Each byte shifted left by `S`; its low `S` bits may receive bits of
    /// the byte below, so the result is exact only once masked to the high
    /// `8 − S` bits.
    fn sll<const S: i32>(self, a: Self::B) -> Self::B;
    /// No partial sums.
    fn izero(self) -> Self::I;
    /// `acc + Σ w·x` with `w` unsigned bytes `≤ 128` (any, when
    /// [`Simd::WIDE_U8`]) and `x` signed bytes in `-127..=127` (so that no
    /// pair of products leaves int16).
    fn dot_u8(self, acc: Self::I, w: Self::B, x: Self::B) -> Self::I;
    /// `acc + Σ w·x` with `w` any signed bytes and `x` in `-127..=127`.
    fn dot_i8(self, acc: Self::I, w: Self::B, x: Self::B) -> Self::I;
    /// `acc + lo·Σ_{i<16} w·x + hi·Σ_{i≥16} w·x` for the pair `s = (lo, hi)`,
    /// with `w` unsigned bytes `≤ 63` and `x` in `-127..=127`.
    fn dot_scaled(self, acc: Self::I, w: Self::B, x: Self::B, s: Self::S) -> Self::I;
    /// 16 bytes.
    fn h_load(self, a: &[u8; 16]) -> Self::H;
    /// Four little-endian words.
    fn h_words(self, w: [u32; 4]) -> Self::H;
    /// `v` in every byte.
    fn h_splat(self, v: u8) -> Self::H;
    /// `a & b`.
    fn h_and(self, a: Self::H, b: Self::H) -> Self::H;
    /// Each byte's high nibble.
    fn h_hi4(self, a: Self::H) -> Self::H;
    /// `a − b` per byte (wrapping).
    fn h_sub8(self, a: Self::H, b: Self::H) -> Self::H;
    /// Pairs `(h[v], h[v])`, `v < 8`, of the signed bytes 0..8 of `h` (one
    /// scale per 32 elements).
    fn scales8(self, h: Self::H) -> [Self::S; 8];
    /// Pairs `(h[2v], h[2v + 1])`, `v < 8`, of the signed bytes of `h` (one
    /// scale per 16 elements).
    fn scales16(self, h: Self::H) -> [Self::S; 8];
    /// Minimums `m[g] = h[8 + g / 2]` (signed bytes 8..16 of `h`, one per 32
    /// elements).
    fn mins8(self, h: Self::H) -> Self::M;
    /// Minimums `m[g] = h[g]` (signed bytes, one per 16 elements).
    fn mins16(self, h: Self::H) -> Self::M;
    /// `Σ_g m[g]·sums[g]`.
    fn dot_mins(self, m: Self::M, sums: &[i16; 16]) -> Self::I;
    /// `a − k·b`.
    fn imsub(self, a: Self::I, b: Self::I, k: i32) -> Self::I;
    /// No partial sums.
    fn fzero(self) -> Self::F;
    /// `acc + f32(i) · s`.
    fn fmadd(self, acc: Self::F, i: Self::I, s: f32) -> Self::F;
    /// `a + b`.
    fn fadd(self, a: Self::F, b: Self::F) -> Self::F;
    /// Eight partial sums' totals: value `j` is the sum of `i[j]` (values
    /// as [`Simd::load_i32x8`] and [`Simd::f16x8`] order them).
    fn totals8(self, i: [Self::I; 8]) -> Self::I;
    /// Eight `i32`.
    fn load_i32x8(self, a: &[i32; 8]) -> Self::I;
    /// Eight `f32`.
    fn load_f32x8(self, a: &[f32; 8]) -> Self::F;
    /// Eight f16 values given by their bits, as f32, and whether any of
    /// them is NaN, infinite or negative (−0 allowed).
    fn f16x8(self, bits: [u16; 8]) -> (Self::F, bool);
    /// [`Simd::f16x8`] of the 8 little-endian f16 values in `a`.
    fn f16x8_at(self, a: &[u8; 16]) -> (Self::F, bool);
    /// `acc + f32(i) · s`, value by value.
    fn fmadd_v(self, acc: Self::F, i: Self::I, s: Self::F) -> Self::F;
    /// Sum of the partial sums.
    fn hsum(self, a: Self::F) -> f32;
    /// An f16 value given by its bits, as f32.
    fn f16(self, bits: u16) -> f32;
    /// The two f16 values of a little-endian word (low half first), as f32.
    fn f16x2(self, bits: u32) -> (f32, f32);
    /// Asks for the memory some way ahead of `s` (the weight stream).
    fn prefetch(self, s: &[u8]);
    /// Asks for the cache line holding the first byte of `s`, into the
    /// outer caches (for data wanted a while later).
    fn fetch(self, s: &[u8]);
    /// The 4 bytes `a` in each of the 8 four-byte lanes.
    fn bcast4(self, a: &[i8; 4]) -> Self::B;
    /// The 8 × 8 transpose of four-byte lanes: lane `r` of output `j` is
    /// lane `j` of `rows[r]`, lanes in the order of [`Simd::load_i32x8`],
    /// which is also the order of the sums [`Simd::dot_u8`] and
    /// [`Simd::dot_i8`] leave for each lane's 4 bytes.
    fn transpose8(self, rows: [Self::B; 8]) -> [Self::B; 8];
    /// The 4 × 4 transposes of four-byte lanes within each half: lane
    /// `4h + p` of output `q` is lane `4h + q` of `rows[p]` (lanes in the
    /// order of [`Simd::load_i32x8`]).
    fn transpose4(self, rows: [Self::B; 4]) -> [Self::B; 4];
    /// Each half's lanes added to the other's: lane `p < 4` is `lo[p] +
    /// lo[p + 4]`, lane `4 + p` is `hi[p] + hi[p + 4]`.
    fn fold2(self, lo: Self::I, hi: Self::I) -> Self::I;
    /// The four f16 values of `bits` (value `j` in bits `16j ..`), as f32,
    /// twice: value `j` and `j + 4` are the `j`th.
    fn f16x4x2(self, bits: u64) -> Self::F;
    /// `v` in every value.
    fn isplat(self, v: i32) -> Self::I;
    /// `a − b`.
    fn isub(self, a: Self::I, b: Self::I) -> Self::I;
    /// `a + b`.
    fn iadd(self, a: Self::I, b: Self::I) -> Self::I;
    /// `a · b`, value by value.
    fn fmul(self, a: Self::F, b: Self::F) -> Self::F;
    /// `a · s`, value by value.
    fn fscale(self, a: Self::F, s: f32) -> Self::F;
    /// The eight values of `a`, in the order of [`Simd::load_f32x8`].
    fn store_f32x8(self, a: Self::F) -> [f32; 8];
    /// The eight values of `a`, in the order of [`Simd::load_i32x8`].
    fn store_i32x8(self, a: Self::I) -> [i32; 8];
}

/// `L` bytes of `b` from byte `A` (bounds checked when compiled).
#[inline(always)]
fn at<const A: usize, const L: usize, const N: usize>(b: &[u8; N]) -> &[u8; L] {
    const { assert!(A + L <= N) };
    match b[A..A + L].try_into() {
        Ok(s) => s,
        // `b[A..A + L]` is `L` bytes: the conversion cannot fail.
        Err(_) => unreachable!(),
    }
}

/// The f16 at byte `A` of `b`, as f32.
#[inline(always)]
fn f16_at<V: Simd, const A: usize, const N: usize>(v: V, b: &[u8; N]) -> f32 {
    v.f16(u16::from_le_bytes(*at::<A, 2, N>(b)))
}

/// The two f16 at bytes `A` and `A + 2` of `b`, as f32.
#[inline(always)]
fn f16x2_at<V: Simd, const A: usize, const N: usize>(v: V, b: &[u8; N]) -> (f32, f32) {
    v.f16x2(u32_at::<A, N>(b))
}

/// The 32-bit little-endian word at byte `A` of `b`.
#[inline(always)]
fn u32_at<const A: usize, const N: usize>(b: &[u8; N]) -> u32 {
    u32::from_le_bytes(*at::<A, 4, N>(b))
}

/// Defines a vocabulary's entry points, compiled with its target features
/// (`$features`), so that the kernels inlined into them are too: `$rows`
/// runs the GGML kernels ([`rows`]) and `$own` strata's own encodings'
/// (`own::rows`) with the vocabulary `$v`. Calling them is unsafe where
/// the caller lacks the features: a value of `$v` must prove the CPU has
/// them.
macro_rules! entry_points {
    ($v:ty, $features:literal, $rows:ident, $own:ident) => {
        #[doc = concat!("Runs the GGML kernels with `", stringify!($v), "` (", $features, ").")]
        #[target_feature(enable = $features)]
        pub(super) fn $rows(
            v: $v,
            t: strata_format::codec::ggml::GgmlType,
            w: &[u8],
            rb: usize,
            acts: &super::acts::Q8Acts,
            n: usize,
            out: &mut [f32],
        ) {
            super::simd::rows(v, t, w, rb, acts, n, out)
        }

        #[doc = concat!(
            "Runs strata's own encodings' kernels with `", stringify!($v), "` (", $features, ")."
        )]
        #[allow(clippy::too_many_arguments)] // `own::rows`'s
        #[target_feature(enable = $features)]
        pub(super) fn $own(
            v: $v,
            kind: super::own::Own,
            block: usize,
            layout: super::own::Layout,
            w: &[u8],
            rb: usize,
            acts: &super::acts::Q8Acts,
            n: usize,
            out: &mut [f32],
        ) -> bool {
            super::own::rows(v, kind, block, layout, w, rb, acts, n, out)
        }
    };
}
pub(super) use entry_points;

/// A kernel: the outputs of one weight row for `T` activation rows.
trait Kernel {
    /// Sets `o[t0 .. t0 + T]` for the weight row `row` and activations `x`.
    fn tile<V: Simd, const T: usize>(v: V, row: &[u8], x: [Q8Row<'_>; T], t0: usize, o: &mut [f32]);
}

/// Computes `out[r * n + t]` for the rows of `w` (`rb` bytes each) and the `n`
/// rows of `acts`, with the vocabulary `v`.
#[inline(always)]
pub(super) fn rows<V: Simd>(
    v: V,
    t: GgmlType,
    w: &[u8],
    rb: usize,
    acts: &Q8Acts,
    n: usize,
    out: &mut [f32],
) {
    match t {
        GgmlType::Q4_0 => tiles::<V, Q40>(v, w, rb, acts, n, out),
        GgmlType::Q4_1 => tiles::<V, Q41>(v, w, rb, acts, n, out),
        GgmlType::Q5_0 => tiles::<V, Q50>(v, w, rb, acts, n, out),
        GgmlType::Q5_1 => tiles::<V, Q51>(v, w, rb, acts, n, out),
        GgmlType::Q8_0 => tiles::<V, Q80>(v, w, rb, acts, n, out),
        GgmlType::Q2K => tiles::<V, Q2K>(v, w, rb, acts, n, out),
        GgmlType::Q3K => tiles::<V, Q3K>(v, w, rb, acts, n, out),
        GgmlType::Q4K => tiles::<V, Q4K>(v, w, rb, acts, n, out),
        GgmlType::Q5K => tiles::<V, Q5K>(v, w, rb, acts, n, out),
        GgmlType::Q6K => tiles::<V, Q6K>(v, w, rb, acts, n, out),
    }
}

/// Runs kernel `K` for every weight row and every tile of up to four
/// activation rows (a weight block is unpacked once per tile).
#[inline(always)]
fn tiles<V: Simd, K: Kernel>(v: V, w: &[u8], rb: usize, acts: &Q8Acts, n: usize, out: &mut [f32]) {
    for (row, o) in w.chunks_exact(rb).zip(out.chunks_exact_mut(n)) {
        let mut t0 = 0;
        while t0 < n {
            match n - t0 {
                1 => K::tile::<V, 1>(v, row, acts.rows(t0), t0, o),
                2 => K::tile::<V, 2>(v, row, acts.rows(t0), t0, o),
                3 => K::tile::<V, 3>(v, row, acts.rows(t0), t0, o),
                _ => K::tile::<V, 4>(v, row, acts.rows(t0), t0, o),
            }
            t0 += (n - t0).min(4);
        }
    }
}

// ---------------------------------------------------------------------------
// 32-element types.

/// A 32-element block type.
trait Block32 {
    /// One block's bytes.
    type Block: AsRef<[u8]>;
    /// Whether the weights are unsigned with a minimum (`y = d·q + m`) rather
    /// than signed (`y = d·q`).
    const MIN: bool;
    /// A row's blocks.
    fn blocks(row: &[u8]) -> &[Self::Block];
    /// The weights (in element order), `d` and `m` (0 when `!MIN`).
    fn unpack<V: Simd>(v: V, b: &Self::Block) -> (V::B, f32, f32);
}

/// [`Kernel::tile`] of a 32-element block type.
#[inline(always)]
fn tile32<V: Simd, Q: Block32, const T: usize>(
    v: V,
    row: &[u8],
    x: [Q8Row<'_>; T],
    t0: usize,
    o: &mut [f32],
) {
    let mut xq: [&[[i8; 32]]; T] = [&[]; T];
    for t in 0..T {
        xq[t] = x[t].qs.as_chunks().0;
    }
    // Even and odd blocks go to separate sums, so that consecutive blocks'
    // f32 additions do not wait on each other.
    let mut acc = [[v.fzero(); T]; 2];
    let mut macc = [[0f32; T]; 2];
    let (pairs, last) = Q::blocks(row).as_chunks::<2>();
    for (p, [b0, b1]) in pairs.iter().enumerate() {
        v.prefetch(b0.as_ref());
        let [a0, a1] = &mut acc;
        let [m0, m1] = &mut macc;
        block32::<V, Q, T>(v, b0, 2 * p, &x, &xq, a0, m0);
        block32::<V, Q, T>(v, b1, 2 * p + 1, &x, &xq, a1, m1);
    }
    if let Some(b) = last.first() {
        block32::<V, Q, T>(v, b, 2 * pairs.len(), &x, &xq, &mut acc[0], &mut macc[0]);
    }
    for t in 0..T {
        o[t0 + t] = v.hsum(v.fadd(acc[0][t], acc[1][t])) + (macc[0][t] + macc[1][t]);
    }
}

/// Adds block `k` (`b`) of a row times the activations' block `k` into
/// `acc` (and its minimum term into `macc`).
#[inline(always)]
fn block32<V: Simd, Q: Block32, const T: usize>(
    v: V,
    b: &Q::Block,
    k: usize,
    x: &[Q8Row<'_>; T],
    xq: &[&[[i8; 32]]; T],
    acc: &mut [V::F; T],
    macc: &mut [f32; T],
) {
    let (w, d, m) = Q::unpack(v, b);
    for t in 0..T {
        let q = v.load_i8(&xq[t][k]);
        let i = if Q::MIN {
            v.dot_u8(v.izero(), w, q)
        } else {
            v.dot_i8(v.izero(), w, q)
        };
        acc[t] = v.fmadd(acc[t], i, d * x[t].d[k]);
        if Q::MIN {
            macc[t] += m * x[t].sx[k];
        }
    }
}

/// Implements [`Kernel`] for block types through `$tile`.
macro_rules! kernel_via {
    ($tile:ident: $($ty:ident),*) => {$(
        impl Kernel for $ty {
            #[inline(always)]
            fn tile<V: Simd, const T: usize>(
                v: V,
                row: &[u8],
                x: [Q8Row<'_>; T],
                t0: usize,
                o: &mut [f32],
            ) {
                $tile::<V, Self, T>(v, row, x, t0, o)
            }
        }
    )*};
}
kernel_via!(tile32: Q40, Q41, Q50, Q51, Q80);
kernel_via!(tile_k: Q2K, Q3K, Q4K, Q5K, Q6K);

/// Q4_0: f16 `d`, 16 bytes of nibbles; `y = (q − 8)·d`.
struct Q40;
impl Block32 for Q40 {
    type Block = [u8; 18];
    const MIN: bool = false;
    #[inline(always)]
    fn blocks(row: &[u8]) -> &[[u8; 18]] {
        row.as_chunks().0
    }
    #[inline(always)]
    fn unpack<V: Simd>(v: V, b: &[u8; 18]) -> (V::B, f32, f32) {
        let w = v.sub8(v.nibbles(at::<2, 16, 18>(b)), v.splat(8));
        (w, f16_at::<V, 0, 18>(v, b), 0.0)
    }
}

/// Q4_1: f16 `d` and `m`, 16 bytes of nibbles; `y = q·d + m`.
struct Q41;
impl Block32 for Q41 {
    type Block = [u8; 20];
    const MIN: bool = true;
    #[inline(always)]
    fn blocks(row: &[u8]) -> &[[u8; 20]] {
        row.as_chunks().0
    }
    #[inline(always)]
    fn unpack<V: Simd>(v: V, b: &[u8; 20]) -> (V::B, f32, f32) {
        let (d, m) = f16x2_at::<V, 0, 20>(v, b);
        (v.nibbles(at::<4, 16, 20>(b)), d, m)
    }
}

/// Q5_0: f16 `d`, 32 high bits, 16 bytes of nibbles; `y = (q − 16)·d`.
struct Q50;
impl Block32 for Q50 {
    type Block = [u8; 22];
    const MIN: bool = false;
    #[inline(always)]
    fn blocks(row: &[u8]) -> &[[u8; 22]] {
        row.as_chunks().0
    }
    #[inline(always)]
    fn unpack<V: Simd>(v: V, b: &[u8; 22]) -> (V::B, f32, f32) {
        // q − 16 as a signed byte: the nibble, with 0xf0 on top where the
        // high bit is clear (nibble − 16).
        let high = v.andnot(v.bits(u32_at::<2, 22>(b)), v.splat(0xf0));
        let w = v.or(v.nibbles(at::<6, 16, 22>(b)), high);
        (w, f16_at::<V, 0, 22>(v, b), 0.0)
    }
}

/// Q5_1: f16 `d` and `m`, 32 high bits, 16 bytes of nibbles; `y = q·d + m`.
struct Q51;
impl Block32 for Q51 {
    type Block = [u8; 24];
    const MIN: bool = true;
    #[inline(always)]
    fn blocks(row: &[u8]) -> &[[u8; 24]] {
        row.as_chunks().0
    }
    #[inline(always)]
    fn unpack<V: Simd>(v: V, b: &[u8; 24]) -> (V::B, f32, f32) {
        let high = v.and(v.bits(u32_at::<4, 24>(b)), v.splat(0x10));
        let w = v.or(v.nibbles(at::<8, 16, 24>(b)), high);
        let (d, m) = f16x2_at::<V, 0, 24>(v, b);
        (w, d, m)
    }
}

/// Q8_0: f16 `d`, 32 signed bytes; `y = q·d`.
struct Q80;
impl Block32 for Q80 {
    type Block = [u8; 34];
    const MIN: bool = false;
    #[inline(always)]
    fn blocks(row: &[u8]) -> &[[u8; 34]] {
        row.as_chunks().0
    }
    #[inline(always)]
    fn unpack<V: Simd>(v: V, b: &[u8; 34]) -> (V::B, f32, f32) {
        (v.load(at::<2, 32, 34>(b)), f16_at::<V, 0, 34>(v, b), 0.0)
    }
}

// ---------------------------------------------------------------------------
// K types.

/// A K super-block unpacked: element `32j + i` has the unsigned weight byte
/// `i` of `w[j]`; group `g` of 16 elements has the scale `sc[g]` (in `s[g / 2]`)
/// and the minimum `m[g]`, so that `y = d·sc[g]·q − dm·m[g]`, or, when
/// `off ≠ 0` (Q6_K, Q3_K: `m = sc`), `y = d·sc[g]·(q − off)`.
struct KBlock<V: Simd> {
    w: [V::B; 8],
    s: [V::S; 8],
    m: V::M,
    d: f32,
    dm: f32,
    off: i32,
}

/// A K super-block type.
trait BlockK {
    /// One super-block's bytes.
    type Block: AsRef<[u8]>;
    /// A row's super-blocks.
    fn blocks(row: &[u8]) -> &[Self::Block];
    /// The super-block, unpacked.
    fn unpack<V: Simd>(v: V, b: &Self::Block) -> KBlock<V>;
}

/// [`Kernel::tile`] of a K super-block type.
#[inline(always)]
fn tile_k<V: Simd, K: BlockK, const T: usize>(
    v: V,
    row: &[u8],
    x: [Q8Row<'_>; T],
    t0: usize,
    o: &mut [f32],
) {
    let mut xq: [&[[[i8; 32]; 8]]; T] = [&[]; T];
    let mut xs: [&[[i16; 16]]; T] = [&[]; T];
    for t in 0..T {
        xq[t] = x[t].qs.as_chunks::<32>().0.as_chunks().0;
        xs[t] = x[t].sums.as_chunks().0;
    }
    let mut acc = [v.fzero(); T];
    for (k, b) in K::blocks(row).iter().enumerate() {
        v.prefetch(b.as_ref());
        let kb = K::unpack(v, b);
        let mut q = [&[[0i8; 32]; 8]; T];
        for t in 0..T {
            q[t] = &xq[t][k];
        }
        let mut isum = [v.izero(); T];
        for (j, (&w, &s)) in kb.w.iter().zip(&kb.s).enumerate() {
            for t in 0..T {
                isum[t] = v.dot_scaled(isum[t], w, v.load_i8(&q[t][j]), s);
            }
        }
        for t in 0..T {
            let m = v.dot_mins(kb.m, &xs[t][k]);
            let d = x[t].d[k];
            if kb.off != 0 {
                acc[t] = v.fmadd(acc[t], v.imsub(isum[t], m, kb.off), kb.d * d);
            } else {
                acc[t] = v.fmadd(acc[t], isum[t], kb.d * d);
                acc[t] = v.fmadd(acc[t], m, -(kb.dm * d));
            }
        }
    }
    for t in 0..T {
        o[t0 + t] = v.hsum(acc[t]);
    }
}

/// The four 2-bit fields of each byte of `q`, lowest first.
#[inline(always)]
fn crumbs<V: Simd>(v: V, q: V::B) -> [V::B; 4] {
    let m3 = v.splat(3);
    [
        v.and(q, m3),
        v.and(v.srl::<2>(q), m3),
        v.and(v.srl::<4>(q), m3),
        v.and(v.srl::<6>(q), m3),
    ]
}

/// The 8 six-bit scales (bytes 0..8) and 8 minimums (bytes 8..16) of Q4_K /
/// Q5_K, from their 12 packed bytes.
#[inline(always)]
fn scales_k4<V: Simd>(v: V, sm: &[u8; 12]) -> V::H {
    const K1: u32 = 0x3f3f_3f3f;
    const K2: u32 = 0x0f0f_0f0f;
    const K3: u32 = 0x0303_0303;
    let (u0, u1, u2) = (
        u32_at::<0, 12>(sm),
        u32_at::<4, 12>(sm),
        u32_at::<8, 12>(sm),
    );
    // Scales 0..4 are the low 6 bits of bytes 0..4; 4..8 the low nibbles of
    // bytes 8..12 with the top 2 bits of bytes 0..4 above. Minimums likewise
    // from bytes 4..8 and the high nibbles of 8..12.
    v.h_words([
        u0 & K1,
        (u2 & K2) | (((u0 >> 6) & K3) << 4),
        u1 & K1,
        ((u2 >> 4) & K2) | (((u1 >> 6) & K3) << 4),
    ])
}

/// The weights of Q4_K / Q5_K without their fifth bits: nibbles of `qs`.
#[inline(always)]
fn nibbles_k<V: Simd>(v: V, qs: &[u8; 128]) -> [V::B; 8] {
    let m4 = v.splat(15);
    let mut w = [m4; 8];
    for (k, q) in qs.as_chunks::<32>().0.iter().enumerate() {
        let q = v.load(q);
        w[2 * k] = v.and(q, m4);
        w[2 * k + 1] = v.and(v.srl::<4>(q), m4);
    }
    w
}

/// Q2_K: 16 scale/min nibble pairs, 64 bytes of 2-bit `q`, f16 `d`, `dmin`.
struct Q2K;
impl BlockK for Q2K {
    type Block = [u8; 84];
    #[inline(always)]
    fn blocks(row: &[u8]) -> &[[u8; 84]] {
        row.as_chunks().0
    }
    #[inline(always)]
    fn unpack<V: Simd>(v: V, b: &[u8; 84]) -> KBlock<V> {
        let sc = v.h_load(at::<0, 16, 84>(b));
        let (d, dm) = f16x2_at::<V, 80, 84>(v, b);
        let qs = at::<16, 64, 84>(b).as_chunks::<32>().0;
        let [a0, a1, a2, a3] = crumbs(v, v.load(&qs[0]));
        let [b0, b1, b2, b3] = crumbs(v, v.load(&qs[1]));
        KBlock {
            w: [a0, a1, a2, a3, b0, b1, b2, b3],
            s: v.scales16(v.h_and(sc, v.h_splat(15))),
            m: v.mins16(v.h_hi4(sc)),
            d,
            dm,
            off: 0,
        }
    }
}

/// Q3_K: 32 bytes of high bits, 64 bytes of 2-bit low bits, 12 bytes of
/// 6-bit scales, f16 `d`; `y = d·(scale − 32)·(q − 4)`.
struct Q3K;
impl BlockK for Q3K {
    type Block = [u8; 110];
    #[inline(always)]
    fn blocks(row: &[u8]) -> &[[u8; 110]] {
        row.as_chunks().0
    }
    #[inline(always)]
    fn unpack<V: Simd>(v: V, b: &[u8; 110]) -> KBlock<V> {
        let hm = v.load(at::<0, 32, 110>(b));
        let qs = at::<32, 64, 110>(b).as_chunks::<32>().0;
        let [a0, a1, a2, a3] = crumbs(v, v.load(&qs[0]));
        let [b0, b1, b2, b3] = crumbs(v, v.load(&qs[1]));
        let mut w = [a0, a1, a2, a3, b0, b1, b2, b3];
        // q = low + 4 where bit j of the high-bit byte is set (so q − 4 is
        // the value).
        let four = v.splat(4);
        for (j, w) in w.iter_mut().enumerate() {
            *w = v.or(*w, v.and(v.test_bit(hm, j as u32), four));
        }
        // The 16 six-bit scales (SPEC.md §4.6), less 32.
        const K1: u32 = 0x0303_0303;
        const K2: u32 = 0x0f0f_0f0f;
        let (a0, a1, t) = (
            u32_at::<96, 110>(b),
            u32_at::<100, 110>(b),
            u32_at::<104, 110>(b),
        );
        let aux = v.h_words([
            (a0 & K2) | ((t & K1) << 4),
            (a1 & K2) | (((t >> 2) & K1) << 4),
            ((a0 >> 4) & K2) | (((t >> 4) & K1) << 4),
            ((a1 >> 4) & K2) | (((t >> 6) & K1) << 4),
        ]);
        let sc = v.h_sub8(aux, v.h_splat(32));
        KBlock {
            w,
            s: v.scales16(sc),
            m: v.mins16(sc),
            d: f16_at::<V, 108, 110>(v, b),
            dm: 0.0,
            off: 4,
        }
    }
}

/// Q4_K: f16 `d`, `dmin`, 12 bytes of 6-bit scales and minimums, 128 bytes
/// of nibbles.
struct Q4K;
impl BlockK for Q4K {
    type Block = [u8; 144];
    #[inline(always)]
    fn blocks(row: &[u8]) -> &[[u8; 144]] {
        row.as_chunks().0
    }
    #[inline(always)]
    fn unpack<V: Simd>(v: V, b: &[u8; 144]) -> KBlock<V> {
        let sm = scales_k4(v, at::<4, 12, 144>(b));
        let (d, dm) = f16x2_at::<V, 0, 144>(v, b);
        KBlock {
            w: nibbles_k(v, at::<16, 128, 144>(b)),
            s: v.scales8(sm),
            m: v.mins8(sm),
            d,
            dm,
            off: 0,
        }
    }
}

/// Q5_K: Q4_K with 32 bytes of fifth bits before the nibbles.
struct Q5K;
impl BlockK for Q5K {
    type Block = [u8; 176];
    #[inline(always)]
    fn blocks(row: &[u8]) -> &[[u8; 176]] {
        row.as_chunks().0
    }
    #[inline(always)]
    fn unpack<V: Simd>(v: V, b: &[u8; 176]) -> KBlock<V> {
        let sm = scales_k4(v, at::<4, 12, 176>(b));
        let (d, dm) = f16x2_at::<V, 0, 176>(v, b);
        let qh = v.load(at::<16, 32, 176>(b));
        let mut w = nibbles_k(v, at::<48, 128, 176>(b));
        let sixteen = v.splat(16);
        for (j, w) in w.iter_mut().enumerate() {
            *w = v.or(*w, v.and(v.test_bit(qh, j as u32), sixteen));
        }
        KBlock {
            w,
            s: v.scales8(sm),
            m: v.mins8(sm),
            d,
            dm,
            off: 0,
        }
    }
}

/// Q6_K: 128 bytes of low nibbles, 64 bytes of 2-bit high parts, 16 signed
/// scales, f16 `d`; `y = d·sc·(q − 32)`.
struct Q6K;
impl BlockK for Q6K {
    type Block = [u8; 210];
    #[inline(always)]
    fn blocks(row: &[u8]) -> &[[u8; 210]] {
        row.as_chunks().0
    }
    #[inline(always)]
    fn unpack<V: Simd>(v: V, b: &[u8; 210]) -> KBlock<V> {
        let ql = at::<0, 128, 210>(b).as_chunks::<32>().0;
        let qh = at::<128, 64, 210>(b).as_chunks::<32>().0;
        let (m4, m30) = (v.splat(15), v.splat(0x30));
        // Each half n of 128 elements: quarter k takes the low (k < 2) or
        // high nibbles of ql[2n + k % 2] and bits 2k, 2k + 1 of qh[n], as
        // bits 4 and 5.
        let mut w = [m4; 8];
        for n in 0..2 {
            let (a, c, h) = (v.load(&ql[2 * n]), v.load(&ql[2 * n + 1]), v.load(&qh[n]));
            w[4 * n] = v.or(v.and(a, m4), v.and(v.sll::<4>(h), m30));
            w[4 * n + 1] = v.or(v.and(c, m4), v.and(v.sll::<2>(h), m30));
            w[4 * n + 2] = v.or(v.and(v.srl::<4>(a), m4), v.and(h, m30));
            w[4 * n + 3] = v.or(v.and(v.srl::<4>(c), m4), v.and(v.srl::<2>(h), m30));
        }
        let sc = v.h_load(at::<192, 16, 210>(b));
        KBlock {
            w,
            s: v.scales16(sc),
            m: v.mins16(sc),
            d: f16_at::<V, 208, 210>(v, b),
            dm: 0.0,
            off: 32,
        }
    }
}
