#!/usr/bin/env bash
# bench-resident.sh [--model smollm2|qwen1.5b] [--runs N] [--prompt-tokens P] [--new-tokens M]
#                   [--verify K,K,...] -- decode and prefill speed of `runner` with the whole model
# resident, against llama.cpp on the same machine, at equal bits:
#   nf4   strata nf4 (block 64) vs llama.cpp on the model's own GGUF (SmolLM2: Q4_1; Qwen2.5-Coder-
#         1.5B-Instruct: Q4_K_M)
#   int8  strata int8 (block 64) vs llama.cpp Q8_0 (made by llama.cpp's quantizer from that GGUF)
#   gguf  the same GGUF on both: strata's container made from it with its encodings kept
#         (`prep FILE.gguf`) vs llama.cpp reading it.
#
# --model: smollm2 (default; SmolLM2-135M-Instruct, scripts/fetch-smollm2.sh) or qwen1.5b
# (Qwen2.5-Coder-1.5B-Instruct, scripts/fetch-model.sh 1.5b). Builds prep and runner in release mode,
# prepares the three containers under ${STRATA_BENCH_DIR:-$HOME/.cache/strata-bench}/MODEL-{nf4,int8,
# gguf}, gets llama.cpp and the GGUFs through scripts/llama-cpp.sh, then runs N times (default 5),
# interleaved so that load changes hit every contender alike, with T = 1 and 2 threads:
#   runner bench --prompt-tokens P --new-tokens M --threads T
#   llama.cpp via llama-cpp-python (n_threads = n_threads_batch = T): the P prompt tokens in one
#   batch (timed: prefill), then M greedy single-token evaluations (timed: decode). When the batch
#   evaluation fails (llama-cpp-python 0.3.36's llama.cpp crashed on batches > 1 of Q4_1 on an
#   Intel AMX machine), the prompt goes in one token at a time and prefill is reported as 0.
# Both decode greedily after the same synthetic prompt (ids (i·7919 + 13) mod vocab) and include
# the argmax in the decode time. P defaults to 64 (smollm2) or 128 (qwen1.5b), M to 64 or 32.
# --verify K,K,...: also the seconds of one speculative verification pass of K tokens (runner bench
# --verify-pass K, median of its 3 passes) for each K on the gguf and nf4 containers, 2 threads.
# Prints every run's tokens/s, the medians, and on the last lines the ratios strata / llama.cpp of
# the medians (decode, then prefill), per pair and thread count.
# Env: STRATA_KERNELS picks the runner's kernel path (scalar, avx2, avx512), default the best one;
# with STRATA_KERNELS=avx2, llama.cpp is the AVX2-only build too (LLAMA_CPP_ISA=avx2 of
# scripts/llama-cpp.sh), unless LLAMA_CPP_ISA says otherwise.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUNS=5
MODEL=smollm2
PROMPT=""
NEW=""
VERIFY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="${2:?--model needs smollm2 or qwen1.5b}"; shift 2 ;;
    --runs) RUNS="${2:?--runs needs a number}"; shift 2 ;;
    --prompt-tokens) PROMPT="${2:?--prompt-tokens needs a number}"; shift 2 ;;
    --new-tokens) NEW="${2:?--new-tokens needs a number}"; shift 2 ;;
    --verify) VERIFY="${2:?--verify needs K,K,...}"; shift 2 ;;
    -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-resident.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$MODEL" in
  smollm2) OWN=Q4_1 NAME="SmolLM2-135M-Instruct"; PROMPT="${PROMPT:-64}"; NEW="${NEW:-64}" ;;
  qwen1.5b) OWN=Q4_K_M NAME="Qwen2.5-Coder-1.5B-Instruct"; PROMPT="${PROMPT:-128}"; NEW="${NEW:-32}" ;;
  *) echo "bench-resident.sh: --model is smollm2 or qwen1.5b" >&2; exit 2 ;;
esac
for v in "$RUNS" "$PROMPT" "$NEW" ${VERIFY//,/ }; do
  case "$v" in ''|*[!0-9]*|0) echo "bench-resident.sh: counts must be positive integers" >&2; exit 2 ;; esac
done
BENCH_DIR="${STRATA_BENCH_DIR:-$HOME/.cache/strata-bench}"
mkdir -p "$BENCH_DIR"
log() { echo "bench-resident.sh: $*" >&2; }

log "building prep and runner (release)"
cargo build --release --locked -p strata-prep --bin prep -p strata-runner --bin runner >&2

if [ "${STRATA_KERNELS:-}" = avx2 ]; then export LLAMA_CPP_ISA="${LLAMA_CPP_ISA:-avx2}"; fi
PY="$(scripts/llama-cpp.sh python)"
declare -A GGUF=([nf4]="$(scripts/llama-cpp.sh gguf "$OWN" "$MODEL")" [int8]="$(scripts/llama-cpp.sh gguf Q8_0 "$MODEL")")
GGUF[gguf]="${GGUF[nf4]}"
# The HF folder beside the GGUF (both fetch scripts build it there).
SRC="$(dirname "${GGUF[nf4]}")"
for q in nf4 int8 gguf; do
  out="$BENCH_DIR/$MODEL-$q"
  log "preparing the $q container in $out"
  rm -rf "$out"
  if [ "$q" = gguf ]; then
    target/release/prep "${GGUF[gguf]}" --out "$out" --quiet
  else
    target/release/prep "$SRC" --out "$out" --quant "$q" --quiet
  fi
