//! End-to-end tests of the `prep` binary on the real SmolLM2-135M-Instruct
//! checkpoint and on the tiny fixtures: every encoding (with the stored bytes
//! checked against the reference codecs), determinism, sharded input with a
//! layer spread over two shards, kill -9 and resume, `--delete-originals`
//! (success and failure), corrupted and invalid inputs, guarded output
//! directories, and a Hub download from a local HTTP server followed by
//! cache-only runs.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use strata_e2e::{
    bin, copy_dir, hash_dir, hash_dir_filtered, run, run_ok, sha256_file, smollm2_dir, stderr,
    stdout, tiny_fixture,
};
use strata_format::codec;
use strata_format::manifest::Manifest;
use strata_format::verify::verify_container;
use strata_format::{DType, StageFile};

// ---------------------------------------------------------------- helpers

/// A `prep` command with the Hub environment cleared.
fn prep() -> Command {
    let mut c = Command::new(bin("prep"));
    for k in [
        "HF_TOKEN",
        "HF_HUB_OFFLINE",
        "HF_ENDPOINT",
        "HF_HUB_CACHE",
        "RUST_LOG",
    ] {
        c.env_remove(k);
    }
    c
}

/// `prep SRC --out OUT ARGS...`.
fn convert(src: &Path, out: &Path, args: &[&str]) -> Output {
    run(prep().arg(src).arg("--out").arg(out).args(args))
}

/// Like [`convert`] with `--json`, requiring success; returns the summary.
fn convert_ok(src: &Path, out: &Path, args: &[&str]) -> Value {
    let out = run_ok(
        prep()
            .arg(src)
            .arg("--out")
            .arg(out)
            .arg("--json")
            .args(args),
    );
    summary(&out)
}

fn summary(out: &Output) -> Value {
    let text = stdout(out);
    let line = text.lines().last().expect("a JSON summary line on stdout");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("summary {line:?}: {e}"))
}

/// Fails unless `out` failed with exit status 1 and its stderr holds every needle.
fn assert_fails(out: &Output, needles: &[&str]) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected failure, got {}:\n{}",
        out.status,
        stderr(out)
    );
    let err = stderr(out);
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
    assert!(!err.contains("panicked"), "prep panicked:\n{err}");
}

fn tmpdir() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("prep-e2e");
    std::fs::create_dir_all(&base).expect("creating the test scratch dir");
    tempfile::tempdir_in(base).expect("a scratch dir")
}

fn stage_hashes(dir: &Path) -> BTreeMap<String, String> {
    hash_dir_filtered(dir, |n| n.ends_with(".strata"))
}

fn manifest_json(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest.json"))
        .expect("manifest JSON")
}

fn manifest_without_source(dir: &Path) -> Value {
    let mut m = manifest_json(dir);
    m.as_object_mut().expect("object").remove("source");
    m
}

fn verify_ok(dir: &Path) -> Manifest {
    let m = Manifest::load(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let report = verify_container(dir, &m);
    assert!(report.ok(), "{}: {:?}", dir.display(), report.problems);
    m
}

fn tensor_names(path: &Path) -> Vec<String> {
    StageFile::open(path)
        .unwrap_or_else(|e| panic!("{e}"))
        .header()
        .tensors
        .iter()
        .map(|t| t.name.clone())
        .collect()
}

// ---------------------------------------------------------------- safetensors

/// One tensor of a safetensors file.
#[derive(Clone)]
struct St {
    name: String,
    dtype: String,
    shape: Vec<u64>,
    data: Vec<u8>,
}

fn read_st(path: &Path) -> Vec<St> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header");
    let base = 8 + n;
    let mut out: Vec<(u64, St)> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let a = v["data_offsets"][0].as_u64().unwrap();
            let b = v["data_offsets"][1].as_u64().unwrap();
            (
                a,
                St {
                    name: k.clone(),
                    dtype: v["dtype"].as_str().unwrap().to_string(),
                    shape: v["shape"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| d.as_u64().unwrap())
                        .collect(),
                    data: bytes[base + a as usize..base + b as usize].to_vec(),
                },
            )
        })
        .collect();
    out.sort_by_key(|(a, _)| *a);
    out.into_iter().map(|(_, t)| t).collect()
}

fn write_st(path: &Path, tensors: &[St]) {
    let mut header = String::from(r#"{"__metadata__":{"format":"pt"}"#);
    let mut offset = 0u64;
    for t in tensors {
        let end = offset + t.data.len() as u64;
        header.push_str(&format!(
            ",{}:{}",
            serde_json::to_string(&t.name).unwrap(),
            json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, end]})
        ));
        offset = end;
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    f.write_all(header.as_bytes()).unwrap();
    for t in tensors {
        f.write_all(&t.data).unwrap();
    }
    f.flush().unwrap();
}

/// Position of a Hugging Face tensor name in model order.
fn model_order(name: &str) -> (u32, u64, usize) {
    const IN_LAYER: [&str; 9] = [
        "input_layernorm.weight",
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
        "self_attn.o_proj.weight",
        "post_attention_layernorm.weight",
        "mlp.gate_proj.weight",
        "mlp.up_proj.weight",
        "mlp.down_proj.weight",
    ];
    if name == "model.embed_tokens.weight" {
        return (0, 0, 0);
    }
    if let Some(rest) = name.strip_prefix("model.layers.") {
        let (i, suffix) = rest.split_once('.').unwrap();
        let pos = IN_LAYER.iter().position(|s| *s == suffix).unwrap_or(99);
        return (1, i.parse().unwrap(), pos);
    }
    if name == "model.norm.weight" {
        return (2, 0, 0);
    }
    (3, 0, 0)
}

/// Splits `src/model.safetensors` into shards (a new shard starts at each
/// name of `starts`, in model order) with an index, copying the other files.
/// `mutate` may alter a tensor's bytes. Returns the shard paths.
fn reshard(
    src: &Path,
    dst: &Path,
    starts: &[&str],
    mutate: &dyn Fn(&str, &mut Vec<u8>),
) -> Vec<PathBuf> {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if p.is_file()
            && name != "model.safetensors"
            && !name.ends_with(".gguf")
            && name != "golden.json"
        {
            std::fs::copy(&p, dst.join(&name)).unwrap();
        }
    }
    let mut tensors = read_st(&src.join("model.safetensors"));
    tensors.sort_by_key(|t| model_order(&t.name));
    for t in &mut tensors {
        mutate(&t.name, &mut t.data);
    }
    let mut groups: Vec<Vec<St>> = vec![Vec::new()];
    for t in tensors {
        if starts.contains(&t.name.as_str()) {
            groups.push(Vec::new());
        }
        groups.last_mut().unwrap().push(t);
    }
    let n = groups.len();
    let mut weight_map = serde_json::Map::new();
    let mut total = 0u64;
    let mut paths = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        let name = format!("model-{:05}-of-{:05}.safetensors", i + 1, n);
        for t in g {
            weight_map.insert(t.name.clone(), json!(name));
            total += t.data.len() as u64;
        }
        let p = dst.join(&name);
        write_st(&p, g);
        paths.push(p);
    }
    let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    std::fs::write(
        dst.join("model.safetensors.index.json"),
        serde_json::to_vec_pretty(&index).unwrap(),
    )
    .unwrap();
    paths
}

