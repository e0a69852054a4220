"""Analyses from the layer graph alone: nothing is allocated.

    rep = analyze(spec, seq_len=65536, batch=1, dtype="bfloat16", ssm_state_dtype=None)
    rep.params, rep.active_params, rep.flops_per_token, rep.cache_bytes, rep.layers[i]
    reps = analyze_lengths(spec, [1024, 65536], batch=1)  # one Report a context, the graph read once

Parameters count a shared group once (its per-use adapters at every use) and tied
embeddings once. Active parameters are those one token touches (an MoE's router and top_k
experts); a shared group's are counted once as well, as what a token touches over all its
uses: a shared MoE used u times counts its router and min(experts, u·top_k) experts, an upper
bound (the router may pick other experts at each use). FLOPs are forward FLOPs per token (2
per multiply-add) averaged over a sequence of `seq_len` tokens, LM head included, in two parts:
- the weights' products (projections, convs, the top_k experts a token goes to, a shared block at
  each use): exactly what the compiled model's matrix products and convolutions compute (torch's
  FlopCounterMode, tests/test_analysis_flops.py); bias adds, norms and activations are not counted;
- the recurrences (SSM scans, WKV) in their per-token form, every real multiply and add per state
  element as the papers write them (exponentials not counted), and attention's q·kᵀ and weighted
  values over the keys a causal query sees (attn.mean_context). The parallel pass computes these
  differently: chunked scans, an FFT convolution for S4D, SDPA over the full [L, L] square on the CPU.
Cache bytes are what decoding keeps at (batch, seq_len): attention's KV grows with the context, SSM /
RWKV / conv state does not. KV, conv windows and token shifts are in `dtype`; Mamba's and Mamba-2's SSM
states in `ssm_state_dtype` (None: float32, float64 for float64), as ArchModel.set_ssm_state_dtype sets
them; the other recurrent states in float32 (float64 for float64). They are the bytes of
model.init_cache(batch, max_len=seq_len) exactly; a cache made without max_len grows its KV buffers by
doubling from 16 positions, so it may hold more.
"""
from __future__ import annotations

import numbers

from dataclasses import asdict, dataclass, field

from .blocks import norm_params
from .blocks.base import FFN, INJECT, MIXER
from .errors import ArchDSLError, did_you_mean, shown
from .graph import layers
from .units import sci

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8": 1, "float64": 8}
ALIASES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16",
           "fp8": "float8", "fp64": "float64", "double": "float64"}  # read by analyze and compile (model.DTYPES)
TORCH_FLOAT8 = ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz")  # torch's, as a cache's float8
MODEL_DTYPES = ("float32", "bfloat16", "float16", "float64")  # what a model computes in and holds SSM states in


@dataclass(frozen=True)
class LayerReport:
    """One layer's figures. `params` and `active_params` count a shared group's set at its first use only (its
    per-use parts at every use), so that the layers' figures with the embedding and the norms add up to the
    Report's. A shared group's active parameters are what one token touches over all its uses: a shared MoE used
    u times counts its router, shared expert and min(experts, u·top_k) experts, an upper bound. FLOPs and cache
    bytes count a shared block at every use."""

    index: int
    mixer: str
    ffn: str
    inject: str
    shared: str
    params: int  # parameters this layer adds (a shared group's set counted at its first use)
    active_params: int  # of those, the ones a token touches (an MoE's router and top_k experts)
    flops_per_token: int
    cache_bytes: int


@dataclass(frozen=True)
class Report:
    """A spec's figures at one (seq_len, batch, dtype): totals and `layers`. `embedding_params` is what lies outside
    the layers but the final norm(s): the vocab_size × d_model table, and where tie_embeddings is false the LM head's
    as many again (twice the table)."""

    name: str
    seq_len: int
    batch: int
    dtype: str
    params: int
    active_params: int
    embedding_params: int
    flops_per_token: int
    cache_bytes: int
    layers: list[LayerReport] = field(default_factory=list)
    ssm_state_dtype: str | None = None  # None: the default (float32, or float64 for float64)

    def to_dict(self) -> dict:
        return asdict(self)


