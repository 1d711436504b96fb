//! Tooling for running at scale: random-weight containers of named model
//! shapes (`strata_prep::random`, behind `examples/make_random_container`)
//! must pass `runner verify` and generate text, and `runner plan` must give
//! the memory a model needs from its shape alone.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use strata_e2e::*;
use strata_format::shapes::Shape;
use strata_format::Manifest;
use strata_prep::random::{write_random_container, RandomOptions};

fn write_tiny(out: &Path, seed: u64) {
    let opts = RandomOptions {
        shape: Shape::named("tiny").expect("tiny is a shape"),
        out: out.to_path_buf(),
        seed,
        tokenizer_from: Some(smollm2_dir()),
    };
    write_random_container(&opts, &|_, _, _| {}).expect("writes the tiny container");
}

fn plan_json(args: &[&str]) -> Value {
    let out = run_ok(
        Command::new(bin("runner"))
            .arg("plan")
            .args(args)
            .arg("--json"),
    );
    serde_json::from_str(&stdout(&out)).expect("plan JSON")
}

#[test]
fn a_random_tiny_container_verifies_and_generates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    write_tiny(&dir, 7);

    let v = run_ok(Command::new(bin("runner")).arg("verify").arg(&dir));
    assert!(stdout(&v).starts_with("ok:"), "{}", stdout(&v));
    let m = Manifest::load(&dir).unwrap();
    assert_eq!(m.source.kind, strata_prep::random::SOURCE_KIND);
    // SmolLM2's generation_config.json: eos 2.
    assert_eq!(m.tokenizer.eos_token_ids, vec![2]);
    assert!(m.tokenizer.files.iter().any(|f| f == "tokenizer.json"));

    let generate = || {
        run_ok(
            Command::new(bin("runner"))
                .arg("generate")
                .arg(&dir)
                .args([
                    "--prompt",
                    "hi",
                    "--max-new-tokens",
                    "2",
                    "--temperature",
                    "0",
                ])
                .args(["--max-memory", "0", "-q"]),
        )
    };
    let first = stdout(&generate());
    assert_eq!(first, stdout(&generate()), "greedy output is deterministic");

    // The same seed gives the same bytes; another seed other bytes.
    let again = tmp.path().join("again");
    write_tiny(&again, 7);
    let other = tmp.path().join("other");
    write_tiny(&other, 8);
    let files = |d: &Path| Manifest::load(d).unwrap().files;
    assert_eq!(files(&dir), files(&again));
    assert_ne!(files(&dir), files(&other));

    // A plan from the files equals the plan from the shape alone.
    let args = ["--ctx", "64", "--max-memory", "1GiB"];
    let mut from_dir = plan_json(&[&[dir.to_str().unwrap()], &args[..]].concat());
    let mut from_shape = plan_json(&[&["--shape", "tiny"], &args[..]].concat());
    from_dir["model"] = Value::Null;
    from_shape["model"] = Value::Null;
    assert_eq!(from_dir, from_shape);
}

#[test]
fn writing_into_a_non_empty_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("keep.txt"), b"mine").unwrap();
    let opts = RandomOptions {
        shape: Shape::named("tiny").unwrap(),
        out: tmp.path().to_path_buf(),
        seed: 1,
        tokenizer_from: None,
    };
    let err = write_random_container(&opts, &|_, _, _| {}).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(std::fs::read(tmp.path().join("keep.txt")).unwrap(), b"mine");
}

#[test]
fn the_405b_plan_states_the_budget_it_needs() {
    let p = plan_json(&[
        "--shape",
        "llama3.1-405b",
        "--ctx",
        "512",
        "--prefetch",
        "1",
    ]);
    let layer = p["layer_bytes_max"].as_u64().unwrap();
    let kv = p["kv_cache_bytes"].as_u64().unwrap();
    // 126 layers × 512 positions × 8 KV heads × 128 × (K and V) × f32.
    assert_eq!(kv, 126 * 512 * 8 * 128 * 2 * 4);
    assert_eq!(p["num_layers"], 126);
    // Two read buffers of the largest layer (1.58 GiB) on top of the KV cache and runtime.
    assert_eq!(
        p["streaming_minimum_bytes"].as_u64().unwrap(),
        kv + p["overhead_bytes"].as_u64().unwrap() + 2 * layer
    );
    assert!(p["all_resident_bytes"].as_u64().unwrap() > 200 << 30);

    let text = run_ok(
        Command::new(bin("runner"))
            .args(["plan", "--shape", "llama3.1-405b", "--max-memory", "2GiB"])
            .args(["--ctx", "512", "--prefetch", "1"]),
    );
    let text = stdout(&text);
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("needs 3.74 GiB to stream"),
        "last line: {last}\n{text}"
    );
    assert!(text.contains("is too small"), "{text}");

    let bad = run(Command::new(bin("runner")).args(["plan", "--shape", "gpt-9"]));
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("llama3-70b"), "{}", stderr(&bad));
}
