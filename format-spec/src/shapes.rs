//! Named model shapes (the dimensions of real Llama-family models) with the
//! encodings `prep --quant nf4` gives them. Their stage layout (tensor tables
//! and exact file sizes) comes from [`crate::layout`], re-exported here. Used
//! to write random-weight containers of a real shape and to plan memory for a
//! model without its files.

use crate::dtype::{DType, DEFAULT_BLOCK};
use crate::manifest::{Activation, Architecture, Moe, Quantization, Rope, RopeScaling};

pub use crate::layout::{head_weight_bytes, stage_layouts, StageLayout};

/// The names [`Shape::named`] knows, smallest first.
pub const SHAPE_NAMES: [&str; 8] = [
    "tiny",
    "llama3.2-1b",
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
    /// - `llama3.2-1b`: Llama 3.2 1B (a draft for the Llama 3 family): 16
    ///   layers, hidden 2048, 32 heads (8 KV), intermediate 8192, vocabulary
    ///   128256, tied head.
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
            "llama3.2-1b" => Dims {
                tied: true,
                ..llama3(16, 2048, 32, 8192)
            },
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
                sliding_rope: None,
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
}
