//! `manifest.json` (SPEC.md §5): the normalized architecture, quantization
//! settings, every file with its size and sha256, and the source.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checksum::is_sha256_hex;
use crate::dtype::DType;
use crate::error::{FormatError, Result};

/// Name of the manifest file in a container directory.
pub const MANIFEST_NAME: &str = "manifest.json";
/// Upper bound on the manifest's size.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;
/// Upper bound on any count in the architecture (layers, heads, experts).
pub const MAX_COUNT: u64 = 1 << 20;
/// Upper bound on any width in the architecture (hidden, vocab, intermediate).
pub const MAX_WIDTH: u64 = 1 << 24;

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// `"MAJOR.MINOR"`; readers refuse an unknown major.
    pub format_version: String,
    /// The program that wrote the container.
    pub tool: Tool,
    /// Everything a runner needs to know about the model's maths.
    pub architecture: Architecture,
    /// How weights were encoded.
    pub quantization: Quantization,
    /// Token ids and the tokenizer files.
    pub tokenizer: TokenizerInfo,
    /// Which file holds which stage.
    pub stages: Stages,
    /// Every file of the container except the manifest, with size and sha256.
    pub files: Vec<FileEntry>,
    /// Where the weights came from.
    pub source: Source,
}

/// The writing program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tool {
    /// Program name, e.g. `strata-prep`.
    pub name: String,
    /// Program version.
    pub version: String,
}

/// Normalized architecture description (SPEC.md §5.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Architecture {
    /// Normalized family name (`llama`, `mistral`, `qwen2`, `qwen3`, ...): informational.
    pub family: String,
    /// The source's class name (e.g. `LlamaForCausalLM`): informational.
    pub source_class: String,
    /// Width of the residual stream.
    pub hidden_size: u64,
    /// Number of decoder layers.
    pub num_layers: u64,
    /// Query heads.
    pub num_attention_heads: u64,
    /// Key/value heads (GQA when fewer than query heads).
    pub num_kv_heads: u64,
    /// Width of one attention head.
    pub head_dim: u64,
    /// Width of the feed-forward hidden layer.
    pub intermediate_size: u64,
    /// Rows of the embedding and of the head.
    pub vocab_size: u64,
    /// Longest context the model was trained for.
    pub max_position_embeddings: u64,
    /// Epsilon of the RMS norms.
    pub norm_eps: f64,
    /// Rotary position embedding (of every layer, or, with
    /// [`Architecture::sliding_rope`], of the layers without a sliding window).
    pub rope: Rope,
    /// Rotary position embedding of the sliding-window layers, where it
    /// differs from `rope` (Gemma 3: a lower base, no scaling). `None` means
    /// `rope` for every layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_rope: Option<Rope>,
    /// Activation of the gated feed-forward block.
    pub activation: Activation,
    /// Whether the head reuses the embedding matrix (`embed.tokens`).
    pub tie_word_embeddings: bool,
    /// Whether q, k and v projections carry biases (`attn.{q,k,v}.bias`).
    #[serde(default)]
    pub attention_bias: bool,
    /// Whether the output projection carries a bias (`attn.o.bias`).
    #[serde(default)]
    pub attention_out_bias: bool,
    /// Whether the feed-forward projections carry biases (`mlp.*.bias`).
    #[serde(default)]
    pub mlp_bias: bool,
    /// Whether queries and keys are RMS-normalized per head (`attn.q_norm`, `attn.k_norm`).
    #[serde(default)]
    pub qk_norm: bool,
    /// Whether the outputs of the attention and feed-forward blocks are
    /// RMS-normalized before they join the residual stream (`attn_post_norm`,
    /// `mlp_post_norm`; Gemma 2).
    #[serde(default)]
    pub post_norms: bool,
    /// Sliding attention window in tokens, if any (see [`Architecture::sliding_window_layers`]).
    #[serde(default)]
    pub sliding_window: Option<u64>,
    /// Layers that use the sliding window; `None` with a window means every layer.
    #[serde(default)]
    pub sliding_window_layers: Option<Vec<u64>>,
    /// Mixture-of-experts settings, if the feed-forward blocks are routed.
    #[serde(default)]
    pub moe: Option<Moe>,
    /// Soft-cap of attention scores (`cap × tanh(s / cap)`), if any.
    #[serde(default)]
    pub attn_logit_softcap: Option<f64>,
    /// Soft-cap of final logits, if any.
    #[serde(default)]
    pub final_logit_softcap: Option<f64>,
    /// Attention score scale; `None` means `1/sqrt(head_dim)`.
    #[serde(default)]
    pub attention_scale: Option<f64>,
    /// Multiplier of the embeddings before the first layer; `None` means 1.
    #[serde(default)]
    pub embedding_multiplier: Option<f64>,
    /// Positions this description holds for: past it the source model's
    /// maths change in ways the container does not describe (dynamic NTK
    /// RoPE, log-n query scaling), so a runner refuses a longer context.
    /// `None` means no such limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_context: Option<u64>,
    /// ALiBi position biases instead of RoPE (Baichuan 2 13B): head `h`'s
    /// score for key `j` at query `i` gains `slope(h) × (j − i)`, with the
    /// slopes of SPEC.md §5.2, and `rope` is not applied.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub alibi: bool,
}

