//! Named model shapes (the dimensions of real Llama-family models) and the
//! exact stage layout of a container for an architecture: which stage files
//! exist, the tensor table of each (SPEC.md §6, in the order `strata-prep`
//! writes it) and each file's exact size, computed with the writer's own
//! header layout. Used to write random-weight containers of a real shape and
//! to plan memory for a model without its files.

use std::path::Path;

use crate::dtype::{DType, DEFAULT_BLOCK};
use crate::error::Result;
use crate::header::StageKind;
use crate::manifest::{Activation, Architecture, Moe, Quantization, Rope, RopeScaling};
use crate::names;
use crate::writer::{stage_file_size, TensorSpec};

/// The names [`Shape::named`] knows, smallest first.
pub const SHAPE_NAMES: [&str; 7] = [
    "tiny",
    "mixtral-8x7b-2l",
    "llama2-7b",
    "llama3-8b",
    "mixtral-8x7b",
    "llama3-70b",
    "llama3.1-405b",
];

/// A named model shape with the encodings its container uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    /// The shape's name (one of [`SHAPE_NAMES`]).
    pub name: &'static str,
    /// The model's mathematics.
    pub architecture: Architecture,
    /// The encodings (`prep --quant nf4`: nf4 layers, int8 embeddings and head, block 64).
    pub quantization: Quantization,
}

/// Dimensions that differ between the named shapes.
struct Dims {
    layers: u64,
    hidden: u64,
    heads: u64,
    kv_heads: u64,
    intermediate: u64,
    vocab: u64,
    max_position: u64,
    theta: f64,
    llama3_scaling: bool,
    tied: bool,
    class: &'static str,
    /// Routed experts and experts per token (Mixtral), if any.
    experts: Option<(u64, u64)>,
}

