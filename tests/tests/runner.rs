//! End-to-end tests of `runner` on containers `prep` made from the real
//! SmolLM2-135M-Instruct and from tiny transformers fixtures, compared with
//! Hugging Face transformers' own outputs.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use strata_e2e::*;

fn golden() -> Value {
    let path = repo_root().join("tests/fixtures/smollm2/golden.json");
    serde_json::from_slice(&std::fs::read(path).expect("golden.json")).expect("golden.json parses")
}

fn smol(quant: &str, block: &str) -> PathBuf {
    prepared(
        &smollm2_dir(),
        &format!("smollm2-{quant}-b{block}"),
        &["--quant", quant, "--block-size", block],
    )
}

fn runner(args: &[&str], dir: &Path) -> Command {
    let mut c = Command::new(bin("runner"));
    c.arg(args[0]).arg(dir).args(&args[1..]);
    if !matches!(args[0], "verify" | "inspect" | "plan") {
        c.arg("-q");
    }
    c
}

fn ids_arg(v: &Value) -> String {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id").to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn logits_rows(out: &std::process::Output) -> Vec<Vec<f64>> {
    let v: Value = serde_json::from_str(&stdout(out)).expect("logits JSON");
    v["logits"]
        .as_array()
        .expect("logits rows")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_f64().expect("number"))
                .collect()
        })
        .collect()
}

fn max_abs_diff(a: &[f64], b: &Value) -> f64 {
    let b = b.as_array().expect("golden row");
    assert_eq!(a.len(), b.len(), "row lengths");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y.as_f64().expect("number")).abs())
        .fold(0.0, f64::max)
}

fn mean_nll(dir: &Path, extra: &[&str]) -> f64 {
    let (nll, tokens) = passage_nll(dir, extra);
    assert_eq!(
        tokens, 305,
        "the passage tokenizes to the golden's 305 tokens"
    );
    nll
}

#[test]
fn bf16_logits_match_transformers() {
    let dir = smol("bf16", "64");
    for p in golden()["prompts"].as_array().expect("prompts") {
        let out = run_ok(&mut runner(
            &["logits", "--ids", &ids_arg(&p["input_ids"])],
            &dir,
        ));
        let rows = logits_rows(&out);
        assert_eq!(rows.len(), 1);
        let d = max_abs_diff(&rows[0], &p["last_logits"]);
        // transformers' values are rounded to 4 decimals; f32 compute lands within ~1e-4.
        assert!(d < 2e-3, "{}: max abs logit difference {d}", p["name"]);
        // --prompt tokenizes like transformers
        let out = run_ok(&mut runner(
            &["logits", "--prompt", p["text"].as_str().expect("text")],
            &dir,
        ));
        let v: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
        assert_eq!(v["ids"], p["input_ids"], "{}: tokenization", p["name"]);
    }
}

fn greedy_text(dir: &Path, prompt: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "generate",
        "--prompt",
        prompt,
        "--temperature",
        "0",
        "--max-new-tokens",
        "24",
        "--ignore-eos",
    ];
    args.extend_from_slice(extra);
    let out = run_ok(&mut runner(&args, dir));
    let text = stdout(&out);
    text.strip_suffix('\n').unwrap_or(&text).to_string()
}

#[test]
fn bf16_greedy_and_perplexity_match_transformers_resident() {
    let dir = smol("bf16", "64");
    let g = golden();
    for p in g["prompts"].as_array().expect("prompts") {
        let want = p["greedy"]["text"].as_str().expect("greedy text");
        assert_eq!(
            greedy_text(&dir, p["text"].as_str().expect("text"), &[]),
            want,
            "{}",
            p["name"]
        );
    }
    let nll = mean_nll(&dir, &[]);
    let want = g["passage"]["mean_nll"].as_f64().expect("mean_nll");
    assert!(
        (nll - want).abs() < 1e-3,
        "mean NLL {nll} vs transformers {want}"
    );
}

