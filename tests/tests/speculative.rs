//! Speculative decoding (`--draft`): greedy output identical to plain greedy
//! decoding on the real SmolLM2-135M (bf16 target, nf4 draft: the draft is
//! often wrong, so both models' KV caches are rolled back many times),
//! resident and streamed, with prompt lookup, in chat; the target's
//! distribution kept under sampling (tiny model, many seeded runs); a draft
//! of another vocabulary and a budget too small for the draft refused; the
//! draft's own cache rolled back (its proposals equal a fresh draft's).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use strata_e2e::*;
use strata_runner::engine::{Engine, EngineOptions};
use strata_runner::io::IoChoice;
use strata_runner::model::Want;
use strata_runner::sampling::{Sampler, SamplerConfig};
use strata_runner::speculative::{Proposer, Speculator};

fn smol(quant: &str) -> PathBuf {
    prepared(
        &smollm2_dir(),
        &format!("smollm2-{quant}-b64"),
        &["--quant", quant, "--block-size", "64"],
    )
}

const PROMPTS: [&str; 2] = [
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "The three primary colors are",
];

/// `runner generate` greedy: (stdout text, stderr).
fn greedy(dir: &Path, prompt: &str, extra: &[&str]) -> (String, String) {
    let out = run_ok(
        Command::new(bin("runner"))
            .arg("generate")
            .arg(dir)
            .args([
                "--prompt",
                prompt,
                "--temperature",
                "0",
                "--max-new-tokens",
                "40",
                "--ignore-eos",
            ])
            .args(extra),
    );
    (stdout(&out), stderr(&out))
}

/// (accepted, drafted) from the end-of-generation line.
fn acceptance(stderr: &str) -> (u64, u64) {
    let line = stderr
        .lines()
        .find(|l| l.contains("speculative: acceptance"))
        .unwrap_or_else(|| panic!("no speculative statistics in: {stderr}"));
    let inner = line
        .split('(')
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap_or_else(|| panic!("{line}"));
    let (a, d) = inner.split_once('/').unwrap_or_else(|| panic!("{line}"));
    (a.parse().expect("accepted"), d.parse().expect("drafted"))
}

#[test]
fn greedy_with_a_draft_is_plain_greedy_resident_and_streamed() {
    let (target, draft) = (smol("bf16"), smol("nf4"));
    let draft_arg = draft.to_str().expect("utf-8 path");
    for prompt in PROMPTS {
        for memory in [None, Some("0")] {
            let mut extra = vec![];
            if let Some(m) = memory {
                extra.extend(["--max-memory", m]);
            }
            let (plain, _) = greedy(&target, prompt, &extra);
            let mut with = extra.clone();
            with.extend(["--draft", draft_arg, "--draft-min", "3", "--draft-max", "6"]);
            let (spec, err) = greedy(&target, prompt, &with);
            assert_eq!(spec, plain, "--draft changed the text ({memory:?}): {err}");
            let (accepted, drafted) = acceptance(&err);
            // The nf4 draft agrees often but not always: both caches were
            // rolled back past rejected tokens, and the text is still exact.
            assert!(accepted > 0 && accepted < drafted, "{err}");
        }
        let (plain, _) = greedy(&target, prompt, &[]);
        let (spec, err) = greedy(&target, prompt, &["--draft", "ngram"]);
        assert_eq!(spec, plain, "--draft ngram changed the text: {err}");
        acceptance(&err);
    }
}

