#!/usr/bin/env python3
"""Write transformers' reference outputs for a real checkpoint folder (tests/fixtures/<model>/golden.json).

Usage:
    ~/.cache/strata-venv-ref/bin/python scripts/make-real-goldens.py MODEL_DIR OUT.json NAME SOURCE
    ~/.cache/strata-venv-ref/bin/python scripts/make-real-goldens.py --gguf GGUF_NAME [--passage-only] \
        MODEL_DIR OUT.json NAME SOURCE      # -> tests/fixtures/<model>/gguf-golden.json

MODEL_DIR is a folder made by scripts/fetch-model.sh (bf16 model.safetensors, config.json, tokenizer files);
NAME and SOURCE are recorded as they are given. The venv is the one of scripts/make-tiny-fixtures.py plus
sentencepiece-free tokenization: transformers 5.23.0, torch 2.15.0, tokenizers 0.23.3, safetensors 0.8.0
(--gguf also needs gguf 0.19.0). To recreate it (~4 min; PyPI's torch wheel, CUDA libraries and all, when the
CPU index is not reachable; it runs on CPU all the same):
    python3 -m venv ~/.cache/strata-venv-ref && ~/.cache/strata-venv-ref/bin/pip install torch==2.15.0 \
        transformers==5.23.0 tokenizers==0.23.3 safetensors==0.8.0 gguf==0.19.0 numpy==2.4.6 accelerate

The tokenizer is transformers' own: AutoTokenizer on MODEL_DIR (a tokenizer.json), or, for a folder that holds
a SentencePiece tokenizer.model and the GGUF it came from (Gemma 3), AutoTokenizer on that GGUF (transformers'
GGUF tokenizer converter), so that the ids do not come from strata's own conversion.

--gguf GGUF_NAME: the "from the GGUF" golden instead. The model is transformers' own GGUF loader,
AutoModelForCausalLM.from_pretrained(dir, gguf_file=GGUF_NAME, dtype=torch.float32) on MODEL_DIR/GGUF_NAME alone
(symlinked into an empty folder, so that the folder's config.json and converted weights play no part): every
tensor dequantized by gguf-py to float32, no bf16 rounding. The tokenizer is then always transformers' GGUF
tokenizer of that file. --passage-only (for models too slow for the prompts, e.g. the 1.5B) writes no prompts.

Written (json, sorted keys), in the format of tests/fixtures/smollm2/golden.json (`strata-golden/1`) except
that whole logit rows of 150k-262k-entry vocabularies (Qwen 2.5, Gemma 3) are too large to commit: for every
model this script writes, per prompt, `last_logits_top64` (ids and values of the 64 largest logits of the last
position) and `last_logits_strided` (every 97th logit, ids 0, 97, 194, ...) in place of `last_logits`.
  - prompts: plain-text completions (the tokenizer's BOS added as it adds it), input_ids, the two logit
    extracts, 24 greedy tokens with the KV cache (EOS not stopping), the text they decode to (special tokens
    skipped, as `runner generate` prints), and each step's top1 - top2 margin;
  - passage: tests/fixtures/smollm2/passage.txt, its ids, mean NLL over positions 1.. and perplexity
    (with --gguf also each position's NLL, `token_nll`, rounded to 5 decimals).
Compute: float32 (the bf16 weights upcast exactly; with --gguf the dequantized GGUF tensors), eager attention,
2 torch threads, CPU. Reruns on one machine are byte-identical; on another CPU, logits may move by ~4e-5.
"""

import argparse
import json
import os
import platform
import sys

