#!/usr/bin/env bash
# bench-quant-accuracy.sh -- perplexity lost to quantization, strata vs llama.cpp at equal bits.
#
# On the golden passage (tests/fixtures/smollm2/passage.txt) of SmolLM2-135M-Instruct, with the same
# token ids for everyone (strata's tokenizer; llama.cpp's own tokenization is compared and reported):
#   strata  `runner perplexity` on containers made by `prep`: bf16 (the checkpoint's exact weights, the
#           reference), int8 (block 64), nf4 block 64, nf4 block 32 (4.5 bits per weight);
#   llama.cpp (llama-cpp-python, scripts/llama-cpp.sh) on GGUFs of the same weights: Q4_1 (the model
#           package's file, from which the checkpoint was dequantized: it holds these weights
#           exactly), Q8_0, and IQ4_NL and Q4_0 (4.5 bits per weight) made with llama.cpp's quantizer.
#           Tokens are evaluated one at a time (this build's batched Q4_1 path crashes on AMX CPUs).
# Prints each perplexity and its loss relative to the bf16 reference; the last line compares strata
# nf4 block 32 with llama.cpp IQ4_NL.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BENCH_DIR="${STRATA_BENCH_DIR:-$HOME/.cache/strata-bench}"
OUT="$BENCH_DIR/accuracy"
PASSAGE=tests/fixtures/smollm2/passage.txt
mkdir -p "$OUT"
log() { echo "bench-quant-accuracy.sh: $*" >&2; }

log "building prep and runner (release)"
cargo build --release --locked -p strata-prep --bin prep -p strata-runner --bin runner >&2
MODEL="$(scripts/fetch-smollm2.sh | tail -n 1)"
PY="$(scripts/llama-cpp.sh python)"

declare -A PPL
for v in "bf16:--quant bf16" "int8-b64:--quant int8 --block-size 64" \
  "nf4-b64:--quant nf4 --block-size 64" "nf4-b32:--quant nf4 --block-size 32"; do
  name="${v%%:*}"
  dir="$OUT/smollm2-$name"
  rm -rf "$dir"
  # shellcheck disable=SC2086
  target/release/prep "$MODEL" --out "$dir" ${v#*:} --quiet
  j="$(target/release/runner perplexity "$dir" --file "$PASSAGE" --json -q)"
  PPL[$name]="$(sed -n 's/.*"perplexity":\([0-9.eE+-]*\).*/\1/p' <<<"$j")"
done
IDS="$(target/release/runner logits "$OUT/smollm2-bf16" --prompt "$(cat "$PASSAGE")" -q |
  "$PY" -c 'import json, sys; print(",".join(map(str, json.load(sys.stdin)["ids"])))')"

for t in Q4_1 Q8_0 IQ4_NL Q4_0; do
  gguf="$(scripts/llama-cpp.sh gguf "$t")"
  PPL[llama-$t]="$("$PY" - "$gguf" "$IDS" "$PASSAGE" <<'PY'
import sys
import numpy as np
from llama_cpp import Llama

path, ids, passage = sys.argv[1], [int(x) for x in sys.argv[2].split(",")], sys.argv[3]
llm = Llama(model_path=path, n_ctx=len(ids) + 8, n_batch=1, n_ubatch=1, logits_all=True,
            n_threads=2, n_threads_batch=2, verbose=False)
own = llm.tokenize(open(passage, "rb").read(), add_bos=False, special=True)
if own != ids:
    first = next((i for i, (a, b) in enumerate(zip(own, ids)) if a != b), min(len(own), len(ids)))
    print(f"note: llama.cpp tokenizes the passage differently from position {first} "
          f"({len(own)} vs {len(ids)} tokens); strata's ids are used", file=sys.stderr)
nll = 0.0
for i, tok in enumerate(ids):
    llm.eval([tok])
    if i + 1 < len(ids):
        row = np.asarray(llm.scores[i], dtype=np.float64)
        m = row.max()
        nll += (m + np.log(np.exp(row - m).sum())) - row[ids[i + 1]]
print(f"{np.exp(nll / (len(ids) - 1)):.6f}")
PY
)"
done

ref="${PPL[bf16]}"
loss() { awk -v p="$1" -v r="$ref" 'BEGIN { printf "%+.2f%%", (p / r - 1) * 100 }'; }
echo "perplexity on $PASSAGE ($(tr ',' '\n' <<<"$IDS" | wc -l) tokens); loss vs strata bf16 (the checkpoint's exact weights):"
for k in bf16 int8-b64 nf4-b64 nf4-b32; do echo "  strata $k: ${PPL[$k]} ($(loss "${PPL[$k]}"))"; done
for t in Q4_1 Q8_0 IQ4_NL Q4_0; do echo "  llama.cpp $t: ${PPL[llama-$t]} ($(loss "${PPL[llama-$t]}"))"; done
echo "at 4.5 bits per weight: strata nf4 block 32 $(loss "${PPL[nf4-b32]}") vs llama.cpp IQ4_NL $(loss "${PPL[llama-IQ4_NL]}") (Q4_0 $(loss "${PPL[llama-Q4_0]}"))"
