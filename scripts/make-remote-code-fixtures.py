#!/usr/bin/env python3
"""Write tiny checkpoints of families published as remote code (InternLM2, Baichuan 2, Qwen, ChatGLM) with references.

Output: tests/fixtures/tiny/<variant>/{config.json, model.safetensors, generation_config.json, golden.json}
(relative to the repository root, or to OUT_DIR if given).

    scripts/make-remote-code-fixtures.py [--only VARIANT,VARIANT] [OUT_DIR]   # the reference venv's python

Uses the reference venv of scripts/make-tiny-fixtures.py (same versions) and that script's helpers.

Why a weight-level equivalence and not the families' own code: transformers has no built-in class for InternLM2,
Baichuan 2, Qwen (v1) or ChatGLM; their modeling_*.py files ship with the checkpoints (`auto_map`) and are not in this repository
or the reference venv. Each computes what a transformers class computes, with the weights stored differently, so
the reference is (shown for Llama; Qwen uses Qwen2ForCausalLM and ChatGLM GlmForCausalLM the same way):

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
- Baichuan 2 13B (baichuan-inc/Baichuan2-13B-Chat, modeling_baichuan.py): the same tensors, no RoPE, and the
  attention mask is ALiBi: _gen_alibi_mask adds slope_h * j (key position) to every score, slopes from
  _get_interleave(n_heads); decoding with a cache takes the mask's last row. No transformers class computes
  Llama with ALiBi, so the reference is LlamaForCausalLM with its rotary made the identity and its eager
  attention replaced by that attention, transcribed (alibi_eager below); the rest of the model is transformers'.

- Qwen (v1) (Qwen/Qwen-7B-Chat, modeling_qwen.py): QWenAttention does
      mixed_x_layer = self.c_attn(hidden_states);  query, key, value = mixed_x_layer.split(self.split_size, dim=2)
  with split_size = hidden_size (c_attn always has a bias; c_proj has none with no_bias), and QWenMLP does
      a1 = self.w1(hidden_states);  a2 = self.w2(hidden_states);  output = self.c_proj(a1 * F.silu(a2))
  so w2 is the gate, w1 the up projection, each with config.intermediate_size // 2 rows. ln_1/ln_2/ln_f are
  RMSNorm (float32 then cast, times weight), RoPE is rotate_half with base rotary_emb_base. use_dynamic_ntk and
  use_logn_attn only act on positions beyond seq_length (ntk_alpha 1 and logn factor 1 up to it). transformers'
  Qwen2ForCausalLM computes exactly this (q/k/v biases, no o bias), so it is the reference, with as many KV
  heads as heads.
- ChatGLM 3 / GLM-4 (THUDM/chatglm3-6b, THUDM/glm-4-9b-chat, modeling_chatglm.py): SelfAttention splits
  query_key_value (with bias) into [heads * d, groups * d, groups * d]; MLP's swiglu is chunk(2) then
  silu(x[0]) * x[1], so dense_h_to_4h is gate rows, then up rows. RotaryEmbedding(kv_channels // 2) rotates the
  first half of each head in interleaved pairs (2i, 2i + 1), base 10000 * rope_ratio. transformers'
  GlmForCausalLM (the port of glm-4-9b-chat; not Glm4ForCausalLM, which is the later GLM-4-0414 with extra
  norms) has the same split, MLP and interleaved partial rotary; the script checks its rotary against the
  transcribed ChatGLM one on random vectors, and it is the reference.

golden.json has the format of make-tiny-fixtures.py's, plus `reference` (the Llama config used and the mapping).
"""

import importlib.util
import json
import math
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


def internlm2_check(packed, w, cfg, model):
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


def baichuan_check(packed, w, cfg, model):
    """Reads W_pack back as modeling_baichuan.py does (see the module doc) and compares with Llama's q/k/v."""
    h = cfg["hidden_size"]
    x = torch.randn(3, h, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16).float()
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}.self_attn."
        proj = x @ packed[p + "W_pack.weight"].float().T
        proj = proj.unflatten(-1, (3, h)).unsqueeze(0).transpose(0, -2).squeeze(-2)
        for j, name in enumerate(["q_proj", "k_proj", "v_proj"]):
            assert torch.equal(proj[j], x @ w[p + f"{name}.weight"].float().T), (i, name)


