//! The SOURCE argument: a local checkpoint folder or a Hub repository, and
//! the layout of its weights (one `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{PrepError, Result};
use crate::hub::{looks_like_repo_id, valid_revision, HubRepo, HubSettings};

/// Single-file weights.
pub const SINGLE_WEIGHTS: &str = "model.safetensors";
/// Index of sharded weights.
pub const WEIGHTS_INDEX: &str = "model.safetensors.index.json";
/// The model configuration.
pub const CONFIG: &str = "config.json";
/// Generation defaults (token ids); also copied as a tokenizer file.
pub const GENERATION_CONFIG: &str = "generation_config.json";
/// The Hugging Face tokenizer file the runner reads.
pub const TOKENIZER_JSON: &str = "tokenizer.json";
/// Qwen (v1)'s tiktoken rank file.
pub const QWEN_TIKTOKEN: &str = "qwen.tiktoken";
/// Files copied verbatim into the container when present (SPEC.md §2).
pub const TOKENIZER_FILES: [&str; 9] = [
    TOKENIZER_JSON,
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    QWEN_TIKTOKEN,
];

/// Where the checkpoint comes from.
#[derive(Debug)]
pub enum Origin {
    /// A folder on this machine.
    Local,
    /// A Hub repository, resolved to a commit in the local cache.
    Hub(Box<HubRepo>),
}

/// A resolved source.
#[derive(Debug)]
pub struct Source {
    /// How the files are obtained.
    pub origin: Origin,
    /// Folder holding the files (the Hub snapshot for Hub sources).
    pub dir: PathBuf,
    /// Manifest `source.location`: the canonical folder path or the repository id.
    pub location: String,
    /// Manifest `source.revision`: the commit for Hub sources.
    pub revision: Option<String>,
    /// For a GGUF source, its file names in `dir`, in split order (one name
    /// for an unsplit file).
    pub gguf: Option<Vec<String>>,
}

impl Source {
    /// Resolves the SOURCE argument. A warning (Hub unreachable, cache used)
    /// is returned alongside.
    pub fn resolve(
        arg: &str,
        revision: Option<&str>,
        hub: impl FnOnce() -> HubSettings,
    ) -> Result<(Source, Option<String>)> {
        let bad = |reason: String| PrepError::Source {
            source_arg: arg.to_string(),
            reason,
        };
        let path = Path::new(arg);
        if path.exists() && revision.is_some() {
            return Err(bad(
                "--revision applies to Hub repositories, not to a local folder or file".into(),
            ));
        }
        if path.is_dir() {
            let dir = path.canonicalize().map_err(|e| PrepError::io(path, e))?;
            let gguf = if dir.join(CONFIG).is_file() {
                None
            } else {
                gguf_in_folder(&dir).map_err(bad)?
            };
            let location = match &gguf {
                Some(files) => dir.join(&files[0]).display().to_string(),
                None => dir.display().to_string(),
            };
            return Ok((
                Source {
                    origin: Origin::Local,
                    location,
                    dir,
                    revision: None,
                    gguf,
                },
                None,
            ));
        }
        if path.is_file() && crate::gguf::is_gguf(path) {
            let file = path.canonicalize().map_err(|e| PrepError::io(path, e))?;
            let dir = file.parent().unwrap_or(Path::new("/")).to_path_buf();
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let files = gguf_split_set(&dir, &name).map_err(bad)?;
            return Ok((
                Source {
                    origin: Origin::Local,
                    location: dir.join(&files[0]).display().to_string(),
                    dir,
                    revision: None,
                    gguf: Some(files),
                },
                None,
            ));
        }
        if path.exists() {
            return Err(bad(
                "is neither a folder nor a GGUF file; SOURCE must be a checkpoint folder, a .gguf file or a Hub repository id (org/name)".into(),
            ));
        }
        if !looks_like_repo_id(arg) {
            return Err(bad(
                "no such folder, and not a Hub repository id of the form org/name".into(),
            ));
        }
        let revision = revision.unwrap_or("main");
        if !valid_revision(revision) {
            return Err(bad(format!(
                "--revision {revision:?} is not a branch, tag or commit name"
            )));
        }
        let (repo, warning) = HubRepo::open(hub(), arg, revision)?;
        Ok((
            Source {
                dir: repo.snapshot().to_path_buf(),
                location: repo.repo_id().to_string(),
                revision: Some(repo.commit().to_string()),
                origin: Origin::Hub(Box::new(repo)),
                gguf: None,
            },
            warning,
        ))
    }

    /// Whether the source has `name`.
    pub fn has(&self, name: &str) -> bool {
        match &self.origin {
            Origin::Local => self.dir.join(name).is_file(),
            Origin::Hub(h) => h.has(name),
        }
    }

