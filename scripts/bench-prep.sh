#!/usr/bin/env bash
# bench-prep.sh [--runs N] [--shape llama2-7b|tiny] [--warm] -- throughput and peak memory of `prep`.
#
# Builds prep and the make_random_checkpoint example in release mode, writes (once, then reuses) a
# random-weight F16 checkpoint of the given shape under ${STRATA_BENCH_DIR:-$HOME/.cache/strata-bench}
# (llama2-7b: 13.5 GB in a ~10 GB and a ~3.5 GB shard, like the real one), then runs
# `prep --quant nf4 --json` on it N times (default 3), deleting the output between runs.
# Before each run the page cache is dropped when /proc/sys/vm/drop_caches is writable (root), so the
# source is read from disk; --warm skips that. Peak RSS comes from /usr/bin/time -v when present,
# else from VmHWM in /proc/PID/status polled every 50 ms (the line says which).
# Prints one line per run, then the median MB/s (source bytes / wall time, MB = 10^6 bytes) and the
# largest peak RSS; the figure is on the last line.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUNS=3
SHAPE=llama2-7b
WARM=0
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS="${2:?--runs needs a number}"; shift 2 ;;
    --shape) SHAPE="${2:?--shape needs a name}"; shift 2 ;;
    --warm) WARM=1; shift ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-prep.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$RUNS" in ''|*[!0-9]*|0) echo "bench-prep.sh: --runs must be a positive integer" >&2; exit 2 ;; esac

BENCH_DIR="${STRATA_BENCH_DIR:-$HOME/.cache/strata-bench}"
CKPT="$BENCH_DIR/$SHAPE"
OUT="$BENCH_DIR/out-$SHAPE"
mkdir -p "$BENCH_DIR"

echo "bench-prep.sh: building (release)" >&2
cargo build --release --locked -p strata-prep --bin prep --example make_random_checkpoint >&2
PREP=target/release/prep

if [ ! -f "$CKPT/model.safetensors.index.json" ]; then
  echo "bench-prep.sh: writing the $SHAPE checkpoint to $CKPT" >&2
  rm -rf "$CKPT"
  target/release/examples/make_random_checkpoint --shape "$SHAPE" --out "$CKPT" >/dev/null
fi
SRC_BYTES=$(cat "$CKPT"/*.safetensors | wc -c)

cache="warm page cache"
if [ "$WARM" = 0 ]; then
  if [ -w /proc/sys/vm/drop_caches ]; then cache="cold page cache"; else
    echo "bench-prep.sh: cannot drop the page cache (not root): measuring with a warm cache" >&2
  fi
fi

if [ -x /usr/bin/time ] && /usr/bin/time -v true >/dev/null 2>&1; then
  RSS_HOW="/usr/bin/time -v"
else
  RSS_HOW="VmHWM polled every 50 ms"
fi

# run_once JSON_FILE: runs prep, prints its peak RSS in KiB on stdout.
run_once() {
  local json="$1" err="$BENCH_DIR/prep-stderr.txt"
  if [ "$RSS_HOW" = "/usr/bin/time -v" ]; then
    /usr/bin/time -v "$PREP" "$CKPT" --out "$OUT" --quant nf4 --json --quiet >"$json" 2>"$err" ||
      { cat "$err" >&2; return 1; }
    sed -n 's/.*Maximum resident set size (kbytes): \([0-9]*\).*/\1/p' "$err"
  else
    "$PREP" "$CKPT" --out "$OUT" --quant nf4 --json --quiet >"$json" 2>"$err" &
    local pid=$! peak=0 hwm
    while kill -0 "$pid" 2>/dev/null; do
      hwm=$(sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$pid/status" 2>/dev/null || true)
      if [ -n "$hwm" ] && [ "$hwm" -gt "$peak" ]; then peak=$hwm; fi
      sleep 0.05
    done
    wait "$pid" || { cat "$err" >&2; return 1; }
    echo "$peak"
  fi
}

rates=()
peak_kib=0
for i in $(seq 1 "$RUNS"); do
  rm -rf "$OUT"
  if [ "$cache" = "cold page cache" ]; then sync; echo 3 > /proc/sys/vm/drop_caches; fi
  json="$BENCH_DIR/run-$i.json"
  rss=$(run_once "$json")
  rate=$(sed -n 's/.*"mb_per_s":\([0-9.eE+-]*\).*/\1/p' "$json")
  secs=$(sed -n 's/.*"seconds":\([0-9.eE+-]*\).*/\1/p' "$json")
  out_bytes=$(sed -n 's/.*"container_bytes":\([0-9]*\).*/\1/p' "$json")
  printf 'run %d: %.1f MB/s, %.1f s, peak RSS %d MiB, container %d bytes\n' \
    "$i" "$rate" "$secs" $((rss / 1024)) "$out_bytes" >&2
  rates+=("$rate")
  if [ "$rss" -gt "$peak_kib" ]; then peak_kib=$rss; fi
done
rm -rf "$OUT"

median=$(printf '%s\n' "${rates[@]}" | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}')
printf 'prep --quant nf4 on %s (%.2f GB F16, %s, %d runs): median %.1f MB/s, peak RSS %d MiB (%s)\n' \
  "$SHAPE" "$(echo "$SRC_BYTES" | awk '{print $1/1e9}')" "$cache" "$RUNS" "$median" $((peak_kib / 1024)) "$RSS_HOW"