def qwen_pack(w, cfg):
    """Qwen2 tensors (multi-head) -> Qwen (v1) names: c_attn = q, k, v rows (and biases), w2 = gate, w1 = up."""
    out = {"transformer.wte.weight": w["model.embed_tokens.weight"], "transformer.ln_f.weight": w["model.norm.weight"],
           "lm_head.weight": w["lm_head.weight"]}
    for i in range(cfg["num_hidden_layers"]):
        p, s = f"model.layers.{i}.", f"transformer.h.{i}."
        for kind in ["weight", "bias"]:
            out[s + f"attn.c_attn.{kind}"] = torch.cat(
                [w[p + f"self_attn.{n}_proj.{kind}"] for n in "qkv"]).contiguous()
        out[s + "attn.c_proj.weight"] = w[p + "self_attn.o_proj.weight"]
        out[s + "ln_1.weight"] = w[p + "input_layernorm.weight"]
        out[s + "ln_2.weight"] = w[p + "post_attention_layernorm.weight"]
        out[s + "mlp.w2.weight"] = w[p + "mlp.gate_proj.weight"]
        out[s + "mlp.w1.weight"] = w[p + "mlp.up_proj.weight"]
        out[s + "mlp.c_proj.weight"] = w[p + "mlp.down_proj.weight"]
    return out


def qwen_check(packed, w, cfg, model):
    """Reads c_attn and the MLP back as modeling_qwen.py does (see the module doc) and compares with Qwen2's."""
    h = cfg["hidden_size"]
    x = torch.randn(3, h, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16).float()
    for i in range(cfg["num_hidden_layers"]):
        p, s = f"model.layers.{i}.", f"transformer.h.{i}."
        mixed = x @ packed[s + "attn.c_attn.weight"].float().T + packed[s + "attn.c_attn.bias"].float()
        q, k, v = mixed.split(h, dim=-1)  # self.split_size = config.hidden_size
        for got, n in [(q, "q"), (k, "k"), (v, "v")]:
            want = x @ w[p + f"self_attn.{n}_proj.weight"].float().T + w[p + f"self_attn.{n}_proj.bias"].float()
            assert torch.equal(got, want), (i, n)
        a1 = x @ packed[s + "mlp.w1.weight"].float().T
        a2 = x @ packed[s + "mlp.w2.weight"].float().T
        qwen = a1 * torch.nn.functional.silu(a2)  # QWenMLP.forward
        llama = torch.nn.functional.silu(x @ w[p + "mlp.gate_proj.weight"].float().T) * (
            x @ w[p + "mlp.up_proj.weight"].float().T)
        assert torch.equal(qwen, llama), i


def glm_reference(w, cfg):
    """Qwen2-shaped tensors (q/k/v biases) -> GlmForCausalLM's names: gate_up_proj = gate rows, then up rows."""
    out = {}
    for k, t in w.items():
        if k.endswith("mlp.gate_proj.weight"):
            p = k[: -len("gate_proj.weight")]
            out[p + "gate_up_proj.weight"] = torch.cat([t, w[p + "up_proj.weight"]]).contiguous()
        elif not k.endswith("mlp.up_proj.weight"):
            out[k] = t
    return out


def chatglm_pack(w, cfg):
    """GlmForCausalLM tensors -> ChatGLM names: query_key_value = q, k, v rows (and biases)."""
    out = {"transformer.embedding.word_embeddings.weight": w["model.embed_tokens.weight"],
           "transformer.encoder.final_layernorm.weight": w["model.norm.weight"],
           "transformer.output_layer.weight": w["lm_head.weight"]}
    for i in range(cfg["num_hidden_layers"]):
        p, s = f"model.layers.{i}.", f"transformer.encoder.layers.{i}."
        for kind in ["weight", "bias"]:
            out[s + f"self_attention.query_key_value.{kind}"] = torch.cat(
                [w[p + f"self_attn.{n}_proj.{kind}"] for n in "qkv"]).contiguous()
        out[s + "self_attention.dense.weight"] = w[p + "self_attn.o_proj.weight"]
        out[s + "input_layernorm.weight"] = w[p + "input_layernorm.weight"]
        out[s + "post_attention_layernorm.weight"] = w[p + "post_attention_layernorm.weight"]
        out[s + "mlp.dense_h_to_4h.weight"] = w[p + "mlp.gate_up_proj.weight"]
        out[s + "mlp.dense_4h_to_h.weight"] = w[p + "mlp.down_proj.weight"]
    return out


