//! Reads a Hugging Face `config.json` (and `generation_config.json`) into the
//! container's normalized architecture description and token ids.
//!
//! Defaults follow the transformers configuration classes of each supported
//! family, so a key that is absent means what it means to transformers.

use std::path::Path;

use serde_json::{Map, Value};
use strata_format::manifest::{Activation, Architecture, Rope, RopeScaling};

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
}

/// How a class describes its sliding window.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WindowRule {
    None,
    /// `sliding_window` on every layer; absent means 4096, null means none.
    Mistral,
    /// Only with `use_sliding_window`; layers from `layer_types` or `≥ max_window_layers`.
    Qwen,
}

const FAMILIES: [Family; 4] = [
    Family {
        class: "LlamaForCausalLM",
        family: "llama",
        head_dim_default: None,
        max_position_default: 2048,
        attention_bias_key: true,
        qkv_bias: false,
        mlp_bias_key: true,
        qk_norm: false,
        window: WindowRule::None,
    },
    Family {
        class: "MistralForCausalLM",
        family: "mistral",
        head_dim_default: None,
        max_position_default: 4096 * 32,
        attention_bias_key: false,
        qkv_bias: false,
        mlp_bias_key: false,
        qk_norm: false,
        window: WindowRule::Mistral,
    },
    Family {
        class: "Qwen2ForCausalLM",
        family: "qwen2",
        head_dim_default: None,
        max_position_default: 32768,
        attention_bias_key: false,
        qkv_bias: true,
        mlp_bias_key: false,
        qk_norm: false,
        window: WindowRule::Qwen,
    },
    Family {
        class: "Qwen3ForCausalLM",
        family: "qwen3",
        head_dim_default: Some(128),
        max_position_default: 32768,
        attention_bias_key: true,
        qkv_bias: false,
        mlp_bias_key: false,
        qk_norm: true,
        window: WindowRule::Qwen,
    },
];

/// Upper bound on layer and head counts (the manifest's limit).
const MAX_COUNT: u64 = 1 << 20;
/// Upper bound on widths (the manifest's limit).
const MAX_WIDTH: u64 = 1 << 24;
/// transformers' default RMSNorm epsilon for all supported classes.
const DEFAULT_NORM_EPS: f64 = 1e-6;
/// transformers' default RoPE base for all supported classes.
const DEFAULT_ROPE_THETA: f64 = 10000.0;
/// transformers' default window of Mistral and Qwen configs.
const DEFAULT_WINDOW: u64 = 4096;
/// transformers' default `max_window_layers` of Qwen configs.
const DEFAULT_MAX_WINDOW_LAYERS: u64 = 28;

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
    let act = c.str("hidden_act")?.unwrap_or("silu");
    let activation = match act {
        "silu" | "swish" => Activation::Silu,
        other => {
            return Err(c.err(format!(
                "hidden_act {other:?} is not supported for {} (only silu)",
                fam.class
            )))
        }
    };
    let norm_eps = c.f64("rms_norm_eps")?.unwrap_or(DEFAULT_NORM_EPS);
    let max_pos = c
        .u64("max_position_embeddings")?
        .unwrap_or(fam.max_position_default);
    let tie = c.bool("tie_word_embeddings")?.unwrap_or(false);
    let rope = parse_rope(&c, head_dim)?;

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

    Ok(Architecture {
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
        attention_bias: attn_bias_flag || fam.qkv_bias,
        attention_out_bias: attn_bias_flag,
        mlp_bias,
        qk_norm: fam.qk_norm,
        sliding_window,
        sliding_window_layers,
        moe: None,
        attn_logit_softcap: None,
        final_logit_softcap: None,
        attention_scale: None,
        embedding_multiplier: None,
    })
}

/// RoPE from the classic keys (`rope_theta`, `rope_scaling`) or from
/// transformers 5's `rope_parameters`.
fn parse_rope(c: &Cfg, head_dim: u64) -> Result<Rope> {
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
    let scaling = match &scaling_src {
        None => None,
        Some(s) => {
            let kind = match s.str("rope_type")? {
                Some(k) => Some(k),
                None => s.str("type")?,
            };
            let factor = |s: &Cfg| -> Result<f64> {
                s.f64("factor")?
                    .ok_or_else(|| c.err("rope scaling needs a `factor`".into()))
            };
            match kind.unwrap_or("default") {
                "default" => None,
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
                other => {
                    return Err(c.err(format!(
                        "rope scaling type {other:?} is not supported (supported: default, linear, llama3)"
                    )))
                }
            }
        }
    };
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
    Ok(Rope {
        theta,
        rotary_dim,
        scaling,
    })
}

/// The sliding window and the layers that use it.
fn parse_window(c: &Cfg, rule: WindowRule, layers: u64) -> Result<(Option<u64>, Option<Vec<u64>>)> {
    match rule {
        WindowRule::None => Ok((None, None)),
        WindowRule::Mistral => {
            let w = match c.map.get("sliding_window") {
                None => Some(DEFAULT_WINDOW),
                Some(Value::Null) => None,
                Some(_) => c.u64("sliding_window")?,
            };
            Ok((w.filter(|&w| w > 0), None))
        }
        WindowRule::Qwen => {
            if !c.bool("use_sliding_window")?.unwrap_or(false) {
                return Ok((None, None));
            }
            let w = match c.map.get("sliding_window") {
                None => Some(DEFAULT_WINDOW),
                Some(Value::Null) => None,
                Some(_) => c.u64("sliding_window")?,
            };
            let Some(w) = w.filter(|&w| w > 0) else {
                return Ok((None, None));
            };
            let sliding: Vec<u64> = match c.get("layer_types") {
                Some(Value::Array(types)) => {
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
                    out
                }
                Some(v) => return Err(c.err(format!("`layer_types` must be a list, found {v}"))),
                None => {
                    let first = c
                        .u64("max_window_layers")?
                        .unwrap_or(DEFAULT_MAX_WINDOW_LAYERS);
                    (first..layers).collect()
                }
            };
            Ok(match sliding.len() as u64 {
                0 => (None, None),
                n if n == layers => (Some(w), None),
                _ => (Some(w), Some(sliding)),
            })
        }
    }
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

    #[test]
    fn errors() {
        let mut v = llama();
        v["architectures"] = json!(["GPT2LMHeadModel"]);
        let e = arch(v).unwrap_err().to_string();
        assert!(
            e.contains("GPT2LMHeadModel") && e.contains("Qwen3ForCausalLM"),
            "{e}"
        );
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
        assert!(parse_token_ids(None, &bad, p).is_err());
    }
}