    /// Local path of `name` if the source has it (downloading it from the Hub if needed).
    pub fn file(&self, name: &str) -> Result<Option<PathBuf>> {
        if !self.has(name) {
            return Ok(None);
        }
        match &self.origin {
            Origin::Local => Ok(Some(self.dir.join(name))),
            Origin::Hub(h) => h.fetch(name).map(Some),
        }
    }

    /// Local path of a required file.
    pub fn required(&self, name: &str) -> Result<PathBuf> {
        self.file(name)?.ok_or_else(|| PrepError::SourceFiles {
            dir: self.dir.clone(),
            reason: format!("{name} is missing"),
        })
    }

    /// Where the weights are: reads the index if there is one.
    pub fn weight_layout(&self) -> Result<WeightLayout> {
        if let Some(files) = &self.gguf {
            return Ok(WeightLayout {
                index: None,
                shards: files.clone(),
                weight_map: BTreeMap::new(),
            });
        }
        if self.has(SINGLE_WEIGHTS) {
            return Ok(WeightLayout {
                index: None,
                shards: vec![SINGLE_WEIGHTS.to_string()],
                weight_map: BTreeMap::new(),
            });
        }
        let Some(index) = self.file(WEIGHTS_INDEX)? else {
            return Err(PrepError::SourceFiles {
                dir: self.dir.clone(),
                reason: format!(
                    "no {SINGLE_WEIGHTS} or {WEIGHTS_INDEX} (only safetensors checkpoints are supported; convert pytorch_model.bin first)"
                ),
            });
        };
        let bytes = std::fs::read(&index).map_err(|e| PrepError::io(&index, e))?;
        let (shards, weight_map) = parse_index(&bytes, &index)?;
        Ok(WeightLayout {
            index: Some(index),
            shards,
            weight_map,
        })
    }

    /// Local paths of the shards, fetching from the Hub those not in the
    /// cache; `None` for the shards in `skip` (deleted by an earlier run).
    pub fn shard_paths(
        &self,
        shards: &[String],
        skip: &HashSet<String>,
    ) -> Result<Vec<Option<PathBuf>>> {
        shards
            .iter()
            .map(|name| {
                if skip.contains(name) {
                    return Ok(None);
                }
                match self.file(name)? {
                    Some(p) => Ok(Some(p)),
                    None => Err(PrepError::SourceFiles {
                        dir: self.dir.clone(),
                        reason: format!("weight shard {name} is missing"),
                    }),
                }
            })
            .collect()
    }
}

/// `NAME-00001-of-00003.gguf` → `("NAME", 1, 3)`.
fn split_name(name: &str) -> Option<(&str, u32, u32)> {
    let stem = name.strip_suffix(".gguf")?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (base, no) = rest.rsplit_once('-')?;
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(no) || !digits(count) {
        return None;
    }
    let (no, count) = (no.parse().ok()?, count.parse().ok()?);
    (no >= 1 && no <= count).then_some((base, no, count))
}

/// The files of the GGUF `name` in `dir`, in split order: every
/// `BASE-0000K-of-0000N.gguf` of a split one (all must be present), or
/// `name` alone.
pub fn gguf_split_set(dir: &Path, name: &str) -> std::result::Result<Vec<String>, String> {
    let Some((base, _, count)) = split_name(name) else {
        return Ok(vec![name.to_string()]);
    };
    let files: Vec<String> = (1..=count)
        .map(|k| format!("{base}-{k:05}-of-{count:05}.gguf"))
        .collect();
    if let Some(missing) = files.iter().find(|f| !dir.join(f).is_file()) {
        return Err(format!(
            "is part {} of a GGUF split into {count} files, but {missing} is not beside it",
            split_name(name).map_or(0, |s| s.1)
        ));
    }
    Ok(files)
}

/// The GGUF model a folder without config.json holds: `None` when it holds
/// no `.gguf` file, an error when it holds several models.
fn gguf_in_folder(dir: &Path) -> std::result::Result<Option<Vec<String>>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot be listed: {e}"))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".gguf") && dir.join(n).is_file())
        .collect();
    names.sort();
    let Some(first) = names.first() else {
        return Ok(None);
    };
    let set = gguf_split_set(dir, first)?;
    if names.len() != set.len() {
        return Err(format!(
            "holds no {CONFIG} and {} GGUF files of more than one model ({}); give the .gguf file to convert",
            names.len(),
            names.join(", ")
        ));
    }
    Ok(Some(set))
}

/// How the weights are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightLayout {
    /// Path of the index, for sharded checkpoints.
    pub index: Option<PathBuf>,
    /// Weight file names, sorted.
    pub shards: Vec<String>,
    /// Tensor name → shard file name, from the index (empty for one file).
    pub weight_map: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RawIndex {
    weight_map: BTreeMap<String, String>,
}

