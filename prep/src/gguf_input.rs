//! A GGUF source (one file, or every part of a split one) as the conversion
//! sees it: the configuration and tokenizer files its metadata gives
//! ([`crate::gguf_hf`]), each part's tensors under their Hugging Face names,
//! and the adjustments of the planned stages (the GGUF's own encodings kept,
//! llama.cpp's q/k row permutation undone, Gemma norms taken as stored).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use strata_format::dtype::DType;
use strata_format::layout::{self, Encoding};
use strata_format::manifest::{Architecture, Quantization};

use crate::error::{PrepError, Result};
use crate::gguf::Gguf;
use crate::gguf_hf::{hf_view_with, read_tensor_data, HfView};
use crate::plan::{Derive, QuantPolicy, Stage};
use crate::progress::Reporter;
use crate::safetensors::{Shard, SourceDType, TensorInfo};
use crate::source::{GENERATION_CONFIG, TOKENIZER_JSON};

/// The tokenizer configuration file written from the metadata.
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";

/// How one source tensor is read.
#[derive(Debug, Clone, Copy)]
struct SourceTensor {
    /// Its stored encoding.
    dtype: SourceDType,
    /// llama.cpp permuted its rows by heads of this many (llama q/k).
    unpermute_heads: Option<u64>,
    /// llama.cpp stored `1 + w` (Gemma norms).
    norm_plus_one: bool,
}

/// A GGUF source, read before anything is written.
#[derive(Debug)]
pub struct GgufInput {
    /// The first (or only) file: errors about the model name it.
    pub first: PathBuf,
    /// The metadata and tensors as a Hugging Face checkpoint.
    pub view: HfView,
    /// Per file, in split order: its length and its tensors under their
    /// Hugging Face names.
    files: Vec<(u64, Vec<TensorInfo>)>,
    /// Tokenizer files written from the metadata: name and bytes.
    pub generated: Vec<(&'static str, Vec<u8>)>,
    /// Source tensors by Hugging Face name.
    by_name: HashMap<String, SourceTensor>,
}

impl GgufInput {
    /// Reads the header, metadata and tensor table of every part (`files`
    /// in `dir`, in split order) and maps them.
    pub fn read(dir: &Path, files: &[String], rep: &Reporter) -> Result<GgufInput> {
        let first = dir.join(&files[0]);
        let mut parts = Vec::with_capacity(files.len());
        for name in files {
            let path = dir.join(name);
            let len = std::fs::metadata(&path)
                .map_err(|e| PrepError::io(&path, e))?
                .len();
            parts.push((Gguf::open(&path)?, len));
        }
        let bad = |reason: String| PrepError::Gguf {
            path: first.clone(),
            reason,
        };
        if files.len() > 1 {
            let count = parts[0].0.get("split.count").and_then(|v| v.as_u64());
            if count != Some(files.len() as u64) {
                return Err(bad(format!(
                    "split.count is {count:?}, but {} parts were found",
                    files.len()
                )));
            }
            for (k, (g, _)) in parts.iter().enumerate() {
                let no = g.get("split.no").and_then(|v| v.as_u64());
                if no != Some(k as u64) {
                    return Err(PrepError::Gguf {
                        path: g.path.clone(),
                        reason: format!("split.no is {no:?}, expected {k} from its name"),
                    });
                }
            }
        }
        // One table of every part's tensors, so the mapping sees the whole
        // model, with the first part's metadata (moved: a large vocabulary
        // is tens of MB of it).
        let mut merged = Gguf {
            path: parts[0].0.path.clone(),
            version: parts[0].0.version,
            metadata: std::mem::take(&mut parts[0].0.metadata),
            tensors: Vec::new(),
            data_start: parts[0].0.data_start,
        };
        let mut owner = Vec::new();
        for (k, (g, _)) in parts.iter().enumerate() {
            merged.tensors.extend(g.tensors.iter().cloned());
            owner.extend(std::iter::repeat_n(k, g.tensors.len()));
        }
        let mut view = hf_view_with(&merged, &first, &|i| {
            let part = &parts[owner[i]].0;
            read_tensor_data(&part.path, &merged.tensors[i])
        })?;
        let mut per_file: Vec<(u64, Vec<TensorInfo>)> =
            parts.iter().map(|(_, len)| (*len, Vec::new())).collect();
        let mut by_name = HashMap::new();
        for m in &view.tensors {
            let t = &merged.tensors[m.gguf_index];
            let info = TensorInfo {
                name: m.hf_name.clone(),
                dtype: t.ty.name().to_string(),
                shape: m.hf_shape.clone(),
                start: t.start,
                len: t.len,
            };
            let dtype = info.source_dtype().ok_or_else(|| {
                bad(format!(
                    "tensor `{}` has type {}, which prep does not read",
                    t.name, info.dtype
                ))
            })?;
            by_name.insert(
                m.hf_name.clone(),
                SourceTensor {
                    dtype,
                    unpermute_heads: m.unpermute_heads,
                    norm_plus_one: m.norm_plus_one,
                },
            );
            per_file[owner[m.gguf_index]].1.push(info);
        }
        let json = |v: &serde_json::Value| {
            serde_json::to_vec_pretty(v)
                .map_err(|e| PrepError::io(&first, std::io::Error::other(e)))
        };
        let mut generated = Vec::new();
        // Moved, not copied: a 262k-token vocabulary's tokenizer.json is ~30 MB.
        if let Some(t) = view.tokenizer_json.take() {
            generated.push((TOKENIZER_JSON, t));
        }
        generated.push((TOKENIZER_CONFIG, json(&view.tokenizer_config)?));
        generated.push((GENERATION_CONFIG, json(&view.generation_config)?));
        rep.note(&format!(
            "{}: GGUF architecture {}, {} tensors in {} file(s)",
            first.display(),
            view.arch,
            view.tensors.len(),
            files.len()
        ));
        Ok(GgufInput {
            first,
            view,
            files: per_file,
            generated,
            by_name,
        })
    }

