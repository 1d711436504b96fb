//! Replays the fuzz corpus and every past fuzz finding on stable Rust: each
//! file under `tests/fuzz/corpus/<target>/` and `tests/fuzz/regressions/<target>/`
//! goes through the same function the libFuzzer target calls
//! (`strata_e2e::fuzzing`), so a fixed crash stays fixed without libFuzzer.

use std::path::Path;

use strata_e2e::fuzzing::{run_target, TARGETS};
use strata_e2e::repo_root;

/// The files of `dir` (none when it does not exist), sorted.
fn inputs(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn fuzz_corpus_and_regressions_replay_cleanly() {
    let fuzz = repo_root().join("tests/fuzz");
    let mut total = 0;
    for target in TARGETS {
        let corpus = inputs(&fuzz.join("corpus").join(target));
        assert!(
            !corpus.is_empty(),
            "tests/fuzz/corpus/{target} holds no seed inputs"
        );
        for file in corpus
            .iter()
            .chain(&inputs(&fuzz.join("regressions").join(target)))
        {
            let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let outcome = std::panic::catch_unwind(|| run_target(target, &data));
            assert!(
                outcome.is_ok(),
                "fuzz target {target} fails on {}",
                file.display()
            );
            total += 1;
        }
    }
    eprintln!("replayed {total} fuzz inputs");
}

#[test]
fn container_open_seeds_reach_the_plan() {
    let dir = repo_root().join("tests/fuzz/corpus/container_open");
    let seeds: Vec<_> = inputs(&dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
        })
        .collect();
    assert!(!seeds.is_empty(), "no seed-* inputs in {}", dir.display());
    for seed in seeds {
        let data = std::fs::read(&seed).unwrap_or_else(|e| panic!("{}: {e}", seed.display()));
        assert!(
            strata_e2e::fuzzing::container_open_planned(&data),
            "{} does not open as a container (regenerate it: see tests/fuzz/README.md)",
            seed.display()
        );
    }
}
