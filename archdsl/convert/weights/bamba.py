"""Bamba (BambaForCausalLM) weights: Mamba-2 layers with attention at attn_layer_indices, a gated MLP in
every layer.

    model.embed_tokens.weight                         ↔ embeddings.weight
    model.layers.{i}.input_layernorm.weight           ↔ layers.{i}.norm.weight
    model.layers.{i}.mamba.{t} | .self_attn.{t}       ↔ layers.{i}.mixer.{t}
    model.layers.{i}.pre_ff_layernorm.weight          ↔ layers.{i}.ffn_norm.weight
    model.layers.{i}.feed_forward.{gate,up,down}_proj ↔ layers.{i}.ffn.{gate,up,down}_proj
    model.final_layernorm.weight                      ↔ norm_f.weight
    lm_head.weight                                    ↔ lm_head.weight (absent when tied)
"""
from __future__ import annotations

from ...errors import ArchDSLError
from ._common import (FFN, MIXER, attn_bias_mismatch, block_params, first_config, kinds_used, layer_kinds,
                      one_config, whole_expand)

MODEL_TYPES = ("bamba",)
KINDS = frozenset({"mamba2", "attn", "mlp"})  # the blocks its layers hold
HEAD = ("lm_head.weight", "model.embed_tokens.weight")
IGNORED = (r"rotary_emb\.inv_freq$",)  # RoPE's inv_freq, a buffer (transformers ignores it in old checkpoints)
ACTS = {"swiglu": "silu"}  # hidden_act drives the mamba conv as well as the MLP: silu only (geglu would be gelu there)


def why_not(spec) -> str | None:
    """The first thing that keeps the spec from being a Bamba model (with the spec's values), or None."""
    kinds = kinds_used(spec)
    if not kinds <= {"mamba2", "attn", "mlp"}:
        return (f"it has {', '.join(sorted(kinds - {'mamba2', 'attn', 'mlp'}))} blocks: every Bamba layer is a "
                "mamba2 or attn mixer with an mlp FFN")
    if spec.norm != "rmsnorm":
        return f"norm {spec.norm!r}: Bamba uses RMSNorm"
    if spec.embed_norm:
        return "embed_norm: Bamba has no norm after the embedding"
    for i, l in enumerate(layer_kinds(spec)):
        if not (set(l) == {MIXER, FFN} and l[FFN].kind == "mlp"):
            return (f"layer {i} is {' + '.join(s.kind for s in l.values())}: every Bamba layer is a mamba2 or "
                    "attn mixer with an mlp FFN")
    if "mamba2" not in kinds:
        return "no mamba2 layer: Bamba is a Mamba-2 model (attention-only specs export as Llama)"
    if not first_config(spec, "mamba2").gated_norm:
        return "mamba2 gated_norm false: transformers' Bamba mamba2 always has the gated RMSNorm"
    if "attn" in kinds:
        a = first_config(spec, "attn")
        if not a.rope:
            return "attn rope false: Bamba's attention has RoPE"
        if a.window is not None:
            return f"attn window {a.window}: Bamba's attention is full, without a window"
        return attn_bias_mismatch(a, "Bamba")
    return None


def accepts(spec) -> str | None:
    return "bamba" if why_not(spec) is None else None


def pairs(spec, names) -> list[tuple[str, str]]:
    out = [("model.embed_tokens.weight", "embeddings.weight")]
    for i, layer in enumerate(layer_kinds(spec)):
        if set(layer) != {MIXER, FFN} or layer[FFN].kind != "mlp" or layer[MIXER].kind not in ("mamba2", "attn"):
            raise ArchDSLError(f"layer {i}: a Bamba layer is a mamba2 or attn mixer with an mlp")
        kind = layer[MIXER].kind
        hf = f"model.layers.{i}"
        sub = "mamba" if kind == "mamba2" else "self_attn"
        out.append((f"{hf}.input_layernorm.weight", f"layers.{i}.norm.weight"))
        out += [(f"{hf}.{sub}.{n}", f"layers.{i}.mixer.{n}") for n in block_params(kind, names, f"layers.{i}.mixer")]
        out.append((f"{hf}.pre_ff_layernorm.weight", f"layers.{i}.ffn_norm.weight"))
        out += [(f"{hf}.feed_forward.{n}", f"layers.{i}.ffn.{n}") for n in block_params("mlp", names, f"layers.{i}.ffn")]
    out.append(("model.final_layernorm.weight", "norm_f.weight"))
    if not spec.tie_embeddings:
        out.append(("lm_head.weight", "lm_head.weight"))
    return out


