//! Mixture-of-experts feed-forward blocks (SPEC.md §5.2 `moe`), computed as
//! transformers' Mixtral, Qwen2-MoE and Qwen3-MoE blocks do: router logits,
//! softmax in f32, the `top_k` largest probabilities, renormalized to sum to
//! 1 when `normalize_top_k`; each chosen expert's gated MLP scaled by its
//! weight and added in ascending expert order; plus, when present, the shared
//! expert scaled by `sigmoid(shared_gate · u)`.

use strata_format::manifest::{Activation, Moe};
use strata_format::names::{self, MOE_EXPERT_PARTS};

use crate::container::{StageInfo, Weight};
use crate::error::{Result, RunnerError};
use crate::model::linear::linear;
use crate::model::ops::gated_activation;
use crate::stream::ExpertFetch;

/// The experts each input row picked, and their weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// `[rows, top_k]` expert indices, largest probability first.
    pub experts: Vec<usize>,
    /// `[rows, top_k]` weights of those experts.
    pub weights: Vec<f32>,
    /// Experts per row.
    pub top_k: usize,
}

impl Routing {
    /// The experts picked by any row, ascending.
    pub fn union(&self) -> Vec<usize> {
        let mut u = self.experts.clone();
        u.sort_unstable();
        u.dedup();
        u
    }
}

/// Routes `n` rows of `u` (router weight `router`, `[num_experts, hidden]`).
pub fn route(
    u: &[f32],
    n: usize,
    router: &Weight<'_>,
    m: &Moe,
    what: (&str, &str),
) -> Result<Routing> {
    let e = router.rows;
    let k = m.top_k as usize;
    if k == 0 || k > e {
        return Err(RunnerError::Tensor {
            file: what.0.into(),
            tensor: what.1.into(),
            reason: format!("top_k {k} of {e} experts"),
        });
    }
    let logits = linear(u, n, router, what)?;
    let mut experts = Vec::with_capacity(n * k);
    let mut weights = Vec::with_capacity(n * k);
    for row in logits.chunks(e) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f32> = row.iter().map(|&v| (v - max).exp()).collect();
        let sum: f32 = exps.iter().sum();
        let probs: Vec<f32> = exps.iter().map(|&v| v / sum).collect();
        let mut order: Vec<usize> = (0..e).collect();
        // Largest first; equal probabilities keep the lower index first.
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        let top = &order[..k];
        let total: f32 = top.iter().map(|&i| probs[i]).sum();
        for &i in top {
            experts.push(i);
            weights.push(if m.normalize_top_k {
                probs[i] / total
            } else {
                probs[i]
            });
        }
    }
    Ok(Routing {
        experts,
        weights,
        top_k: k,
    })
}

