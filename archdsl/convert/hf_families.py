"""The per-family translators of a Hugging Face config.json (read as a dict) into an archdsl spec dict.

    FAMILIES["zamba2"](HFConfig(config), "zamba2-2.7b")  →  {name, d_model, ..., layout, blocks}

FAMILIES maps each model_type archdsl reads (mamba, falcon_mamba, mamba2, jamba, zamba2, bamba, nemotron_h,
rwkv, rwkv6, llama) to its translator; the helpers they share (the spec dict, RoPE, conv activation, kv heads,
gated activations, the mamba2 block, the dt limit, layer type lists) come before them. HFConfig reads a field
with the HF config-class default (transformers 5.x) and checks its kind; refusal is the ArchDSLError naming
a config field whose value cannot be expressed. archdsl.convert.hf is the entry: it reads the file, picks the
family and names the spec.
"""
from __future__ import annotations

import math

from ..errors import ArchDSLError, shown, warn
from .megatron import compressed_layout

# HF's "gelu" is the exact (erf) GELU, as ours; its tanh approximations (gelu_pytorch_tanh, gelu_new) are not
ACT_GATED = {"silu": "swiglu", "swish": "swiglu", "gelu": "geglu"}


def refusal(field: str, value, why: str) -> ArchDSLError:
    """The error refusing `value` of the config field `field` (named in full, e.g. rope_parameters.rope_type)."""
    return ArchDSLError(f"unsupported value {shown(value)} of config field '{field}': {why}", file="<hf config>")


# count and size fields: given, each is >= 1 (an offset may be 0; a shared expert of width 0 is NemotronH's intermediate_size); the int
# default of a field read with one marks it, these two are read without
_SIZES, _ZERO_OK = {"head_dim", "num_key_value_heads"}, {"moe_shared_expert_intermediate_size", "num_mem_blocks"}


class HFConfig:
    """config dict with HF defaults and the names of the fields read, for error messages; `prefix` names the
    field a nested dict is (rope_parameters.)."""

    def __init__(self, config: dict, prefix: str = ""):
        self.c, self.prefix = config, prefix

    def __call__(self, key, default=None):
        """The field, or `default` when absent. A number, flag or string default fixes the field's kind; 'auto'
        stands for 'auto' or an integer (time_step_rank); fields read without a default keep any type."""
        value = self.c.get(key)
        if value is None:
            return default
        field = self.prefix + key
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        auto = default == "auto" and value != "auto"
        integer = isinstance(default, int) and not isinstance(default, bool) or key in _SIZES or auto
        if isinstance(default, bool) and not isinstance(value, bool):
            raise refusal(field, value, "expected true or false")
        if auto and not number:
            raise refusal(field, value, "expected 'auto' or an integer")
        if isinstance(default, str) and default != "auto" and not isinstance(value, str):
            raise refusal(field, value, f"expected a string, like the default {default!r}")
        if (integer or isinstance(default, float)) and not number:
            like = f", like the default {default!r}" if default is not None else ""
            raise refusal(field, value, f"expected a number{like}")
        if number and not math.isfinite(value):
            raise refusal(field, value, "expected a finite number")
        if integer and not isinstance(value, int):  # as transformers' typed configs: 2.0 is no count
            raise refusal(field, value, "expected an integer")
        if number and value < 0 and key.endswith("_offset"):
            raise refusal(field, value, "expected a layer index >= 0")
        if integer and abs(value) > 10**9:
            raise refusal(field, value, "absurd size (over 10^9)")
        if integer and value < 1 and not key.endswith("_offset") and key not in _ZERO_OK:
            raise refusal(field, value, "expected a size >= 1 (archdsl would read 0 as its own default)")
        return float(value) if isinstance(default, float) else value

    def require(self, key, allowed, default=None):
        value = self(key, default)
        if value not in allowed:
            raise refusal(key, value, f"supported: {', '.join(map(repr, allowed))}")
        return value


def _spec(c: HFConfig, name, d_model, vocab, tie, layout, blocks, *, norm="rmsnorm", eps=1e-5,
          embed_norm=False, residual_fp32=False, ffn=None) -> dict:
    out = {"name": name, "d_model": int(d_model), "vocab_size": int(vocab), "tie_embeddings": bool(tie),
           "norm": norm, "norm_eps": float(eps)}
    if embed_norm:
        out["embed_norm"] = True
    if residual_fp32:
        out["residual_fp32"] = True
    if ffn:
        out["ffn"] = ffn
    out["layout"] = layout
    out["blocks"] = {k: v for k, v in blocks.items() if v is not None}
    return out


