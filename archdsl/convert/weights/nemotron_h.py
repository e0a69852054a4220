"""NemotronH (NemotronHForCausalLM) weights: one block per layer (M mamba2, * attention, - mlp, E moe).

    backbone.embeddings.weight                        ↔ embeddings.weight
    backbone.layers.{i}.norm.weight                   ↔ layers.{i}.norm.weight (mixers) / ffn_norm.weight (mlp, moe)
    backbone.layers.{i}.mixer.{t}                     ↔ layers.{i}.mixer.{t} (mamba2, attn) / ffn.{t} (mlp)
    backbone.layers.{i}.mixer.gate.weight             ↔ layers.{i}.ffn.router.weight
    backbone.layers.{i}.mixer.gate.e_score_correction_bias ↔ layers.{i}.ffn.router.e_score_correction_bias
    backbone.layers.{i}.mixer.experts.{e}.up_proj.weight   ↔ layers.{i}.ffn.experts.up_proj[e]   (stacked)
    backbone.layers.{i}.mixer.experts.{e}.down_proj.weight ↔ layers.{i}.ffn.experts.down_proj[e]
    backbone.layers.{i}.mixer.shared_experts.{t}      ↔ layers.{i}.ffn.shared_expert.{t}
    backbone.norm_f.weight                            ↔ norm_f.weight
    lm_head.weight                                    ↔ lm_head.weight (absent when tied)

The "model." prefix of transformers' in-memory names and fused experts (experts.up_proj [E, I, d]) are
read too; export writes the checkpoint convention above.
"""
from __future__ import annotations

import re

import torch

from ...errors import ArchDSLError
from ._common import FFN, MIXER, block_params, first_config, kinds_used, layer_kinds, one_config, rename, unrename

MODEL_TYPES = ("nemotron_h",)
KINDS = frozenset({"mamba2", "attn", "mlp", "moe"})  # the blocks its layers hold
HEAD = ("lm_head.weight", "backbone.embeddings.weight")  # never tied (transformers' NemotronH ties nothing)
IGNORED = (r"^mtp\.",)  # the multi-token-prediction layers (transformers: _keys_to_ignore_on_load_unexpected)
SYMBOL = {"mamba2": "M", "attn": "*", "mlp": "-", "moe": "E"}
ACTS = ("relu2", "relu", "gelu", "silu")


def _kind(layer, i):
    if set(layer) == {MIXER} and layer[MIXER].kind in ("mamba2", "attn"):
        return layer[MIXER].kind
    if set(layer) == {FFN} and layer[FFN].kind in ("mlp", "moe"):
        return layer[FFN].kind
    if i is None:
        return None
    raise ArchDSLError(f"layer {i}: a NemotronH layer is one block: a mamba2 or attn mixer, or an mlp or moe alone")


def why_not(spec) -> str | None:
    """The first thing that keeps the spec from being a NemotronH model (with the spec's values), or None."""
    if spec.norm != "rmsnorm":
        return f"norm {spec.norm!r}: NemotronH uses RMSNorm"
    if spec.embed_norm:
        return "embed_norm: NemotronH has no norm after the embedding"
    for i, layer in enumerate(layer_kinds(spec)):
        if _kind(layer, None) is None:
            return (f"layer {i} is {' + '.join(s.kind for s in layer.values())}: a NemotronH layer is one block, a "
                    "mamba2 or attn mixer, or an mlp or moe alone")
    a, moe, m = first_config(spec, "attn"), first_config(spec, "moe"), first_config(spec, "mamba2")
    if a is not None and a.rope:  # biases: hf_config refuses them by name
        return "attn rope true: NemotronH's attention has no RoPE"
    if a is not None and a.window is not None:
        return f"attn window {a.window}: NemotronH's attention is full, without a window"
    if m is not None and not m.gated_norm:  # transformers' NemotronH mamba2 always has the gated RMSNorm
        return "mamba2 gated_norm false: transformers' NemotronH mamba2 always has the gated RMSNorm"
    if moe is not None and moe.router != "sigmoid":
        return f"moe router {moe.router!r}: NemotronH's router is a sigmoid"
    if moe is not None and not moe.shared_hidden:
        return "moe without a shared expert (shared_hidden): NemotronH's MoE has one"
    if moe is not None and (moe.router_bias or moe.bias):
        return "moe router_bias or bias: NemotronH's experts and router have no bias"
    if first_config(spec, "mlp") is not None and first_config(spec, "mlp").gated:
        return f"mlp act {first_config(spec, 'mlp').act!r} (gated): NemotronH's MLP is plain (relu2)"
    if not kinds_used(spec) & {"mamba2", "moe"}:
        return "no mamba2 or moe block: NemotronH is a hybrid (attention and MLP alone export as Llama)"
    return None


