"""Jamba (transformers' JambaForCausalLM) ⇄ archdsl: a mamba / attn mixer and an mlp / moe FFN per layer.

    model.embed_tokens.weight                       embeddings.weight
    model.layers.{i}.input_layernorm.weight         layers.{i}.norm.weight
    model.layers.{i}.mamba.{in_proj,conv1d,x_proj,dt_proj,out_proj}.*, A_log, D
                                                    layers.{i}.mixer.<same>
    model.layers.{i}.mamba.{dt,b,c}_layernorm.weight layers.{i}.mixer.{dt,b,c}_layernorm
    model.layers.{i}.self_attn.{q,k,v,o}_proj.weight layers.{i}.mixer.{q,k,v,o}_proj.weight
    model.layers.{i}.pre_ff_layernorm.weight        layers.{i}.ffn_norm.weight
    model.layers.{i}.feed_forward.{gate,up,down}_proj.weight   layers.{i}.ffn.<same>      (dense layers)
    model.layers.{i}.feed_forward.router.weight     layers.{i}.ffn.router.weight           (MoE layers)
    model.layers.{i}.feed_forward.experts.{e}.{gate,up}_proj.weight
                                                    layers.{i}.ffn.experts.gate_up_proj[e] = [gate; up]
    model.layers.{i}.feed_forward.experts.{e}.down_proj.weight  layers.{i}.ffn.experts.down_proj[e]
    model.final_layernorm.weight                    norm_f.weight
    lm_head.weight                                  lm_head.weight

Checkpoints hold the experts one by one (the hub layout, and what transformers' save_pretrained
writes); transformers 5's fused `experts.gate_up_proj` / `experts.down_proj` are read as well.
Export writes the per-expert layout.
"""
from __future__ import annotations

import math

import torch

from ...errors import ArchDSLError
from ...graph import layers as graph_layers

MODEL_TYPES = ("jamba",)
KINDS = frozenset({"mamba", "attn", "mlp", "moe"})  # the blocks its layers hold
HEAD = ("lm_head.weight", "model.embed_tokens.weight")
ARCHITECTURE = "JambaForCausalLM"

MAMBA = ("in_proj.weight", "in_proj.bias", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
         "dt_proj.bias", "A_log", "D", "out_proj.weight", "out_proj.bias")
ATTN = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight")
MLP = ("gate_proj.weight", "up_proj.weight", "down_proj.weight")


class Source:
    """The HF tensors, taken by name; what is missing or left over, and shapes the model does not
    have, are ArchDSLErrors naming the HF tensor."""

    def __init__(self, state: dict, family: str):
        self.state, self.family, self.used = state, family, set()
        self.origin: dict[str, str] = {}  # our name → the HF tensor(s) it was made of

    def __contains__(self, name):
        return name in self.state

    def take(self, name: str) -> torch.Tensor:
        if name not in self.state:
            raise ArchDSLError(f"{self.family} checkpoint: missing tensor {name!r}")
        self.used.add(name)
        return self.state[name]

    def finish(self, out: dict, model) -> dict:
        """Check `out` (our name → tensor) against the model's shapes and that every HF tensor was used."""
        extra = sorted(set(self.state) - self.used)
        if extra:
            raise ArchDSLError(f"{self.family} checkpoint: unexpected tensor {extra[0]!r}"
                               + (f" and {len(extra) - 1} more" if len(extra) > 1 else "")
                               + " (not part of the model its config.json describes)")
        shapes = {n: tuple(t.shape) for n, t in model.state_dict(keep_vars=True).items()}
        for ours, t in out.items():
            if ours in shapes and tuple(t.shape) != shapes[ours]:
                raise ArchDSLError(f"{self.family} checkpoint: tensor {self.origin.get(ours, ours)!r} has shape "
                                   f"{list(t.shape)}, the config implies {list(shapes[ours])}")
        return out

    def put(self, out: dict, ours: str, name: str) -> None:
        """out[ours] = the HF tensor `name`."""
        out[ours] = self.take(name)
        self.origin[ours] = name


