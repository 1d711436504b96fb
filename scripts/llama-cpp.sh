#!/usr/bin/env bash
# llama-cpp.sh python | gguf TYPE [MODEL] -- llama.cpp for the benchmarks, through llama-cpp-python.
#
#   python      installs llama-cpp-python (pinned; it compiles llama.cpp: minutes, once) into the venv
#               ${STRATA_BENCH_DIR:-$HOME/.cache/strata-bench}/venv-llama and prints its python
#   gguf TYPE [MODEL]
#               prints the path of MODEL (smollm2, the default: SmolLM2-135M-Instruct; qwen1.5b:
#               Qwen2.5-Coder-1.5B-Instruct) as a TYPE GGUF. The model package's own file for its own
#               type (SmolLM2: Q4_1; Qwen 1.5B: Q4_K_M); Q8_0, IQ4_NL, Q4_0: made once from it with
#               llama.cpp's quantizer, whose requantization dequantizes to f32 first, so these start
#               from exactly the weights that the safetensors checkpoint (and so every strata
#               container) holds
# Env: PYTHON (default python3) to create the venv; LLAMA_CPP_ISA=avx2 builds and uses a second
# venv, venv-llama-avx2, whose llama.cpp is compiled for AVX2/FMA/F16C only (GGML_NATIVE=OFF, no
# AVX-512), what a laptop without AVX-512 runs: the peer for strata's STRATA_KERNELS=avx2 path.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BENCH_DIR="${STRATA_BENCH_DIR:-$HOME/.cache/strata-bench}"
VENV="$BENCH_DIR/venv-llama"
PACKAGE="llama-cpp-python==0.3.36"
BUILD_ARGS=""
case "${LLAMA_CPP_ISA:-native}" in
  native) ;;
  avx2)
    VENV="$BENCH_DIR/venv-llama-avx2"
    BUILD_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
    BUILD_ARGS+=" -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF"
    BUILD_ARGS+=" -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" ;;
  *) echo "llama-cpp.sh: LLAMA_CPP_ISA is native or avx2" >&2; exit 2 ;;
esac
log() { echo "llama-cpp.sh: $*" >&2; }

venv_python() {
  if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
    log "installing $PACKAGE into $VENV (compiles llama.cpp: several minutes)"
    mkdir -p "$BENCH_DIR"
    rm -rf "$VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
    CMAKE_ARGS="$BUILD_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
      "$VENV/bin/pip" install --quiet --no-cache-dir "$PACKAGE" >&2
  fi
  echo "$VENV/bin/python"
}

case "${1:-}" in
  python) venv_python ;;
  gguf)
    TYPE="${2:?gguf needs a type: Q4_1, Q4_K_M, Q8_0, IQ4_NL or Q4_0}"
    case "${3:-smollm2}" in
      smollm2)
        MODEL="$(scripts/fetch-smollm2.sh | tail -n 1)"
        SRC="$MODEL/SmolLM2-135M-Instruct.Q4_1.gguf" OWN=Q4_1 NAME=smollm2 ;;
      qwen1.5b)
        MODEL="$(scripts/fetch-model.sh 1.5b | tail -n 1)"
        SRC="$MODEL/Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf" OWN=Q4_K_M NAME=qwen1.5b ;;
      *) log "unknown model ${3} (smollm2 or qwen1.5b)"; exit 2 ;;
    esac
    [ -f "$SRC" ] || { log "no $SRC"; exit 1; }
    if [ "$TYPE" = "$OWN" ]; then echo "$SRC"; exit 0; fi
    case "$TYPE" in Q8_0|IQ4_NL|Q4_0) ;; *) log "unknown type $TYPE for $NAME"; exit 2 ;; esac
    OUT="$BENCH_DIR/$NAME-$TYPE.gguf"
    if [ ! -s "$OUT" ]; then
      PY="$(venv_python)"
      log "quantizing $SRC to $TYPE"
      "$PY" - "$SRC" "$OUT.tmp" "$TYPE" >&2 <<'PY'
import ctypes, sys
import llama_cpp
src, dst, kind = sys.argv[1:4]
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}")
p.allow_requantize = True
p.nthread = 2
rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p))
sys.exit(f"llama_model_quantize returned {rc}" if rc else 0)
PY
      mv "$OUT.tmp" "$OUT"
    fi
    echo "$OUT"
    ;;
  *) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