#[test]
fn bf16_streamed_with_every_io_backend_matches() {
    let dir = smol("bf16", "64");
    let g = golden();
    let want = g["passage"]["mean_nll"].as_f64().expect("mean_nll");
    let p = &g["prompts"][0];
    for io in ["auto", "uring", "pread", "mmap"] {
        let extra = ["--max-memory", "0", "--io", io];
        let nll = mean_nll(&dir, &extra);
        assert!(
            (nll - want).abs() < 1e-3,
            "--io {io} --max-memory 0: mean NLL {nll} vs {want}"
        );
        let text = greedy_text(&dir, p["text"].as_str().expect("text"), &extra);
        assert_eq!(
            text,
            p["greedy"]["text"].as_str().expect("greedy text"),
            "--io {io}"
        );
    }
    // A budget that keeps some layers resident and streams the rest.
    let nll = mean_nll(
        &dir,
        &["--max-memory", "420MiB", "--ctx", "512", "--prefetch", "1"],
    );
    assert!(
        (nll - want).abs() < 1e-3,
        "partly resident: mean NLL {nll} vs {want}"
    );
}

#[test]
fn quantized_perplexity_within_bounds() {
    let want = golden()["passage"]["mean_nll"].as_f64().expect("mean_nll");
    let ppl = want.exp();
    for (quant, block, bound) in [
        ("int8", "64", 0.01),
        ("nf4", "64", 0.30),
        ("nf4", "32", 0.30),
    ] {
        let dir = smol(quant, block);
        let got = mean_nll(&dir, &[]).exp();
        eprintln!(
            "{quant} block {block}: perplexity {got:.4} vs {ppl:.4} ({:+.2}%)",
            (got / ppl - 1.0) * 100.0
        );
        assert!(
            got / ppl - 1.0 < bound,
            "{quant} block {block}: perplexity {got} vs {ppl}"
        );
    }
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|x| u32::try_from(x.as_u64().expect("id")).expect("u32 id"))
        .collect()
}

fn argmax(row: &[f32]) -> u32 {
    (0..row.len()).fold(0, |b, j| if row[j] > row[b] { j } else { b }) as u32
}

/// Greedy decoding in process through the runner's KV cache, streaming every
/// layer (`--max-memory 0`): the prompt in one pass, then one token per pass.
/// Returns the chosen ids.
fn cached_greedy(dir: &Path, prompt: &[u32], steps: usize) -> Vec<u32> {
    cached_greedy_within(dir, prompt, steps, 0)
}

/// [`cached_greedy`] under a `max_memory` budget.
fn cached_greedy_within(dir: &Path, prompt: &[u32], steps: usize, max_memory: u64) -> Vec<u32> {
    use strata_runner::engine::{Engine, EngineOptions};
    use strata_runner::io::IoChoice;
    use strata_runner::model::Want;
    let opts = EngineOptions {
        max_memory: Some(max_memory),
        io: IoChoice::Auto,
        prefetch: 2,
        verify: true,
        ctx: None,
        keep_compressed: None,
        sequences: 1,
    };
    let mut engine = Engine::open(dir, &opts).expect("open the container");
    let mut logits = engine.forward(prompt, Want::Last).expect("prompt pass");
    let mut ids = Vec::new();
    for _ in 0..steps {
        let next = argmax(logits.row(0));
        ids.push(next);
        logits = engine.forward(&[next], Want::Last).expect("decode pass");
    }
    ids
}

/// The smallest budget (in steps of 1/64 of the streaming-to-resident range)
/// whose plan streams every layer and keeps recently used experts in a cache
/// too small for all of them.
fn budget_keeping_some_experts(dir: &Path) -> u64 {
    let plan = |args: &[&str]| -> Value {
        let out = run_ok(&mut runner(&[&["plan", "--json"], args].concat(), dir));
        serde_json::from_str(stdout(&out).trim()).expect("plan JSON")
    };
    let p = plan(&[]);
    let (lo, hi) = (
        p["streaming_minimum_bytes"].as_u64().expect("minimum"),
        p["all_resident_bytes"].as_u64().expect("resident"),
    );
    (0..64)
        .map(|k| lo + (hi - lo) * k / 64)
        .find(|&b| {
            let p = plan(&["--max-memory", &b.to_string()])["plan"].clone();
            p["resident_layers"] == 0 && p["expert_cache_bytes"].as_u64().unwrap_or(0) > 0
        })
        .unwrap_or_else(|| panic!("no budget in {lo}..{hi} keeps some experts only"))
}

