#!/usr/bin/env python3
"""Write tiny random checkpoints (Llama family, Gemma 2, Gemma 3, Phi-3, Mixtral/Qwen2-MoE/Qwen3-MoE) and their transformers
reference outputs.

Output: tests/fixtures/tiny/<variant>/{config.json, model.safetensors, generation_config.json, golden.json}
(relative to the repository root, or to OUT_DIR if given).

    scripts/make-tiny-fixtures.py [--only VARIANT,VARIANT] [OUT_DIR]   # run with the reference venv's python

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
6. For mistral, mixtral, phi3, gemma2 and gemma3, checks empirically that eager attention applies the window (logits vs no window)
   and that the mask each sliding layer receives is exactly "query i attends key j iff 0 <= i - j < sliding_window"
   (gemma2: layer 0 slides, layer 1 is plainly causal).
7. gemma2: checks the embedding scale transformers multiplies by (sqrt(hidden) as a float32 tensor cast to the
   weight dtype, float32 here) and that both soft-caps change the logits. phi3-longrope: also records the logits of
   the first 8 ids (a sequence of original_max_position_embeddings = 8 positions: short factors), checks that the
   long factors matter, and records the attention factor transformers derived.
8. MoE variants (mixtral, qwen2-moe, qwen3-moe): the checkpoint uses the Hub's per-expert names (Mixtral's
   block_sparse_moe.experts.N.w1/w2/w3, Qwen's mlp.experts.N.{gate,up,down}_proj); transformers 5 fuses them on
   load, and the check compares the fused tensors with the file. The seed search also requires a routing margin:
   at every token of every layer, the k-th and (k+1)-th router probabilities differ by at least MIN_ROUTE_GAP, so
   that no expert choice is a near tie. golden.json records the experts each layer picked per position.
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
ARGS = sys.argv[1:]
ONLY = None
if ARGS[:1] == ["--only"]:
    ONLY = ARGS[1].split(",")
    ARGS = ARGS[2:]
OUT = ARGS[0] if ARGS else os.path.join(REPO, "tests", "fixtures", "tiny")

IDS = [1, 17, 42, 99, 3, 150, 77, 8, 123, 64, 159, 31]  # 12 fixed token ids < vocab (159 = vocab-1)
N_PROMPT = 5
N_NEW = 8
DECIMALS = 6
MIN_MARGIN = 0.02  # smallest top1-top2 logit gap accepted at any position / greedy step
MAX_SEED_TRIES = 50
MIN_ROUTE_GAP = 1e-3  # smallest gap between the k-th and (k+1)-th router probability (MoE variants)

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
# pad_token_id: Phi3Config's default (32000) is outside the tiny vocabulary (nn.Embedding refuses it).
PHI3 = {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "attention_dropout": 0.0, "resid_pdrop": 0.0,
        "embd_pdrop": 0.0, "pad_token_id": 0}
# MoE variants: 4 experts, top-2, experts of width 32 (small files; routing still varies per token).
MOE_EXPERTS = 4
MOE_TOP_K = 2
MOE_WIDTH = 32
# Gemma 2's real caps (50, 30) never bite on logits this small; these do (checked in golden.json).
GEMMA2_ATTN_CAP = 5.0
GEMMA2_FINAL_CAP = 3.0

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
    "gemma2": (8000, {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "hidden_size": 72,
                      "head_dim": 16, "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh",
                      "rms_norm_eps": 1e-06, "query_pre_attn_scalar": 24, "sliding_window": 4,
                      "attn_logit_softcapping": GEMMA2_ATTN_CAP, "final_logit_softcapping": GEMMA2_FINAL_CAP,
                      "tie_word_embeddings": True, "attention_bias": False, "attention_dropout": 0.0,
                      "pad_token_id": 0},
               "Gemma2ForCausalLM: (1+w) RMSNorms, post-attention and pre/post-feed-forward norms, GeGLU (tanh), "
               "embeddings times sqrt(72), query_pre_attn_scalar 24 (not head_dim 16), attention and final soft-caps "
               "small enough to bite, sliding window 4 on layer 0 only (default layer_types), tied head, "
               "hidden 72 != 4 heads x 16"),
    "gemma3": (14000, {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "hidden_size": 72,
                       "num_hidden_layers": 3, "head_dim": 16, "hidden_activation": "gelu_pytorch_tanh",
                       "rms_norm_eps": 1e-06, "query_pre_attn_scalar": 24, "sliding_window": 4,
                       "sliding_window_pattern": 3, "rope_theta": 1000000.0, "rope_local_base_freq": 100.0,
                       "rope_scaling": {"rope_type": "linear", "factor": 2.0},
                       "attn_logit_softcapping": None, "final_logit_softcapping": None,
                       "tie_word_embeddings": True, "attention_bias": False, "attention_dropout": 0.0,
                       "use_bidirectional_attention": False, "pad_token_id": 0},
               "Gemma3ForCausalLM: Gemma 2's (1+w) norms, post norms, GeGLU, sqrt(72) embeddings and "
               "query_pre_attn_scalar 24, plus (1+w) q/k norms, no soft-caps, sliding_window_pattern 3 (layers 0 "
               "and 1 slide with window 4, layer 2 is full), RoPE base 100 on sliding layers "
               "(rope_local_base_freq) and 1e6 with linear scaling (factor 2) on the full layer, tied head"),
    "phi3": (9000, {**PHI3, "original_max_position_embeddings": 256, "sliding_window": 7},
             "Phi3ForCausalLM: fused qkv_proj and gate_up_proj, no rope scaling, sliding_window 7 on every layer "
             "(Phi-3-mini-4k has 2047)"),
    "phi3-longrope": (10000, {**PHI3, "max_position_embeddings": 64, "original_max_position_embeddings": 8,
                              "partial_rotary_factor": 0.75,
                              "rope_scaling": {"type": "longrope",
                                               "short_factor": [1.0, 1.05, 1.1, 1.25, 1.5, 2.0],
                                               "long_factor": [1.0, 1.5, 2.5, 4.0, 7.0, 12.0]}},
                      "Phi3ForCausalLM with longrope (Phi-4-mini style: partial_rotary_factor 0.75, 12 of 16 dims "
                      "rotate): original_max_position_embeddings 8, max 64 (attention factor sqrt(1 + ln 8 / ln 8)); "
                      "the 12-id pass uses the long factors, the first 8 ids and the 5-id prompt the short ones, and "
                      "greedy crosses from short to long"),
    "mixtral": (11000, {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "rope_theta": 1000000.0,
                        "intermediate_size": MOE_WIDTH, "num_local_experts": MOE_EXPERTS,
                        "num_experts_per_tok": MOE_TOP_K, "router_jitter_noise": 0.0, "sliding_window": 5,
                        "attention_dropout": 0.0, "output_router_logits": False},
                "MixtralForCausalLM: 4 experts of width 32 (block_sparse_moe.experts.N.w1/w2/w3), top-2, the two "
                "chosen probabilities always renormalized; sliding_window 5 (as in Mistral's fixture)"),
    "qwen2-moe": (12000, {"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe",
                          "rope_theta": 1000000.0, "rms_norm_eps": 1e-06, "num_experts": MOE_EXPERTS,
                          "num_experts_per_tok": MOE_TOP_K, "moe_intermediate_size": MOE_WIDTH,
                          "shared_expert_intermediate_size": 48, "norm_topk_prob": False,
                          "decoder_sparse_step": 1, "mlp_only_layers": [], "use_sliding_window": False,
                          "attention_dropout": 0.0, "output_router_logits": False, "qkv_bias": True},
                  "Qwen2MoeForCausalLM: q/k/v biases, 4 experts of width 32, top-2 without renormalization "
                  "(norm_topk_prob false), shared expert of width 48 scaled by sigmoid(shared_expert_gate)"),
    "qwen3-moe": (13000, {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "head_dim": 16,
                          "rope_theta": 1000000.0, "rms_norm_eps": 1e-06, "num_experts": MOE_EXPERTS,
                          "num_experts_per_tok": MOE_TOP_K, "moe_intermediate_size": MOE_WIDTH,
                          "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [],
                          "attention_bias": False, "use_sliding_window": False, "attention_dropout": 0.0,
                          "output_router_logits": False},
                  "Qwen3MoeForCausalLM: q/k norms, 4 experts of width 32, top-2 renormalized (norm_topk_prob true)"),
}

MOE_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe")

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
    gemma = mt in ("gemma2", "gemma3_text")
    norm = "norm_gemma" if gemma else "norm"  # Gemma stores w of (1 + w)
    specs = [("model.embed_tokens.weight", (v, h), "embed")]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        if mt == "phi3":
            specs += [
                (p + "input_layernorm.weight", (h,), "norm"),
                (p + "self_attn.qkv_proj.weight", ((nh + 2 * nkv) * hd, h), "proj_qkv"),
                (p + "self_attn.o_proj.weight", (h, nh * hd), "proj"),
                (p + "post_attention_layernorm.weight", (h,), "norm"),
                (p + "mlp.gate_up_proj.weight", (2 * inter, h), "proj"),
                (p + "mlp.down_proj.weight", (h, inter), "proj"),
            ]
            continue
        specs += [
            (p + "input_layernorm.weight", (h,), norm),
            (p + "self_attn.q_proj.weight", (nh * hd, h), "proj_qk"),
            (p + "self_attn.k_proj.weight", (nkv * hd, h), "proj_qk"),
            (p + "self_attn.v_proj.weight", (nkv * hd, h), "proj"),
        ]
        if mt in ("qwen2", "qwen2_moe"):
            specs += [
                (p + "self_attn.q_proj.bias", (nh * hd,), "bias"),
                (p + "self_attn.k_proj.bias", (nkv * hd,), "bias"),
                (p + "self_attn.v_proj.bias", (nkv * hd,), "bias"),
            ]
        if mt in ("qwen3", "qwen3_moe", "gemma3_text"):
            specs += [
                (p + "self_attn.q_norm.weight", (hd,), norm),
                (p + "self_attn.k_norm.weight", (hd,), norm),
            ]
        if gemma:  # post_attention_layernorm normalizes the attention output
            specs += [
                (p + "self_attn.o_proj.weight", (h, nh * hd), "proj"),
                (p + "post_attention_layernorm.weight", (h,), "norm_gemma_post"),
                (p + "pre_feedforward_layernorm.weight", (h,), norm),
            ]
        else:
            specs += [
                (p + "self_attn.o_proj.weight", (h, nh * hd), "proj"),
                (p + "post_attention_layernorm.weight", (h,), norm),
            ]
        if mt == "mixtral":
            specs.append((p + "block_sparse_moe.gate.weight", (cfg["num_local_experts"], h), "router"))
            for e in range(cfg["num_local_experts"]):
                q = f"{p}block_sparse_moe.experts.{e}."
                specs += [(q + "w1.weight", (inter, h), "proj"), (q + "w2.weight", (h, inter), "proj"),
                          (q + "w3.weight", (inter, h), "proj")]
            continue
        if mt in ("qwen2_moe", "qwen3_moe"):
            w = cfg["moe_intermediate_size"]
            specs.append((p + "mlp.gate.weight", (cfg["num_experts"], h), "router"))
            for e in range(cfg["num_experts"]):
                q = f"{p}mlp.experts.{e}."
                specs += [(q + "gate_proj.weight", (w, h), "proj"), (q + "up_proj.weight", (w, h), "proj"),
                          (q + "down_proj.weight", (h, w), "proj")]
            if mt == "qwen2_moe":
                s = cfg["shared_expert_intermediate_size"]
                specs += [(p + "mlp.shared_expert.gate_proj.weight", (s, h), "proj"),
                          (p + "mlp.shared_expert.up_proj.weight", (s, h), "proj"),
                          (p + "mlp.shared_expert.down_proj.weight", (h, s), "proj"),
                          (p + "mlp.shared_expert_gate.weight", (1, h), "router")]
            continue
        specs += [
            (p + "mlp.gate_proj.weight", (inter, h), "proj"),
            (p + "mlp.up_proj.weight", (inter, h), "proj"),
            (p + "mlp.down_proj.weight", (h, inter), "proj"),
        ]
        if gemma:
            specs.append((p + "post_feedforward_layernorm.weight", (h,), "norm_gemma_post"))
    specs.append(("model.norm.weight", (h,), norm))
    if not cfg["tie_word_embeddings"]:
        specs.append(("lm_head.weight", (v, h), "head"))
    return specs


def make_weights(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    out = {}
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    qk_rows = (cfg["num_attention_heads"] + cfg["num_key_value_heads"]) * hd
    for name, shape, kind in tensor_specs(cfg):
        x = torch.randn(shape, generator=g, dtype=torch.float32)
        if kind == "proj_qkv":  # fused q, k, v: scaled as the separate projections are
            x = torch.cat([x[:qk_rows] * 0.25, x[qk_rows:] * 0.15])
        elif kind == "embed":
            # gemma2 multiplies by sqrt(72) and ties the head: at 0.3 the input embedding dominates the residual
            # stream and the model echoes its input token
            x = x * (0.12 if cfg["model_type"] in ("gemma2", "gemma3_text") else 0.3)
        elif kind == "proj_qk":
            x = x * 0.25  # large enough that attention is far from uniform
        elif kind == "proj":
            x = x * 0.15
        elif kind == "head":
            x = x * 0.2
        elif kind == "norm":
            x = 1.0 + 0.1 * x
        elif kind == "norm_gemma":
            x = 0.1 * x
        elif kind == "norm_gemma_post":
            # (1 + w) about 3: the blocks' outputs outweigh the input embedding in the residual stream; with the
            # tied head the model would otherwise echo its input token
            x = 2.0 + 0.2 * x
        elif kind == "bias":
            x = 0.2 * x
        elif kind == "router":
            x = 0.3 * x  # router logits of a few units: the choices vary from token to token
        else:
            raise AssertionError(kind)
        out[name] = x.to(torch.bfloat16).contiguous()
    return out


def r(x):
    return [round(float(v), DECIMALS) for v in x]


def fused_moe(weights, cfg):
    """The checkpoint's per-expert tensors as transformers 5 holds them after loading (fused per layer)."""
    mt = cfg["model_type"]
    if mt not in MOE_TYPES:
        return weights
    out = {}
    n = cfg.get("num_local_experts") or cfg["num_experts"]
    names = ("w1", "w3", "w2") if mt == "mixtral" else ("gate_proj", "up_proj", "down_proj")
    for k, w in weights.items():
        if ".experts." not in k:
            out[k.replace(".block_sparse_moe.", ".mlp.")] = w
    for i in range(cfg["num_hidden_layers"]):
        src = f"model.layers.{i}." + ("block_sparse_moe" if mt == "mixtral" else "mlp") + ".experts."
        dst = f"model.layers.{i}.mlp.experts."
        out[dst + "gate_up_proj"] = torch.stack(
            [torch.cat([weights[f"{src}{e}.{names[0]}.weight"], weights[f"{src}{e}.{names[1]}.weight"]])
             for e in range(n)])
        out[dst + "down_proj"] = torch.stack([weights[f"{src}{e}.{names[2]}.weight"] for e in range(n)])
    return out