/// Whether a shard name is a plain file name inside the checkpoint folder.
fn plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains('/')
        && !name.contains('\\')
        && name.len() <= 255
}

/// Parses an index: the sorted shard names and the weight map.
pub fn parse_index(bytes: &[u8], path: &Path) -> Result<(Vec<String>, BTreeMap<String, String>)> {
    let bad = |reason: String| PrepError::Index {
        path: path.to_path_buf(),
        reason,
    };
    let raw: RawIndex =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a valid index: {e}")))?;
    let mut shards: Vec<String> = raw.weight_map.values().cloned().collect();
    shards.sort();
    shards.dedup();
    if shards.is_empty() {
        return Err(bad("`weight_map` is empty".into()));
    }
    if let Some(s) = shards.iter().find(|s| !plain_file_name(s)) {
        return Err(bad(format!(
            "shard name {s:?} is not a plain file name in the checkpoint folder"
        )));
    }
    Ok((shards, raw.weight_map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_parsing() {
        let p = Path::new("model.safetensors.index.json");
        let (s, m) = parse_index(
            br#"{"metadata":{"total_size":8},"weight_map":{"b":"m-2.safetensors","a":"m-1.safetensors","c":"m-1.safetensors"}}"#,
            p,
        )
        .unwrap();
        assert_eq!(s, ["m-1.safetensors", "m-2.safetensors"]);
        assert_eq!(m["b"], "m-2.safetensors");
        for bad in [
            &br#"{"weight_map":{"a":"../x.safetensors"}}"#[..],
            br#"{"weight_map":{"a":"/etc/passwd"}}"#,
            br#"{"weight_map":{}}"#,
            br#"{"nope":1}"#,
        ] {
            let e = parse_index(bad, p).unwrap_err().to_string();
            assert!(e.contains("model.safetensors.index.json"), "{e}");
        }
    }

    #[test]
    fn gguf_split_sets() {
        assert_eq!(split_name("m-00002-of-00003.gguf"), Some(("m", 2, 3)));
        assert_eq!(split_name("m-00004-of-00003.gguf"), None);
        assert_eq!(split_name("m-2-of-3.gguf"), None);
        assert_eq!(split_name("model.Q4_K_M.gguf"), None);
        let d = tempfile::tempdir().unwrap();
        for k in [1, 2] {
            std::fs::write(d.path().join(format!("m-{k:05}-of-00003.gguf")), b"GGUF").unwrap();
        }
        let e = gguf_split_set(d.path(), "m-00001-of-00003.gguf").unwrap_err();
        assert!(e.contains("m-00003-of-00003.gguf"), "{e}");
        std::fs::write(d.path().join("m-00003-of-00003.gguf"), b"GGUF").unwrap();
        assert_eq!(
            gguf_split_set(d.path(), "m-00002-of-00003.gguf").unwrap(),
            [
                "m-00001-of-00003.gguf",
                "m-00002-of-00003.gguf",
                "m-00003-of-00003.gguf"
            ]
        );
        assert_eq!(gguf_in_folder(d.path()).unwrap().unwrap().len(), 3);
        std::fs::write(d.path().join("other.gguf"), b"GGUF").unwrap();
        assert!(gguf_in_folder(d.path())
            .unwrap_err()
            .contains("more than one"));
    }

    #[test]
    fn local_sources() {
        let d = tempfile::tempdir().unwrap();
        let arg = d.path().to_str().unwrap();
        let no_hub = || -> HubSettings { unreachable!("a folder never touches the Hub") };
        let (s, w) = Source::resolve(arg, None, no_hub).unwrap();
        assert!(w.is_none());
        assert_eq!(
            s.location,
            d.path().canonicalize().unwrap().display().to_string()
        );
        let e = s.weight_layout().unwrap_err().to_string();
        assert!(e.contains("model.safetensors"), "{e}");
        assert!(s.file("config.json").unwrap().is_none());
        assert!(s
            .required("config.json")
            .unwrap_err()
            .to_string()
            .contains("config.json"));
        std::fs::write(d.path().join(SINGLE_WEIGHTS), b"x").unwrap();
        assert_eq!(s.weight_layout().unwrap().shards, [SINGLE_WEIGHTS]);
        let e = Source::resolve(arg, Some("main"), no_hub).unwrap_err();
        assert!(
            matches!(&e, PrepError::Source { source_arg, reason }
                if source_arg == arg && reason.contains("--revision")),
            "{e}"
        );
        let e = Source::resolve("no-such-dir-xyz", None, no_hub)
            .unwrap_err()
            .to_string();
        assert!(e.contains("org/name"), "{e}");
        let f = d.path().join(SINGLE_WEIGHTS);
        let e = Source::resolve(f.to_str().unwrap(), None, no_hub)
            .unwrap_err()
            .to_string();
        assert!(e.contains("neither a folder nor a GGUF file"), "{e}");
    }
}
