//! What the container will hold: the stages in order, each with its tensor
//! table (normalized name, encoding, shape) and the source tensor each entry
//! comes from; and how every source tensor name is classified.

use std::collections::HashMap;
use std::path::Path;

use strata_format::compress::Codec;
use strata_format::dtype::DType;
use strata_format::header::StageKind;
use strata_format::manifest::{Architecture, Quantization};
use strata_format::names;
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

    fn spec(&self, name: &str, dtype: DType, shape: Vec<u64>) -> TensorSpec {
        TensorSpec {
            name: name.to_string(),
            dtype,
            shape,
            block_size: dtype.is_quantized().then_some(self.block_size),
            compression: None,
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
    /// Rows `first..first + rows` of a fused source tensor of `source_rows`
    /// rows (Phi-3's `qkv_proj` and `gate_up_proj`); `rows` is the stored
    /// tensor's first dimension.
    Rows {
        /// First source row.
        first: u64,
        /// Rows of the whole source tensor.
        source_rows: u64,
    },
    /// `1 + w` (Gemma's RMSNorm weights, stored so that the norm is the
    /// plain `x / rms × w'` of SPEC.md §5.2).
    PlusOne,
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
        if let (Derive::Rows { source_rows, .. }, Some(rows)) = (self.derive, shape.first_mut()) {
            *rows = source_rows;
        }
        shape
    }

    /// The first source row this tensor reads (0 unless split from a fused tensor).
    pub fn first_row(&self) -> usize {
        match self.derive {
            Derive::Rows { first, .. } => first as usize,
            Derive::Whole | Derive::PlusOne => 0,
        }
    }

    /// Bytes this tensor reads from a source tensor of `source_len` bytes.
    pub fn source_bytes(&self, source_len: u64) -> u64 {
        match (self.derive, self.spec.shape.first()) {
            (Derive::Rows { source_rows, .. }, Some(&rows)) if source_rows > 0 => {
                source_len / source_rows * rows
            }
            _ => source_len,
        }
    }
}

/// How a family names and packs its tensors in a Hugging Face checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Llama's names, one tensor per projection.
    Llama,
    /// Gemma 2: `(1 + w)` norms and four norms per layer
    /// (`input_layernorm`, `post_attention_layernorm`,
    /// `pre_feedforward_layernorm`, `post_feedforward_layernorm`).
    Gemma2,
    /// Phi-3: fused `self_attn.qkv_proj` and `mlp.gate_up_proj`.
    Phi3,
    /// Mixtral: experts under `block_sparse_moe` named `w1`, `w3`, `w2`.
    Mixtral,
}

