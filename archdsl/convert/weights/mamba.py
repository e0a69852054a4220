"""Mamba (MambaForCausalLM) and Falcon Mamba (FalconMambaForCausalLM) weights.

    backbone.embeddings.weight            ↔ embeddings.weight
    backbone.layers.{i}.norm.weight       ↔ layers.{i}.norm.weight
    backbone.layers.{i}.mixer.{t}         ↔ layers.{i}.mixer.{t}   (in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj)
    backbone.norm_f.weight                ↔ norm_f.weight
    lm_head.weight                        ↔ lm_head.weight (absent when tied)

Falcon Mamba is Mamba with weightless RMSNorms on dt, B and C (inner_norms: unweighted).
"""
from __future__ import annotations

from ...errors import ArchDSLError
from ._common import backbone_pairs, first_config, kinds_used, layer_kinds, one_config

MODEL_TYPES = ("mamba", "falcon_mamba")
KINDS = frozenset({"mamba"})  # the blocks its layers hold
HEAD = ("lm_head.weight", "backbone.embeddings.weight")
ARCHITECTURES = {"mamba": "MambaForCausalLM", "falcon_mamba": "FalconMambaForCausalLM"}
NAMES = {"mamba": "Mamba", "falcon_mamba": "Falcon Mamba"}


def accepts(spec) -> str | None:
    """The model type a spec exports as, or None."""
    if kinds_used(spec) != {"mamba"} or spec.norm != "rmsnorm" or spec.embed_norm:
        return None
    mode = first_config(spec, "mamba").inner_norms
    return {"none": "mamba", "unweighted": "falcon_mamba"}.get(mode)


def pairs(spec, names) -> list[tuple[str, str]]:
    return backbone_pairs(spec, names, "mamba", "Mamba")


def hf_config(spec) -> dict:
    model_type = accepts(spec)
    if model_type is None:
        raise ArchDSLError("not a Mamba / Falcon Mamba model: every layer must be a mamba mixer without FFN "
                           "(inner_norms none or unweighted), rmsnorm, no embed_norm")
    m = one_config(spec, "mamba", NAMES[model_type])
    cfg = {"model_type": model_type, "architectures": [ARCHITECTURES[model_type]],
           "hidden_size": spec.d_model, "vocab_size": spec.vocab_size,
           "num_hidden_layers": len(layer_kinds(spec)), "state_size": m.d_state, "conv_kernel": m.d_conv,
           "expand": m.expand, "intermediate_size": m.inner, "time_step_rank": m.rank,
           "use_conv_bias": m.conv_bias, "use_bias": m.bias, "layer_norm_epsilon": spec.norm_eps,
           "tie_word_embeddings": spec.tie_embeddings, "time_step_min": m.dt_min, "time_step_max": m.dt_max,
           "residual_in_fp32": spec.residual_fp32}
    if model_type == "falcon_mamba":
        cfg["mixer_rms_eps"] = m.inner_norm_eps
    return cfg
