//! strata's own block encodings — `nf4` (SPEC.md §4.4) and `int8` (§4.5) —
//! computed like the GGML types: against int8 activations in blocks of
//! [`ACT_BLOCK`] ([`super::acts`], as llama.cpp's Q8 blocks), with the same
//! vocabulary ([`Simd`]). Weight blocks must be a multiple of 64 and rows
//! whole blocks ([`Own::of`]); other products keep the int16 kernels.
//!
//! * `nf4`: the 16 code values become signed bytes through [`NF4_I8`] (code
//!   × 64, rounded; one byte shuffle, as llama.cpp's IQ4_NL does with its
//!   table); `1/64` is applied with the block scales (exactly). At × 64,
//!   `w + 64` is an unsigned byte of at most 128, which x86-64's
//!   `vpmaddubsw` multiplies with signed activations without a pair of
//!   products leaving int16: AVX2 needs no sign tricks for `nf4`. Byte `j`
//!   of a block of `B` holds element `j` (low nibble) and `j + B/2` (high
//!   nibble), so 32 elements from a multiple of 32 are one nibble of 32
//!   consecutive bytes.
//! * `int8`: the weights are signed bytes already.
//!
//! Each activation block's 32 weights are dotted with it in one exact
//! integer sum (on x86-64 unsigned weights `w + bias` against signed
//! activations, `bias · Σ q` taken off in integers: [`Unpack::bias`];
//! AVX2's `int8` with sign tricks instead; NEON's `sdot` signed bytes), then
//! scaled in f32. One activation row ([`tile64`]; two with AVX2): 4 weight
//! blocks at a time are transposed to meet activations laid out to match
//! ([`Grouped`]), so that their 8 sums come out in the lanes of two vectors
//! and are scaled together. More
//! (verification, prefill; [`rows8`], [`rows8_min_n`]): 8 weight rows at a
//! time become the lanes of the sums, so that each unpacked weight block
//! serves every activation row and no sums are gathered. Both add up a
//! row's products in the same order, so that an output is the same bit for
//! bit whatever the number of activation rows (speculative decoding's greedy
//! output must be plain decoding's). Against the exact product of the
//! decoded weights, an
//! output differs by the activations' rounding (`d_x / 2` per element), for
//! `nf4` by the table's rounding (at most `d_w · 0.5 / 64` per element), and
//! by f32 rounding.

use strata_format::DType;

use super::acts::{Q8Acts, Q8Row};
use super::simd::Simd;
use crate::kernels::{scale_bits, scale_is_bad};

/// NF4 code values (`strata_format::codec::nf4::CODES`) × [`NF4_ONE`],
/// rounded to nearest: the signed-byte weights the `nf4` kernel multiplies.
/// (× 127 measured no better: passage perplexity SmolLM2-135M 14.11 against
/// 13.81 at × 64, Qwen2.5-Coder-1.5B 7.800 against 7.780.)
pub(crate) const NF4_I8: [i8; 16] = [
    -64, -45, -34, -25, -18, -12, -6, 0, 5, 10, 16, 22, 28, 36, 46, 64,
];

/// The table value of the code 1.0, and the bias that makes the table's
/// values unsigned bytes of at most 128 (`w + 64`), what [`Simd::dot_u8`]
/// takes on every vocabulary.
pub(crate) const NF4_ONE: i32 = 64;

/// `1/64` folded into each `nf4` block scale (a power of two: exact).
const INV_NF4: f32 = 1.0 / NF4_ONE as f32;

/// Activation elements per block (one f32 scale each).
pub(crate) const ACT_BLOCK: usize = 32;

/// Bytes of weight rows [`rows`] runs every activation tile over before it
/// moves on (a share of a typical 1–2 MiB L2 cache).
const ROWS_CACHED_BYTES: usize = 128 << 10;

/// Which of strata's encodings a product computes here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Own {
    /// `nf4` in blocks of a multiple of 64.
    Nf4,
    /// `int8` in blocks of a multiple of 64.
    Int8,
}

impl Own {
    /// The kernel for `dtype` in blocks of `block` over rows of `cols`, when
    /// these kernels compute it: blocks a multiple of 64, rows of whole
    /// blocks (no padded last block).
    pub(crate) fn of(dtype: DType, block: usize, cols: usize) -> Option<Own> {
        if block == 0 || !cols.is_multiple_of(block) {
            return None;
        }
        match dtype {
            // Whole 32-byte halves of code bytes (see `nf4_chunk`).
            _ if !block.is_multiple_of(64) => None,
            DType::Nf4 => Some(Own::Nf4),
            DType::Int8 => Some(Own::Int8),
            _ => None,
        }
    }
}

/// Computes `out[r * n + t]` for the rows of `w` (`rb` bytes of `kind`
/// blocks of `block` each, laid out as `layout` says) and the `n` rows of
/// `acts` (blocks of [`ACT_BLOCK`]) with the vocabulary `v`; returns whether
/// a block scale was invalid. The caller has checked every length (and that
/// interleaved rows have blocks of 64).
#[allow(clippy::too_many_arguments)] // `super::rows`'s, with the block size
#[inline(always)]
pub(super) fn rows<V: Simd>(
    v: V,
    kind: Own,
    block: usize,
    layout: Layout,
    w: &[u8],
    rb: usize,
    acts: &Q8Acts,
    n: usize,
    out: &mut [f32],
) -> bool {
    match kind {
        Own::Nf4 => tiles::<V, Nf4, 34>(v, block, layout, w, rb, acts, n, out),
        Own::Int8 => tiles::<V, Int8, 66>(v, block, layout, w, rb, acts, n, out),
    }
}

/// How a weight's rows lie in its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One row after another, as stored (SPEC.md §4).
    Rows,
    /// Each whole group of 8 rows of blocks of 64 interleaved ([`interleave`]),
    /// the rows after the last whole group as stored.
    Interleaved8,
}

