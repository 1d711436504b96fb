//! What the container will hold: the stages in order, each with its tensor
//! table (normalized name, encoding, shape) and the source tensor each entry
//! comes from; and how every source tensor name is classified.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use strata_format::compress::Codec;
use strata_format::dtype::DType;
use strata_format::header::StageKind;
use strata_format::layout::{self, ExpertPart, Role};
use strata_format::manifest::{Architecture, Quantization};
use strata_format::writer::{stage_file_size, TensorSpec};

use crate::error::Result;

/// The encodings chosen on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantPolicy {
    /// Encoding of the decoder layers' linear weights (`--quant`).
    pub weights: DType,
    /// Block size of quantized encodings (`--block-size`).
    pub block_size: u32,
    /// `--compress`: zstd for the tensors where it saves enough.
    pub compress: Option<Codec>,
    /// No `--quant` given: a GGUF source's encodings are kept as they are
    /// (other sources take `weights`).
    pub keep_source: bool,
}

impl QuantPolicy {
    /// Encoding of the embedding matrix and of an untied head: int8 when the
    /// weights are nf4 (4 bits there costs too much accuracy), else the same
    /// as the weights.
    pub fn embeddings(&self) -> DType {
        match self.weights {
            DType::Nf4 => DType::Int8,
            other => other,
        }
    }

    /// The manifest's `quantization` object.
    pub fn manifest(&self) -> Quantization {
        let any_quantized = self.weights.is_quantized() || self.embeddings().is_quantized();
        Quantization {
            weights: self.weights,
            embeddings: self.embeddings(),
            head: self.embeddings(),
            block_size: any_quantized.then_some(self.block_size),
            compression: self.compress.map(|c| {
                format!(
                    "{}:{}",
                    if c.bytesplit { "zstd" } else { "zstd-nosplit" },
                    c.level
                )
            }),
        }
    }
}

/// How a stored tensor's values derive from its source tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derive {
    /// The source tensor as it is.
    Whole,
    /// Rows of a fused source tensor of `source_rows` rows, taken in blocks:
    /// stored row `r` is source row `first + (r / block) × stride + r % block`.
    /// Phi-3's `qkv_proj` and `gate_up_proj` and Baichuan's `W_pack` are one
    /// block (`block` = the stored rows); InternLM2's `wqkv` interleaves q, k
    /// and v per KV group, so each projection is one block per group.
    Rows {
        /// First source row.
        first: u64,
        /// Rows of the whole source tensor.
        source_rows: u64,
        /// Consecutive source rows per block.
        block: u64,
        /// Source rows from the start of one block to the next.
        stride: u64,
    },
    /// `1 + w` (Gemma's RMSNorm weights, stored so that the norm is the
    /// plain `x / rms × w'` of SPEC.md §5.2).
    PlusOne,
    /// Rows `first..` of a fused source tensor of `source_rows` rows, by
    /// heads of `head_dim` rows whose first `rotary_dim` rows rotate in
    /// interleaved pairs (ChatGLM): stored as rotate-half order, so stored
    /// row `j < rotary_dim / 2` of a head is its source row `2j` and row
    /// `rotary_dim / 2 + j` is `2j + 1`; the other rows keep their place.
    /// Permuting q and k alike leaves every attention score unchanged.
    PairsToHalves {
        /// First source row.
        first: u64,
        /// Rows of the whole source tensor.
        source_rows: u64,
        /// Rows per head.
        head_dim: u64,
        /// Rotating rows at the start of each head.
        rotary_dim: u64,
    },
    /// Each row divided by its L2 norm (Baichuan 2's `NormHead`, which
    /// transformers normalizes at inference as `F.normalize(w)`).
    UnitRows,
}

impl Derive {
    /// Rows of the fused source tensor, for the derivations that split one.
    pub fn source_rows(self) -> Option<u64> {
        match self {
            Derive::Rows { source_rows, .. } | Derive::PairsToHalves { source_rows, .. } => {
                Some(source_rows)
            }
            Derive::Whole | Derive::PlusOne | Derive::UnitRows => None,
        }
    }

    /// Stored rows `first..first + rows` of a fused source tensor of
    /// `source_rows` rows, as one block.
    pub fn rows(first: u64, rows: u64, source_rows: u64) -> Derive {
        Derive::Rows {
            first,
            source_rows,
            block: rows,
            stride: source_rows,
        }
    }
}

/// One tensor of a stage and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTensor {
    /// The tensor as it will be stored.
    pub spec: TensorSpec,
    /// Its Hugging Face name in the checkpoint.
    pub source: String,
    /// How the stored values derive from the source tensor.
    pub derive: Derive,
}

impl PlannedTensor {
    /// The shape the source tensor must have.
    pub fn source_shape(&self) -> Vec<u64> {
        let mut shape = self.spec.shape.clone();
        if let (Some(source_rows), Some(rows)) = (self.derive.source_rows(), shape.first_mut()) {
            *rows = source_rows;
        }
        shape
    }

    /// The source row of stored row `r`, and how many stored rows from `r`
    /// on are consecutive source rows.
    pub fn source_rows_at(&self, r: u64) -> (u64, u64) {
        let rows = self.spec.shape.first().copied().unwrap_or(1);
        match self.derive {
            Derive::Rows {
                first,
                block,
                stride,
                ..
            } if block > 0 => (first + r / block * stride + r % block, block - r % block),
            Derive::PairsToHalves {
                first,
                head_dim,
                rotary_dim,
                ..
            } if head_dim > 0 => {
                let (head, j) = (r / head_dim, r % head_dim);
                let half = rotary_dim / 2;
                let base = first + head * head_dim;
                if j < half {
                    (base + 2 * j, 1)
                } else if j < rotary_dim {
                    (base + 2 * (j - half) + 1, 1)
                } else {
                    (base + j, head_dim - j)
                }
            }
            _ => (r, rows.saturating_sub(r)),
        }
    }

