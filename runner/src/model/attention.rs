//! Causal grouped-query attention over the KV cache, with an optional
//! sliding window and score soft-capping. Plain f32 on rayon (the products
//! are small next to the projections), in sums the compiler vectorizes.

use rayon::prelude::*;

/// Keys and values of one layer for every cached position.
#[derive(Debug, Default, Clone)]
pub struct KvCache {
    /// `[positions, kv_heads × head_dim]`.
    pub k: Vec<f32>,
    /// `[positions, kv_heads × head_dim]`.
    pub v: Vec<f32>,
}

/// Shape and options of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of a head.
    pub head_dim: usize,
    /// Score scale.
    pub scale: f32,
    /// Sliding window (keys `i − W < j ≤ i`), if any.
    pub window: Option<usize>,
    /// Score soft-cap, if any.
    pub softcap: Option<f32>,
    /// ALiBi: scores gain `alibi_slope(h, heads) × (j − i)`.
    pub alibi: bool,
}

/// ALiBi slope of head `h` of `heads` (Press et al.; Baichuan's
/// `_get_interleave`): for a power of two `n`, `2^(−8(h + 1)/n)`; otherwise
/// the slopes of the largest power of two `p < heads`, then the even-indexed
/// slopes of `2p` for the remaining heads.
pub fn alibi_slope(h: usize, heads: usize) -> f32 {
    let pow2 = |h: usize, n: usize| 2f64.powf(-8.0 * (h + 1) as f64 / n as f64);
    let p = if heads.is_power_of_two() {
        heads
    } else {
        heads.next_power_of_two() / 2
    };
    (if h < p {
        pow2(h, p)
    } else {
        pow2(2 * (h - p), 2 * p)
    }) as f32
}

/// Attention of `n` queries (`q`: `[n, heads × head_dim]`, at positions
/// `start..start + n`) over `cache` (which already holds those positions).
pub fn attend(q: &[f32], n: usize, start: usize, cache: &KvCache, s: AttnShape) -> Vec<f32> {
    let qd = s.heads * s.head_dim;
    let group = s.heads / s.kv_heads;
    let wide = wide_available();
    let mut out = vec![0f32; n * qd];
    out.par_chunks_mut(s.head_dim)
        .enumerate()
        .for_each(|(idx, o)| {
            let t = idx / s.heads;
            let h = idx % s.heads;
            let pos = start + t;
            let lo = s.window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let job = Head {
                q: &q[t * qd + h * s.head_dim..][..s.head_dim],
                cache,
                kvh: h / group,
                lo,
                pos,
                slope: if s.alibi {
                    alibi_slope(h, s.heads)
                } else {
                    0.0
                },
                s,
            };
            #[cfg(target_arch = "x86_64")]
            if wide {
                // SAFETY: `wide` says this CPU has AVX2 and FMA.
                unsafe { head_avx2(&job, o) };
                return;
            }
            let _ = wide;
            head(&job, o);
        });
    out
}

/// One query head's attention: what [`head`] needs.
struct Head<'a> {
    /// The query (`head_dim`).
    q: &'a [f32],
    cache: &'a KvCache,
    /// Its key/value head.
    kvh: usize,
    /// First and last key position.
    lo: usize,
    pos: usize,
    /// ALiBi slope (0 without ALiBi).
    slope: f32,
    s: AttnShape,
}

/// Whether [`head`] may run compiled for AVX2 and FMA (wider vectors, the
/// same operations in the same order: no multiply-add is fused, so the
/// results are the same bit for bit).
fn wide_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::kernels::Isa;
        matches!(Isa::selected(), Isa::Avx2 | Isa::Avx512)
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// [`head`] compiled for AVX2 and FMA.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn head_avx2(j: &Head<'_>, o: &mut [f32]) {
    head(j, o)
}

/// Output columns [`head`] accumulates in registers over all keys at once.
const OUT_TILE: usize = 32;