/// Rotary position embedding settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rope {
    /// Base of the inverse frequencies.
    pub theta: f64,
    /// Number of leading dimensions of each head that rotate (even; usually `head_dim`).
    pub rotary_dim: u64,
    /// Frequency scaling, if any.
    #[serde(default)]
    pub scaling: Option<RopeScaling>,
}

/// Frequency scaling of RoPE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Positions divided by `factor` (all frequencies divided by `factor`).
    Linear {
        /// Scaling factor.
        factor: f64,
    },
    /// Llama 3.1 frequency-dependent scaling.
    Llama3 {
        /// Scaling factor of low frequencies.
        factor: f64,
        /// Low-frequency wavelength factor.
        low_freq_factor: f64,
        /// High-frequency wavelength factor.
        high_freq_factor: f64,
        /// Context length of the original training.
        original_max_position_embeddings: u64,
    },
    /// LongRoPE (Phi-3's `longrope`, alias `su`): per-frequency divisors,
    /// `short_factor` while a sequence is at most
    /// `original_max_position_embeddings` long and `long_factor` beyond, and
    /// cos/sin multiplied by `attention_factor`.
    #[serde(rename = "longrope")]
    LongRope {
        /// Divisor of each inverse frequency for short sequences (`rotary_dim / 2` values).
        short_factor: Vec<f64>,
        /// Divisor of each inverse frequency for long sequences (`rotary_dim / 2` values).
        long_factor: Vec<f64>,
        /// Sequence length up to which `short_factor` applies.
        original_max_position_embeddings: u64,
        /// Multiplier of the rotary cos and sin.
        attention_factor: f64,
    },
}

/// Activation of the gated feed-forward block: `down(act(gate(x)) * up(x))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x * sigmoid(x)` (SwiGLU).
    Silu,
    /// GELU, tanh approximation (GeGLU).
    GeluTanh,
}

/// Mixture-of-experts settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Moe {
    /// Routed experts per layer.
    pub num_experts: u64,
    /// Experts chosen per token.
    pub top_k: u64,
    /// Width of each expert's hidden layer.
    pub expert_intermediate_size: u64,
    /// Whether the chosen experts' weights are renormalized to sum to 1.
    pub normalize_top_k: bool,
    /// Width of the shared expert, if any.
    #[serde(default)]
    pub shared_expert_intermediate_size: Option<u64>,
}

