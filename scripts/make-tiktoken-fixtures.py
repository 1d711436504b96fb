#!/usr/bin/env python3
"""Build a small tiktoken rank file and record what the tiktoken library does with it, the Qwen (v1) and GLM-4 way.

Output: tests/fixtures/tiktoken/{ranks.tiktoken, golden.json} (relative to the repository root, or OUT_DIR).

    ~/.cache/strata-venv-ref/bin/python scripts/make-tiktoken-fixtures.py [OUT_DIR]

Needs `tiktoken` (0.14.0 made the committed files) in the reference venv (see scripts/make-tiny-fixtures.py) and the
SmolLM2-135M-Instruct folder from scripts/fetch-smollm2.sh (env STRATA_SMOLLM2, default
~/.cache/strata-models/smollm2-135m-instruct).

Qwen (v1) (`qwen.tiktoken`) and GLM-4 (whose `tokenizer.model` is such a file) publish tiktoken rank files: one
line per token, `base64(token bytes) rank`. Their Python tokenizers (remote code `tokenization_qwen.py`,
`tokenization_chatglm.py`) build `tiktoken.Encoding(pat_str=..., mergeable_ranks=..., special_tokens=...)` with the
special tokens numbered after the ranks. `prep` converts such a file into tokenizer.json (prep/src/tiktoken.rs).

The rank file here is a real byte-level BPE: the 256 single bytes (ranks 0..255, in byte order), then the tokens
made by the first 3000 merges of SmolLM2's tokenizer.json, in merge order (each merge's parts have lower ranks, as
tiktoken needs). golden.json records, for each test string and each family, what the families' code does:

- qwen: `unicodedata.normalize("NFC", text)`, then `enc.encode(text, allowed_special="all")` with Qwen's PAT_STR
  (one digit per number piece) and its 208 special tokens (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`,
  `<|extra_0|>`..`<|extra_204|>`); no BOS;
- glm4: the cl100k pattern (up to three digits per number piece), no NFC, its 14 special tokens (`<|endoftext|>`,
  `[MASK]`, `[gMASK]`, `[sMASK]`, `<sop>`, `<eop>`, role and image/video tokens), which its tokenizer_config
  registers, so transformers splits them out of the text before tiktoken runs (= allowed_special="all");
  `[gMASK]`, `<sop>` before the text when special tokens are added.

and `enc.decode(ids)` (invalid UTF-8 replaced by U+FFFD).
"""

import base64
import json
import os
import sys
import unicodedata
from pathlib import Path

import tiktoken

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests" / "fixtures" / "tiktoken"
MODEL_DIR = Path(os.environ.get("STRATA_SMOLLM2",
                                Path.home() / ".cache" / "strata-models" / "smollm2-135m-instruct"))
MERGES = 3000

QWEN_PAT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
GLM4_PAT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(205)]
GLM4_SPECIAL = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
                "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
                "<|end_of_video|>"]

TESTS = [
    "Hello world",
    "The capital of France is",
    " leading space and  double  spaces   ",
    "tabs\tand\nnew\nlines\n\n\n",
    "numbers 1234567890 and 3.14159 and 2024-05-08",
    "don't won't it's I'M You'LL",
    "中文的测试，我们在这里。東京",
    "emoji 🎉👍🏽 and accents naïve café",
    "decomposed: cafe\u0301 and A\u030a (NFC composes them)",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "[gMASK]<sop><|user|>\nHello<|assistant|>",
    "<|endoftext|>text<|extra_3|>",
    "code: fn main() { println!(\"hi\"); }",
    "Tom & Jerry's <b>\"quoted\"</b> \\ back\\slash — ok",
    "",
    "   ",
    "a" * 50,
]


def bytes_to_unicode():
    """GPT-2's byte-to-character table (the alphabet of byte-level tokenizer.json vocabularies)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def main():
    tj = json.loads((MODEL_DIR / "tokenizer.json").read_text(encoding="utf-8"))
    decode = {c: b for b, c in bytes_to_unicode().items()}
    ranks = {bytes([b]): b for b in range(256)}
    for merge in tj["model"]["merges"][:MERGES]:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        token = bytes(decode[c] for c in left + right)
        if token not in ranks:
            ranks[token] = len(ranks)
    OUT.mkdir(parents=True, exist_ok=True)
    lines = [f"{base64.b64encode(t).decode()} {r}" for t, r in sorted(ranks.items(), key=lambda x: x[1])]
    (OUT / "ranks.tiktoken").write_text("\n".join(lines) + "\n", encoding="ascii")
    families = {}
    for name, pat, special, nfc, prefix in [("qwen", QWEN_PAT, QWEN_SPECIAL, True, []),
                                            ("glm4", GLM4_PAT, GLM4_SPECIAL, False, ["[gMASK]", "<sop>"])]:
        specials = {t: len(ranks) + i for i, t in enumerate(special)}
        enc = tiktoken.Encoding(name, pat_str=pat, mergeable_ranks=ranks, special_tokens=specials)
        cases = []
        for s in TESTS:
            text = unicodedata.normalize("NFC", s) if nfc else s
            ids = enc.encode(text, allowed_special="all")
            cases.append({"text": s, "ids": ids, "ids_with_special_tokens": [specials[t] for t in prefix] + ids,
                          "decoded": enc.decode(ids)})
        families[name] = {"pattern": pat, "special_tokens": special, "nfc": nfc, "prefix": prefix,
                          "cases": cases}
    golden = {
        "format": "strata-tiktoken-golden/1",
        "reference": {"tiktoken": tiktoken.__version__,
                      "call": "tiktoken.Encoding(...).encode(text, allowed_special='all') / .decode(ids)"},
        "ranks": len(ranks),
        "families": families,
    }
    (OUT / "golden.json").write_text(json.dumps(golden, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"{len(ranks)} ranks", file=sys.stderr)


if __name__ == "__main__":
    main()