/// Where SmolLM2 is cut into 3 shards: layers 10 and 20 each span two shards.
const SMOL_CUTS: [&str; 2] = [
    "model.layers.10.mlp.gate_proj.weight",
    "model.layers.20.self_attn.k_proj.weight",
];

fn bf16_to_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
        .collect()
}

/// The nf4 conversion of SmolLM2, made once per test run.
fn reference_nf4() -> &'static Path {
    static REF: OnceLock<PathBuf> = OnceLock::new();
    REF.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("prep-e2e-reference-nf4");
        let _ = std::fs::remove_dir_all(&dir);
        convert_ok(&smollm2_dir(), &dir, &["--quiet"]);
        dir
    })
}

// ---------------------------------------------------------------- SmolLM2

#[test]
fn smollm2_every_encoding() {
    let model = smollm2_dir();
    let source: HashMap<String, St> = read_st(&model.join("model.safetensors"))
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect();
    let tmp = tmpdir();
    for q in ["nf4", "int8", "bf16", "f16", "f32"] {
        let out = tmp.path().join(q);
        let o = run_ok(
            prep()
                .arg(&model)
                .arg("--out")
                .arg(&out)
                .args(["--quant", q, "--json"]),
        );
        assert!(
            stderr(&o).contains("prep: wrote"),
            "summary on stderr: {}",
            stderr(&o)
        );
        let s = summary(&o);
        assert_eq!(s["stages_written"], 32);
        assert_eq!(s["already_complete"], false);
        let m = verify_ok(&out);
        let a = &m.architecture;
        assert_eq!(
            (
                a.num_layers,
                a.hidden_size,
                a.num_attention_heads,
                a.num_kv_heads,
                a.head_dim
            ),
            (30, 576, 9, 3, 64)
        );
        assert!(a.tie_word_embeddings);
        assert_eq!(m.quantization.weights.name(), q);
        let emb = if q == "nf4" { "int8" } else { q };
        assert_eq!(m.quantization.embeddings.name(), emb);
        assert_eq!(m.tool.name, "strata-prep");
        assert_eq!(
            (m.tokenizer.bos_token_id, m.tokenizer.eos_token_ids.clone()),
            (Some(1), vec![2])
        );
        for f in [
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "generation_config.json",
        ] {
            assert!(m.tokenizer.files.iter().any(|n| n == f), "{f} listed");
            assert_eq!(
                sha256_file(&out.join(f)),
                sha256_file(&model.join(f)),
                "{f} copied verbatim"
            );
        }
        let src_entry = m
            .source
            .files
            .iter()
            .find(|f| f.path == "model.safetensors")
            .unwrap();
        assert_eq!(
            src_entry.sha256,
            sha256_file(&model.join("model.safetensors"))
        );
        assert_eq!(m.source.kind, "local");

        // Tied head: stored once, as embed.tokens.
        assert_eq!(tensor_names(&out.join("head.strata")), ["final_norm"]);
        let layer = StageFile::open(&out.join("layer.003.strata")).unwrap();
        let names: Vec<&str> = layer
            .header()
            .tensors
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "attn_norm",
                "attn.q",
                "attn.k",
                "attn.v",
                "attn.o",
                "mlp_norm",
                "mlp.gate",
                "mlp.up",
                "mlp.down"
            ]
        );
        for t in &layer.header().tensors {
            let want = if t.name.ends_with("norm") { "f32" } else { q };
            assert_eq!(t.dtype.name(), want, "{}", t.name);
            assert_eq!(t.block_size.is_some(), t.dtype.is_quantized());
        }

        // The stored bytes equal the reference codec applied to the whole source tensor.
        for (file, tensor, src_name) in [
            ("embed.strata", "embed.tokens", "model.embed_tokens.weight"),
            (
                "layer.003.strata",
                "mlp.down",
                "model.layers.3.mlp.down_proj.weight",
            ),
            (
                "layer.003.strata",
                "attn.k",
                "model.layers.3.self_attn.k_proj.weight",
            ),
            (
                "layer.003.strata",
                "attn_norm",
                "model.layers.3.input_layernorm.weight",
            ),
            ("head.strata", "final_norm", "model.norm.weight"),
        ] {
            let f = StageFile::open(&out.join(file)).unwrap();
            let e = f.entry(tensor).unwrap().clone();
            let src = &source[src_name];
            assert_eq!(e.shape, src.shape, "{tensor}");
            let expected =
                codec::encode(e.dtype, &bf16_to_f32(&src.data), &e.shape, e.block_size).unwrap();
            assert!(
                f.read_stored(tensor).unwrap() == expected,
                "{q}: {file} `{tensor}` differs from the reference encoding"
            );
            if e.dtype == DType::Bf16 {
                assert!(expected == src.data, "bf16 round-trips exactly");
            }
        }

        // Deterministic: a second conversion, single-threaded, is byte-identical.
        let again = tmp.path().join(format!("{q}-again"));
        convert_ok(&model, &again, &["--quant", q, "--threads", "1", "--quiet"]);
        assert_eq!(hash_dir(&again), hash_dir(&out), "{q}: converting twice");
        std::fs::remove_dir_all(&again).unwrap();
    }
}

#[test]
fn smollm2_deterministic_across_runs_and_threads() {
    let reference = reference_nf4();
    let tmp = tmpdir();
    let out = tmp.path().join("again");
    let o = run_ok(prep().arg(smollm2_dir()).arg("--out").arg(&out).args([
        "--threads",
        "1",
        "--quiet",
        "--json",
    ]));
    assert_eq!(stderr(&o), "", "--quiet prints nothing on stderr");
    assert_eq!(stdout(&o).lines().count(), 1, "--json prints one line");
    assert_eq!(
        hash_dir(&out),
        hash_dir(reference),
        "byte-identical containers"
    );
    assert!(!out.join("prep-job.json").exists() && !out.join(".prep.lock").exists());

    // A rerun into the finished directory is a no-op.
    let s = convert_ok(&smollm2_dir(), &out, &["--quiet"]);
    assert_eq!(s["already_complete"], true);
    assert_eq!(hash_dir(&out), hash_dir(reference));
}