def hf_config(spec) -> dict:
    m = first_config(spec, "mamba2")
    if m is not None and not m.gated_norm:
        raise ArchDSLError("cannot export to Hugging Face Bamba: mamba2 gated_norm false: transformers' Bamba mamba2 "
                           "always has the gated RMSNorm", hint="give mamba2 gated_norm: true")
    why = why_not(spec)
    if why is not None:
        raise ArchDSLError(f"not a Bamba model: {why}")
    layers = layer_kinds(spec)
    m, mlp = one_config(spec, "mamba2", "Bamba"), one_config(spec, "mlp", "Bamba")
    if mlp.act not in ACTS:
        raise ArchDSLError(f"Bamba's MLP is swiglu (its hidden_act also drives the mamba conv, which is SiLU), "
                           f"not {mlp.act!r}")
    if m.norm_eps != spec.norm_eps:
        raise ArchDSLError(f"Bamba has one epsilon (rms_norm_eps): mamba2 norm_eps {m.norm_eps} differs from "
                           f"norm_eps {spec.norm_eps}")
    cfg = {"model_type": "bamba", "architectures": ["BambaForCausalLM"], "hidden_size": spec.d_model,
           "vocab_size": spec.vocab_size, "num_hidden_layers": len(layers),
           "attn_layer_indices": [i for i, l in enumerate(layers) if l[MIXER].kind == "attn"],
           "intermediate_size": mlp.width, "hidden_act": ACTS[mlp.act], "mlp_bias": mlp.bias,
           "mamba_n_heads": m.nheads, "mamba_d_head": m.inner // m.nheads, "mamba_n_groups": m.ngroups,
           "mamba_d_state": m.d_state, "mamba_d_conv": m.d_conv,
           "mamba_expand": whole_expand(m, "Bamba", "mamba_expand"),
           "mamba_chunk_size": m.chunk_size, "mamba_conv_bias": m.conv_bias, "mamba_proj_bias": m.bias,
           "time_step_limit": [m.dt_floor, {"__float__": "Infinity"}], "rms_norm_eps": spec.norm_eps,
           "time_step_min": m.dt_min, "time_step_max": m.dt_max,  # not BambaConfig's: kept, and read back
           "tie_word_embeddings": spec.tie_embeddings}
    a = one_config(spec, "attn", "Bamba")
    if a is not None:
        width = int(a.hdim * a.rope_fraction)
        if width % 2:  # transformers rotates width + 1 channels, frequencies over width; archdsl whole pairs
            even = width // 2 * 2 / a.hdim
            hint = (f"rope_fraction {even:g} ({width - 1}/{a.hdim}) is the same archdsl model and exports exactly"
                    if width > 1 and int(a.hdim * even) == width - 1 else "")
            raise ArchDSLError(f"cannot export to Hugging Face Bamba: attn rope_fraction {a.rope_fraction:g} of "
                               f"head_dim {a.hdim}: the rotated width int({a.hdim}·{a.rope_fraction:g}) = {width} is "
                               f"odd; transformers' Bamba (partial_rotary_factor) then rotates {width + 1} channels "
                               f"with frequencies base^(-2i/{width}), archdsl {width - 1} (whole pairs): another "
                               "function", hint=hint)
        if a.hdim != spec.d_model // a.heads:  # transformers' Bamba reads it, as Jamba's and Llama's
            cfg["head_dim"] = a.hdim
        cfg.update({"num_attention_heads": a.heads, "num_key_value_heads": a.kv, "attention_bias": a.bias,
                    "rope_parameters": {"rope_type": "default", "rope_theta": a.rope_theta,
                                        "partial_rotary_factor": a.rope_fraction},
                    "partial_rotary_factor": a.rope_fraction})
    return cfg
