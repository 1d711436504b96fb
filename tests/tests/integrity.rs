//! Copy integrity and hostile containers, end to end on small containers made
//! from the tiny fixtures: every kind of damage a copy can suffer (missing,
//! truncated, extra bytes, flipped bit, another model's manifest, another
//! container's file under the same name) is named by `runner verify` (text
//! and `--json`) and refused by `runner generate` at start-up; NaN, infinite
//! or negative block scales inside an otherwise consistent container make the
//! runner fail naming the file and tensor; two runners can read one container
//! at once.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use strata_e2e::{
    bin, copy_dir, run, run_ok, sha256_file, stderr, stdout, tiny_fixture, TINY_TOKENIZER_JSON,
};
use strata_format::StageFile;

fn tmpdir() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("integrity-e2e");
    std::fs::create_dir_all(&base).expect("creating the test scratch dir");
    tempfile::tempdir_in(base).expect("a scratch dir")
}

/// Converts tiny fixture `variant` (NF4 layers, int8 embeddings and head),
/// with a small tokenizer added so that `generate` runs, into `root/<variant>`.
fn tiny_container(root: &Path, variant: &str) -> PathBuf {
    let src = root.join(format!("{variant}-src"));
    copy_dir(&tiny_fixture(variant), &src);
    std::fs::write(src.join("tokenizer.json"), TINY_TOKENIZER_JSON).expect("tokenizer.json");
    let out = root.join(variant);
    run_ok(
        Command::new(bin("prep"))
            .arg(&src)
            .arg("--out")
            .arg(&out)
            .args(["--quant", "nf4", "--quiet"]),
    );
    out
}

/// `runner verify DIR [--json]`.
fn verify(dir: &Path, json: bool) -> Output {
    let mut c = Command::new(bin("runner"));
    c.arg("verify").arg(dir);
    if json {
        c.arg("--json");
    }
    run(&mut c)
}

/// A short greedy generation command on `dir`.
fn generate_cmd(dir: &Path) -> Command {
    let mut c = Command::new(bin("runner"));
    c.arg("generate")
        .arg(dir)
        .args(["--prompt", "a a <s> a", "--max-new-tokens", "4"])
        .args(["--temperature", "0", "-q"]);
    c
}

/// Fails unless `out` failed cleanly (no panic, no signal) and its stderr
/// holds every needle.
fn assert_refused(out: &Output, what: &str, needles: &[&str]) {
    let err = stderr(out);
    assert!(
        out.status.code().is_some_and(|c| c != 0),
        "{what}: expected a non-zero exit, got {}:\n{err}",
        out.status
    );
    assert!(!err.contains("panicked"), "{what}: panicked:\n{err}");
    for n in needles {
        assert!(err.contains(n), "{what}: stderr lacks {n:?}:\n{err}");
    }
}

/// One way a copy can be damaged: what to do to the copy, the file it
/// damages, the `kind` verify --json reports, and a word of the message.
struct Damage {
    name: &'static str,
    file: &'static str,
    kind: &'static str,
    says: &'static str,
    apply: fn(dir: &Path, other: &Path),
}

fn damages() -> Vec<Damage> {
    vec![
        Damage {
            name: "missing file",
            file: "layer.001.strata",
            kind: "missing",
            says: "missing",
            apply: |d, _| std::fs::remove_file(d.join("layer.001.strata")).unwrap(),
        },
        Damage {
            name: "truncated file",
            file: "embed.strata",
            kind: "size",
            says: "truncated",
            apply: |d, _| {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("embed.strata"))
                    .unwrap();
                let len = f.metadata().unwrap().len();
                f.set_len(len - 100).unwrap();
            },
        },
        Damage {
            name: "extra bytes",
            file: "head.strata",
            kind: "size",
            says: "extra bytes",
            apply: |d, _| {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(d.join("head.strata"))
                    .unwrap();
                f.write_all(b"trailing").unwrap();
            },
        },
        Damage {
            name: "flipped bit",
            file: "layer.000.strata",
            kind: "checksum",
            says: "sha256",
            apply: |d, _| {
                let p = d.join("layer.000.strata");
                let mut b = std::fs::read(&p).unwrap();
                let at = b.len() - 5000; // inside the last tensor's data
                b[at] ^= 0x10;
                std::fs::write(&p, b).unwrap();
            },
        },
        Damage {
            name: "manifest of another model",
            file: "layer.000.strata",
            kind: "size",
            says: "manifest says",
            apply: |d, other| {
                std::fs::copy(other.join("manifest.json"), d.join("manifest.json")).unwrap();
            },
        },
        Damage {
            name: "file of another container",
            file: "layer.001.strata",
            kind: "checksum",
            says: "another container",
            apply: |d, other| {
                std::fs::copy(other.join("layer.001.strata"), d.join("layer.001.strata")).unwrap();
            },
        },
        Damage {
            name: "tokenizer file with extra bytes",
            file: "tokenizer.json",
            kind: "size",
            says: "extra bytes",
            apply: |d, _| {
                let p = d.join("tokenizer.json");
                let mut b = std::fs::read(&p).unwrap();
                b.extend_from_slice(b"\n\n");
                std::fs::write(&p, b).unwrap();
            },
        },
    ]
}