def _mixer_keys(layer) -> tuple[str, tuple[str, ...]]:
    """(HF sub-module name, its tensor names) for our layer's mixer."""
    kind = layer.mixer.cfg.kind
    if kind == "attn":
        return "self_attn", ATTN
    names = [n for n in MAMBA if _has(layer.mixer, n)]
    return "mamba", tuple(names)


def _has(module, dotted: str) -> bool:
    *path, leaf = dotted.split(".")
    for p in path:
        module = getattr(module, p)
    return getattr(module, leaf, None) is not None


def to_archdsl(hf_state: dict, spec, model) -> dict:
    src = Source(hf_state, "Jamba")
    out = {}
    src.put(out, "embeddings.weight", "model.embed_tokens.weight")
    for i, layer in enumerate(model.layers):
        p, q = f"model.layers.{i}.", f"layers.{i}."
        src.put(out, q + "norm.weight", p + "input_layernorm.weight")
        src.put(out, q + "ffn_norm.weight", p + "pre_ff_layernorm.weight")
        hf_mixer, names = _mixer_keys(layer)
        for n in names:
            src.put(out, q + "mixer." + n, p + f"{hf_mixer}.{n}")
        if hf_mixer == "mamba":
            for n in ("dt", "b", "c"):
                src.put(out, q + f"mixer.{n}_layernorm", p + f"mamba.{n}_layernorm.weight")
        f = p + "feed_forward."
        if layer.ffn.cfg.kind == "mlp":
            for n in MLP:
                src.put(out, q + "ffn." + n, f + n)
        else:
            src.put(out, q + "ffn.router.weight", f + "router.weight")
            if f + "experts.gate_up_proj" in src:  # transformers 5's fused layout
                src.put(out, q + "ffn.experts.gate_up_proj", f + "experts.gate_up_proj")
                src.put(out, q + "ffn.experts.down_proj", f + "experts.down_proj")
            else:
                E = layer.ffn.cfg.experts
                e = f + "experts.{}."
                out[q + "ffn.experts.gate_up_proj"] = torch.stack(
                    [torch.cat([src.take(e.format(j) + "gate_proj.weight"), src.take(e.format(j) + "up_proj.weight")])
                     for j in range(E)])
                out[q + "ffn.experts.down_proj"] = torch.stack([src.take(e.format(j) + "down_proj.weight")
                                                                for j in range(E)])
                src.origin[q + "ffn.experts.gate_up_proj"] = e.format("*") + "{gate,up}_proj.weight (stacked)"
                src.origin[q + "ffn.experts.down_proj"] = e.format("*") + "down_proj.weight (stacked)"
    src.put(out, "norm_f.weight", "model.final_layernorm.weight")
    if spec.tie_embeddings:  # a head equal to the embeddings was dropped before (hf_io.tied_head)
        out["lm_head.weight"] = out["embeddings.weight"]
    else:
        src.put(out, "lm_head.weight", "lm_head.weight")
    return src.finish(out, model)


def to_hf(state: dict, spec, hf_config: dict) -> dict:
    out = {"model.embed_tokens.weight": state["embeddings.weight"]}
    for i, subs in enumerate(graph_layers(spec.graph)):
        mixer = next(s for s in subs if s.kind in ("mamba", "attn"))
        ffn = next(s for s in subs if s.kind in ("mlp", "moe"))
        p, q = f"model.layers.{i}.", f"layers.{i}."
        out[p + "input_layernorm.weight"] = state[q + "norm.weight"]
        out[p + "pre_ff_layernorm.weight"] = state[q + "ffn_norm.weight"]
        if mixer.kind == "attn":
            for n in ATTN:
                out[p + "self_attn." + n] = state[q + "mixer." + n]
        else:
            for n in MAMBA:
                if q + "mixer." + n in state:
                    out[p + "mamba." + n] = state[q + "mixer." + n]
            for n in ("dt", "b", "c"):
                out[p + f"mamba.{n}_layernorm.weight"] = state[q + f"mixer.{n}_layernorm"]
        f = p + "feed_forward."
        if ffn.kind == "mlp":
            for n in MLP:
                out[f + n] = state[q + "ffn." + n]
        else:
            out[f + "router.weight"] = state[q + "ffn.router.weight"]
            gate_up, down = state[q + "ffn.experts.gate_up_proj"], state[q + "ffn.experts.down_proj"]
            for j in range(gate_up.shape[0]):
                g, u = gate_up[j].chunk(2, dim=0)
                out[f + f"experts.{j}.gate_proj.weight"] = g.contiguous()
                out[f + f"experts.{j}.up_proj.weight"] = u.contiguous()
                out[f + f"experts.{j}.down_proj.weight"] = down[j].contiguous()
    out["model.final_layernorm.weight"] = state["norm_f.weight"]
    if not spec.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    return out


