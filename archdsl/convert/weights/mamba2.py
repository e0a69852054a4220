"""Mamba-2 (Mamba2ForCausalLM) weights.

    backbone.embeddings.weight            ↔ embeddings.weight
    backbone.layers.{i}.norm.weight       ↔ layers.{i}.norm.weight
    backbone.layers.{i}.mixer.{t}         ↔ layers.{i}.mixer.{t}   (in_proj, conv1d, dt_bias, A_log, D, norm, out_proj)
    backbone.norm_f.weight                ↔ norm_f.weight
    lm_head.weight                        ↔ lm_head.weight (absent when tied)
"""
from __future__ import annotations

from ...errors import ArchDSLError
from ._common import backbone_pairs, first_config, kinds_used, layer_kinds, one_config, whole_expand

MODEL_TYPES = ("mamba2",)
KINDS = frozenset({"mamba2"})  # the blocks its layers hold
HEAD = ("lm_head.weight", "backbone.embeddings.weight")


def accepts(spec) -> str | None:
    ok = (kinds_used(spec) == {"mamba2"} and spec.norm == "rmsnorm" and not spec.embed_norm
          and first_config(spec, "mamba2").gated_norm)
    return "mamba2" if ok else None


def pairs(spec, names) -> list[tuple[str, str]]:
    return backbone_pairs(spec, names, "mamba2", "Mamba-2")


def hf_config(spec) -> dict:
    if not accepts(spec):
        raise ArchDSLError("not a Mamba-2 model: every layer must be a mamba2 mixer (gated_norm) without FFN, "
                           "rmsnorm, no embed_norm")
    m = one_config(spec, "mamba2", "Mamba-2")
    if m.norm_eps != spec.norm_eps:
        raise ArchDSLError(f"Mamba-2 has one epsilon (layer_norm_epsilon): mamba2 norm_eps {m.norm_eps} differs "
                           f"from norm_eps {spec.norm_eps}")
    return {"model_type": "mamba2", "architectures": ["Mamba2ForCausalLM"], "hidden_size": spec.d_model,
            "vocab_size": spec.vocab_size, "num_hidden_layers": len(layer_kinds(spec)),
            "state_size": m.d_state, "conv_kernel": m.d_conv, "expand": whole_expand(m, "Mamba-2", "expand"),
            "num_heads": m.nheads,
            "head_dim": m.inner // m.nheads, "n_groups": m.ngroups, "chunk_size": m.chunk_size,
            "use_conv_bias": m.conv_bias, "use_bias": m.bias, "layer_norm_epsilon": spec.norm_eps,
            "tie_word_embeddings": spec.tie_embeddings, "time_step_min": m.dt_min, "time_step_max": m.dt_max,
            "time_step_limit": [m.dt_floor, {"__float__": "Infinity"}], "rmsnorm": True, "residual_in_fp32": spec.residual_fp32}