/// Runs `logits --all-positions` over `ids` and checks every row against
/// `want` within `tol`; returns the largest difference.
fn all_positions_within(
    dir: &Path,
    ids: &Value,
    want: &Value,
    tol: f64,
    what: &str,
    extra: &[&str],
) -> f64 {
    let ids = ids_arg(ids);
    let mut args = vec!["logits", "--ids", &ids, "--all-positions"];
    args.extend_from_slice(extra);
    let out = run_ok(&mut runner(&args, dir));
    let rows = logits_rows(&out);
    assert_eq!(rows.len(), want.as_array().expect("rows").len());
    let mut worst = 0f64;
    for (i, row) in rows.iter().enumerate() {
        let d = max_abs_diff(row, &want[i]);
        assert!(d < tol, "{what} position {i}: max abs difference {d}");
        worst = worst.max(d);
    }
    worst
}

#[test]
fn tiny_architectures_match_transformers() {
    for variant in [
        "llama",
        "llama-tied",
        "llama3-rope",
        "llama-linear-rope",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma2",
        "gemma3",
        // Gemma 3's text model inside a multimodal checkpoint (Hub names, a
        // vision tower prep leaves out): the gemma3 goldens.
        "gemma3-mm",
        "phi3",
        "phi3-longrope",
        // Remote-code families: goldens from LlamaForCausalLM on the same
        // values (weight-level equivalence, scripts/make-remote-code-fixtures.py).
        "internlm2",
        "baichuan2",
        // Baichuan 2 13B: ALiBi, against Llama with Baichuan's attention transcribed.
        "baichuan2-13b",
        // Qwen2ForCausalLM's goldens on Qwen (v1)'s layout; GlmForCausalLM's
        // on ChatGLM's (its interleaved half rotary is ChatGLM's).
        "qwen",
        "chatglm",
        "mixtral",
        "qwen2-moe",
        "qwen3-moe",
    ] {
        let src = tiny_fixture(variant);
        let g: Value =
            serde_json::from_slice(&std::fs::read(src.join("golden.json")).expect("golden"))
                .expect("json");
        for (quant, tol) in [("f32", 1e-3), ("bf16", 2e-2)] {
            let dir = prepared(
                &src,
                &format!("tiny-{variant}-{quant}"),
                &["--quant", quant],
            );
            let what = format!("{variant} {quant}");
            let d = all_positions_within(&dir, &g["ids"], &g["logits"], tol, &what, &[]);
            eprintln!("{what}: all-position logits within {d:.2e} of transformers");
            if g.get("routing").is_some() {
                // Streamed: each MoE layer reads its routed experts only.
                let d = all_positions_within(
                    &dir,
                    &g["ids"],
                    &g["logits"],
                    tol,
                    &format!("{what} --max-memory 0"),
                    &["--max-memory", "0"],
                );
                eprintln!("{what} --max-memory 0: all-position logits within {d:.2e}");
            }
            // LongRoPE: a sequence no longer than the original context uses the short factors.
            if let Some(lr) = g.get("longrope") {
                let d = all_positions_within(
                    &dir,
                    &lr["short_ids"],
                    &lr["short_logits"],
                    tol,
                    &format!("{what} short factors"),
                    &[],
                );
                eprintln!("{what}: short-factor logits within {d:.2e} of transformers");
            }
            // A whole-sequence pass per step gives transformers' greedy ids.
            let mut ids: Vec<u64> = g["greedy"]["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|x| x.as_u64().expect("id"))
                .collect();
            for next in g["greedy"]["new_ids"]
                .as_array()
                .expect("new ids")
                .iter()
                .take(4)
            {
                let arg = ids
                    .iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                let out = run_ok(&mut runner(&["logits", "--ids", &arg], &dir));
                let row = &logits_rows(&out)[0];
                let best = (0..row.len()).fold(0, |b, j| if row[j] > row[b] { j } else { b });
                assert_eq!(
                    best as u64,
                    next.as_u64().expect("id"),
                    "{variant} {quant}: greedy after {ids:?}"
                );
                ids.push(best as u64);
            }
            // Decoding token by token through the KV cache gives transformers'
            // cached greedy ids (generate() with its cache), all 8 of them.
            let want = ids_of(&g["greedy"]["new_ids"]);
            let got = cached_greedy(&dir, &ids_of(&g["greedy"]["ids"]), want.len());
            assert_eq!(got, want, "{what}: KV-cached greedy");
            if g.get("routing").is_some() {
                // Streamed layers with some experts kept between tokens (the
                // least recently used evicted): the same ids.
                let budget = budget_keeping_some_experts(&dir);
                let got =
                    cached_greedy_within(&dir, &ids_of(&g["greedy"]["ids"]), want.len(), budget);
                assert_eq!(
                    got, want,
                    "{what}: KV-cached greedy, expert cache, budget {budget}"
                );
            }
            // Qwen's dynamic NTK and log-n scaling act past seq_length (256):
            // a longer context is refused, not silently computed without them.
            if variant == "qwen" {
                let over = run(&mut runner(
                    &["logits", "--ids", "1,2", "--ctx", "257"],
                    &dir,
                ));
                let err = String::from_utf8_lossy(&over.stderr);
                assert!(
                    !over.status.success() && err.contains("past 256 positions"),
                    "{err}"
                );
                run_ok(&mut runner(
                    &["logits", "--ids", "1,2", "--ctx", "256"],
                    &dir,
                ));
            }
        }
    }
}

#[test]
fn damaged_containers_are_named() {
    let src = smol("nf4", "64");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("c");
    copy_dir(&src, &dir);
    let out = run_ok(&mut runner(&["verify"], &dir));
    assert!(stdout(&out).starts_with("ok:"));

    let layer = dir.join("layer.017.strata");
    let mut bytes = std::fs::read(&layer).expect("layer");
    let at = bytes.len() - 3000;
    bytes[at] ^= 0x01;
    std::fs::write(&layer, &bytes).expect("write");
    let out = run(&mut runner(&["verify"], &dir));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("layer.017.strata") && stderr(&out).contains("sha256"),
        "{}",
        stderr(&out)
    );
    for extra in [&["--max-memory", "0"][..], &[][..]] {
        let mut args = vec!["generate", "--prompt", "Hello", "--max-new-tokens", "2"];
        args.extend_from_slice(extra);
        let out = run(&mut runner(&args, &dir));
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("layer.017.strata") && stderr(&out).contains("sha256"),
            "{}",
            stderr(&out)
        );
        assert!(!stderr(&out).contains("panicked"));
    }
    // --no-verify skips the check (and still runs)
    run_ok(&mut runner(
        &[
            "generate",
            "--prompt",
            "Hello",
            "--max-new-tokens",
            "2",
            "--no-verify",
        ],
        &dir,
    ));

    std::fs::remove_file(&layer).expect("remove");
    let out = run(&mut runner(&["generate", "--prompt", "Hello"], &dir));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("layer.017.strata") && stderr(&out).contains("missing"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("panicked"));
    let out = run(&mut runner(&["verify", "--json"], &dir));
    let v: Value = serde_json::from_str(&stdout(&out)).expect("verify JSON");
    assert_eq!(v["problems"][0]["file"], "layer.017.strata");
    assert_eq!(v["problems"][0]["problem"]["kind"], "missing");
}