    /// Bytes this tensor reads from a source tensor of `source_len` bytes.
    pub fn source_bytes(&self, source_len: u64) -> u64 {
        match (self.derive, self.spec.shape.first()) {
            (
                Derive::Rows { source_rows, .. } | Derive::PairsToHalves { source_rows, .. },
                Some(&rows),
            ) if source_rows > 0 => source_len / source_rows * rows,
            _ => source_len,
        }
    }
}

/// How a family names and packs its tensors in a Hugging Face checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Llama's names, one tensor per projection.
    Llama,
    /// Gemma 2 and 3: `(1 + w)` norms (Gemma 3's q/k norms too) and four
    /// norms per layer
    /// (`input_layernorm`, `post_attention_layernorm`,
    /// `pre_feedforward_layernorm`, `post_feedforward_layernorm`).
    Gemma2,
    /// Phi-3: fused `self_attn.qkv_proj` and `mlp.gate_up_proj`.
    Phi3,
    /// InternLM2 (remote code): `tok_embeddings`, `attention.wqkv` with q, k
    /// and v interleaved per KV group, `attention.wo`, `feed_forward.w1/w3/w2`
    /// (gate, up, down), `attention_norm`, `ffn_norm`, `output`.
    InternLm2,
    /// Baichuan 2 (remote code): Llama's names but `self_attn.W_pack` (q, k,
    /// v rows in turn) and a `NormHead` whose rows are unit-normalized.
    Baichuan,
    /// Qwen (v1, remote code): `transformer.h.N.`, `ln_1`/`ln_2`, `attn.c_attn`
    /// (q, k, v rows and biases in turn), `attn.c_proj`, `mlp.w2`/`mlp.w1`/
    /// `mlp.c_proj` (gate, up, down), `transformer.wte`/`transformer.ln_f`.
    Qwen,
    /// ChatGLM 3 / GLM-4 (remote code): `transformer.encoder.layers.N.`,
    /// `self_attention.query_key_value` (q, k, v rows and biases; q and k
    /// rotate in interleaved pairs), `self_attention.dense`,
    /// `mlp.dense_h_to_4h` (gate rows, then up), `mlp.dense_4h_to_h`.
    ChatGlm,
    /// Mixtral: experts under `block_sparse_moe` named `w1`, `w3`, `w2`.
    Mixtral,
}

impl Layout {
    fn of(arch: &Architecture) -> Layout {
        match arch.source_class.as_str() {
            "Gemma2ForCausalLM" | "Gemma3ForCausalLM" | "Gemma3ForConditionalGeneration" => {
                Layout::Gemma2
            }
            "Phi3ForCausalLM" => Layout::Phi3,
            "InternLM2ForCausalLM" => Layout::InternLm2,
            "BaichuanForCausalLM" => Layout::Baichuan,
            "QWenLMHeadModel" => Layout::Qwen,
            "ChatGLMModel" | "ChatGLMForConditionalGeneration" => Layout::ChatGlm,
            "MixtralForCausalLM" => Layout::Mixtral,
            _ => Layout::Llama,
        }
    }

    /// Source names of the embeddings, the head and, within a layer, the
    /// attention norm, output projection, feed-forward norm and the gate,
    /// up and down projections.
    fn names(self) -> LayoutNames {
        match self {
            Layout::Qwen => LayoutNames {
                layer: "transformer.h.",
                embed: "transformer.wte.weight",
                final_norm: "transformer.ln_f.weight",
                head: "lm_head.weight",
                attn_norm: "ln_1.weight",
                attn_o: "attn.c_proj.weight",
                mlp_norm: "ln_2.weight",
                gate_up: GateUp::Separate {
                    gate: "mlp.w2.weight",
                    up: "mlp.w1.weight",
                },
                down: "mlp.c_proj.weight",
            },
            Layout::ChatGlm => LayoutNames {
                layer: "transformer.encoder.layers.",
                embed: "transformer.embedding.word_embeddings.weight",
                final_norm: "transformer.encoder.final_layernorm.weight",
                head: "transformer.output_layer.weight",
                attn_norm: "input_layernorm.weight",
                attn_o: "self_attention.dense.weight",
                mlp_norm: "post_attention_layernorm.weight",
                gate_up: GateUp::Fused("mlp.dense_h_to_4h.weight"),
                down: "mlp.dense_4h_to_h.weight",
            },
            Layout::InternLm2 => LayoutNames {
                layer: "model.layers.",
                final_norm: "model.norm.weight",
                embed: "model.tok_embeddings.weight",
                head: "output.weight",
                attn_norm: "attention_norm.weight",
                attn_o: "attention.wo.weight",
                mlp_norm: "ffn_norm.weight",
                gate_up: GateUp::Separate {
                    gate: "feed_forward.w1.weight",
                    up: "feed_forward.w3.weight",
                },
                down: "feed_forward.w2.weight",
            },
            Layout::Phi3 => LayoutNames {
                gate_up: GateUp::Fused("mlp.gate_up_proj.weight"),
                ..Layout::Llama.names()
            },
            Layout::Llama | Layout::Gemma2 | Layout::Baichuan | Layout::Mixtral => LayoutNames {
                layer: "model.layers.",
                final_norm: "model.norm.weight",
                embed: "model.embed_tokens.weight",
                head: "lm_head.weight",
                attn_norm: "input_layernorm.weight",
                attn_o: "self_attn.o_proj.weight",
                mlp_norm: "post_attention_layernorm.weight",
                gate_up: GateUp::Separate {
                    gate: "mlp.gate_proj.weight",
                    up: "mlp.up_proj.weight",
                },
                down: "mlp.down_proj.weight",
            },
        }
    }
}

