"""Zamba2 (transformers' Zamba2ForCausalLM) ⇄ archdsl: mamba2 layers, some of them "hybrid" (a shared
transformer block injected in front of the mamba2 mixer; `zamba(shared=…)` in our layouts).

    model.embed_tokens.weight                         embeddings.weight (lm_head tied unless the config says not)
    model.layers.{i}.input_layernorm.weight           layers.{i}.norm.weight                (mamba layer)
    model.layers.{i}.mamba.<name>                     layers.{i}.mixer.<name>               (in_proj, conv1d, dt_bias,
                                                                                             A_log, D, norm, out_proj)
    model.layers.{i}.mamba_decoder.input_layernorm.weight, .mamba.<name>   the same, for a hybrid layer
    model.layers.{i}.linear.weight                    layers.{i}.inject_use.linear.weight   (per use)
    model.layers.{i}.shared_transformer.<shared>      layers.{i}.inject.<shared>            (input_layernorm,
                      self_attn.{q,k,v,o}_proj, pre_ff_layernorm, feed_forward.{gate_up,down}_proj)
    model.layers.{i}.shared_transformer.feed_forward.gate_up_proj_adapter_list.{j}.{0,1}.weight
                                                      layers.{i}.inject_use.gate_up_proj_adapter.{0,1}.weight
    model.layers.{i}.shared_transformer.self_attn.linear_{q,k,v}_adapter_list.{j}.{0,1}.weight
                                                      layers.{i}.inject_use.linear_{q,k,v}_adapter.{0,1}.weight
    model.final_layernorm.weight                      norm_f.weight

j is the hybrid layer's ordinal among all hybrid layers, and the j-th hybrid layer uses shared block
j % num_mem_blocks (HF's cycle; our layouts name the groups z0, z1, …). HF ties each shared block's
module across the layers that use it, adapter lists included, so a checkpoint may hold it under any
(save_pretrained: the first) of those layers; export writes it under the first.
"""
from __future__ import annotations

import math

import torch

from ...errors import ArchDSLError
from ...graph import layers as graph_layers
from ._common import whole_expand
from .jamba import Source

MODEL_TYPES = ("zamba2",)
KINDS = frozenset({"mamba2", "zamba"})  # the blocks its layers hold
SHARES = frozenset({"zamba"})  # the blocks it shares between layers itself (tied in its checkpoint)
HEAD = ("lm_head.weight", "model.embed_tokens.weight")
IGNORED = (r"rotary_emb\.inv_freq$",)  # RoPE's inv_freq (use_mem_rope), a buffer transformers ignores
ARCHITECTURE = "Zamba2ForCausalLM"

MAMBA2 = ("in_proj.weight", "in_proj.bias", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D", "norm.weight",
          "out_proj.weight", "out_proj.bias")
SHARED = ("input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
          "self_attn.o_proj.weight", "pre_ff_layernorm.weight", "feed_forward.gate_up_proj.weight",
          "feed_forward.down_proj.weight")
# our per-use adapter → HF's adapter list inside the shared block
ADAPTERS = {"gate_up_proj_adapter": "feed_forward.gate_up_proj_adapter_list",
            "linear_q_adapter": "self_attn.linear_q_adapter_list",
            "linear_k_adapter": "self_attn.linear_k_adapter_list",
            "linear_v_adapter": "self_attn.linear_v_adapter_list"}


def _hybrid_groups(model) -> list[tuple[int, list[int]]]:
    """[(layer i, the layers sharing its block (first first))] for every hybrid layer i, in order."""
    by_block: dict[int, list[int]] = {}
    for i, layer in enumerate(model.layers):
        if layer.inject is not None:
            by_block.setdefault(id(layer.inject), []).append(i)
    return [(i, by_block[id(layer.inject)]) for i, layer in enumerate(model.layers) if layer.inject is not None]


def _put_any(src: Source, out: dict, ours: str, names: list[str]) -> None:
    """out[ours] = the first of `names` the checkpoint holds (tied copies of one tensor, all used up)."""
    found = [n for n in names if n in src] or names[:1]  # none: take() names the first layer's copy
    src.put(out, ours, found[0])
    for n in found[1:]:
        if not torch.equal(src.take(n), out[ours]):
            raise ArchDSLError(f"Zamba2 checkpoint: {n!r} differs from {found[0]!r}, but both layers use one shared "
                               "block (transformers leaves Zamba2's shared blocks untied when tie_word_embeddings "
                               "is false, so such a model is not the Zamba2 its config describes)")


