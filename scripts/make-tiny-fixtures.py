#!/usr/bin/env python3
"""Write tiny random Llama-family checkpoints and their transformers reference outputs.

Output: tests/fixtures/tiny/<variant>/{config.json, model.safetensors, generation_config.json, golden.json}
(relative to the repository root, or to OUT_DIR if given).

    scripts/make-tiny-fixtures.py [OUT_DIR]      # run with the reference venv's python, see below

Reference venv (outside the repository; it is about 5.6 GB because PyPI's torch pulls the CUDA wheels,
which are not needed here; a CPU-only torch from the PyTorch index works too if you can reach it):

    python3 -m venv ~/.cache/strata-venv-ref
    ~/.cache/strata-venv-ref/bin/pip install torch==2.15.0 transformers==5.23.0 safetensors==0.8.0
    ~/.cache/strata-venv-ref/bin/python scripts/make-tiny-fixtures.py

The committed fixtures were made with Python 3.11.7, torch 2.15.0+cu132 (run on CPU), transformers 5.23.0,
safetensors 0.8.0, numpy 2.4.6. Other versions should give the same weights (they come from torch's CPU
generator) and the same logits to about 1e-6, but treat the committed golden.json files as the reference.

What the script does, per variant:
1. Builds the weights with torch.Generator (fixed seed per variant, fixed tensor order, independent of
   transformers), rounds them to bfloat16 (round-to-nearest-even) and writes model.safetensors with the
   standard HF tensor names. Tied variants have no lm_head.weight, as on the Hub.
2. Writes config.json by hand in the classic Hub layout (`rope_theta`, `rope_scaling`, `torch_dtype`) that
   most published checkpoints use. transformers 5.x itself would save `rope_parameters` and `dtype` instead.
3. Loads the folder back with AutoModelForCausalLM.from_pretrained(dtype=float32, attn_implementation="eager").
   It checks that no keys are missing or unexpected, that every parameter equals the bf16 file value upcast,
   and that transformers parsed the config as intended (rope type, head_dim, window...).
4. Computes the reference: logits of all 12 positions, the residual stream after every decoder layer, and
   8 greedy tokens with the KV cache from the first 5 ids. It also recomputes the greedy tokens without the
   cache and requires them to match.
5. Seed search: tries seeds base, base+1, ... and keeps the first whose top1-top2 logit margin is at least
   MIN_MARGIN at every position and every greedy step, and whose greedy output is not one repeated token, so
   that argmax comparisons in the Rust tests are never near ties. The seed used goes into golden.json.
6. For mistral, checks empirically that eager attention applies the window (logits vs sliding_window=None)
   and that the mask it receives is exactly "query i attends key j iff 0 <= i - j < sliding_window".
Everything is deterministic: torch runs with 1 thread, and json is written with sorted keys and no timestamps.
"""

import json
import math
import os
import platform
import sys

import numpy as np
import safetensors
import safetensors.torch
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "tests", "fixtures", "tiny")

IDS = [1, 17, 42, 99, 3, 150, 77, 8, 123, 64, 159, 31]  # 12 fixed token ids < vocab (159 = vocab-1)
N_PROMPT = 5
N_NEW = 8
DECIMALS = 6
MIN_MARGIN = 0.02  # smallest top1-top2 logit gap accepted at any position / greedy step
MAX_SEED_TRIES = 50

BASE = {
    "vocab_size": 160,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "initializer_range": 0.02,
    "use_cache": True,
    "torch_dtype": "bfloat16",
}

LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
         "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0, "pretraining_tp": 1}