/// `down(act(gate(u)) ⊙ up(u))` for `n` rows.
fn gated_mlp(
    u: &[f32],
    n: usize,
    w: [Weight<'_>; 3],
    act: Activation,
    file: &str,
    names: [&str; 3],
) -> Result<Vec<f32>> {
    let mut g = linear(u, n, &w[0], (file, names[0]))?;
    let up = linear(u, n, &w[1], (file, names[1]))?;
    gated_activation(&mut g, &up, act);
    linear(&g, n, &w[2], (file, names[2]))
}

/// A layer's view for its MoE block: the stage, the bytes read of its file
/// (from offset 0), and how to fetch its routed experts.
pub struct LayerSource<'a, 'f> {
    /// The layer's stage file.
    pub stage: &'a StageInfo,
    /// The layer's bytes from offset 0 (at least everything before the experts).
    pub bytes: &'a [u8],
    /// Fetches routed experts.
    pub fetch: &'a mut ExpertFetch<'f>,
}

/// The MoE block's output for `n` rows of `u` (the normed residual stream):
/// the routed experts (fetched through `fetch`) plus the shared expert.
pub fn moe_block(
    u: &[f32],
    n: usize,
    hidden: usize,
    m: &Moe,
    act: Activation,
    src: LayerSource<'_, '_>,
) -> Result<Vec<f32>> {
    let LayerSource {
        stage,
        bytes: layer_bytes,
        fetch,
    } = src;
    let file = stage.name.as_str();
    let w = |name: &str| stage.weight(layer_bytes, 0, name);
    let routing = route(u, n, &w(names::MOE_ROUTER)?, m, (file, names::MOE_ROUTER))?;
    let mut out = vec![0f32; n * hidden];
    let chosen = routing.union();
    fetch(&chosen, &mut |e, bytes, base| {
        // The rows that picked expert `e`, and the weight each gives it.
        let (rows, scale): (Vec<usize>, Vec<f32>) = (0..n)
            .filter_map(|t| {
                let picks = &routing.experts[t * routing.top_k..(t + 1) * routing.top_k];
                picks
                    .iter()
                    .position(|&x| x == e)
                    .map(|j| (t, routing.weights[t * routing.top_k + j]))
            })
            .unzip();
        let mut xs = Vec::with_capacity(rows.len() * hidden);
        for &t in &rows {
            xs.extend_from_slice(&u[t * hidden..(t + 1) * hidden]);
        }
        let tn: Vec<String> = MOE_EXPERT_PARTS
            .iter()
            .map(|p| names::moe_expert(e as u64, p))
            .collect();
        let ws = [
            stage.weight(bytes, base, &tn[0])?,
            stage.weight(bytes, base, &tn[1])?,
            stage.weight(bytes, base, &tn[2])?,
        ];
        let y = gated_mlp(&xs, rows.len(), ws, act, file, [&tn[0], &tn[1], &tn[2]])?;
        for ((&t, s), yr) in rows.iter().zip(&scale).zip(y.chunks(hidden)) {
            for (o, v) in out[t * hidden..(t + 1) * hidden].iter_mut().zip(yr) {
                *o += v * s;
            }
        }
        Ok(())
    })?;
    if m.shared_expert_intermediate_size.is_some() {
        let ws = [
            w(names::MOE_SHARED_GATE)?,
            w(names::MOE_SHARED_UP)?,
            w(names::MOE_SHARED_DOWN)?,
        ];
        let y = gated_mlp(
            u,
            n,
            ws,
            act,
            file,
            [
                names::MOE_SHARED_GATE,
                names::MOE_SHARED_UP,
                names::MOE_SHARED_DOWN,
            ],
        )?;
        let g = linear(
            u,
            n,
            &w(names::MOE_SHARED_GATE_SCALAR)?,
            (file, names::MOE_SHARED_GATE_SCALAR),
        )?;
        for ((o, yr), gv) in out.chunks_mut(hidden).zip(y.chunks(hidden)).zip(&g) {
            let s = 1.0 / (1.0 + (-gv).exp());
            for (a, b) in o.iter_mut().zip(yr) {
                *a += s * b;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Layout;
    use strata_format::{codec, DType};

    #[test]
    fn routing_softmax_topk_and_renormalization() {
        // 3 experts, router rows e_i: logits of the row x = [1, 0] are 2, 1, 0.
        let wv = [2.0f32, 0.0, 1.0, 0.0, 0.0, 0.0];
        let bytes = codec::encode(DType::F32, &wv, &[3, 2], None).unwrap();
        let w = Weight {
            dtype: DType::F32,
            rows: 3,
            cols: 2,
            block: 1,
            bytes: &bytes,
            layout: Layout::Rows,
        };
        let mut m = Moe {
            num_experts: 3,
            top_k: 2,
            expert_intermediate_size: 4,
            normalize_top_k: false,
            shared_expert_intermediate_size: None,
        };
        let r = route(&[1.0, 0.0], 1, &w, &m, ("f", "t")).unwrap();
        let z = 1.0 + (-1f32).exp() + (-2f32).exp();
        assert_eq!(r.experts, vec![0, 1]);
        assert!((r.weights[0] - 1.0 / z).abs() < 1e-6);
        assert!((r.weights[1] - (-1f32).exp() / z).abs() < 1e-6);
        m.normalize_top_k = true;
        let r = route(&[1.0, 0.0], 1, &w, &m, ("f", "t")).unwrap();
        assert!((r.weights[0] + r.weights[1] - 1.0).abs() < 1e-6);
        assert!((r.weights[0] - 1.0 / (1.0 + (-1f32).exp())).abs() < 1e-6);
        assert_eq!(r.union(), vec![0, 1]);
    }
}