def ssm_states_dtype(dtype: str, ssm_state_dtype: str | None = None) -> str:
    """The dtype Mamba's and Mamba-2's SSM states are counted in, by canonical names: `ssm_state_dtype` where given,
    else the default, float32 (float64 in a float64 cache), as the blocks' cache_bytes count them."""
    return ssm_state_dtype or ("float64" if dtype == "float64" else "float32")


def has_ssm_states(spec) -> bool:
    """Whether `spec` has a Mamba or Mamba-2 layer: the blocks whose SSM states ssm_state_dtype sets (float32 by
    default, float64 in a float64 cache)."""
    return any(s.config.kind in ("mamba", "mamba2") for subs in layers(spec.graph) for s in subs)


def dtype_name(dtype, what: str = "dtype") -> str:
    """'bf16', 'BF16', torch.bfloat16 → 'bfloat16'; a cache may be float8 (an estimate: no model computes in it),
    an SSM state only what set_ssm_state_dtype takes."""
    key = str(dtype).replace("torch.", "").lower()
    key = "float8" if key in TORCH_FLOAT8 and what != "ssm_state_dtype" else ALIASES.get(key, key)
    valid = MODEL_DTYPES if what == "ssm_state_dtype" else DTYPE_BYTES
    if key not in valid:
        raise ArchDSLError(f"unknown {what} {dtype!r} (one of {', '.join(valid)})",
                           hint=did_you_mean(key, valid, ALIASES))
    return key


def dtype_bytes(dtype, what: str = "dtype") -> int:
    return DTYPE_BYTES[dtype_name(dtype, what)]


def analyze(spec, seq_len: int = 2048, batch: int = 1, dtype: str = "bfloat16",
            ssm_state_dtype: str | None = None) -> Report:
    """Parameters, active parameters, FLOPs per token and cache bytes, per layer and in total: a Report.

    spec: what compile takes (a Spec, YAML file, saved-model directory or layout string); seq_len, batch: the
    context and batch the FLOPs and cache are counted at; dtype: the cache's (KV, conv windows), a name or a torch
    dtype (float8 too, as an estimate); ssm_state_dtype: the Mamba / Mamba-2 SSM states' (None: float32, float64
    for dtype float64)."""
    return analyze_lengths(spec, [seq_len], batch, dtype, ssm_state_dtype)[0]