/// Rearranges, in place, each whole group of 8 rows of `w` (`rb` bytes each,
/// blocks of `bb` bytes: an f16 scale and `bb − 2` bytes of weights, `bb − 2`
/// a multiple of 4) so that [`rows8`] reads them as it uses them: block `k`
/// of the group becomes 16 bytes of the 8 rows' scales (row `r` at `2r`),
/// then for each 4 bytes `d` of the weights, those 4 bytes of the 8 rows
/// (row `r` at `16 + 32d + 4r`) — what [`Unpack::unpack8`] makes of the
/// stored rows with a transpose each time. The group keeps its `8 · rb`
/// bytes; rows after the last whole group are left as they are.
pub(crate) fn interleave(w: &mut [u8], rb: usize, bb: usize) {
    regroup(w, rb, bb, true);
}

/// Undoes [`interleave`] in place.
pub(crate) fn deinterleave(w: &mut [u8], rb: usize, bb: usize) {
    regroup(w, rb, bb, false);
}

/// Moves the bytes of each whole group of 8 rows of `w` from where they are
/// stored to where [`interleave`] puts them (`forward`), or back.
fn regroup(w: &mut [u8], rb: usize, bb: usize, forward: bool) {
    // (stored at, interleaved at, bytes) of every piece of a group.
    let mut moves = Vec::new();
    for k in 0..rb / bb {
        for r in 0..8 {
            let stored = r * rb + k * bb;
            let laid = 8 * k * bb;
            moves.push((stored, laid + 2 * r, 2));
            for d in 0..bb.saturating_sub(2) / 4 {
                moves.push((stored + 2 + 4 * d, laid + 16 + 32 * d + 4 * r, 4));
            }
        }
    }
    let mut tmp = vec![0u8; 8 * rb];
    for g in w.chunks_exact_mut(8 * rb) {
        tmp.copy_from_slice(g);
        for &(stored, laid, len) in &moves {
            let (from, to) = if forward {
                (stored, laid)
            } else {
                (laid, stored)
            };
            g[to..to + len].copy_from_slice(&tmp[from..from + len]);
        }
    }
}

/// Runs encoding `K`'s kernel ([`tile64`] for blocks of 64, `BB` bytes each;
/// [`tile`] for the others) for every weight row and every tile of up to two
/// activation rows (a weight block is unpacked once per tile; more rows per
/// tile left the 8-block sums no registers).
#[inline(always)]
#[allow(clippy::too_many_arguments)] // `rows`'s
fn tiles<V: Simd, K: Unpack, const BB: usize>(
    v: V,
    block: usize,
    layout: Layout,
    w: &[u8],
    rb: usize,
    acts: &Q8Acts,
    n: usize,
    out: &mut [f32],
) -> bool {
    debug_assert_eq!(K::block_bytes(64), BB);
    let mut bad = false;
    let (mut w, mut out) = (w, out);
    if layout == Layout::Interleaved8 || (block == 64 && n >= rows8_min_n(V::WIDE_U8)) {
        // Groups of 8 weight rows against every activation row; the rows
        // left over (fewer than 8) below.
        let full = w.len() / rb / 8 * 8;
        let (w8, wr) = w.split_at(full * rb);
        let (o8, or) = out.split_at_mut(full * n);
        bad |= match (layout, n) {
            (Layout::Rows, _) => rows8::<V, K, BB, false>(v, w8, rb, acts, n, o8),
            (Layout::Interleaved8, 1) => lanes8_one::<V, K, BB>(v, w8, rb, acts, o8),
            (Layout::Interleaved8, _) => rows8::<V, K, BB, true>(v, w8, rb, acts, n, o8),
        };
        (w, out) = (wr, or);
    }
    // Weight rows in chunks that stay in the L2 cache while every tile of
    // activation rows passes over them (so that many activation rows, as in
    // a prefill, are read once per chunk rather than once per weight row).
    let chunk = (ROWS_CACHED_BYTES / rb.max(1)).max(1);
    let bias = K::bias::<V>();
    let xg = match (block, w.is_empty()) {
        (64, false) => Grouped::new(acts, n, bias),
        _ => Grouped::new(acts, 0, bias),
    };
    for (wc, oc) in w.chunks(chunk * rb).zip(out.chunks_mut(chunk * n)) {
        let mut t0 = 0;
        while t0 < n {
            for (row, o) in wc.chunks_exact(rb).zip(oc.chunks_exact_mut(n)) {
                bad |= match (block, n - t0) {
                    (64, 1) => tile64::<V, K, BB, 1>(v, row, acts.rows(t0), xg.rows(t0), t0, o),
                    (64, _) => tile64::<V, K, BB, 2>(v, row, acts.rows(t0), xg.rows(t0), t0, o),
                    (_, 1) => tile::<V, K, 1>(v, block, row, acts.rows(t0), t0, o),
                    _ => tile::<V, K, 2>(v, block, row, acts.rows(t0), t0, o),
                };
            }
            t0 += (n - t0).min(2);
        }
    }
    bad
}

