//! SentencePiece `tokenizer.model` → tokenizer.json (prep/src/spm.rs): the
//! converted tokenizer, loaded by the runner, gives the ids and the decoded
//! text that transformers gives with the remote-code families' SentencePiece
//! tokenizer methods (tests/fixtures/spm, made by scripts/make-spm-fixtures.py).

use std::path::PathBuf;

use serde_json::Value;
use strata_e2e::tokenizers::{case_failures, prep_with_tokenizer_files};
use strata_prep::spm::{tokenizer_json, Additions, SpmModel};
use strata_runner::text::tokenizer::TextTokenizer;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/spm")
        .join(name)
}

#[test]
fn converted_sentencepiece_models_encode_and_decode_like_sentencepiece() {
    for variant in ["llama-like", "nfkc", "identity-no-prefix"] {
        let dir = fixture(variant);
        let model = SpmModel::parse(&std::fs::read(dir.join("tokenizer.model")).expect("model"))
            .expect("parse");
        let golden: Value =
            serde_json::from_slice(&std::fs::read(dir.join("golden.json")).expect("golden"))
                .expect("json");
        assert_eq!(
            model.pieces.len() as u64,
            golden["vocab_size"].as_u64().unwrap()
        );
        let config_bytes = std::fs::read(dir.join("tokenizer_config.json")).expect("config");
        let config: Value = serde_json::from_slice(&config_bytes).expect("config json");
        let additions = Additions::of("internlm2", config.as_object()).expect("additions");
        let json = tokenizer_json(&model, &additions).expect("convert");
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::write(tmp.path().join("tokenizer.json"), json.to_string()).expect("write");
        std::fs::write(tmp.path().join("tokenizer_config.json"), &config_bytes).expect("write");
        let tok = TextTokenizer::load(tmp.path())
            .expect("load")
            .expect("tokenizer present");
        let cases = golden["cases"].as_array().expect("cases");
        assert!(cases.len() >= 20);
        let failures = case_failures(&tok, cases, true, variant, "transformers");
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}

/// `prep` on a checkpoint with a SentencePiece tokenizer.model and no
/// tokenizer.json (the tiny InternLM2 fixture with the llama-like model)
/// writes tokenizer.json into the container, lists it in the manifest, and the
/// runner tokenizes with it as transformers does, BOS included.
#[test]
fn prep_writes_tokenizer_json_from_tokenizer_model() {
    let spm = fixture("llama-like");
    let (model, config) = (
        spm.join("tokenizer.model"),
        spm.join("tokenizer_config.json"),
    );
    let (_tmp, out) = prep_with_tokenizer_files(
        "internlm2",
        &[
            (&model, "tokenizer.model"),
            (&config, "tokenizer_config.json"),
        ],
        "tokenizer.model (SentencePiece BPE, 600 pieces)",
    );
    let tok = TextTokenizer::load(&out).expect("load").expect("present");
    let golden: Value =
        serde_json::from_slice(&std::fs::read(spm.join("golden.json")).expect("golden"))
            .expect("json");
    for case in golden["cases"].as_array().expect("cases") {
        let text = case["text"].as_str().unwrap();
        let got = tok.encode(text, true).expect("encode");
        assert_eq!(
            serde_json::json!(got),
            case["ids_with_special_tokens"],
            "{text:?}"
        );
    }
}