def _ropes(c: HFConfig) -> list[HFConfig]:
    """The RoPE settings transformers uses, as a list of none or one: rope_scaling (the old name) when it is
    given and not empty, else rope_parameters (transformers 5: `rope_parameters = rope_scaling or
    rope_parameters`; the other is then ignored whole). Both are checked to be objects."""
    out = []
    for field in ("rope_scaling", "rope_parameters"):
        rp = c(field)
        if rp is not None and not isinstance(rp, dict):
            raise refusal(field, rp, 'expected an object of RoPE settings, like {"rope_type": "default"}')
        if rp:
            out.append(HFConfig(rp, f"{field}."))
    return out[:1]


def _rope(c: HFConfig) -> HFConfig:
    """The RoPE settings that give the values (rope_theta, partial_rotary_factor): those of _ropes."""
    return (_ropes(c) or [HFConfig({})])[0]


def _rope_theta(c: HFConfig, default=10000.0) -> float:
    for rp in _ropes(c):
        key = "type" if "type" in rp.c and "rope_type" not in rp.c else "rope_type"  # the old name
        if rp(key, "default") != "default":
            raise refusal(rp.prefix + key, rp(key), "only plain RoPE is supported")
    return _rope(c)("rope_theta", c("rope_theta", default))


def _even_rotary(c: HFConfig, head_dim: int, fraction: float) -> None:
    """transformers' partial RoPE (Bamba) rotates `dim = int(head_dim · partial_rotary_factor)` channels with
    inv_freq = base^(-arange(0, dim, 2) / dim): for an odd dim that is ceil(dim/2) frequencies over dim + 1
    channels; archdsl's rope_fraction rotates int(head_dim · rope_fraction) rounded down to pairs, with frequencies
    over that even width. The two agree only where the width is even."""
    width = int(head_dim * fraction)
    if width % 2:
        rp = _rope(c)
        default = "" if rp("partial_rotary_factor") is not None else "(not given: the default BambaConfig sets) "
        raise refusal((rp.prefix or "rope_parameters.") + "partial_rotary_factor", fraction,
                      f"{default}with head_dim {head_dim} the rotated width int({head_dim}·{fraction:g}) = {width} "
                      f"would be odd: transformers then rotates {width + 1} channels with frequencies "
                      f"base^(-2i/{width}), archdsl {width // 2 * 2} (whole pairs) with frequencies over that width, "
                      "another function")


def _conv_act(c: HFConfig) -> None:
    """HF's Mamba mixers apply hidden_act after their conv (and Bamba's MLP too); ours is SiLU."""
    if c("hidden_act", "silu") not in ("silu", "swish"):
        raise refusal("hidden_act", c("hidden_act"), "supported: 'silu' (the mamba conv activation)")


def _d_conv(c: HFConfig, key: str) -> int:
    """The conv kernel width of the mamba / mamba2 mixers, under the config's name for it; archdsl's causal conv
    kernels take 2..4."""
    k = c(key, 4)
    if not 2 <= k <= 4:
        raise refusal(key, k, "archdsl supports 2..4")
    return k


def _alias(c: HFConfig, key: str, other: str) -> str:
    """The field to read of a setting transformers takes under two names, `key` and `other`: `other` when the
    config gives it (an attribute_map name, or an old name __post_init__ renames: it wins over `key`), else `key`."""
    return other if c.c.get(other) is not None else key


def _kv_heads(c: HFConfig, heads: int, default: int = 8) -> int:
    """num_key_value_heads: absent, the config class's default; null, as many as the query heads (transformers)."""
    if "num_key_value_heads" in c.c and c.c["num_key_value_heads"] is None:
        return heads
    return c("num_key_value_heads", default)


def _gated_act(c: HFConfig, key: str, default: str) -> str:
    act = c(key, default)
    if act not in ACT_GATED:
        raise refusal(key, act, f"supported: {', '.join(ACT_GATED)}")
    return ACT_GATED[act]


# --- families -----------------------------------------------------------------------------

