#!/usr/bin/env python3
"""Write tiny checkpoints of families published as remote code (InternLM2, Baichuan 2), with reference outputs.

Output: tests/fixtures/tiny/<variant>/{config.json, model.safetensors, generation_config.json, golden.json}
(relative to the repository root, or to OUT_DIR if given).

    scripts/make-remote-code-fixtures.py [--only VARIANT,VARIANT] [OUT_DIR]   # the reference venv's python

Uses the reference venv of scripts/make-tiny-fixtures.py (same versions) and that script's helpers.

Why a weight-level equivalence and not the families' own code: transformers has no built-in class for InternLM2
or Baichuan 2; their modeling_*.py files ship with the checkpoints (`auto_map`) and are not in this repository
or the reference venv. Both are Llama's computation with the weights stored differently, so the reference is:

1. Build a tiny LlamaForCausalLM checkpoint exactly as make-tiny-fixtures.py does (bf16 weights from a seeded
   torch.Generator, seed search for clear argmax margins) and run it with transformers in float32: logits of
   the 12 ids, residual stream per layer, 8 KV-cached greedy tokens (checked equal to uncached ones).
2. Repack those same bf16 values into the family's published layout and names, and write config.json in the
   family's real format (`architectures`, `auto_map`, the family's keys). Repacking moves values and never
   rounds them, so the family checkpoint computes what the Llama one does, provided the mapping is the one in
   the family's modeling code. The script checks each mapping by undoing it the way that code reads the
   weights (the operations are transcribed below, with their source) and comparing with the Llama tensors.

Per family, what the published modeling code does and how the repacking mirrors it:

- InternLM2 (internlm/internlm2-chat-7b, modeling_internlm2.py, InternLM2Attention.forward):
      qkv_states = self.wqkv(hidden_states)
      qkv_states = rearrange(qkv_states, "b q (h gs d) -> b q h gs d", gs=2 + self.num_key_value_groups,
                             d=self.head_dim)
      query_states = rearrange(qkv_states[..., : self.num_key_value_groups, :], "b q h gs d -> b q (h gs) d")
      key_states = qkv_states[..., -2, :];  value_states = qkv_states[..., -1, :]
  so wqkv's rows are, per KV head h: its num_key_value_groups query heads, then its key head, then its value
  head. Query head h * groups + g is Llama's query head h * groups + g, which repeat_kv pairs with KV head h in
  both. InternLM2MLP computes w2(silu(w1(x)) * w3(x)): w1 = gate_proj, w3 = up_proj, w2 = down_proj. Names:
  model.tok_embeddings, attention_norm, attention.wqkv, attention.wo, ffn_norm, feed_forward.w1/w2/w3,
  model.norm, output. RoPE is rotate_half like Llama's; `rope_scaling: {"type": "linear", "factor": f}` divides
  positions by f (InternLM2LinearScalingRotaryEmbedding), as Llama's linear type does, so the tiny InternLM2
  uses linear scaling against a Llama reference with rope_type linear. `bias: false` (no wqkv/wo biases), as
  in every published InternLM2 config.
- Baichuan 2 7B (baichuan-inc/Baichuan2-7B-Chat, modeling_baichuan.py): Attention.forward does
      proj = self.W_pack(hidden_states)
      proj = proj.unflatten(-1, (3, self.hidden_size)).unsqueeze(0).transpose(0, -2).squeeze(-2)
      query_states, key_states, value_states = proj[0], proj[1], proj[2]   (then view as heads)
  so W_pack is q, k and v rows in turn (multi-head attention: as many KV heads as query heads). Norms and MLP
  (gate_proj, up_proj, down_proj) are Llama's names; RoPE has base 10000 and rotate_half. The head is NormHead:
  in eval mode its weight is replaced by nn.functional.normalize(weight) (each row divided by its L2 norm) before
  the matmul. The reference therefore runs the Llama model with lm_head set, in float32 in memory, to
  F.normalize of the bf16 head stored in the Baichuan file; the stored head rows are not unit length (they
  are N(0, 0.2) like every tiny head), so a converter that forgot to normalize would be far off. The 7B layout
  is told from the 13B one (ALiBi instead of RoPE) by `max_position_embeddings`, which only 7B's config has.

golden.json has the format of make-tiny-fixtures.py's, plus `reference` (the Llama config used and the mapping).
"""

import importlib.util
import json
import os
import platform
import sys

import numpy as np
import safetensors
import torch
import transformers
from transformers import AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("tiny", os.path.join(HERE, "make-tiny-fixtures.py"))
tiny = importlib.util.module_from_spec(spec)
sys.argv, argv = sys.argv[:1], sys.argv[1:]  # the helper module reads sys.argv at import
spec.loader.exec_module(tiny)

ONLY = None
if argv[:1] == ["--only"]:
    ONLY = argv[1].split(",")
    argv = argv[2:]
OUT = argv[0] if argv else os.path.join(tiny.REPO, "tests", "fixtures", "tiny")