def accepts(spec) -> str | None:
    return "nemotron_h" if why_not(spec) is None else None


def pairs(spec, names) -> list[tuple[str, str]]:
    out = [("backbone.embeddings.weight", "embeddings.weight")]
    for i, layer in enumerate(layer_kinds(spec)):
        kind, hf = _kind(layer, i), f"backbone.layers.{i}"
        if kind in ("mamba2", "attn"):
            out.append((f"{hf}.norm.weight", f"layers.{i}.norm.weight"))
            out += [(f"{hf}.mixer.{n}", f"layers.{i}.mixer.{n}") for n in block_params(kind, names, f"layers.{i}.mixer")]
        elif kind == "mlp":
            out.append((f"{hf}.norm.weight", f"layers.{i}.ffn_norm.weight"))
            out += [(f"{hf}.mixer.{n}", f"layers.{i}.ffn.{n}") for n in block_params("mlp", names, f"layers.{i}.ffn")]
        else:
            out.append((f"{hf}.norm.weight", f"layers.{i}.ffn_norm.weight"))
            out.append((f"{hf}.mixer.gate.weight", f"layers.{i}.ffn.router.weight"))
            out.append((f"{hf}.mixer.gate.e_score_correction_bias", f"layers.{i}.ffn.router.e_score_correction_bias"))
            out += [(f"{hf}.mixer.experts.{n}", f"layers.{i}.ffn.experts.{n}") for n in ("up_proj", "down_proj")]
            out += [(f"{hf}.mixer.shared_experts.{n}", f"layers.{i}.ffn.shared_expert.{n}")
                    for n in block_params("mlp", names, f"layers.{i}.ffn.shared_expert")]
    out.append(("backbone.norm_f.weight", "norm_f.weight"))
    out.append(("lm_head.weight", "lm_head.weight"))  # transformers' NemotronH never ties: always written
    return out


_EXPERT = re.compile(r"^(.*\.mixer\.experts)\.([0-9]+)\.(up_proj|down_proj)\.weight$")


def _stack_experts(hf_state: dict, spec) -> dict:
    """Per-expert Linear weights → the stacked [E, out, in] tensors (every expert must be there)."""
    out, groups = {}, {}
    for name, t in hf_state.items():
        name = "backbone." + name[len("model."):] if name.startswith("model.") else name
        m = _EXPERT.match(name)
        if m:
            groups.setdefault((m[1], m[3]), {})[int(m[2])] = (name, t)
        else:
            out[name] = t
    for (prefix, proj), experts in groups.items():
        n = max(experts) + 1
        missing = [e for e in range(n) if e not in experts]
        if missing:
            raise ArchDSLError(f"missing tensor '{prefix}.{missing[0]}.{proj}.weight' in the checkpoint")
        shapes = {tuple(t.shape) for _, t in experts.values()}
        if len(shapes) > 1:
            name, t = next((nt for nt in experts.values() if tuple(nt[1].shape) != tuple(experts[0][1].shape)))
            raise ArchDSLError(f"tensor {name!r} has shape {list(t.shape)}, expert 0 has {list(experts[0][1].shape)}")
        out[f"{prefix}.{proj}"] = torch.stack([experts[e][1] for e in range(n)])
    return out


def to_archdsl(hf_state, spec, model):
    names = set(model.state_dict())
    return rename(_stack_experts(hf_state, spec), pairs(spec, names), model)