/// How weights were encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantization {
    /// Encoding of the linear weights of the decoder layers.
    pub weights: DType,
    /// Encoding of the embedding matrix.
    pub embeddings: DType,
    /// Encoding of an untied head (a tied head is the embedding matrix).
    pub head: DType,
    /// Block size of quantized encodings.
    #[serde(default)]
    pub block_size: Option<u32>,
    /// How the writer compressed tensors (`zstd:LEVEL` or `zstd-nosplit:LEVEL`;
    /// informative: each stage file's tensor table says what is compressed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
}

/// Token ids and tokenizer files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TokenizerInfo {
    /// Beginning-of-sequence token id, if the model has one.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// Ids that end generation.
    #[serde(default)]
    pub eos_token_ids: Vec<u32>,
    /// Padding token id, if any.
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// Tokenizer files copied verbatim from the source (names listed in `files` too).
    #[serde(default)]
    pub files: Vec<String>,
}

/// Which file holds which stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stages {
    /// The embeddings file.
    pub embed: String,
    /// One file per decoder layer, in order.
    pub layers: Vec<String>,
    /// The final norm and (untied) head file.
    pub head: String,
}

/// One file of the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name inside the container directory.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// sha256, lowercase hex.
    pub sha256: String,
}

/// Where the weights came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// `local` (a folder) or `hub` (a Hugging Face Hub repository).
    pub kind: String,
    /// The folder path or the repository id.
    pub location: String,
    /// The Hub revision (commit) when known.
    #[serde(default)]
    pub revision: Option<String>,
    /// The source files read, with sizes and sha256.
    #[serde(default)]
    pub files: Vec<FileEntry>,
}

/// Checks that a manifest path is a plain file name inside the container:
/// `[A-Za-z0-9._-]`, at most 255 bytes, not starting with a dot.
pub fn check_file_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err(format!("file name {name:?} must be 1 to 255 bytes"));
    }
    if name.starts_with('.') {
        return Err(format!(
            "file name {name:?} starts with a dot (hidden files and `..` are refused)"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "file name {name:?} has a character outside [A-Za-z0-9._-] (paths and separators are refused)"
        ));
    }
    Ok(())
}

