//! Fault injection for `prep` on a synthetic sharded checkpoint (8 layers,
//! ~13 MB of bf16, made here): SIGKILL at seeded random moments with
//! `--delete-originals` (no shard is gone before every stage it feeds is
//! complete; the rerun is byte-identical to an uninterrupted run), a disk
//! that fills up mid-run and one too small from the start (a size-limited
//! tmpfs; a counted SKIP where mounting is not permitted), two preps racing
//! for one output directory, and a runner on a container prep is writing.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use strata_e2e::{bin, hash_dir, run, run_ok, sha256_file, skip, stderr};
use strata_format::manifest::Manifest;
use strata_format::verify::verify_container;

// ---------------------------------------------------------------- helpers

fn tmpdir() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability-e2e");
    std::fs::create_dir_all(&base).expect("creating the test scratch dir");
    tempfile::tempdir_in(base).expect("a scratch dir")
}

/// A `prep SRC --out OUT --quiet ARGS...` command with the Hub environment cleared.
fn prep(src: &Path, out: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin("prep"));
    for k in ["HF_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_HUB_CACHE"] {
        c.env_remove(k);
    }
    c.arg(src).arg("--out").arg(out).arg("--quiet").args(args);
    c
}

/// Fails unless `out` failed with exit status 1, without a panic, and its
/// stderr holds every needle.
fn assert_fails(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "expected failure:\n{err}");
    assert!(!err.contains("panicked"), "prep panicked:\n{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
}

/// splitmix64: a small seeded generator for weights and kill delays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

// ---------------------------------------------------------------- the checkpoint

const HIDDEN: u64 = 256;
const INTER: u64 = 704;
const LAYERS: u64 = 8;
const VOCAB: u64 = 1024;
const HEADS: u64 = 4;
const KV_HEADS: u64 = 2;
/// Layers where shards 2 and 3 start.
const CUTS: [u64; 2] = [3, 6];

/// The Hugging Face tensors of the synthetic Llama, in model order, with
/// the stage file each one feeds.
fn tensors() -> Vec<(String, Vec<u64>, String)> {
    let head_dim = HIDDEN / HEADS;
    let mut t = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![VOCAB, HIDDEN],
        "embed.strata".to_string(),
    )];
    for l in 0..LAYERS {
        let stage = format!("layer.{l:03}.strata");
        for (name, shape) in [
            ("input_layernorm", vec![HIDDEN]),
            ("self_attn.q_proj", vec![HEADS * head_dim, HIDDEN]),
            ("self_attn.k_proj", vec![KV_HEADS * head_dim, HIDDEN]),
            ("self_attn.v_proj", vec![KV_HEADS * head_dim, HIDDEN]),
            ("self_attn.o_proj", vec![HIDDEN, HEADS * head_dim]),
            ("post_attention_layernorm", vec![HIDDEN]),
            ("mlp.gate_proj", vec![INTER, HIDDEN]),
            ("mlp.up_proj", vec![INTER, HIDDEN]),
            ("mlp.down_proj", vec![HIDDEN, INTER]),
        ] {
            t.push((
                format!("model.layers.{l}.{name}.weight"),
                shape,
                stage.clone(),
            ));
        }
    }
    t.push((
        "model.norm.weight".into(),
        vec![HIDDEN],
        "head.strata".into(),
    ));
    t.push((
        "lm_head.weight".into(),
        vec![VOCAB, HIDDEN],
        "head.strata".into(),
    ));
    t
}

/// The shard (1-based) that holds a tensor.
fn shard_of(name: &str) -> usize {
    let layer = name
        .strip_prefix("model.layers.")
        .and_then(|r| r.split('.').next())
        .and_then(|n| n.parse::<u64>().ok());
    match (name, layer) {
        ("model.embed_tokens.weight", _) => 1,
        (_, Some(l)) => 1 + CUTS.iter().filter(|&&c| l >= c).count(),
        _ => 3,
    }
}

fn shard_name(i: usize) -> String {
    format!("model-{i:05}-of-00003.safetensors")
}

