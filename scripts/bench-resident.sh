#!/usr/bin/env bash
# bench-resident.sh [--runs N] [--prompt-tokens P] [--new-tokens M] -- decode speed of `runner` on
# SmolLM2-135M-Instruct (NF4, whole model resident) against llama.cpp on the same machine.
#
# Builds prep and runner in release mode, fetches the model (scripts/fetch-smollm2.sh), prepares an
# NF4 container under ${STRATA_BENCH_DIR:-$HOME/.cache/strata-bench}/smollm2-nf4, then runs N times
# (default 5), interleaved so that load changes hit every contender alike:
#   runner bench --prompt-tokens P --new-tokens M --threads T     (T = 1 and 2)
#   llama.cpp on the model's own Q4_1 GGUF, via llama-cpp-python: P prompt tokens evaluated (one
#   at a time), then M greedy single-token evaluations timed (n_threads = T)
# Both decode greedily after the same synthetic prompt (ids (i·7919 + 13) mod vocab) and include
# the argmax in the decode time. llama-cpp-python (which compiles llama.cpp: minutes) is installed
# once into the venv $STRATA_BENCH_DIR/venv-llama.
# Prints every run's decode tokens/s, the medians, and on the last line the ratios
# strata / llama.cpp of the medians (1 and 2 threads). Env: STRATA_KERNELS picks the runner's
# kernel path (scalar, avx2, avx512), default the best one; PYTHON (default python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUNS=5
PROMPT=64
NEW=64
LLAMA_CPP_PYTHON="llama-cpp-python==0.3.36"
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS="${2:?--runs needs a number}"; shift 2 ;;
    --prompt-tokens) PROMPT="${2:?--prompt-tokens needs a number}"; shift 2 ;;
    --new-tokens) NEW="${2:?--new-tokens needs a number}"; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-resident.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for v in "$RUNS" "$PROMPT" "$NEW"; do
  case "$v" in ''|*[!0-9]*|0) echo "bench-resident.sh: counts must be positive integers" >&2; exit 2 ;; esac
done
PYTHON="${PYTHON:-python3}"
BENCH_DIR="${STRATA_BENCH_DIR:-$HOME/.cache/strata-bench}"
OUT="$BENCH_DIR/smollm2-nf4"
VENV="$BENCH_DIR/venv-llama"
mkdir -p "$BENCH_DIR"
log() { echo "bench-resident.sh: $*" >&2; }

log "building prep and runner (release)"
cargo build --release --locked -p strata-prep --bin prep -p strata-runner --bin runner >&2

MODEL="$(scripts/fetch-smollm2.sh | tail -n 1)"
GGUF="$MODEL/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$GGUF" ] || { log "no $GGUF"; exit 1; }

log "preparing the NF4 container in $OUT"
rm -rf "$OUT"
target/release/prep "$MODEL" --out "$OUT" --quant nf4 --quiet

if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
  log "installing $LLAMA_CPP_PYTHON into $VENV (compiles llama.cpp: several minutes)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$VENV/bin/pip" install --quiet "$LLAMA_CPP_PYTHON" >&2
fi

# llama.cpp's decode tokens/s with T threads, same protocol as `runner bench`.
llama_run() {
  "$VENV/bin/python" - "$GGUF" "$1" "$PROMPT" "$NEW" <<'EOF'
import sys, time
import numpy as np
from llama_cpp import Llama

path, threads, prompt, new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=512,
            n_batch=512, verbose=False)
vocab = llm.n_vocab()
# The prompt goes in one token at a time (untimed): on this machine the Q4_1 batch path of the
# llama.cpp that llama-cpp-python 0.3.36 builds (AMX) crashes for batches > 1.
for i in range(prompt):
    llm.eval([(i * 7919 + 13) % vocab])
t = time.perf_counter()
for _ in range(new):
    llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
print(f"{new / (time.perf_counter() - t):.3f}")
EOF
}

strata_run() {
  target/release/runner bench "$OUT" --prompt-tokens "$PROMPT" --new-tokens "$NEW" --threads "$1" -q |
    "$PYTHON" -c 'import json, sys; print("%.3f" % json.load(sys.stdin)["decode_tokens_per_s"])'
}

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

declare -a S1 S2 L1 L2
log "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq "$RUNS"); do
  S1+=("$(strata_run 1)")
  L1+=("$(llama_run 1)")
  S2+=("$(strata_run 2)")
  L2+=("$(llama_run 2)")
  echo "run $i: decode tokens/s: strata 1 thread ${S1[-1]}, llama.cpp 1 thread ${L1[-1]}, strata 2 threads ${S2[-1]}, llama.cpp 2 threads ${L2[-1]}"
done
log "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

ms1=$(median "${S1[@]}"); ml1=$(median "${L1[@]}"); ms2=$(median "${S2[@]}"); ml2=$(median "${L2[@]}")
echo "median decode tokens/s (SmolLM2-135M, $PROMPT prompt + $NEW new tokens, $RUNS runs):"
echo "  strata NF4 b64 (kernels: ${STRATA_KERNELS:-best}): 1 thread $ms1, 2 threads $ms2"
echo "  llama.cpp Q4_1 ($LLAMA_CPP_PYTHON):      1 thread $ml1, 2 threads $ml2"
awk -v a="$ms1" -v b="$ml1" -v c="$ms2" -v d="$ml2" \
  'BEGIN {printf "ratio strata/llama.cpp decode tokens/s: 1 thread %.2f, 2 threads %.2f\n", a / b, c / d}'