def internlm2_pack(w, cfg):
    """Llama tensors -> InternLM2 names and the per-group interleaved wqkv."""
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg["hidden_size"] // nh
    groups = nh // nkv
    out = {"model.tok_embeddings.weight": w["model.embed_tokens.weight"], "model.norm.weight": w["model.norm.weight"],
           "output.weight": w["lm_head.weight"]}
    for i in range(cfg["num_hidden_layers"]):
        p = s = f"model.layers.{i}."
        q = w[p + "self_attn.q_proj.weight"].view(nkv, groups, d, -1)
        k = w[p + "self_attn.k_proj.weight"].view(nkv, 1, d, -1)
        v = w[p + "self_attn.v_proj.weight"].view(nkv, 1, d, -1)
        out[s + "attention.wqkv.weight"] = torch.cat([q, k, v], dim=1).reshape((nh + 2 * nkv) * d, -1).contiguous()
        out[s + "attention.wo.weight"] = w[p + "self_attn.o_proj.weight"]
        out[s + "attention_norm.weight"] = w[p + "input_layernorm.weight"]
        out[s + "ffn_norm.weight"] = w[p + "post_attention_layernorm.weight"]
        out[s + "feed_forward.w1.weight"] = w[p + "mlp.gate_proj.weight"]
        out[s + "feed_forward.w3.weight"] = w[p + "mlp.up_proj.weight"]
        out[s + "feed_forward.w2.weight"] = w[p + "mlp.down_proj.weight"]
    return out


def internlm2_check(packed, w, cfg):
    """Reads wqkv back as modeling_internlm2.py does (see the module doc) and compares with Llama's q/k/v."""
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg["hidden_size"] // nh
    groups = nh // nkv
    x = torch.randn(3, cfg["hidden_size"], generator=torch.Generator().manual_seed(0)).to(torch.bfloat16).float()
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        qkv = x @ packed[p + "attention.wqkv.weight"].float().T  # (q, h*gs*d): "b q (h gs d)"
        qkv = qkv.view(x.shape[0], nkv, 2 + groups, d)  # "b q h gs d"
        query = qkv[..., :groups, :].reshape(x.shape[0], nh, d)  # "b q (h gs) d"
        key, value = qkv[..., -2, :], qkv[..., -1, :]
        for got, name, heads in [(query, "q_proj", nh), (key, "k_proj", nkv), (value, "v_proj", nkv)]:
            want = (x @ w[p + f"self_attn.{name}.weight"].float().T).view(x.shape[0], heads, d)
            assert torch.equal(got, want), (i, name)
    assert packed["model.layers.0.attention.wqkv.weight"].shape[0] == (nh + 2 * nkv) * d


def baichuan_pack(w, cfg):
    """Llama tensors -> Baichuan names, q/k/v concatenated into W_pack."""
    out = {}
    for k, t in w.items():
        if k.endswith("self_attn.q_proj.weight"):
            p = k[: -len("q_proj.weight")]
            out[p + "W_pack.weight"] = torch.cat(
                [w[p + "q_proj.weight"], w[p + "k_proj.weight"], w[p + "v_proj.weight"]]).contiguous()
        elif not (k.endswith("self_attn.k_proj.weight") or k.endswith("self_attn.v_proj.weight")):
            out[k] = t
    return out


def baichuan_check(packed, w, cfg):
    """Reads W_pack back as modeling_baichuan.py does (see the module doc) and compares with Llama's q/k/v."""
    h = cfg["hidden_size"]
    x = torch.randn(3, h, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16).float()
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}.self_attn."
        proj = x @ packed[p + "W_pack.weight"].float().T
        proj = proj.unflatten(-1, (3, h)).unsqueeze(0).transpose(0, -2).squeeze(-2)
        for j, name in enumerate(["q_proj", "k_proj", "v_proj"]):
            assert torch.equal(proj[j], x @ w[p + f"{name}.weight"].float().T), (i, name)


def normhead(model):
    """Baichuan's NormHead in eval mode: lm_head rows divided by their L2 norm (float32, in memory)."""
    with torch.no_grad():
        model.lm_head.weight.copy_(torch.nn.functional.normalize(model.lm_head.weight))


LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False, "mlp_bias": False,
         "attention_dropout": 0.0, "pretraining_tp": 1}

# name -> (seed, Llama reference overrides, family config (beside the shapes), pack, check, after_load, description)
VARIANTS = {
    "internlm2": (
        11000, {**LLAMA, "rope_scaling": {"rope_type": "linear", "factor": 2.0}},
        {"architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2",
         "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config",
                      "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
                      "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"},
         "attn_implementation": "eager", "bias": False, "pad_token_id": 2,
         "rope_scaling": {"type": "linear", "factor": 2.0}},
        internlm2_pack, internlm2_check, None,
        "InternLM2ForCausalLM (remote code): wqkv interleaved per KV group (4 heads, 2 KV heads: q q k v | q q k v), "
        "w1/w3/w2, attention_norm/ffn_norm, tok_embeddings/output, linear RoPE scaling (type key, factor 2); "
        "reference: LlamaForCausalLM with the same values"),
    "baichuan2": (
        12000, {**LLAMA, "num_key_value_heads": 4},
        {"architectures": ["BaichuanForCausalLM"], "model_type": "baichuan",
         "auto_map": {"AutoConfig": "configuration_baichuan.BaichuanConfig",
                      "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM"},
         "model_max_length": 256, "pad_token_id": 0, "z_loss_weight": 0, "_from_model_config": True},
        baichuan_pack, baichuan_check, normhead,
        "BaichuanForCausalLM 7B layout (remote code): W_pack = q, k, v rows, multi-head attention, RoPE base 1e4, "
        "NormHead (rows normalized at inference; stored rows are not unit length); reference: LlamaForCausalLM "
        "with the same values and lm_head = F.normalize(head) in float32"),
}

