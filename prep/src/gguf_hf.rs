//! A parsed GGUF file ([`crate::gguf`]) seen as the Hugging Face checkpoint
//! folder llama.cpp's converter made it from, so that `prep FILE.gguf` can
//! convert it like a folder: `config.json`, `generation_config.json`,
//! `tokenizer.json`, `tokenizer_config.json`, and, for every GGUF tensor the
//! Hugging Face model has, its name, its shape and the transform that undoes
//! what llama.cpp's `convert_hf_to_gguf.py` did to it.
//!
//! Architectures (`general.architecture`) and what they become:
//!
//! | GGUF | class | notes |
//! | --- | --- | --- |
//! | `llama` (Llama 1–3.x, Mistral, SmolLM2) | `LlamaForCausalLM` | q/k rows un-permuted; llama3 RoPE scaling from the `rope_freqs` tensor |
//! | `qwen2` | `Qwen2ForCausalLM` | q/k/v biases |
//! | `qwen3` | `Qwen3ForCausalLM` | q/k norms |
//! | `gemma2` | `Gemma2ForCausalLM` | norms stored `w + 1`; soft-caps; every other layer slides |
//! | `gemma3` | `Gemma3ForCausalLM` | norms stored `w + 1`; five sliding layers in six |
//! | `phi3` | `Phi3ForCausalLM` | fused `qkv_proj` and `gate_up_proj`; LongRoPE from `rope_factors_long/short` |
//!
//! What a GGUF does not say is what llama.cpp assumes when it runs the file
//! (Gemma's `query_pre_attn_scalar`, Gemma 3's sliding pattern and local RoPE
//! base, no sliding window on `llama`, `qwen2` and `qwen3`), so the view
//! describes the model llama.cpp computes. Mixture-of-experts files, YaRN
//! scaling, partial rotary embeddings outside Phi-3 and tensors without a
//! Hugging Face counterpart are refused with an error naming the file.
//!
//! Tokenizers: a `gpt2` vocabulary becomes a byte-level BPE `tokenizer.json`
//! whose pre-tokenizer follows `tokenizer.ggml.pre` as llama.cpp splits text;
//! a `llama` (SentencePiece) vocabulary becomes a [`spm::SpmModel`] converted
//! by [`spm::tokenizer_json`], as `prep` converts a `tokenizer.model`. Any
//! other vocabulary leaves `tokenizer_json` empty, with the reason in `notes`.
//! `scripts/gguf_to_hf.py` is the reference for both.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde_json::{json, Map, Value as Json};
use strata_format::manifest::{MAX_COUNT, MAX_WIDTH};

use crate::error::{PrepError, Result};
use crate::gguf::{Gguf, Tensor, TensorType, Value};
use crate::spm;

/// What a GGUF holds, seen as a Hugging Face checkpoint.
#[derive(Debug, Clone)]
pub struct HfView {
    /// `general.architecture` (`llama`, `qwen2`, …).
    pub arch: String,
    /// `config.json`: `architectures`, `model_type`, the sizes, RoPE, windows,
    /// `tie_word_embeddings`, `torch_dtype` `bfloat16`; every key
    /// [`crate::config::parse_architecture`] reads for the class.
    pub config: Json,
    /// `generation_config.json`: `bos_token_id`, `eos_token_id` (an id, or a
    /// list when the model stops on several), `pad_token_id`, where known.
    pub generation_config: Json,
    /// `tokenizer.json` bytes; `None` (with the reason in `notes`) when the
    /// vocabulary type or pre-tokenizer is not supported or the vocabulary is
    /// damaged.
    pub tokenizer_json: Option<Vec<u8>>,
    /// `tokenizer_config.json`: `chat_template` (from
    /// `tokenizer.chat_template`), the BOS/EOS/pad/unknown token strings,
    /// `add_bos_token`, `add_eos_token`, the tokenizer class.
    pub tokenizer_config: Json,
    /// One entry per GGUF tensor the Hugging Face model has, in GGUF order.
    pub tensors: Vec<MappedTensor>,
    /// What was skipped or assumed (a `rope_freqs` tensor expressed as
    /// `rope_scaling`, padding tokens left out of the tokenizer, …), for the log.
    pub notes: Vec<String>,
}

/// One GGUF tensor under its Hugging Face name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedTensor {
    /// Index into `gguf.tensors`.
    pub gguf_index: usize,
    /// Hugging Face name (`model.layers.3.self_attn.q_proj.weight`).
    pub hf_name: String,
    /// Hugging Face shape, outermost first (the GGUF dimensions reversed:
    /// `[rows, cols]` for a matrix).
    pub hf_shape: Vec<u64>,
    /// `Some(n)` for a `llama` q_proj (n = attention heads) or k_proj (n = KV
    /// heads), weight or bias: llama.cpp's converter permuted its rows
    /// (`w.reshape(n, 2, rows / n / 2, …).swapaxes(1, 2)`), and the inverse
    /// (`w.reshape(n, rows / n / 2, 2, …).swapaxes(1, 2)`) gives the
    /// Hugging Face rows back.
    pub unpermute_heads: Option<u64>,
    /// Gemma 2 / 3 norm weights: llama.cpp stored `w + 1`, Hugging Face
    /// stores `w`, so one is to be subtracted from every value.
    pub norm_plus_one: bool,
}

/// The `general.architecture` values [`hf_view`] maps.
pub const SUPPORTED_ARCHS: [&str; 6] = ["llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"];

/// Upper bound on the bytes of a RoPE factor tensor read from the file.
const MAX_FACTOR_BYTES: u64 = 1 << 20;
/// llama.cpp's token types (`gguf.TokenType`).
const TOKEN_NORMAL: i128 = 1;
const TOKEN_UNKNOWN: i128 = 2;
const TOKEN_CONTROL: i128 = 3;
const TOKEN_USER_DEFINED: i128 = 4;
const TOKEN_UNUSED: i128 = 5;
const TOKEN_BYTE: i128 = 6;

/// Qwen2's split regex (LLAMA_VOCAB_PRE_TYPE_QWEN2; Qwen's tokenizer.json).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's split regex (LLAMA_VOCAB_PRE_TYPE_LLAMA3; Meta's tokenizer.json).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The architectures, as the rest of this module tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Llama,
    Qwen2,
    Qwen3,
    Gemma2,
    Gemma3,
    Phi3,
}

impl Kind {
    fn of(arch: &str) -> Option<Kind> {
        Some(match arch {
            "llama" => Kind::Llama,
            "qwen2" => Kind::Qwen2,
            "qwen3" => Kind::Qwen3,
            "gemma2" => Kind::Gemma2,
            "gemma3" => Kind::Gemma3,
            "phi3" => Kind::Phi3,
            _ => return None,
        })
    }

    fn class(self) -> &'static str {
        match self {
            Kind::Llama => "LlamaForCausalLM",
            Kind::Qwen2 => "Qwen2ForCausalLM",
            Kind::Qwen3 => "Qwen3ForCausalLM",
            Kind::Gemma2 => "Gemma2ForCausalLM",
            Kind::Gemma3 => "Gemma3ForCausalLM",
            Kind::Phi3 => "Phi3ForCausalLM",
        }
    }

    fn model_type(self) -> &'static str {
        match self {
            Kind::Llama => "llama",
            Kind::Qwen2 => "qwen2",
            Kind::Qwen3 => "qwen3",
            Kind::Gemma2 => "gemma2",
            Kind::Gemma3 => "gemma3_text",
            Kind::Phi3 => "phi3",
        }
    }

    fn gemma(self) -> bool {
        matches!(self, Kind::Gemma2 | Kind::Gemma3)
    }

    fn qk_norm(self) -> bool {
        matches!(self, Kind::Qwen3 | Kind::Gemma3)
    }

    /// The RoPE base llama.cpp uses when `rope.freq_base` is absent.
    fn default_theta(self) -> f64 {
        match self {
            Kind::Gemma3 => 1_000_000.0,
            _ => 10_000.0,
        }
    }
}

/// Typed access to the metadata, with errors naming the file and key.
struct Meta<'a> {
    g: &'a Gguf,
    path: &'a Path,
    arch: &'a str,
    read: &'a TensorReader<'a>,
}

