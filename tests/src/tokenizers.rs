//! Helpers of the tokenizer-conversion tests (`tests/spm.rs`,
//! `tests/tiktoken.rs`): comparing a converted tokenizer with golden cases,
//! and running `prep` on a tiny checkpoint given a tokenizer file.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use strata_runner::text::tokenizer::TextTokenizer;

use crate::{bin, copy_dir, run_ok, stderr, tiny_fixture};

/// Compares `tok` with golden `cases` (`text`, `ids`, `ids_with_special_tokens`,
/// `decoded`, optionally the reference's `tokens`): the ids without and with
/// special tokens, then the text the ids decode to (`skip_special` as the
/// reference decoded). One line per difference, starting with `label` and
/// naming `reference`.
pub fn case_failures(
    tok: &TextTokenizer,
    cases: &[Value],
    skip_special: bool,
    label: &str,
    reference: &str,
) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let want: Vec<u32> = case["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        let got = tok.encode(text, false).expect("encode");
        if got != want {
            let tokens = case
                .get("tokens")
                .map(|t| format!(" ({t})"))
                .unwrap_or_default();
            failures.push(format!(
                "{label} encode {text:?}: got {got:?}, {reference} {want:?}{tokens}"
            ));
            continue;
        }
        let with = serde_json::json!(tok.encode(text, true).expect("encode"));
        if with != case["ids_with_special_tokens"] {
            failures.push(format!(
                "{label} encode {text:?} with special tokens: got {with}, {reference} {}",
                case["ids_with_special_tokens"]
            ));
        }
        let decoded = tok.decode(&want, skip_special).expect("decode");
        if decoded != case["decoded"].as_str().expect("decoded") {
            failures.push(format!(
                "{label} decode {text:?}: got {decoded:?}, {reference} {}",
                case["decoded"]
            ));
        }
    }
    failures
}

/// Converts the tiny fixture `variant` (f32) with `files` added to its
/// folder (each `(source, name in the checkpoint)`), checks that `prep` says
/// it wrote tokenizer.json from `from`, that the manifest lists tokenizer.json
/// and every added file, and that `runner verify` passes. Returns the
/// temporary directory (keep it alive) and the container.
pub fn prep_with_tokenizer_files(
    variant: &str,
    files: &[(&Path, &str)],
    from: &str,
) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    copy_dir(&tiny_fixture(variant), &src);
    for (path, name) in files {
        std::fs::copy(path, src.join(name)).expect("copy");
    }
    let out = tmp.path().join("out");
    let prep = run_ok(
        Command::new(bin("prep"))
            .arg(&src)
            .arg("--out")
            .arg(&out)
            .args(["--quant", "f32"]),
    );
    assert!(
        stderr(&prep).contains(&format!("wrote tokenizer.json from {from}")),
        "{variant}: {}",
        stderr(&prep)
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("manifest"))
            .expect("json");
    let listed = manifest["tokenizer"]["files"].as_array().expect("files");
    for name in std::iter::once("tokenizer.json").chain(files.iter().map(|(_, n)| *n)) {
        assert!(listed.iter().any(|f| f == name), "{name}: {listed:?}");
    }
    run_ok(Command::new(bin("runner")).arg("verify").arg(&out));
    (tmp, out)
}