# --- config.json ---------------------------------------------------------------------------

def _refuse(what: str, why: str, hint: str = "") -> ArchDSLError:
    return ArchDSLError(f"cannot export to Hugging Face Jamba: {what}: {why}", hint=hint)


def _periodic(ids: list[int], n: int, what: str) -> tuple[int, int]:
    """(period, offset) with {i < n : i % period == offset} == ids (Jamba's only layout rule)."""
    want = set(ids)
    if not want:
        return n + 1, n  # no layer matches
    for period in range(1, n + 1):
        offset = ids[0] % period
        if {i for i in range(n) if i % period == offset} == want:
            return period, offset
    raise _refuse(f"{what} at layers {ids}", "Jamba places them every `period` layers from `offset`")


def router_aux_loss_coef(aux_loss_coef: float, n_moe: int) -> float:
    """HF's router_aux_loss_coef for the moe block's aux_loss_coef: archdsl sums the balancing loss over the
    `n_moe` MoE layers, transformers' Jamba averages it, so HF's coefficient is n_moe times ours (import divides,
    hf_families._jamba_aux_coef). The shortest decimal that imports back to exactly `aux_loss_coef`, so that
    0.01 / 3 comes back as 0.01 and not 0.009999999999999998."""
    exact = aux_loss_coef * n_moe
    for digits in range(1, 18):
        short = float(f"{exact:.{digits}g}")
        if short / n_moe == aux_loss_coef:
            return short
    return exact


def _one(configs: list, what: str):
    first = configs[0]
    for c in configs[1:]:
        if c != first:
            raise _refuse(what, "all of them must have the same settings (one config.json field set)")
    return first


def accepts(spec) -> str | None:
    """"jamba" when the spec exports as a jamba checkpoint (hf_config accepts it), else None."""
    try:
        hf_config(spec)
    except ArchDSLError:
        return None
    return "jamba"