    /// Maps part `s` (at `path`) for reading its tensors.
    pub fn shard(&self, s: usize, path: &Path) -> Result<Shard> {
        let (len, tensors) = &self.files[s];
        Shard::map_with(path, *len, tensors.clone())
    }

    /// Bytes of the files written from the metadata.
    pub fn generated_bytes(&self) -> u64 {
        self.generated.iter().map(|(_, b)| b.len() as u64).sum()
    }

    /// Adjusts the planned stages to this source and returns the manifest's
    /// `quantization`: llama q/k rows gathered back into Hugging Face order,
    /// Gemma norms taken as stored (llama.cpp already added the one), and,
    /// unless `--quant` was given, every linear weight, embedding and head
    /// stored in its GGUF encoding.
    pub fn adjust(
        &self,
        stages: &mut [Stage],
        arch: &Architecture,
        quant: &QuantPolicy,
    ) -> Result<Quantization> {
        let mut weights: HashMap<DType, usize> = HashMap::new();
        let (mut embeddings, mut head) = (None, None);
        let tables = layout::stage_tables(arch);
        for (stage, table) in stages.iter_mut().zip(&tables) {
            for pt in &mut stage.tensors {
                let Some(src) = self.by_name.get(&pt.source) else {
                    continue; // reported as missing when the tensors are located
                };
                if src.norm_plus_one && pt.derive == Derive::PlusOne {
                    pt.derive = Derive::Whole;
                }
                if let Some(heads) = src.unpermute_heads {
                    let rows = pt.spec.shape.first().copied().unwrap_or(0);
                    if pt.derive != Derive::Whole || heads == 0 || rows % heads != 0 {
                        return Err(PrepError::Gguf {
                            path: self.first.clone(),
                            reason: format!(
                                "`{}` has {rows} rows, which do not split into {heads} permuted heads",
                                pt.source
                            ),
                        });
                    }
                    let head_dim = rows / heads;
                    pt.derive = Derive::PairsToHalves {
                        first: 0,
                        source_rows: rows,
                        head_dim,
                        rotary_dim: head_dim,
                    };
                }
                let encoding = table
                    .tensors
                    .iter()
                    .find(|slot| slot.name == pt.spec.name)
                    .map(|slot| slot.role.encoding());
                if !quant.keep_source || matches!(encoding, Some(Encoding::F32) | None) {
                    continue;
                }
                let kept = src.dtype.kept();
                pt.spec.dtype = kept;
                pt.spec.block_size = None;
                match encoding {
                    Some(Encoding::Weights) => *weights.entry(kept).or_default() += 1,
                    Some(Encoding::Embeddings) => embeddings = Some(kept),
                    Some(Encoding::Head) => head = Some(kept),
                    _ => {}
                }
            }
        }
        if !quant.keep_source {
            return Ok(quant.manifest());
        }
        // Informative (each tensor's header entry is authoritative, SPEC.md
        // §5.3): the encoding most linear weights have, the ties broken by name.
        let mut counted: Vec<(DType, usize)> = weights.into_iter().collect();
        counted.sort_by_key(|&(d, n)| (std::cmp::Reverse(n), d.name()));
        let weights = counted.first().map_or(DType::F32, |&(d, _)| d);
        let embeddings = embeddings.unwrap_or(weights);
        Ok(Quantization {
            weights,
            embeddings,
            head: head.unwrap_or(embeddings),
            block_size: None,
            compression: quant.manifest().compression,
        })
    }
}
