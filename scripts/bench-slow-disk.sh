#!/usr/bin/env bash
# bench-slow-disk.sh [--runs N] [--runs-7b N] [--rates "100 400"] [--no-7b] -- seconds per token
# streaming from a throttled disk, for nf4, int8, bf16 and bf16 + zstd containers.
#
# Builds prep, runner and prep's make_random_checkpoint example (release, once). Containers (made
# once, reused while `runner verify` passes) under ${STRATA_BENCH_DIR:-$HOME/.cache/strata-bench}/slow-disk/:
#   smollm2-{nf4,int8,bf16,bf16-zstd}   from SmolLM2-135M-Instruct (scripts/fetch-smollm2.sh);
#   llama2-7b-{nf4,int8,bf16,bf16-zstd} from the random f16 Llama-2-7B-shaped checkpoint that
#     bench-prep.sh uses (written if absent; the last conversion runs with --delete-originals so that
#     the 13.5 GB source is gone when done and the four containers, ~34 GB, fit beside it).
# Each run: page cache dropped, then `runner bench DIR --max-memory 0 --prompt-tokens 1
# --new-tokens K --ctx 64` inside a block-I/O cgroup that caps reads from the container's disk at
# RATE MB/s (cgroup v1 blkio.throttle.read_bps_device, or v2 io.max; needs root; created under the
# hierarchy root and removed after). Prints, per model, rate and container: the median seconds per
# token over the runs, bytes read per token, the I/O limit (bytes per token / the cap), their
# ratio, and the decompression seconds per token. SmolLM2 runs --runs times (default 5, K = 4);
# the 7B-shaped ones --runs-7b times (default 1, K = 1: each token reads 3.7-13.5 GB, up to
# 135 s at 100 MB/s). Then SmolLM2 bf16 + zstd under --max-memory 300MiB at the lowest cap, with
# resident layers held compressed (--keep-compressed yes, auto's choice there) and decoded (no).
# The last line is the headline: bf16 + zstd vs bf16 per token on the 7B shape (or SmolLM2 with
# --no-7b) under the lowest cap. Without root or a throttle it says so and exits 1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUNS=5
RUNS_7B=1
RATES="100 400"
DO_7B=1
KEEP_BUDGET=300MiB
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS="${2:?}"; shift 2 ;;
    --runs-7b) RUNS_7B="${2:?}"; shift 2 ;;
    --rates) RATES="${2:?}"; shift 2 ;;
    --no-7b) DO_7B=0; shift ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-slow-disk.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