impl Manifest {
    /// Loads `DIR/manifest.json` and validates it.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_NAME);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir.is_dir() => {
                let partial = std::fs::read_dir(dir).is_ok_and(|mut entries| entries.any(|_| true));
                return Err(bad(
                    &path,
                    if partial {
                        "missing: this is not a complete container (prep writes manifest.json last; it may still be running or was interrupted — rerun the same prep command to finish it)".into()
                    } else {
                        "missing: the directory is empty, not a strata container".into()
                    },
                ));
            }
            Err(e) => return Err(FormatError::io(&path, e)),
        };
        if !meta.is_file() {
            return Err(bad(
                &path,
                "not a regular file (a symbolic link, directory or device); container files must be regular files".into(),
            ));
        }
        if meta.len() > MAX_MANIFEST_BYTES {
            return Err(bad(
                &path,
                format!(
                    "{} bytes, above the {MAX_MANIFEST_BYTES}-byte limit",
                    meta.len()
                ),
            ));
        }
        let bytes = std::fs::read(&path).map_err(|e| FormatError::io(&path, e))?;
        Manifest::from_json(&bytes, &path)
    }

    /// Parses and validates manifest JSON (`path` is used in errors only).
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Manifest> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| bad(path, format!("not valid JSON: {e}")))?;
        let version = value
            .get("format_version")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad(path, "no string `format_version`".into()))?;
        let (major, minor) = parse_version(version).ok_or_else(|| {
            bad(
                path,
                format!("format_version {version:?} is not MAJOR.MINOR"),
            )
        })?;
        if major != crate::FORMAT_MAJOR {
            return Err(FormatError::UnsupportedVersion {
                path: path.to_path_buf(),
                major,
                minor,
            });
        }
        let m: Manifest = serde_json::from_value(value).map_err(|e| bad(path, e.to_string()))?;
        m.validate(path)?;
        Ok(m)
    }

    /// Serializes to pretty JSON with a trailing newline (deterministic).
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }

    /// Checks internal consistency and path safety (SPEC.md §5.4).
    pub fn validate(&self, path: &Path) -> Result<()> {
        let a = &self.architecture;
        let counts = [
            ("num_layers", a.num_layers, MAX_COUNT),
            ("num_attention_heads", a.num_attention_heads, MAX_COUNT),
            ("num_kv_heads", a.num_kv_heads, MAX_COUNT),
            ("head_dim", a.head_dim, MAX_WIDTH),
            ("hidden_size", a.hidden_size, MAX_WIDTH),
            ("intermediate_size", a.intermediate_size, MAX_WIDTH),
            ("vocab_size", a.vocab_size, MAX_WIDTH),
        ];
        for (name, v, max) in counts {
            if v == 0 || v > max {
                return Err(bad(
                    path,
                    format!("architecture.{name} = {v} is outside 1..={max}"),
                ));
            }
        }
        if a.num_attention_heads % a.num_kv_heads != 0 {
            return Err(bad(
                path,
                format!(
                    "num_attention_heads {} is not a multiple of num_kv_heads {}",
                    a.num_attention_heads, a.num_kv_heads
                ),
            ));
        }
        let finite_pos = |name: &str, v: f64| finite_positive(path, name, v);
        finite_pos("norm_eps", a.norm_eps)?;
        for (name, v) in [
            ("attn_logit_softcap", a.attn_logit_softcap),
            ("final_logit_softcap", a.final_logit_softcap),
            ("attention_scale", a.attention_scale),
            ("embedding_multiplier", a.embedding_multiplier),
        ] {
            if let Some(v) = v {
                finite_pos(name, v)?;
            }
        }
        validate_rope(path, "rope", &a.rope, a.head_dim)?;
        if let Some(r) = &a.sliding_rope {
            validate_rope(path, "sliding_rope", r, a.head_dim)?;
            if matches!(r.scaling, Some(RopeScaling::LongRope { .. })) {
                return Err(bad(
                    path,
                    "architecture.sliding_rope.scaling is longrope, which applies to a whole model, not to its sliding layers".into(),
                ));
            }
            if a.sliding_window.is_none() {
                return Err(bad(
                    path,
                    "architecture.sliding_rope is set but the model has no sliding_window".into(),
                ));
            }
        }
        if a.max_context == Some(0) {
            return Err(bad(path, "architecture.max_context is 0".into()));
        }
        if a.sliding_window == Some(0) {
            return Err(bad(path, "architecture.sliding_window is 0".into()));
        }
        if let Some(l) = a
            .sliding_window_layers
            .iter()
            .flatten()
            .find(|&&l| l >= a.num_layers)
        {
            return Err(bad(
                path,
                format!(
                    "sliding_window_layers names layer {l} of {} layers",
                    a.num_layers
                ),
            ));
        }
        if let Some(m) = &a.moe {
            if m.num_experts == 0
                || m.num_experts > MAX_COUNT
                || m.top_k == 0
                || m.top_k > m.num_experts
                || m.expert_intermediate_size == 0
                || m.expert_intermediate_size > MAX_WIDTH
            {
                return Err(bad(
                    path,
                    format!(
                        "moe: top_k {} of {} experts of width {} is invalid",
                        m.top_k, m.num_experts, m.expert_intermediate_size
                    ),
                ));
            }
        }
        if self.stages.layers.len() as u64 != a.num_layers {
            return Err(bad(
                path,
                format!(
                    "{} layer files listed for {} layers",
                    self.stages.layers.len(),
                    a.num_layers
                ),
            ));
        }
        if let Some(b) = self.quantization.block_size {
            crate::dtype::check_block_size(b)
                .map_err(|e| bad(path, format!("quantization: {e}")))?;
        }
        let mut seen = std::collections::HashSet::new();
        for f in &self.files {
            check_file_name(&f.path).map_err(|r| bad(path, r))?;
            if f.path == MANIFEST_NAME {
                return Err(bad(path, "the manifest cannot list itself".into()));
            }
            if !seen.insert(f.path.as_str()) {
                return Err(bad(path, format!("file {:?} is listed twice", f.path)));
            }
            if !is_sha256_hex(&f.sha256) {
                return Err(bad(
                    path,
                    format!("file {:?} has a malformed sha256", f.path),
                ));
            }
        }
        let stage_names = std::iter::once(&self.stages.embed)
            .chain(&self.stages.layers)
            .chain(std::iter::once(&self.stages.head))
            .chain(&self.tokenizer.files);
        for name in stage_names {
            if !seen.contains(name.as_str()) {
                return Err(bad(
                    path,
                    format!("{name:?} is used but not listed in `files`"),
                ));
            }
        }
        Ok(())
    }

    /// The entry of a listed file.
    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == name)
    }

    /// Resolves a listed file name inside `dir`, refusing names that are not
    /// plain file names and symbolic links (which could leave the directory).
    pub fn resolve(dir: &Path, name: &str) -> Result<PathBuf> {
        let path = dir.join(name);
        check_file_name(name).map_err(|r| bad(&dir.join(MANIFEST_NAME), r))?;
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => Err(bad(
                &dir.join(MANIFEST_NAME),
                format!("{name:?} is a symbolic link; container files must be regular files"),
            )),
            _ => Ok(path),
        }
    }
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn bad(path: &Path, reason: String) -> FormatError {
    FormatError::BadManifest {
        path: path.to_path_buf(),
        reason,
    }
}

