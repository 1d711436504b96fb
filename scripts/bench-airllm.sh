#!/usr/bin/env bash
# bench-airllm.sh [--runs N] [--airllm-runs N] [--new-tokens M] [--prompt TEXT]
#                 [--airllm-dtype float32|bfloat16] -- seconds per token of `runner` against
# AirLLM 4.x on the CPU, both on SmolLM2-135M-Instruct, greedy, in the same script.
#
# Builds prep and runner (release), fetches the model (scripts/fetch-smollm2.sh), prepares a bf16 and
# an nf4 container under ${STRATA_BENCH_DIR:-$HOME/.cache/strata-bench}/airllm/, and installs AirLLM
# (pinned below) once into the venv $STRATA_BENCH_DIR/venv-airllm. AirLLM splits the checkpoint into
# per-layer files once (untimed) under $STRATA_BENCH_DIR/airllm/shards. Then, interleaved so that load
# changes hit every contender alike:
#   AirLLM, --airllm-runs times (default 3), each in a fresh process, at 1 and 2 torch threads:
#     AutoModel.from_pretrained(MODEL, device="cpu", dtype=torch.<DTYPE>, compression=None,
#     layer_shards_saving_path=...), generate(do_sample=False, max_new_tokens=M) on PROMPT; every
#     token is timed by a streamer (everything AirLLM does per token: streaming each layer from its
#     file, the gc/malloc_trim after every layer, sampling). No patch to AirLLM.
#   runner bench --prompt-tokens P --new-tokens M --threads T, --runs times (default 5), with
#     --max-memory 0 (every layer read again for every token, as AirLLM does) and with the default
#     budget (whole model resident), on both containers, T = 1 and 2 (P = PROMPT's token count).
#     --max-memory 0 runs twice: with the default --io (io_uring + O_DIRECT: from the disk at every
#     token) and with --io mmap (from the page cache, which is where AirLLM's reads of this small
#     model come from).
# Seconds per token = decode time / decoded tokens (the first token, which includes the prompt pass,
# is reported apart). Then checks that AirLLM's greedy text equals `runner generate --temperature 0`
# on the bf16 container for the same PROMPT and M (exit 1 if not).
# Defaults: M = 8, PROMPT "The capital of France is", DTYPE float32 (the bf16 weights computed in
# f32, as strata does; bfloat16, AirLLM's default from config.json, computes in bf16: not exact).
# Prints every run, the medians, the ratios AirLLM s/token / strata s/token, the text check, and on
# the last line the ratios at 1 thread against bf16: default budget, --max-memory 0 --io mmap, and
# --max-memory 0 from the disk.
# Env: PYTHON (default python3, >= 3.10), AIRLLM_TORCH_SITE=<site-packages dir holding torch>: put
# that torch into the venv through a .pth file instead of downloading torch (several GB of CUDA
# wheels from PyPI); pip then installs only what that site lacks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUNS=5
AIR_RUNS=3
NEW=8
PROMPT="The capital of France is"
DTYPE=float32
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS="${2:?--runs needs a number}"; shift 2 ;;
    --airllm-runs) AIR_RUNS="${2:?--airllm-runs needs a number}"; shift 2 ;;
    --new-tokens) NEW="${2:?--new-tokens needs a number}"; shift 2 ;;
    --prompt) PROMPT="${2:?--prompt needs a text}"; shift 2 ;;
    --airllm-dtype) DTYPE="${2:?--airllm-dtype needs float32 or bfloat16}"; shift 2 ;;
    -h|--help) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-airllm.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for v in "$RUNS" "$AIR_RUNS" "$NEW"; do
  case "$v" in ''|*[!0-9]*|0) echo "bench-airllm.sh: counts must be positive integers" >&2; exit 2 ;; esac
done
[ "$NEW" -ge 2 ] || { echo "bench-airllm.sh: --new-tokens must be at least 2" >&2; exit 2; }
case "$DTYPE" in float32|bfloat16) ;; *) echo "bench-airllm.sh: --airllm-dtype is float32 or bfloat16" >&2; exit 2 ;; esac
[ -n "$PROMPT" ] || { echo "bench-airllm.sh: --prompt must not be empty" >&2; exit 2; }

# AirLLM 4.0.0 and versions it works with (checked by this script: it runs and its greedy text
# equals strata's). torch from PyPI is the CUDA build (~4 GB with its nvidia-* wheels); AirLLM runs
# it on the CPU.
AIRLLM_PKGS=(airllm==4.0.0 transformers==5.23.0 tokenizers==0.23.3 accelerate==1.15.0
  safetensors==0.8.0 huggingface-hub==2.4.0 numpy==2.4.6 scipy==1.17.1 sentencepiece==0.2.3
  tqdm==4.70.1)