impl Layout {
    fn of(arch: &Architecture) -> Layout {
        match arch.source_class.as_str() {
            "Gemma2ForCausalLM" => Layout::Gemma2,
            "Phi3ForCausalLM" => Layout::Phi3,
            "MixtralForCausalLM" => Layout::Mixtral,
            _ => Layout::Llama,
        }
    }
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

/// The whole container's stages: embed, layers in order, head.
pub fn plan(arch: &Architecture, q: &QuantPolicy) -> Vec<Stage> {
    let layout = Layout::of(arch);
    let h = arch.hidden_size;
    let attn_out = arch.num_attention_heads * arch.head_dim;
    let kv_out = arch.num_kv_heads * arch.head_dim;
    let inter = arch.intermediate_size;
    let lin = q.weights;
    let f32_ = DType::F32;
    let norm = if layout == Layout::Gemma2 {
        Derive::PlusOne
    } else {
        Derive::Whole
    };
    let whole = Derive::Whole;
    let mut stages = Vec::with_capacity(arch.num_layers as usize + 2);
    stages.push(Stage {
        file: names::EMBED_FILE.into(),
        kind: StageKind::Embed,
        layer: None,
        tensors: vec![PlannedTensor {
            spec: q.spec(
                names::EMBED_TOKENS,
                q.embeddings(),
                vec![arch.vocab_size, h],
            ),
            source: "model.embed_tokens.weight".into(),
            derive: whole,
        }],
    });
    for i in 0..arch.num_layers {
        let p = format!("model.layers.{i}.");
        // (name, dtype, shape, source name, derivation)
        let mut t: Vec<(&str, DType, Vec<u64>, &str, Derive)> = vec![(
            names::ATTN_NORM,
            f32_,
            vec![h],
            "input_layernorm.weight",
            norm,
        )];
        if layout == Layout::Phi3 {
            let qkv = "self_attn.qkv_proj.weight";
            let source_rows = attn_out + 2 * kv_out;
            let rows = |first| Derive::Rows { first, source_rows };
            t.push((names::ATTN_Q, lin, vec![attn_out, h], qkv, rows(0)));
            t.push((names::ATTN_K, lin, vec![kv_out, h], qkv, rows(attn_out)));
            t.push((
                names::ATTN_V,
                lin,
                vec![kv_out, h],
                qkv,
                rows(attn_out + kv_out),
            ));
        } else {
            t.push((
                names::ATTN_Q,
                lin,
                vec![attn_out, h],
                "self_attn.q_proj.weight",
                whole,
            ));
            t.push((
                names::ATTN_K,
                lin,
                vec![kv_out, h],
                "self_attn.k_proj.weight",
                whole,
            ));
            t.push((
                names::ATTN_V,
                lin,
                vec![kv_out, h],
                "self_attn.v_proj.weight",
                whole,
            ));
        }
        t.push((
            names::ATTN_O,
            lin,
            vec![h, attn_out],
            "self_attn.o_proj.weight",
            whole,
        ));
        if arch.attention_bias {
            t.push((
                names::ATTN_Q_BIAS,
                f32_,
                vec![attn_out],
                "self_attn.q_proj.bias",
                whole,
            ));
            t.push((
                names::ATTN_K_BIAS,
                f32_,
                vec![kv_out],
                "self_attn.k_proj.bias",
                whole,
            ));
            t.push((
                names::ATTN_V_BIAS,
                f32_,
                vec![kv_out],
                "self_attn.v_proj.bias",
                whole,
            ));
        }
        if arch.attention_out_bias {
            t.push((
                names::ATTN_O_BIAS,
                f32_,
                vec![h],
                "self_attn.o_proj.bias",
                whole,
            ));
        }
        if arch.qk_norm {
            t.push((
                names::ATTN_Q_NORM,
                f32_,
                vec![arch.head_dim],
                "self_attn.q_norm.weight",
                norm,
            ));
            t.push((
                names::ATTN_K_NORM,
                f32_,
                vec![arch.head_dim],
                "self_attn.k_norm.weight",
                norm,
            ));
        }
        // Gemma 2's `post_attention_layernorm` normalizes the attention
        // output; Llama's is the norm before the feed-forward block.
        let mlp_norm_source = if arch.post_norms {
            t.push((
                names::ATTN_POST_NORM,
                f32_,
                vec![h],
                "post_attention_layernorm.weight",
                norm,
            ));
            "pre_feedforward_layernorm.weight"
        } else {
            "post_attention_layernorm.weight"
        };
        t.push((names::MLP_NORM, f32_, vec![h], mlp_norm_source, norm));
        if arch.moe.is_some() {
            // The routed experts follow, after everything else (`moe_tensors`).
        } else if layout == Layout::Phi3 {
            let gate_up = "mlp.gate_up_proj.weight";
            let rows = |first| Derive::Rows {
                first,
                source_rows: 2 * inter,
            };
            t.push((names::MLP_GATE, lin, vec![inter, h], gate_up, rows(0)));
            t.push((names::MLP_UP, lin, vec![inter, h], gate_up, rows(inter)));
        } else {
            t.push((
                names::MLP_GATE,
                lin,
                vec![inter, h],
                "mlp.gate_proj.weight",
                whole,
            ));
            t.push((
                names::MLP_UP,
                lin,
                vec![inter, h],
                "mlp.up_proj.weight",
                whole,
            ));
        }
        if arch.moe.is_none() {
            t.push((
                names::MLP_DOWN,
                lin,
                vec![h, inter],
                "mlp.down_proj.weight",
                whole,
            ));
        }
        if arch.mlp_bias {
            t.push((
                "mlp.gate.bias",
                f32_,
                vec![inter],
                "mlp.gate_proj.bias",
                whole,
            ));
            t.push(("mlp.up.bias", f32_, vec![inter], "mlp.up_proj.bias", whole));
            t.push(("mlp.down.bias", f32_, vec![h], "mlp.down_proj.bias", whole));
        }
        if arch.post_norms {
            t.push((
                names::MLP_POST_NORM,
                f32_,
                vec![h],
                "post_feedforward_layernorm.weight",
                norm,
            ));
        }
        let mut tensors: Vec<PlannedTensor> = t
            .into_iter()
            .map(|(name, dtype, shape, src, derive)| PlannedTensor {
                spec: q.spec(name, dtype, shape),
                source: format!("{p}{src}"),
                derive,
            })
            .collect();
        tensors.extend(moe_tensors(arch, layout, q, &p));
        stages.push(Stage {
            file: names::layer_file(i),
            kind: StageKind::Layer,
            layer: Some(i as u32),
            tensors,
        });
    }
    let mut head = vec![PlannedTensor {
        spec: q.spec(names::FINAL_NORM, f32_, vec![h]),
        source: "model.norm.weight".into(),
        derive: norm,
    }];
    if !arch.tie_word_embeddings {
        head.push(PlannedTensor {
            spec: q.spec(names::HEAD, q.embeddings(), vec![arch.vocab_size, h]),
            source: "lm_head.weight".into(),
            derive: whole,
        });
    }
    stages.push(Stage {
        file: names::HEAD_FILE.into(),
        kind: StageKind::Head,
        layer: None,
        tensors: head,
    });
    stages
}

/// An MoE layer's feed-forward tensors (none for a dense model), after the
/// rest of the layer: the router and the shared expert, then each routed
/// expert's `gate`, `up`, `down` together, expert by expert, so that a runner
/// reads the chosen experts as contiguous byte ranges at the end of the file.
/// The router and the shared expert's scalar gate stay f32 (they are small,
/// and quantizing them could change which experts are chosen).
fn moe_tensors(
    arch: &Architecture,
    layout: Layout,
    q: &QuantPolicy,
    p: &str,
) -> Vec<PlannedTensor> {
    let Some(m) = &arch.moe else {
        return Vec::new();
    };
    let h = arch.hidden_size;
    let w = m.expert_intermediate_size;
    let t = |name: String, dtype: DType, shape: Vec<u64>, src: String| PlannedTensor {
        spec: q.spec(&name, dtype, shape),
        source: format!("{p}{src}"),
        derive: Derive::Whole,
    };
    // Mixtral: block_sparse_moe.gate, experts.E.{w1 (gate), w3 (up), w2 (down)}.
    let (block, parts) = if layout == Layout::Mixtral {
        ("block_sparse_moe", ["w1", "w3", "w2"])
    } else {
        ("mlp", ["gate_proj", "up_proj", "down_proj"])
    };
    let mut out = vec![t(
        names::MOE_ROUTER.into(),
        DType::F32,
        vec![m.num_experts, h],
        format!("{block}.gate.weight"),
    )];
    if let Some(s) = m.shared_expert_intermediate_size {
        out.push(t(
            names::MOE_SHARED_GATE.into(),
            q.weights,
            vec![s, h],
            "mlp.shared_expert.gate_proj.weight".into(),
        ));
        out.push(t(
            names::MOE_SHARED_UP.into(),
            q.weights,
            vec![s, h],
            "mlp.shared_expert.up_proj.weight".into(),
        ));
        out.push(t(
            names::MOE_SHARED_DOWN.into(),
            q.weights,
            vec![h, s],
            "mlp.shared_expert.down_proj.weight".into(),
        ));
        out.push(t(
            names::MOE_SHARED_GATE_SCALAR.into(),
            DType::F32,
            vec![1, h],
            "mlp.shared_expert_gate.weight".into(),
        ));
    }
    for e in 0..m.num_experts {
        for (part, src) in names::MOE_EXPERT_PARTS.iter().zip(parts) {
            let shape = if *part == "down" {
                vec![h, w]
            } else {
                vec![w, h]
            };
            out.push(t(
                names::moe_expert(e, part),
                q.weights,
                shape,
                format!("{block}.experts.{e}.{src}.weight"),
            ));
        }
    }
    out
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
    tied: bool,
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
            tied: arch.tie_word_embeddings,
            layers: arch.num_layers,
        }
    }

    /// Classifies one source tensor name.
    pub fn classify(&self, name: &str) -> Class {
        if let Some(targets) = self.used.get(name) {
            return Class::Used(targets.clone());
        }
        if name.ends_with("rotary_emb.inv_freq") {
            return Class::Ignored("rotary inverse frequencies are recomputed from the config");
        }
        if name == "lm_head.weight" && self.tied {
            return Class::Ignored("the config ties the head to the embeddings");
        }
        if let Some(rest) = name.strip_prefix("model.layers.") {
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
        }
    }

    const NF4: QuantPolicy = QuantPolicy {
        weights: DType::Nf4,
        block_size: 64,
        compress: None,
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
            assert_eq!(t.first_row(), first);
            assert_eq!(t.spec.shape, vec![rows, 80]);
            assert_eq!(t.source_shape(), vec![112, 80]);
            assert_eq!(t.source_bytes(112 * 80 * 2), rows * 80 * 2);
        }
        for (name, first) in [("mlp.gate", 0), ("mlp.up", 128)] {
            let t = find(name);
            assert_eq!(t.source, "model.layers.1.mlp.gate_up_proj.weight");
            assert_eq!((t.first_row(), t.source_shape()), (first, vec![256, 80]));
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