def to_archdsl(hf_state: dict, spec, model) -> dict:
    src = Source(hf_state, "Zamba2")
    out = {}
    src.put(out, "embeddings.weight", "model.embed_tokens.weight")
    hybrid = dict(_hybrid_groups(model))
    ordinal = {i: j for j, i in enumerate(hybrid)}
    for i, layer in enumerate(model.layers):
        q = f"layers.{i}."
        p = f"model.layers.{i}." + ("mamba_decoder." if i in hybrid else "")
        src.put(out, q + "norm.weight", p + "input_layernorm.weight")
        for n in MAMBA2:
            if _has(layer.mixer, n):
                src.put(out, q + "mixer." + n, p + "mamba." + n)
        if i not in hybrid:
            continue
        owners = [f"model.layers.{k}.shared_transformer." for k in hybrid[i]]
        for n in SHARED:
            _put_any(src, out, q + "inject." + n, [o + n for o in owners])
        src.put(out, q + "inject_use.linear.weight", f"model.layers.{i}.linear.weight")
        j = ordinal[i]
        for ours, theirs in ADAPTERS.items():
            if hasattr(layer.inject_use, ours):
                for k in (0, 1):
                    _put_any(src, out, q + f"inject_use.{ours}.{k}.weight",
                             [o + f"{theirs}.{j}.{k}.weight" for o in owners])
    src.put(out, "norm_f.weight", "model.final_layernorm.weight")
    if spec.tie_embeddings:  # a head equal to the embeddings was dropped before (hf_io.tied_head)
        out["lm_head.weight"] = out["embeddings.weight"]
    else:
        src.put(out, "lm_head.weight", "lm_head.weight")
    return src.finish(out, model)


def _has(module, dotted: str) -> bool:
    *path, leaf = dotted.split(".")
    for p in path:
        module = getattr(module, p)
    return getattr(module, leaf, None) is not None


def _uses(spec) -> list[tuple[int, object]]:
    """[(layer i, its zamba sublayer)] for the layers with an inject block."""
    return [(i, s) for i, subs in enumerate(graph_layers(spec.graph)) for s in subs if s.kind == "zamba"]


def to_hf(state: dict, spec, hf_config: dict) -> dict:
    out = {"model.embed_tokens.weight": state["embeddings.weight"]}
    uses = _uses(spec)
    hybrid = {i for i, _ in uses}
    for i, subs in enumerate(graph_layers(spec.graph)):
        q = f"layers.{i}."
        p = f"model.layers.{i}." + ("mamba_decoder." if i in hybrid else "")
        out[p + "input_layernorm.weight"] = state[q + "norm.weight"]
        for n in MAMBA2:
            if q + "mixer." + n in state:
                out[p + "mamba." + n] = state[q + "mixer." + n]
    # transformers ties each shared block's copies only when it ties the embeddings too: then the
    # first layer of a group holds the block (as save_pretrained writes it), else every layer does
    group_of = {i: s.group if s.group is not None else ("layer", i) for i, s in uses}
    for j, (i, s) in enumerate(uses):
        q = f"layers.{i}."
        owners = [k for k, _ in uses if group_of[k] == group_of[i]]
        for owner in owners[:1] if spec.tie_embeddings else owners:
            o = f"model.layers.{owner}.shared_transformer."
            if i == owners[0]:
                for n in SHARED:
                    out[o + n] = state[q + "inject." + n]
            for ours, theirs in ADAPTERS.items():
                for k in (0, 1):
                    name = q + f"inject_use.{ours}.{k}.weight"
                    if name in state:
                        out[o + f"{theirs}.{j}.{k}.weight"] = state[name]
        out[f"model.layers.{i}.linear.weight"] = state[q + "inject_use.linear.weight"]
    out["model.final_layernorm.weight"] = state["norm_f.weight"]
    if not spec.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    return out


# --- config.json ---------------------------------------------------------------------------

def _refuse(what: str, why: str) -> ArchDSLError:
    return ArchDSLError(f"cannot export to Hugging Face Zamba2: {what}: {why}")


def accepts(spec) -> str | None:
    """"zamba2" when the spec exports as a zamba2 checkpoint (hf_config accepts it), else None."""
    if not _uses(spec):
        return None
    try:
        hf_config(spec)
    except ArchDSLError:
        return None
    return "zamba2"