SHAPE_KEYS = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta",
              "tie_word_embeddings", "bos_token_id", "eos_token_id", "initializer_range", "use_cache",
              "torch_dtype"]


def family_config(llama_cfg, fam):
    cfg = {k: llama_cfg[k] for k in SHAPE_KEYS}
    if fam["model_type"] == "baichuan":  # Baichuan configs have neither key; base 10000 is in the code
        del cfg["num_key_value_heads"], cfg["rope_theta"]
    cfg.update(fam)
    cfg["transformers_version"] = transformers.__version__
    return cfg


def run_reference(folder, weights, cfg, name, after_load):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    tiny.check_loaded(model, weights, cfg, name)
    if after_load is not None:
        after_load(model)
    logits, emb, layers = tiny.layer_outputs(model, tiny.IDS)
    new, uncached, margins = tiny.greedy(model, tiny.IDS[:tiny.N_PROMPT])
    assert new == uncached, f"cached greedy {new} != uncached {uncached}"
    return model, logits, emb, layers, new, margins


def main():
    import tempfile
    unknown = set(ONLY or []) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    for name, (base_seed, overrides, fam, pack, check, after_load, desc) in VARIANTS.items():
        if ONLY is not None and name not in ONLY:
            continue
        llama_cfg = tiny.make_config(overrides)
        with tempfile.TemporaryDirectory() as ref:
            for attempt in range(tiny.MAX_SEED_TRIES):
                seed = base_seed + attempt
                weights = tiny.make_weights(llama_cfg, seed)
                tiny.write_folder(ref, llama_cfg, weights)
                model, logits, emb, layers, new, margins = run_reference(ref, weights, llama_cfg, name, after_load)
                top2 = torch.topk(logits, 2, dim=-1).values
                pos_margins = (top2[:, 0] - top2[:, 1]).tolist()
                if min(margins + pos_margins) >= tiny.MIN_MARGIN and len(set(new)) > 2:
                    break
                print(f"{name}: seed {seed} rejected (min margin {min(margins + pos_margins):.4f}, greedy {new})",
                      file=sys.stderr)
            else:
                raise SystemExit(f"{name}: no seed in {tiny.MAX_SEED_TRIES} tries gave clear margins")
        if after_load is normhead:  # the head is not unit-length as stored, so the normalization matters
            norms = weights["lm_head.weight"].float().norm(dim=-1)
            assert float((norms - 1).abs().min()) > 0.1, norms
        packed = pack(weights, llama_cfg)
        check(packed, weights, llama_cfg)
        assert sum(t.numel() for t in packed.values()) == sum(t.numel() for t in weights.values())
        folder = os.path.join(OUT, name)
        os.makedirs(folder, exist_ok=True)
        tiny.write_folder(folder, family_config(llama_cfg, fam), packed)
        golden = {
            "format": "strata-tiny-golden/1",
            "variant": name,
            "description": desc,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "safetensors": safetensors.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "compute": "float32 on CPU, bf16 weights upcast exactly, attn_implementation=eager, 1 torch thread, "
                       "computed by the Llama reference (see reference)",
            "seed": seed,
            "ids": tiny.IDS,
            "logits": [tiny.r(row) for row in logits.tolist()],
            "embeddings": [tiny.r(row) for row in emb.tolist()],
            "layer_outputs": [[tiny.r(row) for row in t.tolist()] for t in layers],
            "logits_top1_minus_top2": tiny.r(pos_margins),
            "greedy": {"ids": tiny.IDS[:tiny.N_PROMPT], "new_ids": new, "top1_minus_top2_logit": margins,
                       "stops_at_eos": False, "cached_equals_uncached": True},
            "reference": {
                "kind": "weight-level equivalence: transformers LlamaForCausalLM on the same bf16 values, "
                        "repacked into this family's layout (scripts/make-remote-code-fixtures.py says why it is "
                        "exact and checks the repacking against the family's modeling code)",
                "llama_config": llama_cfg,
                "normhead": after_load is normhead,
            },
        }
        with open(os.path.join(folder, "golden.json"), "w") as f:
            f.write(json.dumps(golden, sort_keys=True, separators=(",", ":")) + "\n")
        print(f"{name}: seed {seed}, greedy {new}, min margin {min(margins + pos_margins):.4f}", file=sys.stderr)


if __name__ == "__main__":
    main()
