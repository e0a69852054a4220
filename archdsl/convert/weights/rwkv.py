"""RWKV-4 (transformers' RwkvForCausalLM) ⇄ archdsl: `rwkv4` time-mix + `cmix` (version 4) layers,
LayerNorms, the embedding LayerNorm (HF's blocks.0.pre_ln) as our embed_norm.

    rwkv.embeddings.weight                    embeddings.weight
    rwkv.blocks.0.pre_ln.{weight,bias}        embed_norm.{weight,bias}
    rwkv.blocks.{i}.ln1.{weight,bias}         layers.{i}.norm.{weight,bias}
    rwkv.blocks.{i}.attention.<name>          layers.{i}.mixer.<name>   (time_decay, time_first, time_mix_{key,value,
                                                                          receptance}, {key,value,receptance,output}.weight)
    rwkv.blocks.{i}.ln2.{weight,bias}         layers.{i}.ffn_norm.{weight,bias}
    rwkv.blocks.{i}.feed_forward.<name>       layers.{i}.ffn.<name>     (time_mix_{key,receptance},
                                                                          {key,receptance,value}.weight)
    rwkv.ln_out.{weight,bias}                 norm_f.{weight,bias}
    head.weight                               lm_head.weight

`rescale_every` (HF halves the residual stream every that many layers at inference, dividing the
output / value weights to match, for fp16 range) is the same function up to the LayerNorms' eps; we
do not rescale, and export writes rescale_every = 0 so transformers computes exactly what we do.
Checkpoints hold unscaled weights (transformers rescales in memory, in eval mode).
"""
from __future__ import annotations

from ...errors import ArchDSLError
from ...graph import layers as graph_layers
from .jamba import Source

MODEL_TYPES = ("rwkv",)
KINDS = frozenset({"rwkv4", "cmix"})  # the blocks its layers hold
HEAD = ("head.weight", "rwkv.embeddings.weight")
ARCHITECTURE = "RwkvForCausalLM"

TIME_MIX = ("time_decay", "time_first", "time_mix_key", "time_mix_value", "time_mix_receptance", "key.weight",
            "value.weight", "receptance.weight", "output.weight")
CHANNEL_MIX = ("time_mix_key", "time_mix_receptance", "key.weight", "receptance.weight", "value.weight")
LN = ("weight", "bias")


def _pairs(n_layers: int):
    """(HF name, our name) of every tensor but the LM head."""
    yield "rwkv.embeddings.weight", "embeddings.weight"
    for x in LN:
        yield f"rwkv.blocks.0.pre_ln.{x}", f"embed_norm.{x}"
    for i in range(n_layers):
        p, q = f"rwkv.blocks.{i}.", f"layers.{i}."
        for x in LN:
            yield p + f"ln1.{x}", q + f"norm.{x}"
            yield p + f"ln2.{x}", q + f"ffn_norm.{x}"
        for n in TIME_MIX:
            yield p + "attention." + n, q + "mixer." + n
        for n in CHANNEL_MIX:
            yield p + "feed_forward." + n, q + "ffn." + n
    for x in LN:
        yield f"rwkv.ln_out.{x}", f"norm_f.{x}"


def to_archdsl(hf_state: dict, spec, model) -> dict:
    src = Source(hf_state, "RWKV")
    out = {}
    for theirs, ours in _pairs(len(model.layers)):
        src.put(out, ours, theirs)
    if spec.tie_embeddings:  # a head equal to the embeddings was dropped before (hf_io.tied_head)
        out["lm_head.weight"] = out["embeddings.weight"]
    else:
        src.put(out, "lm_head.weight", "head.weight")
    return src.finish(out, model)


def to_hf(state: dict, spec, hf_config: dict) -> dict:
    out = {theirs: state[ours] for theirs, ours in _pairs(len(graph_layers(spec.graph)))}
    if not spec.tie_embeddings:
        out["head.weight"] = state["lm_head.weight"]
    return out


def _refuse(what: str, why: str) -> ArchDSLError:
    return ArchDSLError(f"cannot export to Hugging Face RWKV: {what}: {why}")


def accepts(spec) -> str | None:
    """"rwkv" when the spec exports as a rwkv checkpoint (hf_config accepts it), else None."""
    try:
        hf_config(spec)
    except ArchDSLError:
        return None
    return "rwkv"


def hf_config(spec) -> dict:
    if spec.norm != "layernorm" or not spec.embed_norm:
        raise _refuse(f"norm {spec.norm!r}" + ("" if spec.embed_norm else " without embed_norm"),
                      "RWKV-4 uses LayerNorms, the first one on the embeddings (embed_norm: true)")
    if spec.norm_eps != 1e-5:  # transformers' ln_out is nn.LayerNorm(hidden_size): layer_norm_epsilon misses it
        raise _refuse(f"norm_eps {spec.norm_eps}", "transformers' RWKV ends in a LayerNorm of epsilon 1e-5, which "
                      "its config cannot change; only norm_eps 1e-5 exports exactly")
    subs = graph_layers(spec.graph)
    tm, cm = [], []
    for i, layer in enumerate(subs):
        kinds = [s.kind for s in layer]
        if sorted(kinds) != ["cmix", "rwkv4"]:
            raise _refuse(f"layer {i} ({' + '.join(kinds)})", "every RWKV-4 layer is rwkv4 + cmix")
        if any(s.group is not None for s in layer):
            raise _refuse(f"layer {i}", "shared blocks have no RWKV equivalent")
        for s in layer:
            (tm if s.kind == "rwkv4" else cm).append(s.config)
    if any(c != tm[0] for c in tm) or any(c != cm[0] for c in cm):
        raise _refuse("rwkv4 / cmix blocks", "all of them must have the same settings")
    if cm[0].version != 4:
        raise _refuse(f"cmix version {cm[0].version}", "RWKV-4's channel-mix is version 4")
    return {"model_type": "rwkv", "architectures": [ARCHITECTURE], "vocab_size": spec.vocab_size,
            "hidden_size": spec.d_model, "num_hidden_layers": len(subs), "attention_hidden_size": tm[0].adim,
            "intermediate_size": cm[0].width, "layer_norm_epsilon": spec.norm_eps,
            "tie_word_embeddings": spec.tie_embeddings, "rescale_every": 0}
