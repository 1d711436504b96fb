//! `prep FILE.gguf` end to end on real GGUF files, each kept in its own
//! encodings (no `--quant`): SmolLM2-135M-Instruct (Q4_1, llama: q/k rows
//! permuted by llama.cpp), Gemma 3 270M (Q4_K_M: Q4_K, Q5_0, Q6_K, Q8_0;
//! norms stored plus one) and Qwen2.5-Coder-0.5B-Instruct (Q5_0, Q4_K,
//! Q6_K, Q8_0; biases). Compared with transformers loading the same GGUF
//! (dequantized to f32: tests/fixtures/<model>/gguf-golden.json, from
//! `scripts/make-real-goldens.py --gguf`) and with llama.cpp on the same file
//! (tests/fixtures/<model>/llamacpp.json, from scripts/llamacpp-reference.py):
//! token ids identical, top-1 token of every prompt equal, passage
//! perplexity within 1% of both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use strata_e2e::*;

/// One real model: its fetched folder, GGUF file name and fixture folder.
struct Model {
    dir: PathBuf,
    gguf: &'static str,
    fixtures: &'static str,
}

impl Model {
    fn smollm2() -> Model {
        Model {
            dir: smollm2_dir(),
            gguf: "SmolLM2-135M-Instruct.Q4_1.gguf",
            fixtures: "smollm2",
        }
    }

    fn gemma3() -> Model {
        Model {
            dir: gemma3_dir(),
            gguf: "gemma-3-270m-q4_k_m.gguf",
            fixtures: "gemma3",
        }
    }

    fn qwen05() -> Model {
        Model {
            dir: qwen05_dir(),
            gguf: "Qwen2.5-Coder-0.5B-Instruct.gguf",
            fixtures: "qwen2.5-0.5b",
        }
    }

    fn fixture(&self, name: &str) -> Value {
        let path = repo_root()
            .join("tests/fixtures")
            .join(self.fixtures)
            .join(name);
        serde_json::from_slice(&std::fs::read(&path).expect("fixture"))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The container `prep FILE.gguf` makes with `args`.
    fn container(&self, args: &[&str]) -> PathBuf {
        let tag = if args.is_empty() {
            "native".to_string()
        } else {
            args.join("-").replace("--", "")
        };
        prepared(
            &self.dir.join(self.gguf),
            &format!("gguf-{}-{tag}", self.fixtures),
            args,
        )
    }
}

fn runner(args: &[&str], dir: &Path) -> Command {
    let mut c = Command::new(bin("runner"));
    c.arg(args[0]).arg(dir).args(&args[1..]).arg("-q");
    c
}

fn last_logits(dir: &Path, text: &str) -> (Value, Vec<f64>) {
    let out = run_ok(&mut runner(&["logits", "--prompt", text], dir));
    let v: Value = serde_json::from_str(stdout(&out).trim()).expect("logits JSON");
    let rows = v["logits"].as_array().expect("logits rows");
    let last = rows
        .last()
        .expect("a row")
        .as_array()
        .expect("row")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect();
    (v["ids"].clone(), last)
}

/// Ids, top-1 tokens and passage perplexity of the natively kept container.
fn check_native(m: &Model) {
    let dir = m.container(&[]);
    let golden = m.fixture("gguf-golden.json");
    let llama = m.fixture("llamacpp.json");
    for p in golden["prompts"].as_array().expect("prompts") {
        let name = &p["name"];
        let (ids, last) = last_logits(&dir, p["text"].as_str().expect("text"));
        assert_eq!(ids, p["input_ids"], "{name}: tokenization");
        let argmax = (0..last.len())
            .max_by(|&a, &b| last[a].total_cmp(&last[b]))
            .expect("logits");
        assert_eq!(
            argmax as u64, p["last_logits_top64"]["ids"][0],
            "{name}: top-1 token vs transformers"
        );
        let lp = llama["prompts"]
            .as_array()
            .expect("llama.cpp prompts")
            .iter()
            .find(|q| q["name"] == *name)
            .expect("the same prompt in llamacpp.json");
        assert_eq!(
            argmax as u64, lp["last_top1"],
            "{name}: top-1 token vs llama.cpp"
        );
    }
    let (nll, tokens) = passage_nll(&dir, &[]);
    assert_eq!(Some(tokens), golden["passage"]["num_tokens"].as_u64());
    let ppl = nll.exp();
    for (who, want) in [
        ("transformers (GGUF dequantized to f32)", &golden),
        ("llama.cpp (same GGUF)", &llama),
    ] {
        let want = want["passage"]["perplexity"].as_f64().expect("perplexity");
        eprintln!(
            "{}: perplexity {ppl:.4} vs {who} {want:.4} ({:+.3}%)",
            m.fixtures,
            (ppl / want - 1.0) * 100.0
        );
        assert!(
            (ppl / want - 1.0).abs() < 0.01,
            "{}: perplexity {ppl} vs {who} {want}",
            m.fixtures
        );
    }
}

/// How many tensors of each encoding (upper case, as GGUF names them) the
/// container's stage files hold, matrices only.
fn container_types(dir: &Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for e in std::fs::read_dir(dir).expect("container dir") {
        let path = e.expect("entry").path();
        if path.extension().is_none_or(|x| x != "strata") {
            continue;
        }
        let f = strata_format::StageFile::open(&path).expect("stage file");
        for t in &f.header().tensors {
            if t.shape.len() == 2 {
                *counts.entry(t.dtype.name().to_uppercase()).or_default() += 1;
            }
        }
    }
    counts
}

/// How many tensors of each type the GGUF holds, matrices only.
fn gguf_types(path: &Path) -> BTreeMap<String, usize> {
    let g = strata_prep::gguf::Gguf::open(path).expect("GGUF");
    let mut counts = BTreeMap::new();
    for t in g.tensors.iter().filter(|t| t.dims.len() == 2) {
        *counts.entry(t.ty.name().to_uppercase()).or_default() += 1;
    }
    counts
}

fn count_stage_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".strata"))
            .count()
    })
}

