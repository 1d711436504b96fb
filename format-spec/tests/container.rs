//! Container tests: writer/reader round trips, verification, and hostile
//! input (flipped bytes, truncation, path escapes) always giving clean errors.

use std::path::Path;

use proptest::prelude::*;
use strata_format::checksum::sha256_file;
use strata_format::manifest::*;
use strata_format::verify::{verify_container, Problem};
use strata_format::{
    codec, names, DType, FormatError, Manifest, StageFile, StageKind, StageWriter, TensorSpec,
};

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

fn spec(name: &str, dtype: DType, shape: &[u64]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
        block_size: dtype.is_quantized().then_some(64),
        compression: None,
    }
}

fn write_stage(
    path: &Path,
    stage: StageKind,
    layer: Option<u32>,
    tensors: &[(TensorSpec, Vec<f32>)],
) -> strata_format::WrittenFile {
    let specs: Vec<_> = tensors.iter().map(|(s, _)| s.clone()).collect();
    let mut w = StageWriter::create(path, stage, layer, &specs).unwrap();
    for (s, data) in tensors {
        let bytes = codec::encode(s.dtype, data, &s.shape, s.block_size).unwrap();
        // write in two parts to exercise streaming
        let mid = bytes.len() / 2;
        w.write(&s.name, &bytes[..mid]).unwrap();
        w.write(&s.name, &bytes[mid..]).unwrap();
    }
    w.finish().unwrap()
}

/// Writes a complete 1-layer container into `dir` and returns its manifest.
fn tiny_container(dir: &Path) -> Manifest {
    let h = 64u64;
    let embed = write_stage(
        &dir.join(names::EMBED_FILE),
        StageKind::Embed,
        None,
        &[(
            spec(names::EMBED_TOKENS, DType::Int8, &[32, h]),
            values(32 * 64, 1),
        )],
    );
    let layer = write_stage(
        &dir.join(names::layer_file(0)),
        StageKind::Layer,
        Some(0),
        &[
            (spec(names::ATTN_NORM, DType::F32, &[h]), values(64, 2)),
            (spec(names::ATTN_Q, DType::Nf4, &[h, h]), values(64 * 64, 3)),
            (
                spec(names::ATTN_K, DType::Bf16, &[h, h]),
                values(64 * 64, 4),
            ),
            (spec(names::ATTN_V, DType::F16, &[h, h]), values(64 * 64, 5)),
            (
                spec(names::MLP_DOWN, DType::Int8, &[h, 100]),
                values(64 * 100, 6),
            ),
        ],
    );
    let head = write_stage(
        &dir.join(names::HEAD_FILE),
        StageKind::Head,
        None,
        &[(spec(names::FINAL_NORM, DType::F32, &[h]), values(64, 7))],
    );
    let entry = |w: &strata_format::WrittenFile| FileEntry {
        path: w.path.file_name().unwrap().to_str().unwrap().to_string(),
        bytes: w.bytes,
        sha256: w.sha256.clone(),
    };
    let m = Manifest {
        format_version: strata_format::format_version(),
        tool: Tool {
            name: "test".into(),
            version: "0".into(),
        },
        architecture: Architecture {
            family: "llama".into(),
            source_class: "LlamaForCausalLM".into(),
            hidden_size: h,
            num_layers: 1,
            num_attention_heads: 4,
            num_kv_heads: 4,
            head_dim: 16,
            intermediate_size: 100,
            vocab_size: 32,
            max_position_embeddings: 128,
            norm_eps: 1e-5,
            rope: Rope {
                theta: 10000.0,
                rotary_dim: 16,
                scaling: None,
            },
            activation: Activation::Silu,
            tie_word_embeddings: true,
            attention_bias: false,
            attention_out_bias: false,
            mlp_bias: false,
            qk_norm: false,
            post_norms: false,
            sliding_window: None,
            sliding_window_layers: None,
            moe: None,
            attn_logit_softcap: None,
            final_logit_softcap: None,
            attention_scale: None,
            embedding_multiplier: None,
            max_context: None,
            alibi: false,
            sliding_rope: None,
        },
        quantization: Quantization {
            weights: DType::Nf4,
            embeddings: DType::Int8,
            head: DType::Int8,
            block_size: Some(64),
            compression: None,
        },
        tokenizer: TokenizerInfo::default(),
        stages: Stages {
            embed: names::EMBED_FILE.into(),
            layers: vec![names::layer_file(0)],
            head: names::HEAD_FILE.into(),
        },
        files: vec![entry(&embed), entry(&layer), entry(&head)],
        source: Source {
            kind: "local".into(),
            location: "/nowhere".into(),
            revision: None,
            files: vec![],
        },
    };
    strata_format::fsutil::write_atomic(&dir.join(MANIFEST_NAME), &m.to_json()).unwrap();
    m
}