#[test]
fn sharded_checkpoint_gives_the_same_stages() {
    let tmp = tmpdir();
    let src = tmp.path().join("sharded");
    let shards = reshard(&smollm2_dir(), &src, &SMOL_CUTS, &|_, _| {});
    assert_eq!(shards.len(), 3);
    let out = tmp.path().join("out");
    let s = convert_ok(&src, &out, &[]);
    let reference = reference_nf4();
    verify_ok(&out);
    assert_eq!(stage_hashes(&out), stage_hashes(reference));
    assert_eq!(
        manifest_without_source(&out),
        manifest_without_source(reference)
    );
    let m = manifest_json(&out);
    let listed: Vec<&str> = m["source"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    for p in &shards {
        assert!(
            listed.contains(&p.file_name().unwrap().to_str().unwrap()),
            "{listed:?}"
        );
    }
    assert!(listed.contains(&"model.safetensors.index.json"));
    assert_eq!(s["bytes_in"], 269_030_016u64);
}

fn count_stage_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".strata"))
                .count()
        })
        .unwrap_or(0)
}

/// Starts prep and kills it with SIGKILL once `stage_files` stage files
/// exist (0: after `early`). Returns whether the kill landed before prep exited.
fn kill_at(src: &Path, out: &Path, stage_files: usize, early: Duration) -> bool {
    kill_at_with(src, out, &[], stage_files, early)
}

/// [`kill_at`] with extra prep arguments.
fn kill_at_with(
    src: &Path,
    out: &Path,
    args: &[&str],
    stage_files: usize,
    early: Duration,
) -> bool {
    let mut child = prep()
        .arg(src)
        .arg("--out")
        .arg(out)
        .args(args)
        .arg("--quiet")
        .spawn()
        .expect("spawn prep");
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        let ready = if stage_files == 0 {
            start.elapsed() >= early
        } else {
            count_stage_files(out) >= stage_files
        };
        if ready {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "prep never reached {stage_files} files"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    true
}

#[test]
fn kill_9_and_resume_is_byte_identical() {
    let model = smollm2_dir();
    let reference = reference_nf4();
    let tmp = tmpdir();
    let out = tmp.path().join("out");
    kill_at(&model, &out, 0, Duration::from_millis(40));
    assert!(
        kill_at(&model, &out, 3, Duration::ZERO),
        "prep finished before the kill after 3 files"
    );
    assert!(!out.join("manifest.json").exists());
    assert!(
        out.join("prep-job.json").exists(),
        "the job record survives a kill"
    );
    assert!(
        kill_at(&model, &out, 20, Duration::ZERO),
        "prep finished before the kill after 20 files"
    );
    assert!(!out.join("manifest.json").exists());
    let s = convert_ok(&model, &out, &["--quiet"]);
    assert!(s["stages_reused"].as_u64().unwrap() >= 20, "{s}");
    assert_eq!(
        s["stages_written"].as_u64().unwrap() + s["stages_reused"].as_u64().unwrap(),
        32
    );
    assert_eq!(
        hash_dir(&out),
        hash_dir(reference),
        "resumed container is byte-identical"
    );
}

#[test]
fn compressed_conversion_resumes_byte_identical() {
    let model = smollm2_dir();
    let tmp = tmpdir();
    let args = ["--quant", "bf16", "--compress", "zstd"];
    let whole = tmp.path().join("whole");
    convert_ok(&model, &whole, &args);
    let out = tmp.path().join("out");
    assert!(
        kill_at_with(&model, &out, &args, 12, Duration::ZERO),
        "prep finished before the kill after 12 files"
    );
    assert!(!out.join("manifest.json").exists());
    // A different --compress is another job: refused, nothing touched.
    assert_fails(
        &convert(&model, &out, &["--quant", "bf16", "--compress", "zstd:9"]),
        &["interrupted conversion"],
    );
    let s = convert_ok(&model, &out, &args);
    assert!(s["stages_reused"].as_u64().unwrap() >= 11, "{s}");
    assert_eq!(
        stage_hashes(&out),
        stage_hashes(&whole),
        "resumed compressed container is byte-identical"
    );
}

#[test]
fn delete_originals_frees_shards_after_verification() {
    let tmp = tmpdir();
    let src = tmp.path().join("src");
    let shards = reshard(&smollm2_dir(), &src, &SMOL_CUTS, &|_, _| {});
    let sizes: u64 = shards
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let shas: Vec<String> = shards.iter().map(|p| sha256_file(p)).collect();
    let out = tmp.path().join("out");
    let o = run_ok(
        prep()
            .arg(&src)
            .arg("--out")
            .arg(&out)
            .args(["--delete-originals", "--json"]),
    );
    let s = summary(&o);
    assert!(stderr(&o).contains("deleted"), "{}", stderr(&o));
    let deleted: Vec<&str> = s["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        deleted,
        [
            "model-00001-of-00003.safetensors",
            "model-00002-of-00003.safetensors",
            "model-00003-of-00003.safetensors"
        ]
    );
    assert_eq!(s["bytes_freed"], sizes);
    for p in &shards {
        assert!(!p.exists(), "{} deleted", p.display());
    }
    for keep in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "model.safetensors.index.json",
    ] {
        assert!(src.join(keep).exists(), "{keep} kept");
    }
    let m = verify_ok(&out);
    assert_eq!(stage_hashes(&out), stage_hashes(reference_nf4()));
    for (p, sha) in shards.iter().zip(&shas) {
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            &m.source
                .files
                .iter()
                .find(|f| f.path == name)
                .unwrap()
                .sha256,
            sha
        );
    }
}

