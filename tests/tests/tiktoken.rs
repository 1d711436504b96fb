//! tiktoken rank file → tokenizer.json (prep/src/tiktoken.rs): the converted
//! tokenizer, loaded by the runner, gives the ids and the decoded text that
//! the tiktoken library gives the way Qwen (v1) and GLM-4 use it
//! (tests/fixtures/tiktoken, made by scripts/make-tiktoken-fixtures.py).

use std::path::PathBuf;

use serde_json::Value;
use strata_e2e::tokenizers::{case_failures, prep_with_tokenizer_files};
use strata_prep::tiktoken::{parse, tokenizer_json, Flavor};
use strata_runner::text::tokenizer::TextTokenizer;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiktoken")
}

#[test]
fn converted_rank_files_encode_and_decode_like_tiktoken() {
    let ranks =
        parse(&std::fs::read(fixture().join("ranks.tiktoken")).expect("ranks")).expect("parse");
    let golden: Value =
        serde_json::from_slice(&std::fs::read(fixture().join("golden.json")).expect("golden"))
            .expect("json");
    assert_eq!(ranks.len() as u64, golden["ranks"].as_u64().unwrap());
    let mut failures = Vec::new();
    for (name, family) in [("qwen", "qwen"), ("glm4", "chatglm")] {
        let g = &golden["families"][name];
        let flavor = Flavor::of(family).expect("flavor");
        assert_eq!(g["pattern"].as_str(), Some(flavor.pattern));
        assert_eq!(g["special_tokens"], serde_json::json!(flavor.special));
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::write(
            tmp.path().join("tokenizer.json"),
            tokenizer_json(&ranks, &flavor).to_string(),
        )
        .expect("write");
        let tok = TextTokenizer::load(tmp.path())
            .expect("load")
            .expect("present");
        let cases = g["cases"].as_array().expect("cases");
        assert!(cases.len() >= 15);
        failures.extend(case_failures(&tok, cases, false, name, "tiktoken"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `prep` writes tokenizer.json from Qwen's `qwen.tiktoken` and from GLM-4's
/// tiktoken `tokenizer.model` (the tiny Qwen and ChatGLM checkpoints with the
/// fixture's rank file), lists it in the manifest, and the runner tokenizes
/// with it as tiktoken does; a ChatGLM checkpoint with a SentencePiece
/// `tokenizer.model` (ChatGLM 3) gets `[gMASK] sop` after the pieces instead.
#[test]
fn prep_writes_tokenizer_json_from_rank_files() {
    let golden: Value =
        serde_json::from_slice(&std::fs::read(fixture().join("golden.json")).expect("golden"))
            .expect("json");
    let spm = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/spm/llama-like");
    for (variant, file, from, family, note) in [
        (
            "qwen",
            "qwen.tiktoken",
            fixture().join("ranks.tiktoken"),
            "qwen",
            "qwen.tiktoken (tiktoken, 3256 ranks)",
        ),
        (
            "chatglm",
            "tokenizer.model",
            fixture().join("ranks.tiktoken"),
            "glm4",
            "tokenizer.model (tiktoken, 3256 ranks)",
        ),
        (
            "chatglm",
            "tokenizer.model",
            spm.join("tokenizer.model"),
            "chatglm3",
            "tokenizer.model (SentencePiece BPE, 600 pieces)",
        ),
    ] {
        let (_tmp, out) = prep_with_tokenizer_files(variant, &[(&from, file)], note);
        let tok = TextTokenizer::load(&out).expect("load").expect("present");
        if family == "chatglm3" {
            // [gMASK] = 600 + 1, sop = 600 + 3, before the SentencePiece ids.
            let plain = tok.encode("Hello world", false).expect("encode");
            let with = tok.encode("Hello world", true).expect("encode");
            assert_eq!(with, [[601, 603].as_slice(), &plain].concat());
            assert_eq!(tok.token_to_id("<|observation|>"), Some(608));
            // Role strings in text stay text, as ChatGLM 3's tokenizer does by default.
            assert!(!tok
                .encode("<|user|>", false)
                .expect("encode")
                .contains(&606));
            continue;
        }
        for case in golden["families"][family]["cases"]
            .as_array()
            .expect("cases")
        {
            let text = case["text"].as_str().unwrap();
            let got = serde_json::json!(tok.encode(text, true).expect("encode"));
            assert_eq!(got, case["ids_with_special_tokens"], "{family} {text:?}");
        }
    }
}
