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
            let mut scores: Vec<f32> = (lo..=pos)
                .map(|j| {
                    let kv = &cache.k[j * kd + kvh * s.head_dim..][..s.head_dim];
                    let mut d = qv.iter().zip(kv).map(|(a, b)| a * b).sum::<f32>() * s.scale;
                    if let Some(c) = s.softcap {
                        d = c * (d / c).tanh();
                    }
                    d
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
    }
}
