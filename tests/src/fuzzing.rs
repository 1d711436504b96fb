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
pub const TARGETS: [&str; 8] = [
    "stage_header",
    "manifest",
    "safetensors_header",
    "gguf_header",
    "hf_config",
    "tokenizer_config",
    "tokenizer_model",
    "container_open",
];

/// Runs `data` through the target named `target` (one of [`TARGETS`]).
pub fn run_target(target: &str, data: &[u8]) {
    match target {
        "stage_header" => stage_header(data),
        "manifest" => manifest(data),
        "safetensors_header" => safetensors_header(data),
        "gguf_header" => gguf_header(data),
        "hf_config" => hf_config(data),
        "tokenizer_config" => tokenizer_config(data),
        "tokenizer_model" => tokenizer_model(data),
        "container_open" => container_open(data),
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

/// A GGUF file (`data` is the whole file): on success every tensor's data
/// lies inside the file and is sized as its rows × its type's row bytes, and
/// the block decoders take its first row.
pub fn gguf_header(data: &[u8]) {
    let path = Path::new("fuzz.gguf");
    let Ok(g) = strata_prep::gguf::Gguf::parse(data, data.len() as u64, path) else {
        return;
    };
    for t in &g.tensors {
        let end = t.start.checked_add(t.len).expect("validated length");
        assert!(end <= data.len() as u64, "tensor {} past the end", t.name);
        let rows: u64 = t.dims[1..].iter().product();
        let row = t.ty.row_bytes(t.dims[0]).expect("validated row size");
        assert_eq!(row * rows, t.len, "tensor {}", t.name);
        if let strata_prep::gguf::TensorType::Block(b) = t.ty {
            // At most one row of at most 64 KiB: bounded work per input.
            let row = row as usize;
            if row > 0 && rows > 0 && row <= 1 << 16 {
                let bytes = &data[t.start as usize..t.start as usize + row];
                let mut out = vec![0f32; bytes.len() / b.block_bytes() * b.block_elems()];
                b.decode(bytes, &mut out).expect("whole blocks decode");
            }
        }
    }
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

/// Separates the parts of a [`container_open`] input: the manifest, then the
/// bytes of each file it lists, in the order of its `files`.
pub const CONTAINER_PART_SEPARATOR: &[u8] = b"\n--strata-fuzz-file--\n";

/// Largest size a [`container_open`] file is zero-extended to (sparse).
const MAX_FUZZ_FILE: u64 = 1 << 30;

/// Most files a [`container_open`] input writes.
const MAX_FUZZ_FILES: usize = 64;

/// A scratch container folder for [`container_open`], emptied by each call
/// (the lock serializes them).
fn scratch_container_dir() -> &'static Mutex<PathBuf> {
    static DIR: OnceLock<Mutex<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("strata-fuzz-container-{}", std::process::id()));
        Mutex::new(dir)
    })
}

/// A whole container, opened as `runner plan DIR` opens it, then planned for.
///
/// `data` is the manifest JSON, then for each file the manifest lists (in its
/// `files` order) [`CONTAINER_PART_SEPARATOR`] and the file's first bytes:
/// the file is zero-extended to the size the manifest lists (at most 1 GiB,
/// sparse), so an input carries stage headers and not their weights. The
/// container is opened with [`strata_runner::container::Container::open`]
/// (without sha256 checks, which no fuzzed input passes), and on success its
/// plan sizes are taken and plans made for several budgets, contexts and
/// read-ahead depths; every step is a value or a named error, never a panic.
pub fn container_open(data: &[u8]) {
    let _ = container_open_planned(data);
}

/// [`container_open`], telling whether the input got as far as the plans
/// (the seed corpus must, or it exercises little).
pub fn container_open_planned(data: &[u8]) -> bool {
    use strata_runner::container::Container;
    use strata_runner::plan::{MemoryPlan, PlanRequest, PlanSizes};

    let mut parts = split_parts(data, CONTAINER_PART_SEPARATOR);
    let manifest_bytes = parts.next().unwrap_or_default();
    let Ok(m) = Manifest::from_json(manifest_bytes, Path::new("manifest.json")) else {
        return false;
    };
    let dir = scratch_container_dir()
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let _ = std::fs::remove_dir_all(&*dir);
    std::fs::create_dir_all(&*dir).expect("scratch container dir");
    std::fs::write(dir.join("manifest.json"), manifest_bytes).expect("write manifest.json");
    for (f, bytes) in m.files.iter().zip(parts).take(MAX_FUZZ_FILES) {
        // Names the manifest accepts are plain file names; one the file
        // system refuses (too long) is left missing.
        let path = dir.join(&f.path);
        let Ok(file) = std::fs::File::create(&path) else {
            continue;
        };
        let mut file = std::io::BufWriter::new(file);
        file.write_all(bytes).expect("write container file");
        let file = file.into_inner().expect("flush container file");
        if (bytes.len() as u64) < f.bytes && f.bytes <= MAX_FUZZ_FILE {
            file.set_len(f.bytes).expect("extend container file");
        }
    }
    let Ok(c) = Container::open(&dir, false) else {
        return false;
    };
    assert_eq!(c.layers.len() as u64, c.manifest.architecture.num_layers);
    let _ = c.head_weight_row_bytes();
    let Ok(sizes) = PlanSizes::of_container(&c) else {
        return false;
    };
    assert_eq!(sizes.layer_bytes.len(), c.layers.len());
    let max_ctx = c.manifest.architecture.max_position_embeddings as usize;
    for ctx in [1, 4096.min(max_ctx).max(1), max_ctx.max(1), usize::MAX] {
        for prefetch in [1, 2, 64] {
            let _ = sizes.streaming_minimum(ctx, prefetch);
            let _ = sizes.all_resident(ctx);
            let _ = sizes.smallest_budget(ctx, prefetch);
            for max_memory in [Some(0), Some(1 << 20), Some(1 << 30), Some(u64::MAX), None] {
                for keep_compressed in [None, Some(true)] {
                    let req = PlanRequest {
                        max_memory,
                        prefetch,
                        ctx,
                        keep_compressed,
                    };
                    if let Ok(plan) = MemoryPlan::for_sizes(&sizes, req) {
                        assert_eq!(plan.resident_layers.len(), c.layers.len());
                        let _ = plan.describe();
                    }
                }
            }
        }
    }
    true
}

/// The parts of `data` between occurrences of `sep`.
fn split_parts<'a>(data: &'a [u8], sep: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.windows(sep.len()).position(|w| w == sep) {
            Some(i) => {
                rest = Some(&r[i + sep.len()..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}
