//! Helpers for the end-to-end tests: locating the built binaries and the test
//! models, running commands, copying and hashing directories.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

pub mod fuzzing;
pub mod tokenizers;

/// A minimal `tokenizer.json`: a word-level tokenizer that knows `<s>` (0),
/// `</s>` (1) and `a` (2), splitting on whitespace; ids it does not know decode
/// to nothing. Enough to run `runner generate` on a tiny fixture's container.
pub const TINY_TOKENIZER_JSON: &str = r#"{"version":"1.0","truncation":null,"padding":null,
"added_tokens":[{"id":0,"content":"<s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
{"id":1,"content":"</s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
"model":{"type":"WordLevel","vocab":{"<s>":0,"</s>":1,"a":2},"unk_token":"a"}}"#;

/// The repository root (the parent of this crate's directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Path of a workspace binary built in the same profile as the running test
/// (`target/<profile>/<name>`). Panics with instructions when it is missing:
/// `cargo test` does not build other packages' binaries.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/<test-binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "binary `{name}` not found at {}: build it first with `cargo build --workspace --bins` \
         in the same profile (scripts/test.sh does this)",
        path.display()
    );
    path
}

/// The SmolLM2-135M-Instruct checkpoint folder: `$STRATA_SMOLLM2`, or else
/// the last line printed by `scripts/fetch-smollm2.sh` (which builds it).
pub fn smollm2_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| fetched("STRATA_SMOLLM2", "scripts/fetch-smollm2.sh", &[]))
        .clone()
}

/// The Gemma 3 270M checkpoint folder: `$STRATA_GEMMA3`, or else the last
/// line printed by `scripts/fetch-model.sh gemma3-270m` (which builds it).
pub fn gemma3_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| fetched("STRATA_GEMMA3", "scripts/fetch-model.sh", &["gemma3-270m"]))
        .clone()
}

/// The Qwen2.5-Coder-0.5B-Instruct checkpoint folder (with its GGUF):
/// `$STRATA_QWEN05`, or else the last line printed by
/// `scripts/fetch-model.sh 0.5b` (which builds it).
pub fn qwen05_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| fetched("STRATA_QWEN05", "scripts/fetch-model.sh", &["0.5b"]))
        .clone()
}

/// A real checkpoint folder: the one `env` names, or else the last line the
/// fetch `script` (relative to the repository) prints.
fn fetched(env: &str, script: &str, args: &[&str]) -> PathBuf {
    if let Some(d) = std::env::var_os(env).filter(|d| !d.is_empty()) {
        let d = PathBuf::from(d);
        assert!(
            d.join("config.json").is_file(),
            "{env}={} holds no config.json",
            d.display()
        );
        return d;
    }
    let script = repo_root().join(script);
    let out = Command::new("bash")
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed ({}):\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("{} printed no path", script.display()));
    PathBuf::from(last.trim())
}

/// `runner perplexity DIR --file tests/fixtures/smollm2/passage.txt --json -q`
/// with `extra` options: the passage's mean NLL and its number of tokens.
pub fn passage_nll(dir: &Path, extra: &[&str]) -> (f64, u64) {
    let out = run_ok(
        Command::new(bin("runner"))
            .arg("perplexity")
            .arg(dir)
            .arg("--file")
            .arg(repo_root().join("tests/fixtures/smollm2/passage.txt"))
            .arg("--json")
            .args(extra)
            .arg("-q"),
    );
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("perplexity JSON");
    (
        v["mean_nll"].as_f64().expect("mean_nll"),
        v["tokens"].as_u64().expect("tokens"),
    )
}

/// A tiny fixture checkpoint: `tests/fixtures/tiny/<variant>`.
pub fn tiny_fixture(variant: &str) -> PathBuf {
    let d = repo_root().join("tests/fixtures/tiny").join(variant);
    assert!(
        d.join("config.json").is_file(),
        "fixture {} is missing (scripts/make-tiny-fixtures.py makes it)",
        d.display()
    );
    d
}

/// Says that test `name` could not check what it is for in this environment
/// (no permission to mount, a CPU feature missing): prints
/// `SKIP: <name>: <reason>` to stderr and appends the same line to the file
/// `$STRATA_SKIP_LOG` names, if set, so that `scripts/test.sh` counts it in its
/// summary (cargo shows no stderr of passing tests). The caller then returns.
pub fn skip(name: &str, reason: &str) {
    use std::io::Write;
    let line = format!("SKIP: {name}: {}", reason.replace('\n', " "));
    eprintln!("{line}");
    if let Some(log) = std::env::var_os("STRATA_SKIP_LOG").filter(|l| !l.is_empty()) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("STRATA_SKIP_LOG={}: {e}", Path::new(&log).display()));
        // One write to a file opened for appending: lines from tests running
        // in parallel do not interleave.
        f.write_all(format!("{line}\n").as_bytes())
            .unwrap_or_else(|e| panic!("STRATA_SKIP_LOG={}: {e}", Path::new(&log).display()));
    }
}

/// Runs a command to completion and returns its output; panics only if it
/// cannot be started.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command and panics with its stderr unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `cmd` with `input` on its stdin (then closed) and panics with its
/// stderr unless it succeeds: an interactive command such as `runner chat`.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input)
        .unwrap_or_else(|e| panic!("cannot write to {cmd:?}: {e}"));
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("cannot wait for {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The stderr of an output, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The stdout of an output, as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> String {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    hex::encode(Sha256::digest(&bytes))
}

/// File name → sha256 of every regular file directly in `dir` whose name
/// passes `keep`.
pub fn hash_dir_filtered(dir: &Path, keep: impl Fn(&str) -> bool) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.expect("directory entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().expect("file type").is_file() && keep(&name) {
            out.insert(name, sha256_file(&entry.path()));
        }
    }
    out
}

/// File name → sha256 of every regular file directly in `dir`.
pub fn hash_dir(dir: &Path) -> BTreeMap<String, String> {
    hash_dir_filtered(dir, |_| true)
}

/// Copies the regular files directly in `src` (following links) into `dst`,
/// which is created.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap_or_else(|e| panic!("cannot create {}: {e}", dst.display()));
    for entry in
        std::fs::read_dir(src).unwrap_or_else(|e| panic!("cannot list {}: {e}", src.display()))
    {
        let entry = entry.expect("directory entry");
        let path = entry.path();
        if path.is_file() {
            std::fs::copy(&path, dst.join(entry.file_name()))
                .unwrap_or_else(|e| panic!("cannot copy {}: {e}", path.display()));
        }
    }
}

/// Converts `src` with `prep` into `target/e2e-containers/<name>` once per
/// test process (removing what an earlier run left there) and returns the path.
pub fn prepared(src: &Path, name: &str, args: &[&str]) -> PathBuf {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static DONE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let done = DONE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut done = done.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = done.get(name) {
        return p.clone();
    }
    let out = repo_root().join("target/e2e-containers").join(name);
    if out.exists() {
        std::fs::remove_dir_all(&out)
            .unwrap_or_else(|e| panic!("cannot remove {}: {e}", out.display()));
    }
    run_ok(
        Command::new(bin("prep"))
            .arg(src)
            .arg("--out")
            .arg(&out)
            .args(args)
            .arg("--quiet"),
    );
    done.insert(name.to_string(), out.clone());
    out
}