def to_hf(state, spec, hf_config):
    state = dict(state)
    for i, layer in enumerate(layer_kinds(spec)):
        bias = f"layers.{i}.ffn.router.e_score_correction_bias"
        if _kind(layer, i) == "moe" and bias not in state:  # a sigmoid router without score_bias: HF's, bias zero
            state[bias] = torch.zeros(layer[FFN].config.experts, dtype=torch.float32)
    out = unrename(state, pairs(spec, set(state)), False)
    for name in [n for n in out if n.endswith((".experts.up_proj", ".experts.down_proj"))]:
        t = out.pop(name)
        prefix, proj = name.rsplit(".", 1)
        for e in range(t.shape[0]):
            out[f"{prefix}.{e}.{proj}.weight"] = t[e].contiguous()
    return out


def hf_config(spec) -> dict:
    m = first_config(spec, "mamba2")
    if m is not None and not m.gated_norm:
        raise ArchDSLError("cannot export to Hugging Face NemotronH: mamba2 gated_norm false: transformers' NemotronH "
                           "mamba2 always has the gated RMSNorm", hint="give mamba2 gated_norm: true")
    why = why_not(spec)
    if why is not None:
        raise ArchDSLError(f"cannot export to Hugging Face NemotronH: {why}")
    layers = layer_kinds(spec)
    pattern = "".join(SYMBOL[_kind(l, i)] for i, l in enumerate(layers))
    cfg = {"model_type": "nemotron_h", "architectures": ["NemotronHForCausalLM"], "hidden_size": spec.d_model,
           "vocab_size": spec.vocab_size, "num_hidden_layers": len(layers), "hybrid_override_pattern": pattern,
           "layer_norm_epsilon": spec.norm_eps, "tie_word_embeddings": False,
           "num_nextn_predict_layers": 0, "mtp_layers_block_type": []}
    m = one_config(spec, "mamba2", "NemotronH")
    if m is not None:
        if m.norm_eps != spec.norm_eps:
            raise ArchDSLError(f"NemotronH has one epsilon (layer_norm_epsilon): mamba2 norm_eps {m.norm_eps} "
                               f"differs from norm_eps {spec.norm_eps}")
        if isinstance(m.expansion, int):  # else left out: transformers' mixer takes its width as heads·head_dim
            cfg["expand"] = m.expansion
        cfg.update({"ssm_state_size": m.d_state, "conv_kernel": m.d_conv, "mamba_num_heads": m.nheads,
                    "mamba_head_dim": m.inner // m.nheads, "n_groups": m.ngroups, "chunk_size": m.chunk_size,
                    "use_conv_bias": m.conv_bias, "use_bias": m.bias,
                    "mamba_hidden_act": "silu", "time_step_min": m.dt_min, "time_step_max": m.dt_max,
                    "time_step_limit": [m.dt_floor, {"__float__": "Infinity"}]})
    a = one_config(spec, "attn", "NemotronH")
    if a is not None:
        if a.bias or a.out_bias:
            raise ArchDSLError("cannot export to Hugging Face NemotronH: attn with biases: transformers' NemotronH "
                               "attention has none, whatever its config's attention_bias says")
        cfg.update({"num_attention_heads": a.heads, "num_key_value_heads": a.kv, "head_dim": a.hdim,
                    "attention_bias": False})
    mlp, moe = one_config(spec, "mlp", "NemotronH"), one_config(spec, "moe", "NemotronH")
    acts = {c.act for c in (mlp, moe) if c is not None}
    if len(acts) > 1 or not acts <= set(ACTS):
        raise ArchDSLError(f"NemotronH has one activation (mlp_hidden_act) of {', '.join(ACTS)}; got {sorted(acts)}")
    cfg["mlp_hidden_act"] = acts.pop() if acts else "relu2"
    if mlp is not None:
        if mlp.bias and moe is not None:  # mlp_bias gives transformers' shared experts biases too; ours have none
            raise ArchDSLError("cannot export to Hugging Face NemotronH: mlp with biases next to moe layers: "
                               "mlp_bias would give the moe shared experts biases as well, which these have not")
        cfg.update({"intermediate_size": mlp.width, "mlp_bias": mlp.bias})
    if moe is not None:
        cfg.update({"n_routed_experts": moe.experts, "num_experts_per_tok": moe.top_k,
                    "moe_intermediate_size": moe.width, "moe_shared_expert_intermediate_size": moe.shared_hidden,
                    "n_shared_experts": 1, "n_group": 1, "topk_group": 1, "routed_scaling_factor": moe.routed_scale,
                    "norm_topk_prob": moe.renormalises})
    return cfg