BENCH_DIR="${STRATA_BENCH_DIR:-$HOME/.cache/strata-bench}"
OUT="$BENCH_DIR/slow-disk"
LOGS="$OUT/logs"
mkdir -p "$OUT" "$LOGS"
log() { echo "bench-slow-disk.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
calc() { awk "BEGIN { printf \"$1\n\", $2 }"; }
json_get() { sed -n "s/.*\"$1\":\"\{0,1\}\([^,\"}]*\).*/\1/p" <<<"$2" | head -n 1; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

[ "$(id -u)" = 0 ] || die "needs root: to drop the page cache and to throttle reads with a block-I/O cgroup"

log "building (release)"
cargo build --release --locked -p strata-prep --bin prep --example make_random_checkpoint \
  -p strata-runner --bin runner >&2
PREP=target/release/prep
RUNNER=target/release/runner

# ---- containers -----------------------------------------------------------------------------------
VARIANTS=(nf4 int8 bf16 bf16-zstd)
args_of() {
  case "$1" in
    nf4) echo "--quant nf4" ;;
    int8) echo "--quant int8" ;;
    bf16) echo "--quant bf16" ;;
    bf16-zstd) echo "--quant bf16 --compress zstd" ;;
  esac
}
# make MODEL SRC VARIANT [EXTRA...]: converts SRC unless a verified container is there.
make_container() {
  local model="$1" src="$2" v="$3" dir; shift 3
  dir="$OUT/$model-$v"
  if [ -f "$dir/manifest.json" ] && "$RUNNER" verify "$dir" >/dev/null 2>&1; then return 0; fi
  [ -n "$src" ] || die "no source to make $dir from"
  rm -rf "$dir"
  log "prep $src -> $dir ($(args_of "$v") $*)"
  # shellcheck disable=SC2046
  "$PREP" "$src" --out "$dir" $(args_of "$v") "$@" --quiet >&2
}
SMOL="$(scripts/fetch-smollm2.sh | tail -n 1)"
for v in "${VARIANTS[@]}"; do make_container smollm2 "$SMOL" "$v"; done
MODELS=(smollm2)
if [ "$DO_7B" = 1 ]; then
  CKPT="$BENCH_DIR/llama2-7b"
  need=0
  for v in "${VARIANTS[@]}"; do
    d="$OUT/llama2-7b-$v"
    [ -f "$d/manifest.json" ] && "$RUNNER" verify "$d" >/dev/null 2>&1 || need=1
  done
  if [ "$need" = 1 ]; then
    if [ ! -f "$CKPT/model.safetensors.index.json" ]; then
      log "writing the random f16 llama2-7b checkpoint to $CKPT (13.5 GB)"
      rm -rf "$CKPT"
      cargo build --release --locked -p strata-prep --example make_random_checkpoint >&2
      target/release/examples/make_random_checkpoint --shape llama2-7b --out "$CKPT" >/dev/null
    fi
    # bf16 last, deleting each source shard once converted and verified.
    for v in nf4 int8 bf16-zstd; do make_container llama2-7b "$CKPT" "$v"; done
    make_container llama2-7b "$CKPT" bf16 --delete-originals
    rm -rf "$CKPT"
  fi
  MODELS+=(llama2-7b)
fi

# ---- the throttle --------------------------------------------------------------------------------
DEV_SRC="$(df --output=source "$OUT" | tail -n 1)"
DISK="$(lsblk -no PKNAME "$DEV_SRC" 2>/dev/null | head -n 1)"
[ -n "$DISK" ] || DISK="$(basename "$DEV_SRC")"
MAJMIN="$(lsblk -dno MAJ:MIN "/dev/$DISK" 2>/dev/null | tr -d ' ')"
[ -n "$MAJMIN" ] || die "cannot find the block device under $OUT (df says $DEV_SRC): no throttle possible"
if [ -f /sys/fs/cgroup/blkio/blkio.throttle.read_bps_device ]; then
  CG_KIND=v1
  CG_PARENT=/sys/fs/cgroup/blkio
