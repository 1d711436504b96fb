#!/usr/bin/env bash
# bench-small-memory.sh [CAP...] -- the real Qwen2.5-Coder-1.5B-Instruct (nf4) generating with the
# runner's DEFAULT options inside small memory cgroups (issue 19 item 8).
#
# CAP: a memory cap, BYTES or N MiB / N GiB (default: 640MiB 1GiB). Needs root and a memory
# cgroup (v1 or v2): each run is in a fresh cgroup capped at CAP (swap too), created under this
# shell's own cgroup (v1) or the root (v2) and removed after, also on error or Ctrl-C. Without them
# it prints a SKIP line and exits 0: an uncapped run would prove nothing.
#
# Builds runner and prep (profile ${STRATA_BENCH_PROFILE:-release}; `dev` builds faster, into
# target/debug); fetches the checkpoint with scripts/fetch-qwen.sh 1.5b and writes
# ${STRATA_MODELS:-$HOME/.cache/strata-models}/qwen2.5-coder-1.5b-instruct.nf4 with
# `prep --quant nf4`, unless one there passes `runner verify`. Then, per cap, with the page cache
# dropped first: `runner generate MODEL --prompt "def fibonacci(n):" --max-new-tokens 30
# --temperature 0` (no --max-memory, --ctx, --prefetch: the budget follows the cgroup's limit)
# under /usr/bin/time -v. Prints per cap: exit status, the memory plan, tokens/s (the runner's
# end-of-generation line), peak RSS, the cgroup's peak usage (page cache included), failcnt, OOM
# kills, and the generated text; the last line is a one-line summary. Logs go to
# ${STRATA_BENCH_DIR:-$HOME/.cache/strata-bench}/small-memory-logs.
# Exit status: 0 every cap ran (or SKIP), 1 a cap failed or setup failed, 2 bad usage.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MiB=$((1 << 20))
GiB=$((1 << 30))
PROMPT="def fibonacci(n):"
NEW_TOKENS=30
NAME=qwen2.5-coder-1.5b-instruct

log() { echo "bench-small-memory.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
calc() { awk "BEGIN { printf \"$1\n\", $2 }"; }
mib() { calc "%.0f MiB" "$1 / $MiB"; }

# parse_cap TEXT: bytes of "N", "NMiB" or "NGiB" (also M/G, MB/GB as binary units).
parse_cap() {
  local n unit
  n="${1%%[!0-9]*}"
  unit="${1#"$n"}"
  [ -n "$n" ] || return 1
  case "$unit" in
    '') echo "$n" ;;
    MiB|M|MB|m|mib) echo $((n * MiB)) ;;
    GiB|G|GB|g|gib) echo $((n * GiB)) ;;
    *) return 1 ;;
  esac
}

CAPS=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) b="$(parse_cap "$1")" || { echo "bench-small-memory.sh: bad cap '$1' (e.g. 640MiB, 1GiB, 671088640)" >&2; exit 2; }
       [ "$b" -ge $((64 * MiB)) ] || { echo "bench-small-memory.sh: cap '$1' is below 64 MiB" >&2; exit 2; }
       CAPS+=("$1:$b"); shift ;;
  esac
done
[ ${#CAPS[@]} -gt 0 ] || CAPS=("640MiB:$((640 * MiB))" "1GiB:$GiB")

# ---- root and a memory cgroup ---------------------------------------------------------------------
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
  why="needs root and a cgroup v1 or v2 memory controller"
  [ "$(id -u)" = 0 ] || why="needs root (uid $(id -u)) to create memory cgroups"
  msg="SKIP: bench-small-memory.sh: $why; nothing was measured"
  [ -z "${STRATA_SKIP_LOG:-}" ] || echo "$msg" >> "$STRATA_SKIP_LOG"
  echo "$msg"
  exit 0
fi
[ -x /usr/bin/time ] || die "/usr/bin/time (GNU time) not found: it gives the peak RSS (apt-get install time)"

CG=""
cg_remove() {
  if [ -n "$CG" ] && [ -d "$CG" ]; then
    # Kill anything left in it (an interrupted run), then free its page cache and remove it.
    if [ -f "$CG/cgroup.procs" ]; then
      while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done < "$CG/cgroup.procs"
      sleep 0.2
    fi
    [ "$CG_KIND" = v1 ] && echo 0 > "$CG/memory.force_empty" 2>/dev/null || true
    rmdir "$CG" 2>/dev/null || log "could not remove cgroup $CG"
  fi
  CG=""
}
trap cg_remove EXIT
trap 'exit 130' INT TERM
# cg_create LABEL BYTES: a fresh cgroup capped at BYTES, swap included (sets CG).
cg_create() {
  CG="$CG_PARENT/strata-small-memory-$$-$1"
  mkdir "$CG"
  if [ "$CG_KIND" = v1 ]; then
    echo "$2" > "$CG/memory.limit_in_bytes"
    if [ -w "$CG/memory.memsw.limit_in_bytes" ]; then echo "$2" > "$CG/memory.memsw.limit_in_bytes" 2>/dev/null || true; fi
  else
    echo "$2" > "$CG/memory.max"
    if [ -w "$CG/memory.swap.max" ]; then echo 0 > "$CG/memory.swap.max"; fi
  fi
}
# cg_stats: "PEAK_BYTES FAILCNT OOM_KILLS" of the current cgroup (v2: failcnt = memory.events max).
cg_stats() {
  if [ "$CG_KIND" = v1 ]; then
    echo "$(cat "$CG/memory.max_usage_in_bytes") $(cat "$CG/memory.failcnt") $(awk '$1=="oom_kill"{print $2}' "$CG/memory.oom_control")"
  else
    echo "$(cat "$CG/memory.peak" 2>/dev/null || echo 0) $(awk '$1=="max"{print $2}' "$CG/memory.events") $(awk '$1=="oom_kill"{print $2}' "$CG/memory.events")"
  fi
}

# ---- binaries ---------------------------------------------------------------------------------------
PROFILE="${STRATA_BENCH_PROFILE:-release}"
case "$PROFILE" in
  release) BIN=target/release ;;
  dev|debug) PROFILE=dev; BIN=target/debug ;;
  *) BIN="target/$PROFILE" ;;