#[test]
fn every_kind_of_copy_damage_is_named_by_verify_and_generate() {
    let tmp = tmpdir();
    let llama = tiny_container(tmp.path(), "llama");
    // Same shapes and file sizes as llama, other weights and other settings.
    let mistral = tiny_container(tmp.path(), "mistral");
    // Different shapes: its manifest lists other sizes and hashes.
    let qwen3 = tiny_container(tmp.path(), "qwen3");
    assert_eq!(
        std::fs::metadata(llama.join("layer.001.strata"))
            .unwrap()
            .len(),
        std::fs::metadata(mistral.join("layer.001.strata"))
            .unwrap()
            .len(),
        "the swapped file has the same size"
    );
    let reference = run_ok(&mut generate_cmd(&llama));

    for d in damages() {
        let copy = tmp
            .path()
            .join(format!("copy-{}", d.name.replace(' ', "-")));
        copy_dir(&llama, &copy);
        let other = if d.name.starts_with("manifest") {
            &qwen3
        } else {
            &mistral
        };
        (d.apply)(&copy, other);
        let named = copy.join(d.file).display().to_string();

        let out = verify(&copy, false);
        assert_eq!(out.status.code(), Some(1), "{}: {}", d.name, stderr(&out));
        assert_refused(&out, d.name, &[&named, d.says]);
        assert!(stdout(&out).starts_with("damaged:"), "{}", stdout(&out));

        let out = verify(&copy, true);
        assert_eq!(out.status.code(), Some(1), "{}", d.name);
        let v: Value = serde_json::from_str(&stdout(&out)).expect("verify --json");
        let problems = v["problems"].as_array().expect("problems");
        assert!(
            problems
                .iter()
                .any(|p| p["file"] == d.file && p["problem"]["kind"] == d.kind),
            "{}: --json lacks {} {}: {v}",
            d.name,
            d.file,
            d.kind
        );

        let out = run(&mut generate_cmd(&copy));
        assert_refused(&out, &format!("generate, {}", d.name), &[d.file]);
        assert!(
            stdout(&out).is_empty(),
            "{}: generated from a damaged copy: {}",
            d.name,
            stdout(&out)
        );
    }

    // The undamaged original still verifies and generates the same text.
    let out = verify(&llama, false);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("ok:"));
    assert_eq!(
        stdout(&run_ok(&mut generate_cmd(&llama))),
        stdout(&reference)
    );
}

