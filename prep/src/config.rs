//! Reads a Hugging Face `config.json` (and `generation_config.json`) into the
//! container's normalized architecture description and token ids.
//!
//! Defaults follow the transformers configuration classes of each supported
//! family, so a key that is absent means what it means to transformers.

use std::path::Path;

use serde_json::{Map, Value};
use strata_format::manifest::{Activation, Architecture, Moe, Rope, RopeScaling};

use crate::error::{PrepError, Result, SUPPORTED_CLASSES};

/// Per-class facts and transformers defaults.
struct Family {
    class: &'static str,
    family: &'static str,
    /// `head_dim` when the key is absent: `None` means hidden / heads.
    head_dim_default: Option<u64>,
    max_position_default: u64,
    /// Whether the class has `attention_bias` (q, k, v and o biases).
    attention_bias_key: bool,
    /// Whether q, k, v always carry biases (Qwen2).
    qkv_bias: bool,
    /// Whether the class has `mlp_bias`.
    mlp_bias_key: bool,
    qk_norm: bool,
    window: WindowRule,
    /// The key naming the feed-forward activation, and its default.
    act_key: &'static str,
    act_default: &'static str,
    /// `tie_word_embeddings` when the key is absent.
    tie_default: bool,
    /// Gemma's extras: post-block norms, `query_pre_attn_scalar`, embeddings
    /// scaled by sqrt(hidden) (and `(1 + w)` norms, see `plan`), soft-caps
    /// (on by default in Gemma 2, off in Gemma 3), and Gemma 3's RoPE per
    /// layer type.
    gemma: Gemma,
    /// Rope types the class's config renames to `longrope`.
    longrope_aliases: &'static [&'static str],
    /// Phi-3 keeps `original_max_position_embeddings` at the top level of
    /// its config, with this default, and it overrides the rope object's.
    original_max_default: Option<u64>,
    /// Checks and settings of a family published as remote code.
    remote: Remote,
    /// How the class describes its mixture of experts, if it has one.
    moe: MoeRule,
    /// The architecture is the `text_config` object of a multimodal config
    /// (Gemma 3 4B and larger), whose text model alone is converted.
    text_config: bool,
}

/// The Gemma generations, whose configs share extras (see [`Family::gemma`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Gemma {
    /// Not a Gemma model.
    None,
    /// Gemma 2: soft-caps by default, every other layer slides.
    Two,
    /// Gemma 3: no soft-caps by default, q/k norms, five sliding layers in
    /// six, a RoPE base per layer type.
    Three,
}

/// Families whose modeling code ships with the checkpoint (`auto_map`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Remote {
    None,
    /// InternLM2: `bias` (default true) puts biases on `wqkv` and `wo`.
    InternLm2,
    /// Baichuan 2: RoPE (base 10000, no scaling keys) when the config has
    /// `max_position_embeddings` (7B), ALiBi when it has only
    /// `model_max_length` (13B).
    Baichuan,
    /// Qwen (v1): its own config keys (see [`translate_qwen`]).
    Qwen,
    /// ChatGLM 2 / 3 and GLM-4: their own config keys (see [`translate_chatglm`]).
    ChatGlm,
}

/// How a class configures its routed experts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MoeRule {
    /// A dense model.
    None,
    /// Mixtral: `num_local_experts` (8), `num_experts_per_tok` (2), experts
    /// of `intermediate_size`, the chosen probabilities always renormalized.
    Mixtral,
    /// Qwen2-MoE / Qwen3-MoE: `num_experts`, `num_experts_per_tok`,
    /// `moe_intermediate_size`, `norm_topk_prob`, `decoder_sparse_step`,
    /// `mlp_only_layers`; Qwen2-MoE adds a shared expert.
    Qwen {
        experts: u64,
        top_k: u64,
        width: u64,
        shared: Option<u64>,
    },
}

/// How a class describes its sliding window.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WindowRule {
    None,
    /// `sliding_window` on every layer; absent means `default`, null means none.
    AllLayers {
        default: Option<u64>,
    },
    /// Only with `use_sliding_window`; layers from `layer_types` or `≥ max_window_layers`.
    Qwen,
    /// Layers from `layer_types`, else every even layer (0, 2, …); absent
    /// `sliding_window` means 4096, null or 0 is refused.
    Gemma2,
    /// Layers from `layer_types`, else layer `i` slides unless `i + 1` is a
    /// multiple of `sliding_window_pattern` (default 6); absent
    /// `sliding_window` means 4096, null or 0 is refused.
    Gemma3,
}

/// The fields most classes share; each entry of [`FAMILIES`] changes some.
const LLAMA: Family = Family {
    class: "LlamaForCausalLM",
    family: "llama",
    head_dim_default: None,
    max_position_default: 2048,
    attention_bias_key: true,
    qkv_bias: false,
    mlp_bias_key: true,
    qk_norm: false,
    window: WindowRule::None,
    act_key: "hidden_act",
    act_default: "silu",
    tie_default: false,
    gemma: Gemma::None,
    longrope_aliases: &[],
    original_max_default: None,
    remote: Remote::None,
    moe: MoeRule::None,
    text_config: false,
};

const FAMILIES: [Family; 16] = [
    LLAMA,
    Family {
        class: "MistralForCausalLM",
        family: "mistral",
        max_position_default: 4096 * 32,
        attention_bias_key: false,
        mlp_bias_key: false,
        window: WindowRule::AllLayers {
            default: Some(DEFAULT_WINDOW),
        },
        ..LLAMA
    },
    Family {
        class: "Qwen2ForCausalLM",
        family: "qwen2",
        max_position_default: 32768,
        attention_bias_key: false,
        qkv_bias: true,
        mlp_bias_key: false,
        window: WindowRule::Qwen,
        ..LLAMA
    },
    Family {
        class: "Qwen3ForCausalLM",
        family: "qwen3",
        head_dim_default: Some(128),
        max_position_default: 32768,
        mlp_bias_key: false,
        qk_norm: true,
        window: WindowRule::Qwen,
        ..LLAMA
    },
    Family {
        class: "Gemma2ForCausalLM",
        family: "gemma2",
        head_dim_default: Some(256),
        max_position_default: 8192,
        mlp_bias_key: false,
        window: WindowRule::Gemma2,
        act_key: "hidden_activation",
        act_default: "gelu_pytorch_tanh",
        tie_default: true,
        gemma: Gemma::Two,
        ..LLAMA
    },
    GEMMA3,
    Family {
        class: "Gemma3ForConditionalGeneration",
        text_config: true,
        ..GEMMA3
    },
    Family {
        class: "Phi3ForCausalLM",
        family: "phi3",
        max_position_default: 4096,
        attention_bias_key: false,
        mlp_bias_key: false,
        window: WindowRule::AllLayers { default: None },
        longrope_aliases: &["su", "yarn"],
        original_max_default: Some(4096),
        ..LLAMA
    },
    Family {
        class: "InternLM2ForCausalLM",
        family: "internlm2",
        attention_bias_key: false,
        mlp_bias_key: false,
        remote: Remote::InternLm2,
        ..LLAMA
    },
    Family {
        class: "BaichuanForCausalLM",
        family: "baichuan",
        max_position_default: 4096,
        attention_bias_key: false,
        mlp_bias_key: false,
        remote: Remote::Baichuan,
        ..LLAMA
    },
    Family {
        class: "QWenLMHeadModel",
        family: "qwen",
        max_position_default: 8192,
        attention_bias_key: false,
        qkv_bias: true,
        mlp_bias_key: false,
        remote: Remote::Qwen,
        ..LLAMA
    },
    CHATGLM,
    Family {
        class: "ChatGLMForConditionalGeneration",
        ..CHATGLM
    },
    Family {
        class: "MixtralForCausalLM",
        family: "mixtral",
        max_position_default: 4096 * 32,
        attention_bias_key: false,
        mlp_bias_key: false,
        window: WindowRule::AllLayers { default: None },
        moe: MoeRule::Mixtral,
        ..LLAMA
    },
    Family {
        class: "Qwen2MoeForCausalLM",
        family: "qwen2_moe",
        max_position_default: 32768,
        attention_bias_key: false,
        // `qkv_bias` (default true), read in `parse_architecture`.
        qkv_bias: true,
        mlp_bias_key: false,
        window: WindowRule::None,
        moe: MoeRule::Qwen {
            experts: 60,
            top_k: 4,
            width: 1408,
            shared: Some(5632),
        },
        ..LLAMA
    },
    Family {
        class: "Qwen3MoeForCausalLM",
        family: "qwen3_moe",
        max_position_default: 32768,
        mlp_bias_key: false,
        qk_norm: true,
        window: WindowRule::None,
        moe: MoeRule::Qwen {
            experts: 128,
            top_k: 8,
            width: 768,
            shared: None,
        },
        ..LLAMA
    },
];

/// Gemma 3's text-only class; its multimodal class reads the same keys from
/// `text_config`.
const GEMMA3: Family = Family {
    class: "Gemma3ForCausalLM",
    family: "gemma3",
    head_dim_default: Some(256),
    max_position_default: 131_072,
    mlp_bias_key: false,
    qk_norm: true,
    window: WindowRule::Gemma3,
    act_key: "hidden_activation",
    act_default: "gelu_pytorch_tanh",
    tie_default: true,
    gemma: Gemma::Three,
    ..LLAMA
};