/// Writes the synthetic sharded checkpoint into `dir` and returns, for each
/// shard file name, the stage files its tensors feed.
fn write_checkpoint(dir: &Path) -> BTreeMap<String, Vec<String>> {
    std::fs::create_dir_all(dir).unwrap();
    let config = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": HIDDEN, "intermediate_size": INTER, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "vocab_size": VOCAB,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2,
        "torch_dtype": "bfloat16"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut rng = Rng(0x5EED_0001);
    let mut feeds: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut weight_map = serde_json::Map::new();
    let mut total = 0u64;
    for shard in 1..=3 {
        let name = shard_name(shard);
        let members: Vec<_> = tensors()
            .into_iter()
            .filter(|(n, _, _)| shard_of(n) == shard)
            .collect();
        let mut header = String::from(r#"{"__metadata__":{"format":"pt"}"#);
        let mut offset = 0u64;
        for (n, shape, stage) in &members {
            let end = offset + 2 * shape.iter().product::<u64>();
            header.push_str(&format!(
                r#","{n}":{{"dtype":"BF16","shape":{},"data_offsets":[{offset},{end}]}}"#,
                json!(shape)
            ));
            offset = end;
            weight_map.insert(n.clone(), Value::from(name.clone()));
            let f = feeds.entry(name.clone()).or_default();
            if !f.contains(stage) {
                f.push(stage.clone());
            }
        }
        header.push('}');
        total += offset;
        let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join(&name)).unwrap());
        f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
        f.write_all(header.as_bytes()).unwrap();
        for (n, shape, _) in &members {
            let norm = n.ends_with("layernorm.weight") || n == "model.norm.weight";
            for _ in 0..shape.iter().product::<u64>() {
                let v = if norm {
                    1.0 + 0.1 * (rng.unit() as f32 - 0.5)
                } else {
                    0.08 * (rng.unit() as f32 - 0.5)
                };
                f.write_all(&((v.to_bits() >> 16) as u16).to_le_bytes())
                    .unwrap();
            }
        }
        f.flush().unwrap();
    }
    let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        index.to_string().as_bytes(),
    )
    .unwrap();
    feeds
}

/// (Re)creates `src` from `master`: shards hard-linked (so deleting one in
/// `src` keeps the master), the small files copied.
fn fresh_source(master: &Path, src: &Path) {
    if src.exists() {
        std::fs::remove_dir_all(src).unwrap();
    }
    std::fs::create_dir_all(src).unwrap();
    for e in std::fs::read_dir(master).unwrap() {
        let p = e.unwrap().path();
        let dst = src.join(p.file_name().unwrap());
        if p.extension().is_some_and(|x| x == "safetensors") {
            std::fs::hard_link(&p, &dst).unwrap();
        } else {
            std::fs::copy(&p, &dst).unwrap();
        }
    }
}

// ---------------------------------------------------------------- kill -9