/// Source tensor names that differ between layouts (see [`Layout::names`]).
struct LayoutNames {
    /// Layer `i`'s tensors are named `{layer}{i}.…`.
    layer: &'static str,
    final_norm: &'static str,
    embed: &'static str,
    head: &'static str,
    attn_norm: &'static str,
    attn_o: &'static str,
    mlp_norm: &'static str,
    gate_up: GateUp,
    down: &'static str,
}

/// Where the feed-forward gate and up projections are.
enum GateUp {
    /// One tensor each.
    Separate {
        gate: &'static str,
        up: &'static str,
    },
    /// One tensor: the gate's rows, then the up projection's.
    Fused(&'static str),
}

/// One stage file of the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// File name inside the container.
    pub file: String,
    /// What the stage holds.
    pub kind: StageKind,
    /// Layer index for layer stages.
    pub layer: Option<u32>,
    /// The tensor table, in file order.
    pub tensors: Vec<PlannedTensor>,
}

impl Stage {
    /// The tensor specs, in file order.
    pub fn specs(&self) -> Vec<TensorSpec> {
        self.tensors.iter().map(|t| t.spec.clone()).collect()
    }

    /// Exact size of the stage file, from the same layout the writer uses.
    pub fn file_size(&self) -> Result<u64> {
        Ok(stage_file_size(
            self.kind,
            self.layer,
            &self.specs(),
            Path::new(&self.file),
        )?)
    }

    /// Human name of the stage (`layer 3`, `embed`, `head`).
    pub fn label(&self) -> String {
        match (self.kind, self.layer) {
            (StageKind::Layer, Some(i)) => format!("layer {i}"),
            (StageKind::Embed, _) => "embed".into(),
            _ => "head".into(),
        }
    }
}

/// The whole container's stages: embed, layers in order, head. The tensor
/// tables are [`strata_format::layout`]'s; this adds where each tensor comes
/// from in the family's checkpoint.
pub fn plan(arch: &Architecture, q: &QuantPolicy) -> Vec<Stage> {
    let sources = Sources::new(arch);
    let quant = q.manifest();
    layout::stage_tables(arch)
        .into_iter()
        .map(|table| {
            let prefix = table.layer.map(|i| format!("{}{i}.", sources.names.layer));
            let tensors = table
                .tensors
                .iter()
                .map(|slot| {
                    let (src, derive) = sources.of(slot.role);
                    PlannedTensor {
                        spec: slot.spec(&quant),
                        source: format!("{}{src}", prefix.as_deref().unwrap_or("")),
                        derive,
                    }
                })
                .collect();
            Stage {
                file: table.file,
                kind: table.kind,
                layer: table.layer,
                tensors,
            }
        })
        .collect()
}

/// Where each tensor of SPEC.md §6 comes from in one family's checkpoint:
/// its source name (within the layer for layer tensors) and derivation.
struct Sources<'a> {
    arch: &'a Architecture,
    layout: Layout,
    names: LayoutNames,
    /// q, k and v: (weight source, bias source, derivation) each.
    qkv: [(&'static str, &'static str, Derive); 3],
    /// Derivation of every norm weight.
    norm: Derive,
}