TORCH_PKG=torch==2.15.0

PYTHON="${PYTHON:-python3}"
BENCH_DIR="${STRATA_BENCH_DIR:-$HOME/.cache/strata-bench}"
WORK="$BENCH_DIR/airllm"
VENV="$BENCH_DIR/venv-airllm"
LOGS="$WORK/logs"
mkdir -p "$WORK" "$LOGS"
log() { echo "bench-airllm.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {r = a / b; printf (r < 10 ? "%.2f" : "%.0f"), r}'; }

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set PYTHON=/path/to/python3)"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || die "$PYTHON is $("$PYTHON" -V 2>&1); transformers 5 needs Python >= 3.10 (set PYTHON=...)"

log "building prep and runner (release)"
cargo build --release --locked -p strata-prep --bin prep -p strata-runner --bin runner >&2
PREP=target/release/prep
RUNNER=target/release/runner

MODEL="$(scripts/fetch-smollm2.sh | tail -n 1)"
[ -f "$MODEL/model.safetensors" ] || die "fetch-smollm2.sh gave $MODEL, which has no model.safetensors"

for q in bf16 nf4; do
  if "$RUNNER" verify "$WORK/smollm2-$q" >/dev/null 2>&1; then
    log "reusing $WORK/smollm2-$q (runner verify passed)"
  else
    log "preparing the $q container in $WORK/smollm2-$q"
    rm -rf "$WORK/smollm2-$q"
    "$PREP" "$MODEL" --out "$WORK/smollm2-$q" --quant "$q" --quiet
  fi
done

# ---- AirLLM venv ------------------------------------------------------------------------------
TORCH_SITE="${AIRLLM_TORCH_SITE:-}"
if [ -n "$TORCH_SITE" ]; then
  TORCH_SITE="$(cd "$TORCH_SITE" 2>/dev/null && pwd)" || die "AIRLLM_TORCH_SITE=$AIRLLM_TORCH_SITE is not a directory"
  [ -d "$TORCH_SITE/torch" ] || die "AIRLLM_TORCH_SITE=$TORCH_SITE holds no torch/ package"
fi
STAMP="$("$PYTHON" -V 2>&1) ${AIRLLM_PKGS[*]} ${TORCH_SITE:-$TORCH_PKG}"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.airllm-stamp" 2>/dev/null)" = "$STAMP" ]; then
  log "reusing venv $VENV"
else
  if [ -n "$TORCH_SITE" ]; then what="torch from $TORCH_SITE"; else what="$TORCH_PKG: several GB"; fi
  log "creating venv $VENV (${AIRLLM_PKGS[*]}, $what)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV" || die "'$PYTHON -m venv' failed (on Debian: apt-get install python3-venv)"
  PKGS=("${AIRLLM_PKGS[@]}")
  if [ -n "$TORCH_SITE" ]; then
    # Appended to sys.path after the venv's own site-packages: the pinned packages installed here
    # win over any other version in that site; pip sees its torch and does not download one.
    SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "$TORCH_SITE" > "$SITE/zz-airllm-torch-site.pth"
  else
    PKGS+=("$TORCH_PKG")
  fi
  "$VENV/bin/python" -m pip install --disable-pip-version-check --no-cache-dir -q "${PKGS[@]}" >"$LOGS/pip.log" 2>&1 \
    || { tail -n 20 "$LOGS/pip.log" >&2; die "pip install of ${PKGS[*]} failed (log: $LOGS/pip.log)"; }
  "$VENV/bin/python" -c 'import torch, transformers, airllm' >"$LOGS/import.log" 2>&1 \
    || { tail -n 20 "$LOGS/import.log" >&2; die "the venv $VENV cannot import torch/transformers/airllm"; }
  echo "$STAMP" > "$VENV/.airllm-stamp"
fi
VERSIONS="$("$VENV/bin/python" -c 'import importlib.metadata as m
print(", ".join(f"{p} {m.version(p)}" for p in ("airllm", "torch", "transformers", "accelerate", "safetensors")))')"
log "AirLLM venv: $VERSIONS"

# One AirLLM run in a fresh process: prints one JSON line (prompt ids, generated ids and text,
# seconds per token, the first one included). Everything AirLLM prints goes to stderr.
DRIVER="$WORK/airllm_driver.py"
cat > "$DRIVER" <<'EOF'
import contextlib, json, sys, time
model_dir, shards, threads, new, prompt, dtype_name = sys.argv[1:7]
threads, new = int(threads), int(new)
import torch
torch.set_num_threads(threads)
from transformers.generation.streamers import BaseStreamer
from airllm import AutoModel

