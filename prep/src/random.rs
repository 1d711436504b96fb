//! Random-weight containers of a named real model shape
//! ([`strata_format::shapes`]), written directly, without a source
//! checkpoint, with the same writer, layout and manifest types as a
//! conversion: for exercising the runner at scales no test model reaches
//! (`examples/make_random_container.rs`).
//!
//! Weights are random NF4 codes and int8 values with f16 scales generated as
//! bytes (nothing is quantized), scaled so that every projection roughly
//! preserves the RMS of its input and activations stay finite; norm weights
//! are 1.0. When a tokenizer is copied in, the head rows of token ids it
//! cannot produce are zero, so those ids score 0 and never win a greedy
//! choice. Stages are written in parallel (rayon), each tensor in chunks of
//! rows, so memory stays at a few chunks whatever the model's size. The same
//! seed gives the same bytes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use rayon::prelude::*;
use serde_json::Value;
use strata_format::checksum::sha256_hex;
use strata_format::codec::{nf4, row_bytes, rows_cols};
use strata_format::fsutil::{sync_dir, write_atomic};
use strata_format::manifest::{
    FileEntry, Manifest, Source, Stages, TokenizerInfo, Tool, MANIFEST_NAME,
};
use strata_format::names;
use strata_format::shapes::{Shape, StageLayout};
use strata_format::{DType, StageKind, StageWriter, TensorSpec, WrittenFile};

use crate::config::parse_token_ids;
use crate::disk::available_bytes;
use crate::error::{PrepError, Result};
use crate::source::{GENERATION_CONFIG, TOKENIZER_FILES};

/// `source.kind` in the manifests this module writes.
pub const SOURCE_KIND: &str = "random";
/// Bytes of tensor data generated and written at a time, per stage being written.
const CHUNK_BYTES: usize = 8 << 20;
/// Room kept for the manifest when checking free space.
const MANIFEST_ALLOWANCE: u64 = 1 << 20;
/// Standard deviation of the logits over the ids the tokenizer knows.
const LOGIT_STD: f64 = 2.0;

/// What to write.
#[derive(Debug, Clone)]
pub struct RandomOptions {
    /// The model shape.
    pub shape: Shape,
    /// Output directory: created, and refused when it holds anything.
    pub out: PathBuf,
    /// Seed of the generator.
    pub seed: u64,
    /// A folder whose tokenizer files (`tokenizer.json`, `tokenizer_config.json`,
    /// `special_tokens_map.json`, `generation_config.json`, ...) are copied in;
    /// the manifest's token ids come from its `generation_config.json`.
    pub tokenizer_from: Option<PathBuf>,
}

/// Sizes of the files a shape's container holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sizes {
    /// Each stage file's name and exact size, in stage order.
    pub stages: Vec<(String, u64)>,
}

impl Sizes {
    /// Exact stage file sizes of `shape`'s container.
    pub fn of(shape: &Shape) -> Result<Sizes> {
        let stages = shape
            .stages()
            .iter()
            .map(|s| Ok((s.file.clone(), s.file_size()?)))
            .collect::<Result<_>>()?;
        Ok(Sizes { stages })
    }

    /// Bytes of every stage file together.
    pub fn total(&self) -> u64 {
        self.stages.iter().map(|(_, b)| b).sum()
    }

    /// The largest layer file (`0` when there is none).
    pub fn largest_layer(&self) -> u64 {
        let n = self.stages.len();
        self.stages
            .get(1..n.saturating_sub(1))
            .unwrap_or_default()
            .iter()
            .map(|(_, b)| *b)
            .max()
            .unwrap_or(0)
    }
}

/// A finished container.
#[derive(Debug, Clone)]
pub struct Written {
    /// The container directory.
    pub dir: PathBuf,
    /// Files written, manifest excluded.
    pub files: usize,
    /// Bytes written, manifest excluded.
    pub bytes: u64,
    /// Wall time.
    pub seconds: f64,
}