impl<'a> Sources<'a> {
    fn new(arch: &'a Architecture) -> Sources<'a> {
        let layout = Layout::of(arch);
        let attn_out = arch.num_attention_heads * arch.head_dim;
        let kv_out = arch.num_kv_heads * arch.head_dim;
        let whole = Derive::Whole;
        let source_rows = attn_out + 2 * kv_out;
        let qkv: [(&str, &str, Derive); 3] = match layout {
            Layout::Phi3 | Layout::Baichuan | Layout::Qwen | Layout::ChatGlm => {
                let (w, b) = match layout {
                    Layout::Phi3 => ("self_attn.qkv_proj.weight", "self_attn.qkv_proj.bias"),
                    Layout::Baichuan => ("self_attn.W_pack.weight", "self_attn.W_pack.bias"),
                    Layout::Qwen => ("attn.c_attn.weight", "attn.c_attn.bias"),
                    _ => (
                        "self_attention.query_key_value.weight",
                        "self_attention.query_key_value.bias",
                    ),
                };
                let rows = |first, rows| {
                    if layout == Layout::ChatGlm && first < attn_out + kv_out {
                        // q and k rotate in interleaved pairs: stored as halves.
                        Derive::PairsToHalves {
                            first,
                            source_rows,
                            head_dim: arch.head_dim,
                            rotary_dim: arch.rope.rotary_dim,
                        }
                    } else {
                        Derive::rows(first, rows, source_rows)
                    }
                };
                [
                    (w, b, rows(0, attn_out)),
                    (w, b, rows(attn_out, kv_out)),
                    (w, b, rows(attn_out + kv_out, kv_out)),
                ]
            }
            Layout::InternLm2 => {
                // Per KV group: its query heads, then its key head, then its
                // value head (`b q (h gs d) -> b q h gs d` in modeling_internlm2).
                let d = arch.head_dim;
                let q_rows = attn_out / arch.num_kv_heads;
                let stride = q_rows + 2 * d;
                let group = |first, block| Derive::Rows {
                    first,
                    source_rows,
                    block,
                    stride,
                };
                let (w, b) = ("attention.wqkv.weight", "attention.wqkv.bias");
                [
                    (w, b, group(0, q_rows)),
                    (w, b, group(q_rows, d)),
                    (w, b, group(q_rows + d, d)),
                ]
            }
            Layout::Llama | Layout::Gemma2 | Layout::Mixtral => [
                ("self_attn.q_proj.weight", "self_attn.q_proj.bias", whole),
                ("self_attn.k_proj.weight", "self_attn.k_proj.bias", whole),
                ("self_attn.v_proj.weight", "self_attn.v_proj.bias", whole),
            ],
        };
        Sources {
            arch,
            layout,
            names: layout.names(),
            qkv,
            norm: if layout == Layout::Gemma2 {
                Derive::PlusOne
            } else {
                Derive::Whole
            },
        }
    }

    /// The source name and derivation of the tensor `role`.
    fn of(&self, role: Role) -> (Cow<'static, str>, Derive) {
        let (src, norm, whole) = (&self.names, self.norm, Derive::Whole);
        let inter = self.arch.intermediate_size;
        let [(qw, qb, qd), (kw, kb, kd), (vw, vb, vd)] = self.qkv;
        // MoE blocks: Mixtral's block_sparse_moe.gate and experts.E.{w1
        // (gate), w3 (up), w2 (down)}; Qwen2/3-MoE's mlp.gate and
        // mlp.experts.E.{gate,up,down}_proj.
        let moe_block = if self.layout == Layout::Mixtral {
            "block_sparse_moe"
        } else {
            "mlp"
        };
        match role {
            Role::EmbedTokens => (src.embed.into(), whole),
            Role::FinalNorm => (src.final_norm.into(), norm),
            Role::Head => (
                src.head.into(),
                if self.layout == Layout::Baichuan {
                    Derive::UnitRows
                } else {
                    whole
                },
            ),
            Role::AttnNorm => (src.attn_norm.into(), norm),
            Role::AttnQ => (qw.into(), qd),
            Role::AttnK => (kw.into(), kd),
            Role::AttnV => (vw.into(), vd),
            Role::AttnO => (src.attn_o.into(), whole),
            Role::AttnQBias => (qb.into(), qd),
            Role::AttnKBias => (kb.into(), kd),
            Role::AttnVBias => (vb.into(), vd),
            Role::AttnOBias => ("self_attn.o_proj.bias".into(), whole),
            Role::AttnQNorm => ("self_attn.q_norm.weight".into(), norm),
            Role::AttnKNorm => ("self_attn.k_norm.weight".into(), norm),
            // Gemma 2's `post_attention_layernorm` normalizes the attention
            // output; Llama's is the norm before the feed-forward block.
            Role::AttnPostNorm => ("post_attention_layernorm.weight".into(), norm),
            Role::MlpNorm if self.arch.post_norms => {
                ("pre_feedforward_layernorm.weight".into(), norm)
            }
            Role::MlpNorm => (src.mlp_norm.into(), norm),
            Role::MlpGate | Role::MlpUp => match src.gate_up {
                GateUp::Fused(gate_up) => {
                    let first = if role == Role::MlpGate { 0 } else { inter };
                    (gate_up.into(), Derive::rows(first, inter, 2 * inter))
                }
                GateUp::Separate { gate, up } => {
                    (if role == Role::MlpGate { gate } else { up }.into(), whole)
                }
            },
            Role::MlpDown => (src.down.into(), whole),
            Role::MlpGateBias => ("mlp.gate_proj.bias".into(), whole),
            Role::MlpUpBias => ("mlp.up_proj.bias".into(), whole),
            Role::MlpDownBias => ("mlp.down_proj.bias".into(), whole),
            Role::MlpPostNorm => ("post_feedforward_layernorm.weight".into(), norm),
            Role::MoeRouter => (format!("{moe_block}.gate.weight").into(), whole),
            Role::MoeSharedGate => ("mlp.shared_expert.gate_proj.weight".into(), whole),
            Role::MoeSharedUp => ("mlp.shared_expert.up_proj.weight".into(), whole),
            Role::MoeSharedDown => ("mlp.shared_expert.down_proj.weight".into(), whole),
            Role::MoeSharedGateScalar => ("mlp.shared_expert_gate.weight".into(), whole),
            Role::MoeExpert { expert, part } => {
                let p = match (self.layout == Layout::Mixtral, part) {
                    (true, ExpertPart::Gate) => "w1",
                    (true, ExpertPart::Up) => "w3",
                    (true, ExpertPart::Down) => "w2",
                    (false, ExpertPart::Gate) => "gate_proj",
                    (false, ExpertPart::Up) => "up_proj",
                    (false, ExpertPart::Down) => "down_proj",
                };
                (
                    format!("{moe_block}.experts.{expert}.{p}.weight").into(),
                    whole,
                )
            }
        }
    }
}

/// The name a text-only checkpoint gives a multimodal Gemma 3 checkpoint's
/// tensor (`model.…`, `lm_head.…`), or `None` for the vision tower and the
/// projector. The Hub's checkpoints name the text model
/// `language_model.model.…`; transformers 5 saves it as
/// `model.language_model.…`.
fn multimodal_text_name(name: &str) -> Option<String> {
    const VISION: [&str; 4] = [
        "vision_tower.",
        "multi_modal_projector.",
        "model.vision_tower.",
        "model.multi_modal_projector.",
    ];
    if VISION.iter().any(|p| name.starts_with(p)) {
        return None;
    }
    for (from, to) in [
        ("language_model.model.", "model."),
        ("model.language_model.", "model."),
        ("language_model.lm_head.", "lm_head."),
    ] {
        if let Some(rest) = name.strip_prefix(from) {
            return Some(format!("{to}{rest}"));
        }
    }
    Some(name.to_string())
}

/// How a source tensor name relates to the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// Converted into each `(stage, tensor)` listed (several for a fused
    /// projection that is split).
    Used(Vec<(usize, usize)>),
    /// Deliberately not converted (the reason is shown at debug level).
    Ignored(&'static str),
    /// Not described by the architecture: converting would silently drop it.
    Unexpected(String),
}

/// Classifies source tensor names against a plan.
pub struct Classifier {
    used: HashMap<String, Vec<(usize, usize)>>,
    /// A multimodal checkpoint whose text model alone is converted: its text
    /// tensors' names are read as the text-only class names them.
    multimodal: bool,
    tied: bool,
    head: &'static str,
    layer_prefix: &'static str,
    layers: u64,
}

impl Classifier {
    /// Indexes the source names of `stages`.
    pub fn new(stages: &[Stage], arch: &Architecture) -> Classifier {
        let mut used: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
        for (s, stage) in stages.iter().enumerate() {
            for (t, pt) in stage.tensors.iter().enumerate() {
                used.entry(pt.source.clone()).or_default().push((s, t));
            }
        }
        Classifier {
            used,
            multimodal: arch.source_class == "Gemma3ForConditionalGeneration",
            tied: arch.tie_word_embeddings,
            head: Layout::of(arch).names().head,
            layer_prefix: Layout::of(arch).names().layer,
            layers: arch.num_layers,
        }
    }