class Clock(BaseStreamer):
    """generate() calls put() once with the prompt, then once per new token, right after it is chosen."""
    def __init__(self):
        self.times = []
    def put(self, value):
        self.times.append(time.perf_counter())
    def end(self):
        pass

with contextlib.redirect_stdout(sys.stderr):
    t = time.perf_counter()
    # The first construction splits the checkpoint into layer files (once); later ones find them.
    model = AutoModel.from_pretrained(model_dir, device="cpu", dtype=getattr(torch, dtype_name),
                                      layer_shards_saving_path=shards, compression=None)
    load_s = time.perf_counter() - t
    ids = model.tokenizer(prompt, return_tensors="pt").input_ids
    clock = Clock()
    out = []
    if new > 0:
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=new, do_sample=False, streamer=clock)[0]
        out = out[ids.shape[1]:].tolist()
per_token = [b - a for a, b in zip(clock.times, clock.times[1:])]
print(json.dumps({"load_s": load_s, "prompt_ids": ids[0].tolist(), "ids": out,
                  "text": model.tokenizer.decode(out), "token_s": per_token,
                  "torch_threads": torch.get_num_threads()}))
EOF

json_field() { "$PYTHON" -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$2" "$1"; }

# airllm_run THREADS TAG -> one JSON line on stdout; log in $LOGS/airllm-TAG.log
airllm_run() {
  local out
  out="$(nice -n 10 "$VENV/bin/python" "$DRIVER" "$MODEL" "$WORK/shards" "$1" "${3:-$NEW}" "$PROMPT" "$DTYPE" \
    2>"$LOGS/airllm-$2.log")" || { tail -n 30 "$LOGS/airllm-$2.log" >&2; die "AirLLM run $2 failed (log: $LOGS/airllm-$2.log)"; }
  echo "$out"
}

log "AirLLM: splitting the checkpoint into layer files once (untimed) and tokenizing the prompt"
PREP_JSON="$(airllm_run 1 prepare 0)"
P="$("$PYTHON" -c 'import json, sys; print(len(json.loads(sys.argv[1])["prompt_ids"]))' "$PREP_JSON")"
log "prompt: \"$PROMPT\" = $P tokens $(json_field prompt_ids "$PREP_JSON")"

# strata_run DIR THREADS [runner options] -> "s_per_token first_token_s"
strata_run() {
  local dir="$1" threads="$2"; shift 2
  nice -n 10 "$RUNNER" bench "$dir" --prompt-tokens "$P" --new-tokens "$NEW" --threads "$threads" -q "$@" |
    "$PYTHON" -c 'import json, sys
j = json.load(sys.stdin)
print("%.6f %.6f" % (j["decode_seconds"] / j["new_tokens"], j["prompt_tokens"] / j["prefill_tokens_per_s"]))'
}

# container, budget, --io
CONFIGS=("bf16 0 auto" "bf16 0 mmap" "bf16 default auto" "nf4 0 auto" "nf4 0 mmap" "nf4 default auto")
describe() {
  case "$1 $2" in
    "0 auto") echo "--max-memory 0 (every layer read for every token; default --io: O_DIRECT, from the disk)" ;;
    "0 mmap") echo "--max-memory 0 --io mmap (every layer read for every token, from the page cache)" ;;
    *) echo "default budget (whole model resident)" ;;
  esac
}
declare -A S F
declare -a A1 A2 A1F A2F
AIR_TEXT=""
log "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
N=$(( RUNS > AIR_RUNS ? RUNS : AIR_RUNS ))
for i in $(seq "$N"); do
  line="run $i:"
  if [ "$i" -le "$AIR_RUNS" ]; then
    for t in 1 2; do
      j="$(airllm_run "$t" "run$i-t$t")"
      read -r spt first text_ok < <("$PYTHON" -c 'import json, sys, statistics
j = json.loads(sys.argv[1]); n = int(sys.argv[2]); d = j["token_s"]
if len(d) != n:
    sys.exit(f"AirLLM generated {len(d)} tokens, not {n} (end of sequence?): pick another --prompt")
print("%.6f %.6f ok" % (sum(d[1:]) / (n - 1), d[0]))' "$j" "$NEW") || die "bad AirLLM result: $j"
      text="$(json_field text "$j")"
      if [ -z "$AIR_TEXT" ]; then AIR_TEXT="$text"; AIR_JSON="$j"
      elif [ "$text" != "$AIR_TEXT" ]; then die "AirLLM's text changed between runs: \"$AIR_TEXT\" vs \"$text\""; fi
      if [ "$t" = 1 ]; then A1+=("$spt"); A1F+=("$first"); else A2+=("$spt"); A2F+=("$first"); fi
      line="$line AirLLM ${t}t $spt (first $first),"
    done
  fi
  if [ "$i" -le "$RUNS" ]; then
    for c in "${CONFIGS[@]}"; do
      read -r q mm io <<<"$c"
      opts=(--io "$io")
      [ "$mm" = default ] || opts+=(--max-memory "$mm")
      for t in 1 2; do
        r="$(strata_run "$WORK/smollm2-$q" "$t" "${opts[@]}")"
        S["$c $t"]+="${r% *} "; F["$c $t"]+="${r#* } "
        line="$line $q/$mm/$io ${t}t ${r% *},"
      done
    done
  fi
  echo "${line%,} (s/token)"
done
log "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

# ---- the text check -----------------------------------------------------------------------------
nice -n 10 "$RUNNER" generate "$WORK/smollm2-bf16" --prompt "$PROMPT" --max-new-tokens "$NEW" \
  --temperature 0 --max-memory 0 --threads 1 -q >"$WORK/strata-text.txt" 2>"$LOGS/strata-generate.log" \
  || { cat "$LOGS/strata-generate.log" >&2; die "runner generate failed"; }
TEXT_CHECK="$("$PYTHON" - "$WORK/strata-text.txt" "$AIR_JSON" <<'EOF'
import json, sys
strata = open(sys.argv[1], encoding="utf-8").read()
strata = strata[:-1] if strata.endswith("\n") else strata   # generate ends its output with one newline
air = json.loads(sys.argv[2])["text"]
if strata == air:
    print(f"identical: {air!r}")
else:
    k = next((i for i, (a, b) in enumerate(zip(air, strata)) if a != b), min(len(air), len(strata)))
    print(f"DIFFERENT from character {k}: AirLLM {air!r}, strata {strata!r}")
EOF
)"