def check_loaded(model, weights, cfg, name):
    sd = model.state_dict()
    weights = fused_moe(weights, cfg)
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
    if cfg["model_type"] == "phi3":
        assert attn.qkv_proj.out_features == (cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"]) * hd
    else:
        assert attn.q_proj.out_features == cfg["num_attention_heads"] * hd
    rp = c.rope_parameters
    scaling = cfg.get("rope_scaling") or {}
    want_type = scaling.get("rope_type", scaling.get("type", "default"))
    if cfg["model_type"] == "gemma3_text":  # one rope per layer type; the scaling is the full layers'
        assert rp["full_attention"]["rope_type"] == want_type, rp
        assert rp["full_attention"]["factor"] == scaling["factor"], rp
        assert rp["full_attention"]["rope_theta"] == cfg["rope_theta"], rp
        assert rp["sliding_attention"] == {"rope_type": "default", "rope_theta": cfg["rope_local_base_freq"]}, rp
        assert c.layer_types == ["sliding_attention", "sliding_attention", "full_attention"], c.layer_types
        assert c.sliding_window == cfg["sliding_window"]
        assert attn.scaling == cfg["query_pre_attn_scalar"] ** -0.5
        assert (c.attn_logit_softcapping, c.final_logit_softcapping) == (None, None)
        assert c.hidden_activation == "gelu_pytorch_tanh"
        emb = model.model.embed_tokens
        assert torch.equal(emb.embed_scale.to(emb.weight.dtype), torch.tensor(cfg["hidden_size"] ** 0.5))
    else:
        assert rp["rope_type"] == want_type, rp
        assert rp["rope_theta"] == cfg["rope_theta"], rp
    if cfg["model_type"] == "gemma2":
        assert c.layer_types == ["sliding_attention", "full_attention"], c.layer_types
        assert c.sliding_window == cfg["sliding_window"]
        assert attn.scaling == cfg["query_pre_attn_scalar"] ** -0.5
        assert (c.attn_logit_softcapping, c.final_logit_softcapping) == (GEMMA2_ATTN_CAP, GEMMA2_FINAL_CAP)
        assert c.hidden_activation == "gelu_pytorch_tanh"
        emb = model.model.embed_tokens
        # the multiplier is sqrt(hidden) as a float32 tensor, cast to the weight dtype (float32 here)
        assert emb.embed_scale.dtype == torch.float32
        assert torch.equal(emb.embed_scale.to(emb.weight.dtype), torch.tensor(cfg["hidden_size"] ** 0.5))
    if cfg["model_type"] == "phi3":
        assert c.sliding_window == cfg.get("sliding_window"), c.sliding_window
        assert c.original_max_position_embeddings == cfg["original_max_position_embeddings"]
        rot = model.model.rotary_emb
        rotary = int(hd * cfg.get("partial_rotary_factor", 1.0))
        assert rot.inv_freq.shape == (rotary // 2,), rot.inv_freq.shape
        if want_type == "longrope":
            f = cfg["max_position_embeddings"] / cfg["original_max_position_embeddings"]
            want = math.sqrt(1 + math.log(f) / math.log(cfg["original_max_position_embeddings"]))
            assert rot.attention_scaling == want, (rot.attention_scaling, want)
    if cfg["model_type"] in MOE_TYPES:
        mlp = model.model.layers[0].mlp
        assert (mlp.gate.top_k, mlp.gate.num_experts) == (MOE_TOP_K, MOE_EXPERTS)
        if cfg["model_type"] != "mixtral":
            assert mlp.gate.norm_topk_prob == cfg["norm_topk_prob"]
        assert hasattr(mlp, "shared_expert") == (cfg["model_type"] == "qwen2_moe")
    if cfg["model_type"] in ("qwen2", "qwen3"):
        assert c.sliding_window is None, c.sliding_window
        assert all(t == "full_attention" for t in c.layer_types), c.layer_types
    if cfg["model_type"] in ("mistral", "mixtral"):
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


def routing(model, ids):
    """Per layer, per position: the experts picked (in transformers' top-k order), and the smallest gap between
    the k-th and (k+1)-th router probability over all positions and layers."""
    rec = []
    hooks = [layer.mlp.gate.register_forward_hook(lambda m, a, o: rec.append(o)) for layer in model.model.layers]
    try:
        with torch.no_grad():
            model(torch.tensor([ids]))
    finally:
        for hk in hooks:
            hk.remove()
    picked, gap = [], float("inf")
    for router_logits, _, indices in rec:
        probs = torch.softmax(router_logits.float(), dim=-1)
        top = torch.topk(probs, MOE_TOP_K + 1, dim=-1).values
        gap = min(gap, float((top[:, MOE_TOP_K - 1] - top[:, MOE_TOP_K]).min()))
        picked.append(indices.tolist())
    return picked, gap


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


def load(folder, **config_changes):
    cfg = AutoConfig.from_pretrained(folder)
    for k, v in config_changes.items():
        setattr(cfg, k, v)
    return AutoModelForCausalLM.from_pretrained(folder, config=cfg, dtype=torch.float32,
                                                attn_implementation="eager").eval()


def window_checks(folder, model, logits, cfg):
    """Empirical checks that eager attention applies the window, and what the window means."""
    w = cfg["sliding_window"]
    mt = cfg["model_type"]
    # 1. logits with the window removed (gemma2 cannot run without one: every layer made full instead):
    #    positions < w must match, later ones must differ
    if mt == "gemma2":
        nowin = load(folder, layer_types=["full_attention"] * cfg["num_hidden_layers"])
    elif mt == "gemma3_text":  # full layers would change the rope too: a window longer than the sequence
        nowin = load(folder, sliding_window=10 * len(IDS))
    else:
        nowin = load(folder, sliding_window=None)
    with torch.no_grad():
        l2 = nowin(torch.tensor([IDS])).logits[0]
    diff = (logits - l2).abs().max(dim=-1).values
    assert float(diff[:w].max()) == 0.0, diff
    assert bool((diff[w:] > 1e-3).all()), diff
    # 2. the mask that eager attention actually receives, layer by layer
    import importlib
    mod = "gemma3" if mt == "gemma3_text" else mt
    mm = importlib.import_module(f"transformers.models.{mod}.modeling_{mod}")
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
    assert len(masks) == cfg["num_hidden_layers"], "eager_attention_forward was not called once per layer"
    n = len(IDS)
    window_rule = torch.tensor([[0 <= i - j < w for j in range(n)] for i in range(n)])
    causal_rule = torch.tensor([[0 <= i - j for j in range(n)] for i in range(n)])
    sliding = [i for i, t in enumerate(model.config.layer_types) if t == "sliding_attention"] \
        if mt in ("gemma2", "gemma3_text") else list(range(cfg["num_hidden_layers"]))
    if mt == "gemma2":
        assert sliding == [i for i in range(cfg["num_hidden_layers"]) if i % 2 == 0]
    for layer, mask in enumerate(masks):
        allowed = (mask[0, 0] == 0)  # additive mask: 0 = attend, -inf/min = masked
        rule = window_rule if layer in sliding else causal_rule
        assert torch.equal(allowed, rule), f"layer {layer} mask is not the expected rule:\n{allowed.int()}"
    out = {
        "max_abs_logit_diff_vs_no_window_by_position": r(diff.tolist()),
        "mask_rule": f"query i attends key j iff 0 <= i - j < sliding_window ({w}): each query sees {w} keys "
                     f"including itself",
    }
    if mt in ("gemma2", "gemma3_text"):
        out["sliding_layers"] = sliding
        out["mask_rule"] += " (sliding layers only; the others are plainly causal)"
    return out


def softcap_checks(folder, logits):
    """gemma2: each soft-cap changes the logits (caps removed one at a time)."""
    out = {}
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        with torch.no_grad():
            l2 = load(folder, **{key: None})(torch.tensor([IDS])).logits[0]
        d = float((logits - l2).abs().max())
        assert d > 0.1, (key, d)
        out[f"max_abs_logit_diff_without_{key}"] = round(d, DECIMALS)
    assert float(logits.abs().max()) < GEMMA2_FINAL_CAP
    return out


def gemma3_rope_checks(folder, model, logits, cfg):
    """gemma3: each layer type's rope matters (sliding base made the full one's; full scaling removed)."""
    rp = model.config.rope_parameters
    out = {}
    for what, params in (
            ("sliding_base_as_full", {**rp, "sliding_attention": {"rope_type": "default",
                                                                 "rope_theta": cfg["rope_theta"]}}),
            ("full_without_scaling", {**rp, "full_attention": {"rope_type": "default",
                                                              "rope_theta": cfg["rope_theta"]}})):
        with torch.no_grad():
            l2 = load(folder, rope_parameters=params)(torch.tensor([IDS])).logits[0]
        diff = (logits - l2).abs().max(dim=-1).values
        assert float(diff[0]) == 0.0 and float(diff[1:].max()) > 1e-3, (what, diff)
        out[f"max_abs_logit_diff_{what}"] = round(float(diff.max()), DECIMALS)
    return out


def longrope_checks(folder, model, logits, cfg):
    """phi3-longrope: logits of a sequence that uses the short factors, and proof that the long ones matter."""
    orig = cfg["original_max_position_embeddings"]
    short_ids = IDS[:orig]
    with torch.no_grad():
        short = model(torch.tensor([short_ids])).logits[0]
        # the 12-id pass again with long_factor := short_factor: every position after the first differs
        rope = dict(cfg["rope_scaling"], long_factor=cfg["rope_scaling"]["short_factor"])
        same = load(folder, rope_parameters={**model.config.rope_parameters, **rope, "rope_type": "longrope"})
        l2 = same(torch.tensor([IDS])).logits[0]
    diff = (logits - l2).abs().max(dim=-1).values
    assert float(diff[0]) == 0.0 and bool((diff[1:] > 1e-3).all()), diff
    # the short-factor pass is the prefix of neither: position 0 matches, later ones do not
    d_prefix = (short - logits[:orig]).abs().max(dim=-1).values
    assert bool((d_prefix[1:] > 1e-3).all()), d_prefix
    top2 = torch.topk(short, 2, dim=-1).values
    return {
        "short_ids": short_ids,
        "short_logits": [r(row) for row in short.tolist()],
        "short_logits_top1_minus_top2": r((top2[:, 0] - top2[:, 1]).tolist()),
        "attention_factor": model.model.rotary_emb.attention_scaling,
        "max_abs_logit_diff_if_long_factor_were_short_factor_by_position": r(diff.tolist()),
        "notes": "a forward pass over a sequence longer than original_max_position_embeddings uses long_factor for "
                 "every position; transformers' Phi-3 generate() drops the cache and recomputes the whole sequence "
                 "when it first grows past that length, so cached greedy equals uncached greedy",
    }


def write_folder(folder, cfg, weights):
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        f.write(json.dumps({"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"],
                            "transformers_version": transformers.__version__}, indent=2, sort_keys=True) + "\n")
    safetensors.torch.save_file(weights, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})