def hf_config(spec) -> dict:
    subs = graph_layers(spec.graph)
    n = len(subs)
    if spec.norm != "rmsnorm" or spec.embed_norm:
        raise _refuse(f"norm {spec.norm!r}" + (" with embed_norm" if spec.embed_norm else ""), "Jamba uses RMSNorm")
    mamba, attn, mlp, moe = [], [], [], []
    attn_ids, moe_ids = [], []
    for i, layer in enumerate(subs):
        kinds = sorted(s.kind for s in layer)
        mixers = [s for s in layer if s.kind in ("mamba", "attn")]
        ffns = [s for s in layer if s.kind in ("mlp", "moe")]
        if len(mixers) != 1 or len(ffns) != 1 or len(layer) != 2:
            raise _refuse(f"layer {i} ({' + '.join(kinds)})", "every Jamba layer is a mamba or attn mixer "
                          "followed by an mlp or moe FFN")
        if any(s.group is not None for s in layer):
            raise _refuse(f"layer {i}", "shared blocks have no Jamba equivalent")
        m, f = mixers[0], ffns[0]
        (attn if m.kind == "attn" else mamba).append(m.config)
        (moe if f.kind == "moe" else mlp).append(f.config)
        if m.kind == "attn":
            attn_ids.append(i)
        if f.kind == "moe":
            moe_ids.append(i)
    d = spec.d_model
    ap, ao = _periodic(attn_ids, n, "attention layers")
    ep, eo = _periodic(moe_ids, n, "MoE layers")
    cfg = {"model_type": "jamba", "architectures": [ARCHITECTURE], "vocab_size": spec.vocab_size, "hidden_size": d,
           "num_hidden_layers": n, "rms_norm_eps": spec.norm_eps, "tie_word_embeddings": spec.tie_embeddings,
           "hidden_act": "silu", "attn_layer_period": ap, "attn_layer_offset": ao,
           "expert_layer_period": ep, "expert_layer_offset": eo}
    hidden = None
    if mlp:
        c = _one(mlp, "mlp blocks")
        if c.act != "swiglu" or c.bias:
            raise _refuse(f"mlp act {c.act!r}" + (" with bias" if c.bias else ""),
                          "Jamba's MLP is SwiGLU without biases (its hidden_act also drives the mamba conv)")
        hidden = c.width
    if moe:
        c = _one(moe, "moe blocks")
        if c.act != "swiglu" or c.bias or c.router != "softmax" or c.router_bias or c.shared_hidden \
                or c.renormalises or c.routed_scale != 1.0:
            raise _refuse("moe", "Jamba's experts are SwiGLU without biases, softmax-routed (top-k weights neither "
                          "renormalised nor scaled), no shared expert")
        if hidden is not None and c.width != hidden:
            raise _refuse(f"moe hidden {c.width} vs mlp hidden {hidden}", "Jamba has one intermediate_size")
        if c.experts == 1:  # num_experts 1 is transformers' switch for dense MLPs
            raise _refuse("moe of one expert", "transformers' Jamba builds a dense MLP where num_experts is 1, "
                          "and would not read the expert's weights", hint="write it as an mlp of the same hidden "
                          "width: the one expert's weight is always 1, so it is the same function")
        hidden = c.width
        cfg.update(num_experts=c.experts, num_experts_per_tok=c.top_k,
                   router_aux_loss_coef=router_aux_loss_coef(c.aux_loss_coef, len(moe_ids)),
                   output_router_logits=c.aux_loss_coef > 0)
    else:
        cfg.update(num_experts=1, num_experts_per_tok=1)
    cfg["intermediate_size"] = hidden
    if mamba:
        c = _one(mamba, "mamba blocks")
        if c.inner_norms != "weighted":
            raise _refuse(f"mamba inner_norms {c.inner_norms!r}", "Jamba's mamba has weighted dt/B/C RMSNorms",
                          hint="give the mamba block inner_norms: weighted")
        if not math.isclose(c.inner_norm_eps, spec.norm_eps):
            raise _refuse(f"mamba inner_norm_eps {c.inner_norm_eps} differs from the model's norm_eps "
                          f"{spec.norm_eps}", "Jamba has one epsilon, rms_norm_eps, for its layer norms and its "
                          f"mamba's dt/B/C norms alike: transformers would use {spec.norm_eps} in both",
                          hint=f"give the spec norm_eps: {c.inner_norm_eps} or the mamba block inner_norm_eps: "
                               f"{spec.norm_eps} (the same value in both; Jamba's default is 1e-6 for both)")
        cfg.update(mamba_d_state=c.d_state, mamba_d_conv=c.d_conv, mamba_expand=c.expand, mamba_dt_rank=c.rank,
                   mamba_conv_bias=c.conv_bias, mamba_proj_bias=c.bias)
    if attn:
        c = _one(attn, "attn blocks")
        if c.rope or c.window is not None or c.bias or c.out_bias:
            raise _refuse("attn", "Jamba's attention has no RoPE, no window and no biases")
        cfg.update(num_attention_heads=c.heads, num_key_value_heads=c.kv)
        if c.hdim != d // c.heads:
            cfg["head_dim"] = c.hdim
    else:
        cfg.update(num_attention_heads=1, num_key_value_heads=1)
    return cfg
