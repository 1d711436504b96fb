//! Element-wise and row-wise operations in f32: RMSNorm, activations, biases,
//! soft-capping and rotary embeddings.

use rayon::prelude::*;
use strata_format::manifest::{Activation, Rope, RopeScaling};

/// RMSNorm of each `dim`-wide row of `x`: `x / sqrt(mean(x²) + eps) × w`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, dim: usize) -> Vec<f32> {
    let mut out = x.to_vec();
    rms_norm_in_place(&mut out, w, eps, dim);
    out
}

/// RMSNorm in place (see [`rms_norm`]).
pub fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32, dim: usize) {
    x.par_chunks_mut(dim).for_each(|row| {
        let ss: f32 = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let inv = 1.0 / (ss + eps).sqrt();
        for (v, g) in row.iter_mut().zip(w) {
            *v = g * (*v * inv);
        }
    });
}

/// Adds `bias` to each row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// `x += y`.
pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `gate = act(gate) × up`, element-wise.
pub fn gated_activation(gate: &mut [f32], up: &[f32], act: Activation) {
    gate.par_iter_mut().zip(up.par_iter()).for_each(|(g, &u)| {
        let a = match act {
            Activation::Silu => *g / (1.0 + (-*g).exp()),
            Activation::GeluTanh => {
                let x = *g;
                0.5 * x
                    * (1.0
                        + ((2.0f32 / std::f32::consts::PI).sqrt() * (x + 0.044715 * x * x * x))
                            .tanh())
            }
        };
        *g = a * u;
    });
}

/// `cap × tanh(v / cap)` on every value.
pub fn soft_cap(x: &mut [f32], cap: f32) {
    for v in x.iter_mut() {
        *v = cap * (*v / cap).tanh();
    }
}

/// The rotary tables of a model: inverse frequencies (one set, or LongRoPE's
/// short and long sets) and the cos/sin multiplier.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeTables {
    /// Inverse frequencies (LongRoPE: those of short sequences).
    pub inv: Vec<f32>,
    /// LongRoPE: the inverse frequencies of long sequences and the longest
    /// sequence the short ones serve.
    pub long: Option<(Vec<f32>, usize)>,
    /// Multiplier of cos and sin (LongRoPE's attention factor, else 1).
    pub scale: f32,
}

impl RopeTables {
    /// The tables of `rope`, computed as Hugging Face computes them (f32).
    pub fn new(rope: &Rope) -> RopeTables {
        let dim = rope.rotary_dim as usize;
        let base = rope.theta;
        let plain = |i: usize| 1.0 / base.powf((2 * i) as f64 / dim as f64);
        let mut inv: Vec<f32> = (0..dim / 2).map(|i| plain(i) as f32).collect();
        let mut long = None;
        let mut scale = 1.0;
        match &rope.scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => {
                for f in &mut inv {
                    *f /= *factor as f32;
                }
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                for f in &mut inv {
                    let freq = f64::from(*f);
                    let wavelen = 2.0 * std::f64::consts::PI / freq;
                    let new = if wavelen < high_wavelen {
                        freq
                    } else if wavelen > low_wavelen {
                        freq / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * freq / factor + smooth * freq
                    };
                    *f = new as f32;
                }
            }
            Some(RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings,
                attention_factor,
            }) => {
                let with = |factors: &[f64]| -> Vec<f32> {
                    factors
                        .iter()
                        .enumerate()
                        .map(|(i, ext)| (plain(i) / ext) as f32)
                        .collect()
                };
                inv = with(short_factor);
                long = Some((
                    with(long_factor),
                    usize::try_from(*original_max_position_embeddings).unwrap_or(usize::MAX),
                ));
                scale = *attention_factor as f32;
            }
        }
        RopeTables { inv, long, scale }
    }

    /// Whether a sequence `len` long uses LongRoPE's long factors (it is
    /// longer than the original context).
    pub fn uses_long(&self, len: usize) -> bool {
        self.long
            .as_ref()
            .is_some_and(|(_, original)| len > *original)
    }

    /// The inverse frequencies: the long set when `long` (and there is one).
    pub fn inv(&self, long: bool) -> &[f32] {
        match &self.long {
            Some((inv, _)) if long => inv,
            _ => &self.inv,
        }
    }
}

/// Applies rotate-half RoPE to `x` (`n` rows of `heads × head_dim`) at
/// positions `start..start + n`, rotating the first `inv.len() × 2` dims,
/// with cos and sin multiplied by `scale`.
pub fn apply_rope(
    x: &mut [f32],
    heads: usize,
    head_dim: usize,
    start: usize,
    inv: &[f32],
    scale: f32,
) {
    let half = inv.len();
    x.par_chunks_mut(heads * head_dim)
        .enumerate()
        .for_each(|(t, row)| {
            let pos = (start + t) as f32;
            let cs: Vec<(f32, f32)> = inv
                .iter()
                .map(|&f| {
                    let a = pos * f;
                    (a.cos() * scale, a.sin() * scale)
                })
                .collect();
            for head in row.chunks_mut(head_dim) {
                for (i, &(c, s)) in cs.iter().enumerate() {
                    let x1 = head[i];
                    let x2 = head[i + half];
                    head[i] = x1 * c - x2 * s;
                    head[i + half] = x2 * c + x1 * s;
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_unit_rows() {
        let x = [3.0f32, 4.0, 0.0, 0.0];
        let y = rms_norm(&x, &[1.0, 1.0, 1.0, 1.0], 0.0, 4);
        // mean square 25/4 -> rms 2.5
        assert!((y[0] - 1.2).abs() < 1e-6 && (y[1] - 1.6).abs() < 1e-6);
    }

    #[test]
    fn rope_rotates_pairs() {
        let inv = [1.0f32];
        let mut x = [1.0f32, 0.0];
        apply_rope(&mut x, 1, 2, 1, &inv, 1.0);
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[1] - 1f32.sin()).abs() < 1e-6);
        // A scale multiplies the rotated dims only (partial rotary leaves the rest).
        let mut x = [1.0f32, 0.0, 5.0];
        apply_rope(&mut x, 1, 3, 1, &inv, 2.0);
        assert!((x[0] - 2.0 * 1f32.cos()).abs() < 1e-6 && x[2] == 5.0);
    }

    #[test]
    fn longrope_picks_factors_by_sequence_length() {
        let rope = Rope {
            theta: 10000.0,
            rotary_dim: 4,
            scaling: Some(RopeScaling::LongRope {
                short_factor: vec![1.0, 2.0],
                long_factor: vec![4.0, 8.0],
                original_max_position_embeddings: 8,
                attention_factor: 1.5,
            }),
        };
        let t = RopeTables::new(&rope);
        assert!(!t.uses_long(8) && t.uses_long(9));
        assert_eq!(t.inv(false), &[1.0, 0.005]);
        assert_eq!(t.inv(true), &[0.25, 0.00125]);
        assert_eq!(t.scale, 1.5);
        let plain = RopeTables::new(&Rope {
            scaling: None,
            ..rope
        });
        assert!(!plain.uses_long(1000));
        assert_eq!((plain.inv(true), plain.scale), (&[1.0, 0.01][..], 1.0));
    }
}
