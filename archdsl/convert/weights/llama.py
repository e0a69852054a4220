"""Llama (LlamaForCausalLM) weights.

    model.embed_tokens.weight                       ↔ embeddings.weight
    model.layers.{i}.input_layernorm.weight         ↔ layers.{i}.norm.weight
    model.layers.{i}.self_attn.{q,k,v,o}_proj       ↔ layers.{i}.mixer.{q,k,v,o}_proj
    model.layers.{i}.post_attention_layernorm       ↔ layers.{i}.ffn_norm.weight
    model.layers.{i}.mlp.{gate,up,down}_proj        ↔ layers.{i}.ffn.{gate,up,down}_proj
    model.norm.weight                               ↔ norm_f.weight
    lm_head.weight                                  ↔ lm_head.weight (absent when tied)
"""
from __future__ import annotations

from ...errors import ArchDSLError
from ._common import (FFN, MIXER, attn_bias_mismatch, block_params, first_config, kinds_used, layer_kinds,
                      one_config)

MODEL_TYPES = ("llama",)
KINDS = frozenset({"attn", "mlp"})  # the blocks its layers hold
HEAD = ("lm_head.weight", "model.embed_tokens.weight")
IGNORED = (r"rotary_emb\.inv_freq$",)  # a buffer older transformers saved per layer; it computes RoPE's inv_freq
ACTS = {"swiglu": "silu", "geglu": "gelu"}


def why_not(spec) -> str | None:
    """The first thing that keeps the spec from being a Llama model (with the spec's values), or None."""
    kinds = kinds_used(spec)
    if kinds != {"attn", "mlp"}:
        has = (f"it has {', '.join(sorted(kinds - {'attn', 'mlp'}))} blocks" if kinds - {"attn", "mlp"}
               else f"it has no {' or '.join(sorted({'attn', 'mlp'} - kinds))} block")
        return f"{has}: every Llama layer is attn with an mlp"
    if spec.norm != "rmsnorm":
        return f"norm {spec.norm!r}: Llama uses RMSNorm"
    if spec.embed_norm:
        return "embed_norm: Llama has no norm after the embedding"
    for i, l in enumerate(layer_kinds(spec)):
        if not (set(l) == {MIXER, FFN} and l[MIXER].kind == "attn"):
            return (f"layer {i} is {' + '.join(s.kind for s in l.values())}: every Llama layer is attn with "
                    "an mlp")
    a = first_config(spec, "attn")
    if not a.rope:
        return "attn rope false: Llama's attention has RoPE"
    if a.rope_fraction != 1.0:
        return f"attn rope_fraction {a.rope_fraction:g}: Llama rotates the whole head (rope_fraction 1)"
    if a.window is not None:
        return f"attn window {a.window}: Llama's attention is full, without a window"
    return attn_bias_mismatch(a, "Llama")


def accepts(spec) -> str | None:
    return "llama" if why_not(spec) is None else None


def pairs(spec, names) -> list[tuple[str, str]]:
    out = [("model.embed_tokens.weight", "embeddings.weight")]
    for i, layer in enumerate(layer_kinds(spec)):
        if set(layer) != {MIXER, FFN} or layer[MIXER].kind != "attn" or layer[FFN].kind != "mlp":
            raise ArchDSLError(f"layer {i}: a Llama layer is attn with an mlp")
        hf = f"model.layers.{i}"
        out.append((f"{hf}.input_layernorm.weight", f"layers.{i}.norm.weight"))
        out += [(f"{hf}.self_attn.{n}", f"layers.{i}.mixer.{n}") for n in block_params("attn", names, f"layers.{i}.mixer")]
        out.append((f"{hf}.post_attention_layernorm.weight", f"layers.{i}.ffn_norm.weight"))
        out += [(f"{hf}.mlp.{n}", f"layers.{i}.ffn.{n}") for n in block_params("mlp", names, f"layers.{i}.ffn")]
    out.append(("model.norm.weight", "norm_f.weight"))
    if not spec.tie_embeddings:
        out.append(("lm_head.weight", "lm_head.weight"))
    return out


def hf_config(spec) -> dict:
    why = why_not(spec)
    if why is not None:
        raise ArchDSLError(f"not a Llama model: {why}")
    a, mlp = one_config(spec, "attn", "Llama"), one_config(spec, "mlp", "Llama")
    if mlp.act not in ACTS:
        raise ArchDSLError(f"Llama's MLP is gated (swiglu or geglu), not {mlp.act!r}")
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": spec.d_model,
            "vocab_size": spec.vocab_size, "num_hidden_layers": len(layer_kinds(spec)),
            "num_attention_heads": a.heads, "num_key_value_heads": a.kv, "head_dim": a.hdim,
            "intermediate_size": mlp.width, "hidden_act": ACTS[mlp.act], "mlp_bias": mlp.bias,
            "attention_bias": a.bias, "rms_norm_eps": spec.norm_eps, "tie_word_embeddings": spec.tie_embeddings,
            "rope_parameters": {"rope_type": "default", "rope_theta": a.rope_theta}}