def _mamba(c: HFConfig, name: str, falcon: bool) -> dict:
    d = c("hidden_size", 768)  # FalconMambaConfig's defaults are MambaConfig's (not falcon-mamba-7b's sizes)
    _conv_act(c)
    expand = c("expand", 2)
    inner = c("intermediate_size", expand * d)
    if inner != expand * d:
        raise refusal("intermediate_size", inner, f"must be expand·hidden_size = {expand * d}")
    rank = c("time_step_rank", "auto")
    if rank == "auto" or rank == math.ceil(d / 16):
        rank = "auto"
    mamba = {"d_state": c("state_size", 16), "d_conv": _d_conv(c, "conv_kernel"), "expand": expand, "dt_rank": rank,
             "conv_bias": bool(c("use_conv_bias", True)), "bias": bool(c("use_bias", False)),
             "dt_min": float(c("time_step_min", 0.001)), "dt_max": float(c("time_step_max", 0.1))}
    if falcon:
        mamba["inner_norms"] = "unweighted"
        mamba["inner_norm_eps"] = float(c("mixer_rms_eps", 1e-6))
    return _spec(c, name, d, c("vocab_size", 50280), c("tie_word_embeddings", True),
                 f"{c('num_hidden_layers', 32)}×mamba", {"mamba": mamba},
                 eps=c("layer_norm_epsilon", 1e-5), residual_fp32=bool(c("residual_in_fp32", True)))


def _mamba2_block(c: HFConfig, d, *, d_state, d_conv, expand, heads, headdim, ngroups, chunk, conv_bias, bias,
                  field="num_heads", norm_eps=None, dt_floor=None, expand_field="expand",
                  dt_fields=("time_step_min", "time_step_max"), width_of_heads=False) -> dict:
    """The mamba2 block dict; dt_min / dt_max (the dt init range, written when not the block's defaults) are read
    from `dt_fields`, HF's time_step_min / time_step_max under the names the family reads them by.
    `width_of_heads`: the family's mixer is heads·head_dim wide whatever expand says (NemotronH's), else
    expand·hidden_size must be that width."""
    out = {"d_state": d_state, "d_conv": d_conv, "expand": expand, "heads": heads, "headdim": headdim,
           "ngroups": ngroups, "chunk_size": chunk, "conv_bias": bool(conv_bias), "bias": bool(bias)}
    if heads * headdim != expand * d:
        if not width_of_heads:
            raise refusal(field, heads, f"heads·head_dim = {heads * headdim} must equal {expand_field}·hidden_size = "
                                        f"{expand * d}")
        del out["expand"]  # the block's width is then heads·headdim
    if norm_eps is not None and float(norm_eps) != 1e-5:
        out["norm_eps"] = float(norm_eps)
    if dt_floor:
        out["dt_floor"] = float(dt_floor)
    lo, hi = (float(c(f, default)) for f, default in zip(dt_fields, (0.001, 0.1)))
    if not 0 < lo <= hi:  # transformers' dt init takes the log of both
        raise refusal(dt_fields[0] if not 0 < lo else dt_fields[1], lo if not 0 < lo else hi,
                      f"the dt init range needs 0 < {dt_fields[0]} <= {dt_fields[1]} (got {lo}, {hi})")
    if lo != 0.001:
        out["dt_min"] = lo
    if hi != 0.1:
        out["dt_max"] = hi
    return out


def _dt_limit(c: HFConfig, field: str = "time_step_limit") -> float:
    """The lower dt clamp of HF's time_step_limit (lo, hi), read from `field`; an upper bound is not supported."""
    lim = c(field, (0.0, float("inf")))
    try:  # transformers writes infinity as {"__float__": "Infinity"}
        if not isinstance(lim, (list, tuple)):
            raise TypeError
        lo, hi = (float(v["__float__"]) if isinstance(v, dict) else float(v) for v in lim)
    except (TypeError, ValueError, KeyError):
        raise refusal(field, lim, "expected [lo, hi]") from None
    if hi != float("inf") or lo < 0:
        raise refusal(field, lim, "only (lo, inf) with lo >= 0 is supported")
    return lo