/// Writes one query head's attention into `o` (`head_dim`, zeroed): scores
/// against every key from `lo` to `pos`, softmax, then the weighted sum of
/// the values, `OUT_TILE` columns at a time over all keys (each column's
/// sum in key order, as one key at a time would add it).
#[inline(always)]
fn head(j: &Head<'_>, o: &mut [f32]) {
    let s = j.s;
    let (hd, kd) = (s.head_dim, s.kv_heads * s.head_dim);
    let at = j.kvh * hd;
    let keys = &j.cache.k[j.lo * kd..(j.pos + 1) * kd];
    let values = &j.cache.v[j.lo * kd..(j.pos + 1) * kd];
    // A plain loop (an iterator's `collect` is a function of its own, not
    // compiled with `head_avx2`'s features).
    let mut scores = vec![0f32; keys.len() / kd];
    for (i, (kr, sc)) in keys.chunks_exact(kd).zip(scores.iter_mut()).enumerate() {
        let mut d = dot(j.q, &kr[at..at + hd]) * s.scale;
        if let Some(c) = s.softcap {
            d = c * (d / c).tanh();
        }
        *sc = d - j.slope * (j.pos - (j.lo + i)) as f32;
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in scores.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in scores.iter_mut() {
        *v /= sum;
    }
    if hd.is_multiple_of(OUT_TILE) {
        for (c0, oc) in (0..hd).step_by(OUT_TILE).zip(o.chunks_exact_mut(OUT_TILE)) {
            // Fixed-size, so that the sums stay in registers.
            let mut acc = [0f32; OUT_TILE];
            for (vr, &p) in values.chunks_exact(kd).zip(&scores) {
                if let Some(vv) = vr[at + c0..].first_chunk::<OUT_TILE>() {
                    for i in 0..OUT_TILE {
                        acc[i] += p * vv[i];
                    }
                }
            }
            oc.copy_from_slice(&acc);
        }
    } else {
        for (vr, &p) in values.chunks_exact(kd).zip(&scores) {
            for (a, &b) in o.iter_mut().zip(&vr[at..at + hd]) {
                *a += p * b;
            }
        }
    }
}

/// Lanes of [`dot`]'s partial sums.
const LANES: usize = 16;

/// `Σ a·b` in [`LANES`] interleaved partial sums, added pairwise at the end,
/// then the elements after the last whole group of lanes. The partial sums
/// are independent chains that the compiler keeps in vector registers (a
/// single running sum is one long chain of dependent additions: 128-wide
/// heads spent 3 cycles an element, and attention over a 128-token context
/// took 8 ms of a 1.5B model's 62 ms decode step). One order for every
/// query, however many come together.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const H: usize = LANES / 2;
    let (ac, ar) = a.as_chunks::<LANES>();
    let (bc, br) = b.as_chunks::<LANES>();
    // Partial sums 0..8 and 8..16, as two vectors.
    let (mut lo, mut hi) = ([0f32; H], [0f32; H]);
    for (x, y) in ac.iter().zip(bc) {
        let (x0, x1) = halves(x);
        let (y0, y1) = halves(y);
        lo = madd8(lo, x0, y0);
        hi = madd8(hi, x1, y1);
    }
    for i in 0..H {
        lo[i] += hi[i];
    }
    let mut w = H / 2;
    while w > 0 {
        for i in 0..w {
            lo[i] += lo[i + w];
        }
        w /= 2;
    }
    ar.iter().zip(br).fold(lo[0], |s, (x, y)| s + x * y)
}

/// The two halves of 16 values.
#[inline(always)]
fn halves(x: &[f32; LANES]) -> (&[f32; LANES / 2], &[f32; LANES / 2]) {
    let (a, b) = x.split_at(LANES / 2);
    match (a.try_into(), b.try_into()) {
        (Ok(a), Ok(b)) => (a, b),
        _ => unreachable!("16 values split in two halves of 8"),
    }
}