/// How a kernel gets the weights of a block, 64 at a time (two activation
/// blocks).
trait Unpack {
    /// Bytes of one weight block of `block` elements.
    fn block_bytes(block: usize) -> usize;
    /// Factor folded into each block's scale.
    const SCALE: f32;
    /// What the weights are unpacked with for `V`: 0 (signed bytes, for
    /// [`Simd::dot_i8`]), or the bias `b` that makes every weight an
    /// unsigned byte `w + b` for [`Simd::dot_u8`] (at most 128 unless
    /// [`Simd::WIDE_U8`]); the kernels take `b · Σ q` off each block's
    /// integer sum. Known when compiled.
    fn bias<V: Simd>() -> i32;
    /// What [`Unpack::unpack`] needs, made once per row.
    type Ctx<V: Simd>: Copy;
    /// The context for weights biased by `bias` ([`Unpack::bias`]).
    fn ctx<V: Simd>(v: V, bias: i32) -> Self::Ctx<V>;
    /// Weights `64a .. 64a + 64` of the weight block `blk` (`block`
    /// elements), as signed bytes, or biased as the context says.
    fn unpack<V: Simd>(v: V, c: Self::Ctx<V>, blk: &[u8], block: usize, a: usize) -> [V::B; 2];
    /// The weights of 8 blocks of 64 (one per weight row, `blks[r]`) with
    /// the rows as the four-byte lanes ([`Simd::transpose8`]): vector `j`
    /// of half `h` holds, in lane `r`, weights `32h + 4j .. 32h + 4j + 4`
    /// of row `r`, as [`Unpack::unpack`] gives them.
    fn unpack8<V: Simd>(v: V, c: Self::Ctx<V>, blks: [&[u8]; 8]) -> [[V::B; 8]; 2];
    /// Half `h` of [`Unpack::unpack8`] from a block of 8 rows as
    /// [`interleave`] lays it out (`lanes`: its bytes after the 16 bytes of
    /// scales); a half at a time (8 vectors: AVX2 has 16 registers).
    fn lanes8<V: Simd>(v: V, c: Self::Ctx<V>, lanes: &[u8], h: usize) -> [V::B; 8];
    /// The weights of 4 consecutive blocks of 64 (`blks[p]`) in the lanes
    /// [`Grouped`] gives the activations: vector `2q + s` holds, in lane
    /// `4h + p`, weights `32s + 4(4h + q) .. + 4` of block `p`, as
    /// [`Unpack::unpack`] gives them.
    fn unpack4<V: Simd>(v: V, c: Self::Ctx<V>, blks: [&[u8]; 4]) -> [V::B; 8];
}

/// Activation rows from which [`tiles`] takes weight rows 8 at a time
/// ([`rows8`]) for blocks of 64: 2 where [`Simd::WIDE_U8`] (one `vpdpbusd`
/// per 32 products), else 3 (on AVX2, `nf4` against 2 rows was faster in
/// [`tile64`] when it still took sign tricks; `own_speed` in
/// kernels/tests.rs). Weights interleaved at load take [`rows8`] anyway.
const fn rows8_min_n(wide_u8: bool) -> usize {
    if wide_u8 {
        2
    } else {
        3
    }
}

/// The outputs of groups of 8 weight rows (blocks of 64, `BB` bytes each)
/// for all `n` activation rows, with the weight rows as the lanes of the
/// integer sums (llama.cpp repacks its weights so for its GEMM; here each
/// block of 8 rows is transposed when used, [`Unpack::unpack8`]): a weight
/// block is unpacked once for every activation row, and the 8 rows' sums
/// come out of the dot products side by side, with no horizontal sums.
/// Each activation row's 8 sums of an activation block are scaled by the 8
/// weight scales at once. With `LANES`, the rows were laid out so already
/// ([`interleave`]). Returns whether a block scale was invalid.
#[inline(always)]
fn rows8<V: Simd, K: Unpack, const BB: usize, const LANES: bool>(
    v: V,
    w: &[u8],
    rb: usize,
    acts: &Q8Acts,
    n: usize,
    out: &mut [f32],
) -> bool {
    let bias = K::bias::<V>();
    let ctx = K::ctx(v, bias);
    let nb = rb / BB;
    let cols = 64 * nb;
    // Activation blocks per row.
    let nab = cols / ACT_BLOCK;
    // Where an activation block's sums start: `−bias · Σ q` (|Σ q| ≤ 32 ·
    // 127, bias ≤ 128).
    let start: Vec<i32> = acts.totals[..n * nab].iter().map(|&t| -bias * t).collect();
    // `acc[8t + c]`: activation row `t`'s accumulations of the activation
    // blocks `b % 8 = c`, one lane per weight row (as [`tile64`]'s).
    let mut acc = vec![[0f32; 8]; 8 * n];
    let mut bad = false;
    for (gi, (g, o)) in w
        .chunks_exact(8 * rb)
        .zip(out.chunks_exact_mut(8 * n))
        .enumerate()
    {
        acc.fill([0.0; 8]);
        // The next group of 8 rows, asked for in step with this one (each
        // block step here reads 8 · BB bytes spread over 8 rows, which the
        // hardware prefetchers follow badly when rows are short).
        let next = w.get((gi + 1) * 8 * rb..(gi + 2) * 8 * rb).unwrap_or(&[]);
        for k in 0..nb {
            for at in (k * 8 * BB..(k + 1) * 8 * BB).step_by(64) {
                if let Some(s) = next.get(at..) {
                    v.fetch(s);
                }
            }
            let (dw, bad8, ws) = if LANES {
                let gk = &g[k * 8 * BB..(k + 1) * 8 * BB];
                let (dw, bad8) = v.f16x8_at(first16(gk));
                let l = &gk[16..];
                (dw, bad8, [K::lanes8(v, ctx, l, 0), K::lanes8(v, ctx, l, 1)])
            } else {
                let mut blks: [&[u8]; 8] = [&[]; 8];
                let mut bits = [0u16; 8];
                for r in 0..8 {
                    blks[r] = &g[r * rb + k * BB..r * rb + (k + 1) * BB];
                    bits[r] = scale_bits(blks[r]);
                }
                let (dw, bad8) = v.f16x8(bits);
                (dw, bad8, K::unpack8(v, ctx, blks))
            };
            bad |= bad8;
            let rows = acts.qs.chunks_exact(cols).zip(acts.d.chunks_exact(nab));
            for ((qr, dr), (sr, a8)) in
                rows.zip(start.chunks_exact(nab).zip(acc.chunks_exact_mut(8)))
            {
                let q = pairs(&qr[64 * k..]).as_chunks::<8>().0;
                for h in 0..2 {
                    let b = 2 * k + h;
                    let a = &mut a8[b % 8];
                    let acc = v.load_f32x8(a);
                    let c = lanes8_half(v, bias != 0, &ws[h], &q[h], sr[b], dw, dr[b], acc);
                    *a = v.store_f32x8(c);
                }
            }
        }
        for t in 0..n {
            let a = &acc[8 * t..8 * t + 8];
            for r in 0..8 {
                let c = [
                    a[0][r], a[1][r], a[2][r], a[3][r], a[4][r], a[5][r], a[6][r], a[7][r],
                ];
                o[r * n + t] = combine(c) * K::SCALE;
            }
        }
    }
    bad
}