#[test]
fn sigkill_at_random_moments_then_resume_is_byte_identical() {
    let tmp = tmpdir();
    let master = tmp.path().join("master");
    let feeds = write_checkpoint(&master);
    let master_hashes = hash_dir(&master);
    // Every run reads the same source path, so the manifests agree.
    let src = tmp.path().join("src");

    fresh_source(&master, &src);
    let reference = tmp.path().join("reference");
    let t0 = Instant::now();
    run_ok(&mut prep(&src, &reference, &["--delete-originals"]));
    let full = t0.elapsed();
    for shard in feeds.keys() {
        assert!(!src.join(shard).exists(), "{shard} deleted");
    }
    let ref_hashes = hash_dir(&reference);

    let seed: u64 = std::env::var("STRATA_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_250_601);
    let mut rng = Rng(seed);
    let kills = 20;
    let (mut landed, mut deleted_before_kill) = (0, 0);
    eprintln!(
        "uninterrupted run: {full:?}; {kills} kills, seed {seed} (STRATA_FAULT_SEED overrides)"
    );
    for i in 0..kills {
        let delay = full.mul_f64(rng.unit());
        fresh_source(&master, &src);
        let out = tmp.path().join(format!("out-{i}"));
        let mut child = prep(&src, &out, &["--delete-originals"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn prep");
        let start = Instant::now();
        while start.elapsed() < delay && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_micros(500));
        }
        let killed = child.try_wait().unwrap().is_none();
        if killed {
            child.kill().unwrap();
            landed += 1;
        }
        let status = child.wait().unwrap();
        assert!(killed || status.success(), "run {i} failed on its own");

        // What a kill may leave: sources byte-for-byte intact, or deleted
        // only once every stage they feed is complete and correct.
        for (shard, stages) in &feeds {
            let p = src.join(shard);
            if p.exists() {
                assert_eq!(sha256_file(&p), master_hashes[shard], "{shard} intact");
                continue;
            }
            deleted_before_kill += usize::from(killed);
            for stage in stages {
                let s = out.join(stage);
                assert!(
                    s.is_file(),
                    "kill {i} after {delay:?}: {shard} is gone but {stage} is not complete"
                );
                assert_eq!(
                    sha256_file(&s),
                    ref_hashes[stage],
                    "kill {i}: {stage} differs"
                );
            }
        }
        for f in ["config.json", "model.safetensors.index.json"] {
            assert_eq!(sha256_file(&src.join(f)), master_hashes[f], "{f} intact");
        }

        run_ok(&mut prep(&src, &out, &["--delete-originals"]));
        assert_eq!(
            hash_dir(&out),
            ref_hashes,
            "kill {i} after {delay:?}: the resumed container differs"
        );
        for shard in feeds.keys() {
            assert!(!src.join(shard).exists(), "{shard} deleted by the rerun");
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
    eprintln!("{landed} of {kills} kills landed mid-run; {deleted_before_kill} shards were already deleted when killed");
    assert!(landed >= kills / 2, "most kills land before prep ends");
}

// ---------------------------------------------------------------- full disk

/// A size-limited tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `8m`) at `dir`; the reason where
    /// mounting is not permitted (or `mount` cannot run).
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(Tmpfs(dir.to_path_buf()))
        } else {
            Err(format!(
                "cannot mount a tmpfs at {} ({}): {}",
                dir.display(),
                out.status,
                stderr(&out).trim()
            ))
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `dir` with a ballast file until it is full.
fn fill(dir: &Path) {
    let mut f = std::fs::File::create(dir.join("ballast")).unwrap();
    let chunk = vec![0x5Au8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.write_all(&chunk[..4096]);
    let _ = f.write_all(&chunk[..1]);
}

#[test]
fn full_disk_fails_cleanly_and_small_disk_is_refused_up_front() {
    let tmp = tmpdir();
    let master = tmp.path().join("master");
    write_checkpoint(&master);
    let master_hashes = hash_dir(&master);
    let src = tmp.path().join("src");

    // Too small from the start: refused before anything is written.
    let small = match Tmpfs::mount(&tmp.path().join("small"), "1m") {
        Ok(t) => t,
        Err(why) => {
            skip(
                "reliability::full_disk_fails_cleanly_and_small_disk_is_refused_up_front",
                &format!("{why} (needs root or CAP_SYS_ADMIN)"),
            );
            return;
        }
    };
    fresh_source(&master, &src);
    let out = small.0.join("out");
    let o = run(&mut prep(&src, &out, &[]));
    assert_fails(
        &o,
        &["not enough free space", &small.0.display().to_string()],
    );
    let written: Vec<_> = std::fs::read_dir(&out)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".strata") || n == "manifest.json")
                .collect()
        })
        .unwrap_or_default();
    assert!(written.is_empty(), "nothing written: {written:?}");
    drop(small);

    // Fills up mid-run: the preflight passes (8 MiB for ~3.5 MB of NF4),
    // then a ballast takes the rest once the first stage file appears.
    let disk = Tmpfs::mount(&tmp.path().join("disk"), "8m").expect("mounted once already");
    let out = disk.0.join("out");
    let mut child = prep(&src, &out, &["--delete-originals"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn prep");
    let start = Instant::now();
    loop {
        let started = std::fs::read_dir(&out).is_ok_and(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().contains(".strata"))
        });
        if started {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "prep ended before writing"
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "prep never wrote"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    fill(&disk.0);
    let o = child.wait_with_output().unwrap();
    assert_fails(&o, &["No space left on device"]);
    assert!(!out.join("manifest.json").exists(), "no manifest");
    for (name, sha) in &master_hashes {
        let p = src.join(name);
        // --delete-originals may only have freed shards it had finished.
        if p.exists() || !name.ends_with(".safetensors") {
            assert_eq!(&sha256_file(&p), sha, "{name} intact");
        }
    }
    // Space freed: the rerun completes and the container verifies.
    std::fs::remove_file(disk.0.join("ballast")).unwrap();
    run_ok(&mut prep(&src, &out, &["--delete-originals"]));
    let m = Manifest::load(&out).unwrap();
    assert!(verify_container(&out, &m).ok());
}

// ---------------------------------------------------------------- concurrency

#[test]
fn a_second_prep_into_the_same_directory_is_refused() {
    let tmp = tmpdir();
    let master = tmp.path().join("master");
    write_checkpoint(&master);
    let reference = tmp.path().join("reference");
    run_ok(&mut prep(&master, &reference, &[]));
    for attempt in 0..5 {
        let out = tmp.path().join(format!("out-{attempt}"));
        let mut first = prep(&master, &out, &[])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn prep");
        while !out.join("prep-job.json").exists() && first.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_micros(200));
        }
        let second = run(&mut prep(&master, &out, &[]));
        let first_running = first.try_wait().unwrap().is_none();
        let first = first.wait_with_output().unwrap();
        assert!(first.status.success(), "{}", stderr(&first));
        if !first_running {
            eprintln!("attempt {attempt}: the first prep ended before the second started");
            continue;
        }
        assert_fails(&second, &["another prep"]);
        assert_eq!(hash_dir(&out), hash_dir(&reference));
        return;
    }
    panic!("the first prep always ended before the second one started");
}