esac
log "building runner and prep (profile $PROFILE)"
cargo build --locked --profile "$PROFILE" -p strata-runner --bin runner -p strata-prep --bin prep >&2
RUNNER="$BIN/runner"
PREP="$BIN/prep"

# ---- the container ----------------------------------------------------------------------------------
MODELS="${STRATA_MODELS:-$HOME/.cache/strata-models}"
MODEL="$MODELS/$NAME.nf4"
if [ -f "$MODEL/manifest.json" ] && log "verifying $MODEL" && "$RUNNER" verify "$MODEL" >&2; then
  log "reusing $MODEL"
else
  HF="$(scripts/fetch-qwen.sh 1.5b | tail -n 1)" || die "scripts/fetch-qwen.sh 1.5b failed"
  rm -rf "$MODEL"
  log "writing $MODEL (prep --quant nf4)"
  "$PREP" "$HF" --out "$MODEL" --quant nf4 >&2 || die "prep failed on $HF"
fi
MODEL_BYTES=$(cat "$MODEL"/*.strata | wc -c)

# ---- runs -------------------------------------------------------------------------------------------
LOGS="${STRATA_BENCH_DIR:-$HOME/.cache/strata-bench}/small-memory-logs"
mkdir -p "$LOGS"

echo "model: $MODEL (nf4 layers, int8 embeddings and head): $(mib "$MODEL_BYTES") of tensor files"
echo "build: $RUNNER (profile $PROFILE); cgroup: $CG_KIND under $CG_PARENT; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "command: runner generate MODEL --prompt \"$PROMPT\" --max-new-tokens $NEW_TOKENS --temperature 0 (default budget, ctx, prefetch)"

SUMMARY=()
FAILED=0
for entry in "${CAPS[@]}"; do
  label="${entry%%:*}"
  cap="${entry##*:}"
  tag="cap $label"
  out="$LOGS/$label.out" err="$LOGS/$label.err" tv="$LOGS/$label.time"
  log "[$tag] runner generate ..."
  sync
  echo 3 > /proc/sys/vm/drop_caches
  cg_create "$label" "$cap"
  set +e
  # /usr/bin/time stays outside the cgroup; only the runner (exec'd by sh) is in it.
  /usr/bin/time -v -o "$tv" sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$CG" \
    "$RUNNER" generate "$MODEL" --prompt "$PROMPT" --max-new-tokens "$NEW_TOKENS" --temperature 0 \
    >"$out" 2>"$err"
  rc=$?
  set -e
  read -r peak fail oom < <(cg_stats)
  cg_remove

  rss_kb="$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tv")"
  stats="$(grep -o '\[prompt tokens.*\]' "$err" | tail -n 1 || true)"
  tps="$(sed -n 's/.* \([0-9.]*\) tokens\/s.*/\1/p' <<<"$stats")"
  plan="$(grep -m1 -o 'memory plan:.*' "$err" || true)"
  # The generated text on one line, newlines shown as \n.
  text="$(awk '{ printf "%s%s", (NR > 1 ? "\\n" : ""), $0 }' "$out")"

  echo "[$tag] exit status: $rc"
  [ -z "$plan" ] || echo "[$tag] $plan"
  if [ -n "$stats" ]; then
    echo "[$tag] tokens/s: $tps $stats"
  else
    echo "[$tag] tokens/s: none (no end-of-generation line): $(tail -n 1 "$err")"
  fi
  echo "[$tag] peak RSS: $(mib $(( ${rss_kb:-0} * 1024 ))) (/usr/bin/time -v)"
  echo "[$tag] cgroup: peak usage $(mib "$peak") of $(mib "$cap") (page cache included), failcnt $fail, OOM kills $oom"
  echo "[$tag] text: \"$PROMPT\" -> \"$text\""
  if [ "$rc" = 0 ] && [ -n "$stats" ]; then
    SUMMARY+=("$label ok $tps tok/s, RSS $(mib $(( ${rss_kb:-0} * 1024 ))), OOM $oom")
  else
    FAILED=1
    SUMMARY+=("$label FAILED (exit $rc, OOM kills $oom)")
  fi
done

summary="$(printf '%s; ' "${SUMMARY[@]}")"
echo "summary: Qwen2.5-Coder-1.5B nf4, runner generate defaults, $NEW_TOKENS tokens ($PROFILE build): ${summary%; }"
exit "$FAILED"