/// [`rows8`] on interleaved rows ([`interleave`]) for one activation row
/// (decode): the 8 accumulations of each weight row's lane stay in
/// registers (4 weight blocks, 8 activation blocks, at a time), and the 8
/// outputs of a group are combined and stored as one vector. The same
/// operations in the same order as [`rows8`], so the same bits.
#[inline(always)]
fn lanes8_one<V: Simd, K: Unpack, const BB: usize>(
    v: V,
    w: &[u8],
    rb: usize,
    acts: &Q8Acts,
    out: &mut [f32],
) -> bool {
    let ctx = K::ctx(v, K::bias::<V>());
    let x = acts.row(0);
    let mut bad = false;
    for (g, o) in w.chunks_exact(8 * rb).zip(out.chunks_exact_mut(8)) {
        let mut c = [v.fzero(); 8];
        let quads = g.chunks_exact(4 * 8 * BB);
        let rest = quads.remainder();
        let nq = g.len() / (4 * 8 * BB);
        for (k4, quad) in quads.enumerate() {
            let [c0, c1, c2, c3, c4, c5, c6, c7] = &mut c;
            let gk = |kk: usize| &quad[kk * 8 * BB..(kk + 1) * 8 * BB];
            bad |= lanes8_block::<V, K, BB>(v, ctx, &x, gk(0), 4 * k4, [c0, c1]);
            bad |= lanes8_block::<V, K, BB>(v, ctx, &x, gk(1), 4 * k4 + 1, [c2, c3]);
            bad |= lanes8_block::<V, K, BB>(v, ctx, &x, gk(2), 4 * k4 + 2, [c4, c5]);
            bad |= lanes8_block::<V, K, BB>(v, ctx, &x, gk(3), 4 * k4 + 3, [c6, c7]);
        }
        for (kk, gk) in rest.chunks_exact(8 * BB).enumerate() {
            let (lo, hi) = c.split_at_mut(2 * kk + 1);
            let c = [&mut lo[2 * kk], &mut hi[0]];
            bad |= lanes8_block::<V, K, BB>(v, ctx, &x, gk, 4 * nq + kk, c);
        }
        // `combine`, lane by lane.
        let s = v.fadd(
            v.fadd(v.fadd(c[0], c[4]), v.fadd(c[2], c[6])),
            v.fadd(v.fadd(c[1], c[5]), v.fadd(c[3], c[7])),
        );
        o.copy_from_slice(&v.store_f32x8(v.fscale(s, K::SCALE)));
    }
    bad
}

/// One weight block of 8 interleaved rows (`gk`, block `k`) of
/// [`lanes8_one`] into the accumulations `c[0]` (activation block `2k`) and
/// `c[1]` (`2k + 1`); returns whether a scale was invalid (a function, not a
/// closure, so that it is compiled with the caller's target features).
#[inline(always)]
fn lanes8_block<V: Simd, K: Unpack, const BB: usize>(
    v: V,
    ctx: K::Ctx<V>,
    x: &Q8Row<'_>,
    gk: &[u8],
    k: usize,
    c: [&mut V::F; 2],
) -> bool {
    for at in (0..8 * BB).step_by(64) {
        v.prefetch(&gk[at..]);
    }
    let (dw, bad) = v.f16x8_at(first16(gk));
    let q = pairs(&x.qs[64 * k..]).as_chunks::<8>().0;
    for (h, c) in c.into_iter().enumerate() {
        let ws = K::lanes8(v, ctx, &gk[16..], h);
        let b = 2 * k + h;
        // As `rows8`'s `start`.
        let bias = K::bias::<V>();
        *c = lanes8_half(
            v,
            bias != 0,
            &ws,
            &q[h],
            -bias * x.totals[b],
            dw,
            x.d[b],
            *c,
        );
    }
    bad
}

/// `acc` plus one half of a weight block of 8 rows (`ws`, as
/// [`Unpack::unpack8`] gives it, `biased` or not) times its activation
/// block (`q`, 8 groups of 4, scale `dx`; the integer sums start at
/// `start`), lane by lane: the
/// body [`rows8`] and [`lanes8_block`] share, so that both do the same
/// operations in the same order (a function, not a closure, so that it is
/// compiled with the caller's target features).
#[inline(always)]
#[allow(clippy::too_many_arguments)] // one half block's every input
fn lanes8_half<V: Simd>(
    v: V,
    biased: bool,
    ws: &[V::B; 8],
    q: &[[i8; 4]; 8],
    start: i32,
    dw: V::F,
    dx: f32,
    acc: V::F,
) -> V::F {
    // Two chains of dot products (half as long), added up exactly in
    // integers.
    let (mut i0, mut i1) = (v.isplat(start), v.izero());
    for j in (0..8).step_by(2) {
        i0 = dot4(v, biased, i0, ws[j], &q[j]);
        i1 = dot4(v, biased, i1, ws[j + 1], &q[j + 1]);
    }
    let i = v.iadd(i0, i1);
    // As `tile64`: `d_w · d_x` rounded, then fused.
    v.fmadd_v(acc, i, v.fscale(dw, dx))
}