/// Waits until child `pid` has stopped (`true`) or ended (`false`), leaving
/// it waitable so that [`std::process::Child::wait`] still reaps it.
fn stopped_or_ended(pid: libc::pid_t) -> bool {
    // SAFETY: all-zero bytes are a valid `siginfo_t`.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `info` is a writable `siginfo_t`; with WNOWAIT the call
        // only reports the child's state and reaps nothing.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WSTOPPED | libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 {
            return info.si_code == libc::CLD_STOPPED;
        }
        let e = std::io::Error::last_os_error();
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::Interrupted,
            "waitid({pid}): {e}"
        );
    }
}

#[test]
fn a_runner_refuses_a_container_prep_is_still_writing() {
    let tmp = tmpdir();
    let master = tmp.path().join("master");
    write_checkpoint(&master);
    // Freeze prep as soon as it has written its first stage file, so the
    // runner deterministically sees a half-written container; where prep
    // ends first, try again.
    const ATTEMPTS: usize = 10;
    for attempt in 0..ATTEMPTS {
        let out = tmp.path().join(format!("out-{attempt}"));
        let mut writer = prep(&master, &out, &[])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn prep");
        let pid = writer.id() as libc::pid_t;
        let deadline = Instant::now() + Duration::from_secs(60);
        let ended = loop {
            if let Some(status) = writer.try_wait().unwrap() {
                break Some(status);
            }
            if out.join("embed.strata").exists() {
                break None;
            }
            assert!(Instant::now() < deadline, "prep wrote nothing in 60 s");
            std::thread::sleep(Duration::from_micros(200));
        };
        if let Some(status) = ended {
            assert!(status.success(), "prep failed: {status}");
            eprintln!("attempt {attempt}: prep ended before it wrote a stage file");
            continue;
        }
        // SAFETY: kill takes no pointers. `pid` is our child and nothing has
        // waited on it since try_wait last saw it running, so it is alive or an
        // unreaped zombie and its id names no other process.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "SIGSTOP");
        let stopped = stopped_or_ended(pid);
        let frozen_midway = stopped && !out.join("manifest.json").exists();
        let runner = frozen_midway.then(|| {
            run(Command::new(bin("runner")).arg("generate").arg(&out).args([
                "--prompt",
                "a",
                "--max-new-tokens",
                "1",
                "-q",
            ]))
        });
        if stopped {
            // SAFETY: as above: `stopped_or_ended` waits with WNOWAIT, so the
            // child is still unreaped and its id not reused.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0, "SIGCONT");
        }
        assert!(writer.wait().expect("prep").success());
        let Some(runner) = runner else {
            eprintln!("attempt {attempt}: prep finished before it could be frozen");
            continue;
        };
        assert!(!runner.status.success());
        let err = stderr(&runner);
        assert!(
            err.contains("manifest.json") && err.contains("not a complete container"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        // Once prep is done, the same container verifies.
        let m = Manifest::load(&out).expect("manifest after prep");
        assert!(verify_container(&out, &m).ok());
        return;
    }
    panic!("prep finished before it could be frozen in all {ATTEMPTS} attempts");
}
