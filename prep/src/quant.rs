//! Block quantizers for `nf4` and `int8` that produce exactly the bytes of
//! SPEC.md §4.4 and §4.5 (the encoding rules are normative, so every writer
//! agrees byte for byte), vectorized across elements with AVX2: several
//! times faster than the scalar reference in `strata_format::codec`, which
//! is used instead on other CPUs, for the float encodings, and for any input
//! holding a non-finite value or a block whose scale overflows f16 (so errors
//! are exactly the reference's). Tests check both agree byte for byte.

use strata_format::codec;
use strata_format::dtype::DType;
use strata_format::error::CodecError;

/// Encodes `data` (`shape`, row-major) into `dtype`, like
/// [`strata_format::codec::encode`] but faster for `nf4` and `int8`.
pub fn encode(
    dtype: DType,
    data: &[f32],
    shape: &[u64],
    block: Option<u32>,
) -> Result<Vec<u8>, CodecError> {
    #[cfg(target_arch = "x86_64")]
    if let (DType::Nf4 | DType::Int8, Some(b), Some((rows, cols))) =
        (dtype, block, codec::rows_cols(shape))
    {
        if strata_format::dtype::check_block_size(b).is_ok()
            && rows.checked_mul(cols) == Some(data.len())
            && std::arch::is_x86_feature_detected!("avx2")
        {
            // SAFETY: the CPU supports AVX2 (checked just above).
            if let Some(bytes) = unsafe { avx2::encode_blocks(dtype, data, rows, cols, b as usize) }
            {
                return Ok(bytes);
            }
        }
    }
    codec::encode(dtype, data, shape, block)
}