    /// Classifies one source tensor name.
    pub fn classify(&self, name: &str) -> Class {
        let text_name;
        let name = if self.multimodal {
            match multimodal_text_name(name) {
                Some(n) => {
                    text_name = n;
                    text_name.as_str()
                }
                None => {
                    return Class::Ignored(
                        "the vision tower and projector of a multimodal checkpoint (only its text model is converted)",
                    )
                }
            }
        } else {
            name
        };
        if let Some(targets) = self.used.get(name) {
            return Class::Used(targets.clone());
        }
        if name.ends_with("rotary_emb.inv_freq") || name.ends_with("rotary_pos_emb.inv_freq") {
            return Class::Ignored("rotary inverse frequencies are recomputed from the config");
        }
        if name == self.head && self.tied {
            return Class::Ignored("the config ties the head to the embeddings");
        }
        if let Some(rest) = name.strip_prefix(self.layer_prefix) {
            let idx = rest.split('.').next().and_then(|i| i.parse::<u64>().ok());
            return Class::Unexpected(match idx {
                Some(i) if i >= self.layers => format!(
                    "layer {i} is beyond the {} layers of config.json",
                    self.layers
                ),
                _ => "the architecture in config.json has no such parameter".into(),
            });
        }
        Class::Unexpected("the architecture in config.json has no such parameter".into())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn multimodal_gemma3_names_read_as_the_text_model() {
        for (src, want) in [
            (
                "language_model.model.layers.3.mlp.up_proj.weight",
                Some("model.layers.3.mlp.up_proj.weight"),
            ),
            (
                "model.language_model.embed_tokens.weight",
                Some("model.embed_tokens.weight"),
            ),
            ("language_model.lm_head.weight", Some("lm_head.weight")),
            ("lm_head.weight", Some("lm_head.weight")),
            ("vision_tower.vision_model.post_layernorm.weight", None),
            (
                "model.multi_modal_projector.mm_input_projection_weight",
                None,
            ),
        ] {
            assert_eq!(multimodal_text_name(src).as_deref(), want, "{src}");
        }
    }
    use strata_format::manifest::{Activation, Rope};

    pub(crate) fn tiny_arch() -> Architecture {
        Architecture {
            family: "llama".into(),
            source_class: "LlamaForCausalLM".into(),
            hidden_size: 80,
            num_layers: 2,
            num_attention_heads: 5,
            num_kv_heads: 1,
            head_dim: 16,
            intermediate_size: 128,
            vocab_size: 160,
            max_position_embeddings: 256,
            norm_eps: 1e-5,
            rope: Rope {
                theta: 1e4,
                rotary_dim: 16,
                scaling: None,
            },
            activation: Activation::Silu,
            tie_word_embeddings: false,
            attention_bias: false,
            attention_out_bias: false,
            mlp_bias: false,
            qk_norm: false,
            post_norms: false,
            sliding_window: None,
            sliding_window_layers: None,
            moe: None,
            attn_logit_softcap: None,
            final_logit_softcap: None,
            attention_scale: None,
            embedding_multiplier: None,
            max_context: None,
            alibi: false,
            sliding_rope: None,
        }
    }

    const NF4: QuantPolicy = QuantPolicy {
        weights: DType::Nf4,
        block_size: 64,
        compress: None,
        keep_source: false,
    };

    #[test]
    fn layer_order_and_dtypes() {
        let mut a = tiny_arch();
        a.attention_bias = true;
        a.attention_out_bias = true;
        a.qk_norm = true;
        a.mlp_bias = true;
        let s = plan(&a, &NF4);
        assert_eq!(s.len(), 4);
        let names: Vec<&str> = s[1].tensors.iter().map(|t| t.spec.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "attn_norm",
                "attn.q",
                "attn.k",
                "attn.v",
                "attn.o",
                "attn.q.bias",
                "attn.k.bias",
                "attn.v.bias",
                "attn.o.bias",
                "attn.q_norm",
                "attn.k_norm",
                "mlp_norm",
                "mlp.gate",
                "mlp.up",
                "mlp.down",
                "mlp.gate.bias",
                "mlp.up.bias",
                "mlp.down.bias"
            ]
        );
        assert_eq!(s[1].file, "layer.000.strata");
        assert_eq!(s[1].tensors[1].spec.dtype, DType::Nf4);
        assert_eq!(s[1].tensors[1].spec.block_size, Some(64));
        assert_eq!(s[1].tensors[0].spec.dtype, DType::F32);
        assert_eq!(s[1].tensors[0].spec.block_size, None);
        assert_eq!(s[0].tensors[0].spec.dtype, DType::Int8);
        assert_eq!(s[3].tensors[1].spec.dtype, DType::Int8);
        assert_eq!(s[3].tensors[1].spec.shape, vec![160, 80]);
        assert_eq!(s[1].tensors[2].spec.shape, vec![16, 80]);
        assert_eq!(s[1].tensors[4].spec.shape, vec![80, 80]);
        assert_eq!(
            s[2].tensors[14].source,
            "model.layers.1.mlp.down_proj.weight"
        );
    }