def hf_config(spec) -> dict:
    subs = graph_layers(spec.graph)
    d = spec.d_model
    if spec.norm != "rmsnorm" or spec.embed_norm:
        raise _refuse(f"norm {spec.norm!r}" + (" with embed_norm" if spec.embed_norm else ""), "Zamba2 uses RMSNorm")
    mixers, types = [], []
    for i, layer in enumerate(subs):
        kinds = sorted(s.kind for s in layer)
        if kinds not in (["mamba2"], ["mamba2", "zamba"]):
            raise _refuse(f"layer {i} ({' + '.join(kinds)})", "every Zamba2 layer is a mamba2 mixer, with or "
                          "without a zamba inject block in front")
        m = next(s for s in layer if s.kind == "mamba2")
        if m.group is not None:
            raise _refuse(f"layer {i}", "shared mamba2 blocks have no Zamba2 equivalent")
        mixers.append(m.config)
        types.append("hybrid" if len(kinds) == 2 else "mamba")
    m = mixers[0]
    if any(c.resolved() != m.resolved() for c in mixers[1:]):  # a default written out is the default
        raise _refuse("mamba2 blocks", "all of them must have the same settings")
    if m.bias or not m.conv_bias or not m.gated_norm or not math.isclose(m.norm_eps, 1e-5):
        raise _refuse("mamba2", "Zamba2's mamba2 has no in/out biases, a conv bias, and the gated RMSNorm (eps 1e-5)")
    cfg = {"model_type": "zamba2", "architectures": [ARCHITECTURE], "vocab_size": spec.vocab_size, "hidden_size": d,
           "num_hidden_layers": len(subs), "layers_block_type": types, "rms_norm_eps": spec.norm_eps,
           "tie_word_embeddings": spec.tie_embeddings, "mamba_d_state": m.d_state, "mamba_d_conv": m.d_conv,
           "mamba_expand": whole_expand(m, "Zamba2", "mamba_expand"), "mamba_ngroups": m.ngroups,
           "n_mamba_heads": m.nheads,
           "chunk_size": m.chunk_size, "use_conv_bias": True, "add_bias_linear": False,
           # HF clamps dt at time_step_min; 0 (no clamp) would crash its dt init (log 0), and a floor of
           # 1e-9 only touches softplus inputs below -20.7, where dt·A and dt·B·x vanish in float32
           "time_step_min": m.dt_floor or 1e-9, "time_step_max": max(m.dt_max, m.dt_floor or 1e-9)}  # init only
    uses = _uses(spec)
    if not uses:
        cfg.update(num_mem_blocks=1, num_attention_heads=max(1, 2 * d // 64))
        return cfg
    # the j-th use must take block j % M: M distinct groups first, then the same cycle
    groups = [s.group if s.group is not None else ("layer", i) for i, s in uses]
    M = len(dict.fromkeys(groups))
    if len(set(groups[:M])) != M or any(groups[j] != groups[j % M] for j in range(len(groups))):
        raise _refuse(f"shared groups {[g if isinstance(g, str) else None for g in groups]} of the zamba uses",
                      "Zamba2 cycles through its num_mem_blocks shared blocks in order (ABAB…)")
    z = uses[0][1].config
    if any(s.config != z for _, s in uses[1:]):
        raise _refuse("zamba blocks", "all of them must have the same settings")
    if not z.lora:
        raise _refuse("zamba lora=0", "Zamba2 always has the gate/up LoRA adapters (adapter_rank > 0)")
    if z.hdim != 2 * d // z.heads:
        raise _refuse(f"zamba head_dim {z.hdim}", f"Zamba2's head_dim is 2·hidden_size / heads = {2 * d // z.heads}")
    if not math.isclose(z.norm_eps, spec.norm_eps):
        raise _refuse(f"zamba norm_eps {z.norm_eps}", f"Zamba2 has one rms_norm_eps ({spec.norm_eps})")
    cfg.update(num_mem_blocks=M, num_attention_heads=z.heads, num_key_value_heads=z.kv, intermediate_size=z.width,
               hidden_act=z.act, adapter_rank=z.lora, use_shared_attention_adapter=bool(z.attn_lora),
               use_mem_rope=bool(z.rope))
    if z.rope:
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": z.rope_theta}
    return cfg