impl Shape {
    /// The shape called `name` (see [`SHAPE_NAMES`]), or `None`.
    ///
    /// - `tiny`: 2 layers, hidden 64, 4 heads (2 KV), intermediate 128,
    ///   vocabulary 49152 (SmolLM2's tokenizer fits), tied head: a few MB.
    /// - `llama2-7b`: 32 layers, hidden 4096, 32 heads (32 KV), intermediate 11008, vocabulary 32000.
    /// - `llama3-8b`: Llama 3.1 8B: 32 layers, hidden 4096, 32 heads (8 KV),
    ///   intermediate 14336, vocabulary 128256, RoPE θ 500000 with Llama 3 scaling.
    /// - `llama3-70b`: Llama 3.1 70B: 80 layers, hidden 8192, 64 heads (8 KV), intermediate 28672.
    /// - `llama3.1-405b`: 126 layers, hidden 16384, 128 heads (8 KV), intermediate 53248.
    /// - `mixtral-8x7b`: Mixtral 8x7B: 32 layers, hidden 4096, 32 heads (8 KV),
    ///   8 experts of width 14336, top-2, vocabulary 32000, RoPE θ 1e6.
    /// - `mixtral-8x7b-2l`: the same with 2 layers (about 1.9 GB in nf4), to
    ///   measure expert streaming without writing 26 GB.
    pub fn named(name: &str) -> Option<Shape> {
        let llama3 = |layers, hidden, heads, intermediate| Dims {
            layers,
            hidden,
            heads,
            kv_heads: 8,
            intermediate,
            vocab: 128_256,
            max_position: 131_072,
            theta: 500_000.0,
            llama3_scaling: true,
            tied: false,
            class: "LlamaForCausalLM",
            experts: None,
        };
        let mixtral = |layers| Dims {
            layers,
            hidden: 4096,
            heads: 32,
            kv_heads: 8,
            intermediate: 14_336,
            vocab: 32_000,
            max_position: 32_768,
            theta: 1_000_000.0,
            llama3_scaling: false,
            tied: false,
            class: "MixtralForCausalLM",
            experts: Some((8, 2)),
        };
        let d = match name {
            "tiny" => Dims {
                layers: 2,
                hidden: 64,
                heads: 4,
                kv_heads: 2,
                intermediate: 128,
                vocab: 49_152,
                max_position: 2048,
                theta: 10_000.0,
                llama3_scaling: false,
                tied: true,
                class: "LlamaForCausalLM",
                experts: None,
            },
            "llama2-7b" => Dims {
                layers: 32,
                hidden: 4096,
                heads: 32,
                kv_heads: 32,
                intermediate: 11_008,
                vocab: 32_000,
                max_position: 4096,
                theta: 10_000.0,
                llama3_scaling: false,
                tied: false,
                class: "LlamaForCausalLM",
                experts: None,
            },
            "mixtral-8x7b" => mixtral(32),
            "mixtral-8x7b-2l" => mixtral(2),
            "llama3-8b" => llama3(32, 4096, 32, 14_336),
            "llama3-70b" => llama3(80, 8192, 64, 28_672),
            "llama3.1-405b" => llama3(126, 16_384, 128, 53_248),
            _ => return None,
        };
        let name = SHAPE_NAMES.into_iter().find(|n| *n == name)?;
        let head_dim = d.hidden / d.heads;
        Some(Shape {
            name,
            architecture: Architecture {
                family: if d.experts.is_some() {
                    "mixtral"
                } else {
                    "llama"
                }
                .into(),
                source_class: d.class.into(),
                hidden_size: d.hidden,
                num_layers: d.layers,
                num_attention_heads: d.heads,
                num_kv_heads: d.kv_heads,
                head_dim,
                intermediate_size: d.intermediate,
                vocab_size: d.vocab,
                max_position_embeddings: d.max_position,
                norm_eps: 1e-5,
                rope: Rope {
                    theta: d.theta,
                    rotary_dim: head_dim,
                    scaling: d.llama3_scaling.then_some(RopeScaling::Llama3 {
                        factor: 8.0,
                        low_freq_factor: 1.0,
                        high_freq_factor: 4.0,
                        original_max_position_embeddings: 8192,
                    }),
                },
                activation: Activation::Silu,
                tie_word_embeddings: d.tied,
                attention_bias: false,
                attention_out_bias: false,
                mlp_bias: false,
                qk_norm: false,
                post_norms: false,
                sliding_window: None,
                sliding_window_layers: None,
                moe: d.experts.map(|(num_experts, top_k)| Moe {
                    num_experts,
                    top_k,
                    expert_intermediate_size: d.intermediate,
                    normalize_top_k: true,
                    shared_expert_intermediate_size: None,
                }),
                attn_logit_softcap: None,
                final_logit_softcap: None,
                attention_scale: None,
                embedding_multiplier: None,
                max_context: None,
                alibi: false,
            },
            quantization: Quantization {
                weights: DType::Nf4,
                embeddings: DType::Int8,
                head: DType::Int8,
                block_size: Some(DEFAULT_BLOCK),
                compression: None,
            },
        })
    }

    /// The container's stages for this shape (see [`stage_layouts`]).
    pub fn stages(&self) -> Vec<StageLayout> {
        stage_layouts(&self.architecture, &self.quantization)
    }
}

/// One stage file of a container, before it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageLayout {
    /// File name inside the container.
    pub file: String,
    /// What the stage holds.
    pub kind: StageKind,
    /// Layer index for layer stages.
    pub layer: Option<u32>,
    /// The tensor table, in file order.
    pub tensors: Vec<TensorSpec>,
}

impl StageLayout {
    /// Exact size of the stage file, from the same layout the writer uses.
    pub fn file_size(&self) -> Result<u64> {
        stage_file_size(self.kind, self.layer, &self.tensors, Path::new(&self.file))
    }