#[test]
fn budget_too_small_is_refused_and_bench_reports() {
    let dir = smol("nf4", "64");
    let out = run(&mut runner(
        &["generate", "--prompt", "Hi", "--max-memory", "50MiB"],
        &dir,
    ));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("memory budget of 50.00 MiB is too small"),
        "{}",
        stderr(&out)
    );

    let out = run_ok(&mut runner(
        &[
            "bench",
            "--prompt-tokens",
            "16",
            "--new-tokens",
            "4",
            "--max-memory",
            "0",
        ],
        &dir,
    ));
    let v: Value = serde_json::from_str(stdout(&out).trim()).expect("bench JSON");
    for key in [
        "prefill_tokens_per_s",
        "decode_tokens_per_s",
        "bytes_read_per_token",
        "io_wait_fraction",
        "peak_rss_bytes",
    ] {
        assert!(v[key].as_f64().is_some_and(|x| x >= 0.0), "{key} in {v}");
    }
    // Streaming everything reads every layer and the head once per token.
    let total: u64 = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("layer."))
        .map(|e| e.metadata().expect("meta").len())
        .sum();
    let per_token = v["bytes_read_per_token"].as_f64().expect("bytes");
    assert!(
        per_token >= total as f64,
        "bytes read per token {per_token} < layer bytes {total}"
    );
    assert!(v["io_backend"].as_str().is_some_and(|s| !s.is_empty()));
}

