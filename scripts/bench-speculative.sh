#!/usr/bin/env bash
# bench-speculative.sh [--runs N] [--max-memory SIZE] [--rate MB/s] [--max-new-tokens N]
#   [--draft-max N] [--70b | --70b-only] -- speculative decoding on a throttled disk: the real
#   Qwen2.5-Coder-1.5B-Instruct (nf4) as the target, Qwen2.5-Coder-0.5B-Instruct (nf4) as the draft.
#
# Builds prep and runner (release, --locked); fetches both checkpoints with scripts/fetch-qwen.sh
# 1.5b / 0.5b and writes ${STRATA_MODELS:-$HOME/.cache/strata-models}/qwen2.5-coder-{1.5b,0.5b}-
# instruct.nf4 with `prep --quant nf4`, unless one there passes `runner verify` (the 1.5B container
# is the one bench-small-memory.sh uses). Prints `runner plan` of the target alone and with the
# draft under the same --max-memory (default 640MiB: the draft fits, resident and counted first, and
# the target streams most of its layers; the script stops if the draft does not fit).
# Each run: page cache dropped, then the command inside a block-I/O cgroup that caps reads from the
# containers' disk at RATE MB/s (default 200; cgroup v1 blkio.throttle.read_bps_device, or v2
# io.max; created under the hierarchy root and removed after). Command, the same budget for both:
#   runner generate TARGET --chat --prompt P --temperature 0 --max-new-tokens N (default 48)
#     --ctx 1024 --max-memory SIZE [--draft DRAFT --draft-max K (default 16)]
# for 3 code prompts and 3 prose prompts, plain and --draft alternately, --runs times each
# (default 1; medians when more); then one prompt that pastes a 15-line Python function and asks
# for it back with a variable renamed, plain against `--draft ngram` (prompt lookup).
# Per prompt: the wall seconds of each command (measured here: process start to exit, opening and
# the throttled first reads included), speed-up = plain / draft, the draft run's acceptance and
# tokens per target pass (its `[speculative: ...]` line), tokens generated, and whether the text is
# identical (stdout compared byte for byte: greedy speculative decoding must write exactly the
# plain text; a difference is printed in full and is a runner bug). Then a table, the geometric
# mean speed-up on code, on prose and overall (the six draft-model prompts; ngram apart).
# With --70b (off by default; the container is ~38.5 GB and takes a while to write): the
# llama3-70b-shaped random NF4 container that bench-70b.sh uses (written if absent, as that script
# does), `runner bench --prompt-tokens 8 --new-tokens 0 --ctx 512 --verify-pass K` for K = 0 (one
# token: a plain decode step), 1, 4, 8, 16 in a fresh 4 GiB memory cgroup (page cache dropped, reads
# not throttled): seconds per verification pass against K. --70b-only runs that part alone.
# The last line is the headline: the overall geometric-mean speed-up, code and prose means, and
# whether every text was identical. Logs: ${STRATA_BENCH_DIR:-$HOME/.cache/strata-bench}/
# speculative-logs. Needs root (page cache, cgroups): without it, or without a block-I/O cgroup, it
# prints a SKIP line and exits 0. Exit status: 0 done, 1 a failure or a text that differs, 2 usage.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUNS=1
MAX_MEMORY=640MiB
RATE=200
NEW_TOKENS=48
DRAFT_MAX=16
CTX=1024
DO_70B=0
DO_QWEN=1
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS="${2:?--runs needs a number}"; shift 2 ;;
    --max-memory) MAX_MEMORY="${2:?--max-memory needs a size}"; shift 2 ;;
    --rate) RATE="${2:?--rate needs MB/s}"; shift 2 ;;
    --max-new-tokens) NEW_TOKENS="${2:?--max-new-tokens needs a number}"; shift 2 ;;
    --draft-max) DRAFT_MAX="${2:?--draft-max needs a number}"; shift 2 ;;
    --70b) DO_70B=1; shift ;;
    --70b-only) DO_70B=1; DO_QWEN=0; shift ;;
    -h|--help) sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-speculative.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for v in "$RUNS" "$RATE" "$NEW_TOKENS" "$DRAFT_MAX"; do
  case "$v" in ''|*[!0-9]*|0) echo "bench-speculative.sh: --runs, --rate, --max-new-tokens and --draft-max take positive integers" >&2; exit 2 ;; esac