/// ChatGLM's checkpoints name `ChatGLMModel` (chatglm3-6b, glm-4-9b-chat) or
/// `ChatGLMForConditionalGeneration`; both load the same weights.
const CHATGLM: Family = Family {
    class: "ChatGLMModel",
    family: "chatglm",
    max_position_default: 2048,
    attention_bias_key: false,
    qkv_bias: true,
    mlp_bias_key: false,
    remote: Remote::ChatGlm,
    ..LLAMA
};

/// Upper bound on layer and head counts (the manifest's limit).
const MAX_COUNT: u64 = 1 << 20;
/// Upper bound on widths (the manifest's limit).
const MAX_WIDTH: u64 = 1 << 24;
/// transformers' default RMSNorm epsilon for all supported classes.
const DEFAULT_NORM_EPS: f64 = 1e-6;
/// ChatGLMConfig's default `layernorm_epsilon`.
const CHATGLM_NORM_EPS: f64 = 1e-5;
/// transformers' default RoPE base for all supported classes.
const DEFAULT_ROPE_THETA: f64 = 10000.0;
/// transformers' default window of Mistral and Qwen configs.
const DEFAULT_WINDOW: u64 = 4096;
/// transformers' default `max_window_layers` of Qwen configs.
const DEFAULT_MAX_WINDOW_LAYERS: u64 = 28;
/// Gemma 2's defaults: attention-score and final-logit soft-caps, and the
/// `query_pre_attn_scalar` whose inverse square root scales scores.
const GEMMA2_ATTN_SOFTCAP: f64 = 50.0;
const GEMMA2_FINAL_SOFTCAP: f64 = 30.0;
const GEMMA2_QUERY_PRE_ATTN_SCALAR: f64 = 256.0;
/// Gemma 3's RoPE bases when the config names none: full-attention layers
/// (`rope_theta`) and sliding layers (`rope_local_base_freq`).
const GEMMA3_GLOBAL_THETA: f64 = 1_000_000.0;
const GEMMA3_LOCAL_THETA: f64 = 10_000.0;
/// Gemma 3's `sliding_window_pattern` default: one full layer in six.
const GEMMA3_PATTERN: u64 = 6;

/// Typed access to a JSON object with errors naming the file and key.
#[derive(Clone, Copy)]
struct Cfg<'a> {
    map: &'a Map<String, Value>,
    path: &'a Path,
}