# ---- report -------------------------------------------------------------------------------------
ma1=$(median "${A1[@]}"); ma2=$(median "${A2[@]}"); ma1f=$(median "${A1F[@]}"); ma2f=$(median "${A2F[@]}")
echo "median seconds per token (SmolLM2-135M-Instruct, prompt of $P tokens, $NEW new tokens, greedy;"
echo "  AirLLM $AIR_RUNS runs, strata $RUNS runs; first token = prompt pass + first token, apart):"
echo "  AirLLM ($VERSIONS; CPU, $DTYPE compute, no compression):"
echo "    1 thread $ma1 (first token $ma1f), 2 threads $ma2 (first token $ma2f)"
declare -A M
for c in "${CONFIGS[@]}"; do
  read -r q mm io <<<"$c"
  for t in 1 2; do
    # shellcheck disable=SC2086
    M["$c $t"]=$(median ${S["$c $t"]})
    # shellcheck disable=SC2086
    mf=$(median ${F["$c $t"]})
    if [ "$t" = 1 ]; then l="    1 thread ${M["$c $t"]} (first token $mf)"; else l="$l, 2 threads ${M["$c $t"]} (first token $mf)"; fi
  done
  echo "  strata $q, $(describe "$mm" "$io"):"
  echo "$l"
done
echo "ratios AirLLM s/token / strata s/token (same thread count):"
for c in "${CONFIGS[@]}"; do
  read -r q mm io <<<"$c"
  echo "  vs strata $q, $(describe "$mm" "$io" | sed 's/ (.*//'): 1 thread $(ratio "$ma1" "${M["$c 1"]}")x, 2 threads $(ratio "$ma2" "${M["$c 2"]}")x"
done
echo "greedy text, AirLLM vs runner generate (bf16, --max-memory 0): $TEXT_CHECK"
case "$TEXT_CHECK" in identical*) ;; *) log "error: the greedy texts differ"; exit 1 ;; esac
echo "AirLLM / strata s/token at 1 thread, bf16: default budget (each tool's default) $(ratio "$ma1" "${M["bf16 default auto 1"]}")x; every layer read per token from the page cache (--max-memory 0 --io mmap, as AirLLM reads) $(ratio "$ma1" "${M["bf16 0 mmap 1"]}")x; from the disk with O_DIRECT (--max-memory 0, disk-bound) $(ratio "$ma1" "${M["bf16 0 auto 1"]}")x"