/// `acc` plus, in each lane, the dot product of its 4 weights (as
/// [`dot`] takes them) with the 4 activations `q`.
#[inline(always)]
fn dot4<V: Simd>(v: V, biased: bool, acc: V::I, w: V::B, q: &[i8; 4]) -> V::I {
    let q = v.bcast4(q);
    if biased {
        v.dot_u8(acc, w, q)
    } else {
        v.dot_i8(acc, w, q)
    }
}

/// The first 64 activations of `q` as 16 groups of 4.
#[inline(always)]
fn pairs(q: &[i8]) -> &[[i8; 4]; 16] {
    match q.as_chunks::<4>().0.first_chunk() {
        Some(c) => c,
        None => panic!("fewer than 64 activations"),
    }
}

/// The first 16 bytes of `s`.
#[inline(always)]
fn first16(s: &[u8]) -> &[u8; 16] {
    match s.first_chunk() {
        Some(c) => c,
        None => panic!("fewer than 16 bytes"),
    }
}

/// The 32 bytes of `blk` from byte `at`.
#[inline(always)]
fn bytes32(blk: &[u8], at: usize) -> &[u8; 32] {
    match blk[at..at + 32].first_chunk() {
        Some(c) => c,
        // `blk[at..at + 32]` is 32 bytes.
        None => unreachable!(),
    }
}

/// `nf4` blocks of a multiple of 64.
struct Nf4;
impl Unpack for Nf4 {
    fn block_bytes(block: usize) -> usize {
        2 + block / 2
    }
    const SCALE: f32 = INV_NF4;
    #[inline(always)]
    fn bias<V: Simd>() -> i32 {
        // `w + 64` is at most 128.
        if V::DOT_U8 {
            NF4_ONE
        } else {
            0
        }
    }
    /// The code table and the nibble mask.
    type Ctx<V: Simd> = (V::B, V::B);
    #[inline(always)]
    fn ctx<V: Simd>(v: V, bias: i32) -> (V::B, V::B) {
        let mut t = NF4_I8;
        for c in &mut t {
            // The byte `c + bias` (in 0..=128) as the bits of an i8.
            *c = (i32::from(*c) + bias) as u8 as i8;
        }
        (v.table(&t), v.splat(15))
    }
    #[inline(always)]
    fn unpack<V: Simd>(
        v: V,
        (tab, m4): (V::B, V::B),
        blk: &[u8],
        block: usize,
        a: usize,
    ) -> [V::B; 2] {
        let e = 64 * a;
        [
            nf4_chunk(v, tab, m4, blk, block, e),
            nf4_chunk(v, tab, m4, blk, block, e + 32),
        ]
    }
    #[inline(always)]
    fn unpack8<V: Simd>(v: V, (tab, m4): (V::B, V::B), blks: [&[u8]; 8]) -> [[V::B; 8]; 2] {
        // Byte `e` of a block of 64 holds weight `e` (low nibble) and
        // `e + 32` (high): the four bytes of a lane give both halves.
        let mut raw = [v.splat(0); 8];
        for r in 0..8 {
            raw[r] = v.load(bytes32(blks[r], 2));
        }
        nf4_lanes(v, tab, m4, v.transpose8(raw))
    }
    #[inline(always)]
    fn lanes8<V: Simd>(v: V, (tab, m4): (V::B, V::B), lanes: &[u8], h: usize) -> [V::B; 8] {
        // The low nibbles are the first half's weights, the high ones the
        // second's.
        let mut out = [v.splat(0); 8];
        for (j, o) in out.iter_mut().enumerate() {
            let raw = v.load(bytes32(lanes, 32 * j));
            let raw = if h == 0 { raw } else { v.srl::<4>(raw) };
            *o = v.lookup(tab, v.and(raw, m4));
        }
        out
    }
    #[inline(always)]
    fn unpack4<V: Simd>(v: V, (tab, m4): (V::B, V::B), blks: [&[u8]; 4]) -> [V::B; 8] {
        // The low nibbles of a lane are weights of the first half, the
        // high nibbles the same positions of the second.
        let mut raw = [v.splat(0); 4];
        for p in 0..4 {
            raw[p] = v.load(bytes32(blks[p], 2));
        }
        let raw = v.transpose4(raw);
        let mut out = [v.splat(0); 8];
        for q in 0..4 {
            out[2 * q] = v.lookup(tab, v.and(raw[q], m4));
            out[2 * q + 1] = v.lookup(tab, v.and(v.srl::<4>(raw[q]), m4));
        }
        out
    }
}

/// The weights of [`Unpack::unpack8`] from the code bytes of 8 rows with
/// the rows as four-byte lanes (vector `j`: bytes `4j .. 4j + 4`).
#[inline(always)]
fn nf4_lanes<V: Simd>(v: V, tab: V::B, m4: V::B, raw: [V::B; 8]) -> [[V::B; 8]; 2] {
    let mut out = [[v.splat(0); 8]; 2];
    for j in 0..8 {
        out[0][j] = v.lookup(tab, v.and(raw[j], m4));
        out[1][j] = v.lookup(tab, v.and(v.srl::<4>(raw[j]), m4));
    }
    out
}

/// Weights `e .. e + 32` (`e` a multiple of 32) of the `nf4` block `blk`
/// (`block` elements) through the table `tab` (a function, not a closure,
/// so that it is compiled with the caller's target features).
#[inline(always)]
fn nf4_chunk<V: Simd>(v: V, tab: V::B, m4: V::B, blk: &[u8], block: usize, e: usize) -> V::B {
    // Element e < B/2 is the low nibble of byte e, e ≥ B/2 the high nibble
    // of byte e − B/2: 32 elements from a multiple of 32 are one half of 32
    // consecutive bytes.
    let half = block / 2;
    if e < half {
        v.lookup(tab, v.and(v.load(bytes32(blk, 2 + e)), m4))
    } else {
        let raw = v.load(bytes32(blk, 2 + e - half));
        v.lookup(tab, v.and(v.srl::<4>(raw), m4))
    }
}