def analyze_lengths(spec, seq_lens, batch: int = 1, dtype: str = "bfloat16",
                    ssm_state_dtype: str | None = None) -> list[Report]:
    """analyze at each context length of `seq_lens`, in one pass: what does not depend on the context
    (parameters, names, groups) is counted once, and each distinct block's FLOPs and cache once a length."""
    from .spec import MAX_PARAMS, load_spec

    spec = load_spec(spec)
    if isinstance(seq_lens, (str, bytes)) or not hasattr(seq_lens, "__iter__"):
        raise ArchDSLError(f"seq_lens must be a list of context lengths, got {shown(seq_lens)}")
    seq_lens = list(seq_lens)
    for key, value in [("batch", batch)] + [("seq_len", n) for n in seq_lens]:  # batch also with no lengths
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):  # numpy's integers too
            raise ArchDSLError(f"{key} must be an int, got {shown(value)}")
        if value <= 0:
            raise ArchDSLError(f"{key} must be positive, got {value}")
    seq_lens, batch = [int(n) for n in seq_lens], int(batch)
    dtype = dtype_name(dtype)
    ssm_state_dtype = None if ssm_state_dtype is None else dtype_name(ssm_state_dtype, "ssm_state_dtype")
    nbytes, ssm_bytes = DTYPE_BYTES[dtype], None if ssm_state_dtype is None else DTYPE_BYTES[ssm_state_dtype]
    graph_layers = layers(spec.graph)
    rows = _layer_params(spec, graph_layers)
    # Costed before the size check, as ever: of a context too large to count and an absurd size, the first is said.
    per_length = [_layer_costs(graph_layers, n, batch, nbytes, ssm_bytes) for n in seq_lens]
    d = spec.d_model
    embedding = spec.vocab_size * d * (1 if spec.tie_embeddings else 2)
    outer = embedding + norm_params(spec.norm, d) * (2 if spec.embed_norm else 1)
    total = outer + sum(row[-2] for row in rows)
    active_total = outer + sum(row[-1] for row in rows)
    if total > MAX_PARAMS:
        raise spec.error(f"absurd size: the spec has {sci(total)} parameters (over 10^13)", ("d_model",))
    head_flops = 2 * d * spec.vocab_size
    reports = []
    for seq_len, costs in zip(seq_lens, per_length):
        layers_ = [LayerReport(*row, f, c) for row, (f, c) in zip(rows, costs)]
        reports.append(Report(spec.name, seq_len, batch, dtype, total, active_total, embedding,
                              sum(f for f, _ in costs) + head_flops, sum(c for _, c in costs), layers_,
                              ssm_state_dtype))
    return reports


def _layer_params(spec, graph_layers: list[tuple]) -> list[tuple]:
    """Each layer's LayerReport fields but its FLOPs and cache. A shared group's set is counted at its first use, in
    params and in active params alike (so that the layers' figures add up to the totals), its active parameters
    those one token touches over all its uses (BlockConfig.shared_active_params: a shared MoE's router may pick
    other experts at each use); the per-use parts at every use."""
    d, norm = spec.d_model, spec.norm
    counts: dict[int, tuple[int, int, int]] = {}  # by id of a config: a 1000-layer layout has a handful
    uses: dict[str, int] = {}
    for subs in graph_layers:
        for s in subs:
            if s.group is not None:
                uses[s.group] = uses.get(s.group, 0) + 1
    seen: set[str] = set()
    rows = []
    for i, subs in enumerate(graph_layers):
        params = active = 0
        for s in subs:
            if id(s.config) not in counts:
                counts[id(s.config)] = (s.config.params(), s.config.per_use_params(), s.config.active_params())
            own, per_use, own_active = counts[id(s.config)]
            if s.group is not None:
                if s.group in seen:
                    own = own_active = 0
                else:
                    own_active = s.config.shared_active_params(uses[s.group])
                seen.add(s.group)
            pre_norm = norm_params(norm, d) if s.role in (MIXER, FFN) else 0
            params += own + per_use + pre_norm
            active += own_active + per_use + pre_norm
        name = {s.role: s.name for s in subs}
        rows.append((i, name.get(MIXER, ""), name.get(FFN, ""), name.get(INJECT, ""),
                     ",".join(sorted({s.group for s in subs if s.group})), params, active))
    return rows


def _layer_costs(graph_layers: list[tuple], seq_len: int, batch: int, nbytes: int,
                 ssm_bytes: int | None) -> list[tuple[int, int]]:
    """(FLOPs per token, cache bytes) of each layer at (batch, seq_len). Layers alike share their tuple of
    sublayers (graph.py): each kind of layer is costed once."""
    known: dict[int, tuple[int, int]] = {}
    out = []
    for subs in graph_layers:
        if id(subs) not in known:
            try:
                known[id(subs)] = (sum(s.config.flops_per_token(seq_len) for s in subs),
                                   sum(s.config.cache_bytes(batch, seq_len, nbytes, ssm_bytes) for s in subs))
            except OverflowError:  # a context or batch past what a float holds
                raise ArchDSLError(f"seq_len {seq_len} or batch {batch} is too large to count") from None
        out.append(known[id(subs)])
    return out
