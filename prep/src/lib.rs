//! # strata-prep
//!
//! Converts a Hugging Face checkpoint (Llama, Mistral, Qwen2, Qwen3 in
//! safetensors, local or from the Hub) into a strata container
//! (`format-spec/SPEC.md`): one page-aligned, checksummed file per stage,
//! weights encoded as NF4, int8, bf16, f16 or f32.
//!
//! Properties: memory stays bounded (shards are memory-mapped and each tensor
//! is converted in chunks of rows whose pages are released after use); the
//! encoding is rayon-parallel; every file is written under a temporary name,
//! fsynced and renamed, the manifest last, so a killed run resumes where it
//! stopped and the result is byte-identical to an uninterrupted one;
//! `--delete-originals` frees each source shard once everything it holds is
//! written and re-verified from disk; free space is checked before anything
//! is written.

#![warn(missing_docs)]

pub mod base64;
pub mod config;
pub mod convert;
pub mod disk;
pub mod error;
pub mod gguf;
pub mod gguf_hf;
pub mod gguf_input;
pub mod hashing;
pub mod hub;
pub mod job;
pub mod plan;
pub mod progress;
pub mod quant;
pub mod random;
pub mod safetensors;
pub mod source;
pub mod spm;
pub mod tiktoken;

pub use convert::{run, Options, Summary};
pub use error::{PrepError, Result};