def _mamba2(c: HFConfig, name: str) -> dict:
    d = c("hidden_size", 4096)
    _conv_act(c)
    if not c("rmsnorm", True):
        raise refusal("rmsnorm", False, "the gated RMSNorm is always present")
    m = _mamba2_block(c, d, d_state=c("state_size", 128), d_conv=_d_conv(c, "conv_kernel"), expand=c("expand", 2),
                      heads=c("num_heads", 128), headdim=c("head_dim", 64), ngroups=c("n_groups", 8),
                      chunk=c("chunk_size", 256), conv_bias=c("use_conv_bias", True), bias=c("use_bias", False),
                      norm_eps=c("layer_norm_epsilon", 1e-5), dt_floor=_dt_limit(c))
    return _spec(c, name, d, c("vocab_size", 32768), c("tie_word_embeddings", False),
                 f"{c('num_hidden_layers', 64)}×mamba2", {"mamba2": m}, eps=c("layer_norm_epsilon", 1e-5),
                 residual_fp32=bool(c("residual_in_fp32", True)))


def _jamba_aux_coef(c: HFConfig, n_moe: int) -> float:
    """The moe block's aux_loss_coef (a training setting) for router_aux_loss_coef (JambaConfig's 0.001 when
    absent): transformers' Jamba weighs the balancing loss averaged over its MoE layers (load_balancing_loss_func
    pools every layer's router logits), archdsl's model sums the per-layer losses (as Megatron-Core), so each
    layer gets router_aux_loss_coef / (the number of MoE layers). output_router_logits, HF's switch for computing
    that loss at all (a forward argument too), is not read: archdsl adds the loss whenever aux_loss_coef > 0."""
    coef = c("router_aux_loss_coef", 0.001)
    if coef < 0:
        raise refusal("router_aux_loss_coef", coef, "expected a number >= 0")
    return coef / n_moe


