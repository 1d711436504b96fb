#!/usr/bin/env bash
# scripts/demo.sh -- the whole path on a real model, from a fresh clone:
#   build (release) -> fetch SmolLM2-135M-Instruct -> prep (NF4) -> verify -> generate.
# Env: STRATA_MODELS (model cache, default ~/.cache/strata-models),
#      STRATA_DEMO_OUT (container dir, default $STRATA_MODELS/smollm2-135m-instruct.strata-nf4),
#      PROMPT (default: a question about the water cycle).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
step() { printf '\n== %s ==\n' "$*" >&2; }

step "cargo build --release"
cargo build --release --locked --bins
PREP=target/release/prep
RUNNER=target/release/runner

step "fetch SmolLM2-135M-Instruct"
MODEL="$(scripts/fetch-smollm2.sh | tail -n 1)"
OUT="${STRATA_DEMO_OUT:-$(dirname "$MODEL")/smollm2-135m-instruct.strata-nf4}"

step "prep $MODEL -> $OUT (NF4)"
"$PREP" "$MODEL" --out "$OUT" --quant nf4

step "runner verify"
"$RUNNER" verify "$OUT"

step "runner inspect"
"$RUNNER" inspect "$OUT"

PROMPT="${PROMPT:-Explain in two sentences how rain forms.}"
step "runner generate --chat (streaming every layer from disk: --max-memory 0)"
"$RUNNER" generate "$OUT" --chat --prompt "$PROMPT" --temperature 0 --max-new-tokens 80 --max-memory 0
