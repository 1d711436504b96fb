//! `prep --compress zstd` end to end on SmolLM2-135M: the compressed container
//! is smaller, gives logits identical to the uncompressed one whatever the
//! memory plan and I/O path (streamed and decoded on the way, resident decoded,
//! resident held compressed), reports its decompression time, and damage to a
//! compressed tensor is caught by the checksum, or without it by zstd's own
//! frame checks, as an error naming the file and tensor.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use strata_e2e::*;
use strata_format::StageFile;

fn tmpdir() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("compression-e2e");
    std::fs::create_dir_all(&base).expect("creating the test scratch dir");
    tempfile::tempdir_in(base).expect("a scratch dir")
}

fn plain() -> PathBuf {
    prepared(&smollm2_dir(), "compress-bf16", &["--quant", "bf16"])
}

fn zstd() -> PathBuf {
    prepared(
        &smollm2_dir(),
        "compress-bf16-zstd",
        &["--quant", "bf16", "--compress", "zstd"],
    )
}

fn runner(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin("runner"));
    c.arg(args[0]).arg(dir).args(&args[1..]);
    if args[0] != "verify" {
        c.arg("-q");
    }
    c
}

fn stage_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".strata"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

const LOGITS: &[&str] = &[
    "logits",
    "--prompt",
    "The capital of France is",
    "--all-positions",
    "--ctx",
    "256",
];

#[test]
fn compressed_container_is_smaller_and_gives_identical_logits() {
    let (p, z) = (plain(), zstd());
    let m: Value =
        serde_json::from_slice(&std::fs::read(z.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["quantization"]["compression"], "zstd:3");
    let layer = StageFile::open(&z.join("layer.000.strata")).unwrap();
    let up = layer.entry("mlp.up").unwrap();
    let c = up.compression.as_ref().expect("mlp.up is compressed");
    assert_eq!(c.codec, "zstd-bytesplit");
    assert!(
        up.length < c.decoded_length * 4 / 5,
        "{} of {}",
        up.length,
        c.decoded_length
    );
    // Norms are too small to compress.
    assert!(layer.entry("attn_norm").unwrap().compression.is_none());
    let ratio = stage_bytes(&z) as f64 / stage_bytes(&p) as f64;
    assert!(ratio < 0.8, "compressed/plain = {ratio}");
    run_ok(&mut runner(&z, &["verify"]));

    let reference = stdout(&run_ok(&mut runner(
        &p,
        &[LOGITS, &["--max-memory", "0"]].concat(),
    )));
    assert!(reference.contains("\"logits\""));
    for extra in [
        &["--max-memory", "0"][..],
        &["--max-memory", "0", "--io", "pread"],
        &["--max-memory", "0", "--io", "mmap"],
        &["--max-memory", "200MiB"],
        &["--max-memory", "200MiB", "--keep-compressed", "no"],
        &["--max-memory", "2GiB", "--keep-compressed", "yes"],
        &["--max-memory", "2GiB"],
    ] {
        let out = run_ok(&mut runner(&z, &[LOGITS, extra].concat()));
        assert!(
            stdout(&out) == reference,
            "logits differ from the uncompressed container's with {extra:?}"
        );
    }
    // The budget of 200 MiB holds more layers compressed than decoded.
    let out = run_ok(Command::new(bin("runner")).arg("logits").arg(&z).args([
        "--prompt",
        "Hi",
        "--ctx",
        "256",
        "--max-memory",
        "200MiB",
    ]));
    assert!(stderr(&out).contains("held compressed"), "{}", stderr(&out));

    let out = run_ok(&mut runner(
        &z,
        &[
            "bench",
            "--max-memory",
            "0",
            "--prompt-tokens",
            "2",
            "--new-tokens",
            "2",
        ],
    ));
    let b: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(b["compressed"], true, "{b}");
    assert!(
        b["decompress_seconds_per_token"].as_f64().unwrap() > 0.0,
        "{b}"
    );
    let read = b["bytes_read_per_token"].as_f64().unwrap();
    assert!(read < 0.8 * stage_bytes(&p) as f64, "{b}");
}

/// Flips one byte in the middle of tensor `tensor` of `file`.
fn flip(dir: &Path, file: &str, tensor: &str) {
    let path = dir.join(file);
    let e = StageFile::open(&path)
        .unwrap()
        .entry(tensor)
        .unwrap()
        .clone();
    assert!(e.compression.is_some(), "{file} {tensor} is compressed");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[(e.offset + e.length / 2) as usize] ^= 0x10;
    std::fs::write(&path, bytes).unwrap();
}

#[test]
fn damage_in_compressed_tensors_is_caught_with_and_without_checksums() {
    let tmp = tmpdir();
    for (file, tensor) in [
        ("layer.005.strata", "mlp.up"),
        ("embed.strata", "embed.tokens"),
    ] {
        let dir = tmp.path().join(file);
        copy_dir(&zstd(), &dir);
        flip(&dir, file, tensor);
        let out = run(&mut runner(&dir, &["verify"]));
        assert_eq!(out.status.code(), Some(1), "verify flags {file}");
        assert!(stdout(&out).contains(file) || stderr(&out).contains(file));
        for extra in [&[][..], &["--max-memory", "0"]] {
            let gen = [
                &["generate", "--prompt", "Hello", "--max-new-tokens", "2"][..],
                extra,
            ]
            .concat();
            // Runtime errors exit with status 2 (1 is `verify`'s "damaged").
            let out = run(&mut runner(&dir, &gen));
            assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
            let err = stderr(&out);
            assert!(err.contains(file) && err.contains("sha256"), "{err}");
            // Without the checksum, zstd's frame checks still refuse the bytes.
            let out = run(&mut runner(&dir, &[&gen[..], &["--no-verify"]].concat()));
            assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
            let err = stderr(&out);
            assert!(
                err.contains(file) && err.contains(tensor) && !err.contains("panicked"),
                "{err}"
            );
        }
    }
}
