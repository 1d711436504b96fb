#!/usr/bin/env python3
"""llama.cpp's reference outputs for a GGUF, on the token ids of a transformers golden (tests/fixtures/<model>/llamacpp.json).

Usage:
    ~/.cache/strata-llamacpp/bin/python scripts/llamacpp-reference.py GGUF GOLDEN.json OUT.json

GGUF is the model file (e.g. ~/.cache/strata-models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf);
GOLDEN.json is the "from the GGUF" golden that scripts/make-real-goldens.py --gguf wrote for it
(tests/fixtures/<model>/gguf-golden.json). Its token ids are evaluated as they are (no tokenization here), so
that tokenizer differences play no part:
  - passage: passage.token_ids in one pass with logits for every position; token_nll[i] = -log p(ids[i+1] |
    ids[..=i]) in float64 from llama.cpp's float32 logits; mean_nll over positions 1.. and perplexity;
  - prompts (absent from a --passage-only golden): each prompt's input_ids; the last position's top-1 id (and
    its top-5 ids), then 24 greedy steps (argmax of the last logits, the KV cache kept, EOS not stopping).
`vs_golden` records where these agree with GOLDEN.json (top-1, greedy ids, first differing step, NLL delta).

The venv (~/.cache/strata-llamacpp): python3 -m venv, then
    pip install llama_cpp_python-0.3.36.tar.gz   (PyPI sdist, sha256
    832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e; it vendors llama.cpp at commit 0c1e57098bba,
    ggml 0.25.3, and builds it from source with -march=native: ~35 min on 2 busy cores)
with numpy, as pip resolves it. Compute: llama.cpp CPU backend, 2 threads, n_ctx 512 (>= passage length),
n_batch 512, logits_all, llama.cpp's default f16 KV cache; its quantized matmuls also quantize activations
(q8_0/q8_1/q8_K), so expect a slightly higher NLL than the f32 golden. Deterministic for a given machine and
thread count. Output: json, sorted keys.
"""

import hashlib
import json
import os
import platform
import sys

import numpy as np
import llama_cpp
from llama_cpp import Llama

# what the pinned sdist vendors (its .git/modules/vendor/llama.cpp/HEAD; cmake printed "ggml version: 0.25.3")
LLAMA_CPP_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
GGML_VERSION = "0.25.3"
N_CTX = 512
N_THREADS = 2


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def run(llm, ids):
    """Evaluate ids from an empty cache; return the float32 logits of every position (len(ids) x n_vocab)."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def main():
    gguf_path, golden_path, out_path = sys.argv[1:4]
    golden = json.load(open(golden_path))
    llm = Llama(model_path=gguf_path, n_ctx=N_CTX, n_batch=N_CTX, n_ubatch=N_CTX, n_threads=N_THREADS,
                n_threads_batch=N_THREADS, logits_all=True, seed=0, verbose=False)
    # passage
    pids = golden["passage"]["token_ids"]
    assert len(pids) <= N_CTX
    logits = run(llm, pids).astype(np.float64)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    nll = [float(lse[i - 1] - logits[i - 1, pids[i]]) for i in range(1, len(pids))]
    mean = sum(nll) / len(nll)
    passage = {"num_tokens": len(pids), "num_predicted": len(nll), "mean_nll": round(mean, 6),
               "perplexity": round(float(np.exp(mean)), 5), "token_nll": [round(v, 5) for v in nll],
               "token_ids_from": "golden passage.token_ids"}
    vs = {"passage_mean_nll_minus_golden": round(mean - golden["passage"]["mean_nll"], 6)}
    # prompts
    prompts = []
    for p in golden.get("prompts", []):
        ids = p["input_ids"]
        last = run(llm, ids)[-1]
        top5 = [int(i) for i in np.argsort(-last, kind="stable")[:5]]
        new = []
        for _ in range(p["greedy"]["max_new_tokens"]):
            t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            new.append(t)
            llm.eval([t])
        prompts.append({"name": p["name"], "input_ids": ids, "last_top1": top5[0], "last_top5": top5,
                        "greedy": {"max_new_tokens": len(new), "stops_at_eos": False, "token_ids": new}})
        g_top1 = p["last_logits_top64"]["ids"][0]
        g_new = p["greedy"]["token_ids"]
        diff = [i for i, (x, y) in enumerate(zip(new, g_new)) if x != y]
        vs[p["name"]] = {"top1_equal": top5[0] == g_top1, "greedy_equal": new == g_new,
                         "greedy_first_difference": diff[0] if diff else None}
    out = {
        "format": "strata-llamacpp-reference/1",
        "model": {"name": golden["model"]["name"], "source": golden["model"]["source"],
                  "gguf_file": os.path.basename(gguf_path), "gguf_sha256": sha256(gguf_path)},
        "reference": {"library": "llama.cpp (llama-cpp-python)", "llama_cpp_python": llama_cpp.__version__,
                      "llama_cpp_python_sdist_sha256":
                          "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
                      "llama_cpp_commit": LLAMA_CPP_COMMIT, "ggml": GGML_VERSION,
                      "system_info": llama_cpp.llama_print_system_info().decode().strip(),
                      "numpy": np.__version__, "python": platform.python_version(),
                      "n_ctx": N_CTX, "n_batch": N_CTX, "n_threads": N_THREADS, "logits_all": True,
                      "kv_cache_type": "f16 (llama.cpp's default)"},
        "golden": os.path.relpath(os.path.abspath(golden_path),
                                  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        "notes": [
            "Token ids are the golden's (transformers' GGUF tokenizer), not llama.cpp's own tokenization.",
            "passage: token_nll[i] = -log p(token i+1 | tokens 0..i), float64 from llama.cpp's float32 logits, "
            "rounded to 5 decimals; mean_nll is the mean of the unrounded values.",
            "prompts: last_top1/last_top5 are the argmax ids of the last input position; greedy: argmax steps "
            "with llama.cpp's KV cache, not stopping at EOS.",
            "vs_golden: agreement with the golden file named in `golden`.",
        ],
        "prompts": prompts,
        "passage": passage,
        "vs_golden": vs,
    }
    with open(out_path, "w") as f:
        f.write(json.dumps(out, sort_keys=True, indent=1) + "\n")
    print(json.dumps(vs, sort_keys=True), file=sys.stderr)
    print("passage", len(pids), "tokens, mean nll", round(mean, 5), file=sys.stderr)


if __name__ == "__main__":
    main()