/// The tokenizer files to copy and what they say.
struct TokenizerSource {
    files: Vec<(&'static str, Vec<u8>)>,
    /// Number of ids the tokenizer can produce (highest id + 1).
    known_ids: u64,
    info: TokenizerInfo,
}

/// Writes a random-weight container of `o.shape` into `o.out`, calling
/// `progress(done, total, file)` as each stage file completes.
pub fn write_random_container(
    o: &RandomOptions,
    progress: &(dyn Fn(usize, usize, &WrittenFile) + Sync),
) -> Result<Written> {
    let started = Instant::now();
    let arch = &o.shape.architecture;
    let stages = o.shape.stages();
    let sizes = Sizes::of(&o.shape)?;
    let tok = match &o.tokenizer_from {
        Some(dir) => Some(read_tokenizer(dir, arch.vocab_size)?),
        None => None,
    };
    let existing = check_out_dir(&o.out)?;
    let tok_bytes: u64 = tok
        .iter()
        .flat_map(|t| &t.files)
        .map(|(_, b)| b.len() as u64)
        .sum();
    let need = sizes.total() + tok_bytes + MANIFEST_ALLOWANCE;
    let available = available_bytes(&existing)?;
    if need > available {
        return Err(PrepError::DiskSpace {
            dir: o.out.clone(),
            need,
            available,
            detail: format!(" for the {} container", o.shape.name),
        });
    }
    std::fs::create_dir_all(&o.out).map_err(|e| PrepError::io(&o.out, e))?;

    // The tensor the output head multiplies with; its rows past the
    // tokenizer's ids are written as zeros.
    let head = if arch.tie_word_embeddings {
        (StageKind::Embed, names::EMBED_TOKENS)
    } else {
        (StageKind::Head, names::HEAD)
    };
    let known_ids = tok.as_ref().map(|t| t.known_ids);
    let done = AtomicUsize::new(0);
    let written: Vec<WrittenFile> = stages
        .par_iter()
        .enumerate()
        .map(|(i, st)| {
            let w = write_stage(&o.out, st, i as u64, o.seed, |spec| {
                let is_head = st.kind == head.0 && spec.name == head.1;
                Fill::for_tensor(spec, is_head, is_head.then_some(known_ids).flatten())
            })?;
            progress(done.fetch_add(1, Ordering::Relaxed) + 1, stages.len(), &w);
            Ok(w)
        })
        .collect::<Result<_>>()?;

    let mut files: Vec<FileEntry> = written
        .iter()
        .zip(&stages)
        .map(|(w, st)| FileEntry {
            path: st.file.clone(),
            bytes: w.bytes,
            sha256: w.sha256.clone(),
        })
        .collect();
    let mut tokenizer = TokenizerInfo::default();
    let mut source_files = Vec::new();
    if let Some(t) = tok {
        for (name, bytes) in &t.files {
            write_atomic(&o.out.join(name), bytes)?;
            let entry = FileEntry {
                path: (*name).to_string(),
                bytes: bytes.len() as u64,
                sha256: sha256_hex(bytes),
            };
            files.push(entry.clone());
            source_files.push(entry);
        }
        tokenizer = t.info;
    }
    let n = stages.len();
    let manifest = Manifest {
        format_version: strata_format::format_version(),
        tool: Tool {
            name: "strata-prep (random weights)".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        architecture: arch.clone(),
        quantization: o.shape.quantization.clone(),
        tokenizer,
        stages: Stages {
            embed: stages[0].file.clone(),
            layers: stages[1..n - 1].iter().map(|s| s.file.clone()).collect(),
            head: stages[n - 1].file.clone(),
        },
        files,
        source: Source {
            kind: SOURCE_KIND.into(),
            location: format!("shape {}, seed {}", o.shape.name, o.seed),
            revision: None,
            files: source_files,
        },
    };
    let manifest_path = o.out.join(MANIFEST_NAME);
    manifest.validate(&manifest_path)?;
    write_atomic(&manifest_path, &manifest.to_json())?;
    sync_dir(&o.out)?;
    Ok(Written {
        dir: o.out.clone(),
        files: manifest.files.len(),
        bytes: manifest.files.iter().map(|f| f.bytes).sum(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Refuses an output path that holds anything or is not a directory, and
/// returns the nearest existing directory at or above it (for free space).
fn check_out_dir(out: &Path) -> Result<PathBuf> {
    let refuse = |reason: &str| PrepError::Output {
        dir: out.to_path_buf(),
        reason: reason.into(),
    };
    if out.exists() {
        if !out.is_dir() {
            return Err(refuse("exists and is not a directory"));
        }
        let mut entries = std::fs::read_dir(out).map_err(|e| PrepError::io(out, e))?;
        if entries.next().is_some() {
            return Err(refuse(
                "is not empty; remove it or choose another directory",
            ));
        }
    }
    let mut dir = out;
    while !dir.is_dir() {
        dir = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
    }
    Ok(dir.to_path_buf())
}

/// Reads the tokenizer files of `dir` and the number of ids the tokenizer
/// can produce, which must fit in `vocab`.
fn read_tokenizer(dir: &Path, vocab: u64) -> Result<TokenizerSource> {
    let mut files = Vec::new();
    for name in TOKENIZER_FILES {
        let path = dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => files.push((name, bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(PrepError::io(&path, e)),
        }
    }
    let json_path = dir.join("tokenizer.json");
    let Some((_, json)) = files.iter().find(|(n, _)| *n == "tokenizer.json") else {
        return Err(PrepError::SourceFiles {
            dir: dir.to_path_buf(),
            reason: "holds no tokenizer.json".into(),
        });
    };
    let config_err = |path: &Path, reason: String| PrepError::Config {
        path: path.to_path_buf(),
        reason,
    };
    let v: Value = serde_json::from_slice(json)
        .map_err(|e| config_err(&json_path, format!("not valid JSON: {e}")))?;
    let known_ids = tokenizer_id_count(&v)
        .ok_or_else(|| config_err(&json_path, "holds no vocabulary (`model.vocab`)".into()))?;
    if known_ids > vocab {
        return Err(config_err(
            &json_path,
            format!(
                "has token ids up to {}, beyond the shape's vocabulary of {vocab}",
                known_ids - 1
            ),
        ));
    }
    let gen_path = dir.join(GENERATION_CONFIG);
    let generation = match files.iter().find(|(n, _)| *n == GENERATION_CONFIG) {
        Some((_, bytes)) => Some(
            serde_json::from_slice::<Value>(bytes)
                .map_err(|e| config_err(&gen_path, format!("not valid JSON: {e}")))?,
        ),
        None => None,
    };
    let ids = parse_token_ids(
        generation.as_ref().map(|g| (g, gen_path.as_path())),
        &Value::Object(Default::default()),
        &gen_path,
    )?;
    for id in ids.bos.iter().chain(&ids.eos).chain(&ids.pad) {
        if u64::from(*id) >= vocab {
            return Err(config_err(
                &gen_path,
                format!("token id {id} is outside the shape's vocabulary of {vocab}"),
            ));
        }
    }
    let info = TokenizerInfo {
        bos_token_id: ids.bos,
        eos_token_ids: ids.eos,
        pad_token_id: ids.pad,
        files: files.iter().map(|(n, _)| (*n).to_string()).collect(),
    };
    Ok(TokenizerSource {
        files,
        known_ids,
        info,
    })
}

/// Highest token id + 1 of a parsed `tokenizer.json`: the model's vocabulary
/// (a `{token: id}` map, or a list whose index is the id) and the added tokens.
fn tokenizer_id_count(v: &Value) -> Option<u64> {
    let from_vocab = match &v["model"]["vocab"] {
        Value::Object(map) => map.values().filter_map(Value::as_u64).max().map(|m| m + 1),
        Value::Array(list) => Some(list.len() as u64),
        _ => None,
    }?;
    let from_added = v["added_tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["id"].as_u64())
        .map(|id| id + 1)
        .max()
        .unwrap_or(0);
    Some(from_vocab.max(from_added))
}

/// How one tensor's bytes are generated.
#[derive(Debug, Clone, Copy)]
enum Fill {
    /// f32 ones (norm weights).
    Ones,
    /// f32 values uniform in `[-scale, scale]` (the f32 matrices of an MoE
    /// layer: router and shared-expert gate), so that routing varies.
    Uniform { scale: f32 },
    /// Random NF4 codes; block scales around `scale`.
    Nf4 { scale: f32, block: usize },
    /// Random int8 values; block scales around `scale`; rows from `zero_from` on are zero.
    Int8 {
        scale: f32,
        block: usize,
        zero_from: usize,
    },
}

impl Fill {
    /// The fill of `spec`. A head is scaled for logits of standard deviation
    /// [`LOGIT_STD`] and zeroed from row `known_ids` on; an embedding matrix
    /// for unit RMS; a projection to keep its input's RMS.
    fn for_tensor(spec: &TensorSpec, is_head: bool, known_ids: Option<u64>) -> Result<Fill> {
        let (rows, cols) = rows_cols(&spec.shape).ok_or_else(|| unsupported(spec))?;
        let block = spec.block_size.unwrap_or(0) as usize;
        let cols_f = cols.max(1) as f64;
        match spec.dtype {
            // Logits of standard deviation 1 for an input of unit RMS.
            DType::F32 if spec.shape.len() == 2 => Ok(Fill::Uniform {
                scale: (3.0 / cols_f).sqrt() as f32,
            }),
            DType::F32 => Ok(Fill::Ones),
            DType::Nf4 => {
                let mean_sq = nf4::CODES.iter().map(|c| f64::from(c * c)).sum::<f64>() / 16.0;
                Ok(Fill::Nf4 {
                    scale: (1.0 / (cols_f * mean_sq).sqrt()) as f32,
                    block,
                })
            }
            DType::Int8 => {
                // Uniform q in -127..=127: E[q²] = 127 × 128 / 3.
                let mean_sq = 127.0 * 128.0 / 3.0;
                let target = if is_head {
                    LOGIT_STD / cols_f.sqrt()
                } else {
                    1.0
                };
                let zero_from = known_ids
                    .and_then(|k| usize::try_from(k).ok())
                    .unwrap_or(rows)
                    .min(rows);
                Ok(Fill::Int8 {
                    scale: (target / f64::sqrt(mean_sq)) as f32,
                    block,
                    zero_from,
                })
            }
            _ => Err(unsupported(spec)),
        }
    }

    /// Fills `buf` with rows `r0..` (whole rows of `cols` elements, `rb`
    /// bytes each) from `rng`.
    fn rows(&self, buf: &mut [u8], r0: usize, cols: usize, rb: usize, rng: &mut SplitMix) {
        match *self {
            Fill::Ones => {
                for v in buf.chunks_exact_mut(4) {
                    v.copy_from_slice(&1.0f32.to_le_bytes());
                }
            }
            Fill::Uniform { scale } => {
                for v in buf.chunks_exact_mut(4) {
                    // 24 random bits to [-1, 1).
                    let u = (rng.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
                    v.copy_from_slice(&(u * scale).to_le_bytes());
                }
            }
            Fill::Nf4 { scale, block } => {
                rng.fill(buf);
                let scales = scale_table(scale);
                let half = block / 2;
                for row in buf.chunks_exact_mut(rb) {
                    for (b, blk) in row.chunks_exact_mut(2 + half).enumerate() {
                        let s = scales[usize::from(blk[0] & 15)];
                        blk[..2].copy_from_slice(&s.to_le_bytes());
                        // Padding past the row's end decodes to 0.0 (code 7).
                        let valid = cols.saturating_sub(b * block).min(block);
                        if valid < block {
                            for j in 0..half {
                                let lo = if j < valid {
                                    blk[2 + j] & 0x0f
                                } else {
                                    nf4::ZERO_CODE
                                };
                                let hi = if j + half < valid {
                                    blk[2 + j] >> 4
                                } else {
                                    nf4::ZERO_CODE
                                };
                                blk[2 + j] = lo | (hi << 4);
                            }
                        }
                    }
                }
            }
            Fill::Int8 {
                scale,
                block,
                zero_from,
            } => {
                rng.fill(buf);
                let scales = scale_table(scale);
                for (r, row) in buf.chunks_exact_mut(rb).enumerate() {
                    if r0 + r >= zero_from {
                        row.fill(0);
                        continue;
                    }
                    for (b, blk) in row.chunks_exact_mut(2 + block).enumerate() {
                        let s = scales[usize::from(blk[0] & 15)];
                        blk[..2].copy_from_slice(&s.to_le_bytes());
                        let valid = cols.saturating_sub(b * block).min(block);
                        for (j, q) in blk[2..].iter_mut().enumerate() {
                            // -128 is never written (SPEC.md §4.5); padding is 0.
                            if j >= valid {
                                *q = 0;
                            } else if *q == 0x80 {
                                *q = 0x81;
                            }
                        }
                    }
                }
            }
        }
    }
}

fn unsupported(spec: &TensorSpec) -> PrepError {
    PrepError::Tensor {
        path: PathBuf::from("(random weights)"),
        tensor: spec.name.clone(),
        reason: format!(
            "cannot generate {} of shape {:?} (only f32 norms and matrices, nf4 and int8)",
            spec.dtype, spec.shape
        ),
    }
}

/// 16 f16 block scales spread over ±25% around `base`, with the same mean square.
fn scale_table(base: f32) -> [half::f16; 16] {
    let mut t = [half::f16::ZERO; 16];
    let factors: Vec<f32> = (0..16).map(|i| 0.75 + i as f32 / 30.0).collect();
    let rms = (factors.iter().map(|f| f * f).sum::<f32>() / 16.0).sqrt();
    for (s, f) in t.iter_mut().zip(&factors) {
        *s = half::f16::from_f32(base * f / rms);
    }
    t
}

/// Writes one stage file with generated tensors.
fn write_stage(
    dir: &Path,
    st: &StageLayout,
    stage_index: u64,
    seed: u64,
    fill_of: impl Fn(&TensorSpec) -> Result<Fill>,
) -> Result<WrittenFile> {
    let mut w = StageWriter::create(&dir.join(&st.file), st.kind, st.layer, &st.tensors)?;
    for (t, spec) in st.tensors.iter().enumerate() {
        let fill = fill_of(spec)?;
        let (rows, cols) = rows_cols(&spec.shape).ok_or_else(|| unsupported(spec))?;
        let rb = row_bytes(spec.dtype, cols, spec.block_size.unwrap_or(1) as usize);
        if rb == 0 {
            continue;
        }
        let chunk_rows = (CHUNK_BYTES / rb).clamp(1, rows.max(1));
        let mut buf = vec![0u8; chunk_rows * rb];
        let mut r0 = 0;
        while r0 < rows {
            let m = chunk_rows.min(rows - r0);
            let part = &mut buf[..m * rb];
            let mut rng = SplitMix::new(&[seed, stage_index, t as u64, r0 as u64]);
            fill.rows(part, r0, cols, rb, &mut rng);
            w.write(&spec.name, part)?;
            r0 += m;
        }
    }
    Ok(w.finish()?)
}

/// SplitMix64: a small, fast, seedable generator.
struct SplitMix(u64);

impl SplitMix {
    /// A generator whose stream depends on every element of `key`.
    fn new(key: &[u64]) -> SplitMix {
        let mut g = SplitMix(0);
        for &k in key {
            g.0 ^= k;
            g.0 = g.next();
        }
        g
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let r = self.next().to_le_bytes();
        rest.copy_from_slice(&r[..rest.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_format::codec;

    fn decode(spec: &TensorSpec, fill: Fill) -> Vec<f32> {
        let (rows, cols) = rows_cols(&spec.shape).unwrap();
        let rb = row_bytes(spec.dtype, cols, spec.block_size.unwrap_or(1) as usize);
        let mut buf = vec![0u8; rows * rb];
        fill.rows(&mut buf, 0, cols, rb, &mut SplitMix::new(&[7]));
        codec::decode(spec.dtype, &buf, &spec.shape, spec.block_size).unwrap()
    }

    fn spec(dtype: DType, rows: u64, cols: u64) -> TensorSpec {
        TensorSpec {
            name: "t".into(),
            dtype,
            shape: vec![rows, cols],
            block_size: Some(64),
            compression: None,
        }
    }

    #[test]
    fn nf4_projections_keep_unit_gain_and_pad_with_zero() {
        let s = spec(DType::Nf4, 256, 1000);
        let v = decode(&s, Fill::for_tensor(&s, false, None).unwrap());
        // Row · (all-ones / sqrt(cols)) has unit RMS over rows when the gain is 1.
        let mean_sq: f64 = v.iter().map(|x| f64::from(x * x)).sum::<f64>() / v.len() as f64;
        let gain = (mean_sq * 1000.0).sqrt();
        assert!((0.9..1.1).contains(&gain), "gain {gain}");
        assert!(v.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn int8_head_rows_past_the_tokenizer_are_zero() {
        let s = spec(DType::Int8, 100, 128);
        let fill = Fill::for_tensor(&s, true, Some(60)).unwrap();
        let v = decode(&s, fill);
        assert!(v[60 * 128..].iter().all(|x| *x == 0.0));
        assert!(v[..60 * 128].iter().any(|x| *x != 0.0));
        let (rows, cols) = (100, 128);
        let rb = row_bytes(DType::Int8, cols, 64);
        let mut buf = vec![0u8; rows * rb];
        fill.rows(&mut buf, 0, cols, rb, &mut SplitMix::new(&[1]));
        for blk in buf.chunks_exact(66) {
            assert!(blk[2..].iter().all(|&q| q != 0x80));
        }
    }

    #[test]
    fn generators_are_keyed() {
        let mut a = [0u8; 13];
        let mut b = [0u8; 13];
        SplitMix::new(&[1, 2]).fill(&mut a);
        SplitMix::new(&[1, 2]).fill(&mut b);
        assert_eq!(a, b);
        SplitMix::new(&[2, 1]).fill(&mut b);
        assert_ne!(a, b);
    }

    #[test]
    fn tokenizer_ids_count_vocab_and_added_tokens() {
        let v = serde_json::json!({"model": {"vocab": {"a": 0, "b": 5}},
                                   "added_tokens": [{"id": 9}]});
        assert_eq!(tokenizer_id_count(&v), Some(10));
        let u = serde_json::json!({"model": {"vocab": [["a", 0.0], ["b", -1.0]]}});
        assert_eq!(tokenizer_id_count(&u), Some(2));
        assert_eq!(tokenizer_id_count(&serde_json::json!({})), None);
    }

    #[test]
    fn stages_match_what_a_conversion_writes() {
        use crate::plan::{plan, QuantPolicy};
        use strata_format::shapes::{stage_layouts, SHAPE_NAMES};
        let q = QuantPolicy {
            weights: DType::Nf4,
            block_size: strata_format::dtype::DEFAULT_BLOCK,
            compress: None,
            keep_source: false,
        };
        let mut archs: Vec<_> = SHAPE_NAMES
            .iter()
            .map(|n| Shape::named(n).unwrap())
            .inspect(|s| assert_eq!(s.quantization, q.manifest()))
            .map(|s| s.architecture)
            .collect();
        let mut odd = archs[0].clone();
        odd.attention_bias = true;
        odd.attention_out_bias = true;
        odd.qk_norm = true;
        odd.mlp_bias = true;
        odd.post_norms = true;
        odd.tie_word_embeddings = !odd.tie_word_embeddings;
        archs.push(odd.clone());
        // An MoE layer with a shared expert (Qwen2-MoE's layout).
        odd.source_class = "Qwen2MoeForCausalLM".into();
        odd.moe = Some(strata_format::manifest::Moe {
            num_experts: 3,
            top_k: 2,
            expert_intermediate_size: 96,
            normalize_top_k: false,
            shared_expert_intermediate_size: Some(80),
        });
        archs.push(odd);
        for a in &archs {
            let converted = plan(a, &q);
            let random = stage_layouts(a, &q.manifest());
            assert_eq!(converted.len(), random.len());
            for (c, r) in converted.iter().zip(&random) {
                assert_eq!((&c.file, c.kind, c.layer), (&r.file, r.kind, r.layer));
                assert_eq!(c.specs(), r.tensors);
                assert_eq!(c.file_size().unwrap(), r.file_size().unwrap());
            }
        }
    }

    #[test]
    fn refuses_a_directory_with_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x"), b"x").unwrap();
        assert!(matches!(
            check_out_dir(d.path()),
            Err(PrepError::Output { .. })
        ));
        assert!(matches!(
            check_out_dir(&d.path().join("x")),
            Err(PrepError::Output { .. })
        ));
        assert_eq!(check_out_dir(&d.path().join("new/sub")).unwrap(), d.path());
    }
}