    /// The spec of tensor `name`, if the stage holds it.
    pub fn tensor(&self, name: &str) -> Option<&TensorSpec> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// The stages of a container for a dense decoder `arch` encoded as `q`:
/// the embeddings, each layer, then the final norm and (untied) head, with
/// the tensor tables of SPEC.md §6 (norms and biases in f32, linear weights
/// in `q.weights`, the embedding matrix in `q.embeddings`, an untied head in
/// `q.head`). An MoE layer (`arch.moe`) has, after `mlp_norm`, the f32
/// router, the shared expert (if any; its scalar gate f32) and then every
/// routed expert's `gate`, `up`, `down`, expert by expert, in place of `mlp.*`.
pub fn stage_layouts(arch: &Architecture, q: &Quantization) -> Vec<StageLayout> {
    let spec = |name: &str, dtype: DType, shape: Vec<u64>| TensorSpec {
        name: name.to_string(),
        dtype,
        shape,
        block_size: if dtype.is_quantized() {
            q.block_size
        } else {
            None
        },
        compression: None,
    };
    let h = arch.hidden_size;
    let attn_out = arch.num_attention_heads * arch.head_dim;
    let kv_out = arch.num_kv_heads * arch.head_dim;
    let inter = arch.intermediate_size;
    let (lin, f32_) = (q.weights, DType::F32);
    let mut stages = Vec::with_capacity(arch.num_layers as usize + 2);
    stages.push(StageLayout {
        file: names::EMBED_FILE.into(),
        kind: StageKind::Embed,
        layer: None,
        tensors: vec![spec(
            names::EMBED_TOKENS,
            q.embeddings,
            vec![arch.vocab_size, h],
        )],
    });
    for i in 0..arch.num_layers {
        let mut t = vec![
            spec(names::ATTN_NORM, f32_, vec![h]),
            spec(names::ATTN_Q, lin, vec![attn_out, h]),
            spec(names::ATTN_K, lin, vec![kv_out, h]),
            spec(names::ATTN_V, lin, vec![kv_out, h]),
            spec(names::ATTN_O, lin, vec![h, attn_out]),
        ];
        if arch.attention_bias {
            t.push(spec(names::ATTN_Q_BIAS, f32_, vec![attn_out]));
            t.push(spec(names::ATTN_K_BIAS, f32_, vec![kv_out]));
            t.push(spec(names::ATTN_V_BIAS, f32_, vec![kv_out]));
        }
        if arch.attention_out_bias {
            t.push(spec(names::ATTN_O_BIAS, f32_, vec![h]));
        }
        if arch.qk_norm {
            t.push(spec(names::ATTN_Q_NORM, f32_, vec![arch.head_dim]));
            t.push(spec(names::ATTN_K_NORM, f32_, vec![arch.head_dim]));
        }
        if arch.post_norms {
            t.push(spec(names::ATTN_POST_NORM, f32_, vec![h]));
        }
        t.push(spec(names::MLP_NORM, f32_, vec![h]));
        if arch.moe.is_none() {
            t.push(spec(names::MLP_GATE, lin, vec![inter, h]));
            t.push(spec(names::MLP_UP, lin, vec![inter, h]));
            t.push(spec(names::MLP_DOWN, lin, vec![h, inter]));
        }
        if arch.mlp_bias {
            t.push(spec("mlp.gate.bias", f32_, vec![inter]));
            t.push(spec("mlp.up.bias", f32_, vec![inter]));
            t.push(spec("mlp.down.bias", f32_, vec![h]));
        }
        if arch.post_norms {
            t.push(spec(names::MLP_POST_NORM, f32_, vec![h]));
        }
        if let Some(m) = &arch.moe {
            let w = m.expert_intermediate_size;
            t.push(spec(names::MOE_ROUTER, f32_, vec![m.num_experts, h]));
            if let Some(sw) = m.shared_expert_intermediate_size {
                t.push(spec(names::MOE_SHARED_GATE, lin, vec![sw, h]));
                t.push(spec(names::MOE_SHARED_UP, lin, vec![sw, h]));
                t.push(spec(names::MOE_SHARED_DOWN, lin, vec![h, sw]));
                t.push(spec(names::MOE_SHARED_GATE_SCALAR, f32_, vec![1, h]));
            }
            for e in 0..m.num_experts {
                t.push(spec(&names::moe_expert(e, "gate"), lin, vec![w, h]));
                t.push(spec(&names::moe_expert(e, "up"), lin, vec![w, h]));
                t.push(spec(&names::moe_expert(e, "down"), lin, vec![h, w]));
            }
        }
        stages.push(StageLayout {
            file: names::layer_file(i),
            kind: StageKind::Layer,
            layer: Some(i as u32),
            tensors: t,
        });
    }
    let mut head = vec![spec(names::FINAL_NORM, f32_, vec![h])];
    if !arch.tie_word_embeddings {
        head.push(spec(names::HEAD, q.head, vec![arch.vocab_size, h]));
    }
    stages.push(StageLayout {
        file: names::HEAD_FILE.into(),
        kind: StageKind::Head,
        layer: None,
        tensors: head,
    });
    stages
}

/// Bytes of the tensor the output head multiplies with: `head` in the head
/// stage, or `embed.tokens` when the embeddings are tied. `None` when the
/// stages hold neither.
pub fn head_weight_bytes(arch: &Architecture, stages: &[StageLayout]) -> Option<u64> {
    let (kind, name) = if arch.tie_word_embeddings {
        (StageKind::Embed, names::EMBED_TOKENS)
    } else {
        (StageKind::Head, names::HEAD)
    };
    let t = stages.iter().find(|s| s.kind == kind)?.tensor(name)?;
    t.dtype.encoded_len(&t.shape, t.block_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_resolves_and_validates() {
        for name in SHAPE_NAMES {
            let s = Shape::named(name).unwrap();
            assert_eq!(s.name, name);
            let stages = s.stages();
            assert_eq!(stages.len() as u64, s.architecture.num_layers + 2);
            for st in &stages {
                let size = st.file_size().unwrap();
                assert_eq!(size % 4096, 0);
            }
            assert!(head_weight_bytes(&s.architecture, &stages).is_some());
        }
        assert!(Shape::named("gpt-5").is_none());
    }

    #[test]
    fn llama3_70b_sizes() {
        let s = Shape::named("llama3-70b").unwrap();
        let stages = s.stages();
        // q, o: 8192² ; k, v: 1024 × 8192 ; gate, up, down: 28672 × 8192; 34 bytes per 64 weights.
        let weights: u64 = 2 * 8192 * 8192 + 2 * 1024 * 8192 + 3 * 28672 * 8192;
        let layer = stages[1].file_size().unwrap();
        assert!(layer >= weights / 64 * 34 && layer < weights / 64 * 34 + 16 * 4096 + 65536);
        // An untied int8 head: 66 bytes per 64 weights.
        assert_eq!(
            head_weight_bytes(&s.architecture, &stages),
            Some(128_256 * 8192 / 64 * 66)
        );
    }

    #[test]
    fn optional_tensors_follow_the_architecture() {
        let mut a = Shape::named("tiny").unwrap().architecture;
        a.attention_bias = true;
        a.qk_norm = true;
        a.mlp_bias = true;
        a.tie_word_embeddings = false;
        let q = Shape::named("tiny").unwrap().quantization;
        let plain = stage_layouts(&a, &q);
        assert!(plain[1].tensor(names::ATTN_POST_NORM).is_none());
        a.post_norms = true;
        let stages = stage_layouts(&a, &q);
        let names: Vec<&str> = stages[1].tensors.iter().map(|t| t.name.as_str()).collect();
        assert!(names.contains(&names::ATTN_Q_BIAS) && names.contains(&names::ATTN_K_NORM));
        assert!(names.contains(&"mlp.down.bias"));
        assert!(names.contains(&names::ATTN_POST_NORM) && names.contains(&names::MLP_POST_NORM));
        assert!(stages.last().unwrap().tensor(names::HEAD).is_some());
        assert_eq!(stages[1].tensor(names::ATTN_NORM).unwrap().block_size, None);
        assert_eq!(
            stages[1].tensor(names::ATTN_Q).unwrap().block_size,
            Some(64)
        );
    }
}