/// `architecture.{name} = v` must be finite and positive.
fn finite_positive(path: &Path, name: &str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(bad(
            path,
            format!("architecture.{name} = {v} must be finite and positive"),
        ))
    }
}

/// Checks one rotary embedding description (`what`: `rope` or `sliding_rope`).
fn validate_rope(path: &Path, what: &str, rope: &Rope, head_dim: u64) -> Result<()> {
    if rope.rotary_dim == 0 || rope.rotary_dim > head_dim || rope.rotary_dim % 2 != 0 {
        return Err(bad(
            path,
            format!(
                "{what}.rotary_dim {} must be even and within 1..=head_dim",
                rope.rotary_dim
            ),
        ));
    }
    let finite_pos = |name: &str, v: f64| finite_positive(path, &format!("{what}.{name}"), v);
    finite_pos("theta", rope.theta)?;
    match &rope.scaling {
        None => {}
        Some(RopeScaling::Linear { factor }) => finite_pos("scaling.factor", *factor)?,
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            finite_pos("scaling.factor", *factor)?;
            finite_pos("scaling.low_freq_factor", *low_freq_factor)?;
            finite_pos("scaling.high_freq_factor", *high_freq_factor)?;
            if high_freq_factor <= low_freq_factor || *original_max_position_embeddings == 0 {
                return Err(bad(
                    path,
                    format!(
                        "{what}.scaling: high_freq_factor {high_freq_factor} must exceed low_freq_factor {low_freq_factor}, and original_max_position_embeddings {original_max_position_embeddings} must be at least 1"
                    ),
                ));
            }
        }
        Some(RopeScaling::LongRope {
            short_factor,
            long_factor,
            original_max_position_embeddings,
            attention_factor,
        }) => {
            finite_pos("scaling.attention_factor", *attention_factor)?;
            let pairs = rope.rotary_dim / 2;
            for (name, list) in [("short_factor", short_factor), ("long_factor", long_factor)] {
                if list.len() as u64 != pairs {
                    return Err(bad(
                        path,
                        format!(
                            "{what}.scaling.{name} has {} values for {pairs} rotary frequencies",
                            list.len()
                        ),
                    ));
                }
                for &v in list {
                    finite_pos(&format!("scaling.{name}"), v)?;
                }
            }
            if *original_max_position_embeddings == 0 {
                return Err(bad(
                    path,
                    format!("{what}.scaling.original_max_position_embeddings must be at least 1"),
                ));
            }
        }
    }
    Ok(())
}