#[test]
fn stage_round_trip_every_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layer.000.strata");
    let dtypes = [DType::F32, DType::F16, DType::Bf16, DType::Nf4, DType::Int8];
    let tensors: Vec<_> = dtypes
        .iter()
        .enumerate()
        .map(|(i, &d)| (spec(&format!("t{i}"), d, &[3, 100]), values(300, i as u32)))
        .collect();
    let written = write_stage(&path, StageKind::Layer, Some(0), &tensors);
    assert!(!dir.path().join("layer.000.strata.tmp").exists());
    assert_eq!(written.bytes % 4096, 0);
    assert_eq!(
        sha256_file(&path).unwrap(),
        (written.bytes, written.sha256.clone())
    );
    let f = StageFile::open(&path).unwrap();
    assert_eq!(f.header().stage, StageKind::Layer);
    for (s, data) in &tensors {
        let e = f.entry(&s.name).unwrap();
        assert_eq!(e.offset % 4096, 0);
        let bytes = f.read_stored(&s.name).unwrap();
        assert_eq!(
            bytes,
            codec::encode(s.dtype, data, &s.shape, s.block_size).unwrap()
        );
        let back = codec::decode(s.dtype, &bytes, &s.shape, s.block_size).unwrap();
        if s.dtype == DType::F32 {
            assert_eq!(&back, data);
        }
        assert_eq!(back.len(), data.len());
    }
}

#[test]
fn writer_is_deterministic_and_refuses_misuse() {
    let dir = tempfile::tempdir().unwrap();
    let t = vec![(spec("a", DType::Nf4, &[2, 64]), values(128, 9))];
    let a = write_stage(&dir.path().join("a.strata"), StageKind::Head, None, &t);
    let b = write_stage(&dir.path().join("b.strata"), StageKind::Head, None, &t);
    assert_eq!(a.sha256, b.sha256);

    let specs = [spec("x", DType::F32, &[4]), spec("y", DType::F32, &[4])];
    let mut w =
        StageWriter::create(&dir.path().join("c.strata"), StageKind::Head, None, &specs).unwrap();
    assert!(matches!(
        w.write("y", &[0; 16]),
        Err(FormatError::WriterMisuse { .. })
    ));
    assert!(matches!(
        w.write("x", &[0; 17]),
        Err(FormatError::WriterMisuse { .. })
    ));
    w.write("x", &[0; 16]).unwrap();
    // finishing early leaves no file under the final name
    let e = w.finish().unwrap_err();
    assert!(
        matches!(&e, FormatError::WriterMisuse { reason, .. }
            if reason.contains("finished before tensor `y`")),
        "{e}"
    );
    assert!(!dir.path().join("c.strata").exists());
}

#[test]
fn verify_finds_every_kind_of_damage() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_container(dir.path());
    let loaded = Manifest::load(dir.path()).unwrap();
    assert_eq!(loaded, m);
    assert!(verify_container(dir.path(), &m).ok());

    let layer = dir.path().join(names::layer_file(0));
    let pristine = std::fs::read(&layer).unwrap();

    // flipped bit in tensor data
    let mut bytes = pristine.clone();
    let at = bytes.len() - 5000;
    bytes[at] ^= 0x10;
    std::fs::write(&layer, &bytes).unwrap();
    let r = verify_container(dir.path(), &m);
    assert_eq!(r.problems.len(), 1);
    assert_eq!(r.problems[0].file, names::layer_file(0));
    assert!(matches!(r.problems[0].problem, Problem::Checksum { .. }));

    // truncated
    std::fs::write(&layer, &pristine[..pristine.len() - 4096]).unwrap();
    let r = verify_container(dir.path(), &m);
    assert!(matches!(r.problems[0].problem, Problem::Size { .. }));
    assert!(r.problems[0].problem.to_string().contains("truncated"));

    // extra bytes
    let mut longer = pristine.clone();
    longer.extend_from_slice(&[0; 10]);
    std::fs::write(&layer, &longer).unwrap();
    let r = verify_container(dir.path(), &m);
    assert!(r.problems[0].problem.to_string().contains("extra bytes"));

    // another stage swapped in under this name (same size is not needed to be caught)
    std::fs::copy(dir.path().join(names::HEAD_FILE), &layer).unwrap();
    let r = verify_container(dir.path(), &m);
    assert!(!r.ok());

    // missing
    std::fs::remove_file(&layer).unwrap();
    let r = verify_container(dir.path(), &m);
    assert_eq!(r.problems[0].problem, Problem::Missing);

    // a symlink is refused even when it points at the right bytes
    let elsewhere = tempfile::tempdir().unwrap();
    let outside = elsewhere.path().join("x");
    std::fs::write(&outside, &pristine).unwrap();
    std::os::unix::fs::symlink(&outside, &layer).unwrap();
    let r = verify_container(dir.path(), &m);
    assert_eq!(r.problems[0].problem, Problem::NotRegular);
}