    #[test]
    fn policy_per_quant() {
        for (w, e) in [
            (DType::Nf4, DType::Int8),
            (DType::Int8, DType::Int8),
            (DType::Bf16, DType::Bf16),
            (DType::F16, DType::F16),
            (DType::F32, DType::F32),
        ] {
            let q = QuantPolicy {
                weights: w,
                block_size: 32,
                compress: None,
                keep_source: false,
            };
            assert_eq!(q.embeddings(), e);
            let m = q.manifest();
            assert_eq!(m.block_size, w.is_quantized().then_some(32));
        }
    }

    #[test]
    fn tied_head_and_classes() {
        let mut a = tiny_arch();
        a.tie_word_embeddings = true;
        let s = plan(&a, &NF4);
        assert_eq!(s[3].tensors.len(), 1);
        let c = Classifier::new(&s, &a);
        assert_eq!(c.classify("model.norm.weight"), Class::Used(vec![(3, 0)]));
        assert!(matches!(c.classify("lm_head.weight"), Class::Ignored(_)));
        assert!(matches!(
            c.classify("model.layers.0.self_attn.rotary_emb.inv_freq"),
            Class::Ignored(_)
        ));
        assert!(matches!(
            c.classify("model.layers.0.self_attn.q_proj.bias"),
            Class::Unexpected(_)
        ));
        match c.classify("model.layers.7.mlp.up_proj.weight") {
            Class::Unexpected(r) => assert!(r.contains("beyond"), "{r}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(c.classify("vision.tower"), Class::Unexpected(_)));
    }

    #[test]
    fn phi3_splits_fused_projections_by_rows() {
        let mut a = tiny_arch();
        a.source_class = "Phi3ForCausalLM".into();
        let s = plan(&a, &NF4);
        let layer = &s[2];
        let find = |name: &str| layer.tensors.iter().find(|t| t.spec.name == name).unwrap();
        let qkv = "model.layers.1.self_attn.qkv_proj.weight";
        // 5 query heads and 1 KV head of 16: q rows 0..80, k 80..96, v 96..112.
        for (name, first, rows) in [("attn.q", 0, 80), ("attn.k", 80, 16), ("attn.v", 96, 16)] {
            let t = find(name);
            assert_eq!(t.source, qkv);
            assert_eq!(t.source_rows_at(0), (first, rows));
            assert_eq!(t.spec.shape, vec![rows, 80]);
            assert_eq!(t.source_shape(), vec![112, 80]);
            assert_eq!(t.source_bytes(112 * 80 * 2), rows * 80 * 2);
        }
        for (name, first) in [("mlp.gate", 0), ("mlp.up", 128)] {
            let t = find(name);
            assert_eq!(t.source, "model.layers.1.mlp.gate_up_proj.weight");
            assert_eq!(
                (t.source_rows_at(3), t.source_shape()),
                ((first + 3, 125), vec![256, 80])
            );
        }
        assert_eq!(find("mlp.down").derive, Derive::Whole);
        let c = Classifier::new(&s, &a);
        assert_eq!(c.classify(qkv), Class::Used(vec![(2, 1), (2, 2), (2, 3)]));
        assert!(matches!(
            c.classify("model.layers.1.self_attn.q_proj.weight"),
            Class::Unexpected(_)
        ));
    }

    #[test]
    fn internlm2_reads_q_k_v_per_kv_group() {
        let mut a = tiny_arch();
        a.source_class = "InternLM2ForCausalLM".into();
        a.num_attention_heads = 4;
        a.num_kv_heads = 2;
        a.hidden_size = 64;
        let s = plan(&a, &NF4);
        let layer = &s[1];
        let find = |name: &str| layer.tensors.iter().find(|t| t.spec.name == name).unwrap();
        let qkv = "model.layers.0.attention.wqkv.weight";
        // Two groups of 64 rows: q (32 rows: heads 0, 1), k (16), v (16); then heads 2, 3.
        let q = find("attn.q");
        assert_eq!((q.source.as_str(), q.source_shape()), (qkv, vec![128, 64]));
        assert_eq!(q.source_rows_at(0), (0, 32));
        assert_eq!(q.source_rows_at(31), (31, 1));
        assert_eq!(q.source_rows_at(32), (64, 32));
        assert_eq!(find("attn.k").source_rows_at(0), (32, 16));
        assert_eq!(find("attn.k").source_rows_at(17), (97, 15));
        assert_eq!(find("attn.v").source_rows_at(16), (112, 16));
        assert_eq!(find("attn.v").source_bytes(128 * 64 * 2), 32 * 64 * 2);
        for (name, src) in [
            ("attn_norm", "attention_norm"),
            ("attn.o", "attention.wo"),
            ("mlp_norm", "ffn_norm"),
            ("mlp.gate", "feed_forward.w1"),
            ("mlp.up", "feed_forward.w3"),
            ("mlp.down", "feed_forward.w2"),
        ] {
            assert_eq!(find(name).source, format!("model.layers.0.{src}.weight"));
        }
        assert_eq!(s[0].tensors[0].source, "model.tok_embeddings.weight");
        assert_eq!(s[3].tensors[1].source, "output.weight");
        let c = Classifier::new(&s, &a);
        assert_eq!(c.classify(qkv), Class::Used(vec![(1, 1), (1, 2), (1, 3)]));
    }

    #[test]
    fn baichuan_splits_w_pack_and_normalizes_the_head() {
        let mut a = tiny_arch();
        a.source_class = "BaichuanForCausalLM".into();
        a.num_kv_heads = 5;
        let s = plan(&a, &NF4);
        let find = |name: &str| s[1].tensors.iter().find(|t| t.spec.name == name).unwrap();
        for (name, first) in [("attn.q", 0), ("attn.k", 80), ("attn.v", 160)] {
            let t = find(name);
            assert_eq!(t.source, "model.layers.0.self_attn.W_pack.weight");
            assert_eq!(
                (t.source_rows_at(0), t.source_shape()),
                ((first, 80), vec![240, 80])
            );
        }
        assert_eq!(
            find("mlp.gate").source,
            "model.layers.0.mlp.gate_proj.weight"
        );
        let head = &s[3].tensors[1];
        assert_eq!(
            (head.source.as_str(), head.derive),
            ("lm_head.weight", Derive::UnitRows)
        );
        assert_eq!(s[0].tensors[0].derive, Derive::Whole);
    }

    #[test]
    fn chatglm_q_and_k_rows_go_from_pairs_to_halves() {
        let mut a = tiny_arch();
        a.source_class = "ChatGLMModel".into();
        a.attention_bias = true;
        a.rope.rotary_dim = 8;
        let s = plan(&a, &NF4);
        let find = |name: &str| s[2].tensors.iter().find(|t| t.spec.name == name).unwrap();
        let (q, k, v) = (find("attn.q"), find("attn.k"), find("attn.v"));
        assert_eq!(
            q.source,
            "transformer.encoder.layers.1.self_attention.query_key_value.weight"
        );
        assert_eq!(q.source_shape(), vec![112, 80]);
        // Head 0: rows 0..4 are source 0, 2, 4, 6; rows 4..8 are 1, 3, 5, 7; 8.. in place.
        let rows: Vec<u64> = (0..9).map(|r| q.source_rows_at(r).0).collect();
        assert_eq!(rows, [0, 2, 4, 6, 1, 3, 5, 7, 8]);
        assert_eq!(q.source_rows_at(8), (8, 8));
        assert_eq!(q.source_rows_at(17), (18, 1));
        assert_eq!(k.source_rows_at(5), (83, 1));
        assert_eq!(v.source_rows_at(0), (96, 16));
        let kb = find("attn.k.bias");
        assert_eq!(
            (kb.source_rows_at(4), kb.source_shape()),
            ((81, 1), vec![112])
        );
        assert_eq!(find("mlp.up").source_rows_at(0), (128, 128));
        assert_eq!(s[3].tensors[1].source, "transformer.output_layer.weight");
        let c = Classifier::new(&s, &a);
        assert!(matches!(
            c.classify("transformer.rotary_pos_emb.inv_freq"),
            Class::Ignored(_)
        ));
        match c.classify("transformer.encoder.layers.9.mlp.dense_4h_to_h.weight") {
            Class::Unexpected(r) => assert!(r.contains("beyond"), "{r}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn qwen_names_and_fused_bias() {
        let mut a = tiny_arch();
        a.source_class = "QWenLMHeadModel".into();
        a.attention_bias = true;
        a.num_kv_heads = 5;
        let s = plan(&a, &NF4);
        let find = |name: &str| s[1].tensors.iter().find(|t| t.spec.name == name).unwrap();
        let vb = find("attn.v.bias");
        assert_eq!(vb.source, "transformer.h.0.attn.c_attn.bias");
        assert_eq!(
            (vb.source_rows_at(0), vb.source_shape()),
            ((160, 80), vec![240])
        );
        assert_eq!(find("mlp.gate").source, "transformer.h.0.mlp.w2.weight");
        assert_eq!(find("mlp.up").source, "transformer.h.0.mlp.w1.weight");
        assert_eq!(find("mlp.down").source, "transformer.h.0.mlp.c_proj.weight");
        assert_eq!(s[0].tensors[0].source, "transformer.wte.weight");
        assert_eq!(s[3].tensors[0].source, "transformer.ln_f.weight");
    }

    #[test]
    fn gemma2_norms_are_offset_and_post_norms_named() {
        let mut a = tiny_arch();
        a.source_class = "Gemma2ForCausalLM".into();
        a.post_norms = true;
        let s = plan(&a, &NF4);
        let layer: Vec<(&str, &str, Derive)> = s[1]
            .tensors
            .iter()
            .map(|t| (t.spec.name.as_str(), t.source.as_str(), t.derive))
            .collect();
        let p = "model.layers.0.";
        let norms = [
            ("attn_norm", "input_layernorm.weight"),
            ("attn_post_norm", "post_attention_layernorm.weight"),
            ("mlp_norm", "pre_feedforward_layernorm.weight"),
            ("mlp_post_norm", "post_feedforward_layernorm.weight"),
        ];
        for (name, src) in norms {
            let src = format!("{p}{src}");
            assert!(
                layer.contains(&(name, src.as_str(), Derive::PlusOne)),
                "{name}: {layer:?}"
            );
        }
        assert_eq!(layer.len(), 11);
        assert!(layer
            .iter()
            .filter(|t| !t.0.contains("norm"))
            .all(|t| t.2 == Derive::Whole));
        assert_eq!(s[3].tensors[0].derive, Derive::PlusOne);
        assert_eq!(s[0].tensors[0].derive, Derive::Whole);
        // Llama's post_attention_layernorm is the norm before the MLP, as is.
        let llama = plan(&tiny_arch(), &NF4);
        let mlp_norm = llama[1]
            .tensors
            .iter()
            .find(|t| t.spec.name == "mlp_norm")
            .unwrap();
        assert_eq!(
            (mlp_norm.source.as_str(), mlp_norm.derive),
            (
                "model.layers.0.post_attention_layernorm.weight",
                Derive::Whole
            )
        );
    }

    #[test]
    fn moe_layers_end_with_experts_in_order() {
        use strata_format::manifest::Moe;
        let mut a = tiny_arch();
        a.source_class = "Qwen2MoeForCausalLM".into();
        a.moe = Some(Moe {
            num_experts: 2,
            top_k: 1,
            expert_intermediate_size: 32,
            normalize_top_k: false,
            shared_expert_intermediate_size: Some(48),
        });
        let s = plan(&a, &NF4);
        let layer: Vec<(&str, &str, DType)> = s[1]
            .tensors
            .iter()
            .skip(6)
            .map(|t| (t.spec.name.as_str(), t.source.as_str(), t.spec.dtype))
            .collect();
        let p = "model.layers.0.mlp.";
        let want: Vec<(String, String, DType)> = [
            ("moe.router", "gate.weight", DType::F32),
            (
                "moe.shared.gate",
                "shared_expert.gate_proj.weight",
                DType::Nf4,
            ),
            ("moe.shared.up", "shared_expert.up_proj.weight", DType::Nf4),
            (
                "moe.shared.down",
                "shared_expert.down_proj.weight",
                DType::Nf4,
            ),
            ("moe.shared_gate", "shared_expert_gate.weight", DType::F32),
            (
                "moe.expert.0.gate",
                "experts.0.gate_proj.weight",
                DType::Nf4,
            ),
            ("moe.expert.0.up", "experts.0.up_proj.weight", DType::Nf4),
            (
                "moe.expert.0.down",
                "experts.0.down_proj.weight",
                DType::Nf4,
            ),
            (
                "moe.expert.1.gate",
                "experts.1.gate_proj.weight",
                DType::Nf4,
            ),
            ("moe.expert.1.up", "experts.1.up_proj.weight", DType::Nf4),
            (
                "moe.expert.1.down",
                "experts.1.down_proj.weight",
                DType::Nf4,
            ),
        ]
        .iter()
        .map(|(n, src, d)| (n.to_string(), format!("{p}{src}"), *d))
        .collect();
        let got: Vec<(String, String, DType)> = layer
            .iter()
            .map(|(n, src, d)| (n.to_string(), src.to_string(), *d))
            .collect();
        assert_eq!(s[1].tensors[5].spec.name, "mlp_norm");
        assert_eq!(got, want);
        assert_eq!(s[1].tensors.last().unwrap().spec.shape, vec![80, 32]);

        a.source_class = "MixtralForCausalLM".into();
        a.moe.as_mut().unwrap().shared_expert_intermediate_size = None;
        let s = plan(&a, &NF4);
        let src: Vec<&str> = s[2].tensors[6..]
            .iter()
            .map(|t| t.source.as_str())
            .collect();
        let b = "model.layers.1.block_sparse_moe.";
        assert_eq!(src[0], format!("{b}gate.weight"));
        assert_eq!(
            &src[1..4],
            [
                format!("{b}experts.0.w1.weight"),
                format!("{b}experts.0.w3.weight"),
                format!("{b}experts.0.w2.weight")
            ]
        );
    }

    #[test]
    fn sizes_match_writer() {
        let dir = tempfile::tempdir().unwrap();
        let s = plan(&tiny_arch(), &NF4);
        for stage in &s {
            let path = dir.path().join(&stage.file);
            let mut w =
                strata_format::StageWriter::create(&path, stage.kind, stage.layer, &stage.specs())
                    .unwrap();
            for t in w.header().tensors.clone() {
                w.write(&t.name, &vec![0u8; t.length as usize]).unwrap();
            }
            let written = w.finish().unwrap();
            assert_eq!(written.bytes, stage.file_size().unwrap(), "{}", stage.file);
        }
    }
}