impl<'a> Cfg<'a> {
    fn err(&self, reason: String) -> PrepError {
        PrepError::Config {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    /// The value of `key`, treating JSON null as absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                self.err(format!("`{key}` must be a non-negative integer, found {v}"))
            }),
        }
    }

    fn req_u64(&self, key: &str) -> Result<u64> {
        self.u64(key)?
            .ok_or_else(|| self.err(format!("missing required key `{key}`")))
    }

    fn f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{key}` must be a number, found {v}"))),
        }
    }

    /// A number whose absence means `default` and whose JSON null means none.
    fn f64_or_null(&self, key: &str, default: f64) -> Result<Option<f64>> {
        match self.map.get(key) {
            None => Ok(Some(default)),
            Some(Value::Null) => Ok(None),
            Some(_) => self.f64(key),
        }
    }

    /// A list of numbers.
    fn f64_list(&self, key: &str) -> Result<Option<Vec<f64>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_f64().ok_or_else(|| {
                        self.err(format!(
                            "`{key}` must be a list of numbers, found {v} in it"
                        ))
                    })
                })
                .collect::<Result<Vec<f64>>>()
                .map(Some),
            Some(v) => Err(self.err(format!("`{key}` must be a list of numbers, found {v}"))),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{key}` must be true or false, found {v}"))),
        }
    }

    fn str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{key}` must be a string, found {v}"))),
        }
    }

    fn object(&self, key: &str) -> Result<Option<Cfg<'a>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Cfg {
                map,
                path: self.path,
            })),
            Some(v) => Err(self.err(format!("`{key}` must be an object, found {v}"))),
        }
    }
}

fn parse_object<'a>(json: &'a Value, path: &Path) -> Result<&'a Map<String, Value>> {
    json.as_object().ok_or_else(|| PrepError::Config {
        path: path.to_path_buf(),
        reason: "not a JSON object".into(),
    })
}

/// Parses JSON bytes, naming the file on error.
pub fn parse_json(bytes: &[u8], path: &Path) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|e| PrepError::Config {
        path: path.to_path_buf(),
        reason: format!("not valid JSON: {e}"),
    })
}

/// Reads `config.json` into the normalized architecture (SPEC.md §5.2).
pub fn parse_architecture(json: &Value, path: &Path) -> Result<Architecture> {
    let c = Cfg {
        map: parse_object(json, path)?,
        path,
    };
    if c.get("quantization_config").is_some() {
        return Err(c.err(
            "the checkpoint is already quantized (`quantization_config`); prep needs F32/F16/BF16 weights"
                .into(),
        ));
    }
    let classes: Vec<&str> = match c.get("architectures") {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let fam = match classes.as_slice() {
        [one] => FAMILIES.iter().find(|f| f.class == *one).ok_or_else(|| {
            PrepError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                found: one.to_string(),
            }
        })?,
        [] => {
            return Err(PrepError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                found: "(no `architectures` list)".into(),
            })
        }
        many => {
            return Err(PrepError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                found: format!("{many:?} (expected exactly one class)"),
            })
        }
    };
    debug_assert!(SUPPORTED_CLASSES.contains(&fam.class));
    let text;
    let c = if fam.text_config {
        text = gemma3_text_config(&c)?;
        Cfg { map: &text, path }
    } else {
        c
    };
    let translated;
    let c = match fam.remote {
        Remote::Qwen | Remote::ChatGlm => {
            translated = if fam.remote == Remote::Qwen {
                translate_qwen(&c)?
            } else {
                translate_chatglm(&c)?
            };
            Cfg {
                map: &translated,
                path,
            }
        }
        Remote::None | Remote::InternLm2 | Remote::Baichuan => c,
    };

    let hidden = c.req_u64("hidden_size")?;
    let layers = c.req_u64("num_hidden_layers")?;
    let heads = c.req_u64("num_attention_heads")?;
    let intermediate = c.req_u64("intermediate_size")?;
    let vocab = c.req_u64("vocab_size")?;
    for (k, v, max) in [
        ("hidden_size", hidden, MAX_WIDTH),
        ("num_hidden_layers", layers, MAX_COUNT),
        ("num_attention_heads", heads, MAX_COUNT),
        ("intermediate_size", intermediate, MAX_WIDTH),
        ("vocab_size", vocab, MAX_WIDTH),
    ] {
        if v == 0 || v > max {
            return Err(c.err(format!("`{k}` = {v} is outside 1..={max}")));
        }
    }
    let kv_heads = c.u64("num_key_value_heads")?.unwrap_or(heads);
    if kv_heads == 0 || heads % kv_heads != 0 {
        return Err(c.err(format!(
            "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
        )));
    }
    let head_dim = match (c.u64("head_dim")?, fam.head_dim_default) {
        (Some(d), _) => d,
        (None, Some(d)) => d,
        (None, None) => {
            if hidden % heads != 0 {
                return Err(c.err(format!(
                    "no `head_dim`, and hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
                )));
            }
            hidden / heads
        }
    };
    if head_dim == 0 || head_dim > MAX_WIDTH {
        return Err(c.err(format!(
            "`head_dim` = {head_dim} is outside 1..={MAX_WIDTH}"
        )));
    }
    let act = c.str(fam.act_key)?.unwrap_or(fam.act_default);
    let activation = match act {
        "silu" | "swish" => Activation::Silu,
        "gelu_pytorch_tanh" | "gelu_new" => Activation::GeluTanh,
        other => {
            return Err(c.err(format!(
            "{} {other:?} is not supported for {} (supported: silu, gelu_pytorch_tanh, gelu_new)",
            fam.act_key, fam.class
        )))
        }
    };
    let norm_eps = c.f64("rms_norm_eps")?.unwrap_or(DEFAULT_NORM_EPS);
    let max_pos = c
        .u64("max_position_embeddings")?
        .unwrap_or(fam.max_position_default);
    let tie = c.bool("tie_word_embeddings")?.unwrap_or(fam.tie_default);
    let (rope, sliding_rope) = if fam.gemma == Gemma::Three {
        let (full, sliding) = parse_gemma3_rope(&c, fam, head_dim, max_pos)?;
        (full, Some(sliding))
    } else {
        (parse_rope(&c, fam, head_dim, max_pos)?, None)
    };

    let attn_bias_flag = if fam.attention_bias_key {
        c.bool("attention_bias")?.unwrap_or(false)
    } else {
        false
    };
    let mlp_bias = if fam.mlp_bias_key {
        c.bool("mlp_bias")?.unwrap_or(false)
    } else {
        false
    };
    let (sliding_window, sliding_window_layers) = parse_window(&c, fam.window, layers)?;
    let qkv_bias = if fam.moe == MoeRule::None || !fam.qkv_bias {
        fam.qkv_bias
    } else {
        c.bool("qkv_bias")?.unwrap_or(true)
    };
    let moe = parse_moe(&c, fam, intermediate)?;
    let mut arch = Architecture {
        family: fam.family.into(),
        source_class: fam.class.into(),
        hidden_size: hidden,
        num_layers: layers,
        num_attention_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        intermediate_size: intermediate,
        vocab_size: vocab,
        max_position_embeddings: max_pos,
        norm_eps,
        rope,
        activation,
        tie_word_embeddings: tie,
        attention_bias: attn_bias_flag || qkv_bias,
        attention_out_bias: attn_bias_flag,
        mlp_bias,
        qk_norm: fam.qk_norm,
        post_norms: false,
        sliding_window,
        sliding_window_layers,
        moe,
        attn_logit_softcap: None,
        final_logit_softcap: None,
        attention_scale: None,
        embedding_multiplier: None,
        max_context: None,
        alibi: false,
        sliding_rope,
    };
    if fam.gemma != Gemma::None {
        if c.bool("use_bidirectional_attention")?.unwrap_or(false) {
            return Err(c.err(
                "`use_bidirectional_attention` is true: the model is not causal, and this runner only computes causal decoders"
                    .into(),
            ));
        }
        let scalar = c
            .f64("query_pre_attn_scalar")?
            .unwrap_or(GEMMA2_QUERY_PRE_ATTN_SCALAR);
        if !(scalar.is_finite() && scalar > 0.0) {
            return Err(c.err(format!(
                "`query_pre_attn_scalar` = {scalar} must be finite and positive"
            )));
        }
        arch.post_norms = true;
        arch.attention_scale = Some(scalar.powf(-0.5));
        if fam.gemma == Gemma::Two {
            arch.attn_logit_softcap =
                c.f64_or_null("attn_logit_softcapping", GEMMA2_ATTN_SOFTCAP)?;
            arch.final_logit_softcap =
                c.f64_or_null("final_logit_softcapping", GEMMA2_FINAL_SOFTCAP)?;
        } else {
            arch.attn_logit_softcap = c.f64("attn_logit_softcapping")?;
            arch.final_logit_softcap = c.f64("final_logit_softcapping")?;
        }
        // transformers multiplies by sqrt(hidden) cast to the compute dtype;
        // in float32 that is f32(sqrt(hidden)), which a runner gets from this f64.
        arch.embedding_multiplier = Some((hidden as f64).sqrt());
    }
    match fam.remote {
        Remote::None | Remote::ChatGlm => {}
        Remote::Qwen => {
            // translate_qwen made max_position_embeddings seq_length.
            if qwen_extrapolates(&c)? {
                arch.max_context = Some(arch.max_position_embeddings);
            }
        }
        Remote::InternLm2 => {
            if c.bool("bias")?.unwrap_or(true) {
                return Err(c.err(
                    "InternLM2 `bias` is true (InternLM2Config's default when the key is absent): biases on `wqkv` and `wo` are not supported (published InternLM2 checkpoints set it to false)"
                        .into(),
                ));
            }
            let scaling = c.object("rope_scaling")?;
            let kind = match &scaling {
                Some(s) => match s.str("type")? {
                    Some(k) => Some(k),
                    None => s.str("rope_type")?,
                },
                None => None,
            };
            if kind == Some("dynamic") {
                arch.max_context = Some(max_pos);
            }
        }
        Remote::Baichuan => {
            if c.get("max_position_embeddings").is_none() {
                // The 13B layout: ALiBi position biases instead of RoPE.
                arch.alibi = true;
                arch.max_position_embeddings = c
                    .u64("model_max_length")?
                    .unwrap_or(fam.max_position_default);
            }
            // modeling_baichuan.py (7B) builds RoPE with base 10000 and reads
            // no rope keys: any in the config do not apply.
            arch.rope = Rope {
                theta: DEFAULT_ROPE_THETA,
                rotary_dim: head_dim,
                scaling: None,
            };
        }
    }
    Ok(arch)
}

/// Qwen (v1)'s config (`QWenConfig` of its `configuration_qwen.py`) in the
/// key names the rest of this module reads. Its MLP holds two matrices of
/// `intermediate_size / 2` rows each, `c_attn` splits into q, k and v of
/// `hidden_size` rows each (so `kv_channels × heads` must be `hidden_size`),
/// and `c_attn` always has a bias while `no_bias` (default true) removes the
/// others. `use_dynamic_ntk` and `use_logn_attn` (both default true) change
/// RoPE and scale queries only for positions beyond `seq_length`, so that is
/// the context this conversion describes (`max_position_embeddings`).
fn translate_qwen(c: &Cfg) -> Result<Map<String, Value>> {
    let hidden = c.req_u64("hidden_size")?;
    let heads = c.req_u64("num_attention_heads")?;
    let inter = c.req_u64("intermediate_size")?;
    if inter % 2 != 0 {
        return Err(c.err(format!(
            "Qwen `intermediate_size` {inter} must be even (its MLP matrices have intermediate_size / 2 rows)"
        )));
    }
    if !c.bool("no_bias")?.unwrap_or(true) {
        return Err(c.err(
            "Qwen `no_bias` is false: biases on `c_proj` and the MLP are not supported (published Qwen checkpoints have none)"
                .into(),
        ));
    }
    if let Some(kv) = c.u64("kv_channels")? {
        if kv.checked_mul(heads) != Some(hidden) {
            return Err(c.err(format!(
                "Qwen `kv_channels` {kv} × num_attention_heads {heads} is not hidden_size {hidden} (c_attn splits into hidden_size rows each)"
            )));
        }
    }
    let mut m = rekey(
        c,
        &[],
        &[
            ("layer_norm_epsilon", "rms_norm_eps"),
            ("rotary_emb_base", "rope_theta"),
            ("rotary_pct", "partial_rotary_factor"),
        ],
    );
    m.insert("intermediate_size".into(), (inter / 2).into());
    if qwen_extrapolates(c)? {
        if let Some(seq) = c.u64("seq_length")? {
            let max = c.u64("max_position_embeddings")?.unwrap_or(seq);
            m.insert("max_position_embeddings".into(), seq.min(max).into());
        }
    }
    Ok(m)
}

/// `Gemma3TextConfig`'s defaults for the keys a multimodal Gemma 3 config's
/// `text_config` may leave out (the published 4B/12B/27B configs give only
/// what differs from them).
const GEMMA3_TEXT_DEFAULTS: [(&str, u64); 6] = [
    ("hidden_size", 2304),
    ("intermediate_size", 9216),
    ("num_hidden_layers", 26),
    ("num_attention_heads", 8),
    ("num_key_value_heads", 4),
    ("vocab_size", 262_208),
];

/// The text model's config of a multimodal Gemma 3 checkpoint
/// (`Gemma3ForConditionalGeneration`): its `text_config` object over
/// `Gemma3TextConfig`'s defaults, with the top level's
/// `tie_word_embeddings` (default true) where the text config has none.
fn gemma3_text_config(c: &Cfg) -> Result<Map<String, Value>> {
    let text = c.object("text_config")?.ok_or_else(|| {
        c.err("a Gemma3ForConditionalGeneration config needs a `text_config` object".into())
    })?;
    if let Some(t) = text.str("model_type")? {
        if t != "gemma3_text" {
            return Err(c.err(format!(
                "`text_config.model_type` is {t:?}, not \"gemma3_text\""
            )));
        }
    }
    let mut m: Map<String, Value> = GEMMA3_TEXT_DEFAULTS
        .iter()
        .map(|(k, v)| ((*k).to_string(), Value::from(*v)))
        .collect();
    for (k, v) in text.map {
        m.insert(k.clone(), v.clone());
    }
    if !m.contains_key("tie_word_embeddings") {
        if let Some(tie) = c.bool("tie_word_embeddings")? {
            m.insert("tie_word_embeddings".into(), tie.into());
        }
    }
    Ok(m)
}

/// Keys of this module's (transformers') names that the remote-code
/// families' own code never reads: a stray one in their config must not be
/// taken for the real value, so [`rekey`] drops them.
const UNREAD_BY_REMOTE_CODE: [&str; 8] = [
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "partial_rotary_factor",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
];

/// A copy of a remote-code config in the key names this module reads: the
/// keys of [`UNREAD_BY_REMOTE_CODE`] and the family's own `remove` are
/// dropped, then each `(from, to)` rename copies the family's key to ours
/// where the config has it.
fn rekey(c: &Cfg, remove: &[&str], renames: &[(&str, &str)]) -> Map<String, Value> {
    let mut m = c.map.clone();
    for key in UNREAD_BY_REMOTE_CODE.iter().chain(remove) {
        m.remove(*key);
    }
    for (from, to) in renames {
        if let Some(v) = c.get(from) {
            m.insert((*to).into(), v.clone());
        }
    }
    m
}

/// Whether Qwen's `use_dynamic_ntk` or `use_logn_attn` (both default true)
/// is on: they change the maths past `seq_length`.
fn qwen_extrapolates(c: &Cfg) -> Result<bool> {
    Ok(c.bool("use_dynamic_ntk")?.unwrap_or(true) || c.bool("use_logn_attn")?.unwrap_or(true))
}

/// ChatGLM's config (`ChatGLMConfig` of its `configuration_chatglm.py`) in
/// the key names the rest of this module reads: `num_layers`,
/// `padded_vocab_size`, `ffn_hidden_size`, `kv_channels` (head size),
/// `multi_query_group_num` (KV heads, with `multi_query_attention`),
/// `layernorm_epsilon`, `seq_length`, and RoPE base `10000 × rope_ratio` on
/// half of each head (its `RotaryEmbedding(kv_channels // 2)`). The variants
/// the published checkpoints do not use (LayerNorm, residual after the norm,
/// no final norm, biases on other projections, no q/k/v biases) are refused.
fn translate_chatglm(c: &Cfg) -> Result<Map<String, Value>> {
    for (key, want, what) in [
        ("rmsnorm", true, "LayerNorm instead of RMSNorm"),
        (
            "apply_residual_connection_post_layernorm",
            false,
            "the residual taken after the norm",
        ),
        ("post_layer_norm", true, "no final norm"),
        ("add_bias_linear", false, "biases on every linear layer"),
        ("add_qkv_bias", true, "no q/k/v biases"),
    ] {
        if c.bool(key)? != Some(want) {
            return Err(c.err(format!(
                "ChatGLM `{key}` is not {want} ({what}, or the key is missing): not supported"
            )));
        }
    }
    let heads = c.req_u64("num_attention_heads")?;
    let mut m = rekey(
        c,
        &[
            "num_hidden_layers",
            "vocab_size",
            "intermediate_size",
            "max_position_embeddings",
        ],
        &[
            ("num_layers", "num_hidden_layers"),
            ("padded_vocab_size", "vocab_size"),
            ("ffn_hidden_size", "intermediate_size"),
            ("layernorm_epsilon", "rms_norm_eps"),
            ("kv_channels", "head_dim"),
            ("seq_length", "max_position_embeddings"),
        ],
    );
    if !m.contains_key("rms_norm_eps") {
        m.insert("rms_norm_eps".into(), CHATGLM_NORM_EPS.into());
    }
    let kv_heads = if c.bool("multi_query_attention")?.unwrap_or(false) {
        c.req_u64("multi_query_group_num")?
    } else {
        heads
    };
    m.insert("num_key_value_heads".into(), kv_heads.into());
    let ratio = c.f64("rope_ratio")?.unwrap_or(1.0);
    if !(ratio.is_finite() && ratio > 0.0) {
        return Err(c.err(format!(
            "ChatGLM `rope_ratio` {ratio} must be finite and positive"
        )));
    }
    m.insert("rope_theta".into(), (DEFAULT_ROPE_THETA * ratio).into());
    m.insert("partial_rotary_factor".into(), 0.5.into());
    Ok(m)
}

/// The routed experts of an MoE class (SPEC.md §5.2 `moe`); refuses the
/// layouts the container cannot describe (dense layers between MoE ones,
/// Qwen-MoE's sliding window).
fn parse_moe(c: &Cfg, fam: &Family, intermediate: u64) -> Result<Option<Moe>> {
    let count = |key: &str, default: u64| -> Result<u64> {
        let v = c.u64(key)?.unwrap_or(default);
        if v == 0 || v > MAX_WIDTH {
            return Err(c.err(format!("`{key}` = {v} is outside 1..={MAX_WIDTH}")));
        }
        Ok(v)
    };
    let moe = match fam.moe {
        MoeRule::None => return Ok(None),
        MoeRule::Mixtral => Moe {
            num_experts: count("num_local_experts", 8)?,
            top_k: count("num_experts_per_tok", 2)?,
            expert_intermediate_size: intermediate,
            normalize_top_k: true,
            shared_expert_intermediate_size: None,
        },
        MoeRule::Qwen {
            experts,
            top_k,
            width,
            shared,
        } => {
            let step = c.u64("decoder_sparse_step")?.unwrap_or(1);
            if step != 1 {
                return Err(c.err(format!(
                    "`decoder_sparse_step` = {step}: dense feed-forward layers between MoE layers are not supported (only 1, every layer MoE)"
                )));
            }
            match c.get("mlp_only_layers") {
                None => {}
                Some(Value::Array(a)) if a.is_empty() => {}
                Some(v) => {
                    return Err(c.err(format!(
                        "`mlp_only_layers` = {v}: dense feed-forward layers in an MoE model are not supported (only an empty list)"
                    )))
                }
            }
            if c.bool("use_sliding_window")?.unwrap_or(false) {
                return Err(c.err(format!(
                    "`use_sliding_window` is true: the sliding window of {} is not supported",
                    fam.class
                )));
            }
            Moe {
                num_experts: count("num_experts", experts)?,
                top_k: count("num_experts_per_tok", top_k)?,
                expert_intermediate_size: count("moe_intermediate_size", width)?,
                normalize_top_k: c.bool("norm_topk_prob")?.unwrap_or(false),
                shared_expert_intermediate_size: match shared {
                    Some(d) => Some(count("shared_expert_intermediate_size", d)?),
                    None => None,
                },
            }
        }
    };
    if moe.top_k > moe.num_experts {
        return Err(c.err(format!(
            "`num_experts_per_tok` = {} exceeds the {} experts",
            moe.top_k, moe.num_experts
        )));
    }
    Ok(Some(moe))
}

/// RoPE from the classic keys (`rope_theta`, `rope_scaling`) or from
/// transformers 5's `rope_parameters`.
fn parse_rope(c: &Cfg, fam: &Family, head_dim: u64, max_pos: u64) -> Result<Rope> {
    let params = c.object("rope_parameters")?;
    if let Some(p) = &params {
        let nested = p.get("rope_type").is_none()
            && p.get("rope_theta").is_none()
            && p.map.values().any(Value::is_object);
        if nested {
            return Err(c.err(
                "per-layer-type `rope_parameters` are not supported by these architectures".into(),
            ));
        }
    }
    let theta = match params
        .as_ref()
        .map(|p| p.f64("rope_theta"))
        .transpose()?
        .flatten()
    {
        Some(t) => t,
        None => c.f64("rope_theta")?.unwrap_or(DEFAULT_ROPE_THETA),
    };
    let scaling_src = match params {
        Some(p) => Some(p),
        None => c.object("rope_scaling")?,
    };
    let partial_src = params
        .map(|p| p.f64("partial_rotary_factor"))
        .transpose()?
        .flatten();
    let partial = match partial_src {
        Some(f) => f,
        None => c.f64("partial_rotary_factor")?.unwrap_or(1.0),
    };
    if !(partial > 0.0 && partial <= 1.0) {
        return Err(c.err(format!("partial_rotary_factor {partial} must be in (0, 1]")));
    }
    let rotary_dim = (head_dim as f64 * partial) as u64;
    if rotary_dim == 0 || rotary_dim % 2 != 0 {
        return Err(c.err(format!(
            "head_dim {head_dim} × partial_rotary_factor {partial} gives {rotary_dim} rotary dimensions (must be even and positive)"
        )));
    }
    let scaling = match &scaling_src {
        None => None,
        Some(s) => {
            let kind = match s.str("rope_type")? {
                Some(k) => Some(k),
                None => s.str("type")?,
            };
            let kind = match kind.unwrap_or("default") {
                k if fam.longrope_aliases.contains(&k) => "longrope",
                k => k,
            };
            let factor = |s: &Cfg| -> Result<f64> {
                s.f64("factor")?
                    .ok_or_else(|| c.err("rope scaling needs a `factor`".into()))
            };
            match kind {
                "default" => None,
                // InternLM2's dynamic NTK changes the base only for sequences
                // longer than max_position_embeddings: within it, default RoPE,
                // and the container says so (`max_context`, set by the caller).
                "dynamic" if fam.remote == Remote::InternLm2 => None,
                "linear" => Some(RopeScaling::Linear { factor: factor(s)? }),
                "llama3" => Some(RopeScaling::Llama3 {
                    factor: factor(s)?,
                    low_freq_factor: s.f64("low_freq_factor")?.ok_or_else(|| {
                        c.err("llama3 rope scaling needs `low_freq_factor`".into())
                    })?,
                    high_freq_factor: s.f64("high_freq_factor")?.ok_or_else(|| {
                        c.err("llama3 rope scaling needs `high_freq_factor`".into())
                    })?,
                    original_max_position_embeddings: s
                        .u64("original_max_position_embeddings")?
                        .ok_or_else(|| {
                            c.err(
                                "llama3 rope scaling needs `original_max_position_embeddings`"
                                    .into(),
                            )
                        })?,
                }),
                "longrope" => Some(parse_longrope(c, s, fam, rotary_dim, max_pos)?),
                other => {
                    return Err(c.err(format!(
                        "rope scaling type {other:?} is not supported (supported: default, linear, llama3, longrope{})",
                        fam.longrope_aliases
                            .iter()
                            .map(|a| format!(", {a} (= longrope)"))
                            .collect::<String>()
                    )))
                }
            }
        }
    };
    Ok(Rope {
        theta,
        rotary_dim,
        scaling,
    })
}

/// Gemma 3's two rotary embeddings, (full-attention layers, sliding layers),
/// as `Gemma3TextConfig` builds them: transformers 5's `rope_parameters`
/// holds one object per layer type (`full_attention`, `sliding_attention`);
/// older configs give `rope_theta` (default 1e6) and `rope_scaling` for the
/// full layers and `rope_local_base_freq` (default 1e4, never scaled) for
/// the sliding ones.
fn parse_gemma3_rope(c: &Cfg, fam: &Family, head_dim: u64, max_pos: u64) -> Result<(Rope, Rope)> {
    // One rope object in the keys `parse_rope` reads, and nothing else of the
    // config's rope keys.
    let one = |params: Map<String, Value>| -> Result<Rope> {
        let mut m = c.map.clone();
        for k in ["rope_scaling", "rope_theta", "partial_rotary_factor"] {
            m.remove(k);
        }
        m.insert("rope_parameters".into(), Value::Object(params));
        parse_rope(
            &Cfg {
                map: &m,
                path: c.path,
            },
            fam,
            head_dim,
            max_pos,
        )
    };
    let with_theta = |mut m: Map<String, Value>, theta: f64| {
        if m.get("rope_theta").is_none_or(Value::is_null) {
            m.insert("rope_theta".into(), theta.into());
        }
        m
    };
    if let Some(p) = c.object("rope_parameters")? {
        let full = p.object("full_attention")?;
        let sliding = p.object("sliding_attention")?;
        if full.is_none() && sliding.is_none() {
            return Err(c.err(
                "Gemma 3 `rope_parameters` must hold `full_attention` and `sliding_attention` objects"
                    .into(),
            ));
        }
        let own = |o: Option<Cfg>| o.map(|o| o.map.clone()).unwrap_or_default();
        return Ok((
            one(with_theta(own(full), GEMMA3_GLOBAL_THETA))?,
            one(with_theta(own(sliding), GEMMA3_LOCAL_THETA))?,
        ));
    }
    let mut full = match c.object("rope_scaling")? {
        Some(s) => s.map.clone(),
        None => Map::new(),
    };
    full.insert(
        "rope_theta".into(),
        c.f64("rope_theta")?.unwrap_or(GEMMA3_GLOBAL_THETA).into(),
    );
    let mut sliding = Map::new();
    sliding.insert(
        "rope_theta".into(),
        c.f64("rope_local_base_freq")?
            .unwrap_or(GEMMA3_LOCAL_THETA)
            .into(),
    );
    Ok((one(full)?, one(sliding)?))
}

/// LongRoPE as transformers reads it (`_compute_longrope_parameters` and
/// `standardize_rope_params`): the context length the short factors serve is
/// the config's top-level `original_max_position_embeddings` when the class
/// has one (Phi-3, default 4096) or the key is there, else the rope object's,
/// else `max_position_embeddings`; `factor` defaults to
/// `max_position_embeddings / original`, and `attention_factor` to
/// `sqrt(1 + ln(factor) / ln(original))` (1 when `factor ≤ 1`).
fn parse_longrope(
    c: &Cfg,
    s: &Cfg,
    fam: &Family,
    rotary_dim: u64,
    max_pos: u64,
) -> Result<RopeScaling> {
    let pairs = rotary_dim / 2;
    let list = |key: &str| -> Result<Vec<f64>> {
        let v = s
            .f64_list(key)?
            .ok_or_else(|| c.err(format!("longrope rope scaling needs `{key}`")))?;
        if v.len() as u64 != pairs {
            return Err(c.err(format!(
                "longrope `{key}` has {} values, but {rotary_dim} rotary dimensions need {pairs}",
                v.len()
            )));
        }
        if let Some(bad) = v.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
            return Err(c.err(format!(
                "longrope `{key}` holds {bad}; every factor must be finite and positive"
            )));
        }
        Ok(v)
    };
    let short_factor = list("short_factor")?;
    let long_factor = list("long_factor")?;
    let original = match (
        c.u64("original_max_position_embeddings")?,
        fam.original_max_default,
    ) {
        (Some(o), _) => o,
        (None, Some(d)) => d,
        (None, None) => s
            .u64("original_max_position_embeddings")?
            .unwrap_or(max_pos),
    };
    if original == 0 {
        return Err(c.err("longrope `original_max_position_embeddings` is 0".into()));
    }
    let factor = s.f64("factor")?.unwrap_or(max_pos as f64 / original as f64);
    let attention_factor = match s.f64("attention_factor")? {
        Some(a) => a,
        None if factor <= 1.0 => 1.0,
        None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
    };
    if !(attention_factor.is_finite() && attention_factor > 0.0) {
        return Err(c.err(format!(
            "longrope attention factor {attention_factor} (factor {factor}, original_max_position_embeddings {original}) must be finite and positive"
        )));
    }
    Ok(RopeScaling::LongRope {
        short_factor,
        long_factor,
        original_max_position_embeddings: original,
        attention_factor,
    })
}