/// The AVX2 kernels.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use half::f16;
    use strata_format::codec::{self, nf4::CODES};
    use strata_format::dtype::DType;

    /// Encodes whole rows; `None` when some block needs the reference codec.
    /// `block` is a multiple of 32.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn encode_blocks(
        dtype: DType,
        data: &[f32],
        rows: usize,
        cols: usize,
        block: usize,
    ) -> Option<Vec<u8>> {
        let row_bytes = codec::row_bytes(dtype, cols, block);
        let mut out = vec![0u8; rows * row_bytes];
        if cols == 0 {
            return Some(out);
        }
        let per_block = row_bytes / cols.div_ceil(block);
        let mids = codec::nf4::midpoints().map(|m| _mm256_set1_ps(m));
        let mut padded = vec![0f32; block];
        let mut nf4_buf = vec![0u8; block];
        for (src, dst) in data.chunks_exact(cols).zip(out.chunks_exact_mut(row_bytes)) {
            for (b, o) in dst.chunks_exact_mut(per_block).enumerate() {
                let start = b * block;
                let end = (start + block).min(cols);
                let vals = if end - start == block {
                    &src[start..end]
                } else {
                    // The last block of a row is padded with 0.0, which
                    // encodes as the zero code (nf4 7, int8 0) like padding.
                    padded.fill(0.0);
                    padded[..end - start].copy_from_slice(&src[start..end]);
                    &padded[..]
                };
                let max = absmax(vals)?;
                if dtype == DType::Nf4 {
                    // The normative search (SPEC.md §4.4) over the block's
                    // real elements, with the codes assigned 8 at a time.
                    let real = &vals[..end - start];
                    let d = codec::nf4::search_block(
                        real,
                        start,
                        &mut nf4_buf,
                        |sigma2, id| nf4_sums(real, sigma2, id, &mids),
                        |id, c| nf4_assign(real, id, &mids, c),
                    )
                    .ok()?;
                    o[..2].copy_from_slice(&d.to_le_bytes());
                    codec::nf4::pack_codes(&nf4_buf[..real.len()], &mut o[2..]);
                    continue;
                }
                let d = f16::from_f32(max / 127.0);
                if !d.is_finite() {
                    return None;
                }
                o[..2].copy_from_slice(&d.to_le_bytes());
                let df = d.to_f32();
                let codes = &mut o[2..];
                if df > 0.0 {
                    int8_codes(vals, df, codes);
                } else {
                    codes.fill(0);
                }
            }
        }
        Some(out)
    }

    /// Largest `|x|` of a block (a multiple of 8 long), or `None` if a value
    /// is not finite. Non-negative floats order like their bit patterns.
    #[target_feature(enable = "avx2")]
    fn absmax(vals: &[f32]) -> Option<f32> {
        let mask = _mm256_set1_epi32(0x7FFF_FFFF);
        let mut acc = _mm256_setzero_si256();
        for c in vals.chunks_exact(8) {
            // SAFETY: `c` holds 8 floats; the load accepts any alignment.
            let v = unsafe { _mm256_loadu_si256(c.as_ptr().cast()) };
            acc = _mm256_max_epu32(acc, _mm256_and_si256(v, mask));
        }
        let mut lanes = [0u32; 8];
        // SAFETY: `lanes` holds 8 u32; the store accepts any alignment.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), acc) };
        let bits = lanes.iter().fold(0u32, |m, &l| m.max(l));
        (bits < 0x7F80_0000).then(|| f32::from_bits(bits))
    }

    /// Stores the low byte of each of the 8 lanes (each in 0..=255 or
    /// -128..=127) into `out[..8]`.
    #[target_feature(enable = "avx2")]
    fn store_bytes(v: __m256i, signed: bool, out: &mut [u8]) {
        let lo = _mm256_castsi256_si128(v);
        let hi = _mm256_extracti128_si256::<1>(v);
        let bytes = if signed {
            let w = _mm_packs_epi32(lo, hi);
            _mm_packs_epi16(w, w)
        } else {
            let w = _mm_packus_epi32(lo, hi);
            _mm_packus_epi16(w, w)
        };
        let mut tmp = [0u8; 16];
        // SAFETY: `tmp` holds 16 bytes; the store accepts any alignment.
        unsafe { _mm_storeu_si128(tmp.as_mut_ptr().cast(), bytes) };
        out[..8].copy_from_slice(&tmp[..8]);
    }

    /// The NF4 codes of 8 scaled values `y` (one per 32-bit lane): the
    /// number of midpoints `≤ y`, as `codec::nf4::nearest_code` counts them.
    #[target_feature(enable = "avx2")]
    fn nf4_codes8(y: __m256, mids: &[__m256; 15]) -> __m256i {
        let mut c = _mm256_setzero_si256();
        for m in mids {
            // A true comparison is all ones (−1): subtracting counts it.
            c = _mm256_sub_epi32(c, _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(y, *m)));
        }
        c
    }

    /// NF4 code of each of `vals` scaled by `id`: the number of midpoints
    /// `≤ x × id` (binary32 product), 8 at a time, the rest one by one; the
    /// same codes as `codec::nf4::nearest_code` gives.
    #[target_feature(enable = "avx2")]
    fn nf4_assign(vals: &[f32], id: f32, mids: &[__m256; 15], codes: &mut [u8]) {
        let vid = _mm256_set1_ps(id);
        let whole = vals.len() / 8 * 8;
        for (v, out) in vals[..whole]
            .chunks_exact(8)
            .zip(codes[..whole].chunks_exact_mut(8))
        {
            // SAFETY: `v` holds 8 floats; the load accepts any alignment.
            let y = _mm256_mul_ps(unsafe { _mm256_loadu_ps(v.as_ptr()) }, vid);
            store_bytes(nf4_codes8(y, mids), false, out);
        }
        if whole < vals.len() {
            let scalar_mids = codec::nf4::midpoints();
            for (c, &x) in codes[whole..vals.len()].iter_mut().zip(&vals[whole..]) {
                *c = codec::nf4::nearest_code(x * id, &scalar_mids);
            }
        }
    }

    /// `codec::nf4::candidate_sums` 8 elements at a time, bit for bit: lane
    /// `r` adds the terms of elements `r, r + 8, …` in order (a last partial
    /// chunk is zero-padded: a zero adds nothing), and the lanes are totalled
    /// in the spec's order.
    #[target_feature(enable = "avx2")]
    fn nf4_sums(vals: &[f32], sigma2: f32, id: f32, mids: &[__m256; 15]) -> (f32, f32) {
        let table = |h: usize| {
            let mut t = [0f32; 8];
            t.copy_from_slice(&CODES[8 * h..8 * h + 8]);
            // SAFETY: `t` holds 8 floats; the load accepts any alignment.
            unsafe { _mm256_loadu_ps(t.as_ptr()) }
        };
        let (lo, hi) = (table(0), table(1));
        let seven = _mm256_set1_epi32(7);
        let (vid, vs) = (_mm256_set1_ps(id), _mm256_set1_ps(sigma2));
        let (mut sx, mut sq) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut tail = [0f32; 8];
        for chunk in vals.chunks(8) {
            let v = if chunk.len() == 8 {
                chunk
            } else {
                tail[..chunk.len()].copy_from_slice(chunk);
                tail[chunk.len()..].fill(0.0);
                &tail[..]
            };
            // SAFETY: `v` holds 8 floats; the load accepts any alignment.
            let x = unsafe { _mm256_loadu_ps(v.as_ptr()) };
            let c = nf4_codes8(_mm256_mul_ps(x, vid), mids);
            let q = _mm256_blendv_ps(
                _mm256_permutevar8x32_ps(lo, c),
                _mm256_permutevar8x32_ps(hi, c),
                _mm256_castsi256_ps(_mm256_cmpgt_epi32(c, seven)),
            );
            let wq = _mm256_mul_ps(_mm256_add_ps(vs, _mm256_mul_ps(x, x)), q);
            sx = _mm256_add_ps(sx, _mm256_mul_ps(wq, x));
            sq = _mm256_add_ps(sq, _mm256_mul_ps(wq, q));
        }
        let (mut lx, mut lq) = ([0f32; 8], [0f32; 8]);
        // SAFETY: each array holds 8 floats; the stores accept any alignment.
        unsafe {
            _mm256_storeu_ps(lx.as_mut_ptr(), sx);
            _mm256_storeu_ps(lq.as_mut_ptr(), sq);
        }
        (codec::nf4::lane_total(&lx), codec::nf4::lane_total(&lq))
    }

    /// int8 codes of one block: `clamp(round(x / d), −127, 127)`, rounding
    /// half away from zero (exact: `|x / d| ≤ 2·127`, so the truncation and
    /// the fraction are exact in binary32).
    #[target_feature(enable = "avx2")]
    fn int8_codes(vals: &[f32], df: f32, codes: &mut [u8]) {
        let d = _mm256_set1_ps(df);
        let half_pos = _mm256_set1_ps(0.5);
        let half_neg = _mm256_set1_ps(-0.5);
        let lo = _mm256_set1_epi32(-127);
        let hi = _mm256_set1_epi32(127);
        for (v, out) in vals.chunks_exact(8).zip(codes.chunks_exact_mut(8)) {
            // SAFETY: `v` holds 8 floats; the load accepts any alignment.
            let y = _mm256_div_ps(unsafe { _mm256_loadu_ps(v.as_ptr()) }, d);
            let t = _mm256_cvttps_epi32(y);
            let f = _mm256_sub_ps(y, _mm256_cvtepi32_ps(t));
            let up = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(f, half_pos));
            let down = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(f, half_neg));
            let q = _mm256_add_epi32(_mm256_sub_epi32(t, up), down);
            let q = _mm256_min_epi32(_mm256_max_epi32(q, lo), hi);
            store_bytes(q, true, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn f32(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
    }

    /// Says that a test could not run part of its check here: a
    /// `SKIP: <name>: <reason>` line on stderr, also appended to the file
    /// `$STRATA_SKIP_LOG` names (if set) so that `scripts/test.sh` counts it
    /// (cargo captures the stderr of passing tests). The twin of
    /// `strata_e2e::skip`, which this crate cannot depend on.
    fn skip(name: &str, reason: &str) {
        use std::io::Write;
        let line = format!("SKIP: {name}: {reason}");
        eprintln!("{line}");
        if let Some(log) = std::env::var_os("STRATA_SKIP_LOG").filter(|l| !l.is_empty()) {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap_or_else(|e| panic!("STRATA_SKIP_LOG={log:?}: {e}"));
            // One append-mode write: parallel tests' lines do not interleave.
            f.write_all(format!("{line}\n").as_bytes())
                .unwrap_or_else(|e| panic!("STRATA_SKIP_LOG={log:?}: {e}"));
        }
    }

    /// Records a skip for `test` where this CPU cannot run the AVX2
    /// kernels (there, `encode` is the reference, compared with itself).
    fn skip_unless_avx2(test: &str) {
        if kernel(DType::Int8, &[0.0; 32], 1, 32, 32).is_none() {
            skip(
                test,
                "no AVX2 on this CPU: the AVX2 kernels cannot run, only the reference",
            );
        }
    }

    /// The AVX2 kernel's own answer, without the fallback to the reference:
    /// `None` where this CPU has no AVX2.
    fn kernel(
        dtype: DType,
        data: &[f32],
        rows: usize,
        cols: usize,
        block: u32,
    ) -> Option<Option<Vec<u8>>> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return Some(unsafe { avx2::encode_blocks(dtype, data, rows, cols, block as usize) });
        }
        let _ = (dtype, data, rows, cols, block);
        None
    }

    fn same(dtype: DType, data: &[f32], rows: usize, cols: usize, block: u32) {
        let shape = [rows as u64, cols as u64];
        let want = codec::encode(dtype, data, &shape, Some(block));
        let got = encode(dtype, data, &shape, Some(block));
        // Debug text, because NaN != NaN inside the errors.
        assert_eq!(
            format!("{got:?}"),
            format!("{want:?}"),
            "{dtype} rows {rows} cols {cols} block {block}"
        );
        // `encode` falls back to the reference wherever the kernel declines,
        // so the check above would also pass with a kernel that always
        // declined: the kernel itself must give the reference's bytes
        // whenever the reference succeeds, and decline only where it fails.
        if let Some(k) = kernel(dtype, data, rows, cols, block) {
            assert_eq!(
                k,
                want.ok(),
                "AVX2 kernel: {dtype} rows {rows} cols {cols} block {block}"
            );
        }
    }

    #[test]
    fn matches_the_reference_on_random_data() {
        skip_unless_avx2("quant::tests::matches_the_reference_on_random_data");
        let mut rng = Rng(0x9E3779B97F4A7C15);
        for dtype in [DType::Nf4, DType::Int8] {
            for (rows, cols, block) in [
                (3, 64, 64),
                (5, 80, 32),
                (2, 100, 64),
                (4, 576, 64),
                (1, 1, 32),
                (3, 4100, 4096),
                (2, 300, 128),
            ] {
                for scale in [1.0f32, 0.02, 3e-6, 6e4, 1e-30] {
                    let data: Vec<f32> = (0..rows * cols).map(|_| rng.f32() * scale).collect();
                    same(dtype, &data, rows, cols, block);
                }
            }
        }
    }

    #[test]
    fn matches_the_reference_on_edge_cases() {
        skip_unless_avx2("quant::tests::matches_the_reference_on_edge_cases");
        let mids: Vec<f32> = (0..15)
            .map(|i| {
                (strata_format::codec::nf4::CODES[i] + strata_format::codec::nf4::CODES[i + 1])
                    / 2.0
            })
            .collect();
        for dtype in [DType::Nf4, DType::Int8] {
            // Zeros, signed zeros, a lone maximum.
            same(dtype, &[0.0; 64], 1, 64, 32);
            let mut v = vec![-0.0f32; 64];
            v[5] = 2.5;
            same(dtype, &v, 2, 32, 32);
            // Exact NF4 midpoints (ties go up) and int8 half-way points.
            let mut t: Vec<f32> = mids.iter().map(|m| m * 1.0).collect();
            t.push(1.0);
            t.extend((0..48).map(|i| (i as f32 - 24.0) / 127.0 * 0.5 * 2.0 + 0.5 / 127.0));
            same(dtype, &t[..64], 1, 64, 64);
            // int8 ties: absmax 127·2⁻⁷ makes the scale exactly 2⁻⁷, so
            // (k + 0.5)·2⁻⁷ divides to exactly k + 0.5.
            let mut ties: Vec<f32> = (0..63).map(|k| (k as f32 - 31.5) / 128.0).collect();
            ties.push(127.0 / 128.0);
            same(dtype, &ties, 1, 64, 64);
            // Subnormal scales.
            let tiny: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) * 1e-9).collect();
            same(dtype, &tiny, 1, 64, 64);
            // Errors: non-finite values and scales beyond f16.
            let mut bad = vec![0.5f32; 96];
            bad[70] = f32::NAN;
            same(dtype, &bad, 1, 96, 32);
            bad[70] = f32::NEG_INFINITY;
            same(dtype, &bad, 3, 32, 32);
            bad[70] = 1e9;
            same(dtype, &bad, 1, 96, 32);
        }
        // Float encodings go through the reference unchanged.
        let v = [1.0f32, -2.5, 7e4];
        for dtype in [DType::F32, DType::F16, DType::Bf16] {
            assert_eq!(
                encode(dtype, &v, &[3], None),
                codec::encode(dtype, &v, &[3], None)
            );
        }
        assert!(matches!(
            encode(DType::Nf4, &v, &[3], Some(48)),
            Err(CodecError::BlockSize(48))
        ));
        assert!(matches!(
            encode(DType::Nf4, &v, &[2], Some(32)),
            Err(CodecError::Length {
                what: "elements",
                expected: 2,
                actual: 3
            })
        ));
    }
}