/// `int8` blocks of a multiple of 64.
struct Int8;
impl Unpack for Int8 {
    fn block_bytes(block: usize) -> usize {
        2 + block
    }
    const SCALE: f32 = 1.0;
    #[inline(always)]
    fn bias<V: Simd>() -> i32 {
        // `w + 128` takes every unsigned byte; without `WIDE_U8`, the sign
        // tricks of `dot_i8` instead.
        if V::WIDE_U8 {
            128
        } else {
            0
        }
    }
    /// The bias (`0x80` in every byte) when wanted.
    type Ctx<V: Simd> = Option<V::B>;
    #[inline(always)]
    fn ctx<V: Simd>(v: V, bias: i32) -> Option<V::B> {
        (bias != 0).then(|| v.splat(0x80))
    }
    #[inline(always)]
    fn unpack<V: Simd>(v: V, bias: Option<V::B>, blk: &[u8], _: usize, a: usize) -> [V::B; 2] {
        let w = [
            v.load(bytes32(blk, 2 + 64 * a)),
            v.load(bytes32(blk, 34 + 64 * a)),
        ];
        match bias {
            // `w ^ 0x80` is `w + 128` as an unsigned byte.
            Some(b) => [v.xor(w[0], b), v.xor(w[1], b)],
            None => w,
        }
    }
    #[inline(always)]
    fn unpack8<V: Simd>(v: V, bias: Option<V::B>, blks: [&[u8]; 8]) -> [[V::B; 8]; 2] {
        let mut out = [[v.splat(0); 8]; 2];
        for (h, o) in out.iter_mut().enumerate() {
            let mut raw = [v.splat(0); 8];
            for r in 0..8 {
                raw[r] = v.load(bytes32(blks[r], 2 + 32 * h));
            }
            *o = v.transpose8(raw);
            if let Some(b) = bias {
                for w in o.iter_mut() {
                    *w = v.xor(*w, b);
                }
            }
        }
        out
    }
    #[inline(always)]
    fn lanes8<V: Simd>(v: V, bias: Option<V::B>, lanes: &[u8], h: usize) -> [V::B; 8] {
        let mut out = [v.splat(0); 8];
        for (j, w) in out.iter_mut().enumerate() {
            let raw = v.load(bytes32(lanes, 256 * h + 32 * j));
            *w = match bias {
                Some(b) => v.xor(raw, b),
                None => raw,
            };
        }
        out
    }
    #[inline(always)]
    fn unpack4<V: Simd>(v: V, bias: Option<V::B>, blks: [&[u8]; 4]) -> [V::B; 8] {
        let mut out = [v.splat(0); 8];
        for s in 0..2 {
            let mut raw = [v.splat(0); 4];
            for p in 0..4 {
                raw[p] = v.load(bytes32(blks[p], 2 + 32 * s));
            }
            for (q, w) in v.transpose4(raw).into_iter().enumerate() {
                out[2 * q + s] = match bias {
                    Some(b) => v.xor(w, b),
                    None => w,
                };
            }
        }
        out
    }
}

