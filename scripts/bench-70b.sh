#!/usr/bin/env bash
# bench-70b.sh [--new-tokens N] [--shape NAME] [--no-search] -- a 70B-shaped model generating under
# a 4 GiB memory cap.
#
# Builds runner, its read_bandwidth example and prep's make_random_container example (release,
# once); writes the llama3-70b-shaped random NF4 container (~38.5 GB, SmolLM2's tokenizer) under
# ${STRATA_BENCH_DIR:-$HOME/.cache/strata-bench}/llama3-70b-nf4 unless one there passes
# `runner verify`; measures the sequential read bandwidth of the files the runner streams (page
# cache dropped first) with `dd iflag=direct bs=4M` and through the runner's own reader
# (read_bandwidth: io_uring, O_DIRECT, 16 x 4 MiB in flight; best of 3 passes), which sets the I/O
# limit. Then, each run in a fresh memory cgroup (v1 or v2, created under this shell's own cgroup
# and removed after; needs root), with --ctx 512 and the page cache dropped first (when root):
#   cap 4 GiB, the runner's default budget (it follows the cgroup limit): `runner bench
#     --prompt-tokens 8 --new-tokens N` (decode figures) and `runner generate --prompt ...` (text);
#   cap 2 GiB, --max-memory 2GiB: bench;
#   unless --no-search, caps equal to --max-memory at 1.5 GiB, at the plan's smallest budget with
#     --prefetch 1 (`runner plan --json`) and 1 MiB below it: bench, 1 + 1 tokens.
# N defaults to 3 (each 70B token reads ~35 GB: tens of seconds). Prints one figure per line:
# seconds per token, bytes read per token, the I/O limit (bytes per token / the reader's
# bandwidth), their ratio, the streaming rate achieved, I/O wait, peak RSS, the cgroup's peak
# usage (page cache included), failcnt and OOM kills; the headline (s/token under 4 GiB and its
# ratio to the I/O limit) is the last line. Without root or a memory cgroup it says so and runs
# uncapped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=3
SHAPE=llama3-70b
SEARCH=1
while [ $# -gt 0 ]; do
  case "$1" in
    --new-tokens) N="${2:?--new-tokens needs a number}"; shift 2 ;;
    --shape) SHAPE="${2:?--shape needs a name}"; shift 2 ;;
    --no-search) SEARCH=0; shift ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-70b.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$N" in ''|*[!0-9]*|0) echo "bench-70b.sh: --new-tokens must be a positive integer" >&2; exit 2 ;; esac

CTX=512
PROMPT="The capital of France is"
GiB=$((1 << 30))
MiB=$((1 << 20))
BENCH_DIR="${STRATA_BENCH_DIR:-$HOME/.cache/strata-bench}"
DIR="$BENCH_DIR/$SHAPE-nf4"
LOGS="$BENCH_DIR/bench-70b-logs"
mkdir -p "$BENCH_DIR" "$LOGS"