done

log() { echo "bench-speculative.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
calc() { awk "BEGIN { printf \"$1\n\", $2 }"; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
geomean() { awk '{ s += log($1); n++ } END { if (n) printf "%.2f\n", exp(s / n); else print "n/a" }'; }
skip() {
  local msg="SKIP: bench-speculative.sh: $1; nothing was measured"
  [ -z "${STRATA_SKIP_LOG:-}" ] || echo "$msg" >> "$STRATA_SKIP_LOG"
  echo "$msg"
  exit 0
}
# json_get KEY JSON: a scalar from a flat JSON object (first occurrence).
json_get() { sed -n "s/.*\"$1\":\"\{0,1\}\([^,\"}]*\).*/\1/p" <<<"$2" | head -n 1; }

[ "$(id -u)" = 0 ] || skip "needs root (uid $(id -u)) to drop the page cache and throttle reads with a block-I/O cgroup"

MODELS="${STRATA_MODELS:-$HOME/.cache/strata-models}"
BENCH_DIR="${STRATA_BENCH_DIR:-$HOME/.cache/strata-bench}"
LOGS="$BENCH_DIR/speculative-logs"
mkdir -p "$MODELS" "$LOGS"
TARGET="$MODELS/qwen2.5-coder-1.5b-instruct.nf4"
DRAFT="$MODELS/qwen2.5-coder-0.5b-instruct.nf4"

# ---- the throttle (as bench-slow-disk.sh) ----------------------------------------------------------
DEV_SRC="$(df --output=source "$MODELS" | tail -n 1)"
DISK="$(lsblk -no PKNAME "$DEV_SRC" 2>/dev/null | head -n 1)"
[ -n "$DISK" ] || DISK="$(basename "$DEV_SRC")"
MAJMIN="$(lsblk -dno MAJ:MIN "/dev/$DISK" 2>/dev/null | tr -d ' ')"
[ -n "$MAJMIN" ] || skip "cannot find the block device under $MODELS (df says $DEV_SRC): no throttle possible"
if [ -f /sys/fs/cgroup/blkio/blkio.throttle.read_bps_device ]; then
  IO_KIND=v1
  IO_PARENT=/sys/fs/cgroup/blkio
elif [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw io /sys/fs/cgroup/cgroup.controllers; then
  IO_KIND=v2
  IO_PARENT=/sys/fs/cgroup
  grep -qw io /sys/fs/cgroup/cgroup.subtree_control || echo +io > /sys/fs/cgroup/cgroup.subtree_control ||
    skip "cannot enable the io controller for child cgroups"
else
  skip "no block-I/O cgroup (v1 blkio or v2 io) on this machine: cannot throttle"
fi
CG=""
cg_remove() {
  if [ -n "$CG" ] && [ -d "$CG" ]; then
    if [ -f "$CG/cgroup.procs" ]; then
      while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done < "$CG/cgroup.procs"
      sleep 0.2
    fi
    [ -f "$CG/memory.force_empty" ] && echo 0 > "$CG/memory.force_empty" 2>/dev/null || true
    rmdir "$CG" 2>/dev/null || log "could not remove cgroup $CG"
  fi
  CG=""
}
trap cg_remove EXIT
trap 'exit 130' INT TERM
# throttled BYTES_PER_S OUT ERR cmd...: page cache dropped, cmd in a fresh cgroup capping reads at
# BYTES_PER_S; sets RC and WALL (seconds from the command's start to its exit).
throttled() {
  local bps="$1" out="$2" err="$3" t0 t1; shift 3
  sync; echo 3 > /proc/sys/vm/drop_caches
  CG="$IO_PARENT/strata-spec-$$"
  mkdir "$CG"
  if [ "$IO_KIND" = v1 ]; then
    echo "$MAJMIN $bps" > "$CG/blkio.throttle.read_bps_device"
  else
    echo "$MAJMIN rbps=$bps" > "$CG/io.max"
  fi
  set +e
  t0=$(date +%s.%N)
  sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$CG" "$@" >"$out" 2>"$err"
  RC=$?
  t1=$(date +%s.%N)
  set -e
  WALL=$(calc "%.2f" "$t1 - $t0")
  cg_remove
}

# ---- binaries and containers -----------------------------------------------------------------------
log "building prep and runner (release)"
cargo build --release --locked -p strata-prep --bin prep -p strata-runner --bin runner >&2
PREP=target/release/prep
RUNNER=target/release/runner

# container SIZE DIR: writes DIR from scripts/fetch-qwen.sh SIZE unless DIR passes `runner verify`.
container() {
  local size="$1" dir="$2" hf
  if [ -f "$dir/manifest.json" ] && log "verifying $dir" && "$RUNNER" verify "$dir" >&2; then
    log "reusing $dir"
    return 0
  fi
  hf="$(scripts/fetch-qwen.sh "$size" | tail -n 1)" || die "scripts/fetch-qwen.sh $size failed"
  rm -rf "$dir"
  log "writing $dir (prep --quant nf4)"
  "$PREP" "$hf" --out "$dir" --quant nf4 >&2 || die "prep failed on $hf"
}
if [ "$DO_QWEN" = 1 ]; then
container 1.5b "$TARGET"
container 0.5b "$DRAFT"

# ---- the memory plans -------------------------------------------------------------------------------
# plan_field JSON PYEXPR: a value of `runner plan --json` (p = the parsed object).
plan_field() { python3 -c "import json, sys; p = json.loads(sys.argv[1]); print($2)" "$1"; }
PLAN_ALONE="$("$RUNNER" plan "$TARGET" --max-memory "$MAX_MEMORY" --ctx "$CTX" --json)"
PLAN_PAIR="$("$RUNNER" plan "$TARGET" --draft "$DRAFT" --max-memory "$MAX_MEMORY" --ctx "$CTX" --json)"
[ "$(plan_field "$PLAN_PAIR" "'error' in p['plan']")" = False ] ||
  die "the draft does not fit in --max-memory $MAX_MEMORY: $(plan_field "$PLAN_PAIR" "p['plan']['error']")"
NL=$(plan_field "$PLAN_PAIR" "p['num_layers']")
describe_plan() {
  plan_field "$1" "'%d of %d layers resident%s, %.0f MiB resident, %.0f MiB streamed per pass' % (p['plan']['resident_layers'], p['num_layers'], ' + head' if p['plan']['head_resident'] else '', p['plan']['resident_bytes'] / 2**20, p['plan']['streamed_bytes_per_token'] / 2**20)"
}
STREAMED_PAIR=$(plan_field "$PLAN_PAIR" "p['num_layers'] - p['plan']['resident_layers']")
[ "$STREAMED_PAIR" -gt $((NL / 2)) ] ||
  log "WARNING: with the draft, the target streams only $STREAMED_PAIR of $NL layers under --max-memory $MAX_MEMORY (lower it to measure the streaming regime)"

# ---- prompts ------------------------------------------------------------------------------------------
CODE_PROMPTS=(
  "Write a Python function that checks whether a string is a palindrome."
  "Write a C function that reverses a linked list."
  "Write a JavaScript function that debounces another function."
)
PROSE_PROMPTS=(
  "Explain why the sky is blue in two short paragraphs."
  "Write a short story about a lighthouse keeper."
  "What are the main causes of inflation?"
)
NGRAM_PROMPT='Rename the variable `total` to `acc` in this Python function and return the whole function:

```python
def summarize_orders(orders, tax_rate=0.08):
    total = 0
    count = 0
    for order in orders:
        if order.get("status") != "paid":
            continue
        price = order["price"]
        quantity = order.get("quantity", 1)
        discount = order.get("discount", 0)
        subtotal = price * quantity * (1 - discount)
        total += subtotal
        count += 1
    total = total * (1 + tax_rate)
    average = total / count if count else 0
    return {"total": round(total, 2), "count": count, "average": round(average, 2)}
```'

BPS=$((RATE * 1000 * 1000))
GEN=("$RUNNER" generate "$TARGET" --chat --temperature 0 --max-new-tokens "$NEW_TOKENS" --ctx "$CTX"
  --max-memory "$MAX_MEMORY")

echo "target: $TARGET (nf4 layers, int8 embeddings and head): $(calc "%.0f MiB" "$(cat "$TARGET"/*.strata | wc -c) / 1048576") of tensor files"
echo "draft:  $DRAFT: $(calc "%.0f MiB" "$(cat "$DRAFT"/*.strata | wc -c) / 1048576") of tensor files"
echo "disk: /dev/$DISK ($MAJMIN), reads capped at $RATE MB/s with cgroup $IO_KIND; page cache dropped before each run"
echo "plan, --max-memory $MAX_MEMORY --ctx $CTX, target alone: $(describe_plan "$PLAN_ALONE")"
echo "plan, --max-memory $MAX_MEMORY --ctx $CTX, with the draft: draft $(plan_field "$PLAN_PAIR" "'%.0f MiB' % (p['draft']['resident_bytes'] / 2**20)") resident first; target $(describe_plan "$PLAN_PAIR")"
echo "command: runner generate TARGET --chat --prompt P --temperature 0 --max-new-tokens $NEW_TOKENS --ctx $CTX --max-memory $MAX_MEMORY [--draft DRAFT|ngram --draft-max $DRAFT_MAX]; $RUNS run(s) each, alternating"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -n 1), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

# one_line FILE: the file's text on one line, newlines shown as \n.
one_line() { awk '{ printf "%s%s", (NR > 1 ? "\\n" : ""), $0 }' "$1"; }

ROWS=()
CODE_SPEEDUPS=()
PROSE_SPEEDUPS=()
ALL_SAME=yes
MISMATCHES=()
# measure KIND INDEX PROMPT DRAFT_ARG: plain and speculative runs of one prompt; prints its line and
# appends to ROWS; sets SPEEDUP.
measure() {
  local kind="$1" idx="$2" prompt="$3" draft="$4" tag r p d plains=() drafts=() accs=() tpps=()
  local same=yes acc_n=0 acc_d=0 spec gen_p gen_d tps_p tps_d
  tag="$kind-$idx"
  for r in $(seq 1 "$RUNS"); do
    p="$LOGS/$tag-plain-$r" d="$LOGS/$tag-draft-$r"
    log "[$tag] run $r/$RUNS: plain"
    throttled "$BPS" "$p.out" "$p.err" "${GEN[@]}" --prompt "$prompt"
    [ "$RC" = 0 ] || die "runner failed ($tag plain): $(tail -n 1 "$p.err")"
    plains+=("$WALL")
    log "[$tag] run $r/$RUNS: --draft $(basename "$draft") ($WALL s plain)"
    throttled "$BPS" "$d.out" "$d.err" "${GEN[@]}" --prompt "$prompt" --draft "$draft" --draft-max "$DRAFT_MAX"
    [ "$RC" = 0 ] || die "runner failed ($tag --draft): $(tail -n 1 "$d.err")"
    drafts+=("$WALL")
    log "[$tag] run $r/$RUNS: $WALL s with the draft"
    spec="$(grep -o '\[speculative:.*\]' "$d.err" | tail -n 1 || true)"
    [ -n "$spec" ] || die "no [speculative: ...] line in $d.err"
    # acceptance A% (a/d), P tokens per target pass
    acc_n=$((acc_n + $(sed -n 's/.*(\([0-9]*\)\/[0-9]*).*/\1/p' <<<"$spec")))
    acc_d=$((acc_d + $(sed -n 's/.*([0-9]*\/\([0-9]*\)).*/\1/p' <<<"$spec")))
    tpps+=("$(sed -n 's/.* \([0-9.]*\) tokens per target pass.*/\1/p' <<<"$spec")")
    for f in "$LOGS/$tag-plain-1.out" "$d.out" "$p.out"; do
      cmp -s "$LOGS/$tag-plain-1.out" "$f" || same=no
    done
  done
  gen_p="$(sed -n 's/.*generated: \([0-9]*\),.*/\1/p' "$LOGS/$tag-plain-1.err" | tail -n 1)"
  gen_d="$(sed -n 's/.*generated: \([0-9]*\),.*/\1/p' "$LOGS/$tag-draft-1.err" | tail -n 1)"
  tps_p="$(sed -n 's/.*, \([0-9.]*\) tokens\/s,.*/\1/p' "$LOGS/$tag-plain-1.err" | tail -n 1)"
  tps_d="$(sed -n 's/.*, \([0-9.]*\) tokens\/s,.*/\1/p' "$LOGS/$tag-draft-1.err" | tail -n 1)"
  local mp md tpp accp
  mp=$(printf '%s\n' "${plains[@]}" | median)
  md=$(printf '%s\n' "${drafts[@]}" | median)
  SPEEDUP=$(calc "%.2f" "$mp / $md")
  tpp=$(printf '%s\n' "${tpps[@]}" | median)
  accp=$(calc "%.0f" "($acc_d > 0 ? 100 * $acc_n / $acc_d : 0)")
  echo "[$tag] plain $mp s, --draft $(basename "$draft") $md s (median of $RUNS: ${plains[*]} / ${drafts[*]}): speed-up ${SPEEDUP}x; acceptance $accp% ($acc_n/$acc_d), $tpp tokens per target pass; generated $gen_p / $gen_d tokens; decode $tps_p / $tps_d tokens/s (runner's line); text identical: $same"
  echo "[$tag] draft run: $spec"
  echo "[$tag] text: $(one_line "$LOGS/$tag-plain-1.out")"
  if [ "$same" = no ]; then
    ALL_SAME=no
    MISMATCHES+=("$tag")
    echo "[$tag] TEXT MISMATCH (runner bug: greedy speculative output must equal plain output). Prompt: $prompt"
    for r in $(seq 1 "$RUNS"); do
      echo "[$tag] plain run $r: $(one_line "$LOGS/$tag-plain-$r.out")"
      echo "[$tag] draft run $r: $(one_line "$LOGS/$tag-draft-$r.out")"
    done
    diff "$LOGS/$tag-plain-1.out" "$LOGS/$tag-draft-1.out" | sed "s/^/[$tag] diff: /" || true
  fi
  ROWS+=("| $tag | $(head -c 60 <<<"$prompt" | head -n 1) | $mp | $md | ${SPEEDUP}x | $accp% ($acc_n/$acc_d) | $tpp | $gen_p | $same |")
}

i=0
for pr in "${CODE_PROMPTS[@]}"; do
  i=$((i + 1)); measure code "$i" "$pr" "$DRAFT"; CODE_SPEEDUPS+=("$SPEEDUP")
done
i=0
for pr in "${PROSE_PROMPTS[@]}"; do
  i=$((i + 1)); measure prose "$i" "$pr" "$DRAFT"; PROSE_SPEEDUPS+=("$SPEEDUP")
done
measure ngram 1 "$NGRAM_PROMPT" ngram
NGRAM_SPEEDUP=$SPEEDUP

echo
echo "| prompt | text | plain s | draft s | speed-up | acceptance | tokens/pass | tokens | identical |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${ROWS[@]}"
echo
GM_CODE=$(printf '%s\n' "${CODE_SPEEDUPS[@]}" | geomean)
GM_PROSE=$(printf '%s\n' "${PROSE_SPEEDUPS[@]}" | geomean)
GM_ALL=$(printf '%s\n' "${CODE_SPEEDUPS[@]}" "${PROSE_SPEEDUPS[@]}" | geomean)
echo "geometric mean speed-up, 0.5B draft: code ${GM_CODE}x, prose ${GM_PROSE}x, overall ${GM_ALL}x; ngram (prompt lookup, code edit): ${NGRAM_SPEEDUP}x"
[ ${#MISMATCHES[@]} = 0 ] || echo "TEXT MISMATCH in: ${MISMATCHES[*]} (see above and $LOGS)"
fi

# ---- optional: verification passes of the 70B shape --------------------------------------------------
if [ "$DO_70B" = 1 ]; then
  DIR70="$BENCH_DIR/llama3-70b-nf4"
  if [ -f "$DIR70/manifest.json" ] && log "verifying $DIR70" && "$RUNNER" verify "$DIR70" >&2; then
    log "reusing $DIR70"
  else
    cargo build --release --locked -p strata-prep --example make_random_container >&2
    TOK="$(scripts/fetch-smollm2.sh | tail -n 1)"
    rm -rf "$DIR70"
    df -h "$BENCH_DIR" >&2
    log "writing the llama3-70b container to $DIR70 (~38.5 GB)"
    target/release/examples/make_random_container --shape llama3-70b --out "$DIR70" --tokenizer-from "$TOK" >&2 ||
      die "could not write $DIR70 (free space? see above)"
  fi
  # A memory cgroup as bench-70b.sh makes it: v2 under the root, v1 under this shell's own.
  MEM_KIND=none MEM_PARENT=""
  if [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw memory /sys/fs/cgroup/cgroup.controllers; then
    MEM_KIND=v2 MEM_PARENT=/sys/fs/cgroup
  else
    rel="$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' /proc/self/cgroup | head -n 1)"
    if [ -n "$rel" ] && [ -d "/sys/fs/cgroup/memory$rel" ]; then MEM_KIND=v1 MEM_PARENT="/sys/fs/cgroup/memory${rel%/}"; fi
  fi
  [ "$MEM_KIND" != none ] || die "no memory cgroup (v1 or v2) for the 4 GiB cap"
  CAP=$((4 << 30))
  VP=()
  for k in 0 1 4 8 16; do
    o="$LOGS/70b-verify-$k"
    log "[70b] runner bench --verify-pass $k (4 GiB cgroup)"
    sync; echo 3 > /proc/sys/vm/drop_caches
    CG="$MEM_PARENT/strata-spec-70b-$$"
    mkdir "$CG"
    if [ "$MEM_KIND" = v1 ]; then
      echo "$CAP" > "$CG/memory.limit_in_bytes"
      if [ -w "$CG/memory.memsw.limit_in_bytes" ]; then echo "$CAP" > "$CG/memory.memsw.limit_in_bytes" 2>/dev/null || true; fi
    else
      echo "$CAP" > "$CG/memory.max"
      if [ -w "$CG/memory.swap.max" ]; then echo 0 > "$CG/memory.swap.max"; fi
    fi
    set +e
    sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$CG" \
      "$RUNNER" bench "$DIR70" --prompt-tokens 8 --new-tokens 0 --ctx 512 --verify-pass "$k" >"$o.json" 2>"$o.err"
    RC=$?
    set -e
    cg_remove
    if [ "$RC" = 0 ]; then
      j="$(cat "$o.json")"
      s=$(json_get verify_pass_seconds "$j")
      VP+=("K=$k $(calc "%.1f" "$s") s")
      echo "[70b] --verify-pass $k: $(calc "%.2f" "$s") s per pass (median of 3: $(sed -n 's/.*"verify_pass_seconds_each":\[\([^]]*\)\].*/\1/p' <<<"$j")), prefill of 8 tokens $(calc "%.2f" "8 / $(json_get prefill_tokens_per_s "$j")") s, streamed $(calc "%.1f GB" "$(json_get streamed_bytes_per_pass "$j") / 1e9") per pass"
    else
      echo "[70b] --verify-pass $k: failed (exit $RC): $(tail -n 1 "$o.err")"
    fi
  done
  echo "[70b] llama3-70b shape, 4 GiB cgroup, seconds per verification pass: ${VP[*]}"
else
  echo "[70b] verification passes of the llama3-70b shape: not run (pass --70b)"
fi

[ "$DO_QWEN" = 1 ] || exit 0
echo "headline: speculative decoding, Qwen2.5-Coder-1.5B nf4 + 0.5B nf4 draft, reads at $RATE MB/s, --max-memory $MAX_MEMORY: overall ${GM_ALL}x geometric-mean speed-up (code ${GM_CODE}x, prose ${GM_PROSE}x; ngram ${NGRAM_SPEEDUP}x); all texts identical: $ALL_SAME"
[ "$ALL_SAME" = yes ] || exit 1