done

# llama.cpp's prefill and decode tokens/s with T threads, same protocol as `runner bench`:
# python -c "$LLAMA_BENCH" GGUF THREADS PROMPT NEW batch|single. `batch` evaluates the prompt in one
# batch (timed); `single` one token at a time (untimed, prefill reported as 0).
LLAMA_BENCH='
import sys, time
import numpy as np
from llama_cpp import Llama

path, threads, prompt, new, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=512,
            n_batch=512, verbose=False)
vocab = llm.n_vocab()
ids = [(i * 7919 + 13) % vocab for i in range(prompt)]
prefill = 0.0
if mode == "batch":
    t = time.perf_counter()
    llm.eval(ids)
    prefill = prompt / (time.perf_counter() - t)
else:
    for i in ids:
        llm.eval([i])
t = time.perf_counter()
for _ in range(new):
    llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
print(f"{prefill:.3f} {new / (time.perf_counter() - t):.3f}")
'
# llama_run QUANT THREADS -> "PREFILL DECODE"; a batch evaluation that fails (it crashed on an Intel AMX
# machine) falls back to single tokens.
llama_run() {
  local args=("${GGUF[$1]}" "$2" "$PROMPT" "$NEW")
  "$PY" -c "$LLAMA_BENCH" "${args[@]}" batch 2>/dev/null || "$PY" -c "$LLAMA_BENCH" "${args[@]}" single
}

# strata_run QUANT THREADS -> "PREFILL DECODE"
strata_run() {
  target/release/runner bench "$BENCH_DIR/$MODEL-$1" --prompt-tokens "$PROMPT" --new-tokens "$NEW" --threads "$2" -q |
    "$PY" -c 'import json, sys; j = json.load(sys.stdin); print("%.3f %.3f" % (j["prefill_tokens_per_s"], j["decode_tokens_per_s"]))'
}

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

# RES[who-quant-threads-what] holds one figure per run (who: s strata, l llama.cpp; what: p, d).
declare -A RES
log "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq "$RUNS"); do
  line="run $i: prefill/decode tokens/s:"
  for q in nf4 int8 gguf; do
    for t in 1 2; do
      read -r sp sd <<<"$(strata_run "$q" "$t")"
      read -r lp ld <<<"$(llama_run "$q" "$t")"
      RES[s-$q-$t-p]+=" $sp" RES[s-$q-$t-d]+=" $sd" RES[l-$q-$t-p]+=" $lp" RES[l-$q-$t-d]+=" $ld"
      line="$line $q ${t}T strata $sp/$sd llama.cpp $lp/$ld;"
    done
  done
  echo "$line"
done
log "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

declare -A MED
for k in "${!RES[@]}"; do
  # shellcheck disable=SC2086
  MED[$k]=$(median ${RES[$k]})
done
declare -A LABEL=([s-nf4]="strata nf4 b64" [l-nf4]="llama.cpp $OWN" [s-int8]="strata int8 b64"
  [l-int8]="llama.cpp Q8_0" [s-gguf]="strata $OWN GGUF kept" [l-gguf]="llama.cpp $OWN (same file)")
echo "median tokens/s ($NAME, $PROMPT prompt + $NEW new tokens, $RUNS runs; kernels: ${STRATA_KERNELS:-best}; llama.cpp build: ${LLAMA_CPP_ISA:-native}):"
for q in nf4 int8 gguf; do
  for who in s l; do
    printf '  %-28s decode 1 thread %s, 2 threads %s; prefill 1 thread %s, 2 threads %s\n' \
      "${LABEL[$who-$q]}:" "${MED[$who-$q-1-d]}" "${MED[$who-$q-2-d]}" "${MED[$who-$q-1-p]}" "${MED[$who-$q-2-p]}"
  done
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "n/a" }'; }
for what in d p; do
  [ "$what" = d ] && w=decode || w=prefill
  line="ratio strata/llama.cpp $w tokens/s:"
  for q in nf4 int8 gguf; do
    line="$line ${LABEL[s-$q]#strata } vs ${LABEL[l-$q]#llama.cpp } 1 thread $(ratio "${MED[s-$q-1-$what]}" "${MED[l-$q-1-$what]}"), 2 threads $(ratio "${MED[s-$q-2-$what]}" "${MED[l-$q-2-$what]}");"
  done
  echo "$line"
done

if [ -n "$VERIFY" ]; then
  for q in gguf nf4; do
    line="verification pass seconds ($q, 2 threads, median of 3):"
    for k in ${VERIFY//,/ }; do
      s=$(target/release/runner bench "$BENCH_DIR/$MODEL-$q" --prompt-tokens "$PROMPT" --new-tokens 1 \
        --threads 2 --verify-pass "$k" -q | "$PY" -c 'import json, sys; print("%.4f" % json.load(sys.stdin)["verify_pass_seconds"])')
      line="$line k=$k $s;"
    done
    echo "$line"
  done
fi