def chatglm_rope(x, rot_dim, base):
    """modeling_chatglm.py's RotaryEmbedding(kv_channels // 2).forward_impl and apply_rotary_pos_emb, transcribed.
    x: [seq, heads, head_dim]; rot_dim = head_dim // 2; pairs (2i, 2i + 1) of the first rot_dim dims rotate."""
    sq = x.shape[0]
    theta = 1.0 / (base ** (torch.arange(0, rot_dim, 2, dtype=torch.float) / rot_dim))
    idx_theta = torch.outer(torch.arange(sq, dtype=torch.float), theta).float()
    cache = torch.stack([torch.cos(idx_theta), torch.sin(idx_theta)], dim=-1)
    x_rot, x_pass = x[..., :rot_dim], x[..., rot_dim:]
    xs = x_rot.reshape(sq, -1, rot_dim // 2, 2)
    c = cache.view(sq, 1, rot_dim // 2, 2)
    out = torch.stack([xs[..., 0] * c[..., 0] - xs[..., 1] * c[..., 1],
                       xs[..., 1] * c[..., 0] + xs[..., 0] * c[..., 1]], -1).flatten(2)
    return torch.cat((out, x_pass), dim=-1)


def chatglm_check(packed, w, cfg, model):
    """query_key_value splits as modeling_chatglm.py's SelfAttention does, dense_h_to_4h is swiglu's chunk(2) (gate
    first, as GlmMLP), and ChatGLM's rotary (transcribed) equals transformers' Glm rotary on the same vectors."""
    nh, nkv, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    x = torch.randn(5, cfg["hidden_size"], generator=torch.Generator().manual_seed(0)).to(torch.bfloat16).float()
    for i in range(cfg["num_hidden_layers"]):
        p, s = f"model.layers.{i}.", f"transformer.encoder.layers.{i}."
        mixed = (x @ packed[s + "self_attention.query_key_value.weight"].float().T
                 + packed[s + "self_attention.query_key_value.bias"].float())
        q, k, v = mixed.split([nh * d, nkv * d, nkv * d], dim=-1)
        for got, n in [(q, "q"), (k, "k"), (v, "v")]:
            want = x @ w[p + f"self_attn.{n}_proj.weight"].float().T + w[p + f"self_attn.{n}_proj.bias"].float()
            assert torch.equal(got, want), (i, n)
    import transformers.models.glm.modeling_glm as mg
    q = torch.randn(1, nh, 5, d, generator=torch.Generator().manual_seed(1))
    pos = torch.arange(5)[None]
    cos, sin = model.model.rotary_emb(q, pos)
    got, _ = mg.apply_rotary_pos_emb(q, q, cos, sin)
    want = chatglm_rope(q[0].transpose(0, 1), d // 2, cfg["rope_theta"]).transpose(0, 1)[None]
    assert (got - want).abs().max() < 1e-5, (got - want).abs().max()
    assert (want - q).abs().max() > 0.1  # the rotation is not the identity at positions > 0


def _get_interleave(n):
    """modeling_baichuan.py (13B)'s ALiBi slopes, transcribed."""
    def _get_interleave_power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        ratio = start
        return [start * ratio**i for i in range(n)]

    if math.log2(n).is_integer():
        return _get_interleave_power_of_2(n)
    closest_power_of_2 = 2 ** math.floor(math.log2(n))
    return (_get_interleave_power_of_2(closest_power_of_2)
            + _get_interleave(2 * closest_power_of_2)[0::2][: n - closest_power_of_2])


def alibi_eager(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Baichuan 2 13B's attention (modeling_baichuan.py BaichuanAttention.forward with the mask of
    BaichuanModel.get_alibi_mask / _gen_alibi_mask), transcribed: scores q.k / sqrt(d) plus the mask
    future(-inf above the diagonal) + slope_h * j (key position j), the last q_len rows of it when decoding
    with a cache, clamped at finfo.min, softmax in float32."""
    from transformers.models.llama.modeling_llama import repeat_kv
    k = repeat_kv(key, module.num_key_value_groups)
    v = repeat_kv(value, module.num_key_value_groups)
    attn = torch.matmul(query, k.transpose(2, 3)) * scaling
    heads, q_len, kv_len = query.shape[1], query.shape[2], k.shape[2]
    slopes = torch.Tensor(_get_interleave(heads))
    alibi = slopes.unsqueeze(1).unsqueeze(1) * torch.arange(kv_len).unsqueeze(0).unsqueeze(0).expand(heads, -1, -1)
    future = torch.triu(torch.full([kv_len, kv_len], float("-inf")), 1)
    mask = (future.unsqueeze(0) + alibi)[:, -q_len:, :]
    attn = torch.max(attn + mask.unsqueeze(0), torch.tensor(torch.finfo(attn.dtype).min))
    attn = torch.nn.functional.softmax(attn, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(attn, v).transpose(1, 2).contiguous(), attn


def baichuan13b(model):
    """NormHead, and the Llama model's attention swapped for Baichuan 13B's: no RoPE, ALiBi scores."""
    import transformers.models.llama.modeling_llama as ml
    normhead(model)
    ml.eager_attention_forward = alibi_eager
    ml.apply_rotary_pos_emb = lambda q, k, cos, sin, *a, **kw: (q, k)


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

VARIANTS["qwen"] = (
    13000, {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "num_key_value_heads": 4,
            "rms_norm_eps": 1e-06, "use_sliding_window": False, "attention_dropout": 0.0},
    {"architectures": ["QWenLMHeadModel"], "model_type": "qwen",
     "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig",
                  "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
     "kv_channels": 16, "layer_norm_epsilon": 1e-06, "rotary_emb_base": 10000, "rotary_pct": 1.0,
     "no_bias": True, "seq_length": 256, "use_dynamic_ntk": True, "use_logn_attn": True, "scale_attn_weights": True,
     "attn_dropout_prob": 0.0, "emb_dropout_prob": 0.0, "bf16": False, "fp16": False, "fp32": False,
     "use_flash_attn": "auto", "tokenizer_class": "QWenTokenizer"},
    qwen_pack, qwen_check, None,
    "QWenLMHeadModel (remote code): c_attn = q, k, v rows with biases, c_proj, w2 = gate and w1 = up "
    "(intermediate_size 256 = twice the real 128), ln_1/ln_2, wte/ln_f; use_dynamic_ntk and use_logn_attn on, "
    "which change nothing up to seq_length; reference: Qwen2ForCausalLM (q/k/v biases, no o bias) with the same "
    "values and as many KV heads as heads")
VARIANTS["chatglm"] = (
    14000, {"architectures": ["GlmForCausalLM"], "model_type": "glm", "head_dim": 16, "partial_rotary_factor": 0.5,
            "attention_bias": True, "rope_theta": 20000.0, "pad_token_id": 0, "attention_dropout": 0.0},
    {"architectures": ["ChatGLMModel"], "model_type": "chatglm",
     "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                  "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
                  "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"},
     "add_bias_linear": False, "add_qkv_bias": True, "apply_query_key_layer_scaling": True,
     "apply_residual_connection_post_layernorm": False, "attention_dropout": 0.0, "attention_softmax_in_fp32": True,
     "bias_dropout_fusion": True, "fp32_residual_connection": False, "hidden_dropout": 0.0,
     "multi_query_attention": True, "original_rope": True, "post_layer_norm": True, "rmsnorm": True,
     "rope_ratio": 2.0, "pad_token_id": 0},
    chatglm_pack, chatglm_check, None,
    "ChatGLMModel (chatglm3-6b / glm-4-9b-chat remote code): query_key_value = q, k, v rows with biases, 4 heads in "
    "2 multi-query groups, rotary on half of each head in interleaved pairs, base 10000 x rope_ratio 2, "
    "dense_h_to_4h = gate then up; reference: transformers' GlmForCausalLM (the port of glm-4-9b-chat: same "
    "interleaved partial rotary, checked against the transcribed ChatGLM rotary) with the same values")

VARIANTS["baichuan2-13b"] = (
    15000, {**LLAMA, "hidden_size": 80, "num_attention_heads": 5, "num_key_value_heads": 5},
    {**VARIANTS["baichuan2"][2], "_strata_no_max_position": True},
    baichuan_pack, baichuan_check, baichuan13b,
    "BaichuanForCausalLM 13B layout (remote code): no max_position_embeddings (only model_max_length), ALiBi "
    "instead of RoPE with 5 heads (slopes 2^-2, 2^-4, 2^-6, 2^-8, then 2^-1: the non-power-of-two interleave), "
    "W_pack, NormHead; reference: LlamaForCausalLM with the same values, its rotary made the identity and its "
    "eager attention replaced by Baichuan 13B's ALiBi attention transcribed (alibi_eager)")

SHAPE_KEYS = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta",
              "tie_word_embeddings", "bos_token_id", "eos_token_id", "initializer_range", "use_cache",
              "torch_dtype"]


def family_config(llama_cfg, fam):
    cfg = {k: llama_cfg[k] for k in SHAPE_KEYS}
    if fam["model_type"] == "baichuan":  # Baichuan configs have neither key; base 10000 is in the code
        del cfg["num_key_value_heads"], cfg["rope_theta"]
    if fam["model_type"] == "qwen":  # QWenConfig's keys; the MLP matrices have intermediate_size / 2 rows
        cfg["intermediate_size"] *= 2
        cfg["layer_norm_epsilon"] = cfg.pop("rms_norm_eps")
        for k in ["num_key_value_heads", "rope_theta", "hidden_act"]:
            del cfg[k]
    if fam["model_type"] == "chatglm":  # ChatGLMConfig's keys
        for a, b in [("num_hidden_layers", "num_layers"), ("vocab_size", "padded_vocab_size"),
                     ("intermediate_size", "ffn_hidden_size"), ("rms_norm_eps", "layernorm_epsilon"),
                     ("num_key_value_heads", "multi_query_group_num"), ("max_position_embeddings", "seq_length")]:
            cfg[b] = cfg.pop(a)
        cfg["kv_channels"] = llama_cfg["head_dim"]
        for k in ["rope_theta", "hidden_act", "initializer_range"]:
            del cfg[k]
    cfg.update(fam)
    if cfg.pop("_strata_no_max_position", False):  # Baichuan 2 13B's config has only model_max_length
        del cfg["max_position_embeddings"]
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
        import transformers.models.llama.modeling_llama as ml
        saved = (ml.eager_attention_forward, ml.apply_rotary_pos_emb)  # baichuan13b patches them
        llama_cfg = tiny.make_config(overrides)
        with tempfile.TemporaryDirectory() as ref:
            for attempt in range(tiny.MAX_SEED_TRIES):
                seed = base_seed + attempt
                if llama_cfg["model_type"] == "glm":  # Qwen2's shapes (q/k/v biases), gate_up fused as Glm's
                    weights = glm_reference(tiny.make_weights({**llama_cfg, "model_type": "qwen2"}, seed), llama_cfg)
                else:
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
        ml.eager_attention_forward, ml.apply_rotary_pos_emb = saved
        if after_load in (normhead, baichuan13b):  # the head is not unit-length as stored: normalizing matters
            norms = weights["lm_head.weight"].float().norm(dim=-1)
            assert float((norms - 1).abs().min()) > 0.1, norms
        packed = pack(weights, llama_cfg)
        check(packed, weights, llama_cfg, model)
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
                "kind": f"weight-level equivalence: transformers {llama_cfg['architectures'][0]} on the same bf16 values, "
                        "repacked into this family's layout (scripts/make-remote-code-fixtures.py says why it is "
                        "exact and checks the repacking against the family's modeling code)",
                "reference_config": llama_cfg,
                "normhead": after_load in (normhead, baichuan13b),
                "alibi": after_load is baichuan13b,
            },
        }
        with open(os.path.join(folder, "golden.json"), "w") as f:
            f.write(json.dumps(golden, sort_keys=True, separators=(",", ":")) + "\n")
        print(f"{name}: seed {seed}, greedy {new}, min margin {min(margins + pos_margins):.4f}", file=sys.stderr)


if __name__ == "__main__":
    main()