#[test]
fn manifest_refuses_path_escapes_and_bad_versions() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_container(dir.path());
    let path = dir.path().join(MANIFEST_NAME);
    for evil in [
        "../etc/passwd",
        "/etc/passwd",
        "sub/file",
        ".hidden",
        "..",
        "a\\b",
        "",
    ] {
        let mut bad = m.clone();
        bad.files[0].path = evil.into();
        bad.stages.embed = evil.into();
        let err = Manifest::from_json(&bad.to_json(), &path).unwrap_err();
        assert!(
            matches!(err, FormatError::BadManifest { .. }),
            "{evil}: {err}"
        );
        let err = Manifest::resolve(dir.path(), evil).unwrap_err();
        assert!(
            matches!(&err, FormatError::BadManifest { path: p, .. } if p == &path),
            "{evil}: {err}"
        );
    }
    let mut v2 = serde_json::to_value(&m).unwrap();
    v2["format_version"] = "2.0".into();
    let err = Manifest::from_json(&serde_json::to_vec(&v2).unwrap(), &path).unwrap_err();
    assert!(
        matches!(err, FormatError::UnsupportedVersion { major: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("2.0"));
    // a newer minor version with unknown fields is read
    let mut v11 = serde_json::to_value(&m).unwrap();
    v11["format_version"] = "1.1".into();
    v11["future_field"] = 1.into();
    Manifest::from_json(&serde_json::to_vec(&v11).unwrap(), &path).unwrap();
    // unlisted stage file, duplicate file, bad sha, layer count mismatch
    let refused = |bad: &Manifest, why: &str| {
        let err = Manifest::from_json(&bad.to_json(), &path).unwrap_err();
        assert!(
            matches!(&err, FormatError::BadManifest { path: p, reason }
                if p == &path && reason.contains(why)),
            "{why}: {err}"
        );
    };
    let mut bad = m.clone();
    bad.files.pop();
    refused(&bad, "is used but not listed in `files`");
    let mut bad = m.clone();
    bad.files.push(bad.files[0].clone());
    refused(&bad, "is listed twice");
    let mut bad = m.clone();
    bad.files[0].sha256 = "XYZ".into();
    refused(&bad, "has a malformed sha256");
    let mut bad = m.clone();
    bad.architecture.num_layers = 2;
    refused(&bad, "layer files listed for 2 layers");
    let mut bad = m;
    bad.architecture.num_kv_heads = 3;
    refused(&bad, "is not a multiple of num_kv_heads 3");
}

#[test]
fn hostile_headers_are_refused_without_large_allocations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.strata");
    let mk = |json: &str, pad_to: usize| {
        let mut b = Vec::new();
        b.extend_from_slice(b"STRATA\0\0");
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&(json.len() as u32).to_le_bytes());
        b.extend_from_slice(json.as_bytes());
        b.resize(pad_to.max(b.len()), 0);
        b
    };
    let cases = [
        // offset past end
        r#"{"stage":"head","tensors":[{"name":"a","dtype":"f32","shape":[4],"offset":8192,"length":16}]}"#,
        // overflowing shape product
        r#"{"stage":"head","tensors":[{"name":"a","dtype":"f32","shape":[4294967296,4294967296,16],"offset":4096,"length":16}]}"#,
        // length disagrees with shape
        r#"{"stage":"head","tensors":[{"name":"a","dtype":"f32","shape":[4],"offset":4096,"length":20}]}"#,
        // unaligned offset
        r#"{"stage":"head","tensors":[{"name":"a","dtype":"f32","shape":[4],"offset":4100,"length":16}]}"#,
        // overlapping tensors
        r#"{"stage":"head","tensors":[{"name":"a","dtype":"f32","shape":[4],"offset":4096,"length":16},{"name":"b","dtype":"f32","shape":[4],"offset":4096,"length":16}]}"#,
        // duplicate names
        r#"{"stage":"head","tensors":[{"name":"a","dtype":"f32","shape":[4],"offset":4096,"length":16},{"name":"a","dtype":"f32","shape":[4],"offset":8192,"length":16}]}"#,
        // path-like tensor name
        r#"{"stage":"head","tensors":[{"name":"../a","dtype":"f32","shape":[4],"offset":4096,"length":16}]}"#,
        // quantized without block
        r#"{"stage":"head","tensors":[{"name":"a","dtype":"nf4","shape":[1,64],"offset":4096,"length":34}]}"#,
        // unknown dtype
        r#"{"stage":"head","tensors":[{"name":"a","dtype":"q4_k","shape":[4],"offset":4096,"length":16}]}"#,
        // layer without index
        r#"{"stage":"layer","tensors":[]}"#,
        // not json
        "{{{",
    ];
    for json in cases {
        std::fs::write(&path, mk(json, 8192)).unwrap();
        let err = StageFile::open(&path).unwrap_err();
        assert!(err.to_string().contains("h.strata"), "{json}: {err}");
    }
    // a header length of gigabytes in a tiny file
    let mut b = mk("{}", 4096);
    b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&path, &b).unwrap();
    assert!(matches!(
        StageFile::open(&path),
        Err(FormatError::BadHeader { .. })
    ));
    // an unknown major version
    let mut b = mk(r#"{"stage":"head","tensors":[]}"#, 4096);
    b[8] = 9;
    std::fs::write(&path, &b).unwrap();
    assert!(matches!(
        StageFile::open(&path),
        Err(FormatError::UnsupportedVersion { major: 9, .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Any flipped byte or truncation of a valid stage file yields an error from
    /// `verify` (and never a panic from the reader).
    #[test]
    fn damaged_files_always_give_clean_errors(pos in 0usize..1_000_000, mask in 1u8..=255, cut in 0usize..1_000_000, truncate in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let m = tiny_container(dir.path());
        let layer = dir.path().join(names::layer_file(0));
        let mut bytes = std::fs::read(&layer).unwrap();
        if truncate {
            bytes.truncate(cut % bytes.len());
        } else {
            let i = pos % bytes.len();
            bytes[i] ^= mask;
        }
        std::fs::write(&layer, &bytes).unwrap();
        // the reader either fails cleanly or (for a data-byte flip) opens
        let _ = StageFile::open(&layer);
        let r = verify_container(dir.path(), &m);
        prop_assert_eq!(r.problems.len(), 1);
        prop_assert_eq!(&r.problems[0].file, &names::layer_file(0));
        if truncate {
            // a truncated file fails to open, with an error naming it
            let err = StageFile::open(&layer).err().map(|e| e.to_string()).unwrap_or_default();
            prop_assert!(err.contains(&layer.display().to_string()), "{}", err);
        }
    }
}

#[test]
fn manifest_refuses_values_that_would_poison_the_maths() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_container(dir.path());
    let path = dir.path().join(MANIFEST_NAME);
    let llama3 = |factor: f64, low: f64, high: f64, orig: u64| RopeScaling::Llama3 {
        factor,
        low_freq_factor: low,
        high_freq_factor: high,
        original_max_position_embeddings: orig,
    };
    type Edit = Box<dyn Fn(&mut Manifest)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "rope.scaling.factor",
            Box::new(|m| m.architecture.rope.scaling = Some(RopeScaling::Linear { factor: 0.0 })),
        ),
        (
            "sliding_rope.theta",
            Box::new(|m| {
                m.architecture.sliding_window = Some(4);
                m.architecture.sliding_rope = Some(strata_format::manifest::Rope {
                    theta: -1.0,
                    ..m.architecture.rope.clone()
                });
            }),
        ),
        (
            "sliding_rope is set but the model has no sliding_window",
            Box::new(|m| {
                m.architecture.sliding_window = None;
                m.architecture.sliding_rope = Some(m.architecture.rope.clone());
            }),
        ),
        (
            "rope.scaling.factor",
            Box::new(|m| m.architecture.rope.scaling = Some(RopeScaling::Linear { factor: -2.0 })),
        ),
        (
            "high_freq_factor",
            Box::new(move |m| m.architecture.rope.scaling = Some(llama3(8.0, 4.0, 4.0, 8192))),
        ),
        (
            "original_max_position_embeddings",
            Box::new(move |m| m.architecture.rope.scaling = Some(llama3(8.0, 1.0, 4.0, 0))),
        ),
        (
            "rope.scaling.low_freq_factor",
            Box::new(move |m| m.architecture.rope.scaling = Some(llama3(8.0, 0.0, 4.0, 8192))),
        ),
        (
            "rope.scaling.short_factor",
            Box::new(|m| {
                m.architecture.rope.scaling = Some(RopeScaling::LongRope {
                    short_factor: vec![1.0; 7],
                    long_factor: vec![2.0; 8],
                    original_max_position_embeddings: 64,
                    attention_factor: 1.2,
                })
            }),
        ),
        (
            "rope.scaling.long_factor",
            Box::new(|m| {
                let mut long = vec![2.0; 8];
                long[3] = -1.0;
                m.architecture.rope.scaling = Some(RopeScaling::LongRope {
                    short_factor: vec![1.0; 8],
                    long_factor: long,
                    original_max_position_embeddings: 64,
                    attention_factor: 1.2,
                })
            }),
        ),
        (
            "rope.scaling.attention_factor",
            Box::new(|m| {
                m.architecture.rope.scaling = Some(RopeScaling::LongRope {
                    short_factor: vec![1.0; 8],
                    long_factor: vec![2.0; 8],
                    original_max_position_embeddings: 64,
                    attention_factor: 0.0,
                })
            }),
        ),
        (
            "rope.scaling.original_max_position_embeddings",
            Box::new(|m| {
                m.architecture.rope.scaling = Some(RopeScaling::LongRope {
                    short_factor: vec![1.0; 8],
                    long_factor: vec![2.0; 8],
                    original_max_position_embeddings: 0,
                    attention_factor: 1.0,
                })
            }),
        ),
        (
            "sliding_window",
            Box::new(|m| m.architecture.sliding_window = Some(0)),
        ),
        (
            "sliding_window_layers",
            Box::new(|m| {
                m.architecture.sliding_window = Some(4);
                m.architecture.sliding_window_layers = Some(vec![0, 7]);
            }),
        ),
        (
            "moe",
            Box::new(|m| {
                m.architecture.moe = Some(Moe {
                    num_experts: 4,
                    top_k: 2,
                    expert_intermediate_size: 0,
                    normalize_top_k: true,
                    shared_expert_intermediate_size: None,
                })
            }),
        ),
    ];
    for (needle, edit) in cases {
        let mut bad = m.clone();
        edit(&mut bad);
        let err = Manifest::from_json(&bad.to_json(), &path).unwrap_err();
        assert!(
            matches!(err, FormatError::BadManifest { .. }) && err.to_string().contains(needle),
            "{needle}: {err}"
        );
    }
    // Sound values of the same fields are read.
    let mut ok = m.clone();
    ok.architecture.rope.scaling = Some(llama3(8.0, 1.0, 4.0, 8192));
    ok.architecture.sliding_window = Some(4);
    ok.architecture.sliding_window_layers = Some(vec![0]);
    Manifest::from_json(&ok.to_json(), &path).unwrap();
}

#[test]
fn manifest_must_be_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    tiny_container(dir.path());
    let elsewhere = tempfile::tempdir().unwrap();
    let outside = elsewhere.path().join(MANIFEST_NAME);
    std::fs::rename(dir.path().join(MANIFEST_NAME), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, dir.path().join(MANIFEST_NAME)).unwrap();
    let err = Manifest::load(dir.path()).unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
    std::fs::remove_file(dir.path().join(MANIFEST_NAME)).unwrap();
    std::fs::create_dir(dir.path().join(MANIFEST_NAME)).unwrap();
    let err = Manifest::load(dir.path()).unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
}

#[test]
fn an_incomplete_container_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let err = Manifest::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("empty, not a strata container"), "{err}");
    tiny_container(dir.path());
    std::fs::remove_file(dir.path().join(MANIFEST_NAME)).unwrap();
    let err = Manifest::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("not a complete container") && err.contains("manifest.json"),
        "{err}"
    );
}