#[test]
fn chat_keeps_the_conversation() {
    let dir = smol("bf16", "64");
    let out = run_with_input(
        Command::new(bin("runner")).args(["chat"]).arg(&dir).args([
            "--temperature",
            "0",
            "--max-new-tokens",
            "16",
            "-q",
        ]),
        b"What is the capital of France?\nAnd of Italy?\n/exit\n",
    );
    let text = stdout(&out);
    let mut turns = text.lines().filter(|l| !l.trim().is_empty());
    assert!(turns.next().is_some_and(|t| t.contains("Paris")), "{text}");
    assert!(turns.next().is_some_and(|t| t.contains("Rome")), "{text}");
}

#[test]
fn inspect_describes_the_container() {
    let dir = smol("nf4", "64");
    let out = run_ok(&mut runner(&["inspect"], &dir));
    let s = stdout(&out);
    assert!(
        s.contains("llama (LlamaForCausalLM)")
            && s.contains("weights nf4")
            && s.contains("30 layers"),
        "{s}"
    );
}

#[test]
fn batched_prompts_match_single_runs() {
    let dir = smol("bf16", "64");
    let g = golden();
    let prompts: Vec<&Value> = g["prompts"]
        .as_array()
        .expect("prompts")
        .iter()
        .filter(|p| !p["text"].as_str().expect("text").contains('\n'))
        .collect();
    assert!(
        prompts.len() >= 2,
        "need at least two one-line golden prompts"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("prompts.txt");
    let lines: Vec<&str> = prompts
        .iter()
        .map(|p| p["text"].as_str().expect("text"))
        .collect();
    std::fs::write(&file, lines.join("\n")).expect("write prompts");
    let out = run_ok(&mut runner(
        &[
            "generate",
            "--prompts-file",
            file.to_str().expect("utf-8 path"),
            "--temperature",
            "0",
            "--max-new-tokens",
            "24",
            "--ignore-eos",
            "--max-memory",
            "0",
        ],
        &dir,
    ));
    let results: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(results.len(), prompts.len());
    for (r, p) in results.iter().zip(&prompts) {
        assert_eq!(r["text"], p["greedy"]["text"], "{}", p["name"]);
    }
}

/// A streamed MoE layer reads its routed experts only: with `--max-memory 0`
/// (no expert kept between tokens) a decoded token reads exactly `top_k` of
/// each layer's experts, a fraction `top_k / num_experts` of their bytes.
#[test]
fn streamed_moe_reads_only_routed_experts() {
    let dir = prepared(
        &tiny_fixture("mixtral"),
        "tiny-mixtral-bench-f32",
        &["--quant", "f32"],
    );
    let out = run_ok(&mut runner(
        &[
            "bench",
            "--prompt-tokens",
            "6",
            "--new-tokens",
            "4",
            "--max-memory",
            "0",
        ],
        &dir,
    ));
    let v: Value = serde_json::from_str(stdout(&out).trim()).expect("bench JSON");
    let layers: u64 = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("layer."))
        .map(|e| e.metadata().expect("meta").len())
        .sum();
    let experts = v["expert_bytes_in_layer_files"]
        .as_u64()
        .expect("expert bytes");
    let per_token = v["expert_bytes_read_per_token"]
        .as_f64()
        .expect("per token");
    let share = v["expert_bytes_read_share_per_token"]
        .as_f64()
        .expect("share");
    assert!(experts > 0 && experts < layers, "{v}");
    // 2 of 4 experts per layer and token.
    assert!((share - 0.5).abs() < 1e-9, "{v}");
    assert!((per_token - experts as f64 / 2.0).abs() < 1e-6, "{v}");
    let total = v["bytes_read_per_token"].as_f64().expect("bytes");
    assert!(
        total < layers as f64,
        "a streamed token read {total} bytes, the layer files hold {layers}"
    );
    // The prompt reads the union of its tokens' experts: more than one token's.
    let prefill = v["prefill_expert_bytes_read"].as_f64().expect("prefill");
    assert!(prefill >= per_token && prefill <= experts as f64, "{v}");
}
