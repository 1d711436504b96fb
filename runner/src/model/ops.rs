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

/// Inverse frequencies of the rotary embedding, with scaling applied, as
/// Hugging Face computes them (f32).
pub fn inv_freq(rope: &Rope) -> Vec<f32> {
    let dim = rope.rotary_dim as usize;
    let base = rope.theta;
    let mut inv: Vec<f32> = (0..dim / 2)
        .map(|i| (1.0 / base.powf((2 * i) as f64 / dim as f64)) as f32)
        .collect();
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
                    let smooth =
                        (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                    (1.0 - smooth) * freq / factor + smooth * freq
                };
                *f = new as f32;
            }
        }
    }
    inv
}

/// Applies rotate-half RoPE to `x` (`n` rows of `heads × head_dim`) at
/// positions `start..start + n`, rotating the first `inv.len() × 2` dims.
pub fn apply_rope(x: &mut [f32], heads: usize, head_dim: usize, start: usize, inv: &[f32]) {
    let half = inv.len();
    x.par_chunks_mut(heads * head_dim)
        .enumerate()
        .for_each(|(t, row)| {
            let pos = (start + t) as f32;
            let cs: Vec<(f32, f32)> = inv
                .iter()
                .map(|&f| {
                    let a = pos * f;
                    (a.cos(), a.sin())
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
        apply_rope(&mut x, 1, 2, 1, &inv);
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[1] - 1f32.sin()).abs() < 1e-6);
    }
}