impl Meta<'_> {
    /// Malformed or inconsistent content.
    fn bad(&self, reason: impl Into<String>) -> PrepError {
        PrepError::Gguf {
            path: self.path.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// Valid content this conversion does not handle.
    fn unsupported(&self, reason: impl Into<String>) -> PrepError {
        PrepError::Config {
            path: self.path.to_path_buf(),
            reason: format!("GGUF {}: {}", self.arch, reason.into()),
        }
    }

    /// The architecture's key `{arch}.{suffix}`.
    fn key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.arch)
    }

    /// A non-negative integer; a per-layer array whose values are all equal
    /// counts as that value.
    fn u64(&self, key: &str) -> Result<Option<u64>> {
        let Some(v) = self.g.get(key) else {
            return Ok(None);
        };
        if let Some(n) = v.as_u64() {
            return Ok(Some(n));
        }
        if let Some(items) = v.as_array() {
            let values: Option<Vec<u64>> = items.iter().map(Value::as_u64).collect();
            if let Some(values) = values {
                if let Some(&first) = values.first() {
                    if values.iter().all(|&x| x == first) {
                        return Ok(Some(first));
                    }
                    return Err(self.unsupported(format!(
                        "`{key}` differs between layers ({values:?}); only uniform layers are supported"
                    )));
                }
            }
        }
        Err(self.bad(format!("`{key}` is {v:?}, not a non-negative integer")))
    }

    /// A required count or width in `1..=max`.
    fn size(&self, key: &str, max: u64) -> Result<u64> {
        let n = self
            .u64(key)?
            .ok_or_else(|| self.bad(format!("the metadata has no `{key}`")))?;
        if n == 0 || n > max {
            return Err(self.bad(format!("`{key}` = {n} is outside 1..={max}")));
        }
        Ok(n)
    }

    /// A finite number.
    fn f64(&self, key: &str) -> Result<Option<f64>> {
        match self.g.get(key) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() => Ok(Some(x)),
                _ => Err(self.bad(format!("`{key}` is {v:?}, not a finite number"))),
            },
        }
    }

    fn str(&self, key: &str) -> Result<Option<&str>> {
        match self.g.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.bad(format!("`{key}` is {v:?}, not a string"))),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.g.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.bad(format!("`{key}` is {v:?}, not a bool"))),
        }
    }

    /// An array of strings.
    fn strings(&self, key: &str) -> Result<Option<Vec<String>>> {
        let Some(v) = self.g.get(key) else {
            return Ok(None);
        };
        let bad = || self.bad(format!("`{key}` is not an array of strings"));
        v.as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|x| x.as_str().map(str::to_string).ok_or_else(bad))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// An array of integers.
    fn ints(&self, key: &str) -> Result<Option<Vec<i128>>> {
        let Some(v) = self.g.get(key) else {
            return Ok(None);
        };
        let bad = || self.bad(format!("`{key}` is not an array of integers"));
        v.as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|x| match x {
                Value::Int(i) => Ok(*i),
                _ => Err(bad()),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// An array of finite numbers.
    fn floats(&self, key: &str) -> Result<Option<Vec<f64>>> {
        let Some(v) = self.g.get(key) else {
            return Ok(None);
        };
        let bad = || self.bad(format!("`{key}` is not an array of finite numbers"));
        v.as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|x| x.as_f64().filter(|f| f.is_finite()).ok_or_else(bad))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

/// A float from the file as a config holds it: GGUF stores most floats as
/// f32, whose shortest decimal is what the Hugging Face config said
/// (`9.999999747378752e-06` → `1e-05`).
fn num(x: f64) -> Json {
    let f = x as f32;
    if f64::from(f) == x {
        if let Ok(short) = format!("{f}").parse::<f64>() {
            return Json::from(short);
        }
    }
    Json::from(x)
}

/// The model's dimensions and which optional tensors it has.
#[derive(Debug, Clone)]
struct Shape {
    hidden: u64,
    layers: u64,
    heads: u64,
    kv_heads: u64,
    head_dim: u64,
    /// Rotary dimensions per head.
    rope_dim: u64,
    intermediate: u64,
    /// Rows of the embedding.
    vocab: u64,
    context: u64,
    norm_eps: f64,
    tie: bool,
    /// q, k and v carry biases.
    qkv_bias: bool,
    /// o_proj carries a bias.
    o_bias: bool,
    /// The MLP carries biases.
    mlp_bias: bool,
}

impl Shape {
    fn read(m: &Meta, kind: Kind) -> Result<Shape> {
        let g = m.g;
        let hidden = m.size(&m.key("embedding_length"), MAX_WIDTH)?;
        let layers = m.size(&m.key("block_count"), MAX_COUNT)?;
        let heads = m.size(&m.key("attention.head_count"), MAX_COUNT)?;
        let kv_heads = match m.u64(&m.key("attention.head_count_kv"))? {
            None => heads,
            Some(kv) if kv > 0 && heads % kv == 0 => kv,
            Some(kv) => {
                return Err(m.bad(format!(
                    "{} heads are not a multiple of {kv} KV heads",
                    heads
                )))
            }
        };
        let intermediate = m.size(&m.key("feed_forward_length"), MAX_WIDTH)?;
        let context = m.size(&m.key("context_length"), MAX_WIDTH * 64)?;
        let head_dim = match m.u64(&m.key("attention.key_length"))? {
            Some(d) if d > 0 && d <= MAX_WIDTH => d,
            Some(d) => return Err(m.bad(format!("attention.key_length {d} is out of range"))),
            None => {
                if hidden % heads != 0 {
                    return Err(m.bad(format!(
                        "no attention.key_length, and embedding_length {hidden} is not a multiple of {heads} heads"
                    )));
                }
                hidden / heads
            }
        };
        if let Some(v) = m.u64(&m.key("attention.value_length"))? {
            if v != head_dim {
                return Err(m.unsupported(format!(
                    "attention.value_length {v} differs from the key length {head_dim}"
                )));
            }
        }
        let rope_dim = m.u64(&m.key("rope.dimension_count"))?.unwrap_or(head_dim);
        if rope_dim == 0 || rope_dim > head_dim || rope_dim % 2 != 0 {
            return Err(m.bad(format!(
                "rope.dimension_count {rope_dim} must be even and in 1..={head_dim} (the head size)"
            )));
        }
        if rope_dim != head_dim && kind != Kind::Phi3 {
            return Err(m.unsupported(format!(
                "partial rotary embeddings ({rope_dim} of {head_dim} dimensions per head) are only supported for phi3"
            )));
        }
        let norm_eps = m
            .f64(&m.key("attention.layer_norm_rms_epsilon"))?
            .ok_or_else(|| {
                m.bad(format!(
                    "the metadata has no `{}`",
                    m.key("attention.layer_norm_rms_epsilon")
                ))
            })?;
        if norm_eps <= 0.0 {
            return Err(m.bad(format!(
                "attention.layer_norm_rms_epsilon {norm_eps} is not positive"
            )));
        }
        let embd = g
            .tensor("token_embd.weight")
            .ok_or_else(|| m.bad("there is no `token_embd.weight` tensor"))?;
        let vocab = match embd.dims.as_slice() {
            [h, v] if *h == hidden && *v > 0 && *v <= MAX_WIDTH => *v,
            d => {
                return Err(m.bad(format!(
                    "`token_embd.weight` has dimensions {d:?}; [{hidden}, vocabulary] expected"
                )))
            }
        };
        let has = |name: &str| g.tensor(name).is_some();
        Ok(Shape {
            hidden,
            layers,
            heads,
            kv_heads,
            head_dim,
            rope_dim,
            intermediate,
            vocab,
            context,
            norm_eps,
            tie: !has("output.weight"),
            qkv_bias: has("blk.0.attn_q.bias")
                || has("blk.0.attn_k.bias")
                || has("blk.0.attn_v.bias")
                || has("blk.0.attn_qkv.bias"),
            o_bias: has("blk.0.attn_output.bias"),
            mlp_bias: has("blk.0.ffn_up.bias")
                || has("blk.0.ffn_down.bias")
                || has("blk.0.ffn_gate.bias"),
        })
    }

    /// Rows of the attention projections: q, k (= v).
    fn qk_rows(&self, m: &Meta) -> Result<(u64, u64)> {
        let q = self.heads.checked_mul(self.head_dim);
        let k = self.kv_heads.checked_mul(self.head_dim);
        match (q, k) {
            (Some(q), Some(k)) if q <= MAX_WIDTH * 16 => Ok((q, k)),
            _ => Err(m.bad("heads × head size overflows")),
        }
    }
}

/// The vocabulary's metadata.
#[derive(Debug, Clone, Default)]
struct Vocab {
    model: Option<String>,
    pre: Option<String>,
    tokens: Vec<String>,
    types: Vec<i128>,
    scores: Option<Vec<f64>>,
    merges: Option<Vec<String>>,
    bos: Option<u64>,
    eos: Option<u64>,
    pad: Option<u64>,
    unk: Option<u64>,
    eot: Option<u64>,
    eom: Option<u64>,
    add_bos: Option<bool>,
    add_eos: Option<bool>,
    add_space_prefix: Option<bool>,
}

impl Vocab {
    fn read(m: &Meta, vocab_rows: u64) -> Result<Vocab> {
        let tokens = m.strings("tokenizer.ggml.tokens")?.unwrap_or_default();
        if tokens.len() as u64 > vocab_rows {
            return Err(m.bad(format!(
                "the vocabulary has {} tokens but `token_embd.weight` only {vocab_rows} rows",
                tokens.len()
            )));
        }
        let types = m.ints("tokenizer.ggml.token_type")?.unwrap_or_default();
        if !types.is_empty() && types.len() != tokens.len() {
            return Err(m.bad(format!(
                "{} token types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let id = |kind: &str| -> Result<Option<u64>> {
            let key = format!("tokenizer.ggml.{kind}_token_id");
            match m.u64(&key)? {
                Some(i) if i < vocab_rows => Ok(Some(i)),
                Some(i) => Err(m.bad(format!(
                    "`{key}` {i} is past the {vocab_rows} rows of the embedding"
                ))),
                None => Ok(None),
            }
        };
        Ok(Vocab {
            model: m.str("tokenizer.ggml.model")?.map(str::to_string),
            pre: m.str("tokenizer.ggml.pre")?.map(str::to_string),
            scores: m.floats("tokenizer.ggml.scores")?,
            merges: m.strings("tokenizer.ggml.merges")?,
            bos: id("bos")?,
            eos: id("eos")?,
            pad: id("padding")?,
            unk: id("unknown")?,
            eot: id("eot")?,
            eom: id("eom")?,
            add_bos: m.bool("tokenizer.ggml.add_bos_token")?,
            add_eos: m.bool("tokenizer.ggml.add_eos_token")?,
            add_space_prefix: m.bool("tokenizer.ggml.add_space_prefix")?,
            tokens,
            types,
        })
    }

    /// The text of token `id`, if the vocabulary has it.
    fn text(&self, id: Option<u64>) -> Option<&str> {
        let i = usize::try_from(id?).ok()?;
        self.tokens.get(i).map(String::as_str)
    }

    /// The type of token `i` (normal when the file gives no types).
    fn ty(&self, i: usize) -> i128 {
        self.types.get(i).copied().unwrap_or(TOKEN_NORMAL)
    }

    fn is_spm(&self) -> bool {
        self.model.as_deref() == Some("llama")
    }

    /// Whether encoding starts with BOS: `tokenizer.ggml.add_bos_token`,
    /// else llama.cpp's default (on for SentencePiece and Llama 3's
    /// byte-level vocabularies, off for the other byte-level ones).
    fn adds_bos(&self) -> bool {
        self.add_bos.unwrap_or_else(|| {
            self.is_spm()
                || matches!(
                    self.pre.as_deref(),
                    Some("llama-bpe" | "llama3" | "llama-v3" | "smaug-bpe" | "falcon3")
                )
        })
    }
}

/// `rope_theta`, `rope_scaling` and the keys Phi-3 adds.
struct RopeCfg {
    theta: f64,
    scaling: Json,
    /// Extra top-level config keys (`original_max_position_embeddings`,
    /// `partial_rotary_factor`).
    extra: Map<String, Json>,
}

/// Reads the f32 or f16 values of the one-dimensional tensor `index`.
fn read_vector(m: &Meta, index: usize) -> Result<Vec<f64>> {
    let t = &m.g.tensors[index];
    let bad = |reason: String| m.bad(format!("tensor `{}`: {reason}", t.name));
    if t.dims.len() != 1 {
        return Err(bad(format!(
            "has dimensions {:?}; one dimension expected",
            t.dims
        )));
    }
    if t.len > MAX_FACTOR_BYTES {
        return Err(bad(format!(
            "{} bytes is too large for RoPE factors",
            t.len
        )));
    }
    let width = match t.ty {
        TensorType::F32 => 4,
        TensorType::F16 => 2,
        other => {
            return Err(m.unsupported(format!(
                "tensor `{}` is {}; RoPE factors are read as F32 or F16",
                t.name,
                other.name()
            )))
        }
    };
    let bytes = (m.read)(index)?;
    if bytes.len() as u64 != t.len {
        return Err(bad(format!(
            "{} bytes read; its table entry says {}",
            bytes.len(),
            t.len
        )));
    }
    let values: Vec<f64> = if width == 4 {
        bytes
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect()
    } else {
        bytes
            .chunks_exact(2)
            .map(|b| f64::from(half::f16::from_le_bytes([b[0], b[1]])))
            .collect()
    };
    if values.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
        return Err(bad("holds a factor that is not finite and positive".into()));
    }
    Ok(values)
}

/// llama.cpp's `rope_freqs` for llama3 scaling (`LlamaModel.generate_extra_tensors`):
/// the factor dividing each frequency of a head of `dim` dimensions.
fn llama3_factors(theta: f64, dim: u64, factor: f64, low: f64, high: f64, orig: f64) -> Vec<f64> {
    let low_wavelen = orig / low;
    let high_wavelen = orig / high;
    (0..dim / 2)
        .map(|i| {
            // As torch computes it: f32 arithmetic.
            let exponent = (2 * i) as f32 / dim as f32;
            let freq = 1.0f32 / (theta as f32).powf(exponent);
            let wavelen = f64::from(2.0 * std::f32::consts::PI / freq);
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (orig / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

/// The llama3 `rope_scaling` that reproduces the `rope_freqs` tensor: the
/// metadata's `rope.scaling.factor` and `rope.scaling.original_context_length`
/// where present, else the largest factor and llama.cpp's 8192; low and high
/// frequency factors 1 and 4 (Meta's, which llama.cpp's converter defaults to).
fn llama3_scaling(
    m: &Meta,
    index: usize,
    theta: f64,
    shape: &Shape,
    notes: &mut Vec<String>,
) -> Result<Json> {
    let t = &m.g.tensors[index];
    let values = read_vector(m, index)?;
    let want = shape.rope_dim / 2;
    if values.len() as u64 != want {
        return Err(m.bad(format!(
            "tensor `{}` has {} factors; {want} expected for {} rotary dimensions",
            t.name,
            values.len(),
            shape.rope_dim
        )));
    }
    let max = values.iter().copied().fold(0.0f64, f64::max);
    if values.iter().all(|&v| v == 1.0) {
        notes.push(format!(
            "skipped tensor `{}`: every factor is 1 (no RoPE scaling)",
            t.name
        ));
        return Ok(Json::Null);
    }
    let factor = m.f64(&m.key("rope.scaling.factor"))?.unwrap_or(max);
    let orig = m
        .u64(&m.key("rope.scaling.original_context_length"))?
        .unwrap_or(8192);
    let low = m
        .f64(&m.key("rope.scaling.low_freq_factor"))?
        .unwrap_or(1.0);
    let high = m
        .f64(&m.key("rope.scaling.high_freq_factor"))?
        .unwrap_or(4.0);
    if !(factor > 0.0 && orig > 0 && high > low && low > 0.0) {
        return Err(m.bad(format!(
            "llama3 RoPE scaling factor {factor}, low {low}, high {high}, original context {orig} are not usable"
        )));
    }
    let expect = llama3_factors(theta, shape.rope_dim, factor, low, high, orig as f64);
    let far = values
        .iter()
        .zip(&expect)
        .position(|(got, want)| (got - want).abs() > 1e-4 * want.abs().max(1.0));
    if let Some(i) = far {
        return Err(m.unsupported(format!(
            "tensor `{}` holds RoPE frequency factors that llama3 scaling (factor {factor}, low_freq_factor {low}, high_freq_factor {high}, original_max_position_embeddings {orig}, rope_theta {theta}) does not reproduce (factor {i}: {} in the file, {} computed); the metadata does not say how they were made",
            t.name, values[i], expect[i]
        )));
    }
    notes.push(format!(
        "tensor `{}` expressed as rope_scaling llama3 (factor {factor}, low_freq_factor {low}, high_freq_factor {high}, original_max_position_embeddings {orig}), not copied",
        t.name
    ));
    Ok(json!({
        "rope_type": "llama3",
        "factor": num(factor),
        "low_freq_factor": num(low),
        "high_freq_factor": num(high),
        "original_max_position_embeddings": orig,
    }))
}

fn rope_config(m: &Meta, kind: Kind, shape: &Shape, notes: &mut Vec<String>) -> Result<RopeCfg> {
    let g = m.g;
    let theta = m
        .f64(&m.key("rope.freq_base"))?
        .unwrap_or(kind.default_theta());
    if theta <= 0.0 {
        return Err(m.bad(format!("rope.freq_base {theta} is not positive")));
    }
    let mut extra = Map::new();
    let kind_key = m.key("rope.scaling.type");
    let scaling_type = m.str(&kind_key)?.filter(|t| *t != "none");
    let find = |name: &str| g.tensors.iter().position(|t| t.name == name);
    let freqs = find("rope_freqs.weight");
    let long = find("rope_factors_long.weight");
    let short = find("rope_factors_short.weight");
    if kind == Kind::Phi3 {
        if let Some(orig) = m.u64(&m.key("rope.scaling.original_context_length"))? {
            extra.insert("original_max_position_embeddings".into(), orig.into());
        }
        if shape.rope_dim != shape.head_dim {
            let partial = shape.rope_dim as f64 / shape.head_dim as f64;
            if (shape.head_dim as f64 * partial) as u64 != shape.rope_dim {
                return Err(m.unsupported(format!(
                    "{} rotary dimensions of {} are not expressible as a partial_rotary_factor",
                    shape.rope_dim, shape.head_dim
                )));
            }
            extra.insert("partial_rotary_factor".into(), Json::from(partial));
        }
    } else if long.is_some() || short.is_some() {
        return Err(m.unsupported(
            "tensors `rope_factors_long/short` (LongRoPE) are only supported for phi3",
        ));
    }
    if freqs.is_some() && matches!(kind, Kind::Gemma2 | Kind::Gemma3 | Kind::Phi3) {
        return Err(m.unsupported(format!(
            "a `rope_freqs` tensor is not expected in a {} file",
            m.arch
        )));
    }
    let scaling = match (scaling_type, freqs, long, short) {
        (None, None, None, None) => Json::Null,
        (Some("linear"), None, None, None) => {
            let factor = m
                .f64(&m.key("rope.scaling.factor"))?
                .ok_or_else(|| m.bad(format!("`{kind_key}` is linear but there is no factor")))?;
            json!({"rope_type": "linear", "factor": num(factor)})
        }
        (None, Some(t), None, None) => llama3_scaling(m, t, theta, shape, notes)?,
        (None | Some("longrope"), None, Some(long), Some(short)) if kind == Kind::Phi3 => {
            let long_f = read_vector(m, long)?;
            let short_f = read_vector(m, short)?;
            let want = (shape.rope_dim / 2) as usize;
            if long_f.len() != want || short_f.len() != want {
                return Err(m.bad(format!(
                    "rope_factors_long/short hold {} and {} factors; {want} expected",
                    long_f.len(),
                    short_f.len()
                )));
            }
            let mut s = Map::new();
            s.insert("type".into(), "longrope".into());
            s.insert(
                "long_factor".into(),
                long_f.into_iter().map(num).collect::<Vec<_>>().into(),
            );
            s.insert(
                "short_factor".into(),
                short_f.into_iter().map(num).collect::<Vec<_>>().into(),
            );
            if let Some(a) = m.f64(&m.key("rope.scaling.attn_factor"))? {
                s.insert("attention_factor".into(), num(a));
            }
            notes.push(
                "tensors `rope_factors_long.weight`, `rope_factors_short.weight` expressed as rope_scaling longrope, not copied"
                    .into(),
            );
            Json::Object(s)
        }
        (Some(t), _, _, _) if t != "linear" && t != "longrope" => {
            return Err(m.unsupported(format!(
                "RoPE scaling `{t}` is not supported (linear, llama3 through `rope_freqs`, and phi3's longrope are)"
            )))
        }
        _ => {
            return Err(m.unsupported(format!(
                "RoPE scaling type {:?} with tensors rope_freqs {}, rope_factors_long {}, rope_factors_short {} is not a combination this conversion understands",
                scaling_type,
                freqs.is_some(),
                long.is_some(),
                short.is_some()
            )))
        }
    };
    Ok(RopeCfg {
        theta,
        scaling,
        extra,
    })
}

/// Where a GGUF tensor goes.
enum Target {
    /// The Hugging Face tensor of this name.
    Hf(String),
    /// Nothing: the view covers it otherwise (the reason, for the notes).
    Skip(&'static str),
}

/// The Hugging Face name of GGUF tensor `name`.
fn target(m: &Meta, kind: Kind, name: &str, layers: u64) -> Result<Target> {
    match name {
        "token_embd.weight" => return Ok(Target::Hf("model.embed_tokens.weight".into())),
        "output_norm.weight" => return Ok(Target::Hf("model.norm.weight".into())),
        "output.weight" => return Ok(Target::Hf("lm_head.weight".into())),
        "rope_freqs.weight" => return Ok(Target::Skip("expressed as rope_scaling")),
        "rope_factors_long.weight" | "rope_factors_short.weight" => {
            return Ok(Target::Skip("expressed as rope_scaling"))
        }
        _ => {}
    }
    let unknown = || {
        m.unsupported(format!(
            "tensor `{name}` has no Hugging Face counterpart in {}; refusing to drop it silently",
            kind.class()
        ))
    };
    let rest = name.strip_prefix("blk.").ok_or_else(unknown)?;
    let (layer, rest) = rest.split_once('.').ok_or_else(unknown)?;
    let layer: u64 = layer.parse().map_err(|_| unknown())?;
    if layer >= layers {
        return Err(m.bad(format!(
            "tensor `{name}` belongs to layer {layer}, but the model has {layers} layers"
        )));
    }
    let (base, suffix) = rest.rsplit_once('.').ok_or_else(unknown)?;
    if !matches!(suffix, "weight" | "bias") {
        return Err(unknown());
    }
    if base.contains("_exps") || base.contains("_shexp") || base == "ffn_gate_inp" {
        return Err(m.unsupported(format!(
            "tensor `{name}`: mixture-of-experts GGUF files are not supported"
        )));
    }
    let hf = match (kind, base) {
        (_, "attn_rot_embd") => return Ok(Target::Skip("RoPE cache, computed at run time")),
        (_, "attn_norm") => "input_layernorm",
        (Kind::Phi3, "attn_qkv") => "self_attn.qkv_proj",
        (Kind::Phi3, "ffn_up") => "mlp.gate_up_proj",
        (Kind::Phi3, "attn_q" | "attn_k" | "attn_v" | "ffn_gate") => {
            return Err(m.unsupported(format!(
                "tensor `{name}`: Phi3ForCausalLM holds fused qkv_proj and gate_up_proj, not separate projections"
            )))
        }
        (_, "attn_q") => "self_attn.q_proj",
        (_, "attn_k") => "self_attn.k_proj",
        (_, "attn_v") => "self_attn.v_proj",
        (_, "attn_output") => "self_attn.o_proj",
        (_, "ffn_gate") => "mlp.gate_proj",
        (_, "ffn_up") => "mlp.up_proj",
        (_, "ffn_down") => "mlp.down_proj",
        (k, "ffn_norm") if k.gemma() => "pre_feedforward_layernorm",
        (_, "ffn_norm") => "post_attention_layernorm",
        (k, "post_attention_norm") if k.gemma() => "post_attention_layernorm",
        (k, "post_ffw_norm") if k.gemma() => "post_feedforward_layernorm",
        (k, "attn_q_norm") if k.qk_norm() => "self_attn.q_norm",
        (k, "attn_k_norm") if k.qk_norm() => "self_attn.k_norm",
        _ => return Err(unknown()),
    };
    Ok(Target::Hf(format!("model.layers.{layer}.{hf}.{suffix}")))
}

/// Every tensor the Hugging Face model of this shape has, with its shape.
fn expected(m: &Meta, kind: Kind, s: &Shape) -> Result<BTreeMap<String, Vec<u64>>> {
    let (h, i, v) = (s.hidden, s.intermediate, s.vocab);
    let (q, k) = s.qk_rows(m)?;
    let mut want = BTreeMap::new();
    want.insert("model.embed_tokens.weight".to_string(), vec![v, h]);
    want.insert("model.norm.weight".to_string(), vec![h]);
    if !s.tie {
        want.insert("lm_head.weight".to_string(), vec![v, h]);
    }
    let overflow = || m.bad("tensor sizes overflow");
    for l in 0..s.layers {
        let p = format!("model.layers.{l}.");
        let mut add = |name: &str, shape: Vec<u64>| {
            want.insert(format!("{p}{name}"), shape);
        };
        add("input_layernorm.weight", vec![h]);
        add("post_attention_layernorm.weight", vec![h]);
        add("self_attn.o_proj.weight", vec![h, q]);
        add("mlp.down_proj.weight", vec![h, i]);
        if kind == Kind::Phi3 {
            let qkv = k
                .checked_mul(2)
                .and_then(|kv| kv.checked_add(q))
                .ok_or_else(overflow)?;
            add("self_attn.qkv_proj.weight", vec![qkv, h]);
            add(
                "mlp.gate_up_proj.weight",
                vec![i.checked_mul(2).ok_or_else(overflow)?, h],
            );
            if s.qkv_bias {
                add("self_attn.qkv_proj.bias", vec![qkv]);
            }
        } else {
            add("self_attn.q_proj.weight", vec![q, h]);
            add("self_attn.k_proj.weight", vec![k, h]);
            add("self_attn.v_proj.weight", vec![k, h]);
            add("mlp.gate_proj.weight", vec![i, h]);
            add("mlp.up_proj.weight", vec![i, h]);
            if s.qkv_bias || kind == Kind::Qwen2 {
                add("self_attn.q_proj.bias", vec![q]);
                add("self_attn.k_proj.bias", vec![k]);
                add("self_attn.v_proj.bias", vec![k]);
            }
            if s.mlp_bias {
                add("mlp.gate_proj.bias", vec![i]);
                add("mlp.up_proj.bias", vec![i]);
                add("mlp.down_proj.bias", vec![h]);
            }
        }
        if s.o_bias || (s.qkv_bias && matches!(kind, Kind::Llama | Kind::Qwen3)) {
            add("self_attn.o_proj.bias", vec![h]);
        }
        if kind.gemma() {
            add("pre_feedforward_layernorm.weight", vec![h]);
            add("post_feedforward_layernorm.weight", vec![h]);
        }
        if kind.qk_norm() {
            add("self_attn.q_norm.weight", vec![s.head_dim]);
            add("self_attn.k_norm.weight", vec![s.head_dim]);
        }
    }
    Ok(want)
}

/// Maps every GGUF tensor and checks the set against the shape.
fn map_tensors(
    m: &Meta,
    kind: Kind,
    shape: &Shape,
    notes: &mut Vec<String>,
) -> Result<Vec<MappedTensor>> {
    let mut out = Vec::with_capacity(m.g.tensors.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (index, t) in m.g.tensors.iter().enumerate() {
        let hf_name = match target(m, kind, &t.name, shape.layers)? {
            Target::Hf(n) => n,
            Target::Skip(why) => {
                if !why.starts_with("expressed") {
                    notes.push(format!("skipped tensor `{}`: {why}", t.name));
                }
                continue;
            }
        };
        if let Some(other) = seen.insert(hf_name.clone(), index) {
            return Err(m.bad(format!(
                "tensors `{}` and `{}` both map to `{hf_name}`",
                m.g.tensors[other].name, t.name
            )));
        }
        let unpermute_heads = if kind == Kind::Llama {
            if hf_name.contains(".self_attn.q_proj.") {
                Some(shape.heads)
            } else if hf_name.contains(".self_attn.k_proj.") {
                Some(shape.kv_heads)
            } else {
                None
            }
        } else {
            None
        };
        out.push(MappedTensor {
            gguf_index: index,
            hf_name,
            hf_shape: t.shape(),
            unpermute_heads,
            norm_plus_one: kind.gemma() && t.name.ends_with("norm.weight"),
        });
    }
    let want = expected(m, kind, shape)?;
    let missing: Vec<&String> = want
        .keys()
        .filter(|n| !seen.contains_key(n.as_str()))
        .collect();
    let extra: Vec<&str> = out
        .iter()
        .filter(|t| !want.contains_key(&t.hf_name))
        .map(|t| m.g.tensors[t.gguf_index].name.as_str())
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        let show = |v: Vec<String>| {
            let n = v.len();
            let mut s = v.into_iter().take(5).collect::<Vec<_>>().join(", ");
            if n > 5 {
                s.push_str(&format!(", … ({n} in all)"));
            }
            s
        };
        return Err(m.bad(format!(
            "the tensors do not match a {} of these dimensions: missing [{}], unexpected [{}]",
            kind.class(),
            show(missing.into_iter().cloned().collect()),
            show(extra.into_iter().map(str::to_string).collect())
        )));
    }
    for t in &out {
        let w = &want[&t.hf_name];
        if &t.hf_shape != w {
            return Err(m.bad(format!(
                "tensor `{}` ({}) has shape {:?}; the metadata implies {w:?}",
                m.g.tensors[t.gguf_index].name, t.hf_name, t.hf_shape
            )));
        }
        if let Some(n) = t.unpermute_heads {
            if t.hf_shape[0] % (2 * n) != 0 {
                return Err(m.bad(format!(
                    "tensor `{}`: {} rows do not split into {n} heads of pairs",
                    m.g.tensors[t.gguf_index].name, t.hf_shape[0]
                )));
            }
        }
    }
    Ok(out)
}

/// `config.json`.
fn build_config(
    m: &Meta,
    kind: Kind,
    s: &Shape,
    rope: RopeCfg,
    vocab: &Vocab,
    notes: &mut Vec<String>,
) -> Result<Json> {
    let mut c = Map::new();
    let mut put = |k: &str, v: Json| {
        c.insert(k.to_string(), v);
    };
    put("architectures", json!([kind.class()]));
    put("model_type", kind.model_type().into());
    put("hidden_size", s.hidden.into());
    put("intermediate_size", s.intermediate.into());
    put("num_hidden_layers", s.layers.into());
    put("num_attention_heads", s.heads.into());
    put("num_key_value_heads", s.kv_heads.into());
    put("head_dim", s.head_dim.into());
    put("max_position_embeddings", s.context.into());
    put("rms_norm_eps", num(s.norm_eps));
    put("rope_theta", num(rope.theta));
    put("rope_scaling", rope.scaling);
    for (k, v) in rope.extra {
        put(&k, v);
    }
    put("vocab_size", s.vocab.into());
    put("tie_word_embeddings", s.tie.into());
    put("bos_token_id", vocab.bos.map_or(Json::Null, Json::from));
    put("eos_token_id", vocab.eos.map_or(Json::Null, Json::from));
    put("pad_token_id", vocab.pad.map_or(Json::Null, Json::from));
    put("attention_dropout", json!(0.0));
    put("initializer_range", json!(0.02));
    put("torch_dtype", "bfloat16".into());
    put("use_cache", true.into());
    let window = m.u64(&m.key("attention.sliding_window"))?;
    match kind {
        Kind::Llama => {
            put("hidden_act", "silu".into());
            put("attention_bias", s.qkv_bias.into());
            put("mlp_bias", s.mlp_bias.into());
            put("pretraining_tp", 1.into());
            if window.is_some() {
                notes.push(
                    "attention.sliding_window ignored: llama.cpp runs the llama architecture without one"
                        .into(),
                );
            }
            if let Some(name) = m.str("general.name")? {
                if name.to_lowercase().contains("mistral") {
                    notes.push(format!(
                        "`{name}` described as LlamaForCausalLM (llama.cpp runs it as llama, without a sliding window)"
                    ));
                }
            }
        }
        Kind::Qwen2 | Kind::Qwen3 => {
            put("hidden_act", "silu".into());
            if kind == Kind::Qwen3 {
                put("attention_bias", s.qkv_bias.into());
            } else if s.o_bias {
                return Err(m.unsupported("an attn_output bias: Qwen2ForCausalLM has none"));
            }
            put("max_window_layers", s.layers.into());
            put("sliding_window", Json::Null);
            put("use_sliding_window", false.into());
        }
        Kind::Gemma2 | Kind::Gemma3 => {
            put("hidden_activation", "gelu_pytorch_tanh".into());
            put("attention_bias", false.into());
            if s.qkv_bias || s.o_bias || s.mlp_bias {
                return Err(m.unsupported("biases: Gemma models have none"));
            }
            let window = window.filter(|&w| w > 0).ok_or_else(|| {
                m.bad(format!(
                    "`{}` is missing or 0; Gemma needs a sliding window",
                    m.key("attention.sliding_window")
                ))
            })?;
            put("sliding_window", window.into());
            // llama.cpp's attention scale: 1/sqrt(hidden / heads) on the
            // 27B models (46 layers for Gemma 2, 62 for Gemma 3), else
            // 1/sqrt(head size).
            let big = if kind == Kind::Gemma2 { 46 } else { 62 };
            let scalar = if s.layers == big {
                s.hidden / s.heads
            } else {
                s.head_dim
            };
            put("query_pre_attn_scalar", scalar.into());
            let softcap = |key: &str| -> Result<Json> {
                Ok(m.f64(&m.key(key))?
                    .filter(|&x| x > 0.0)
                    .map_or(Json::Null, num))
            };
            let sliding: Vec<bool> = if kind == Kind::Gemma2 {
                let attn = softcap("attn_logit_softcapping")?;
                let fin = softcap("final_logit_softcapping")?;
                if attn.is_null() || fin.is_null() {
                    notes.push(
                        "a missing Gemma 2 soft-cap means none (llama.cpp's files always state both)"
                            .into(),
                    );
                }
                put("attn_logit_softcapping", attn);
                put("final_logit_softcapping", fin);
                (0..s.layers).map(|i| i % 2 == 0).collect()
            } else {
                put("attn_logit_softcapping", Json::Null);
                put(
                    "final_logit_softcapping",
                    softcap("final_logit_softcapping")?,
                );
                let local = m.f64(&m.key("rope.freq_base_swa"))?.unwrap_or(10_000.0);
                put("rope_local_base_freq", num(local));
                put("use_bidirectional_attention", false.into());
                match m.g.get(&m.key("attention.sliding_window_pattern")) {
                    Some(Value::Array(flags)) => {
                        let flags: Option<Vec<bool>> = flags.iter().map(Value::as_bool).collect();
                        match flags {
                            Some(f) if f.len() as u64 == s.layers => f,
                            _ => {
                                return Err(m.bad(format!(
                                    "`{}` is not one bool per layer",
                                    m.key("attention.sliding_window_pattern")
                                )))
                            }
                        }
                    }
                    _ => {
                        let pattern = m
                            .u64(&m.key("attention.sliding_window_pattern"))?
                            .unwrap_or(6);
                        if pattern == 0 {
                            return Err(m.bad("attention.sliding_window_pattern is 0"));
                        }
                        put("sliding_window_pattern", pattern.into());
                        (0..s.layers).map(|i| (i + 1) % pattern != 0).collect()
                    }
                }
            };
            put(
                "layer_types",
                sliding
                    .into_iter()
                    .map(|w| {
                        Json::from(if w {
                            "sliding_attention"
                        } else {
                            "full_attention"
                        })
                    })
                    .collect::<Vec<_>>()
                    .into(),
            );
        }
        Kind::Phi3 => {
            put("hidden_act", "silu".into());
            if s.qkv_bias || s.o_bias || s.mlp_bias {
                return Err(m.unsupported("biases: Phi3ForCausalLM has none"));
            }
            // llama.cpp writes 0 for "no window" (Phi-4).
            put(
                "sliding_window",
                window.filter(|&w| w > 0).map_or(Json::Null, Json::from),
            );
        }
    }
    if vocab.tokens.len() as u64 != s.vocab && !vocab.tokens.is_empty() {
        notes.push(format!(
            "the vocabulary has {} tokens, the embedding {} rows",
            vocab.tokens.len(),
            s.vocab
        ));
    }
    Ok(Json::Object(c))
}

/// `generation_config.json`: BOS, EOS and pad ids; the end ids are EOS, then
/// Qwen's pad token (`<|endoftext|>`, as Qwen's own generation_config has it),
/// then the end-of-turn and end-of-message tokens llama.cpp also stops on.
fn generation_config(kind: Kind, v: &Vocab) -> Json {
    let mut gen = Map::new();
    gen.insert("_from_model_config".into(), true.into());
    if let Some(b) = v.bos {
        gen.insert("bos_token_id".into(), b.into());
    }
    let mut ends: Vec<u64> = v.eos.into_iter().collect();
    if matches!(kind, Kind::Qwen2 | Kind::Qwen3) && v.eos.is_some() {
        ends.extend(v.pad);
    }
    ends.extend(v.eot);
    ends.extend(v.eom);
    let mut unique = Vec::new();
    for e in ends {
        if !unique.contains(&e) {
            unique.push(e);
        }
    }
    match unique.as_slice() {
        [] => {}
        [one] => {
            gen.insert("eos_token_id".into(), (*one).into());
        }
        many => {
            gen.insert("eos_token_id".into(), json!(many));
        }
    }
    if let Some(p) = v.pad {
        gen.insert("pad_token_id".into(), p.into());
    }
    Json::Object(gen)
}

/// The chat template(s): `tokenizer.chat_template`, and the named ones
/// (`tokenizer.chat_template.tool_use`) as transformers' list form.
fn chat_template(m: &Meta) -> Result<Option<Json>> {
    let default = m.str("tokenizer.chat_template")?;
    let mut named = Vec::new();
    for (k, v) in &m.g.metadata {
        if let Some(name) = k.strip_prefix("tokenizer.chat_template.") {
            let t = v
                .as_str()
                .ok_or_else(|| m.bad(format!("`{k}` is not a string")))?;
            named.push(json!({"name": name, "template": t}));
        }
    }
    Ok(match (default, named.is_empty()) {
        (None, true) => None,
        (Some(t), true) => Some(t.into()),
        (d, false) => {
            let mut all: Vec<Json> = d
                .map(|t| json!({"name": "default", "template": t}))
                .into_iter()
                .collect();
            all.extend(named);
            Some(Json::Array(all))
        }
    })
}

/// `tokenizer_config.json`.
fn tokenizer_config(m: &Meta, kind: Kind, s: &Shape, v: &Vocab, used: usize) -> Result<Json> {
    let spm = v.is_spm();
    let mut c = Map::new();
    c.insert("add_bos_token".into(), v.adds_bos().into());
    c.insert("add_eos_token".into(), v.add_eos.unwrap_or(false).into());
    let text = |id| v.text(id).map_or(Json::Null, Json::from);
    let template = chat_template(m)?;
    if !spm {
        c.insert("add_prefix_space".into(), false.into());
        let mut decoder = Map::new();
        let mut additional = Vec::new();
        let template_text = match &template {
            Some(Json::String(t)) => t.clone(),
            Some(Json::Array(all)) => all
                .iter()
                .filter_map(|t| t["template"].as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        };
        for (i, tok) in v.tokens.iter().enumerate().take(used) {
            let ty = v.ty(i);
            if ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED {
                let special = ty == TOKEN_CONTROL;
                decoder.insert(
                    i.to_string(),
                    json!({"content": tok, "lstrip": false, "normalized": false,
                           "rstrip": false, "single_word": false, "special": special}),
                );
                // Special tokens the chat template writes literally (<|im_start|>).
                if special && template_text.contains(tok.as_str()) {
                    additional.push(Json::from(tok.as_str()));
                }
            }
        }
        c.insert("added_tokens_decoder".into(), Json::Object(decoder));
        c.insert("additional_special_tokens".into(), additional.into());
    }
    c.insert("bos_token".into(), text(v.bos));
    c.insert("clean_up_tokenization_spaces".into(), false.into());
    c.insert("eos_token".into(), text(v.eos));
    c.insert("model_max_length".into(), s.context.into());
    c.insert("pad_token".into(), text(v.pad));
    let class = match (spm, kind) {
        (true, k) if k.gemma() => "GemmaTokenizer",
        (true, _) => "LlamaTokenizer",
        (false, Kind::Qwen2 | Kind::Qwen3) => "Qwen2Tokenizer",
        (false, _) => "GPT2Tokenizer",
    };
    c.insert("tokenizer_class".into(), class.into());
    c.insert("unk_token".into(), text(v.unk));
    if !spm {
        c.insert("vocab_size".into(), used.into());
        if class == "Qwen2Tokenizer" {
            c.insert("errors".into(), "replace".into());
            c.insert("split_special_tokens".into(), false.into());
        }
    }
    if let Some(t) = template {
        c.insert("chat_template".into(), t);
    }
    Ok(Json::Object(c))
}

/// A tokenizer.json pre-tokenizer, normalizer, post-processor ByteLevel and
/// decoder for `tokenizer.ggml.pre`, as llama.cpp splits text for it.
struct PreTokenizer {
    normalizer: Json,
    pre_tokenizer: Json,
    post_byte_level: Json,
    decoder: Json,
    ignore_merges: bool,
}

fn pre_tokenizer(pre: &str) -> std::result::Result<PreTokenizer, String> {
    let byte_level = |prefix: bool, trim: bool, regex: bool| json!({"type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": trim, "use_regex": regex});
    let split = |regex: &str| json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false});
    let gpt2_post = byte_level(true, false, true);
    let gpt2_decoder = byte_level(true, true, true);
    Ok(match pre {
        // LLAMA_VOCAB_PRE_TYPE_STARCODER / SMOLLM / REFACT: every digit
        // alone, then the GPT-2 split.
        "smollm" | "starcoder" | "refact" | "codeshell" => PreTokenizer {
            normalizer: Json::Null,
            pre_tokenizer: json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(false, true, true)]}),
            post_byte_level: gpt2_post,
            decoder: gpt2_decoder,
            ignore_merges: false,
        },
        "gpt-2" | "gpt2" | "phi-2" | "roberta-bpe" | "default" => PreTokenizer {
            normalizer: Json::Null,
            pre_tokenizer: byte_level(false, true, true),
            post_byte_level: gpt2_post,
            decoder: gpt2_decoder,
            ignore_merges: false,
        },
        "llama-bpe" | "llama3" | "llama-v3" | "smaug-bpe" | "dbrx" | "falcon3" => PreTokenizer {
            normalizer: Json::Null,
            pre_tokenizer: json!({"type": "Sequence", "pretokenizers": [
                split(LLAMA3_SPLIT), byte_level(false, true, false)]}),
            post_byte_level: gpt2_post,
            decoder: gpt2_decoder,
            // llama.cpp's LLAMA3 tokenizer, like Meta's tokenizer.json,
            // takes a whole word that is in the vocabulary as one token.
            ignore_merges: true,
        },
        "qwen2" | "deepseek-r1-qwen" | "megrez" => PreTokenizer {
            normalizer: json!({"type": "NFC"}),
            pre_tokenizer: json!({"type": "Sequence", "pretokenizers": [
                split(QWEN2_SPLIT), byte_level(false, false, false)]}),
            post_byte_level: byte_level(false, false, false),
            decoder: byte_level(false, false, false),
            ignore_merges: false,
        },
        other => {
            return Err(format!(
                "tokenizer.ggml.pre `{other}` is not supported (smollm, starcoder, gpt-2, default, llama-bpe, qwen2 and their aliases are)"
            ))
        }
    })
}

/// The byte-level BPE tokenizer.json of a `gpt2` vocabulary (the first
/// `used` tokens), or why there is none.
fn bpe_tokenizer(v: &Vocab, used: usize) -> std::result::Result<Json, String> {
    let pre = pre_tokenizer(v.pre.as_deref().unwrap_or("default"))?;
    let merges = v
        .merges
        .as_ref()
        .ok_or("the gpt2 vocabulary has no tokenizer.ggml.merges")?;
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (i, tok) in v.tokens.iter().enumerate().take(used) {
        if vocab.insert(tok.clone(), i.into()).is_some() {
            return Err(format!("token {tok:?} appears twice in the vocabulary"));
        }
        match v.ty(i) {
            TOKEN_NORMAL | TOKEN_UNKNOWN => {}
            t @ (TOKEN_CONTROL | TOKEN_USER_DEFINED) => added.push(json!({
                "id": i, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": t == TOKEN_CONTROL
            })),
            t => {
                return Err(format!(
                    "token {i} {tok:?} has type {t}, unexpected in a gpt2 vocabulary"
                ))
            }
        }
    }
    let merges = merges
        .iter()
        .map(|m| match m.split(' ').collect::<Vec<_>>().as_slice() {
            [a, b] => Ok(json!([a, b])),
            _ => Err(format!("merge {m:?} is not two tokens")),
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut prefix = Vec::new();
    let mut suffix = Vec::new();
    if v.adds_bos() {
        prefix.push(
            v.bos
                .ok_or("add_bos_token is true but there is no BOS token")?,
        );
    }
    if v.add_eos == Some(true) {
        suffix.push(
            v.eos
                .ok_or("add_eos_token is true but there is no EOS token")?,
        );
    }
    let post = if prefix.is_empty() && suffix.is_empty() {
        pre.post_byte_level
    } else {
        let name = |id: u64| v.text(Some(id)).map(str::to_string).ok_or("no such token");
        let tok = |t: &str| json!({"SpecialToken": {"id": t, "type_id": 0}});
        let mut single = Vec::new();
        let mut pair = Vec::new();
        let mut special = Map::new();
        let (pre_names, post_names) = (
            prefix
                .iter()
                .map(|&i| name(i))
                .collect::<std::result::Result<Vec<_>, _>>()?,
            suffix
                .iter()
                .map(|&i| name(i))
                .collect::<std::result::Result<Vec<_>, _>>()?,
        );
        for (seq, type_id) in [("A", 0), ("B", 1)] {
            for t in &pre_names {
                pair.push(tok(t));
                if seq == "A" {
                    single.push(tok(t));
                }
            }
            let s = json!({"Sequence": {"id": seq, "type_id": type_id}});
            pair.push(s.clone());
            if seq == "A" {
                single.push(s);
            }
            for t in &post_names {
                pair.push(tok(t));
                if seq == "A" {
                    single.push(tok(t));
                }
            }
        }
        for (t, id) in pre_names
            .iter()
            .zip(&prefix)
            .chain(post_names.iter().zip(&suffix))
        {
            special.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
        }
        json!({"type": "Sequence", "processors": [pre.post_byte_level, {
            "type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special}]})
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": pre.normalizer,
        "pre_tokenizer": pre.pre_tokenizer,
        "post_processor": post,
        "decoder": pre.decoder,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": pre.ignore_merges,
            "vocab": vocab, "merges": merges
        }
    }))
}

/// The SentencePiece model a `llama` vocabulary holds: its pieces, scores and
/// types (the unknown id marked unknown, as SentencePiece has it), BPE,
/// identity normalization, a dummy prefix as `tokenizer.ggml.add_space_prefix`
/// says (default on), extra whitespace kept (llama.cpp never removes it).
fn spm_model(v: &Vocab) -> std::result::Result<spm::SpmModel, String> {
    let scores = v
        .scores
        .as_ref()
        .ok_or("the llama vocabulary has no tokenizer.ggml.scores")?;
    if scores.len() != v.tokens.len() || v.types.len() != v.tokens.len() {
        return Err(format!(
            "{} tokens, {} scores and {} token types differ in number",
            v.tokens.len(),
            scores.len(),
            v.types.len()
        ));
    }
    let unk = v.unk.and_then(|u| usize::try_from(u).ok());
    let mut pieces = Vec::with_capacity(v.tokens.len());
    for (i, (tok, score)) in v.tokens.iter().zip(scores).enumerate() {
        let kind = match v.ty(i) {
            _ if Some(i) == unk => spm::PieceType::Unknown,
            TOKEN_NORMAL => spm::PieceType::Normal,
            TOKEN_UNKNOWN => spm::PieceType::Unknown,
            TOKEN_CONTROL => spm::PieceType::Control,
            TOKEN_USER_DEFINED => spm::PieceType::UserDefined,
            TOKEN_UNUSED => spm::PieceType::Unused,
            TOKEN_BYTE => spm::PieceType::Byte,
            t => return Err(format!("token {i} {tok:?} has unknown type {t}")),
        };
        pieces.push(spm::Piece {
            piece: tok.clone(),
            score: *score as f32,
            kind,
        });
    }
    Ok(spm::SpmModel {
        byte_fallback: pieces.iter().any(|p| p.kind == spm::PieceType::Byte),
        pieces,
        model_type: 2,
        normalizer_name: "identity".into(),
        precompiled_charsmap: Vec::new(),
        add_dummy_prefix: v.add_space_prefix.unwrap_or(true),
        remove_extra_whitespaces: false,
        escape_whitespaces: true,
    })
}

/// Gives the data bytes of tensor `index` of the [`Gguf`] being viewed
/// (`Tensor::len` bytes from `Tensor::start` of the file that holds it).
pub type TensorReader<'a> = dyn Fn(usize) -> Result<Vec<u8>> + 'a;

/// The data bytes of `t`, read from the file at `path`.
pub fn read_tensor_data(path: &Path, t: &Tensor) -> Result<Vec<u8>> {
    let len = usize::try_from(t.len).map_err(|_| PrepError::Gguf {
        path: path.to_path_buf(),
        reason: format!(
            "tensor `{}` of {} bytes does not fit in memory",
            t.name, t.len
        ),
    })?;
    let mut bytes = vec![0u8; len];
    let mut f = std::fs::File::open(path).map_err(|e| PrepError::io(path, e))?;
    f.seek(SeekFrom::Start(t.start))
        .and_then(|_| f.read_exact(&mut bytes))
        .map_err(|e| PrepError::io(path, e))?;
    Ok(bytes)
}

/// Reads what `g`, the single GGUF file at `path`, holds as a Hugging Face
/// checkpoint: [`hf_view_with`], reading the few small tensors that hold
/// RoPE factors (`rope_freqs`, `rope_factors_long/short`) from `path`.
pub fn hf_view(g: &Gguf, path: &Path) -> Result<HfView> {
    hf_view_with(g, path, &|i| read_tensor_data(path, &g.tensors[i]))
}

/// Reads what `g` holds as a Hugging Face checkpoint; `g` may be the merged
/// table of a split file's parts, `read` then gives each tensor's bytes from
/// the part holding it (only RoPE factor tensors are read, a few KiB).
/// `path` names the model in errors: [`PrepError::Gguf`] for malformed or
/// inconsistent content, [`PrepError::Config`] for content this conversion
/// does not handle (an architecture outside [`SUPPORTED_ARCHS`], experts,
/// YaRN, a tensor without a Hugging Face counterpart).
pub fn hf_view_with(g: &Gguf, path: &Path, read: &TensorReader) -> Result<HfView> {
    let arch = match g.get("general.architecture") {
        Some(Value::Str(a)) => a.clone(),
        Some(v) => {
            return Err(PrepError::Gguf {
                path: path.to_path_buf(),
                reason: format!("general.architecture is {v:?}, not a string"),
            })
        }
        None => {
            return Err(PrepError::Gguf {
                path: path.to_path_buf(),
                reason: "the metadata has no general.architecture".into(),
            })
        }
    };
    let kind = Kind::of(&arch).ok_or_else(|| PrepError::Config {
        path: path.to_path_buf(),
        reason: format!(
            "GGUF architecture `{arch}` is not supported (supported: {})",
            SUPPORTED_ARCHS.join(", ")
        ),
    })?;
    let m = Meta {
        g,
        path,
        arch: &arch,
        read,
    };
    let mut notes = Vec::new();
    let shape = Shape::read(&m, kind)?;
    let vocab = Vocab::read(&m, shape.vocab)?;
    let rope = rope_config(&m, kind, &shape, &mut notes)?;
    let tensors = map_tensors(&m, kind, &shape, &mut notes)?;
    let config = build_config(&m, kind, &shape, rope, &vocab, &mut notes)?;
    let generation_config = generation_config(kind, &vocab);

    // Padding entries at the end of a byte-level vocabulary (Qwen's
    // `[PAD151665]`…) are embedding rows, not tokens, as in Qwen's own files.
    let mut used = vocab.tokens.len();
    if !vocab.is_spm() {
        while used > 0 && vocab.ty(used - 1) == TOKEN_UNUSED {
            used -= 1;
        }
        if used < vocab.tokens.len() {
            notes.push(format!(
                "{} unused padding tokens at the end of the vocabulary left out of the tokenizer",
                vocab.tokens.len() - used
            ));
        }
    }
    let tokenizer_config = tokenizer_config(&m, kind, &shape, &vocab, used)?;
    let serialized = |t: Json| {
        serde_json::to_vec(&t).map_err(|e| format!("tokenizer.json does not serialize: {e}"))
    };
    let built = match vocab.model.as_deref() {
        _ if vocab.tokens.is_empty() => Err("the file has no tokenizer.ggml.tokens".to_string()),
        Some("gpt2") => bpe_tokenizer(&vocab, used).and_then(serialized),
        Some("llama") => spm_model(&vocab).and_then(|model| {
            let additions = spm::Additions::of(&arch, tokenizer_config.as_object())
                .map_err(|e| e.to_string())?;
            spm::tokenizer_json_bytes(&model, &additions).map_err(|e| e.to_string())
        }),
        Some(other) => Err(format!(
            "tokenizer.ggml.model `{other}` is not supported (gpt2 and llama are)"
        )),
        None => Err("the file has no tokenizer.ggml.model".to_string()),
    };
    let tokenizer_json = match built {
        Ok(t) => Some(t),
        Err(why) => {
            notes.push(format!("no tokenizer.json: {why}"));
            None
        }
    };
    Ok(HfView {
        arch,
        config,
        generation_config,
        tokenizer_json,
        tokenizer_config,
        tensors,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_architecture;
    use strata_format::manifest::{Architecture, RopeScaling};

    const H: u64 = 64;
    const HEADS: u64 = 4;
    const KV: u64 = 2;
    const HD: u64 = 16;
    const FF: u64 = 96;
    const LAYERS: u64 = 2;

    /// Metadata under construction: (key, GGUF type id, encoded value).
    #[derive(Default)]
    struct Kv(Vec<(String, u32, Vec<u8>)>);

    fn string(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend(s.as_bytes());
        v
    }

    fn array(elem: u32, items: Vec<Vec<u8>>) -> Vec<u8> {
        let mut v = elem.to_le_bytes().to_vec();
        v.extend((items.len() as u64).to_le_bytes());
        for i in items {
            v.extend(i);
        }
        v
    }

    impl Kv {
        fn set(&mut self, key: &str, ty: u32, value: Vec<u8>) -> &mut Kv {
            self.0.retain(|(k, _, _)| k != key);
            self.0.push((key.to_string(), ty, value));
            self
        }
        fn str(&mut self, key: &str, v: &str) -> &mut Kv {
            self.set(key, 8, string(v))
        }
        fn u32(&mut self, key: &str, v: u32) -> &mut Kv {
            self.set(key, 4, v.to_le_bytes().to_vec())
        }
        fn f32(&mut self, key: &str, v: f32) -> &mut Kv {
            self.set(key, 6, v.to_le_bytes().to_vec())
        }
        fn bool(&mut self, key: &str, v: bool) -> &mut Kv {
            self.set(key, 7, vec![u8::from(v)])
        }
        fn strs(&mut self, key: &str, v: &[&str]) -> &mut Kv {
            self.set(key, 9, array(8, v.iter().map(|s| string(s)).collect()))
        }
        fn i32s(&mut self, key: &str, v: &[i32]) -> &mut Kv {
            let items = v.iter().map(|x| x.to_le_bytes().to_vec()).collect();
            self.set(key, 9, array(5, items))
        }
        fn f32s(&mut self, key: &str, v: &[f32]) -> &mut Kv {
            let items = v.iter().map(|x| x.to_le_bytes().to_vec()).collect();
            self.set(key, 9, array(6, items))
        }
        fn remove(&mut self, key: &str) -> &mut Kv {
            self.0.retain(|(k, _, _)| k != key);
            self
        }
    }

    /// A byte-level vocabulary of 10 tokens, three of them control tokens.
    const BPE_TOKENS: [&str; 10] = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "a",
        "b",
        "ab",
        "\u{120}",
        "\u{120}a",
        "1",
        "2",
    ];

    fn bpe_vocab(kv: &mut Kv) {
        kv.str("tokenizer.ggml.model", "gpt2")
            .str("tokenizer.ggml.pre", "smollm")
            .strs("tokenizer.ggml.tokens", &BPE_TOKENS)
            .i32s("tokenizer.ggml.token_type", &[3, 3, 3, 1, 1, 1, 1, 1, 1, 1])
            .strs("tokenizer.ggml.merges", &["a b", "\u{120} a"])
            .u32("tokenizer.ggml.bos_token_id", 1)
            .u32("tokenizer.ggml.eos_token_id", 2)
            .u32("tokenizer.ggml.padding_token_id", 0)
            .bool("tokenizer.ggml.add_bos_token", false)
            .str(
                "tokenizer.chat_template",
                "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}",
            );
    }

    /// A SentencePiece vocabulary of 10 pieces, as Gemma's GGUFs hold one.
    fn spm_vocab(kv: &mut Kv) {
        kv.str("tokenizer.ggml.model", "llama")
            .str("tokenizer.ggml.pre", "default")
            .strs(
                "tokenizer.ggml.tokens",
                &[
                    "<pad>",
                    "<eos>",
                    "<bos>",
                    "<unk>",
                    "\u{2581}",
                    "a",
                    "b",
                    "ab",
                    "\u{2581}a",
                    "<0x41>",
                ],
            )
            .f32s(
                "tokenizer.ggml.scores",
                &[0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -0.5, -0.7, 0.0],
            )
            .i32s("tokenizer.ggml.token_type", &[3, 3, 3, 3, 1, 1, 1, 1, 1, 6])
            .u32("tokenizer.ggml.bos_token_id", 2)
            .u32("tokenizer.ggml.eos_token_id", 1)
            .u32("tokenizer.ggml.unknown_token_id", 3)
            .u32("tokenizer.ggml.padding_token_id", 0)
            .bool("tokenizer.ggml.add_bos_token", true)
            .bool("tokenizer.ggml.add_space_prefix", false);
    }

    /// Tensors: (name, GGUF dims, F32 values or zeros).
    type Tensors = Vec<(String, Vec<u64>, Vec<f32>)>;

    fn zeros(name: &str, dims: &[u64]) -> (String, Vec<u64>, Vec<f32>) {
        let n = dims.iter().product::<u64>() as usize;
        (name.to_string(), dims.to_vec(), vec![0.0; n])
    }

    /// A tiny model of `arch`: its metadata and tensors (untied unless `tie`).
    fn model(arch: &str, tie: bool) -> (Kv, Tensors) {
        let mut kv = Kv::default();
        let k = |s: &str| format!("{arch}.{s}");
        kv.str("general.architecture", arch)
            .u32(&k("block_count"), LAYERS as u32)
            .u32(&k("context_length"), 256)
            .u32(&k("embedding_length"), H as u32)
            .u32(&k("feed_forward_length"), FF as u32)
            .u32(&k("attention.head_count"), HEADS as u32)
            .u32(&k("attention.head_count_kv"), KV as u32)
            .f32(&k("attention.layer_norm_rms_epsilon"), 1e-5)
            .f32(&k("rope.freq_base"), 10000.0);
        let gemma = arch.starts_with("gemma");
        if gemma {
            spm_vocab(&mut kv);
            kv.u32(&k("attention.key_length"), HD as u32)
                .u32(&k("attention.value_length"), HD as u32)
                .u32(&k("attention.sliding_window"), 8);
        } else {
            bpe_vocab(&mut kv);
        }
        let v = 10;
        let mut t: Tensors = vec![zeros("token_embd.weight", &[H, v])];
        for l in 0..LAYERS {
            let b = |s: &str| format!("blk.{l}.{s}");
            t.push(zeros(&b("attn_norm.weight"), &[H]));
            if arch == "phi3" {
                t.push(zeros(&b("attn_qkv.weight"), &[H, (HEADS + 2 * KV) * HD]));
                t.push(zeros(&b("ffn_up.weight"), &[H, 2 * FF]));
            } else {
                t.push(zeros(&b("attn_q.weight"), &[H, HEADS * HD]));
                t.push(zeros(&b("attn_k.weight"), &[H, KV * HD]));
                t.push(zeros(&b("attn_v.weight"), &[H, KV * HD]));
                t.push(zeros(&b("ffn_gate.weight"), &[H, FF]));
                t.push(zeros(&b("ffn_up.weight"), &[H, FF]));
            }
            t.push(zeros(&b("attn_output.weight"), &[HEADS * HD, H]));
            t.push(zeros(&b("ffn_down.weight"), &[FF, H]));
            t.push(zeros(&b("ffn_norm.weight"), &[H]));
            if arch == "qwen2" {
                t.push(zeros(&b("attn_q.bias"), &[HEADS * HD]));
                t.push(zeros(&b("attn_k.bias"), &[KV * HD]));
                t.push(zeros(&b("attn_v.bias"), &[KV * HD]));
            }
            if gemma {
                t.push(zeros(&b("post_attention_norm.weight"), &[H]));
                t.push(zeros(&b("post_ffw_norm.weight"), &[H]));
            }
            if arch == "qwen3" || arch == "gemma3" {
                t.push(zeros(&b("attn_q_norm.weight"), &[HD]));
                t.push(zeros(&b("attn_k_norm.weight"), &[HD]));
            }
        }
        t.push(zeros("output_norm.weight", &[H]));
        if !tie {
            t.push(zeros("output.weight", &[H, v]));
        }
        (kv, t)
    }

    fn write(dir: &Path, kv: &Kv, tensors: &Tensors) -> std::path::PathBuf {
        let p = dir.join("m.gguf");
        let kv: Vec<(&str, u32, Vec<u8>)> =
            kv.0.iter()
                .map(|(k, t, v)| (k.as_str(), *t, v.clone()))
                .collect();
        let tensors: Vec<(&str, Vec<u64>, u32, Vec<u8>)> = tensors
            .iter()
            .map(|(n, d, v)| {
                let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                (n.as_str(), d.clone(), 0u32, bytes)
            })
            .collect();
        crate::gguf::tests::write(&p, &kv, &tensors);
        p
    }

    fn view_of(kv: &Kv, tensors: &Tensors) -> Result<HfView> {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), kv, tensors);
        let g = Gguf::open(&p)?;
        hf_view(&g, &p)
    }

    fn arch_of(v: &HfView) -> Architecture {
        parse_architecture(&v.config, Path::new("config.json"))
            .unwrap_or_else(|e| panic!("{e}\n{:#}", v.config))
    }

    fn tokenizer(v: &HfView) -> Json {
        serde_json::from_slice(v.tokenizer_json.as_ref().expect("tokenizer.json")).unwrap()
    }

    fn find<'a>(v: &'a HfView, name: &str) -> &'a MappedTensor {
        v.tensors
            .iter()
            .find(|t| t.hf_name == name)
            .unwrap_or_else(|| panic!("no {name}"))
    }

    #[test]
    fn llama_config_tensors_and_byte_level_tokenizer() {
        let (kv, t) = model("llama", true);
        let v = view_of(&kv, &t).unwrap();
        let a = arch_of(&v);
        assert_eq!(
            (a.family.as_str(), a.source_class.as_str()),
            ("llama", "LlamaForCausalLM")
        );
        assert_eq!(
            (
                a.hidden_size,
                a.num_layers,
                a.num_attention_heads,
                a.num_kv_heads
            ),
            (H, LAYERS, HEADS, KV)
        );
        assert_eq!(
            (a.head_dim, a.intermediate_size, a.vocab_size),
            (HD, FF, 10)
        );
        assert_eq!((a.max_position_embeddings, a.norm_eps), (256, 1e-5));
        assert!(a.tie_word_embeddings && !a.attention_bias && a.rope.scaling.is_none());
        assert_eq!(v.config["rms_norm_eps"], json!(1e-5));
        // Every tensor, in GGUF order, with HF shapes; q/k marked for un-permuting.
        assert_eq!(v.tensors.len(), t.len());
        assert!(v
            .tensors
            .windows(2)
            .all(|w| w[0].gguf_index < w[1].gguf_index));
        let q = find(&v, "model.layers.1.self_attn.q_proj.weight");
        assert_eq!(
            (q.hf_shape.clone(), q.unpermute_heads),
            (vec![64, 64], Some(4))
        );
        let k = find(&v, "model.layers.0.self_attn.k_proj.weight");
        assert_eq!(
            (k.hf_shape.clone(), k.unpermute_heads),
            (vec![32, 64], Some(2))
        );
        assert_eq!(
            find(&v, "model.layers.0.self_attn.v_proj.weight").unpermute_heads,
            None
        );
        assert_eq!(
            find(&v, "model.layers.0.mlp.down_proj.weight").hf_shape,
            vec![64, 96]
        );
        assert!(find(&v, "model.layers.0.post_attention_layernorm.weight").hf_shape == vec![64]);
        assert!(v.tensors.iter().all(|t| !t.norm_plus_one));
        assert!(!v.tensors.iter().any(|t| t.hf_name == "lm_head.weight"));

        assert_eq!(
            v.generation_config,
            json!({"_from_model_config": true, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0})
        );
        let tc = &v.tokenizer_config;
        assert_eq!(
            (
                tc["bos_token"].as_str(),
                tc["eos_token"].as_str(),
                tc["pad_token"].as_str()
            ),
            (
                Some("<|im_start|>"),
                Some("<|im_end|>"),
                Some("<|endoftext|>")
            )
        );
        assert_eq!(tc["add_bos_token"], false);
        assert!(tc["chat_template"]
            .as_str()
            .unwrap()
            .contains("<|im_start|>"));
        assert_eq!(
            tc["additional_special_tokens"],
            json!(["<|im_start|>", "<|im_end|>"])
        );
        assert_eq!(tc["added_tokens_decoder"]["2"]["content"], "<|im_end|>");

        let tk = tokenizer(&v);
        assert_eq!(tk["model"]["type"], "BPE");
        assert_eq!(tk["model"]["vocab"]["\u{120}a"], 7);
        assert_eq!(tk["model"]["merges"], json!([["a", "b"], ["\u{120}", "a"]]));
        assert_eq!(tk["pre_tokenizer"]["pretokenizers"][0]["type"], "Digits");
        assert_eq!(tk["post_processor"]["type"], "ByteLevel");
        assert_eq!(tk["decoder"]["type"], "ByteLevel");
        let added = tk["added_tokens"].as_array().unwrap();
        assert_eq!(added.len(), 3);
        assert_eq!(
            (added[1]["id"].as_u64(), added[1]["special"].as_bool()),
            (Some(1), Some(true))
        );
    }

    #[test]
    fn bos_pre_tokenizers_and_unsupported_vocabularies() {
        let (mut kv, t) = model("llama", false);
        kv.bool("tokenizer.ggml.add_bos_token", true)
            .str("tokenizer.ggml.pre", "llama-bpe");
        let v = view_of(&kv, &t).unwrap();
        assert!(!arch_of(&v).tie_word_embeddings);
        assert_eq!(find(&v, "lm_head.weight").hf_shape, vec![10, 64]);
        let tk = tokenizer(&v);
        let post = &tk["post_processor"];
        assert_eq!(post["type"], "Sequence");
        let template = &post["processors"][1];
        assert_eq!(template["single"][0]["SpecialToken"]["id"], "<|im_start|>");
        assert_eq!(
            template["special_tokens"]["<|im_start|>"]["ids"],
            json!([1])
        );
        assert_eq!(tk["pre_tokenizer"]["pretokenizers"][0]["type"], "Split");
        assert_eq!(tk["model"]["ignore_merges"], true);
        assert_eq!(v.tokenizer_config["add_bos_token"], true);
        // Without the flag, llama.cpp adds BOS for Llama 3's vocabulary, not GPT-2's.
        kv.remove("tokenizer.ggml.add_bos_token");
        let v = view_of(&kv, &t).unwrap();
        assert_eq!(tokenizer(&v)["post_processor"]["type"], "Sequence");
        kv.str("tokenizer.ggml.pre", "gpt-2");
        let v = view_of(&kv, &t).unwrap();
        assert_eq!(tokenizer(&v)["post_processor"]["type"], "ByteLevel");
        assert_eq!(v.tokenizer_config["add_bos_token"], false);

        kv.str("tokenizer.ggml.pre", "qwen2");
        let tk = tokenizer(&view_of(&kv, &t).unwrap());
        assert_eq!(tk["normalizer"]["type"], "NFC");
        assert_eq!(
            tk["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"],
            QWEN2_SPLIT
        );

        kv.str("tokenizer.ggml.pre", "some-new-pre");
        let v = view_of(&kv, &t).unwrap();
        assert!(v.tokenizer_json.is_none());
        assert!(
            v.notes.iter().any(|n| n.contains("some-new-pre")),
            "{:?}",
            v.notes
        );

        kv.str("tokenizer.ggml.pre", "gpt-2")
            .str("tokenizer.ggml.model", "bert");
        let v = view_of(&kv, &t).unwrap();
        assert!(v.tokenizer_json.is_none());
        assert!(
            v.notes.iter().any(|n| n.contains("`bert`")),
            "{:?}",
            v.notes
        );
        // The rest of the view does not depend on the tokenizer.
        arch_of(&v);
    }

    /// The factors llama.cpp's converter writes for Llama 3.1's rope_scaling.
    fn llama3_tensor(theta: f64, factor: f64) -> Vec<f32> {
        llama3_factors(theta, HD, factor, 1.0, 4.0, 8192.0)
            .into_iter()
            .map(|x| x as f32)
            .collect()
    }

    #[test]
    fn llama3_rope_scaling_from_rope_freqs() {
        let (mut kv, mut t) = model("llama", true);
        kv.f32("llama.rope.freq_base", 500000.0);
        let factors = llama3_tensor(500000.0, 8.0);
        // Head dimension 16 at base 5e5: high, smoothed and low frequencies all occur.
        assert!(factors[0] == 1.0 && factors[7] == 8.0, "{factors:?}");
        assert!(factors.iter().any(|&f| f > 1.0 && f < 8.0), "{factors:?}");
        t.insert(0, ("rope_freqs.weight".into(), vec![HD / 2], factors));
        let v = view_of(&kv, &t).unwrap();
        match arch_of(&v).rope.scaling {
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => assert_eq!(
                (
                    factor,
                    low_freq_factor,
                    high_freq_factor,
                    original_max_position_embeddings
                ),
                (8.0, 1.0, 4.0, 8192)
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(arch_of(&v).rope.theta, 500000.0);
        assert_eq!(v.tensors.len(), t.len() - 1);
        assert!(v.notes.iter().any(|n| n.contains("rope_freqs")));
        assert!(v.tensors.iter().all(|m| m.gguf_index != 0));
        // A split file's reader gives each tensor's bytes from its own part;
        // the bytes must be what the table entry says.
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), &kv, &t);
        let g = Gguf::open(&p).unwrap();
        let bytes = read_tensor_data(&p, &g.tensors[0]).unwrap();
        let reads = std::cell::Cell::new(0);
        let w = hf_view_with(&g, &p, &|i| {
            assert_eq!(i, 0);
            reads.set(reads.get() + 1);
            Ok(bytes.clone())
        })
        .unwrap();
        assert_eq!((w.config.clone(), reads.get()), (v.config.clone(), 1));
        let e = hf_view_with(&g, &p, &|_| Ok(vec![0; 3]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("3 bytes read"), "{e}");

        // Factors that llama3 scaling does not reproduce are refused.
        t[0].2[3] *= 1.5;
        let e = view_of(&kv, &t).unwrap_err().to_string();
        assert!(
            e.contains("m.gguf") && e.contains("rope_freqs") && e.contains("reproduce"),
            "{e}"
        );
        // As is YaRN.
        t.remove(0);
        kv.str("llama.rope.scaling.type", "yarn")
            .f32("llama.rope.scaling.factor", 4.0);
        let e = view_of(&kv, &t).unwrap_err().to_string();
        assert!(e.contains("yarn"), "{e}");
        // Linear scaling maps.
        kv.str("llama.rope.scaling.type", "linear");
        let v = view_of(&kv, &t).unwrap();
        assert_eq!(
            arch_of(&v).rope.scaling,
            Some(RopeScaling::Linear { factor: 4.0 })
        );
    }

    #[test]
    fn qwen2_biases_and_end_ids() {
        let (kv, t) = model("qwen2", true);
        let v = view_of(&kv, &t).unwrap();
        let a = arch_of(&v);
        assert_eq!(a.family, "qwen2");
        assert!(a.attention_bias && !a.attention_out_bias && a.sliding_window.is_none());
        assert_eq!(
            find(&v, "model.layers.1.self_attn.k_proj.bias").hf_shape,
            vec![32]
        );
        assert!(v.tensors.iter().all(|t| t.unpermute_heads.is_none()));
        // Qwen stops on <|im_end|> and <|endoftext|>.
        assert_eq!(v.generation_config["eos_token_id"], json!([2, 0]));
        assert_eq!(v.tokenizer_config["tokenizer_class"], "Qwen2Tokenizer");
        // Without its biases the file is not a Qwen2 model.
        let t: Tensors = t
            .into_iter()
            .filter(|(n, _, _)| n != "blk.1.attn_v.bias")
            .collect();
        let e = view_of(&kv, &t).unwrap_err().to_string();
        assert!(e.contains("model.layers.1.self_attn.v_proj.bias"), "{e}");
    }

    #[test]
    fn qwen3_qk_norms_and_trailing_padding_tokens() {
        let (mut kv, mut t) = model("qwen3", true);
        kv.u32("qwen3.attention.key_length", HD as u32)
            .i32s("tokenizer.ggml.token_type", &[3, 3, 3, 1, 1, 1, 1, 1, 5, 5]);
        // More embedding rows than tokens.
        t[0] = zeros("token_embd.weight", &[H, 12]);
        let v = view_of(&kv, &t).unwrap();
        let a = arch_of(&v);
        assert_eq!(
            (a.family.as_str(), a.head_dim, a.vocab_size),
            ("qwen3", HD, 12)
        );
        assert!(a.qk_norm && !a.attention_bias);
        assert_eq!(
            find(&v, "model.layers.0.self_attn.q_norm.weight").hf_shape,
            vec![16]
        );
        let tk = tokenizer(&v);
        assert_eq!(tk["model"]["vocab"].as_object().unwrap().len(), 8);
        assert_eq!(v.tokenizer_config["vocab_size"], 8);
        assert!(
            v.notes.iter().any(|n| n.contains("2 unused")),
            "{:?}",
            v.notes
        );
    }

    #[test]
    fn gemma3_as_llama_cpp_runs_it_with_a_sentencepiece_tokenizer() {
        let (kv, t) = model("gemma3", true);
        let v = view_of(&kv, &t).unwrap();
        let a = arch_of(&v);
        assert_eq!((a.family.as_str(), a.head_dim), ("gemma3", HD));
        assert!(a.qk_norm && a.post_norms && a.tie_word_embeddings);
        assert_eq!(a.attention_scale, Some((HD as f64).powf(-0.5)));
        assert_eq!(
            (a.rope.theta, a.sliding_rope.unwrap().theta),
            (10000.0, 10000.0)
        );
        // Two layers: both slide (one full layer in six).
        assert_eq!((a.sliding_window, a.sliding_window_layers), (Some(8), None));
        for t in &v.tensors {
            assert_eq!(t.norm_plus_one, t.hf_name.contains("norm"), "{}", t.hf_name);
            assert!(t.unpermute_heads.is_none());
        }
        assert_eq!(
            find(&v, "model.layers.0.pre_feedforward_layernorm.weight").gguf_index,
            t.iter()
                .position(|x| x.0 == "blk.0.ffn_norm.weight")
                .unwrap()
        );
        let tc = &v.tokenizer_config;
        assert_eq!(
            (
                tc["bos_token"].as_str(),
                tc["unk_token"].as_str(),
                tc["add_bos_token"].as_bool()
            ),
            (Some("<bos>"), Some("<unk>"), Some(true))
        );
        assert_eq!(tc["tokenizer_class"], "GemmaTokenizer");
        let tk = tokenizer(&v);
        assert_eq!(tk["model"]["unk_token"], "<unk>");
        assert_eq!(tk["model"]["byte_fallback"], true);
        assert_eq!(
            tk["post_processor"]["special_tokens"]["<bos>"]["ids"],
            json!([2])
        );
        // No dummy prefix (add_space_prefix false): no Prepend normalizer.
        let normalizers = tk["normalizer"]["normalizers"].as_array().unwrap();
        assert!(
            normalizers.iter().all(|n| n["type"] != "Prepend"),
            "{normalizers:?}"
        );
        assert_eq!(tk["model"]["merges"][0], json!(["a", "b"]));

        // What prep makes of scripts/gguf_to_hf.py's tokenizer.model is the same tokenizer.
        let proto = {
            fn field(out: &mut Vec<u8>, n: u64, b: &[u8]) {
                out.push((n << 3 | 2) as u8);
                out.push(b.len() as u8);
                out.extend_from_slice(b);
            }
            let pieces: [(&str, f32, u8); 10] = [
                ("<pad>", 0.0, 3),
                ("<eos>", 0.0, 3),
                ("<bos>", 0.0, 3),
                ("<unk>", 0.0, 2),
                ("\u{2581}", -1.0, 1),
                ("a", -2.0, 1),
                ("b", -3.0, 1),
                ("ab", -0.5, 1),
                ("\u{2581}a", -0.7, 1),
                ("<0x41>", 0.0, 6),
            ];
            let mut out = Vec::new();
            for (p, s, t) in pieces {
                let mut m = Vec::new();
                field(&mut m, 1, p.as_bytes());
                m.push(2 << 3 | 5);
                m.extend_from_slice(&s.to_le_bytes());
                m.extend_from_slice(&[3 << 3, t]);
                field(&mut out, 1, &m);
            }
            field(&mut out, 2, &[3 << 3, 2, 0x98, 0x02, 1]);
            let mut n = Vec::new();
            field(&mut n, 1, b"identity");
            n.extend_from_slice(&[3 << 3, 0, 4 << 3, 0, 5 << 3, 1]);
            field(&mut out, 3, &n);
            out
        };
        let model = spm::SpmModel::parse(&proto).unwrap();
        let additions = spm::Additions::of("gemma3", tc.as_object()).unwrap();
        assert_eq!(tk, spm::tokenizer_json(&model, &additions).unwrap());
    }

    #[test]
    fn gemma2_soft_caps_alternating_windows_and_scalar() {
        let (mut kv, t) = model("gemma2", true);
        kv.f32("gemma2.attn_logit_softcapping", 50.0)
            .f32("gemma2.final_logit_softcapping", 30.0);
        let v = view_of(&kv, &t).unwrap();
        let a = arch_of(&v);
        assert_eq!(a.family, "gemma2");
        assert!(!a.qk_norm && a.post_norms);
        assert_eq!(
            (a.attn_logit_softcap, a.final_logit_softcap),
            (Some(50.0), Some(30.0))
        );
        assert_eq!(
            (a.sliding_window, a.sliding_window_layers),
            (Some(8), Some(vec![0]))
        );
        assert_eq!(a.attention_scale, Some((HD as f64).powf(-0.5)));
        assert!(find(&v, "model.norm.weight").norm_plus_one);
        assert!(!find(&v, "model.layers.0.mlp.up_proj.weight").norm_plus_one);
        // Gemma 2 has no q/k norms.
        let mut t2 = t.clone();
        t2.push(zeros("blk.0.attn_q_norm.weight", &[HD]));
        let e = view_of(&kv, &t2).unwrap_err().to_string();
        assert!(
            e.contains("blk.0.attn_q_norm.weight") && e.contains("counterpart"),
            "{e}"
        );
        // A window is required.
        kv.remove("gemma2.attention.sliding_window");
        let e = view_of(&kv, &t).unwrap_err().to_string();
        assert!(e.contains("sliding_window"), "{e}");
    }

    #[test]
    fn phi3_fused_projections_and_longrope() {
        let (mut kv, mut t) = model("phi3", true);
        kv.u32("phi3.rope.scaling.original_context_length", 64)
            .u32("phi3.attention.sliding_window", 0)
            .u32("phi3.rope.dimension_count", 12);
        let v = view_of(&kv, &t).unwrap();
        let a = arch_of(&v);
        assert_eq!(a.family, "phi3");
        assert_eq!((a.rope.rotary_dim, a.sliding_window), (12, None));
        assert_eq!(
            find(&v, "model.layers.0.self_attn.qkv_proj.weight").hf_shape,
            vec![128, 64]
        );
        assert_eq!(
            find(&v, "model.layers.1.mlp.gate_up_proj.weight").hf_shape,
            vec![192, 64]
        );
        assert!(a.rope.scaling.is_none());

        let long: Vec<f32> = (1..=6).map(|i| i as f32).collect();
        let short = vec![1.0f32; 6];
        t.push(("rope_factors_long.weight".into(), vec![6], long));
        t.push(("rope_factors_short.weight".into(), vec![6], short));
        kv.f32("phi3.rope.scaling.attn_factor", 1.25);
        let v = view_of(&kv, &t).unwrap();
        match arch_of(&v).rope.scaling {
            Some(RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings,
                attention_factor,
            }) => {
                assert_eq!(long_factor, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
                assert_eq!(short_factor, vec![1.0; 6]);
                assert_eq!(
                    (original_max_position_embeddings, attention_factor),
                    (64, 1.25)
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(v.tensors.len(), t.len() - 2);

        // Separate q/k/v in a phi3 file have no place in Phi3ForCausalLM.
        let (kv, mut t) = model("phi3", true);
        t.push(zeros("blk.0.attn_q.weight", &[H, H]));
        let e = view_of(&kv, &t).unwrap_err().to_string();
        assert!(e.contains("fused"), "{e}");
    }

    #[test]
    fn refusals_name_the_file_and_the_problem() {
        let err = |kv: &Kv, t: &Tensors| view_of(kv, t).unwrap_err().to_string();
        let (mut kv, t) = model("llama", true);
        kv.str("general.architecture", "gpt2");
        let e = err(&kv, &t);
        assert!(
            e.contains("m.gguf") && e.contains("`gpt2`") && e.contains("qwen2"),
            "{e}"
        );

        let (mut kv, t) = model("llama", true);
        kv.remove("llama.feed_forward_length");
        assert!(err(&kv, &t).contains("llama.feed_forward_length"));

        let (mut kv, t) = model("llama", true);
        kv.u32("llama.attention.head_count_kv", 3);
        assert!(err(&kv, &t).contains("KV heads"));

        let (kv, mut t) = model("llama", true);
        t.push(zeros("blk.0.ffn_gate_exps.weight", &[H, FF, 4]));
        assert!(err(&kv, &t).contains("mixture-of-experts"));

        let (kv, mut t) = model("llama", true);
        t.push(zeros("blk.7.attn_q.weight", &[H, H]));
        assert!(err(&kv, &t).contains("layer 7"));

        let (kv, mut t) = model("llama", true);
        t.push(zeros("mystery.weight", &[4]));
        let e = err(&kv, &t);
        assert!(
            e.contains("`mystery.weight`") && e.contains("refusing"),
            "{e}"
        );

        let (kv, mut t) = model("llama", true);
        t[1] = zeros("blk.0.attn_norm.weight", &[H + 1]);
        let e = err(&kv, &t);
        assert!(
            e.contains("blk.0.attn_norm.weight") && e.contains("[65]"),
            "{e}"
        );

        let (mut kv, t) = model("llama", true);
        kv.u32("llama.rope.dimension_count", 8);
        assert!(err(&kv, &t).contains("partial rotary"));

        let (mut kv, t) = model("llama", true);
        kv.u32("tokenizer.ggml.eos_token_id", 99);
        assert!(err(&kv, &t).contains("eos_token_id"));

        // Per-layer head counts: equal ones are one count, others are refused.
        let (mut kv, t) = model("llama", true);
        kv.i32s("llama.attention.head_count_kv", &[2, 2]);
        assert_eq!(arch_of(&view_of(&kv, &t).unwrap()).num_kv_heads, 2);
        kv.i32s("llama.attention.head_count_kv", &[2, 4]);
        assert!(err(&kv, &t).contains("differs between layers"));
    }
}