/// Overwrites the f16 scale of the first block of row `row` of tensor
/// `tensor` in stage file `file`, then rewrites the manifest's size and
/// sha256 of that file, so that only the decoded values can reveal it.
fn poison_scale(dir: &Path, file: &str, tensor: &str, row: usize, scale: u16) {
    let path = dir.join(file);
    let stage = StageFile::open(&path).expect("stage file");
    let e = stage.entry(tensor).expect("tensor").clone();
    let cols = *e.shape.last().expect("a matrix") as usize;
    let block = e.block_size.expect("a quantized tensor") as usize;
    let block_bytes = match e.dtype {
        strata_format::DType::Nf4 => 2 + block / 2,
        strata_format::DType::Int8 => 2 + block,
        other => panic!("{tensor} is {other}, not quantized"),
    };
    let row_bytes = cols.div_ceil(block) * block_bytes;
    let at = e.offset as usize + row * row_bytes;
    drop(stage);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[at..at + 2].copy_from_slice(&scale.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();

    let mp = dir.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&mp).unwrap()).unwrap();
    let entry = m["files"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|f| f["path"] == file)
        .expect("listed file");
    entry["sha256"] = Value::from(sha256_file(&path));
    std::fs::write(&mp, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

#[test]
fn bad_block_scales_are_refused_naming_file_and_tensor() {
    let tmp = tmpdir();
    let llama = tiny_container(tmp.path(), "llama");
    let cases = [
        (
            "layer.000.strata",
            "attn.q",
            0x7E00u16,
            "NaN in an nf4 tensor",
        ),
        (
            "layer.001.strata",
            "mlp.down",
            0x7C00,
            "+inf in an nf4 tensor",
        ),
        (
            "layer.000.strata",
            "mlp.gate",
            0xBC00,
            "-1.0 in an nf4 tensor",
        ),
        ("head.strata", "head", 0xFC00, "-inf in the int8 head"),
    ];
    for (i, (file, tensor, scale, what)) in cases.into_iter().enumerate() {
        let copy = tmp.path().join(format!("scale-{i}"));
        copy_dir(&llama, &copy);
        poison_scale(&copy, file, tensor, 3, scale);
        // The copy is consistent: sizes and hashes match the manifest.
        let out = verify(&copy, false);
        assert!(out.status.success(), "{what}: {}", stderr(&out));
        for extra in [&[][..], &["--max-memory", "0"][..]] {
            let out = run(generate_cmd(&copy).args(extra));
            assert_refused(&out, what, &[file, tensor, "scale"]);
            assert!(
                stdout(&out).is_empty(),
                "{what}: generated text from a bad scale: {}",
                stdout(&out)
            );
        }
    }
}

/// `runner logits DIR --ids ... --all-positions` (every position's logits).
fn logits_cmd(dir: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(bin("runner"));
    c.arg("logits")
        .arg(dir)
        .args(["--ids", "1,17,42,99,3,150,7,64", "--all-positions", "-q"])
        .args(extra);
    c
}

#[test]
fn two_runners_read_one_container_at_once() {
    let tmp = tmpdir();
    let llama = tiny_container(tmp.path(), "llama");
    let expected = stdout(&run_ok(&mut logits_cmd(&llama, &[])));
    assert!(expected.contains("\"logits\""), "{expected}");
    for extra in [&[][..], &["--max-memory", "0", "--prefetch", "1"][..]] {
        let children: Vec<_> = (0..2)
            .map(|_| {
                logits_cmd(&llama, extra)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn runner")
            })
            .collect();
        for child in children {
            let o = child.wait_with_output().expect("runner output");
            assert!(o.status.success(), "{}", stderr(&o));
            assert_eq!(stdout(&o), expected, "same container, same logits");
        }
    }
    assert!(verify(&llama, false).status.success());
}

/// A layer file holding a tensor the manifest's architecture does not use
/// (as a container of a later format version could) is refused, naming the
/// file and the tensor, even though every checksum matches.
#[test]
fn a_tensor_the_architecture_does_not_use_is_refused() {
    use strata_format::{DType, StageWriter, TensorSpec};
    let tmp = tmpdir();
    let dir = tiny_container(tmp.path(), "llama");
    let path = dir.join("layer.000.strata");
    let f = StageFile::open(&path).expect("layer 0");
    let mut specs: Vec<TensorSpec> = f
        .header()
        .tensors
        .iter()
        .map(|t| TensorSpec {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            block_size: t.block_size,
            compression: t.compression.clone(),
        })
        .collect();
    let hidden = f.entry("attn_norm").expect("attn_norm").shape.clone();
    specs.push(TensorSpec {
        name: "attn_post_norm".into(),
        dtype: DType::F32,
        shape: hidden.clone(),
        block_size: None,
        compression: None,
    });
    let stored: Vec<Vec<u8>> = f
        .header()
        .tensors
        .iter()
        .map(|t| f.read_stored(&t.name).expect("tensor bytes"))
        .collect();
    drop(f);
    let mut w = StageWriter::create(&path, strata_format::StageKind::Layer, Some(0), &specs)
        .expect("rewrite layer 0");
    for (s, b) in specs.iter().zip(&stored) {
        w.write(&s.name, b).expect("write");
    }
    w.write("attn_post_norm", &vec![0u8; 4 * hidden[0] as usize])
        .expect("write the extra tensor");
    let written = w.finish().expect("finish");
    let mpath = dir.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    for e in m["files"].as_array_mut().unwrap() {
        if e["path"] == "layer.000.strata" {
            e["bytes"] = written.bytes.into();
            e["sha256"] = written.sha256.clone().into();
        }
    }
    std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    assert!(verify(&dir, false).status.success(), "checksums match");
    let out = run(&mut logits_cmd(&dir, &[]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("layer.000.strata") && err.contains("attn_post_norm"),
        "{err}"
    );
}