#[test]
fn delete_originals_failure_deletes_only_converted_shards() {
    let tmp = tmpdir();
    let src = tmp.path().join("src");
    let bad = "model.layers.25.mlp.up_proj.weight";
    let shards = reshard(&smollm2_dir(), &src, &SMOL_CUTS, &|name, data| {
        if name == bad {
            data[1000..1002].copy_from_slice(&0x7F80u16.to_le_bytes()); // bf16 +inf
        }
    });
    let out = tmp.path().join("out");
    let o = convert(&src, &out, &["--delete-originals"]);
    assert_fails(
        &o,
        &[
            bad,
            "model-00003-of-00003.safetensors",
            "non-finite",
            "layer 25",
        ],
    );
    assert!(!out.join("manifest.json").exists());
    assert!(
        !shards[0].exists() && !shards[1].exists(),
        "shards 1 and 2 were fully converted and verified"
    );
    assert!(shards[2].exists(), "the failing shard is kept");
    for i in 0..25 {
        assert!(out.join(format!("layer.{i:03}.strata")).exists());
    }
    assert!(!out.join("layer.025.strata").exists() && !out.join("layer.025.strata.tmp").exists());
    assert!(src.join("config.json").exists() && src.join("tokenizer.json").exists());

    // Repair the last shard: the rerun resumes, and the manifest still lists
    // the deleted shards with the sha256 recorded before deleting them.
    let clean = tmp.path().join("clean");
    let clean_shards = reshard(&smollm2_dir(), &clean, &SMOL_CUTS, &|_, _| {});
    std::fs::copy(&clean_shards[2], &shards[2]).unwrap();
    // Shard 1 reappears as if a kill had struck between recording its
    // deletion and doing it: the rerun finishes that deletion.
    std::fs::copy(&clean_shards[0], &shards[0]).unwrap();
    let s = convert_ok(&src, &out, &["--delete-originals"]);
    assert_eq!(s["stages_reused"], 26, "{s}");
    assert_eq!(
        s["deleted"],
        json!([
            "model-00001-of-00003.safetensors",
            "model-00003-of-00003.safetensors"
        ])
    );
    assert!(!shards[0].exists() && !shards[2].exists());
    let m = verify_ok(&out);
    assert_eq!(stage_hashes(&out), stage_hashes(reference_nf4()));
    for p in &clean_shards {
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            m.source
                .files
                .iter()
                .find(|f| f.path == name)
                .unwrap()
                .sha256,
            sha256_file(p)
        );
    }
}

// ---------------------------------------------------------------- tiny fixtures

#[test]
fn tiny_variants_convert() {
    let tmp = tmpdir();
    for (variant, quant) in [
        ("llama", "nf4"),
        ("llama-tied", "int8"),
        ("llama3-rope", "f16"),
        ("llama-linear-rope", "nf4"),
        ("mistral", "bf16"),
        ("qwen2", "nf4"),
        ("qwen3", "f32"),
        ("gemma2", "nf4"),
        ("gemma3", "nf4"),
        ("gemma3-mm", "bf16"),
        ("phi3", "int8"),
        ("phi3-longrope", "f16"),
    ] {
        let out = tmp.path().join(variant);
        let o = convert(
            &tiny_fixture(variant),
            &out,
            &["--quant", quant, "--block-size", "32"],
        );
        assert!(o.status.success(), "{variant}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("no tokenizer.json"),
            "{variant}: warns about the missing tokenizer"
        );
        let m = verify_ok(&out);
        let a = &m.architecture;
        let layer = tensor_names(&out.join("layer.001.strata"));
        let head = tensor_names(&out.join("head.strata"));
        match variant {
            "llama-tied" | "gemma2" | "gemma3" | "gemma3-mm" => {
                assert_eq!(head, ["final_norm"])
            }
            _ => assert_eq!(head, ["final_norm", "head"]),
        }
        match variant {
            "qwen2" => {
                assert!(a.attention_bias && !a.attention_out_bias);
                assert!(
                    layer.contains(&"attn.q.bias".into()) && !layer.contains(&"attn.o.bias".into())
                );
                assert_eq!(a.sliding_window, None, "use_sliding_window is false");
            }
            "qwen3" => {
                assert!(a.qk_norm);
                assert!(
                    layer.contains(&"attn.q_norm".into()) && layer.contains(&"attn.k_norm".into())
                );
            }
            "mistral" => assert_eq!(a.sliding_window, Some(5)),
            "gemma2" => {
                assert!(a.post_norms && a.tie_word_embeddings);
                assert_eq!(
                    layer,
                    [
                        "attn_norm",
                        "attn.q",
                        "attn.k",
                        "attn.v",
                        "attn.o",
                        "attn_post_norm",
                        "mlp_norm",
                        "mlp.gate",
                        "mlp.up",
                        "mlp.down",
                        "mlp_post_norm"
                    ]
                );
                assert_eq!(
                    (a.sliding_window, a.sliding_window_layers.clone()),
                    (Some(4), Some(vec![0]))
                );
                assert_eq!(
                    (a.attn_logit_softcap, a.final_logit_softcap),
                    (Some(5.0), Some(3.0))
                );
                assert_eq!(a.attention_scale, Some(24f64.powf(-0.5)));
                assert_eq!(a.embedding_multiplier, Some(72f64.sqrt()));
                assert_eq!(a.activation, strata_format::manifest::Activation::GeluTanh);
            }
            "gemma3" | "gemma3-mm" => {
                assert!(a.post_norms && a.tie_word_embeddings && a.qk_norm);
                assert!(
                    layer.contains(&"attn.q_norm".into())
                        && layer.contains(&"mlp_post_norm".into())
                );
                assert_eq!(
                    (a.sliding_window, a.sliding_window_layers.clone()),
                    (Some(4), Some(vec![0, 1]))
                );
                assert_eq!((a.attn_logit_softcap, a.final_logit_softcap), (None, None));
                assert_eq!(a.attention_scale, Some(24f64.powf(-0.5)));
                assert_eq!(a.embedding_multiplier, Some(72f64.sqrt()));
                assert_eq!(a.rope.theta, 1e6);
                assert!(matches!(
                    a.rope.scaling,
                    Some(strata_format::manifest::RopeScaling::Linear { factor }) if factor == 2.0
                ));
                let local = a.sliding_rope.as_ref().expect("gemma3 has a sliding rope");
                assert_eq!(
                    (local.theta, local.rotary_dim, &local.scaling),
                    (100.0, 16, &None)
                );
            }
            "phi3" => assert_eq!((a.sliding_window, a.rope.scaling.clone()), (Some(7), None)),
            "phi3-longrope" => {
                assert_eq!(a.rope.rotary_dim, 12);
                match &a.rope.scaling {
                    Some(strata_format::manifest::RopeScaling::LongRope {
                        short_factor,
                        long_factor,
                        original_max_position_embeddings: 8,
                        attention_factor,
                    }) => {
                        assert_eq!((short_factor.len(), long_factor[5]), (6, 12.0));
                        assert_eq!(*attention_factor, 2f64.sqrt());
                    }
                    other => panic!("{other:?}"),
                }
            }
            "llama3-rope" => assert!(matches!(
                a.rope.scaling,
                Some(strata_format::manifest::RopeScaling::Llama3 {
                    original_max_position_embeddings: 64,
                    ..
                })
            )),
            "llama-linear-rope" => {
                assert_eq!((a.hidden_size, a.num_kv_heads), (80, 1));
                let f = StageFile::open(&out.join("layer.000.strata")).unwrap();
                let q = f.entry("attn.q").unwrap();
                assert_eq!(
                    (q.shape.clone(), q.length),
                    (vec![80, 80], 80 * 3 * 18),
                    "rows of 80 pad to 3 blocks of 32"
                );
            }
            _ => {}
        }
        let f = StageFile::open(&out.join("embed.strata")).unwrap();
        let e = f.entry("embed.tokens").unwrap();
        let want = if quant == "nf4" {
            DType::Int8
        } else {
            DType::from_name(quant).unwrap()
        };
        assert_eq!(e.dtype, want, "{variant}");
    }
}