#[test]
fn bench_reports_speculative_statistics() {
    let (target, draft) = (smol("bf16"), smol("nf4"));
    let out = run_ok(
        Command::new(bin("runner"))
            .arg("bench")
            .arg(&target)
            .args(["--prompt", PROMPTS[0], "--new-tokens", "24", "--draft"])
            .arg(&draft)
            .arg("-q"),
    );
    let v: Value = serde_json::from_str(stdout(&out).trim()).expect("bench JSON");
    let s = &v["speculative"];
    assert!(v["new_tokens"].as_u64().is_some_and(|n| n >= 24), "{v}");
    assert!(s["passes"].as_u64().is_some_and(|p| p > 0), "{v}");
    for key in [
        "acceptance",
        "tokens_per_pass",
        "draft_seconds_per_token",
        "target_seconds_per_pass",
    ] {
        assert!(s[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {v}");
    }
    assert!(
        v["draft_resident_bytes"].as_u64().is_some_and(|b| b > 0),
        "{v}"
    );
}

#[test]
fn chat_with_a_draft_is_chat_without() {
    let (target, draft) = (smol("bf16"), smol("nf4"));
    let chat = |extra: &[&str]| {
        let out = run_with_input(
            Command::new(bin("runner"))
                .arg("chat")
                .arg(&target)
                .args(["--temperature", "0", "--max-new-tokens", "20", "-q"])
                .args(extra),
            b"What is the capital of France?\nAnd of Italy?\n/exit\n",
        );
        stdout(&out)
    };
    let draft_arg = draft.to_str().expect("utf-8 path");
    assert_eq!(chat(&["--draft", draft_arg]), chat(&[]));
}

#[test]
fn a_draft_of_another_vocabulary_is_refused() {
    let target = smol("bf16");
    let tiny = prepared(
        &tiny_fixture("llama"),
        "spec-tiny-llama",
        &["--quant", "bf16"],
    );
    let out = run(Command::new(bin("runner"))
        .arg("generate")
        .arg(&target)
        .args(["--prompt", "Hi", "--draft"])
        .arg(&tiny));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("does not share the vocabulary")
            && err.contains("the draft has no tokenizer.json"),
        "{err}"
    );
}

#[test]
fn a_budget_too_small_for_the_draft_is_refused_with_numbers() {
    let (target, draft) = (smol("bf16"), smol("nf4"));
    let plan = |extra: &[&str]| -> Value {
        let out = run_ok(
            Command::new(bin("runner"))
                .arg("plan")
                .arg(&target)
                .args(["--ctx", "256", "--json"])
                .args(extra),
        );
        serde_json::from_str(stdout(&out).trim()).expect("plan JSON")
    };
    let alone = plan(&[]);
    let with = plan(&["--draft", draft.to_str().expect("utf-8 path")]);
    let stream_min = alone["smallest_budget_bytes"].as_u64().expect("minimum");
    let draft_need = with["draft"]["resident_bytes"]
        .as_u64()
        .expect("draft bytes");
    assert!(draft_need > 0, "{with}");
    // Enough for the target alone, not for the draft beside it.
    let budget = (stream_min + draft_need / 2).to_string();
    let generate = |extra: &[&str]| {
        run(Command::new(bin("runner"))
            .arg("generate")
            .arg(&target)
            .args([
                "--prompt",
                "Hi",
                "--max-new-tokens",
                "2",
                "--ctx",
                "256",
                "--max-memory",
                &budget,
                "-q",
            ])
            .args(extra))
    };
    assert!(generate(&[]).status.success());
    let out = generate(&["--draft", draft.to_str().expect("utf-8 path")]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("memory budget of")
            && err.contains("resident (weights")
            && err.contains("to stream"),
        "{err}"
    );
}

fn options(max_memory: Option<u64>) -> EngineOptions {
    EngineOptions {
        max_memory,
        io: IoChoice::Pread,
        prefetch: 1,
        verify: true,
        ctx: Some(64),
        keep_compressed: None,
        sequences: 1,
    }
}

/// Tokens after `prompt` with the speculator, as `runner generate` does.
fn speculative_tokens(
    target: &mut Engine,
    spec: &mut Speculator,
    sampler: &mut Sampler,
    prompt: &[u32],
    n: usize,
) -> Vec<u32> {
    target.model.truncate(0);
    let logits = target.forward(prompt, Want::Last).expect("prefill");
    let mut history = prompt.to_vec();
    let mut out = vec![sampler.sample(logits.row(0), &history)];
    while out.len() < n {
        let next = *out.last().expect("a token");
        let limit = n - out.len() - 1;
        let tokens = spec
            .step(target, &mut history, next, sampler, limit)
            .expect("step");
        assert_eq!(
            target.model.position(),
            history.len(),
            "target cache rolled back"
        );
        out.extend(tokens);
    }
    out.truncate(n);
    out
}

/// Plain decoding: one forward per token.
fn plain_tokens(target: &mut Engine, sampler: &mut Sampler, prompt: &[u32], n: usize) -> Vec<u32> {
    target.model.truncate(0);
    let mut history = prompt.to_vec();
    let mut logits = target.forward(prompt, Want::Last).expect("prefill");
    let mut out = Vec::new();
    loop {
        let id = sampler.sample(logits.row(0), &history);
        out.push(id);
        if out.len() == n {
            return out;
        }
        history.push(id);
        logits = target.forward(&[id], Want::Last).expect("forward");
    }
}

/// The tiny llama fixture as a bf16 target and an nf4 draft.
fn tiny_pair() -> (PathBuf, PathBuf) {
    let target = prepared(
        &tiny_fixture("llama"),
        "spec-tiny-bf16",
        &["--quant", "bf16"],
    );
    let draft = prepared(&tiny_fixture("llama"), "spec-tiny-nf4", &["--quant", "nf4"]);
    (target, draft)
}

/// A greedy sampler.
fn greedy_sampler() -> Sampler {
    Sampler::new(SamplerConfig {
        temperature: 0.0,
        ..SamplerConfig::default()
    })
}

#[test]
fn tiny_greedy_speculation_is_exact_resident_and_streamed() {
    let (target, draft) = tiny_pair();
    let prompt = [1u32, 17, 42, 99, 5];
    for memory in [None, Some(0)] {
        let (mut t, d) = Engine::open_with_draft(&target, &draft, &options(memory)).expect("open");
        let want = plain_tokens(&mut t, &mut greedy_sampler(), &prompt, 40);
        let mut spec = Speculator::new(Proposer::Model(Box::new(d)), 5, 5);
        let got = speculative_tokens(&mut t, &mut spec, &mut greedy_sampler(), &prompt, 40);
        assert_eq!(got, want, "max_memory {memory:?}");
        let s = spec.stats();
        assert!(s.accepted > 0 && s.accepted < s.drafted, "{s:?}");
    }
}

/// The draft's KV cache is rolled back past rejected tokens too: every
/// pass's drafted tokens are what the draft, run afresh on the same tokens,
/// proposes greedily (a draft still holding rejected tokens would propose
/// from the wrong context; the text would stay exact, only slower).
#[test]
fn the_drafts_cache_is_rolled_back_past_rejected_tokens() {
    let (target, draft) = tiny_pair();
    let (mut t, d) = Engine::open_with_draft(&target, &draft, &options(None)).expect("open");
    let mut fresh = Engine::open(&draft, &options(None)).expect("open the draft again");
    let mut spec = Speculator::new(Proposer::Model(Box::new(d)), 5, 5);
    let mut sampler = greedy_sampler();
    let prompt = [1u32, 17, 42, 99, 5];
    let logits = t.forward(&prompt, Want::Last).expect("prefill");
    let mut history = prompt.to_vec();
    let mut next = sampler.sample(logits.row(0), &history);
    let mut rejections = 0;
    while history.len() < 48 {
        let mut seq = history.clone();
        seq.push(next);
        let out = spec
            .step(&mut t, &mut history, next, &mut sampler, 5)
            .expect("step");
        let drafted = spec.last_drafted().to_vec();
        fresh.model.truncate(0);
        let mut logits = fresh.forward(&seq, Want::Last).expect("draft afresh");
        let mut want = Vec::new();
        while want.len() < drafted.len() {
            let id = greedy_sampler().sample(logits.row(0), &seq);
            want.push(id);
            seq.push(id);
            logits = fresh.forward(&[id], Want::Last).expect("draft afresh");
        }
        assert_eq!(drafted, want, "pass at position {}", history.len());
        if out.len() <= drafted.len() {
            rejections += 1;
        }
        next = *out.last().expect("a pass yields a token");
    }
    assert!(
        rejections > 0,
        "no drafted token was rejected: nothing rolled back"
    );
}

/// Sampling with a draft keeps the target's distribution: over many seeded
/// runs on a tiny model (random weights, top-k 4 so that each position has
/// four candidates), the second and third tokens' frequencies, given the
/// tokens before them, match the target's own probabilities (chi-square).
#[test]
fn sampling_with_a_draft_keeps_the_target_distribution() {
    let target = prepared(
        &tiny_fixture("llama"),
        "spec-tiny-bf16",
        &["--quant", "bf16"],
    );
    let draft = prepared(&tiny_fixture("llama"), "spec-tiny-nf4", &["--quant", "nf4"]);
    let (mut t, d) = Engine::open_with_draft(&target, &draft, &options(None)).expect("open");
    let cfg = |seed| SamplerConfig {
        temperature: 1.5,
        top_k: 4,
        top_p: 1.0,
        min_p: 0.0,
        repeat_penalty: 1.0,
        repeat_last_n: 64,
        seed,
    };
    let prompt = [3u32, 14, 15, 92];
    let mut spec = Speculator::new(Proposer::Model(Box::new(d)), 2, 2);
    let runs = 10_000;
    // Counts of (prefix after the prompt, next token).
    let mut counts: HashMap<(Vec<u32>, u32), u64> = HashMap::new();
    let mut prefixes: HashMap<Vec<u32>, u64> = HashMap::new();
    for seed in 0..runs {
        let mut sampler = Sampler::new(cfg(seed));
        let toks = speculative_tokens(&mut t, &mut spec, &mut sampler, &prompt, 3);
        for j in 1..3 {
            let prefix = toks[..j].to_vec();
            *counts.entry((prefix.clone(), toks[j])).or_default() += 1;
            *prefixes.entry(prefix).or_default() += 1;
        }
    }
    let s = spec.stats();
    assert!(s.accepted > 0 && s.accepted < s.drafted, "{s:?}");
    // The target's probabilities after each prefix seen.
    let mut probe = Sampler::new(cfg(0));
    let (mut chi2, mut cells) = (0.0f64, 0usize);
    for (prefix, &n) in &prefixes {
        let mut ids = prompt.to_vec();
        ids.extend(prefix);
        t.model.truncate(0);
        let logits = t.forward(&ids, Want::Last).expect("forward");
        let p = probe.distribution(logits.row(0), &ids);
        let mut seen = 0;
        for &(id, prob) in &p.probs {
            let expected = prob as f64 * n as f64;
            let observed = counts.get(&(prefix.clone(), id)).copied().unwrap_or(0);
            seen += observed;
            if expected >= 5.0 {
                chi2 += (observed as f64 - expected).powi(2) / expected;
                cells += 1;
            }
        }
        assert_eq!(
            seen, n,
            "a token outside the target's top-k after {prefix:?}"
        );
    }
    eprintln!("chi-square {chi2:.1} over {cells} cells");
    // Degrees of freedom are below `cells`; allow the mean plus 5 standard deviations.
    let bound = cells as f64 + 5.0 * (2.0 * cells as f64).sqrt();
    assert!(cells >= 8, "{cells} cells");
    assert!(
        chi2 < bound,
        "chi-square {chi2:.1} over {cells} cells (bound {bound:.1})"
    );
}