/// The outputs of one weight row for `T` activation rows, for any block
/// size (returns whether a block scale was invalid): each 32 weights
/// dotted with their activation block and scaled on their own.
#[inline(always)]
fn tile<V: Simd, K: Unpack, const T: usize>(
    v: V,
    block: usize,
    row: &[u8],
    x: [Q8Row<'_>; T],
    t0: usize,
    o: &mut [f32],
) -> bool {
    let mut xq: [&[[i8; 32]]; T] = [&[]; T];
    for t in 0..T {
        xq[t] = x[t].qs.as_chunks::<32>().0;
    }
    let bias = K::bias::<V>();
    let ctx = K::ctx(v, bias);
    let per = block / 64;
    let mut acc = [v.fzero(); T];
    let mut bad = false;
    for (k, blk) in row.chunks_exact(K::block_bytes(block)).enumerate() {
        v.prefetch(blk);
        let bits = scale_bits(blk);
        bad |= scale_is_bad(bits);
        let d = v.f16(bits);
        for a in 0..per {
            let ws = K::unpack(v, ctx, blk, block, a);
            for (h, w) in ws.into_iter().enumerate() {
                let b = 2 * (k * per + a) + h;
                for t in 0..T {
                    let i = unbias_v(v, bias, dot(v, bias != 0, w, &xq[t][b]), x[t].totals[b]);
                    acc[t] = v.fmadd(acc[t], i, d * x[t].d[b]);
                }
            }
        }
    }
    for t in 0..T {
        o[t0 + t] = v.hsum(acc[t]) * K::SCALE;
    }
    bad
}

/// [`tile`] for blocks of 64 (`BB` bytes each), the default block size,
/// in the order of [`rows8`] so that a row's output does not depend on how
/// many activation rows came with it ([`combine`]). Each group of 4 weight
/// blocks is transposed ([`Unpack::unpack4`]) to meet the activations as
/// [`Grouped`] lays them out, so that the dot products leave the integer
/// sums of the group's 8 activation blocks in the lanes of two vectors
/// ([`Simd::fold2`] adds them up) rather than in 8 vectors to be reduced.
/// The 8 sums are scaled by their 8 activation scales and 4 weight scales
/// at once (converted together, [`Simd::f16x4x2`], and checked together in
/// integers, [`bad_scales4`]); the weight blocks after
/// the last group of 4 are scaled one at a time. Every size is known when
/// compiled, so that a group is straight-line code.
#[inline(always)]
fn tile64<V: Simd, K: Unpack, const BB: usize, const T: usize>(
    v: V,
    row: &[u8],
    x: [Q8Row<'_>; T],
    xg: [GroupedRow<'_>; T],
    t0: usize,
    o: &mut [f32],
) -> bool {
    let bias = K::bias::<V>();
    let ctx = K::ctx(v, bias);
    let (groups, rest) = row.as_chunks::<BB>().0.as_chunks::<4>();
    // Lane l accumulates the activation blocks b with b % 8 = LANE_BLOCK[l].
    let mut acc = [v.fzero(); T];
    // The bad-scale bits of every group (`bad_scales4`), tested at the end.
    let mut bad4 = 0u64;
    for (g, grp) in groups.iter().enumerate() {
        let gb = grp.as_flattened();
        for at in (0..4 * BB).step_by(64) {
            v.prefetch(&gb[at..]);
        }
        // The 4 scales side by side in an integer register: converted in
        // one instruction, checked in a few integer ones.
        let mut bits = 0u64;
        for (j, blk) in grp.iter().enumerate() {
            bits |= u64::from(scale_bits(blk)) << (16 * j);
        }
        bad4 |= bad_scales4(bits);
        let ws = K::unpack4(v, ctx, [&grp[0], &grp[1], &grp[2], &grp[3]]);
        let dw = v.f16x4x2(bits);
        for t in 0..T {
            let q = &xg[t].qs[g];
            let (mut lo, mut hi) = (v.izero(), v.izero());
            for j in 0..4 {
                lo = dot_acc(v, bias != 0, lo, ws[2 * j], &q[2 * j]);
                hi = dot_acc(v, bias != 0, hi, ws[2 * j + 1], &q[2 * j + 1]);
            }
            let mut i = v.fold2(lo, hi);
            if bias != 0 {
                // The weights came as `w + bias`.
                i = v.isub(i, v.load_i32x8(&xg[t].tb[g]));
            }
            let sc = v.fmul(dw, v.load_f32x8(&xg[t].d[g]));
            acc[t] = v.fmadd_v(acc[t], i, sc);
        }
    }
    let mut bad = bad4 != 0;
    let mut chains = [[0f32; 8]; T];
    for t in 0..T {
        for (l, a) in v.store_f32x8(acc[t]).into_iter().enumerate() {
            chains[t][LANE_BLOCK[l]] = a;
        }
    }
    for (j, blk) in rest.iter().enumerate() {
        let bits = scale_bits(blk);
        bad |= scale_is_bad(bits);
        let dw = v.f16(bits);
        let ws = K::unpack(v, ctx, blk, 64, 0);
        for (h, w) in ws.into_iter().enumerate() {
            let b = 8 * groups.len() + 2 * j + h;
            for t in 0..T {
                let q = x[t].qs[32 * b..32 * b + 32].as_chunks::<32>().0;
                let i = unbias(v, bias, dot(v, bias != 0, w, &q[0]), x[t].totals[b]);
                let c = &mut chains[t][b % 8];
                *c = (i as f32).mul_add(dw * x[t].d[b], *c);
            }
        }
    }
    for t in 0..T {
        o[t0 + t] = combine(chains[t]) * K::SCALE;
    }
    bad
}

/// Bit `16j + 15` set where the f16 value in bits `16j ..` of `bits` is an
/// invalid block scale (NaN, infinite or negative, −0 allowed: as
/// `scale_is_bad`), in a few integer operations on all four at once.
#[inline(always)]
pub(super) fn bad_scales4(bits: u64) -> u64 {
    const SIGNS: u64 = 0x8000_8000_8000_8000;
    const EXP: u64 = 0x7c00_7c00_7c00_7c00;
    const ONE_EXP: u64 = 0x0400_0400_0400_0400;
    const MAG: u64 = 0x7fff_7fff_7fff_7fff;
    // The exponent plus its lowest bit carries into bit 15 exactly when all
    // its bits are set; the magnitude plus 0x7fff reaches bit 15 exactly
    // when it is not 0. Neither carries into the next value.
    let inf_nan = (bits & EXP) + ONE_EXP;
    let negative = bits & ((bits & MAG) + MAG);
    (inf_nan | negative) & SIGNS
}

/// The activation block (of a group of 8) whose sums lane `l` of
/// [`tile64`]'s vectors holds: the first halves of the 4 weight blocks in
/// lanes 0–3, the second halves in lanes 4–7.
const LANE_BLOCK: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// Activation rows laid out for [`tile64`], per group of 8 blocks of
/// [`ACT_BLOCK`] (a weight group of 4 blocks of 64): the values as
/// [`Unpack::unpack4`] lays out the weights, and the scales and `bias · Σ q`
/// in the order of [`LANE_BLOCK`].
struct Grouped {
    /// Groups per row.
    groups: usize,
    /// Vector `2q + s` of group `g`: lane `4h + p` holds values `4(4h + q)
    /// .. + 4` of the group's block `2p + s`.
    qs: Vec<[[i8; 32]; 8]>,
    /// Lane `l`: the scale of the group's block `LANE_BLOCK[l]`.
    d: Vec<[f32; 8]>,
    /// Lane `l`: `bias · Σ q` of the group's block `LANE_BLOCK[l]`.
    tb: Vec<[i32; 8]>,
}

/// One row of a [`Grouped`].
#[derive(Clone, Copy)]
struct GroupedRow<'a> {
    qs: &'a [[[i8; 32]; 8]],
    d: &'a [[f32; 8]],
    tb: &'a [[i32; 8]],
}

impl Grouped {
    /// The first `n` rows of `acts` (blocks of [`ACT_BLOCK`]), whole groups
    /// of 8 blocks (the blocks after the last are left to [`tile64`]'s
    /// one-at-a-time path), for weights biased by `bias` ([`Unpack::bias`]).
    fn new(acts: &Q8Acts, n: usize, bias: i32) -> Grouped {
        let groups = acts.blocks / 8;
        let mut g = Grouped {
            groups,
            qs: vec![[[0; 32]; 8]; n * groups],
            d: vec![[0.0; 8]; n * groups],
            tb: vec![[0; 8]; n * groups],
        };
        for t in 0..n {
            let r = acts.row(t);
            for k in 0..groups {
                let at = t * groups + k;
                for (l, &b) in LANE_BLOCK.iter().enumerate() {
                    let b = 8 * k + b;
                    g.d[at][l] = r.d[b];
                    // |Σ q| ≤ 32 · 127, bias ≤ 128.
                    g.tb[at][l] = bias * r.totals[b];
                }
                for q in 0..4 {
                    for s in 0..2 {
                        for l in 0..8 {
                            let (h, p) = (l / 4, l % 4);
                            let src = 32 * (8 * k + 2 * p + s) + 4 * (4 * h + q);
                            g.qs[at][2 * q + s][4 * l..4 * l + 4]
                                .copy_from_slice(&r.qs[src..src + 4]);
                        }
                    }
                }
            }
        }
        g
    }

    /// Rows `t0 .. t0 + T`.
    fn rows<const T: usize>(&self, t0: usize) -> [GroupedRow<'_>; T] {
        let gs = self.groups;
        std::array::from_fn(|t| {
            let r = (t0 + t) * gs..(t0 + t + 1) * gs;
            GroupedRow {
                qs: &self.qs[r.clone()],
                d: &self.d[r.clone()],
                tb: &self.tb[r],
            }
        })
    }
}

/// A row's output from its 8 accumulations (activation blocks `b % 8 = c`),
/// in one order for every kernel of blocks of 64.
#[inline(always)]
fn combine(c: [f32; 8]) -> f32 {
    ((c[0] + c[4]) + (c[2] + c[6])) + ((c[1] + c[5]) + (c[3] + c[7]))
}

/// `Σ w·q` of 32 weights (signed bytes, or unsigned ones where `biased`)
/// and an activation block (a function, not a closure, so that it is
/// compiled with the caller's target features).
#[inline(always)]
fn dot<V: Simd>(v: V, biased: bool, w: V::B, q: &[i8; 32]) -> V::I {
    dot_acc(v, biased, v.izero(), w, q)
}

/// `acc` plus the dot products of `w` and the 32 activations `q`, four-byte
/// lane by lane (weights as [`dot`] takes them).
#[inline(always)]
fn dot_acc<V: Simd>(v: V, biased: bool, acc: V::I, w: V::B, q: &[i8; 32]) -> V::I {
    let q = v.load_i8(q);
    if biased {
        v.dot_u8(acc, w, q)
    } else {
        v.dot_i8(acc, w, q)
    }
}

/// A block's integer sum `i` less `bias · total` (the weights came as
/// `w + bias`; nothing to take off when `bias` is 0).
#[inline(always)]
fn unbias_v<V: Simd>(v: V, bias: i32, i: V::I, total: i32) -> V::I {
    if bias != 0 {
        // Added up in integers first: the values of `i` are large (`w + bias`),
        // and converting them one by one to f32 would lose what remains.
        let z = v.izero();
        let mut c = [0; 8];
        c[0] = total;
        v.imsub(v.totals8([i, z, z, z, z, z, z, z]), v.load_i32x8(&c), bias)
    } else {
        i
    }
}

/// The integer sum of a block's partial sums `i`, less `bias · total` (the
/// weights came as `w + bias`).
#[inline(always)]
fn unbias<V: Simd>(v: V, bias: i32, i: V::I, total: i32) -> i32 {
    let z = v.izero();
    let s = v.store_i32x8(v.totals8([i, z, z, z, z, z, z, z]))[0];
    s - bias * total
}

/// Bytes of one `kind` block of `block` elements.
pub(super) fn block_bytes(kind: Own, block: usize) -> usize {
    match kind {
        Own::Nf4 => Nf4::block_bytes(block),
        Own::Int8 => Int8::block_bytes(block),
    }
}

/// Portable reference: the same integer sums element by element, scaled and
/// added in the same order per activation row.
pub(super) fn rows_scalar(
    kind: Own,
    block: usize,
    w: &[u8],
    rb: usize,
    acts: &Q8Acts,
    n: usize,
    out: &mut [f32],
) -> bool {
    let mut bad = false;
    let bb = block_bytes(kind, block);
    let mut vals = vec![0i32; block];
    for (row, o) in w.chunks_exact(rb).zip(out.chunks_exact_mut(n)) {
        let mut acc = vec![0f32; n];
        for (k, blk) in row.chunks_exact(bb).enumerate() {
            let bits = scale_bits(blk);
            bad |= scale_is_bad(bits);
            let mut d = half::f16::from_bits(bits).to_f32();
            match kind {
                Own::Nf4 => {
                    d *= INV_NF4;
                    for (j, &c) in blk[2..].iter().enumerate() {
                        vals[j] = i32::from(NF4_I8[usize::from(c & 15)]);
                        vals[j + block / 2] = i32::from(NF4_I8[usize::from(c >> 4)]);
                    }
                }
                Own::Int8 => {
                    for (v, &q) in vals.iter_mut().zip(&blk[2..]) {
                        *v = i32::from(q as i8);
                    }
                }
            }
            for (t, a) in acc.iter_mut().enumerate() {
                let xr = acts.row(t);
                for (j, wv) in vals.chunks_exact(ACT_BLOCK).enumerate() {
                    let b = k * block / ACT_BLOCK + j;
                    let q = &xr.qs[b * ACT_BLOCK..(b + 1) * ACT_BLOCK];
                    let isum: i32 = wv.iter().zip(q).map(|(&w, &q)| w * i32::from(q)).sum();
                    *a += isum as f32 * (d * xr.d[b]);
                }
            }
        }
        o.copy_from_slice(&acc);
    }
    bad
}