/// The f32 values of a stored f32 tensor.
fn stored_f32(path: &Path, name: &str) -> Vec<f32> {
    let f = StageFile::open(path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(f.entry(name).unwrap().dtype, DType::F32, "{name}");
    f.read_stored(name)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn gemma2_norms_and_phi3_fused_projections_derive_exactly_from_their_sources() {
    let tmp = tmpdir();
    for variant in ["gemma2", "phi3"] {
        let src = tiny_fixture(variant);
        let source = read_st(&src.join("model.safetensors"));
        let weights = |name: &str| -> Vec<f32> {
            let t = source.iter().find(|t| t.name == name).unwrap();
            assert_eq!(t.dtype, "BF16");
            bf16_to_f32(&t.data)
        };
        let out = tmp.path().join(variant);
        let s = convert_ok(&src, &out, &["--quant", "f32"]);
        // Every source byte is read once, the fused tensors' rows included.
        let source_bytes: usize = source.iter().map(|t| t.data.len()).sum();
        assert_eq!(s["bytes_in"], source_bytes as u64, "{variant}");
        for layer in 0..2 {
            let stage = out.join(format!("layer.00{layer}.strata"));
            let p = format!("model.layers.{layer}.");
            if variant == "gemma2" {
                // (1 + w) folded into the f32 weight, exactly as transformers computes it.
                for (name, hf) in [
                    ("attn_norm", "input_layernorm"),
                    ("attn_post_norm", "post_attention_layernorm"),
                    ("mlp_norm", "pre_feedforward_layernorm"),
                    ("mlp_post_norm", "post_feedforward_layernorm"),
                ] {
                    let want: Vec<f32> = weights(&format!("{p}{hf}.weight"))
                        .iter()
                        .map(|w| 1.0 + w)
                        .collect();
                    assert_eq!(stored_f32(&stage, name), want, "layer {layer} {name}");
                }
            } else {
                let qkv = weights(&format!("{p}self_attn.qkv_proj.weight"));
                let gate_up = weights(&format!("{p}mlp.gate_up_proj.weight"));
                // 4 query heads and 2 KV heads of 16 over hidden 64: rows 0..64, 64..96, 96..128.
                let row = 64;
                assert_eq!(stored_f32(&stage, "attn.q"), qkv[..64 * row]);
                assert_eq!(stored_f32(&stage, "attn.k"), qkv[64 * row..96 * row]);
                assert_eq!(stored_f32(&stage, "attn.v"), qkv[96 * row..]);
                assert_eq!(stored_f32(&stage, "mlp.gate"), gate_up[..128 * row]);
                assert_eq!(stored_f32(&stage, "mlp.up"), gate_up[128 * row..]);
            }
        }
        if variant == "gemma2" {
            let want: Vec<f32> = weights("model.norm.weight")
                .iter()
                .map(|w| 1.0 + w)
                .collect();
            assert_eq!(stored_f32(&out.join("head.strata"), "final_norm"), want);
        }
    }
}

#[test]
fn remote_code_layouts_derive_exactly_from_their_sources() {
    let tmp = tmpdir();
    let row = 64;
    // Source row of stored row `r` of ChatGLM's q or k (heads of 16, 8 rotary
    // dimensions in interleaved pairs): pairs to halves, the rest in place.
    let pairs_to_halves = |first: usize, r: usize| {
        let (head, j) = (r / 16, r % 16);
        first
            + head * 16
            + match j {
                0..4 => 2 * j,
                4..8 => 2 * (j - 4) + 1,
                _ => j,
            }
    };
    for variant in ["internlm2", "chatglm", "baichuan2"] {
        let src = tiny_fixture(variant);
        let source = read_st(&src.join("model.safetensors"));
        let weights = |name: &str| -> Vec<f32> {
            let t = source.iter().find(|t| t.name == name).unwrap();
            bf16_to_f32(&t.data)
        };
        let rows_of = |w: &[f32], width: usize, rows: &[usize]| -> Vec<f32> {
            rows.iter()
                .flat_map(|&r| w[r * width..(r + 1) * width].to_vec())
                .collect()
        };
        let out = tmp.path().join(variant);
        let s = convert_ok(&src, &out, &["--quant", "f32"]);
        let source_bytes: usize = source.iter().map(|t| t.data.len()).sum();
        assert_eq!(s["bytes_in"], source_bytes as u64, "{variant}");
        for layer in 0..2 {
            let stage = out.join(format!("layer.00{layer}.strata"));
            match variant {
                "internlm2" => {
                    // 2 KV groups of 64 rows: q 32, k 16, v 16 each.
                    let w = weights(&format!("model.layers.{layer}.attention.wqkv.weight"));
                    let group = |first: usize, n: usize| -> Vec<usize> {
                        (0..2)
                            .flat_map(|g| g * 64 + first..g * 64 + first + n)
                            .collect()
                    };
                    assert_eq!(
                        stored_f32(&stage, "attn.q"),
                        rows_of(&w, row, &group(0, 32))
                    );
                    assert_eq!(
                        stored_f32(&stage, "attn.k"),
                        rows_of(&w, row, &group(32, 16))
                    );
                    assert_eq!(
                        stored_f32(&stage, "attn.v"),
                        rows_of(&w, row, &group(48, 16))
                    );
                }
                "chatglm" => {
                    let p = format!("transformer.encoder.layers.{layer}.self_attention.");
                    let w = weights(&format!("{p}query_key_value.weight"));
                    let b = weights(&format!("{p}query_key_value.bias"));
                    let q: Vec<usize> = (0..64).map(|r| pairs_to_halves(0, r)).collect();
                    let k: Vec<usize> = (0..32).map(|r| pairs_to_halves(64, r)).collect();
                    let v: Vec<usize> = (96..128).collect();
                    for (name, rows) in [("attn.q", &q), ("attn.k", &k), ("attn.v", &v)] {
                        assert_eq!(stored_f32(&stage, name), rows_of(&w, row, rows), "{name}");
                        let bias = format!("{name}.bias");
                        assert_eq!(stored_f32(&stage, &bias), rows_of(&b, 1, rows), "{bias}");
                    }
                }
                _ => {}
            }
        }
        if variant == "baichuan2" {
            // NormHead: each row over its L2 norm, as F.normalize.
            let head = weights("lm_head.weight");
            let got = stored_f32(&out.join("head.strata"), "head");
            for (g, w) in got.chunks(row).zip(head.chunks(row)) {
                let n = w.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
                for (a, b) in g.iter().zip(w) {
                    assert!((*a as f64 - *b as f64 / n).abs() < 1e-7, "{a} vs {b} / {n}");
                }
            }
        }
    }
}

/// A named way to damage a safetensors file, and the error text it must cause.
type Corruption = (&'static str, fn(&mut Vec<u8>), &'static str);

#[test]
fn corrupted_shards_are_rejected_by_name() {
    let tmp = tmpdir();
    let cases: [Corruption; 4] = [
        (
            "huge-header",
            |b: &mut Vec<u8>| b[..8].copy_from_slice(&u64::MAX.to_le_bytes()),
            "header length",
        ),
        (
            "garbage-header",
            |b: &mut Vec<u8>| b[8] = b'x',
            "header is not valid",
        ),
        (
            "truncated",
            |b: &mut Vec<u8>| b.truncate(b.len() - 100),
            "truncated",
        ),
        (
            "overlapping-offsets",
            |b: &mut Vec<u8>| {
                // Shift the first tensor by 2 bytes: sizes stay right, offsets overlap.
                let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
                let mut h: Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
                let first = h
                    .as_object_mut()
                    .unwrap()
                    .values_mut()
                    .find(|v| v["data_offsets"][0] == 0)
                    .unwrap();
                let end = first["data_offsets"][1].as_u64().unwrap();
                first["data_offsets"] = json!([2, end + 2]);
                let text = h.to_string();
                let mut out = (text.len() as u64).to_le_bytes().to_vec();
                out.extend_from_slice(text.as_bytes());
                out.extend_from_slice(&b[8 + n..]);
                *b = out;
            },
            "contiguous",
        ),
    ];
    for (name, mutate, want) in cases {
        let src = tmp.path().join(name);
        copy_dir(&tiny_fixture("llama"), &src);
        let p = src.join("model.safetensors");
        let mut bytes = std::fs::read(&p).unwrap();
        mutate(&mut bytes);
        std::fs::write(&p, bytes).unwrap();
        let out = tmp.path().join(format!("{name}-out"));
        let o = convert(&src, &out, &[]);
        assert_fails(&o, &[p.to_str().unwrap(), want]);
        assert!(!out.join("manifest.json").exists());
        assert!(
            !out.exists(),
            "{name}: nothing is left behind in a directory prep created"
        );
    }
}

/// Rewrites a tiny fixture copy's weights with `edit`.
fn edited_fixture(dir: &Path, variant: &str, edit: impl FnOnce(&mut Vec<St>)) -> PathBuf {
    copy_dir(&tiny_fixture(variant), dir);
    let p = dir.join("model.safetensors");
    let mut t = read_st(&p);
    edit(&mut t);
    write_st(&p, &t);
    dir.to_path_buf()
}

#[test]
fn invalid_checkpoints_get_one_clear_error() {
    let tmp = tmpdir();
    let t = tmp.path();

    let src = t.join("arch");
    copy_dir(&tiny_fixture("llama"), &src);
    let cfg = src.join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    v["architectures"] = json!(["GPT2LMHeadModel"]);
    std::fs::write(&cfg, v.to_string()).unwrap();
    assert_fails(
        &convert(&src, &t.join("o1"), &[]),
        &[
            "GPT2LMHeadModel",
            "LlamaForCausalLM",
            "MistralForCausalLM",
            "Qwen2ForCausalLM",
            "Qwen3ForCausalLM",
            "Gemma2ForCausalLM",
            "Phi3ForCausalLM",
            "MixtralForCausalLM",
            "Qwen2MoeForCausalLM",
            "Qwen3MoeForCausalLM",
        ],
    );

    let gone = "model.layers.1.mlp.up_proj.weight";
    let src = edited_fixture(&t.join("missing"), "llama", |ts| {
        ts.retain(|x| x.name != gone)
    });
    assert_fails(
        &convert(&src, &t.join("o2"), &[]),
        &["missing tensor", gone, "layer 1"],
    );

    let k = "model.layers.0.self_attn.k_proj.weight";
    let src = edited_fixture(&t.join("shape"), "llama", |ts| {
        let x = ts.iter_mut().find(|x| x.name == k).unwrap();
        x.shape.reverse();
    });
    assert_fails(
        &convert(&src, &t.join("o3"), &[]),
        &[k, "shape [64, 32]", "[32, 64]"],
    );

    // A fused projection whose rows do not add up to what config.json implies.
    let qkv = "model.layers.1.self_attn.qkv_proj.weight";
    let src = edited_fixture(&t.join("fused"), "phi3", |ts| {
        let x = ts.iter_mut().find(|x| x.name == qkv).unwrap();
        x.shape = vec![120, 64];
        x.data.truncate(120 * 64 * 2);
    });
    assert_fails(
        &convert(&src, &t.join("o3b"), &[]),
        &[qkv, "shape [120, 64]", "[128, 64]", "layer 1"],
    );

    let extra = "model.layers.0.self_attn.extra_proj.weight";
    let src = edited_fixture(&t.join("extra"), "llama", |ts| {
        let mut x = ts[0].clone();
        x.name = extra.into();
        ts.push(x);
    });
    assert_fails(&convert(&src, &t.join("o4"), &[]), &[extra, "unexpected"]);

    let norm = "model.norm.weight";
    let src = edited_fixture(&t.join("dtype"), "llama", |ts| {
        let x = ts.iter_mut().find(|x| x.name == norm).unwrap();
        x.dtype = "F64".into();
        x.data = bf16_to_f32(&x.data)
            .iter()
            .flat_map(|v| f64::from(*v).to_le_bytes())
            .collect();
    });
    assert_fails(&convert(&src, &t.join("o5"), &[]), &[norm, "F64"]);

    assert_fails(
        &convert(Path::new("no-such-model-dir"), &t.join("o6"), &[]),
        &["no-such-model-dir", "org/name"],
    );
    assert_fails(
        &convert(
            &tiny_fixture("llama"),
            &t.join("o7"),
            &["--revision", "main"],
        ),
        &["--revision"],
    );
    assert_fails(
        &convert(
            Path::new("org/name"),
            &t.join("o7"),
            &["--revision", "../../etc"],
        ),
        &["--revision", "not a branch"],
    );
    for o in ["o1", "o2", "o3", "o4", "o5", "o6", "o7"] {
        assert!(!t.join(o).exists(), "{o}: nothing written");
    }
    let usage = convert(
        &tiny_fixture("llama"),
        &t.join("o8"),
        &["--block-size", "48"],
    );
    assert_eq!(usage.status.code(), Some(2), "bad usage exits 2");
}

#[test]
fn output_directory_is_guarded() {
    let tmp = tmpdir();
    let t = tmp.path();
    let llama = tiny_fixture("llama");
    let out = t.join("out");
    convert_ok(&llama, &out, &[]);
    let before = hash_dir(&out);
    assert_eq!(convert_ok(&llama, &out, &[])["already_complete"], true);
    assert_fails(
        &convert(&tiny_fixture("mistral"), &out, &[]),
        &["already holds a complete container", "mistral"],
    );
    assert_fails(
        &convert(&llama, &out, &["--quant", "int8"]),
        &["already holds a complete container"],
    );
    assert_eq!(hash_dir(&out), before, "a refused run changes nothing");

    // An interrupted job (its conversion failed on layer 1) belongs to its model and options.
    let bad = "model.layers.1.mlp.down_proj.weight";
    let src = edited_fixture(&t.join("src"), "llama", |ts| {
        let x = ts.iter_mut().find(|x| x.name == bad).unwrap();
        x.data[0..2].copy_from_slice(&0xFFC0u16.to_le_bytes()); // bf16 NaN
    });
    let out2 = t.join("out2");
    assert_fails(&convert(&src, &out2, &[]), &[bad, "non-finite"]);
    assert!(out2.join("prep-job.json").exists() && out2.join("layer.000.strata").exists());
    assert_fails(
        &convert(&tiny_fixture("mistral"), &out2, &[]),
        &["interrupted conversion", "choose another --out"],
    );
    assert_fails(
        &convert(&src, &out2, &["--quant", "int8"]),
        &["interrupted conversion"],
    );
    std::fs::copy(
        llama.join("model.safetensors"),
        src.join("model.safetensors"),
    )
    .unwrap();
    let s = convert_ok(&src, &out2, &[]);
    assert_eq!(s["stages_reused"], 2, "embed and layer 0 kept: {s}");
    assert_eq!(stage_hashes(&out2), stage_hashes(&out));

    // Stage files without a job record are someone else's.
    let out3 = t.join("out3");
    copy_dir(&out, &out3);
    std::fs::remove_file(out3.join("manifest.json")).unwrap();
    assert_fails(&convert(&llama, &out3, &[]), &["no prep-job.json"]);

    // Unwritable destinations.
    let file = t.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    assert_fails(
        &convert(&llama, &file.join("sub"), &[]),
        &["a-file/sub", "cannot create"],
    );
    assert_fails(&convert(&llama, &file, &[]), &["a-file", "not a directory"]);

    // The source folder itself is not a container directory.
    let inplace = t.join("inplace");
    copy_dir(&llama, &inplace);
    assert_fails(&convert(&inplace, &inplace, &[]), &["is the source folder"]);
    assert!(!inplace.join("embed.strata").exists());

    // A concurrent prep into the same directory is refused.
    let out4 = t.join("out4");
    std::fs::create_dir(&out4).unwrap();
    let lock = std::fs::File::create(out4.join(".prep.lock")).unwrap();
    // SAFETY: `lock` stays open across the call, so its descriptor is valid;
    // flock touches no memory of ours.
    let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(locked, 0);
    assert_fails(&convert(&llama, &out4, &[]), &["another prep"]);
    drop(lock);
    convert_ok(&llama, &out4, &[]);
}

#[test]
fn help_describes_the_encoding_policy() {
    let o = run_ok(prep().arg("--help"));
    let h = stdout(&o);
    for needle in [
        "--quant",
        "int8",
        "tied",
        "embed.tokens",
        "--delete-originals",
        "HF_HUB_OFFLINE",
        "--json",
    ] {
        assert!(h.contains(needle), "--help lacks {needle:?}");
    }
}

// ---------------------------------------------------------------- Hub

/// A minimal Hugging Face Hub: `/api/models/{repo}/revision/main` and
/// `/{repo}/resolve/main/{file}` with the headers hf-hub reads.
struct FakeHub {
    addr: String,
    stop: Arc<AtomicBool>,
    downloads: Arc<Mutex<Vec<String>>>,
    auth: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

const REPO: &str = "strata-test/tiny-llama";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

impl FakeHub {
    fn start(files: BTreeMap<String, Vec<u8>>) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let downloads = Arc::new(Mutex::new(Vec::new()));
        let auth = Arc::new(Mutex::new(Vec::new()));
        let (s, d, a) = (stop.clone(), downloads.clone(), auth.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        serve(stream, &files, &d, &a);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        });
        FakeHub {
            addr,
            stop,
            downloads,
            auth,
            thread: Some(thread),
        }
    }

    fn downloads(&self) -> Vec<String> {
        self.downloads.lock().unwrap().clone()
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(
    stream: TcpStream,
    files: &BTreeMap<String, Vec<u8>>,
    downloads: &Mutex<Vec<String>>,
    auth: &Mutex<Vec<String>>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    reader.read_line(&mut request).unwrap();
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    if let Some(a) = headers.get("authorization") {
        auth.lock().unwrap().push(a.clone());
    }
    let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
    let api = format!("/api/models/{REPO}/revision/main");
    let resolve = format!("/{REPO}/resolve/main/");
    let (status, extra, body): (&str, Vec<String>, Vec<u8>) = if path == api {
        let siblings: Vec<Value> = files.keys().map(|f| json!({"rfilename": f})).collect();
        (
            "200 OK",
            vec!["Content-Type: application/json".into()],
            json!({"sha": COMMIT, "siblings": siblings})
                .to_string()
                .into_bytes(),
        )
    } else if let Some(data) = path.strip_prefix(&resolve).and_then(|f| files.get(f)) {
        let name = path.strip_prefix(&resolve).unwrap().to_string();
        let etag = hex_sha(data);
        let size = data.len();
        let (start, end) = match headers.get("range").and_then(|r| r.strip_prefix("bytes=")) {
            Some(r) => {
                let (a, b) = r.split_once('-').unwrap();
                let a: usize = a.parse().unwrap();
                let b: usize = if b.is_empty() {
                    size - 1
                } else {
                    b.parse().unwrap()
                };
                (a, b.min(size - 1))
            }
            None => (0, size - 1),
        };
        if !(start == 0 && end == 0) {
            downloads.lock().unwrap().push(name);
        }
        (
            "206 Partial Content",
            vec![
                format!("ETag: \"{etag}\""),
                format!("X-Repo-Commit: {COMMIT}"),
                format!("Content-Range: bytes {start}-{end}/{size}"),
            ],
            data[start..=end].to_vec(),
        )
    } else {
        ("404 Not Found", vec![], b"not found".to_vec())
    };
    let mut out = stream;
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for h in extra {
        head.push_str(&h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let _ = out.write_all(head.as_bytes());
    let _ = out.write_all(&body);
    let _ = out.flush();
}

fn hex_sha(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

fn hub_prep(hf_home: &Path, endpoint: &str) -> Command {
    let mut c = prep();
    c.env("HF_HOME", hf_home).env("HF_ENDPOINT", endpoint);
    for k in [
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ] {
        c.env_remove(k);
    }
    c.env("NO_PROXY", "127.0.0.1,localhost");
    c
}

#[test]
fn hub_download_then_cache_only() {
    let tmp = tmpdir();
    let t = tmp.path();
    // A sharded tiny checkpoint, served by a local Hub.
    let local = t.join("local");
    reshard(
        &tiny_fixture("llama"),
        &local,
        &["model.layers.1.self_attn.v_proj.weight"],
        &|_, _| {},
    );
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(&local).unwrap() {
        let p = e.unwrap().path();
        files.insert(
            p.file_name().unwrap().to_str().unwrap().to_string(),
            std::fs::read(&p).unwrap(),
        );
    }
    let mut hub = FakeHub::start(files.clone());
    let hf_home = t.join("hf");
    let token = "hf_test_secret_token";

    let o1 = t.join("o1");
    let o = run_ok(
        hub_prep(&hf_home, &hub.addr)
            .env("HF_TOKEN", token)
            .args([REPO, "--json", "--out"])
            .arg(&o1),
    );
    assert!(
        !stdout(&o).contains(token) && !stderr(&o).contains(token),
        "the token is never printed"
    );
    assert!(hub
        .auth
        .lock()
        .unwrap()
        .iter()
        .all(|a| a == &format!("Bearer {token}")));
    let mut got = hub.downloads();
    got.sort();
    let weights: Vec<String> = files
        .keys()
        .filter(|f| f.ends_with(".safetensors"))
        .cloned()
        .collect();
    let mut want = vec![
        "config.json".to_string(),
        "generation_config.json".into(),
        "model.safetensors.index.json".into(),
    ];
    want.extend(weights.iter().cloned());
    want.sort();
    assert_eq!(got, want, "each file downloaded once");
    let m = verify_ok(&o1);
    assert_eq!(
        (
            m.source.kind.as_str(),
            m.source.location.as_str(),
            m.source.revision.as_deref()
        ),
        ("hub", REPO, Some(COMMIT))
    );
    let repo_dir = hf_home.join("hub/models--strata-test--tiny-llama");
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main"))
            .unwrap()
            .trim(),
        COMMIT
    );
    let snapshot = repo_dir.join("snapshots").join(COMMIT);
    assert!(std::fs::symlink_metadata(snapshot.join(&weights[0]))
        .unwrap()
        .file_type()
        .is_symlink());

    // The same stages as converting the folder directly.
    let direct = t.join("direct");
    convert_ok(&local, &direct, &[]);
    assert_eq!(stage_hashes(&o1), stage_hashes(&direct));

    // Online again: everything is in the cache, nothing is downloaded.
    let o2 = t.join("o2");
    run_ok(
        hub_prep(&hf_home, &hub.addr)
            .args([REPO, "--quiet", "--out"])
            .arg(&o2),
    );
    assert_eq!(hub.downloads().len(), want.len(), "no second download");
    assert_eq!(hash_dir(&o2), hash_dir(&o1));

    // Hub gone: HF_HUB_OFFLINE=1 resolves from the cache; without it, the
    // unreachable Hub falls back to the cache with a warning.
    let endpoint = hub.addr.clone();
    hub.stop();
    drop(hub);
    let o3 = t.join("o3");
    run_ok(
        hub_prep(&hf_home, &endpoint)
            .env("HF_HUB_OFFLINE", "1")
            .args([REPO, "--quiet", "--out"])
            .arg(&o3),
    );
    assert_eq!(hash_dir(&o3), hash_dir(&o1));
    let o4 = t.join("o4");
    let o = run_ok(hub_prep(&hf_home, &endpoint).args([REPO, "--out"]).arg(&o4));
    assert!(stderr(&o).contains("cannot reach"), "{}", stderr(&o));
    assert_eq!(hash_dir(&o4), hash_dir(&o1));
    let o = run(hub_prep(&hf_home, &endpoint)
        .env("HF_HUB_OFFLINE", "1")
        .args(["strata-test/not-cached", "--out"])
        .arg(t.join("o5")));
    assert_fails(
        &o,
        &[
            "strata-test/not-cached",
            "HF_HUB_OFFLINE",
            "not in the cache",
        ],
    );

    // --delete-originals in a Hub cache removes the blobs and their links, nothing else.
    let o6 = t.join("o6");
    let s = summary(&run_ok(
        hub_prep(&hf_home, &endpoint)
            .env("HF_HUB_OFFLINE", "1")
            .args([REPO, "--delete-originals", "--json", "--out"])
            .arg(&o6),
    ));
    let freed: u64 = weights.iter().map(|w| files[w].len() as u64).sum();
    assert_eq!(s["bytes_freed"], freed);
    for w in &weights {
        let link = std::fs::symlink_metadata(snapshot.join(w));
        assert!(
            matches!(&link, Err(e) if e.kind() == std::io::ErrorKind::NotFound),
            "{w} link removed: {link:?}"
        );
        assert!(
            !repo_dir.join("blobs").join(hex_sha(&files[w])).exists(),
            "{w} blob removed"
        );
    }
    assert!(
        snapshot.join("config.json").is_file()
            && snapshot.join("model.safetensors.index.json").is_file()
    );
    assert_eq!(stage_hashes(&o6), stage_hashes(&o1));
    verify_ok(&o6);
}
