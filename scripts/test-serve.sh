#!/usr/bin/env bash
# test-serve.sh -- end-to-end tests of `runner serve` (tests/serve/test_serve.py) on the real
# SmolLM2-135M-Instruct: the official `openai` Python client (plain, streamed, 4 concurrent
# requests, each equal to `runner generate --chat`), raw HTTP for the errors, the Ollama API,
# and the chat page in headless Chromium (playwright driving Debian's /usr/bin/chromium).
#
# Installs what it needs: a venv with the pinned, hash-checked packages of
# tests/serve/requirements.txt under ${STRATA_MODELS:-~/.cache/strata-models}/venv-serve, and
# Debian's chromium (apt-get; as root or through sudo) when /usr/bin/chromium is missing.
# Uses the runner and prep binaries of target/debug (build them first), and the SmolLM2
# checkpoint of $STRATA_SMOLLM2 (default: scripts/fetch-smollm2.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
log() { echo "test-serve.sh: $*" >&2; }

MODELS="${STRATA_MODELS:-$HOME/.cache/strata-models}"
VENV="$MODELS/venv-serve"
REQS=tests/serve/requirements.txt
STAMP="$VENV/.requirements.sha256"
want="$(sha256sum "$REQS" | cut -c1-64)"
if [[ ! -x "$VENV/bin/python" || "$(cat "$STAMP" 2>/dev/null)" != "$want" ]]; then
  log "making $VENV"
  rm -rf "$VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --require-hashes -r "$REQS" >&2
  echo "$want" > "$STAMP"
fi

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [[ ! -x "$CHROMIUM" ]]; then
  log "installing Debian's chromium"
  SUDO=""
  if [[ "$(id -u)" != 0 ]]; then SUDO=sudo; fi
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >&2
fi
export CHROMIUM

SMOLLM2="${STRATA_SMOLLM2:-$(scripts/fetch-smollm2.sh | tail -n 1)}"
CONTAINER=target/e2e-containers/serve-smollm2-nf4
rm -rf "$CONTAINER"
target/debug/prep "$SMOLLM2" --out "$CONTAINER" --quant nf4 --quiet
"$VENV/bin/python" tests/serve/test_serve.py --runner target/debug/runner --container "$CONTAINER"