import numpy as np
import tokenizers
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = [
    ("plain", "The three primary colors of light are red, green, and"),
    ("capital", "The capital of France is"),
    ("code", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"),
]
N_NEW = 24
STRIDE = 97


def r(x, d):
    return [round(float(v), d) for v in x]


def alone(model_dir, gguf):
    """A fresh folder holding only a symlink to MODEL_DIR/gguf (else the folder's own files would be read)."""
    import tempfile
    d = tempfile.mkdtemp()
    os.symlink(os.path.abspath(os.path.join(model_dir, gguf)), os.path.join(d, gguf))
    return d


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", metavar="GGUF_NAME", help="load this GGUF of MODEL_DIR with transformers (f32)")
    ap.add_argument("--passage-only", action="store_true", help="with --gguf: the passage only, no prompts")
    ap.add_argument("model_dir")
    ap.add_argument("out_path")
    ap.add_argument("name")
    ap.add_argument("source")
    a = ap.parse_args()
    model_dir, out_path, name, source = a.model_dir, a.out_path, a.name, a.source
    if a.passage_only and not a.gguf:
        ap.error("--passage-only needs --gguf")
    ggufs = sorted(f for f in os.listdir(model_dir) if f.endswith(".gguf"))
    if a.gguf:
        d = alone(model_dir, a.gguf)
        tok = AutoTokenizer.from_pretrained(d, gguf_file=a.gguf)
        tok_source = f"AutoTokenizer on {a.gguf} (transformers' GGUF tokenizer converter)"
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=a.gguf, dtype=torch.float32,
                                                     attn_implementation="eager").eval()
    else:
        if os.path.exists(os.path.join(model_dir, "tokenizer.json")) or not ggufs:
            tok = AutoTokenizer.from_pretrained(model_dir)
            tok_source = "AutoTokenizer on the folder's tokenizer.json"
        else:
            tok = AutoTokenizer.from_pretrained(alone(model_dir, ggufs[0]), gguf_file=ggufs[0])
            tok_source = f"AutoTokenizer on {ggufs[0]} (transformers' GGUF tokenizer converter)"
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                     attn_implementation="eager").eval()
    prompts = []
    for pname, text in ([] if a.passage_only else PROMPTS):
        ids = tok(text).input_ids
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        top = torch.topk(logits, 64)
        gen = model.generate(torch.tensor([ids]), max_new_tokens=N_NEW, do_sample=False, eos_token_id=None,
                             output_scores=True, return_dict_in_generate=True, pad_token_id=0)
        new = gen.sequences[0, len(ids):].tolist()
        margins = []
        for s in gen.scores:
            t2 = torch.topk(s[0], 2).values
            margins.append(round(float(t2[0] - t2[1]), 6))
        with torch.no_grad():
            uncached = model(gen.sequences[:, :-1]).logits[0, len(ids) - 1:].argmax(-1).tolist()
        prompts.append({
            "name": pname,
            "kind": "plain",
            "text": text,
            "input_ids": ids,
            "num_input_tokens": len(ids),
            "last_logits_top64": {"ids": top.indices.tolist(), "values": r(top.values.tolist(), 5)},
            "last_logits_strided": {"stride": STRIDE, "values": r(logits[::STRIDE].tolist(), 5)},
            "greedy": {
                "max_new_tokens": N_NEW,
                "stops_at_eos": False,
                "token_ids": new,
                "text": tok.decode(new, skip_special_tokens=True),
                "top1_minus_top2_logit": margins,
                "cached_equals_uncached": uncached == new,
            },
        })
    passage = open(os.path.join(REPO, "tests/fixtures/smollm2/passage.txt"), encoding="utf-8").read()
    pids = tok(passage).input_ids
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([pids])).logits[0].double(), -1)
    nll = [-float(lp[i - 1, pids[i]]) for i in range(1, len(pids))]
    mean = sum(nll) / len(nll)
    golden = {
        "format": "strata-golden/1",
        "model": {"name": name, "source": source,
                  "folder": "converted by scripts/fetch-model.sh (scripts/gguf_to_hf.py)",
                  "tokenizer": tok_source},
        "reference": {"library": "transformers", "transformers": transformers.__version__,
                      "torch": torch.__version__, "tokenizers": tokenizers.__version__, "numpy": np.__version__,
                      "python": platform.python_version(),
                      "compute_dtype": "float32 (bf16 weights from model.safetensors upcast exactly)",
                      "attn_implementation": "eager", "device": "cpu", "torch_threads": 2},
        "notes": [
            "input_ids come from the tokenizer named in model.tokenizer, special tokens added as it adds them.",
            f"last_logits_top64: the 64 largest logits of the last input position (ids, values rounded to 5 "
            f"decimals); last_logits_strided: logits of ids 0, {STRIDE}, {2 * STRIDE}, ... rounded to 5 decimals.",
            f"greedy: {N_NEW} argmax steps with a KV cache, not stopping at EOS; text decodes them with special "
            f"tokens skipped; cached_equals_uncached: the same ids from one uncached pass.",
            "passage: tests/fixtures/smollm2/passage.txt; token_nll[i] = -log p(token i+1 | tokens 0..i) in float64 "
            "from float32 logits; mean_nll is their mean.",
        ],
        "prompts": prompts,
        "passage": {"name": "water_cycle", "token_ids": pids, "num_tokens": len(pids),
                    "num_predicted": len(nll), "mean_nll": round(mean, 6),
                    "perplexity": round(float(np.exp(mean)), 5)},
    }
    if a.gguf:
        from importlib.metadata import version
        golden["model"]["folder"] = (f"{a.gguf} alone, loaded by transformers' GGUF loader "
                                     f"(from_pretrained(dir, gguf_file=...), gguf-py dequantization)")
        golden["model"]["gguf_file"] = a.gguf
        golden["reference"]["gguf"] = version("gguf")
        golden["reference"]["compute_dtype"] = ("float32 (GGUF tensors dequantized to float32 by gguf-py, "
                                                "no bf16 rounding)")
        golden["passage"]["token_nll"] = r(nll, 5)
        golden["notes"].append("weights: the GGUF itself, dequantized to float32; compare with golden.json (bf16 "
                               "folder converted from the same GGUF) and llamacpp.json (llama.cpp on the GGUF).")
        if a.passage_only:
            golden["notes"].append("--passage-only: no prompts were run.")
    with open(out_path, "w") as f:
        f.write(json.dumps(golden, sort_keys=True, indent=1) + "\n")
    for p in prompts:
        print(p["name"], p["greedy"]["cached_equals_uncached"], min(p["greedy"]["top1_minus_top2_logit"]),
              repr(p["greedy"]["text"]), file=sys.stderr)
    print("passage", len(pids), "tokens, mean nll", round(mean, 5), file=sys.stderr)


if __name__ == "__main__":
    main()