/// Starts `prep SRC --out OUT` and kills it with SIGKILL once `files` stage
/// files exist; whether the kill landed before prep finished.
fn kill_at(src: &Path, out: &Path, files: usize) -> bool {
    let mut child = Command::new(bin("prep"))
        .arg(src)
        .arg("--out")
        .arg(out)
        .arg("--quiet")
        .spawn()
        .expect("spawn prep");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return false;
        }
        if count_stage_files(out) >= files {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "prep never wrote {files} files"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().expect("kill");
    assert!(!child.wait().expect("wait").success());
    true
}

#[test]
fn qwen05_gguf_keeps_every_encoding_and_resumes_byte_identical_after_kill_9() {
    let m = Model::qwen05();
    let gguf = m.dir.join(m.gguf);
    let whole = m.container(&[]);
    let kept = container_types(&whole);
    assert_eq!(kept, gguf_types(&gguf), "every matrix keeps its GGUF type");
    assert!(kept.len() >= 3, "a mixed file: {kept:?}");
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out");
    assert!(
        kill_at(&gguf, &out, 5),
        "prep finished before the kill after 5 files"
    );
    assert!(!out.join("manifest.json").exists());
    assert!(
        kill_at(&gguf, &out, 15),
        "prep finished before the kill after 15 files"
    );
    run_ok(
        Command::new(bin("prep"))
            .arg(&gguf)
            .arg("--out")
            .arg(&out)
            .arg("--quiet"),
    );
    assert_eq!(
        hash_dir(&out),
        hash_dir(&whole),
        "resumed container is byte-identical"
    );
}

/// `--quant` re-encodes a GGUF from its dequantized values, as from a folder.
#[test]
fn smollm2_gguf_requantized_to_bf16_matches_transformers_logits() {
    let m = Model::smollm2();
    let dir = m.container(&["--quant", "bf16"]);
    let golden = m.fixture("gguf-golden.json");
    for p in golden["prompts"].as_array().expect("prompts") {
        let (ids, last) = last_logits(&dir, p["text"].as_str().expect("text"));
        assert_eq!(ids, p["input_ids"]);
        let top = &p["last_logits_top64"];
        let worst = top["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .zip(top["values"].as_array().expect("values"))
            .map(|(id, v)| (last[id.as_u64().expect("id") as usize] - v.as_f64().expect("v")).abs())
            .fold(0f64, f64::max);
        eprintln!(
            "{}: bf16 from GGUF, max abs logit difference (top 64) {worst}",
            p["name"]
        );
        assert!(worst < 0.25, "{}: {worst}", p["name"]);
    }
}

#[test]
fn smollm2_gguf_native_matches_transformers_and_llama_cpp() {
    check_native(&Model::smollm2());
}

#[test]
fn gemma3_gguf_native_matches_transformers_and_llama_cpp() {
    check_native(&Model::gemma3());
}

#[test]
fn qwen05_gguf_native_matches_transformers_and_llama_cpp() {
    check_native(&Model::qwen05());
}

/// The slower tier: Qwen2.5-Coder-1.5B-Instruct (Q4_K_M, 1.1 GB), passage
/// perplexity only. Run with `STRATA_QWEN15=$(scripts/fetch-model.sh 1.5b |
/// tail -n 1) cargo test -p strata-e2e --test gguf -- --ignored`, or
/// `scripts/test-slow.sh`.
#[test]
#[ignore = "slow tier: needs the 1.5B model (STRATA_QWEN15)"]
fn qwen15_gguf_native_perplexity_matches_transformers_and_llama_cpp() {
    let dir = PathBuf::from(std::env::var_os("STRATA_QWEN15").expect("STRATA_QWEN15"));
    let m = Model {
        dir,
        gguf: "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
        fixtures: "qwen2.5-1.5b",
    };
    let (nll, tokens) = passage_nll(&m.container(&[]), &[]);
    let golden = m.fixture("gguf-golden.json");
    assert_eq!(Some(tokens), golden["passage"]["num_tokens"].as_u64());
    // llama.cpp itself is 1.83% above transformers here (7.6167 vs 7.4797:
    // its 8-bit activations and f16 KV cache), so only transformers gets 1%.
    for (who, bound) in [("gguf-golden.json", 0.01), ("llamacpp.json", 0.025)] {
        let want = m.fixture(who)["passage"]["perplexity"]
            .as_f64()
            .expect("perplexity");
        let ppl = nll.exp();
        eprintln!("1.5B: perplexity {ppl:.4} vs {who} {want:.4}");
        assert!((ppl / want - 1.0).abs() < bound, "{ppl} vs {who} {want}");
    }
}