/// The sliding window and the layers that use it.
fn parse_window(c: &Cfg, rule: WindowRule, layers: u64) -> Result<(Option<u64>, Option<Vec<u64>>)> {
    // `sliding_window`: absent means `default`, null or 0 means none.
    let window = |default: Option<u64>| -> Result<Option<u64>> {
        let w = match c.map.get("sliding_window") {
            None => default,
            Some(Value::Null) => None,
            Some(_) => c.u64("sliding_window")?,
        };
        Ok(w.filter(|&w| w > 0))
    };
    let sliding: Vec<u64> = match rule {
        WindowRule::None => return Ok((None, None)),
        WindowRule::AllLayers { default } => return Ok((window(default)?, None)),
        WindowRule::Qwen => {
            if !c.bool("use_sliding_window")?.unwrap_or(false) {
                return Ok((None, None));
            }
            match layer_types(c, layers)? {
                Some(l) => l,
                None => {
                    let first = c
                        .u64("max_window_layers")?
                        .unwrap_or(DEFAULT_MAX_WINDOW_LAYERS);
                    (first..layers).collect()
                }
            }
        }
        WindowRule::Gemma2 | WindowRule::Gemma3 => {
            // transformers builds the sliding mask for every Gemma 2 and 3
            // model and fails without a window.
            if window(Some(DEFAULT_WINDOW))?.is_none() {
                return Err(c.err(
                    "`sliding_window` must be a positive integer for Gemma 2 and 3 (transformers cannot run them without one)"
                        .into(),
                ));
            }
            match (layer_types(c, layers)?, rule) {
                (Some(l), _) => l,
                (None, WindowRule::Gemma2) => (0..layers).step_by(2).collect(),
                (None, _) => {
                    let pattern = match c.u64("sliding_window_pattern")? {
                        Some(p) => p,
                        None => c.u64("_sliding_window_pattern")?.unwrap_or(GEMMA3_PATTERN),
                    };
                    if pattern == 0 {
                        return Err(c.err("`sliding_window_pattern` is 0".into()));
                    }
                    (0..layers).filter(|i| (i + 1) % pattern != 0).collect()
                }
            }
        }
    };
    let Some(w) = window(Some(DEFAULT_WINDOW))? else {
        return Ok((None, None));
    };
    Ok(match sliding.len() as u64 {
        0 => (None, None),
        n if n == layers => (Some(w), None),
        _ => (Some(w), Some(sliding)),
    })
}

