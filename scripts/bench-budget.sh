#!/usr/bin/env bash
# bench-budget.sh [--runs N] [--shape NAME] [--new-tokens N] -- decode speed as --max-memory grows
# from 0 (stream every layer) to the whole model, and streaming against the disk's limit.
#
# Builds runner, its read_bandwidth example and prep's make_random_container example (release, once);
# writes (once) a random-weight NF4 container of the named shape (default llama2-7b: 3.7 GB) under
# ${STRATA_BENCH_DIR:-$HOME/.cache/strata-bench}/budget-<shape>-nf4 (no tokenizer: bench feeds ids). Measures
# the sequential read limit of the streamed files (page cache dropped): `dd iflag=direct bs=4M`, and
# the runner's own reader (io_uring, O_DIRECT; best of three passes). Then for budgets 0, 1/4, 1/2,
# 3/4 of the weights and everything (`runner plan --json`'s all-resident figure), N runs each
# (default 3), page cache dropped before each: `runner bench --prompt-tokens 1 --new-tokens K
# --ctx 256 --max-memory B` (K default 3). Prints per budget the median seconds per token, tokens/s,
# bytes read per token, resident bytes and peak RSS (and RSS minus the budget), then the streaming
# ratio: s/token at --max-memory 0 / (bytes read per token / the reader's bandwidth) on the last line.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUNS=3
SHAPE=llama2-7b
K=3
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS="${2:?}"; shift 2 ;;
    --shape) SHAPE="${2:?}"; shift 2 ;;
    --new-tokens) K="${2:?}"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-budget.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
BENCH_DIR="${STRATA_BENCH_DIR:-$HOME/.cache/strata-bench}"
DIR="$BENCH_DIR/budget-$SHAPE-nf4"
LOGS="$BENCH_DIR/budget-logs"
mkdir -p "$LOGS"
log() { echo "bench-budget.sh: $*" >&2; }
calc() { awk "BEGIN { printf \"$1\n\", $2 }"; }
json_get() { sed -n "s/.*\"$1\":\"\{0,1\}\([^,\"}]*\).*/\1/p" <<<"$2" | head -n 1; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
CAN_DROP=0
[ -w /proc/sys/vm/drop_caches ] && CAN_DROP=1
drop_caches() { if [ "$CAN_DROP" = 1 ]; then sync; echo 3 > /proc/sys/vm/drop_caches; fi; }
[ "$CAN_DROP" = 1 ] || log "cannot drop the page cache (not root): streamed reads may come from the cache"

log "building (release)"
cargo build --release --locked -p strata-runner --bin runner --example read_bandwidth \
  -p strata-prep --example make_random_container >&2
RUNNER=target/release/runner
if ! { [ -f "$DIR/manifest.json" ] && "$RUNNER" verify "$DIR" >/dev/null 2>&1; }; then
  rm -rf "$DIR"
  log "writing the $SHAPE container to $DIR"
  target/release/examples/make_random_container --shape "$SHAPE" --out "$DIR" >&2
fi

STREAMED=("$DIR"/layer.*.strata "$DIR"/head.strata)
READ_BYTES=$(cat "${STREAMED[@]}" | wc -c)
drop_caches
t0=$(date +%s.%N)
for f in "${STREAMED[@]}"; do dd if="$f" of=/dev/null bs=4M iflag=direct status=none; done
t1=$(date +%s.%N)
DD_BW=$(calc "%.0f" "$READ_BYTES / ($t1 - $t0)")
BW=0
for _ in 1 2 3; do
  drop_caches
  bw=$(calc "%.0f" "$(json_get bytes_per_s "$(target/release/examples/read_bandwidth "${STREAMED[@]}")")")
  if [ "$bw" -gt "$BW" ]; then BW=$bw; fi
done
echo "container: $DIR ($SHAPE, nf4 layers, int8 embeddings and head), $(calc "%.2f GB" "$READ_BYTES / 1e9") of layer and head files"
echo "disk: dd iflag=direct bs=4M $(calc "%.2f GB/s" "$DD_BW / 1e9"); the runner's reader (best of 3) $(calc "%.2f GB/s" "$BW / 1e9"), page cache dropped"

PLAN="$("$RUNNER" plan "$DIR" --ctx 256 --json)"
ALL=$(json_get all_resident_bytes "$PLAN")
WEIGHTS=$(json_get layers_bytes "$PLAN")
STREAM_MIN=$(json_get streaming_minimum_bytes "$PLAN")
echo "plan: streaming needs $(calc "%.0f MiB" "$STREAM_MIN / 1048576"); everything resident $(calc "%.2f GiB" "$ALL / 1073741824") (--ctx 256)"
echo "| --max-memory | s/token | tokens/s | read/token | resident | peak RSS | RSS - budget |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
S0=""
B0=""
for frac in 0 0.25 0.5 0.75 all; do
  if [ "$frac" = 0 ]; then b=0
  elif [ "$frac" = all ]; then b=$ALL
  else b=$(calc "%.0f" "$STREAM_MIN + $frac * $WEIGHTS"); fi
  spts=()
  for r in $(seq 1 "$RUNS"); do
    drop_caches
    j="$("$RUNNER" bench "$DIR" --prompt-tokens 1 --new-tokens "$K" --ctx 256 --max-memory "$b" -q 2>"$LOGS/$frac-$r.err")" ||
      { log "runner failed at --max-memory $b: $(tail -n 1 "$LOGS/$frac-$r.err")"; exit 1; }
    spts+=("$(calc "%.4f" "1 / $(json_get decode_tokens_per_s "$j")")")
  done
  spt=$(printf '%s\n' "${spts[@]}" | median)
  bpt=$(json_get bytes_read_per_token "$j")
  rss=$(json_get peak_rss_bytes "$j")
  label=$([ "$frac" = 0 ] && echo "0 (stream all)" || { [ "$frac" = all ] && echo "$(calc "%.2f GiB" "$b / 1073741824") (all)"; } || echo "$(calc "%.2f GiB" "$b / 1073741824") (streaming + $frac of the weights)")
  over=$([ "$b" = 0 ] && echo "n/a" || calc "%+.0f MiB" "($rss - $b) / 1048576")
  echo "| $label | $(calc "%.2f" "$spt") | $(calc "%.2f" "1 / $spt") | $(calc "%.2f GB" "$bpt / 1e9") | $(calc "%.2f GiB" "$(json_get resident_bytes "$j") / 1073741824") | $(calc "%.2f GiB" "$rss / 1073741824") | $over |"
  if [ "$frac" = 0 ]; then S0=$spt; B0=$bpt; fi
done
limit=$(calc "%.4f" "$B0 / $BW")
echo "streaming (--max-memory 0): $(calc "%.2f" "$S0") s/token, I/O limit $(calc "%.2f" "$limit") s/token ($(calc "%.2f GB" "$B0 / 1e9") at $(calc "%.2f GB/s" "$BW / 1e9")), ratio $(calc "%.2f" "$S0 / $limit")x"