/// `acc + x · y`, value by value (multiplied, then added: not fused).
#[inline(always)]
fn madd8(acc: [f32; 8], x: &[f32; 8], y: &[f32; 8]) -> [f32; 8] {
    std::array::from_fn(|i| acc[i] + x[i] * y[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_key_returns_its_value_and_window_limits_keys() {
        let cache = KvCache {
            k: vec![1.0, 0.0, 0.0, 1.0, 5.0, 5.0],
            v: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        };
        let s = AttnShape {
            heads: 1,
            kv_heads: 1,
            head_dim: 2,
            scale: 1.0,
            window: None,
            softcap: None,
            alibi: false,
        };
        // position 0 sees only key 0
        assert_eq!(attend(&[0.3, 0.7], 1, 0, &cache, s), vec![1.0, 2.0]);
        // window 1 at position 2 sees only key 2
        let w = AttnShape {
            window: Some(1),
            ..s
        };
        assert_eq!(attend(&[0.3, 0.7], 1, 2, &cache, w), vec![5.0, 6.0]);
        // equal scores average the values
        let out = attend(&[0.0, 0.0], 1, 1, &cache, s);
        assert!((out[0] - 2.0).abs() < 1e-6 && (out[1] - 3.0).abs() < 1e-6);
        // ALiBi (1 head: slope 2^-8) favours the nearer of two equal keys.
        let a = AttnShape { alibi: true, ..s };
        let out = attend(&[0.0, 0.0], 1, 1, &cache, a);
        let w1 = 1.0 / (1.0 + (-2f32.powi(-8)).exp());
        assert!((out[0] - (3.0 * w1 + (1.0 - w1))).abs() < 1e-6, "{out:?}");
    }

    #[test]
    fn alibi_slopes_as_baichuan() {
        // 8 heads: 2^-1 .. 2^-8; 40 heads (Baichuan 2 13B): 32 of 2^(-k/4), then 2^(-(2k+1)/8).
        let s: Vec<f32> = (0..8).map(|h| alibi_slope(h, 8)).collect();
        assert_eq!(s, (1..=8).map(|k| 2f32.powi(-k)).collect::<Vec<_>>());
        assert_eq!(alibi_slope(0, 40), 2f32.powf(-0.25));
        assert_eq!(alibi_slope(31, 40), 2f32.powi(-8));
        assert_eq!(alibi_slope(32, 40), 2f32.powf(-1.0 / 8.0));
        assert_eq!(alibi_slope(39, 40), 2f32.powf(-15.0 / 8.0));
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// One decoding step's attention of one layer (Qwen2.5-1.5B's heads) over
    /// 512 cached positions, one thread. Run with `cargo test -p
    /// strata-runner --release --lib attend_speed -- --ignored --nocapture`.
    #[test]
    #[ignore = "benchmark"]
    fn attend_speed() {
        let (heads, kv_heads, hd, ctx) = (12, 2, 128, 512);
        let cache = KvCache {
            k: (0..ctx * kv_heads * hd)
                .map(|i| (i % 7) as f32 * 0.01)
                .collect(),
            v: (0..ctx * kv_heads * hd)
                .map(|i| (i % 5) as f32 * 0.01)
                .collect(),
        };
        let q: Vec<f32> = (0..heads * hd).map(|i| (i % 3) as f32 * 0.1).collect();
        let s = AttnShape {
            heads,
            kv_heads,
            head_dim: hd,
            scale: 0.088,
            window: None,
            softcap: None,
            alibi: false,
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        pool.install(|| {
            let t = std::time::Instant::now();
            for _ in 0..2000 {
                std::hint::black_box(attend(&q, 1, ctx - 1, &cache, s));
            }
            eprintln!(
                "attend 1 query, ctx {ctx}: {:.1} us",
                t.elapsed().as_secs_f64() * 500.0
            );
        });
    }
}
