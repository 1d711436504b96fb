#!/usr/bin/env bash
# fetch-qwen.sh [1.5b|0.5b] [DEST] -- the Qwen2.5-Coder checkpoints of scripts/fetch-model.sh
# (kept under this name for the scripts and notes that call it).
exec "$(dirname "${BASH_SOURCE[0]}")/fetch-model.sh" "${1:-1.5b}" "${@:2}"