log() { echo "bench-70b.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
# json_get KEY JSON: a scalar from a flat JSON object (first occurrence).
json_get() { sed -n "s/.*\"$1\":\"\{0,1\}\([^,\"}]*\).*/\1/p" <<<"$2" | head -n 1; }
calc() { awk "BEGIN { printf \"$1\n\", $2 }"; }
gib() { calc "%.2f GiB" "$1 / $GiB"; }
mib() { calc "%.0f MiB" "$1 / $MiB"; }

log "building (release)"
cargo build --release --locked -p strata-runner --bin runner --example read_bandwidth \
  -p strata-prep --example make_random_container >&2
RUNNER=target/release/runner
MAKER=target/release/examples/make_random_container
READER=target/release/examples/read_bandwidth

# ---- the container ------------------------------------------------------------------------------
if [ -f "$DIR/manifest.json" ] && log "verifying $DIR" && "$RUNNER" verify "$DIR" >&2; then
  log "reusing $DIR"
else
  TOK="$(scripts/fetch-smollm2.sh | tail -n 1)"
  rm -rf "$DIR"
  df -h "$BENCH_DIR" >&2
  log "writing the $SHAPE container to $DIR"
  "$MAKER" --shape "$SHAPE" --out "$DIR" --tokenizer-from "$TOK" >&2 ||
    die "could not write $DIR (free space? see above; ~/.cache/strata-bench/llama2-7b is a 13.5 GB bench checkpoint that bench-prep.sh rewrites when needed)"
fi
CONTAINER_BYTES=$(cat "$DIR"/*.strata | wc -c)

# ---- page cache and cgroups -------------------------------------------------------------------------
CAN_DROP=0
[ -w /proc/sys/vm/drop_caches ] && CAN_DROP=1
drop_caches() { if [ "$CAN_DROP" = 1 ]; then sync; echo 3 > /proc/sys/vm/drop_caches; fi; }
[ "$CAN_DROP" = 1 ] || log "cannot drop the page cache (not root): reads may come from the cache"

CG_KIND=none
CG_PARENT=""
if [ "$(id -u)" = 0 ]; then
  if [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw memory /sys/fs/cgroup/cgroup.controllers; then
    CG_KIND=v2
    # A v2 cgroup with processes cannot enable controllers for children: use the root's.
    CG_PARENT=/sys/fs/cgroup
  else
    rel="$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' /proc/self/cgroup | head -n 1)"
    if [ -n "$rel" ] && [ -d "/sys/fs/cgroup/memory$rel" ]; then
      CG_KIND=v1
      CG_PARENT="/sys/fs/cgroup/memory${rel%/}"
    fi
  fi
fi
if [ "$CG_KIND" = none ]; then
  log "WARNING: cannot create a memory cgroup (needs root and cgroup v1 or v2 memory): runs are NOT capped"
fi
CG=""
cg_remove() {
  if [ -n "$CG" ] && [ -d "$CG" ]; then
    [ "$CG_KIND" = v1 ] && echo 0 > "$CG/memory.force_empty" 2>/dev/null || true
    rmdir "$CG" 2>/dev/null || log "could not remove cgroup $CG"
  fi
  CG=""
}
trap cg_remove EXIT
# cg_create BYTES: a fresh cgroup capped at BYTES (sets CG).
cg_create() {
  [ "$CG_KIND" != none ] || return 0
  CG="$CG_PARENT/strata-bench-$$"
  mkdir "$CG"
  if [ "$CG_KIND" = v1 ]; then
    echo "$1" > "$CG/memory.limit_in_bytes"
    if [ -w "$CG/memory.memsw.limit_in_bytes" ]; then echo "$1" > "$CG/memory.memsw.limit_in_bytes" 2>/dev/null || true; fi
  else
    echo "$1" > "$CG/memory.max"
    if [ -w "$CG/memory.swap.max" ]; then echo 0 > "$CG/memory.swap.max"; fi
  fi
}
# cg_stats: "PEAK_BYTES FAILCNT OOM_KILLS" of the current cgroup.
cg_stats() {
  if [ "$CG_KIND" = v1 ]; then
    echo "$(cat "$CG/memory.max_usage_in_bytes") $(cat "$CG/memory.failcnt") $(awk '$1=="oom_kill"{print $2}' "$CG/memory.oom_control")"
  elif [ "$CG_KIND" = v2 ]; then
    echo "$(cat "$CG/memory.peak" 2>/dev/null || echo 0) $(awk '$1=="max"{print $2}' "$CG/memory.events") $(awk '$1=="oom_kill"{print $2}' "$CG/memory.events")"
  else
    echo "0 0 0"
  fi
}
# capped CAP_BYTES OUT ERR cmd...: runs cmd in a fresh cgroup; sets RC and CG_PEAK CG_FAIL CG_OOM.
capped() {
  local cap="$1" out="$2" err="$3"; shift 3
  drop_caches
  cg_create "$cap"
  set +e
  if [ -n "$CG" ]; then
    sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$CG" "$@" >"$out" 2>"$err"
  else
    "$@" >"$out" 2>"$err"
  fi
  RC=$?
  set -e
  read -r CG_PEAK CG_FAIL CG_OOM < <(cg_stats)
  cg_remove
}

# ---- disk bandwidth over the streamed files ---------------------------------------------------------
STREAMED=("$DIR"/layer.*.strata "$DIR"/head.strata)
READ_BYTES=$(cat "${STREAMED[@]}" | wc -c)
log "measuring sequential read bandwidth over ${#STREAMED[@]} files: dd, then the runner's reader (page cache dropped)"
drop_caches
t0=$(date +%s.%N)
for f in "${STREAMED[@]}"; do dd if="$f" of=/dev/null bs=4M iflag=direct status=none; done
t1=$(date +%s.%N)
DD_BW=$(calc "%.0f" "$READ_BYTES / ($t1 - $t0)")
# The disk's rate varies by tens of percent from minute to minute here: the limit uses the best
# of three passes, so that it is a bound the runner cannot beat.
BW=0
PASSES=""
for _ in 1 2 3; do
  drop_caches
  READER_JSON="$("$READER" "${STREAMED[@]}")"
  bw=$(calc "%.0f" "$(json_get bytes_per_s "$READER_JSON")")
  PASSES="$PASSES $(calc "%.2f" "$bw / 1e9")"
  if [ "$bw" -gt "$BW" ]; then BW=$bw; fi
done

# ---- runs -------------------------------------------------------------------------------------------
# report LABEL JSON: prints the figures of one bench run.
report() {
  local label="$1" json="$2" tps bpt spt limit
  tps=$(json_get decode_tokens_per_s "$json")
  if [ "$(calc "%d" "(${tps:-0} > 0)")" != 1 ]; then
    echo "[$label] no decode figures (no token was decoded): $json"
    return 0
  fi
  bpt=$(json_get bytes_read_per_token "$json")
  spt=$(calc "%.2f" "1 / $tps")
  echo "[$label] seconds per token: $spt (decode $(json_get new_tokens "$json") tokens after an 8-token prompt)"
  echo "[$label] bytes read per token: $(calc "%.2f GB" "$bpt / 1e9")"
  if [ "$(calc "%d" "($bpt > 0 && $BW > 0)")" = 1 ]; then
    limit=$(calc "%.2f" "$bpt / $BW")
    echo "[$label] I/O limit: $limit s/token ($(calc "%.2f GB" "$bpt / 1e9") at $(calc "%.2f GB/s" "$BW / 1e9"))"
    echo "[$label] ratio to the I/O limit: $(calc "%.2f" "$spt / $limit")x"
    HEAD_RATIO=$(calc "%.2f" "$spt / $limit")
  else
    echo "[$label] I/O limit: none (nothing is read per token)"
    HEAD_RATIO="n/a"
  fi
  echo "[$label] streaming rate achieved: $(calc "%.2f GB/s" "$bpt * $tps / 1e9") (bytes per token / seconds per token)"
  echo "[$label] I/O wait fraction: $(calc "%.3f" "$(json_get io_wait_fraction "$json")") (the rest of decode is compute, overlapped with reads)"
  echo "[$label] peak RSS: $(gib "$(json_get peak_rss_bytes "$json")"); resident weights $(gib "$(json_get resident_bytes "$json")"), io $(json_get io_backend "$json")"
  echo "[$label] cgroup: peak usage $(mib "$CG_PEAK") (page cache included), failcnt $CG_FAIL, OOM kills $CG_OOM"
  HEAD_SPT=$spt
}
# bench_run LABEL CAP ARGS...: bench under a cap; prints the figures or why it did not run.
bench_run() {
  local label="$1" cap="$2" name; shift 2
  name="${label// /_}"
  log "[$label] runner bench (cap $(gib "$cap")) ..."
  capped "$cap" "$LOGS/$name.json" "$LOGS/$name.err" \
    "$RUNNER" bench "$DIR" --prompt-tokens 8 --new-tokens "$N" --ctx "$CTX" "$@"
  local plan
  plan="$(grep -m1 -o 'memory plan:.*' "$LOGS/$name.err" || true)"
  if [ "$RC" = 0 ]; then
    [ -z "$plan" ] || echo "[$label] $plan"
    report "$label" "$(cat "$LOGS/$name.json")"
  else
    echo "[$label] did not run (exit $RC; cgroup failcnt $CG_FAIL, OOM kills $CG_OOM): $(tail -n 1 "$LOGS/$name.err")"
  fi
  return 0
}

echo "container: $DIR ($SHAPE, nf4 layers, int8 embeddings and head): $(gib "$CONTAINER_BYTES")"
echo "cgroup: $CG_KIND${CG_PARENT:+ under $CG_PARENT}"
echo "disk, dd iflag=direct bs=4M (one request at a time): $(calc "%.2f GB/s" "$DD_BW / 1e9") over $(calc "%.1f GB" "$READ_BYTES / 1e9") of layer and head files, page cache dropped"
echo "disk, the runner's reader ($(json_get backend "$READER_JSON"), whole files): $(calc "%.2f GB/s" "$BW / 1e9"), the best of three passes over the same files (GB/s:$PASSES), page cache dropped; the I/O limits below use it"

bench_run "cap 4GiB" $((4 * GiB))
H4_SPT=${HEAD_SPT:-}
H4_RATIO=${HEAD_RATIO:-}

log "[cap 4GiB] runner generate ..."
capped $((4 * GiB)) "$LOGS/generate.out" "$LOGS/generate.err" \
  "$RUNNER" generate "$DIR" --prompt "$PROMPT" --max-new-tokens "$N" --temperature 0 --ctx "$CTX"
if [ "$RC" = 0 ]; then
  echo "[cap 4GiB] generate: \"$PROMPT\" -> \"$(tr -d '\n' <"$LOGS/generate.out")\" (random weights)"
  echo "[cap 4GiB] generate stats: $(grep -o '\[prompt tokens.*\]' "$LOGS/generate.err" | tail -n 1)"
  echo "[cap 4GiB] generate cgroup: peak usage $(mib "$CG_PEAK"), failcnt $CG_FAIL, OOM kills $CG_OOM"
else
  echo "[cap 4GiB] generate failed (exit $RC; OOM kills $CG_OOM): $(tail -n 1 "$LOGS/generate.err")"
fi

HEAD_SPT="" HEAD_RATIO=""
bench_run "cap 2GiB" $((2 * GiB)) --max-memory 2GiB

if [ "$SEARCH" = 1 ]; then
  MIN1=$(json_get smallest_budget_bytes "$("$RUNNER" plan "$DIR" --ctx "$CTX" --prefetch 1 --max-memory 0 --json)")
  MIN1=$(( (MIN1 + MiB - 1) / MiB * MiB ))
  smallest=""
  for b in $((3 * GiB / 2)) "$MIN1" $((MIN1 - MiB)); do
    label="cap $(( b / MiB ))MiB"
    log "[$label] runner bench --prompt-tokens 1 --new-tokens 1 --prefetch 1 --max-memory $b"
    capped "$b" "$LOGS/search-$b.json" "$LOGS/search-$b.err" \
      "$RUNNER" bench "$DIR" --prompt-tokens 1 --new-tokens 1 --ctx "$CTX" --prefetch 1 --max-memory "$b"
    if [ "$RC" = 0 ]; then
      smallest=$b
      echo "[$label] runs: peak RSS $(gib "$(json_get peak_rss_bytes "$(cat "$LOGS/search-$b.json")")"), cgroup peak $(mib "$CG_PEAK"), failcnt $CG_FAIL, OOM kills $CG_OOM"
    else
      echo "[$label] does not run (exit $RC, OOM kills $CG_OOM): $(tail -n 1 "$LOGS/search-$b.err")"
    fi
  done
  [ -z "$smallest" ] || echo "smallest budget that runs: $(gib "$smallest") (--prefetch 1, --ctx $CTX, cgroup cap = --max-memory)"
fi

if [ -n "$H4_SPT" ]; then
  echo "headline: $SHAPE-shaped model under a 4 GiB cgroup cap: $H4_SPT s/token, ${H4_RATIO}x the I/O limit"
else
  echo "headline: $SHAPE-shaped model under a 4 GiB cgroup cap: did not run (see above)"
fi
