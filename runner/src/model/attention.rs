//! Causal grouped-query attention over the KV cache, with an optional
//! sliding window and score soft-capping. Plain f32 on rayon (the products
//! are small next to the projections).

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
    let kd = s.kv_heads * s.head_dim;
    let group = s.heads / s.kv_heads;
    let mut out = vec![0f32; n * qd];
    out.par_chunks_mut(s.head_dim)
        .enumerate()
        .for_each(|(idx, o)| {
            let t = idx / s.heads;
            let h = idx % s.heads;
            let kvh = h / group;
            let pos = start + t;
            let lo = s.window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let qv = &q[t * qd + h * s.head_dim..][..s.head_dim];
            let slope = if s.alibi {
                alibi_slope(h, s.heads)
            } else {
                0.0
            };
            let mut scores: Vec<f32> = (lo..=pos)
                .map(|j| {
                    let kv = &cache.k[j * kd + kvh * s.head_dim..][..s.head_dim];
                    let mut d = qv.iter().zip(kv).map(|(a, b)| a * b).sum::<f32>() * s.scale;
                    if let Some(c) = s.softcap {
                        d = c * (d / c).tanh();
                    }
                    d - slope * (pos - j) as f32
                })
                .collect();
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for v in scores.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            for (j, p) in (lo..=pos).zip(&scores) {
                let vv = &cache.v[j * kd + kvh * s.head_dim..][..s.head_dim];
                let w = p / sum;
                for (a, b) in o.iter_mut().zip(vv) {
                    *a += w * b;
                }
            }
        });
    out
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