def _jamba(c: HFConfig, name: str) -> dict:
    d, L = c("hidden_size", 4096), c("num_hidden_layers", 32)
    rank = c("mamba_dt_rank", "auto")
    heads = c("num_attention_heads", 32)
    experts = c(_alias(c, "num_experts", "num_local_experts"), 16)
    act = _gated_act(c, "hidden_act", "silu")
    if act != "swiglu":  # HF uses hidden_act for the mamba conv too; ours is SiLU
        raise refusal("hidden_act", c("hidden_act"), "supported: 'silu' (it is also the mamba conv activation)")
    ap, ao = c("attn_layer_period", 8), c("attn_layer_offset", 4)
    ep, eo = c("expert_layer_period", 2), c("expert_layer_offset", 1)
    for what, (period, offset) in (("attn", (ap, ao)), ("expert", (ep, eo))):
        if offset >= period:  # JambaConfig refuses it, whatever num_experts says
            raise refusal(f"{what}_layer_offset", offset, f"must be smaller than {what}_layer_period ({period}), "
                          "as transformers requires")
    # HF's layer i has attention when i % period == offset, and may have none (offset past the last layer), which
    # the layout says by leaving the modifier out (an `every` that selects no layer is an error)
    attn = not ap > ao >= L
    moe = experts > 1 and not ep > eo >= L
    layout = f"{L}×mamba" + (f", attn every {ap} offset {ao}" if attn else "")
    if moe:
        layout += f", moe every {ep} offset {eo}"
    blocks = {
        "mamba": {"d_state": c("mamba_d_state", 16), "d_conv": _d_conv(c, "mamba_d_conv"),
                  "expand": c("mamba_expand", 2),
                  "dt_rank": "auto" if rank in ("auto", math.ceil(d / 16)) else rank, "inner_norms": "weighted",
                  "inner_norm_eps": float(c("rms_norm_eps", 1e-6)), "conv_bias": bool(c("mamba_conv_bias", True)),
                  "bias": bool(c("mamba_proj_bias", False))},
        "attn": {"heads": heads, "kv_heads": _kv_heads(c, heads), "rope": False} if attn else None,
        "mlp": {"act": act, "hidden": c("intermediate_size", 14336)},
        "moe": {"experts": experts, "top_k": c("num_experts_per_tok", 2), "hidden": c("intermediate_size", 14336),
                "act": act, "aux_loss_coef": _jamba_aux_coef(c, len(range(eo, L, ep)))} if moe else None,
    }
    if attn and c("head_dim") not in (None, d // heads):
        blocks["attn"]["head_dim"] = c("head_dim")
    return _spec(c, name, d, c("vocab_size", 65536), c("tie_word_embeddings", False), layout, blocks,
                 eps=c("rms_norm_eps", 1e-6), ffn="mlp")


def _layer_list(c: HFConfig) -> tuple[str, list[str] | None]:
    """(field, its layer types) of layers_block_type, or of layer_types (its other name in transformers), or
    (field, None) when the config has neither."""
    key = "layers_block_type" if c("layers_block_type") is not None or c("layer_types") is None else "layer_types"
    types = c(key)
    if types is not None and not (isinstance(types, list) and all(isinstance(t, str) for t in types)):
        raise refusal(key, types, "expected a list of layer type names (strings), one per layer")
    if types == []:
        raise refusal(key, types, "expected at least one layer (transformers builds no layer from an empty list)")
    return key, types


def _zamba2(c: HFConfig, name: str) -> dict:
    d = c("hidden_size", 2560)
    c("num_hidden_layers", 54)  # checked to be a number; Zamba2Config's layer list below does not read it
    if c("add_bias_linear", False):
        raise refusal("add_bias_linear", True, "biased linears in the shared block are not supported")
    if c("hidden_act", "gelu") not in ("gelu", "silu"):
        raise refusal("hidden_act", c("hidden_act"), "supported: 'gelu', 'silu'")
    # Zamba2Config's default (the 54-layer 2.7B pattern; it ignores num_hidden_layers)
    default = (["mamba"] + (["mamba"] * 5 + ["hybrid"]) * 7 + ["mamba"] * 4 + ["hybrid"] + ["mamba"] * 3
               + ["hybrid"] + ["mamba"] * 2)
    field, types = _layer_list(c)
    types = types or default
    hybrid = [i for i, t in enumerate(types) if t == "hybrid"]
    other = {t for t in types if t not in ("hybrid", "mamba", "linear_attention")}
    if other:
        raise refusal(field, sorted(other)[0], "supported: 'mamba', 'hybrid'")
    heads, n_heads = c("num_attention_heads", 32), c("n_mamba_heads", 8)
    hd = _alias(c, "head_dim", "attention_head_dim")  # transformers reads either, attention_head_dim first
    if hybrid and c(hd) is not None and c(hd) != 2 * d // heads:
        raise refusal(hd, c(hd), f"Zamba2's shared attention here has head_dim 2·hidden_size / num_attention_heads = "
                      f"{2 * d // heads}, and archdsl's zamba block no other")
    expand = c("mamba_expand", 2)
    if (expand * d) % n_heads:
        raise refusal("n_mamba_heads", n_heads, f"must divide mamba_expand·hidden_size = {expand * d}")
    rank = c("adapter_rank", 128)
    mem = c("num_mem_blocks", 1)
    if mem < 1 and hybrid:
        raise refusal("num_mem_blocks", mem, "the hybrid layers need at least one shared block")
    if mem > len(types):  # transformers builds min(num_mem_blocks, hybrid layers) blocks; more than layers is no count
        raise refusal("num_mem_blocks", mem, f"more shared blocks than the config's {len(types)} layers (Zamba2 "
                      "builds at most one per hybrid layer)")
    uses = []
    for b in range(min(mem, len(hybrid))):  # blocks past the hybrid layers are never used
        ids = hybrid[b::mem]
        if ids:
            group = "shared" if mem == 1 else f"shared=z{b}"
            uses.append(f"zamba({group}, lora={rank}) at " + " ".join(map(str, ids)))
    layout = ", ".join([f"{len(types)}×mamba2"] + uses)
    zamba = {"heads": heads, "hidden": c("intermediate_size", 4 * d), "act": c("hidden_act", "gelu"),
             "rope": bool(c("use_mem_rope", False)), "attn_lora": bool(c("use_shared_attention_adapter", False)),
             "norm_eps": float(c("rms_norm_eps", 1e-5))}
    if c("num_key_value_heads") not in (None, heads):
        zamba["kv_heads"] = c("num_key_value_heads")
    if zamba["rope"]:
        zamba["rope_theta"] = _rope_theta(c)
    blocks = {"mamba2": _mamba2_block(c, d, d_state=c("mamba_d_state", 64), d_conv=_d_conv(c, "mamba_d_conv"),
                                      expand=expand, heads=n_heads, headdim=expand * d // n_heads,
                                      ngroups=c("mamba_ngroups", 1), chunk=c("chunk_size", 256),
                                      conv_bias=True, bias=False, field="n_mamba_heads",  # HF: conv bias always
                                      dt_floor=c("time_step_min", 0.001)),  # HF: time_step_limit[0]
              "zamba": zamba}
    blocks_used = min(mem, len(hybrid))
    if not c("tie_word_embeddings", True) and len(hybrid) > blocks_used:
        warn(f"config field 'tie_word_embeddings': false unties Zamba2's shared blocks too: transformers builds a "
             f"copy of a shared block for each of the {len(hybrid)} hybrid layers, where this spec (the model the "
             f"config means) holds {blocks_used}, so its parameter count is below transformers' (a checkpoint's "
             f"copies import as one where they are equal, and are refused where they differ)")
    return _spec(c, name, d, c("vocab_size", 32000), c("tie_word_embeddings", True), layout, blocks,
                 eps=c("rms_norm_eps", 1e-5))


def _bamba(c: HFConfig, name: str) -> dict:
    d, L = c("hidden_size", 4096), c("num_hidden_layers", 32)
    heads, expand = c("mamba_n_heads", 128), c("mamba_expand", 2)
    _conv_act(c)
    headdim = c("mamba_d_head", "auto")
    if headdim == "auto":
        headdim = expand * d // heads
    attn_ids = c("attn_layer_indices") or []
    if not isinstance(attn_ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in attn_ids):
        raise refusal("attn_layer_indices", attn_ids, "expected a list of layer indices (integers)")
    # transformers asks `i in attn_layer_indices` of each layer i: a repeat counts once, an index of no layer never
    dropped = sorted({i for i in attn_ids if not 0 <= i < L})
    if dropped:
        warn(f"config field 'attn_layer_indices': {shown(dropped)} name no layer of the {L}-layer model; "
             "ignored, as transformers does")
    attn_ids = sorted({i for i in attn_ids if 0 <= i < L})
    layout = f"{L}×mamba2" + (", attn at " + " ".join(map(str, attn_ids)) if attn_ids else "")
    c("partial_rotary_factor", 0.5)  # checked, not read: BambaConfig sets the top-level one to 0.5 whatever it says
    rope_frac = _rope(c)("partial_rotary_factor", 0.5)
    if attn_ids:
        _even_rotary(c, c("head_dim") or d // c("num_attention_heads", 32), rope_frac)
    ab = bool(c("attention_bias", False))
    blocks = {
        "mamba2": _mamba2_block(c, d, d_state=c("mamba_d_state", 256), d_conv=_d_conv(c, "mamba_d_conv"),
                                expand=expand, heads=heads, headdim=headdim, ngroups=c("mamba_n_groups", 1),
                                chunk=c("mamba_chunk_size", 256), conv_bias=c("mamba_conv_bias", True),
                                bias=c("mamba_proj_bias", False), field="mamba_n_heads",
                                norm_eps=c("rms_norm_eps", 1e-5), dt_floor=_dt_limit(c)),
        "attn": {"heads": c("num_attention_heads", 32), "kv_heads": _kv_heads(c, c("num_attention_heads", 32)),
                 "rope": True, "rope_theta": _rope_theta(c), "rope_fraction": rope_frac, "bias": ab, "out_bias": ab}
        if attn_ids else None,
        "mlp": {"act": _gated_act(c, "hidden_act", "silu"), "hidden": c("intermediate_size", 14336),
                "bias": bool(c("mlp_bias", False))},
    }
    if attn_ids and c("head_dim") not in (None, d // blocks["attn"]["heads"]):  # HF reads it when given, as Jamba
        blocks["attn"]["head_dim"] = c("head_dim")
    return _spec(c, name, d, c("vocab_size", 128000), c("tie_word_embeddings", False), layout, blocks,
                 eps=c("rms_norm_eps", 1e-5), ffn="mlp")


def _nemotron_h(c: HFConfig, name: str) -> dict:
    d = c("hidden_size", 4096)
    pattern = c("hybrid_override_pattern")
    symbols = {"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe"}
    if pattern is not None and not (isinstance(pattern, str) and pattern.strip()):
        raise refusal("hybrid_override_pattern", pattern, "a string of M, *, - and E, a layer each (transformers "
                      "builds no layer from an empty one)")
    field, types = _layer_list(c)
    if pattern and types is None:  # transformers reads the pattern only where no list is given
        bad = [ch for ch in pattern if ch not in symbols]
        if bad:
            raise refusal("hybrid_override_pattern", bad[0], "valid characters: M, *, -, E")
        types = [symbols[ch] for ch in pattern]
    else:
        legacy = {"mamba": "linear_attention", "attention": "full_attention"}
        types = [legacy.get(t, t) for t in types or ["linear_attention", "moe", "full_attention", "mlp"]]
    kinds = {"linear_attention": "mamba2", "full_attention": "attn", "mlp": "mlp", "moe": "moe"}
    for t in types:
        if t not in kinds:
            raise refusal(field, t, f"supported: {', '.join(kinds)}")
    if c("moe_latent_size") and "moe" in types:
        raise refusal("moe_latent_size", c("moe_latent_size"), "latent MoE projections are not supported")
    if c("mamba_hidden_act", "silu") != "silu":
        raise refusal("mamba_hidden_act", c("mamba_hidden_act"), "supported: 'silu'")
    if "moe" in types:
        if c("topk_group", 1) < c("n_group", 1):
            raise refusal("topk_group", c("topk_group"), "group-limited routing (topk_group < n_group) is not supported")
        if not float(c("routed_scaling_factor", 1.0)) > 0:
            raise refusal("routed_scaling_factor", c("routed_scaling_factor"), "expected a number > 0")
    act = c("mlp_hidden_act", "relu2")
    if act not in ("relu2", "relu", "gelu", "silu"):
        raise refusal("mlp_hidden_act", act, "supported: relu2, relu, gelu, silu")
    heads = c("num_attention_heads", 32)
    legacy = {"conv_kernel": "mamba_d_conv", "expand": "mamba_expand", "n_groups": "mamba_n_groups",
              "chunk_size": "mamba_chunk_size", "use_conv_bias": "mamba_conv_bias",
              "time_step_limit": "mamba_dt_limit", "time_step_min": "mamba_dt_min", "time_step_max": "mamba_dt_max"}

    def old(key):  # NemotronHConfig.__post_init__ takes the old (mamba_*) name of a field over the new
        return _alias(c, key, legacy[key])

    c("attention_bias", False)  # checked, not read: transformers' NemotronH attention has no biases whatever it says
    if "moe" in types and c("mlp_bias", False):
        raise refusal("mlp_bias", True, "it gives transformers' MoE shared experts biases too, which archdsl's moe "
                      "block has not (its bias would give the routed experts biases as well)")
    blocks = {
        "mamba2": _mamba2_block(c, d, d_state=c("ssm_state_size", 128), d_conv=_d_conv(c, old("conv_kernel")),
                                expand=c(old("expand"), 2), heads=c("mamba_num_heads", 128),
                                headdim=c("mamba_head_dim", 64), ngroups=c(old("n_groups"), 8),
                                chunk=c(old("chunk_size"), 128), conv_bias=c(old("use_conv_bias"), True),
                                bias=c("use_bias", False), field="mamba_num_heads", expand_field=old("expand"),
                                norm_eps=c("layer_norm_epsilon", 1e-5), dt_floor=_dt_limit(c, old("time_step_limit")),
                                dt_fields=(old("time_step_min"), old("time_step_max")), width_of_heads=True),
        "attn": {"heads": heads, "kv_heads": _kv_heads(c, heads), "head_dim": c("head_dim", 128),  # not d / heads
                 "rope": False},
        "mlp": {"act": act, "hidden": c("intermediate_size", 21504), "bias": bool(c("mlp_bias", False))},
        "moe": {"experts": c(_alias(c, "n_routed_experts", "num_local_experts"), 8),
                "top_k": c("num_experts_per_tok", 2),
                "hidden": c("moe_intermediate_size", 7688), "act": act, "router": "sigmoid", "score_bias": True,
                "aux_loss_coef": 0.0,  # transformers' NemotronH adds no balancing loss (a training setting)
                # NemotronHMLP(intermediate_size=...) takes `that or intermediate_size`: 0 is intermediate_size
                "shared_hidden": c("moe_shared_expert_intermediate_size", 7688) or c("intermediate_size", 21504),
                **({} if c("norm_topk_prob", True) else {"norm_topk": False}),
                **({"routed_scale": float(c("routed_scaling_factor", 1.0))}
                   if float(c("routed_scaling_factor", 1.0)) != 1.0 else {})},
    }
    used = {kinds[t] for t in types}
    blocks = {k: v for k, v in blocks.items() if k in used}
    layout = ", ".join(compressed_layout([kinds[t] for t in types]))
    # transformers' NemotronH has no tied-weights keys: its lm_head is its own even with tie_word_embeddings
    return _spec(c, name, d, c("vocab_size", 131072), False, layout, blocks, eps=c("layer_norm_epsilon", 1e-5))


def _rwkv_eps(c: HFConfig) -> float:
    """layer_norm_epsilon of an RWKV config: transformers' RWKV models (4, and 6 on the hub) take it in every
    LayerNorm but the last (ln_out, torch's default 1e-5); with one norm_eps here, a config that sets another is
    refused rather than read as a different function."""
    eps = c("layer_norm_epsilon", 1e-5)
    if eps != 1e-5:
        raise refusal("layer_norm_epsilon", eps, "transformers' RWKV ends in a LayerNorm of epsilon 1e-5 whatever "
                      "this says, and archdsl's model has one norm_eps: only 1e-5 converts exactly")
    return eps


def _rwkv(c: HFConfig, name: str) -> dict:
    d = c("hidden_size", 4096)
    att = c("attention_hidden_size", d)
    blocks = {"rwkv4": {"attn_dim": att} if att != d else None,
              "cmix": {"version": 4, "hidden": c("intermediate_size", 4 * d)}}
    return _spec(c, name, d, c("vocab_size", 50277), c("tie_word_embeddings", False),
                 f"{c('num_hidden_layers', 32)}×rwkv4", blocks, norm="layernorm",
                 eps=_rwkv_eps(c), embed_norm=True, ffn="cmix")


def _rwkv6(c: HFConfig, name: str) -> dict:
    d = c("hidden_size", 2048)
    att = c("attention_hidden_size", d)
    big = d == 4096  # the HF-hub Rwkv6 code widens its LoRAs at 4096 (7B)
    blocks = {"rwkv6": {"head_size": c("head_size", 64), "attn_dim": att if att != d else None,
                        "mix_lora": 64 if big else 32, "decay_lora": 128 if big else 64,
                        "head_size_divisor": c("head_size_divisor", 8)},
              "cmix": {"version": 6, "hidden": c("intermediate_size", int(d * 3.5) // 32 * 32)}}
    blocks["rwkv6"] = {k: v for k, v in blocks["rwkv6"].items() if v is not None}
    return _spec(c, name, d, c("vocab_size", 65536), c("tie_word_embeddings", False),
                 f"{c('num_hidden_layers', 24)}×rwkv6", blocks, norm="layernorm",
                 eps=_rwkv_eps(c), embed_norm=True, ffn="cmix")


def _llama(c: HFConfig, name: str) -> dict:
    d, heads = c("hidden_size", 4096), c("num_attention_heads", 32)
    ab = bool(c("attention_bias", False))
    attn = {"heads": heads, "kv_heads": c("num_key_value_heads", heads), "rope": True,
            "rope_theta": _rope_theta(c), "bias": ab, "out_bias": ab}
    if c("head_dim") not in (None, d // heads):
        attn["head_dim"] = c("head_dim")
    blocks = {"attn": attn, "mlp": {"act": _gated_act(c, "hidden_act", "silu"),
                                    "hidden": c("intermediate_size", 11008), "bias": bool(c("mlp_bias", False))}}
    return _spec(c, name, d, c("vocab_size", 32000), c("tie_word_embeddings", False),
                 f"{c('num_hidden_layers', 32)}×attn", blocks, eps=c("rms_norm_eps", 1e-6), ffn="mlp")


FAMILIES = {
    "mamba": lambda c, n: _mamba(c, n, falcon=False),
    "falcon_mamba": lambda c, n: _mamba(c, n, falcon=True),
    "mamba2": _mamba2,
    "jamba": _jamba,
    "zamba2": _zamba2,
    "bamba": _bamba,
    "nemotron_h": _nemotron_h,
    "rwkv": _rwkv,
    "rwkv6": _rwkv6,
    "llama": _llama,
}