/// The layers `layer_types` marks `sliding_attention`, if the key is there.
fn layer_types(c: &Cfg, layers: u64) -> Result<Option<Vec<u64>>> {
    let types = match c.get("layer_types") {
        None => return Ok(None),
        Some(Value::Array(types)) => types,
        Some(v) => return Err(c.err(format!("`layer_types` must be a list, found {v}"))),
    };
    if types.len() as u64 != layers {
        return Err(c.err(format!(
            "`layer_types` has {} entries for {layers} layers",
            types.len()
        )));
    }
    let mut out = Vec::new();
    for (i, t) in types.iter().enumerate() {
        match t.as_str() {
            Some("sliding_attention") => out.push(i as u64),
            Some("full_attention") => {}
            _ => {
                return Err(c.err(format!(
                    "`layer_types[{i}]` = {t} is not sliding_attention or full_attention"
                )))
            }
        }
    }
    Ok(Some(out))
}

/// Special token ids for the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenIds {
    /// Beginning-of-sequence id.
    pub bos: Option<u32>,
    /// Ids that end generation.
    pub eos: Vec<u32>,
    /// Padding id.
    pub pad: Option<u32>,
}

/// Token ids from `generation_config.json` (when present), each falling back
/// to `config.json`. `eos_token_id` may be an integer or a list.
pub fn parse_token_ids(
    generation: Option<(&Value, &Path)>,
    config: &Value,
    config_path: &Path,
) -> Result<TokenIds> {
    let sources: Vec<(&Value, &Path)> = generation
        .into_iter()
        .chain(std::iter::once((config, config_path)))
        .collect();
    let id = |v: &Value, key: &str, path: &Path| -> Result<u32> {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| PrepError::Config {
                path: path.to_path_buf(),
                reason: format!("`{key}` must be a token id (0..2^32), found {v}"),
            })
    };
    let find = |key: &str| -> Option<(&Value, &Path)> {
        sources
            .iter()
            .find_map(|(json, path)| json.get(key).filter(|v| !v.is_null()).map(|v| (v, *path)))
    };
    let single =
        |key: &str| -> Result<Option<u32>> { find(key).map(|(v, p)| id(v, key, p)).transpose() };
    let eos = match find("eos_token_id") {
        None => Vec::new(),
        Some((Value::Array(list), p)) => list
            .iter()
            .map(|v| id(v, "eos_token_id", p))
            .collect::<Result<_>>()?,
        Some((v, p)) => vec![id(v, "eos_token_id", p)?],
    };
    Ok(TokenIds {
        bos: single("bos_token_id")?,
        eos,
        pad: single("pad_token_id")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn arch(v: Value) -> Result<Architecture> {
        parse_architecture(&v, Path::new("config.json"))
    }

    fn llama() -> Value {
        json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
               "vocab_size": 160, "rms_norm_eps": 1e-5, "rope_theta": 10000.0})
    }

    #[test]
    fn llama_defaults() {
        let a = arch(llama()).unwrap();
        assert_eq!(a.family, "llama");
        assert_eq!(a.head_dim, 16);
        assert_eq!(a.rope.rotary_dim, 16);
        assert_eq!(a.max_position_embeddings, 2048);
        assert!(!a.tie_word_embeddings && !a.attention_bias && !a.mlp_bias && !a.qk_norm);
        assert_eq!(a.sliding_window, None);
        assert_eq!(a.norm_eps, 1e-5);
    }

    #[test]
    fn llama_biases_and_rope_scaling() {
        let mut v = llama();
        v["attention_bias"] = json!(true);
        v["mlp_bias"] = json!(true);
        v["rope_scaling"] = json!({"type": "linear", "factor": 2.0});
        let a = arch(v.clone()).unwrap();
        assert!(a.attention_bias && a.attention_out_bias && a.mlp_bias);
        assert_eq!(a.rope.scaling, Some(RopeScaling::Linear { factor: 2.0 }));

        v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let a = arch(v.clone()).unwrap();
        assert!(matches!(
            a.rope.scaling,
            Some(RopeScaling::Llama3 {
                original_max_position_embeddings: 8192,
                ..
            })
        ));

        v["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0});
        let e = arch(v.clone()).unwrap_err().to_string();
        assert!(e.contains("\"yarn\"") && e.contains("config.json"), "{e}");

        v["rope_scaling"] = json!({"rope_type": "default"});
        assert_eq!(arch(v).unwrap().rope.scaling, None);
    }

    #[test]
    fn rope_parameters_layout() {
        let mut v = llama();
        v.as_object_mut().unwrap().remove("rope_theta");
        v["rope_parameters"] = json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
            "partial_rotary_factor": 0.5});
        v["dtype"] = json!("bfloat16");
        let a = arch(v).unwrap();
        assert_eq!(a.rope.theta, 500000.0);
        assert_eq!(a.rope.rotary_dim, 8);
        assert!(matches!(a.rope.scaling, Some(RopeScaling::Llama3 { .. })));
    }

    #[test]
    fn qwen2_window_and_bias() {
        let mut v = llama();
        v["architectures"] = json!(["Qwen2ForCausalLM"]);
        v["sliding_window"] = json!(4);
        v["max_window_layers"] = json!(1);
        v["use_sliding_window"] = json!(false);
        let a = arch(v.clone()).unwrap();
        assert!(a.attention_bias && !a.attention_out_bias);
        assert_eq!(a.sliding_window, None);
        v["use_sliding_window"] = json!(true);
        let a = arch(v.clone()).unwrap();
        assert_eq!(a.sliding_window, Some(4));
        assert_eq!(a.sliding_window_layers, Some(vec![1]));
        v["max_window_layers"] = json!(0);
        assert_eq!(arch(v.clone()).unwrap().sliding_window_layers, None);
        v["layer_types"] = json!(["sliding_attention", "full_attention"]);
        assert_eq!(arch(v).unwrap().sliding_window_layers, Some(vec![0]));
    }

    #[test]
    fn qwen3_head_dim_default_and_norm() {
        let mut v = llama();
        v["architectures"] = json!(["Qwen3ForCausalLM"]);
        let a = arch(v.clone()).unwrap();
        assert_eq!(a.head_dim, 128);
        assert!(a.qk_norm && !a.attention_bias);
        v["head_dim"] = json!(16);
        v["attention_bias"] = json!(true);
        let a = arch(v).unwrap();
        assert_eq!(a.head_dim, 16);
        assert!(a.attention_bias && a.attention_out_bias);
    }

    #[test]
    fn mistral_window() {
        let mut v = llama();
        v["architectures"] = json!(["MistralForCausalLM"]);
        assert_eq!(arch(v.clone()).unwrap().sliding_window, Some(4096));
        v["sliding_window"] = Value::Null;
        assert_eq!(arch(v.clone()).unwrap().sliding_window, None);
        v["sliding_window"] = json!(5);
        v["head_dim"] = Value::Null;
        let a = arch(v).unwrap();
        assert_eq!((a.sliding_window, a.head_dim), (Some(5), 16));
    }

    fn gemma2() -> Value {
        json!({"architectures": ["Gemma2ForCausalLM"], "hidden_size": 72, "num_hidden_layers": 3,
               "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
               "intermediate_size": 128, "vocab_size": 160, "query_pre_attn_scalar": 24,
               "sliding_window": 4, "hidden_act": "silu"})
    }

    #[test]
    fn gemma2_extras_and_defaults() {
        let a = arch(gemma2()).unwrap();
        assert_eq!(
            (a.family.as_str(), a.activation),
            ("gemma2", Activation::GeluTanh)
        );
        assert!(a.tie_word_embeddings && a.post_norms && !a.attention_bias && !a.qk_norm);
        assert_eq!(a.attention_scale, Some(24f64.powf(-0.5)));
        assert_eq!(a.attn_logit_softcap, Some(50.0));
        assert_eq!(a.final_logit_softcap, Some(30.0));
        assert_eq!(a.embedding_multiplier, Some(72f64.sqrt()));
        // Layers 0 and 2 slide, as transformers' default `layer_types` says.
        assert_eq!(a.sliding_window, Some(4));
        assert_eq!(a.sliding_window_layers, Some(vec![0, 2]));
        assert_eq!(
            (a.head_dim, a.norm_eps, a.max_position_embeddings),
            (16, 1e-6, 8192)
        );

        let mut v = gemma2();
        v["attn_logit_softcapping"] = Value::Null;
        v["final_logit_softcapping"] = json!(5.0);
        v["layer_types"] = json!(["full_attention", "sliding_attention", "full_attention"]);
        v["tie_word_embeddings"] = json!(false);
        v.as_object_mut().unwrap().remove("head_dim");
        v.as_object_mut().unwrap().remove("sliding_window");
        let a = arch(v).unwrap();
        assert_eq!(
            (a.attn_logit_softcap, a.final_logit_softcap),
            (None, Some(5.0))
        );
        assert_eq!(a.sliding_window, Some(4096));
        assert_eq!(a.sliding_window_layers, Some(vec![1]));
        assert_eq!((a.head_dim, a.tie_word_embeddings), (256, false));

        for bad in [Value::Null, json!(0)] {
            let mut v = gemma2();
            v["sliding_window"] = bad;
            assert!(arch(v).unwrap_err().to_string().contains("sliding_window"));
        }
        let mut v = gemma2();
        v["hidden_activation"] = json!("gelu");
        let e = arch(v).unwrap_err().to_string();
        assert!(
            e.contains("hidden_activation") && e.contains("\"gelu\""),
            "{e}"
        );
        let mut v = gemma2();
        v["use_bidirectional_attention"] = json!(true);
        assert!(arch(v).unwrap_err().to_string().contains("causal"));
        let mut v = gemma2();
        v["query_pre_attn_scalar"] = json!(0);
        assert!(arch(v)
            .unwrap_err()
            .to_string()
            .contains("query_pre_attn_scalar"));
    }

    fn gemma3() -> Value {
        json!({"architectures": ["Gemma3ForCausalLM"], "hidden_size": 72, "num_hidden_layers": 13,
               "num_attention_heads": 4, "num_key_value_heads": 1, "intermediate_size": 128,
               "vocab_size": 160, "sliding_window": 512})
    }

    #[test]
    fn gemma3_defaults_rope_per_layer_type_and_window_pattern() {
        let a = arch(gemma3()).unwrap();
        assert_eq!(
            (a.family.as_str(), a.activation),
            ("gemma3", Activation::GeluTanh)
        );
        assert!(a.tie_word_embeddings && a.post_norms && a.qk_norm && !a.attention_bias);
        assert_eq!((a.attn_logit_softcap, a.final_logit_softcap), (None, None));
        assert_eq!(a.attention_scale, Some(256f64.powf(-0.5)));
        assert_eq!(a.embedding_multiplier, Some(72f64.sqrt()));
        assert_eq!((a.head_dim, a.max_position_embeddings), (256, 131_072));
        // Five sliding layers in six: layers 5 and 11 are full.
        let full: Vec<u64> = (0..13)
            .filter(|l| !a.sliding_window_layers.as_ref().unwrap().contains(l))
            .collect();
        assert_eq!((a.sliding_window, full), (Some(512), vec![5, 11]));
        assert_eq!((a.rope.theta, &a.rope.scaling), (1e6, &None));
        let local = a.sliding_rope.clone().unwrap();
        assert_eq!(
            (local.theta, local.rotary_dim, local.scaling),
            (1e4, 256, None)
        );

        // Classic keys: rope_scaling applies to the full layers only.
        let mut v = gemma3();
        v["rope_theta"] = json!(500000.0);
        v["rope_local_base_freq"] = json!(20000.0);
        v["rope_scaling"] = json!({"rope_type": "linear", "factor": 8.0});
        v["sliding_window_pattern"] = json!(2);
        v["final_logit_softcapping"] = json!(30.0);
        let a = arch(v).unwrap();
        assert_eq!(a.rope.theta, 500000.0);
        assert_eq!(a.rope.scaling, Some(RopeScaling::Linear { factor: 8.0 }));
        let local = a.sliding_rope.unwrap();
        assert_eq!((local.theta, local.scaling), (20000.0, None));
        assert_eq!(
            a.sliding_window_layers,
            Some((0..13).step_by(2).collect::<Vec<u64>>())
        );
        assert_eq!(a.final_logit_softcap, Some(30.0));

        // transformers 5's rope_parameters, one object per layer type, and layer_types.
        let mut v = gemma3();
        v["num_hidden_layers"] = json!(2);
        v["layer_types"] = json!(["full_attention", "sliding_attention"]);
        v["rope_parameters"] = json!({
            "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}});
        let a = arch(v).unwrap();
        assert_eq!(a.rope.scaling, Some(RopeScaling::Linear { factor: 4.0 }));
        assert_eq!(a.sliding_rope.unwrap().theta, 1e4);
        assert_eq!(a.sliding_window_layers, Some(vec![1]));

        let mut v = gemma3();
        v["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 1e6});
        let e = arch(v).unwrap_err().to_string();
        assert!(e.contains("full_attention"), "{e}");
        let mut v = gemma3();
        v["sliding_window_pattern"] = json!(0);
        assert!(arch(v)
            .unwrap_err()
            .to_string()
            .contains("sliding_window_pattern"));
        let mut v = gemma3();
        v["sliding_window"] = Value::Null;
        assert!(arch(v).unwrap_err().to_string().contains("sliding_window"));
    }

    #[test]
    fn gemma3_multimodal_reads_its_text_config_over_the_defaults() {
        // As google/gemma-3-4b-it's config.json: text_config gives only what
        // differs from Gemma3TextConfig's defaults.
        let v = json!({"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
                       "text_config": {"model_type": "gemma3_text", "hidden_size": 2560,
                                       "intermediate_size": 10240, "num_hidden_layers": 34,
                                       "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                                       "sliding_window": 1024},
                       "vision_config": {"model_type": "siglip_vision_model"}});
        let a = arch(v).unwrap();
        assert_eq!(
            (a.family.as_str(), a.source_class.as_str()),
            ("gemma3", "Gemma3ForConditionalGeneration")
        );
        assert_eq!(
            (
                a.hidden_size,
                a.num_layers,
                a.num_attention_heads,
                a.num_kv_heads
            ),
            (2560, 34, 8, 4)
        );
        assert_eq!((a.head_dim, a.vocab_size), (256, 262_208));
        assert!(a.tie_word_embeddings && a.qk_norm && a.post_norms);
        assert_eq!(a.rope.scaling, Some(RopeScaling::Linear { factor: 8.0 }));
        assert_eq!(a.sliding_rope.unwrap().theta, 1e4);
        assert_eq!(a.sliding_window, Some(1024));

        let e = arch(json!({"architectures": ["Gemma3ForConditionalGeneration"]}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("text_config"), "{e}");
        let e = arch(json!({"architectures": ["Gemma3ForConditionalGeneration"],
                            "text_config": {"model_type": "llama"}}))
        .unwrap_err()
        .to_string();
        assert!(e.contains("gemma3_text"), "{e}");
    }

    fn phi3() -> Value {
        json!({"architectures": ["Phi3ForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
               "vocab_size": 160, "max_position_embeddings": 64,
               "original_max_position_embeddings": 8, "rope_theta": 10000.0,
               "rope_scaling": {"type": "longrope", "short_factor": [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7],
                                "long_factor": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]}})
    }

    fn longrope(a: &Architecture) -> (Vec<f64>, Vec<f64>, u64, f64) {
        match &a.rope.scaling {
            Some(RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings,
                attention_factor,
            }) => (
                short_factor.clone(),
                long_factor.clone(),
                *original_max_position_embeddings,
                *attention_factor,
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn phi3_longrope_as_transformers_reads_it() {
        let a = arch(phi3()).unwrap();
        assert_eq!(
            (a.family.as_str(), a.activation),
            ("phi3", Activation::Silu)
        );
        assert!(!a.tie_word_embeddings && !a.post_norms && !a.attention_bias);
        assert_eq!((a.sliding_window, a.rope.rotary_dim), (None, 16));
        let (short, long, original, attention) = longrope(&a);
        assert_eq!((short[7], long[7], original), (1.7, 8.0, 8));
        // factor 64 / 8: sqrt(1 + ln 8 / ln 8)
        assert!((attention - 2f64.sqrt()).abs() < 1e-15);

        // `su` and (for Phi-3 only) `yarn` are transformers' aliases of longrope.
        for alias in ["su", "yarn"] {
            let mut v = phi3();
            v["rope_scaling"]["type"] = json!(alias);
            assert_eq!(longrope(&arch(v).unwrap()).2, 8);
        }
        let mut v = phi3();
        v["architectures"] = json!(["LlamaForCausalLM"]);
        v["rope_scaling"]["type"] = json!("su");
        assert!(arch(v).unwrap_err().to_string().contains("\"su\""));

        // The top-level original_max_position_embeddings wins; Phi-3's default is 4096.
        let mut v = phi3();
        v["rope_scaling"]["original_max_position_embeddings"] = json!(16);
        assert_eq!(longrope(&arch(v.clone()).unwrap()).2, 8);
        v.as_object_mut()
            .unwrap()
            .remove("original_max_position_embeddings");
        assert_eq!(longrope(&arch(v.clone()).unwrap()), {
            let (s, l, _, _) = longrope(&arch(phi3()).unwrap());
            (s, l, 4096, 1.0)
        });
        // Other classes: the rope object's value, else max_position_embeddings.
        v["architectures"] = json!(["LlamaForCausalLM"]);
        assert_eq!(longrope(&arch(v.clone()).unwrap()).2, 16);
        v["rope_scaling"]
            .as_object_mut()
            .unwrap()
            .remove("original_max_position_embeddings");
        assert_eq!(longrope(&arch(v).unwrap()).2, 64);

        let mut v = phi3();
        v["rope_scaling"]["attention_factor"] = json!(1.25);
        assert_eq!(longrope(&arch(v.clone()).unwrap()).3, 1.25);
        v["rope_scaling"]["factor"] = json!(4.0);
        v["rope_scaling"]
            .as_object_mut()
            .unwrap()
            .remove("attention_factor");
        let want = (1.0 + 4f64.ln() / 8f64.ln()).sqrt();
        assert_eq!(longrope(&arch(v).unwrap()).3, want);

        // transformers 5's rope_parameters layout, with partial rotary (Phi-4-mini style).
        let mut v = phi3();
        v.as_object_mut().unwrap().remove("rope_scaling");
        v["rope_parameters"] = json!({"rope_type": "longrope", "rope_theta": 250000.0,
            "partial_rotary_factor": 0.75, "short_factor": vec![1.0; 6], "long_factor": vec![2.0; 6],
            "original_max_position_embeddings": 8});
        let a = arch(v).unwrap();
        assert_eq!((a.rope.theta, a.rope.rotary_dim), (250000.0, 12));
        assert_eq!(longrope(&a).1, vec![2.0; 6]);

        let mut v = phi3();
        v["rope_scaling"]["short_factor"] = json!([1.0, 1.0]);
        let e = arch(v).unwrap_err().to_string();
        assert!(e.contains("short_factor") && e.contains("need 8"), "{e}");
        let mut v = phi3();
        v["rope_scaling"]["long_factor"][2] = json!(0.0);
        assert!(arch(v).unwrap_err().to_string().contains("long_factor"));
        let mut v = phi3();
        v["rope_scaling"]
            .as_object_mut()
            .unwrap()
            .remove("long_factor");
        assert!(arch(v)
            .unwrap_err()
            .to_string()
            .contains("needs `long_factor`"));
        let mut v = phi3();
        v["rope_scaling"]["short_factor"] = json!("1.0");
        assert!(arch(v).unwrap_err().to_string().contains("list of numbers"));
        let mut v = phi3();
        v["rope_scaling"]["type"] = json!("dynamic");
        let e = arch(v).unwrap_err().to_string();
        assert!(e.contains("\"dynamic\"") && e.contains("longrope"), "{e}");
    }

    #[test]
    fn phi3_plain_and_window() {
        let mut v = phi3();
        v.as_object_mut().unwrap().remove("rope_scaling");
        v["sliding_window"] = json!(7);
        let a = arch(v.clone()).unwrap();
        assert_eq!(a.rope.scaling, None);
        assert_eq!((a.sliding_window, a.sliding_window_layers), (Some(7), None));
        v["rope_scaling"] = Value::Null;
        v.as_object_mut().unwrap().remove("sliding_window");
        assert_eq!(arch(v).unwrap().sliding_window, None);
    }

    fn internlm2() -> Value {
        json!({"architectures": ["InternLM2ForCausalLM"], "auto_map": {}, "hidden_size": 64,
               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "intermediate_size": 128, "vocab_size": 160, "bias": false, "rms_norm_eps": 1e-5,
               "rope_theta": 1000000, "rope_scaling": {"type": "linear", "factor": 2.0}})
    }

    #[test]
    fn internlm2_keys_and_bias() {
        let a = arch(internlm2()).unwrap();
        assert_eq!(
            (a.family.as_str(), a.head_dim, a.num_kv_heads),
            ("internlm2", 16, 2)
        );
        assert_eq!((a.rope.theta, a.max_position_embeddings), (1e6, 2048));
        assert_eq!(a.rope.scaling, Some(RopeScaling::Linear { factor: 2.0 }));
        assert!(!a.attention_bias && !a.attention_out_bias && !a.tie_word_embeddings);
        assert_eq!(a.max_context, None);
        let mut v = internlm2();
        v["rope_scaling"] = json!({"type": "dynamic", "factor": 2.0});
        v["max_position_embeddings"] = json!(32768);
        let a = arch(v).unwrap();
        assert_eq!((a.rope.scaling, a.max_context), (None, Some(32768)));
        let mut v = internlm2();
        v["architectures"] = json!(["LlamaForCausalLM"]);
        v["rope_scaling"] = json!({"type": "dynamic", "factor": 2.0});
        assert!(arch(v).unwrap_err().to_string().contains("\"dynamic\""));
        let mut v = internlm2();
        v.as_object_mut().unwrap().remove("bias");
        let e = arch(v).unwrap_err().to_string();
        assert!(e.contains("`bias`") && e.contains("default"), "{e}");
    }

    fn baichuan2() -> Value {
        json!({"architectures": ["BaichuanForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 160,
               "max_position_embeddings": 4096, "model_max_length": 4096})
    }

    #[test]
    fn baichuan2_7b_rope_and_13b_alibi() {
        let a = arch(baichuan2()).unwrap();
        assert_eq!(
            (a.family.as_str(), a.num_kv_heads, a.head_dim),
            ("baichuan", 4, 16)
        );
        assert_eq!((a.rope.theta, a.rope.rotary_dim), (10000.0, 16));
        assert_eq!(a.rope.scaling, None);
        // The modeling code reads no rope keys.
        let mut v = baichuan2();
        v["rope_theta"] = json!(5e5);
        assert_eq!(arch(v).unwrap().rope.theta, 10000.0);
        assert!(!a.alibi);
        let mut v = baichuan2();
        v.as_object_mut().unwrap().remove("max_position_embeddings");
        v["model_max_length"] = json!(512);
        let a = arch(v).unwrap();
        assert!(a.alibi);
        assert_eq!(a.max_position_embeddings, 512);
    }

    #[test]
    fn qwen_keys_translated() {
        let v = json!({"architectures": ["QWenLMHeadModel"], "hidden_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256,
            "vocab_size": 160, "kv_channels": 16, "layer_norm_epsilon": 1e-6,
            "rotary_emb_base": 50000, "rotary_pct": 1.0, "no_bias": true,
            "max_position_embeddings": 8192, "seq_length": 2048});
        let a = arch(v.clone()).unwrap();
        assert_eq!(
            (a.family.as_str(), a.intermediate_size, a.num_kv_heads),
            ("qwen", 128, 4)
        );
        assert_eq!(
            (a.norm_eps, a.rope.theta, a.rope.rotary_dim),
            (1e-6, 5e4, 16)
        );
        assert!(a.attention_bias && !a.attention_out_bias && !a.mlp_bias);
        // use_dynamic_ntk / use_logn_attn (default on) change the maths past seq_length.
        assert_eq!(
            (a.max_position_embeddings, a.max_context),
            (2048, Some(2048))
        );
        let mut w = v.clone();
        w["use_dynamic_ntk"] = json!(false);
        w["use_logn_attn"] = json!(false);
        let a = arch(w).unwrap();
        assert_eq!((a.max_position_embeddings, a.max_context), (8192, None));
        for (key, bad, msg) in [
            ("no_bias", json!(false), "no_bias"),
            ("kv_channels", json!(8), "kv_channels"),
            ("intermediate_size", json!(255), "even"),
        ] {
            let mut w = v.clone();
            w[key] = bad;
            let e = arch(w).unwrap_err().to_string();
            assert!(e.contains(msg), "{e}");
        }
    }

    fn chatglm() -> Value {
        json!({"architectures": ["ChatGLMModel"], "hidden_size": 64, "num_layers": 2,
            "num_attention_heads": 4, "multi_query_attention": true, "multi_query_group_num": 2,
            "kv_channels": 16, "ffn_hidden_size": 128, "padded_vocab_size": 160,
            "layernorm_epsilon": 1e-5, "seq_length": 8192, "rope_ratio": 500, "rmsnorm": true,
            "apply_residual_connection_post_layernorm": false, "post_layer_norm": true,
            "add_bias_linear": false, "add_qkv_bias": true})
    }

    #[test]
    fn chatglm_keys_translated() {
        let a = arch(chatglm()).unwrap();
        assert_eq!(
            (
                a.family.as_str(),
                a.num_layers,
                a.vocab_size,
                a.num_kv_heads
            ),
            ("chatglm", 2, 160, 2)
        );
        assert_eq!((a.head_dim, a.rope.rotary_dim, a.rope.theta), (16, 8, 5e6));
        assert_eq!(
            (a.intermediate_size, a.max_position_embeddings),
            (128, 8192)
        );
        assert!(a.attention_bias && !a.attention_out_bias);
        let mut v = chatglm();
        v["architectures"] = json!(["ChatGLMForConditionalGeneration"]);
        v["multi_query_attention"] = json!(false);
        assert_eq!(arch(v).unwrap().num_kv_heads, 4);
        for key in ["rmsnorm", "post_layer_norm", "add_qkv_bias"] {
            let mut v = chatglm();
            v[key] = json!(false);
            assert!(arch(v).unwrap_err().to_string().contains(key));
        }
        let mut v = chatglm();
        v["add_bias_linear"] = json!(true);
        assert!(arch(v).unwrap_err().to_string().contains("add_bias_linear"));
    }

    #[test]
    fn moe_classes() {
        let mut v = llama();
        v["architectures"] = json!(["MixtralForCausalLM"]);
        v["num_local_experts"] = json!(4);
        let a = arch(v.clone()).unwrap();
        let m = a.moe.unwrap();
        assert_eq!(
            (m.num_experts, m.top_k, m.expert_intermediate_size),
            (4, 2, 128)
        );
        assert!(m.normalize_top_k && m.shared_expert_intermediate_size.is_none());
        assert_eq!((a.family.as_str(), a.sliding_window), ("mixtral", None));
        v["num_experts_per_tok"] = json!(5);
        assert!(arch(v).unwrap_err().to_string().contains("exceeds"));

        let mut v = llama();
        v["architectures"] = json!(["Qwen2MoeForCausalLM"]);
        v["num_experts"] = json!(4);
        v["num_experts_per_tok"] = json!(2);
        v["moe_intermediate_size"] = json!(32);
        v["shared_expert_intermediate_size"] = json!(48);
        let a = arch(v.clone()).unwrap();
        let m = a.moe.unwrap();
        assert_eq!(m.shared_expert_intermediate_size, Some(48));
        assert!(!m.normalize_top_k && a.attention_bias && !a.attention_out_bias);
        v["qkv_bias"] = json!(false);
        assert!(!arch(v.clone()).unwrap().attention_bias);
        for (key, bad) in [
            ("decoder_sparse_step", json!(2)),
            ("mlp_only_layers", json!([1])),
            ("use_sliding_window", json!(true)),
        ] {
            let mut w = v.clone();
            w[key] = bad;
            assert!(arch(w).unwrap_err().to_string().contains(key), "{key}");
        }

        let mut v = llama();
        v["architectures"] = json!(["Qwen3MoeForCausalLM"]);
        v["norm_topk_prob"] = json!(true);
        let a = arch(v).unwrap();
        let m = a.moe.unwrap();
        assert_eq!(
            (m.num_experts, m.top_k, m.expert_intermediate_size),
            (128, 8, 768)
        );
        assert!(m.normalize_top_k && a.qk_norm && m.shared_expert_intermediate_size.is_none());
        assert_eq!(a.head_dim, 16);
    }

    #[test]
    fn every_family_is_listed_as_supported() {
        let classes: Vec<&str> = FAMILIES.iter().map(|f| f.class).collect();
        assert_eq!(classes, SUPPORTED_CLASSES);
    }

    #[test]
    fn errors() {
        let mut v = llama();
        v["architectures"] = json!(["GPT2LMHeadModel"]);
        let e = arch(v).unwrap_err().to_string();
        for class in SUPPORTED_CLASSES {
            assert!(e.contains("GPT2LMHeadModel") && e.contains(class), "{e}");
        }
        let mut v = llama();
        v.as_object_mut().unwrap().remove("hidden_size");
        assert!(arch(v).unwrap_err().to_string().contains("hidden_size"));
        let mut v = llama();
        v["num_key_value_heads"] = json!(3);
        assert!(arch(v).unwrap_err().to_string().contains("multiple"));
        let mut v = llama();
        v["hidden_act"] = json!("gelu");
        assert!(arch(v).unwrap_err().to_string().contains("gelu"));
        let mut v = llama();
        v["quantization_config"] = json!({"quant_method": "gptq"});
        assert!(arch(v).unwrap_err().to_string().contains("quantized"));
        let mut v = llama();
        v["num_hidden_layers"] = json!(1u64 << 40);
        assert!(arch(v)
            .unwrap_err()
            .to_string()
            .contains("num_hidden_layers"));
        let mut v = llama();
        v["vocab_size"] = json!("big");
        assert!(arch(v).unwrap_err().to_string().contains("vocab_size"));
    }

    #[test]
    fn token_ids() {
        let gen = json!({"bos_token_id": 1, "eos_token_id": [2, 7]});
        let cfg = json!({"bos_token_id": 9, "eos_token_id": 3, "pad_token_id": 0});
        let p = Path::new("x.json");
        let t = parse_token_ids(Some((&gen, p)), &cfg, p).unwrap();
        assert_eq!(
            t,
            TokenIds {
                bos: Some(1),
                eos: vec![2, 7],
                pad: Some(0)
            }
        );
        let t = parse_token_ids(None, &cfg, p).unwrap();
        assert_eq!(
            t,
            TokenIds {
                bos: Some(9),
                eos: vec![3],
                pad: Some(0)
            }
        );
        let bad = json!({"eos_token_id": -1});
        let e = parse_token_ids(None, &bad, p).unwrap_err();
        assert!(
            matches!(&e, PrepError::Config { path, reason }
                if path == p && reason.contains("`eos_token_id` must be a token id")),
            "{e}"
        );
    }
}