# name -> (seed, config overrides, description)
VARIANTS = {
    "llama": (1000, {**LLAMA}, "LlamaForCausalLM, default RoPE (theta 1e4), untied lm_head, no head_dim key"),
    "llama-tied": (2000, {**LLAMA, "tie_word_embeddings": True},
                   "tie_word_embeddings=true: no lm_head.weight in the file, the head is embed_tokens"),
    "llama3-rope": (3000, {**LLAMA, "head_dim": 16, "rope_theta": 500000.0,
                           "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}},
                    "Llama-3.1 RoPE scaling, theta 5e5; original_max 64 puts the 8 frequencies in all three bands"),
    "llama-linear-rope": (4000, {**LLAMA, "hidden_size": 80, "num_attention_heads": 5, "num_key_value_heads": 1,
                                 "rope_scaling": {"rope_type": "linear", "factor": 2.0}},
                          "linear RoPE scaling (factor 2), hidden 80 (rows not a multiple of 64), 5 heads, 1 KV head"),
    "mistral": (5000, {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "rope_theta": 1000000.0,
                       "sliding_window": 5, "attention_dropout": 0.0},
                "MistralForCausalLM with sliding_window 5 (applies within the 12-token sequence and during greedy)"),
    "qwen2": (6000, {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "rope_theta": 1000000.0,
                     "rms_norm_eps": 1e-06, "use_sliding_window": False, "sliding_window": 4,
                     "max_window_layers": 1, "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2},
              "Qwen2: q/k/v biases; sliding_window 4 present but use_sliding_window false (must be ignored)"),
    "qwen3": (7000, {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "head_dim": 16,
                     "rope_theta": 1000000.0, "rms_norm_eps": 1e-06, "attention_bias": False,
                     "use_sliding_window": False, "sliding_window": 4, "max_window_layers": 1,
                     "attention_dropout": 0.0},
              "Qwen3: per-head RMSNorm on q and k (q_norm/k_norm), explicit head_dim, no biases; "
              "sliding_window 4 present but use_sliding_window false (must be ignored)"),
}

# config.json is written with sorted keys, as transformers' save_pretrained does.


def make_config(overrides):
    cfg = dict(BASE)
    cfg.update(overrides)
    if cfg["rope_scaling"] is None:
        del cfg["rope_scaling"]  # Hub configs without scaling carry rope_scaling: null or omit it; omit
    cfg["transformers_version"] = transformers.__version__
    return cfg


def tensor_specs(cfg):
    """(name, shape, kind) in a fixed order, derived from the config alone."""
    h = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or h // nh
    inter = cfg["intermediate_size"]
    v = cfg["vocab_size"]
    mt = cfg["model_type"]
    specs = [("model.embed_tokens.weight", (v, h), "embed")]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        specs += [
            (p + "input_layernorm.weight", (h,), "norm"),
            (p + "self_attn.q_proj.weight", (nh * hd, h), "proj_qk"),
            (p + "self_attn.k_proj.weight", (nkv * hd, h), "proj_qk"),
            (p + "self_attn.v_proj.weight", (nkv * hd, h), "proj"),
        ]
        if mt == "qwen2":
            specs += [
                (p + "self_attn.q_proj.bias", (nh * hd,), "bias"),
                (p + "self_attn.k_proj.bias", (nkv * hd,), "bias"),
                (p + "self_attn.v_proj.bias", (nkv * hd,), "bias"),
            ]
        if mt == "qwen3":
            specs += [
                (p + "self_attn.q_norm.weight", (hd,), "norm"),
                (p + "self_attn.k_norm.weight", (hd,), "norm"),
            ]
        specs += [
            (p + "self_attn.o_proj.weight", (h, nh * hd), "proj"),
            (p + "post_attention_layernorm.weight", (h,), "norm"),
            (p + "mlp.gate_proj.weight", (inter, h), "proj"),
            (p + "mlp.up_proj.weight", (inter, h), "proj"),
            (p + "mlp.down_proj.weight", (h, inter), "proj"),
        ]
    specs.append(("model.norm.weight", (h,), "norm"))
    if not cfg["tie_word_embeddings"]:
        specs.append(("lm_head.weight", (v, h), "head"))
    return specs


def make_weights(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape, kind in tensor_specs(cfg):
        x = torch.randn(shape, generator=g, dtype=torch.float32)
        if kind == "embed":
            x = x * 0.3
        elif kind == "proj_qk":
            x = x * 0.25  # large enough that attention is far from uniform
        elif kind == "proj":
            x = x * 0.15
        elif kind == "head":
            x = x * 0.2
        elif kind == "norm":
            x = 1.0 + 0.1 * x
        elif kind == "bias":
            x = 0.2 * x
        else:
            raise AssertionError(kind)
        out[name] = x.to(torch.bfloat16).contiguous()
    return out


def r(x):
    return [round(float(v), DECIMALS) for v in x]


def check_loaded(model, weights, cfg, name):
    sd = model.state_dict()
    for k, w in weights.items():
        got = sd[k]
        assert got.dtype == torch.float32, (k, got.dtype)
        assert torch.equal(got, w.to(torch.float32)), f"{name}: {k} differs from the file"
    extra = set(sd) - set(weights)
    if cfg["tie_word_embeddings"]:
        assert extra == {"lm_head.weight"}, extra
        assert torch.equal(sd["lm_head.weight"], sd["model.embed_tokens.weight"])
    else:
        assert not extra, extra
    c = model.config
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    attn = model.model.layers[0].self_attn
    assert attn.head_dim == hd, (attn.head_dim, hd)
    assert attn.q_proj.out_features == cfg["num_attention_heads"] * hd
    rp = c.rope_parameters
    want_type = (cfg.get("rope_scaling") or {}).get("rope_type", "default")
    assert rp["rope_type"] == want_type, rp
    assert rp["rope_theta"] == cfg["rope_theta"], rp
    if cfg["model_type"] in ("qwen2", "qwen3"):
        assert c.sliding_window is None, c.sliding_window
        assert all(t == "full_attention" for t in c.layer_types), c.layer_types
    if cfg["model_type"] == "mistral":
        assert c.sliding_window == cfg["sliding_window"]


def layer_outputs(model, ids):
    """Residual stream after each decoder layer (before the final norm), via forward hooks."""
    rec = []
    hooks = [layer.register_forward_hook(lambda m, a, o: rec.append((o[0] if isinstance(o, tuple) else o).detach()))
             for layer in model.model.layers]
    emb = []
    hooks.append(model.model.embed_tokens.register_forward_hook(lambda m, a, o: emb.append(o.detach())))
    try:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
    finally:
        for hk in hooks:
            hk.remove()
    assert len(rec) == len(model.model.layers) and len(emb) == 1
    return logits, emb[0][0], [t[0] for t in rec]


def greedy(model, prompt):
    # NB: eos_token_id=None in the GenerationConfig passed to generate() does NOT override the model's
    # generation_config.json (eos 2): transformers 5.23 merges None fields from the model's defaults and stops at
    # eos. min_new_tokens is no way out either: it masks eos to -inf (a different argmax than plain greedy).
    # So eos is removed from the model's own generation config, in memory only.
    model.generation_config.eos_token_id = None
    gen = GenerationConfig(do_sample=False, max_new_tokens=N_NEW, eos_token_id=None,
                           pad_token_id=0, use_cache=True, num_beams=1)
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), generation_config=gen,
                             attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    new = out[0, len(prompt):].tolist()
    assert len(new) == N_NEW, new
    # uncached recomputation, plus top1-top2 margins
    seq = list(prompt)
    margins = []
    with torch.no_grad():
        for _ in range(N_NEW):
            lg = model(torch.tensor([seq]), use_cache=False).logits[0, -1]
            top = torch.topk(lg, 2)
            seq.append(int(top.indices[0]))
            margins.append(round(float(top.values[0] - top.values[1]), DECIMALS))
    return new, seq[len(prompt):], margins


def mistral_window_checks(folder, model, logits, w):
    """Empirical checks that eager attention applies the window, and what the window means."""
    # 1. logits with the window removed: positions < w must match, later ones must differ
    cfg = AutoConfig.from_pretrained(folder)
    cfg.sliding_window = None
    nowin = AutoModelForCausalLM.from_pretrained(folder, config=cfg, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    with torch.no_grad():
        l2 = nowin(torch.tensor([IDS])).logits[0]
    diff = (logits - l2).abs().max(dim=-1).values
    assert float(diff[:w].max()) == 0.0, diff
    assert bool((diff[w:] > 1e-3).all()), diff
    # 2. the mask that eager attention actually receives
    import transformers.models.mistral.modeling_mistral as mm
    orig = mm.eager_attention_forward
    masks = []

    def spy(module, query, key, value, attention_mask, *a, **k):
        masks.append(attention_mask.detach().clone())
        return orig(module, query, key, value, attention_mask, *a, **k)

    mm.eager_attention_forward = spy
    try:
        with torch.no_grad():
            model(torch.tensor([IDS]))
    finally:
        mm.eager_attention_forward = orig
    assert masks, "eager_attention_forward was not called"
    allowed = (masks[0][0, 0] == 0)  # additive mask: 0 = attend, -inf/min = masked
    n = len(IDS)
    rule = torch.tensor([[0 <= i - j < w for j in range(n)] for i in range(n)])
    assert torch.equal(allowed, rule), f"mask is not 0 <= i-j < {w}:\n{allowed.int()}"
    return {
        "max_abs_logit_diff_vs_no_window_by_position": r(diff.tolist()),
        "mask_rule": f"query i attends key j iff 0 <= i - j < sliding_window ({w}): each query sees {w} keys "
                     f"including itself",
    }


def write_folder(folder, cfg, weights):
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        f.write(json.dumps({"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"],
                            "transformers_version": transformers.__version__}, indent=2, sort_keys=True) + "\n")
    safetensors.torch.save_file(weights, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})


def main():
    os.makedirs(OUT, exist_ok=True)
    summary = {}
    for name, (base_seed, overrides, desc) in VARIANTS.items():
        folder = os.path.join(OUT, name)
        os.makedirs(folder, exist_ok=True)
        cfg = make_config(overrides)
        # Deterministic seed search: the first seed (base, base+1, ...) whose argmax is never a near tie,
        # neither at the 12 positions nor in the greedy steps, and whose greedy output is not one repeated token.
        for attempt in range(MAX_SEED_TRIES):
            seed = base_seed + attempt
            weights = make_weights(cfg, seed)
            write_folder(folder, cfg, weights)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
            model.eval()
            check_loaded(model, weights, cfg, name)
            logits, emb, layers = layer_outputs(model, IDS)
            new, uncached, margins = greedy(model, IDS[:N_PROMPT])
            assert new == uncached, f"{name}: cached greedy {new} != uncached {uncached}"
            top2 = torch.topk(logits, 2, dim=-1).values
            pos_margins = (top2[:, 0] - top2[:, 1]).tolist()
            if min(margins + pos_margins) >= MIN_MARGIN and len(set(new)) > 2:
                break
            print(f"{name}: seed {seed} rejected (min margin {min(margins + pos_margins):.4f}, "
                  f"greedy {new})", file=sys.stderr)
        else:
            raise SystemExit(f"{name}: no seed in {MAX_SEED_TRIES} tries gave margins >= {MIN_MARGIN}")

        golden = {
            "format": "strata-tiny-golden/1",
            "variant": name,
            "description": desc,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "safetensors": safetensors.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "compute": "float32 on CPU, bf16 weights from model.safetensors upcast exactly, "
                       "attn_implementation=eager, 1 torch thread",
            "seed": seed,
            "ids": IDS,
            "logits": [r(row) for row in logits.tolist()],
            "embeddings": [r(row) for row in emb.tolist()],
            "layer_outputs": [[r(row) for row in t.tolist()] for t in layers],
            "logits_top1_minus_top2": r(pos_margins),
            "greedy": {"ids": IDS[:N_PROMPT], "new_ids": new, "top1_minus_top2_logit": margins,
                       "stops_at_eos": False, "cached_equals_uncached": True},
            "notes": [
                f"logits[i] = all {cfg['vocab_size']} logits at position i of the full 12-id sequence "
                f"(no BOS added: ids are used as given), rounded to {DECIMALS} decimals",
                "embeddings[i] = embed_tokens row of ids[i]; layer_outputs[l][i] = residual stream after "
                "decoder layer l at position i (before the final norm)",
                f"greedy: {N_NEW} argmax tokens after the first {N_PROMPT} ids, transformers generate() "
                "with the KV cache, do_sample false, eos ignored; recomputed without cache and equal",
            ],
        }
        if name == "mistral":
            golden["sliding_window_check"] = mistral_window_checks(folder, model, logits, cfg["sliding_window"])
        with open(os.path.join(folder, "golden.json"), "w") as f:
            f.write(json.dumps(golden, sort_keys=True, separators=(",", ":")) + "\n")
        lg = logits
        summary[name] = {
            "logit_std": round(float(lg.std()), 3),
            "logit_range": [round(float(lg.min()), 2), round(float(lg.max()), 2)],
            "argmax": lg.argmax(-1).tolist(),
            "greedy": new,
            "seed": seed,
            "min_margin": round(min(margins + pos_margins), 4),
        }
        print(f"{name}: {summary[name]}", file=sys.stderr)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