def gemma3_multimodal(text_folder, folder):
    """gemma3-mm: the gemma3 variant's text model inside a tiny Gemma3ForConditionalGeneration (a 1-layer SigLIP
    vision tower and projector with random weights), saved with the Hub's names (`language_model.model.*`,
    `vision_tower.*`, `multi_modal_projector.*`) and a config whose text_config gives only what differs from
    Gemma3TextConfig's defaults. transformers' logits for the 12 ids must equal the gemma3 golden's: its golden.json
    is that one."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration
    text_cfg = json.load(open(os.path.join(text_folder, "config.json")))
    text_config = {k: v for k, v in text_cfg.items()
                   if k not in ("architectures", "transformers_version", "torch_dtype", "bos_token_id", "eos_token_id",
                                "initializer_range", "use_cache", "hidden_act", "max_position_embeddings")}
    text_config["model_type"] = "gemma3_text"
    vision_config = {"model_type": "siglip_vision_model", "hidden_size": 16, "intermediate_size": 32,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 28, "patch_size": 14,
                     "vision_use_head": False}
    cfg = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "text_config": text_config,
           "vision_config": vision_config, "mm_tokens_per_image": 4, "boi_token_index": 155,
           "eoi_token_index": 156, "image_token_index": 157, "initializer_range": 0.02,
           "bos_token_id": text_cfg["bos_token_id"], "eos_token_id": text_cfg["eos_token_id"],
           "torch_dtype": "bfloat16", "transformers_version": transformers.__version__}
    torch.manual_seed(0)
    mm = Gemma3ForConditionalGeneration(Gemma3Config(**{k: v for k, v in cfg.items()
                                                         if k not in ("architectures", "transformers_version")}))
    text = safetensors.torch.load_file(os.path.join(text_folder, "model.safetensors"))
    out = {"language_model." + k: v for k, v in text.items()}  # model.X -> language_model.model.X
    for k, v in mm.state_dict().items():
        for p in ("model.vision_tower.", "model.multi_modal_projector."):
            if k.startswith(p):
                out[k[len("model."):]] = v.detach().to(torch.bfloat16).contiguous()
    assert any(k.startswith("vision_tower.") for k in out) and any(k.startswith("multi_modal_projector.") for k in out)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        f.write(json.dumps({"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"],
                            "transformers_version": transformers.__version__}, indent=2, sort_keys=True) + "\n")
    safetensors.torch.save_file(dict(sorted(out.items())), os.path.join(folder, "model.safetensors"),
                                metadata={"format": "pt"})
    model = Gemma3ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32,
                                                           attn_implementation="eager").eval()
    golden = json.load(open(os.path.join(text_folder, "golden.json")))
    with torch.no_grad():
        logits = model(torch.tensor([IDS])).logits[0]
    want = torch.tensor(golden["logits"])
    d = float((logits - want).abs().max())
    assert d < 2e-6, f"gemma3-mm: logits differ from the text model's by {d}"
    golden["variant"] = "gemma3-mm"
    golden["description"] = ("Gemma3ForConditionalGeneration holding the gemma3 variant's text model (Hub names "
                             "language_model.model.*), a 1-layer SigLIP vision tower and a projector; text-only "
                             "input gives the gemma3 variant's outputs")
    golden["multimodal_check"] = {"max_abs_logit_diff_vs_text_model": round(d, 9),
                                  "note": "transformers' Gemma3ForConditionalGeneration on the 12 ids, against the "
                                          "gemma3 variant's logits (the values below are that variant's)"}
    with open(os.path.join(folder, "golden.json"), "w") as f:
        f.write(json.dumps(golden, sort_keys=True, separators=(",", ":")) + "\n")
    print(f"gemma3-mm: logits within {d} of the text model", file=sys.stderr)


def main():
    os.makedirs(OUT, exist_ok=True)
    summary = {}
    unknown = set(ONLY or []) - set(VARIANTS) - {"gemma3-mm"}
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    for name, (base_seed, overrides, desc) in VARIANTS.items():
        if ONLY is not None and name not in ONLY:
            continue
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
            if name == "phi3-longrope":  # the short-factor pass is compared by value, its argmax too
                extra = longrope_checks(folder, model, logits, cfg)
                pos_margins += extra["short_logits_top1_minus_top2"]
            route_gap = None
            if cfg["model_type"] in MOE_TYPES:
                picked, route_gap = routing(model, IDS)
            if (min(margins + pos_margins) >= MIN_MARGIN and len(set(new)) > 2
                    and (route_gap is None or route_gap >= MIN_ROUTE_GAP)):
                break
            print(f"{name}: seed {seed} rejected (min margin {min(margins + pos_margins):.4f}, "
                  f"greedy {new}, routing gap {route_gap})", file=sys.stderr)
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
        if cfg["model_type"] in ("mistral", "mixtral", "phi3", "gemma2", "gemma3_text") and cfg.get("sliding_window"):
            golden["sliding_window_check"] = window_checks(folder, model, logits, cfg)
        if name == "gemma3":
            golden["rope_check"] = gemma3_rope_checks(folder, model, logits, cfg)
        if name in ("gemma2", "gemma3"):
            if name == "gemma2":
                golden["softcap_check"] = softcap_checks(folder, logits)
            golden["notes"][1] = ("embeddings[i] = embed_tokens row of ids[i] times sqrt(hidden_size) (float32); "
                                  "layer_outputs[l][i] = residual stream after decoder layer l at position i "
                                  "(before the final norm)")
        if name == "phi3-longrope":
            golden["longrope"] = extra
        if route_gap is not None:
            golden["routing"] = {"experts": picked, "min_kth_minus_next_prob": round(route_gap, DECIMALS),
                                 "note": "experts[l][i] = experts layer l picked at position i of the 12 ids, "
                                         "in transformers' top-k order"}
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
    if ONLY is None or "gemma3-mm" in ONLY:
        gemma3_multimodal(os.path.join(OUT, "gemma3"), os.path.join(OUT, "gemma3-mm"))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
