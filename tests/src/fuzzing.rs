//! The fuzz targets' bodies, shared by the libFuzzer harness (`tests/fuzz`,
//! run with `cargo fuzz` on a nightly-capable toolchain) and by the stable
//! regression test (`tests/tests/fuzz_corpus.rs`), which replays every stored
//! corpus entry and every past crash through the same function.
//!
//! Each function feeds arbitrary bytes to one parser of untrusted input and
//! checks what the parser promises on success. A panic (including a failed
//! check here) or an abort is a finding; an `Err` is the expected outcome for
//! almost every input.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use strata_format::header::{FileHeader, PREFIX_LEN};
use strata_format::manifest::Manifest;

/// The fuzz targets, by the name of their directory under `tests/fuzz/corpus/`.
pub const TARGETS: [&str; 6] = [
    "stage_header",
    "manifest",
    "safetensors_header",
    "hf_config",
    "tokenizer_config",
    "tokenizer_model",
];

/// Runs `data` through the target named `target` (one of [`TARGETS`]).
pub fn run_target(target: &str, data: &[u8]) {
    match target {
        "stage_header" => stage_header(data),
        "manifest" => manifest(data),
        "safetensors_header" => safetensors_header(data),
        "hf_config" => hf_config(data),
        "tokenizer_config" => tokenizer_config(data),
        "tokenizer_model" => tokenizer_model(data),
        other => panic!("unknown fuzz target {other:?}"),
    }
}

/// The start of a stage file (`data` is the whole file): the prefix and
/// header are validated against the file length; on success every tensor
/// lies inside the file, after the header, in order.
pub fn stage_header(data: &[u8]) {
    let path = Path::new("fuzz.strata");
    let Ok((prefix, header)) = FileHeader::parse_file_start(data, data.len() as u64, path) else {
        return;
    };
    assert!(PREFIX_LEN + prefix.header_len as usize <= data.len());
    let mut cursor = prefix.data_start();
    for t in &header.tensors {
        assert!(t.offset >= cursor, "tensor {} overlaps", t.name);
        let end = t.offset.checked_add(t.length).expect("validated range");
        assert!(end <= data.len() as u64, "tensor {} past the end", t.name);
        cursor = end;
        // Compressed bytes: decoded, or a named error; never a panic.
        if t.compression.is_some() && t.encoded_length() <= 1 << 24 {
            let stored = &data[t.offset as usize..end as usize];
            let mut dec = strata_format::compress::Decoder::new().expect("a zstd context");
            if let Ok(v) = dec.decode_all(t, stored, path) {
                assert_eq!(v.len() as u64, t.encoded_length());
            }
        }
    }
}

/// `manifest.json`: on success the manifest serializes and parses back to
/// itself (what `prep` writes, the runner reads), and every listed name
/// resolves to a plain file inside the container directory.
pub fn manifest(data: &[u8]) {
    let path = Path::new("manifest.json");
    let Ok(m) = Manifest::from_json(data, path) else {
        return;
    };
    let again = Manifest::from_json(&m.to_json(), path).expect("a valid manifest round-trips");
    assert_eq!(again, m);
    for f in &m.files {
        assert!(!f.path.contains('/') && f.path != ".." && f.path != ".");
    }
}

/// A safetensors header: the first 8 bytes of `data` are the claimed number
/// of data bytes after the header, the rest the header JSON. On success the
/// tensors are contiguous, sized as shape × element size, and inside the file.
pub fn safetensors_header(data: &[u8]) {
    let Some((len, json)) = data.split_first_chunk::<8>() else {
        return;
    };
    let data_len = u64::from_le_bytes(*len);
    let Ok(tensors) =
        strata_prep::safetensors::parse_header(json, data_len, Path::new("fuzz.safetensors"))
    else {
        return;
    };
    let mut cursor = 8 + json.len() as u64;
    for t in &tensors {
        assert_eq!(t.start, cursor, "tensor {} is not contiguous", t.name);
        cursor = t.start.checked_add(t.len).expect("validated length");
    }
    assert_eq!(cursor, 8 + json.len() as u64 + data_len);
}

/// A Hugging Face `config.json`, read as `prep` reads it: JSON, then the
/// architecture mapping, then the special token ids. (On success `prep`
/// validates the manifest it would write before converting anything.)
pub fn hf_config(data: &[u8]) {
    let path = Path::new("config.json");
    let Ok(json) = strata_prep::config::parse_json(data, path) else {
        return;
    };
    let _ = strata_prep::config::parse_token_ids(None, &json, path);
    let _ = strata_prep::config::parse_architecture(&json, path);
}

/// A scratch model folder holding [`crate::TINY_TOKENIZER_JSON`], shared by all calls
/// (the lock serializes them: each call rewrites `tokenizer_config.json`).
fn scratch_model_dir() -> &'static Mutex<PathBuf> {
    static DIR: OnceLock<Mutex<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("strata-fuzz-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        std::fs::write(dir.join("tokenizer.json"), crate::TINY_TOKENIZER_JSON)
            .expect("tokenizer.json");
        Mutex::new(dir)
    })
}

/// `tokenizer_config.json` (special tokens, flags, chat template) through
/// the runner's `TextTokenizer::load` and `ChatTemplate::load`.
pub fn tokenizer_config(data: &[u8]) {
    use strata_runner::text::{chat::ChatTemplate, tokenizer::TextTokenizer};
    let dir = scratch_model_dir()
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let mut f = std::fs::File::create(dir.join("tokenizer_config.json")).expect("write config");
    f.write_all(data).expect("write config");
    drop(f);
    let tok = TextTokenizer::load(&dir);
    if let Ok(tok) = &tok {
        assert!(tok.is_some(), "tokenizer.json is present");
    }
    let _ = ChatTemplate::load(&dir);
}

/// A `tokenizer.model` (SentencePiece protobuf) or tiktoken rank file, as
/// `prep` reads them to write tokenizer.json: on success the conversion gives
/// a vocabulary with every piece (ranks) under its id, or a clean error.
pub fn tokenizer_model(data: &[u8]) {
    use strata_prep::{spm, tiktoken};
    if let Ok(model) = spm::SpmModel::parse(data) {
        for family in ["internlm2", "chatglm"] {
            let additions = spm::Additions::of(family, None).expect("no config");
            if let Ok(json) = spm::tokenizer_json(&model, &additions) {
                let vocab = json["model"]["vocab"].as_object().expect("vocab");
                assert_eq!(vocab.len(), model.pieces.len() + additions.appended.len());
            }
        }
    }
    if let Ok(ranks) = tiktoken::parse(data) {
        let flavor = tiktoken::Flavor::of("qwen").expect("qwen");
        let json = tiktoken::tokenizer_json(&ranks, &flavor);
        let vocab = json["model"]["vocab"].as_object().expect("vocab");
        assert_eq!(vocab.len(), ranks.len());
    }
}