elif [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw io /sys/fs/cgroup/cgroup.controllers; then
  CG_KIND=v2
  CG_PARENT=/sys/fs/cgroup
  grep -qw io /sys/fs/cgroup/cgroup.subtree_control || echo +io > /sys/fs/cgroup/cgroup.subtree_control ||
    die "cannot enable the io controller for child cgroups"
else
  die "no block-I/O cgroup (v1 blkio or v2 io) on this machine: cannot throttle"
fi
CG=""
cg_remove() { if [ -n "$CG" ] && [ -d "$CG" ]; then rmdir "$CG" 2>/dev/null || log "could not remove $CG"; fi; CG=""; }
trap cg_remove EXIT
throttled() { # throttled BYTES_PER_S OUT ERR cmd...
  local bps="$1" out="$2" err="$3"; shift 3
  sync; echo 3 > /proc/sys/vm/drop_caches
  CG="$CG_PARENT/strata-slow-$$"
  mkdir "$CG"
  if [ "$CG_KIND" = v1 ]; then
    echo "$MAJMIN $bps" > "$CG/blkio.throttle.read_bps_device"
  else
    echo "$MAJMIN rbps=$bps" > "$CG/io.max"
  fi
  set +e
  sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$CG" "$@" >"$out" 2>"$err"
  RC=$?
  set -e
  cg_remove
}

echo "disk: /dev/$DISK ($MAJMIN), reads capped with cgroup $CG_KIND; page cache dropped before each run; runner bench --max-memory 0"
declare -A SPT
for model in "${MODELS[@]}"; do
  if [ "$model" = smollm2 ]; then runs=$RUNS; k=4; else runs=$RUNS_7B; k=1; fi
  for rate in $RATES; do
    bps=$((rate * 1000 * 1000))
    for v in "${VARIANTS[@]}"; do
      dir="$OUT/$model-$v"
      spts=() bpt=0 dec=0
      for r in $(seq 1 "$runs"); do
        log "[$model $v ${rate} MB/s] run $r/$runs"
        throttled "$bps" "$LOGS/$model-$v-$rate-$r.json" "$LOGS/$model-$v-$rate-$r.err" \
          "$RUNNER" bench "$dir" --max-memory 0 --prompt-tokens 1 --new-tokens "$k" --ctx 64 -q
        [ "$RC" = 0 ] || die "runner failed ($model $v $rate MB/s): $(tail -n 1 "$LOGS/$model-$v-$rate-$r.err")"
        j="$(cat "$LOGS/$model-$v-$rate-$r.json")"
        spts+=("$(calc "%.4f" "1 / $(json_get decode_tokens_per_s "$j")")")
        bpt=$(json_get bytes_read_per_token "$j")
        dec=$(json_get decompress_seconds_per_token "$j")
        io=$(json_get io_backend "$j")
      done
      spt=$(printf '%s\n' "${spts[@]}" | median)
      limit=$(calc "%.4f" "$bpt / $bps")
      SPT["$model-$v-$rate"]=$spt
      echo "[$model $rate MB/s] $v: $(calc "%.2f" "$spt") s/token (median of $runs: ${spts[*]}), read $(calc "%.1f MB" "$bpt / 1e6")/token, I/O limit $(calc "%.2f" "$limit") s, ratio $(calc "%.2f" "$spt / $limit")x, decompression $(calc "%.2f" "${dec:-0}") s/token, io $io"
    done
    echo "[$model $rate MB/s] bf16+zstd vs bf16: $(calc "%.2f" "${SPT[$model-bf16-zstd-$rate]} / ${SPT[$model-bf16-$rate]}")x the time per token"
  done
done
# Holding resident layers compressed: SmolLM2 bf16+zstd under a budget that holds part of the model,
# at the lowest cap, --keep-compressed yes (what auto picks here) against no.
low=$(tr ' ' '\n' <<<"$RATES" | sort -n | head -n 1)
for keep in yes no; do
  spts=()
  for r in $(seq 1 "$RUNS"); do
    throttled $((low * 1000 * 1000)) "$LOGS/keep-$keep-$r.json" "$LOGS/keep-$keep-$r.err" \
      "$RUNNER" bench "$OUT/smollm2-bf16-zstd" --max-memory "$KEEP_BUDGET" --keep-compressed "$keep" \
      --prompt-tokens 1 --new-tokens 4 --ctx 64 -q
    [ "$RC" = 0 ] || die "runner failed (--keep-compressed $keep): $(tail -n 1 "$LOGS/keep-$keep-$r.err")"
    j="$(cat "$LOGS/keep-$keep-$r.json")"
    spts+=("$(calc "%.4f" "1 / $(json_get decode_tokens_per_s "$j")")")
  done
  echo "[smollm2 $low MB/s] bf16-zstd --max-memory $KEEP_BUDGET --keep-compressed $keep: $(calc "%.2f" "$(printf '%s\n' "${spts[@]}" | median)") s/token (median of $RUNS), resident $(calc "%.0f MB" "$(json_get resident_bytes "$j") / 1e6"), read $(calc "%.1f MB" "$(json_get bytes_read_per_token "$j") / 1e6")/token, decompression $(calc "%.2f" "$(json_get decompress_seconds_per_token "$j")") s/token"
done

last="${MODELS[${#MODELS[@]}-1]}"
echo "headline: $last at $low MB/s: bf16+zstd $(calc "%.2f" "${SPT[$last-bf16-zstd-$low]}") s/token vs bf16 $(calc "%.2f" "${SPT[$last-bf16-$low]}") s/token ($(calc "%.2f" "${SPT[$last-bf16-zstd-$low]} / ${SPT[$last-bf16-$low]}")x)"
