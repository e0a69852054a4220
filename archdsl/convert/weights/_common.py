"""Pieces the family modules share: per-layer kinds, renaming with checks, config lookup.

Most families are a renaming: `pairs(spec)` lists (HF name, archdsl name) for every tensor, and
`rename` / `unrename` turn one state dict into the other, naming the HF tensor in every error.
"""
from __future__ import annotations


from ...blocks.base import FFN, INJECT, MIXER
from ...errors import ArchDSLError, did_you_mean
from ...graph import layers as graph_layers

PARAMS = {  # a block kind → its tensors (archdsl names = HF names inside the block)
    "mamba": ("in_proj.weight", "in_proj.bias", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
              "dt_proj.bias", "A_log", "D", "out_proj.weight", "out_proj.bias", "dt_layernorm", "b_layernorm",
              "c_layernorm"),
    "mamba2": ("in_proj.weight", "in_proj.bias", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D",
               "norm.weight", "out_proj.weight", "out_proj.bias"),
    "attn": ("q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias",
             "o_proj.weight", "o_proj.bias"),
    "mlp": ("gate_proj.weight", "gate_proj.bias", "up_proj.weight", "up_proj.bias", "down_proj.weight",
            "down_proj.bias"),
}


def layer_kinds(spec) -> list[dict[str, object]]:
    """For each layer, role → its Sublayer (kind, config, group)."""
    return [{s.role: s for s in subs} for subs in graph_layers(spec.graph)]


def block_params(kind: str, model_names: set[str], prefix: str) -> list[str]:
    """The tensors of one block that the built model has (bias etc. only when configured)."""
    return [n for n in PARAMS[kind] if f"{prefix}.{n}" in model_names]


def first_config(spec, kind: str):
    for layer in layer_kinds(spec):
        for s in layer.values():
            if s.kind == kind:
                return s.config
    return None


def whole_expand(m, family: str, field: str) -> int:
    """The expand of mamba2 config `m` for a family whose transformers mixer takes its inner width as
    `field`·hidden_size (Mamba-2, Bamba, Zamba2): ArchDSLError where d_model does not divide E = heads·headdim."""
    if isinstance(m.expansion, int):
        return m.expansion
    raise ArchDSLError(f"cannot export to Hugging Face {family}: its mamba mixer's inner width is "
                       f"{field}·hidden_size, and the mamba2 blocks' heads·headdim = {m.inner} is not a whole multiple "
                       f"of d_model {m.d_model}",
                       hint="of the families archdsl exports, NemotronH alone takes an inner width of "
                            "mamba_num_heads·mamba_head_dim")


def one_config(spec, kind: str, family: str):
    """The one config of every `kind` block in the spec (None when there is none), for a family whose
    config.json has one set of fields for all of them: a layer whose `kind` differs from the first's is an
    ArchDSLError naming both layers and the first setting that differs (exported as the first's, transformers
    would build a model that computes something else)."""
    first = None
    for i, layer in enumerate(layer_kinds(spec)):
        for s in layer.values():
            if s.kind != kind:
                continue
            if first is None:
                first, at = s.config, i
                continue
            mine, theirs = s.config.resolved(), first.resolved()  # a default written out is the default
            if mine != theirs:
                name = next((k for k in theirs if theirs[k] != mine[k]), None)
                what = (f"{name} {mine[name]!r}, layer {at}'s is {theirs[name]!r}"
                        if name else f"other settings than layer {at}'s")
                raise ArchDSLError(f"cannot export to Hugging Face {family}: layer {i}'s {kind} has {what}: its "
                                   f"config.json has one {kind} setting for every layer",
                                   hint=f"give every {kind} block the same settings")
    return first


def attn_bias_mismatch(a, family: str) -> str | None:
    """Why an attn config `a` cannot be stated by a family whose config.json has one attention_bias flag for the
    q/k/v and o projections alike (Llama, Bamba), or None when it can: bias (q/k/v) and out_bias (o) differ."""
    if a.bias == a.out_bias:
        return None
    return (f"attn bias {str(a.bias).lower()} with out_bias {str(a.out_bias).lower()} (q/k/v projections "
            f"{'with' if a.bias else 'without'} biases, the output projection {'with' if a.out_bias else 'without'}"
            f"): transformers' {family} has one flag, attention_bias, for all four projections")


def kinds_used(spec) -> set[str]:
    return {s.kind for layer in layer_kinds(spec) for s in layer.values()}


def backbone_pairs(spec, names, kind: str, family: str) -> list[tuple[str, str]]:
    """The (HF, ours) names of a `backbone.*` checkpoint whose every layer is one `kind` mixer
    (Mamba, Falcon Mamba, Mamba-2)."""
    out = [("backbone.embeddings.weight", "embeddings.weight")]
    for i, layer in enumerate(layer_kinds(spec)):
        if set(layer) != {MIXER} or layer[MIXER].kind != kind:
            raise ArchDSLError(f"layer {i}: a {family} checkpoint has a {kind} mixer alone in every layer")
        out.append((f"backbone.layers.{i}.norm.weight", f"layers.{i}.norm.weight"))
        out += [(f"backbone.layers.{i}.mixer.{n}", f"layers.{i}.mixer.{n}")
                for n in block_params(kind, names, f"layers.{i}.mixer")]
    out.append(("backbone.norm_f.weight", "norm_f.weight"))
    if not spec.tie_embeddings:
        out.append(("lm_head.weight", "lm_head.weight"))
    return out


def rename(hf_state: dict, pairs: list[tuple[str, str]], model, optional: tuple[str, ...] = ()) -> dict:
    """HF state → archdsl state by `pairs` [(hf, ours)], checking names and shapes against `model`.

    Missing HF tensors, HF tensors no pair names and shape mismatches raise ArchDSLError naming the
    HF tensor (a tied head equal to the embeddings was dropped before: hf_io.tied_head).
    `optional` HF names (buffers such as a zero routing bias) may be absent.
    """
    ours = {n: tuple(t.shape) for n, t in model.state_dict(keep_vars=True).items()}
    want = dict(pairs)
    out = {}
    for name, t in hf_state.items():
        if name not in want:
            raise ArchDSLError(f"unexpected tensor {name!r} in the checkpoint: the model of its config has no such "
                               "tensor", hint=did_you_mean(name, want))
        target = want[name]
        if target is None:  # read by the family itself (e.g. a checked buffer)
            continue
        if tuple(t.shape) != ours[target]:
            raise ArchDSLError(f"tensor {name!r} has shape {list(t.shape)}, the config implies {list(ours[target])}")
        out[target] = t
    missing = [h for h in want if h not in hf_state and h not in optional]
    if missing:
        hint = f"and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ArchDSLError(f"missing tensor {missing[0]!r} in the checkpoint", hint=hint)
    return out


def unrename(state: dict, pairs: list[tuple[str, str]], tied: bool) -> dict:
    """archdsl state → HF state by `pairs` (tensors made contiguous, tied lm_head left out)."""
    out = {}
    for hf, ours in pairs:
        if ours is None:
            continue
        if tied and hf.endswith("lm_head.weight"):
            continue
        out[hf] = state[ours].detach().contiguous()
    return out


def check_zero(hf_state: dict, name: str, why: str) -> None:
    t = hf_state.get(name)
    if t is not None and bool(t.ne(0).any()):
        raise ArchDSLError(f"tensor {name!r} is not zero: {why}")


__all__ = ["FFN", "INJECT", "MIXER", "PARAMS", "layer_kinds", "block_params", "first_config", "one_config",
           "kinds_used", "rename", "unrename", "check_zero"]
