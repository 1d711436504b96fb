//! Typed errors of the converter. Every variant names the file, tensor, layer
//! or directory it concerns, so a user can act on the message alone.

use std::path::PathBuf;

/// The architecture classes `prep` converts, as they appear in `config.json`.
pub const SUPPORTED_CLASSES: [&str; 16] = [
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "Gemma3ForConditionalGeneration",
    "Phi3ForCausalLM",
    "InternLM2ForCausalLM",
    "BaichuanForCausalLM",
    "QWenLMHeadModel",
    "ChatGLMModel",
    "ChatGLMForConditionalGeneration",
    "MixtralForCausalLM",
    "Qwen2MoeForCausalLM",
    "Qwen3MoeForCausalLM",
];

/// Any error of a conversion.
#[derive(Debug, thiserror::Error)]
pub enum PrepError {
    /// An operating-system error on a named file or directory.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An error from the container format library (writing or validating a stage file).
    #[error(transparent)]
    Format(#[from] strata_format::FormatError),
    /// A safetensors file is malformed (header, offsets, sizes).
    #[error("{}: not a valid safetensors file: {reason}", path.display())]
    Safetensors {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A GGUF file is malformed (header, metadata, tensor table, sizes).
    #[error("{}: not a valid GGUF file: {reason}", path.display())]
    Gguf {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The sharded checkpoint's index is malformed or disagrees with the shards.
    #[error("{}: {reason}", path.display())]
    Index {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `config.json` (or `generation_config.json`) is malformed or unsupported.
    #[error("{}: {reason}", path.display())]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The checkpoint's architecture class is not one `prep` converts.
    #[error(
        "{}: unsupported architecture {found}; supported are {}",
        path.display(),
        SUPPORTED_CLASSES.join(", ")
    )]
    UnsupportedArchitecture {
        /// The configuration file.
        path: PathBuf,
        /// The class (or classes) it names.
        found: String,
    },
    /// A source tensor cannot be converted (dtype, shape, values).
    #[error("tensor `{tensor}` in {}: {reason}", path.display())]
    Tensor {
        /// The shard holding it.
        path: PathBuf,
        /// The source (Hugging Face) tensor name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor the architecture needs is in no shard.
    #[error("missing tensor `{tensor}` (needed for {needed_for}): no shard of {} holds it", source_dir.display())]
    MissingTensor {
        /// The source (Hugging Face) tensor name.
        tensor: String,
        /// The stage and normalized tensor it would become.
        needed_for: String,
        /// The source folder.
        source_dir: PathBuf,
    },
    /// A source tensor that the conversion would silently drop.
    #[error(
        "unexpected tensor `{tensor}` in {}: {reason}; refusing to drop it silently",
        path.display()
    )]
    UnexpectedTensor {
        /// The shard holding it.
        path: PathBuf,
        /// The source tensor name.
        tensor: String,
        /// Why it does not fit.
        reason: String,
    },
    /// The SOURCE argument names neither a folder nor a Hub repository.
    #[error("source {source_arg:?}: {reason}")]
    Source {
        /// The argument as given.
        source_arg: String,
        /// What is wrong.
        reason: String,
    },
    /// The source folder has no usable weights or configuration.
    #[error("{}: {reason}", dir.display())]
    SourceFiles {
        /// The source folder.
        dir: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// Downloading from (or resolving in the cache of) the Hugging Face Hub failed.
    #[error("hub repository {repo}: {reason}")]
    Hub {
        /// The repository id.
        repo: String,
        /// What went wrong.
        reason: String,
    },
    /// The output directory cannot be used (another model, another job, a lock).
    #[error("output {}: {reason}", dir.display())]
    Output {
        /// The output directory.
        dir: PathBuf,
        /// Why it is refused.
        reason: String,
    },
    /// Not enough free space for the container.
    #[error(
        "not enough free space in {}: the conversion needs {} ({need} bytes){detail}, but only {} ({available} bytes) are available",
        dir.display(),
        human_bytes(*need),
        human_bytes(*available)
    )]
    DiskSpace {
        /// The output directory.
        dir: PathBuf,
        /// Bytes needed at the peak of the conversion.
        need: u64,
        /// Bytes available to this user on the output file system.
        available: u64,
        /// How the need was computed.
        detail: String,
    },
    /// A stage file written by this run did not re-read with the expected sha256.
    #[error("{}: re-read sha256 {actual} differs from the {expected} computed while writing; not deleting any source", path.display())]
    Verify {
        /// The stage file.
        path: PathBuf,
        /// sha256 computed while writing.
        expected: String,
        /// sha256 of the bytes re-read from disk.
        actual: String,
    },
}

impl PrepError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PrepError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias of the converter.
pub type Result<T, E = PrepError> = std::result::Result<T, E>;

/// Formats a byte count with a binary unit (`1.5 GiB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(3 << 30), "3.00 GiB");
    }

    #[test]
    fn unsupported_lists_classes() {
        let e = PrepError::UnsupportedArchitecture {
            path: "m/config.json".into(),
            found: "GPT2LMHeadModel".into(),
        };
        let s = e.to_string();
        for c in SUPPORTED_CLASSES {
            assert!(s.contains(c), "{s}");
        }
        assert!(s.contains("GPT2LMHeadModel"));
    }
}
