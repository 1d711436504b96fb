#!/usr/bin/env bash
# scripts/test.sh -- the whole test suite: format, lints, every test (unit, property,
# end-to-end on the real SmolLM2-135M-Instruct and on tiny transformers fixtures, `runner serve`
# through the openai client and headless Chromium: scripts/test-serve.sh; containers on S3
# and HTTP servers: scripts/test-remote.sh; the aarch64 build, linted and its unit tests run under
# qemu-user: scripts/test-aarch64.sh).
# Installs what it needs by itself: the test models are built by scripts/fetch-smollm2.sh and
# scripts/fetch-model.sh gemma3-270m and 0.5b (a private Python venv under the model cache; needs
# python3 >= 3.11 and PyPI access).
# Env: STRATA_MODELS (model cache dir, default ~/.cache/strata-models); STRATA_FUZZ=0 skips
# the bounded fuzz run, STRATA_FUZZ_SECS sets its seconds per target (default 20);
# STRATA_AARCH64=0 skips the aarch64 tier.
# Tests that cannot check what they are for here (no permission to mount a tmpfs, no
# AVX2) append a `SKIP: <test>: <reason>` line to $STRATA_SKIP_LOG; the run ends with
# `skipped: N` and those lines, passed or failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
step() { printf '\n== %s ==\n' "$*" >&2; }
START=$SECONDS

STRATA_SKIP_LOG="$(mktemp)"
export STRATA_SKIP_LOG
FUZZ_SCRATCH=""
on_exit() {
  printf '\nskipped: %s\n' "$(grep -c '^SKIP: ' "$STRATA_SKIP_LOG" || true)" >&2
  sed -n 's/^SKIP: /  /p' "$STRATA_SKIP_LOG" >&2
  rm -f "$STRATA_SKIP_LOG"
  if [[ -n "$FUZZ_SCRATCH" ]]; then rm -rf "$FUZZ_SCRATCH"; fi
}
trap on_exit EXIT

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "fetch the test models"
STRATA_SMOLLM2="$(scripts/fetch-smollm2.sh | tail -n 1)"
export STRATA_SMOLLM2
STRATA_GEMMA3="$(scripts/fetch-model.sh gemma3-270m | tail -n 1)"
export STRATA_GEMMA3
STRATA_QWEN05="$(scripts/fetch-model.sh 0.5b | tail -n 1)"
export STRATA_QWEN05

step "build binaries"
cargo build --workspace --bins --locked

step "cargo test"
cargo test --workspace --locked

step "aarch64: clippy, and the runner's unit tests under qemu-user (NEON kernels with and without sdot)"
scripts/test-aarch64.sh

step "runner serve: OpenAI client, Ollama API, chat page in headless Chromium"
scripts/test-serve.sh

step "containers on object storage: push, run from s3:// and http://, faults (SeaweedFS, range server)"
scripts/test-remote.sh

step "bounded fuzz run (tests/fuzz)"
# Each libFuzzer target runs for STRATA_FUZZ_SECS (default 20) from the stored
# corpus; new inputs go to a scratch dir, crashes to tests/fuzz/artifacts/.
# cargo-fuzz is installed once (~2 min) unless STRATA_FUZZ=0; the first fuzz
# build takes ~10 min on 2 cores (later ones are incremental).
if [[ "${STRATA_FUZZ:-1}" == 0 ]]; then
  echo "SKIP: bounded fuzz run: STRATA_FUZZ=0" | tee -a "$STRATA_SKIP_LOG" >&2
else
  if ! cargo fuzz --version >/dev/null 2>&1; then
    time cargo install cargo-fuzz --locked
  fi
  FUZZ_SCRATCH="$(mktemp -d)"
  RUSTC_BOOTSTRAP=1 cargo fuzz build --fuzz-dir tests/fuzz -s none
  for target in stage_header manifest safetensors_header gguf_header hf_config tokenizer_config tokenizer_model container_open; do
    mkdir -p "$FUZZ_SCRATCH/$target"
    RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir tests/fuzz -s none "$target" \
      "$FUZZ_SCRATCH/$target" "tests/fuzz/corpus/$target" -- \
      -max_total_time="${STRATA_FUZZ_SECS:-20}" -rss_limit_mb=2048 -timeout=10
  done
fi

echo "all tests passed in $((SECONDS - START))s" >&2
