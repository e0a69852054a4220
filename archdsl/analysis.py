"""Analyses from the layer graph alone: nothing is allocated.

    rep = analyze(spec, seq_len=65536, batch=1, dtype="bfloat16", ssm_state_dtype=None)
    rep.params, rep.active_params, rep.flops_per_token, rep.cache_bytes, rep.layers[i]

Parameters count a shared group once (its per-use adapters at every use) and tied
embeddings once. FLOPs are forward FLOPs per token (2 per multiply-add) averaged over a
sequence of `seq_len` tokens, LM head included, in two parts:
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

from dataclasses import asdict, dataclass, field

from .blocks import norm_params
from .blocks.base import FFN, INJECT, MIXER
from .errors import ArchDSLError, did_you_mean
from .graph import layers, role_of

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8": 1, "float64": 8}
ALIASES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16",
           "fp8": "float8", "fp64": "float64", "double": "float64"}  # read by analyze and compile (model.DTYPES)
MODEL_DTYPES = ("float32", "bfloat16", "float16", "float64")  # what a model computes in and holds SSM states in


@dataclass(frozen=True)
class LayerReport:
    index: int
    mixer: str
    ffn: str
    inject: str
    shared: str
    params: int  # parameters this layer adds (a shared group's set counted at its first use)
    active_params: int
    flops_per_token: int
    cache_bytes: int


@dataclass(frozen=True)
class Report:
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


def dtype_name(dtype, what: str = "dtype") -> str:
    """'bf16', 'BF16', torch.bfloat16 → 'bfloat16'; a cache may be float8 (an estimate: no model computes in it),
    an SSM state only what set_ssm_state_dtype takes."""
    key = str(dtype).replace("torch.", "").lower()
    key = ALIASES.get(key, key)
    valid = MODEL_DTYPES if what == "ssm_state_dtype" else DTYPE_BYTES
    if key not in valid:
        raise ArchDSLError(f"unknown {what} {dtype!r} (one of {', '.join(valid)})",
                           hint=did_you_mean(key, [*valid, *(a for a, k in ALIASES.items() if k in valid)]))
    return key


def dtype_bytes(dtype, what: str = "dtype") -> int:
    return DTYPE_BYTES[dtype_name(dtype, what)]


def analyze(spec, seq_len: int = 2048, batch: int = 1, dtype: str = "bfloat16",
            ssm_state_dtype: str | None = None) -> Report:
    """Parameters, active parameters, FLOPs per token and cache bytes, per layer and in total."""
    from .spec import MAX_PARAMS, load_spec

    spec = load_spec(spec)
    for key, value in (("seq_len", seq_len), ("batch", batch)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ArchDSLError(f"{key} must be an int, got {value!r}")
    if seq_len <= 0 or batch <= 0:
        raise ArchDSLError(f"seq_len and batch must be positive, got seq_len={seq_len}, batch={batch}")
    dtype = dtype_name(dtype)
    ssm_state_dtype = None if ssm_state_dtype is None else dtype_name(ssm_state_dtype, "ssm_state_dtype")
    nbytes, ssm_bytes = DTYPE_BYTES[dtype], None if ssm_state_dtype is None else DTYPE_BYTES[ssm_state_dtype]
    d, norm = spec.d_model, spec.norm
    seen: set[str] = set()
    rows = []
    for i, subs in enumerate(layers(spec.graph)):
        params = active = flops = cache = 0
        for s in subs:
            cfg = s.config
            own = cfg.params() if s.group is None or s.group not in seen else 0
            if s.group is not None:
                seen.add(s.group)
            pre_norm = norm_params(norm, d) if s.role in (MIXER, FFN) else 0
            params += own + cfg.per_use_params() + pre_norm
            active += cfg.active_params() + cfg.per_use_params() + pre_norm
            try:
                flops += cfg.flops_per_token(seq_len)
                cache += cfg.cache_bytes(batch, seq_len, nbytes, ssm_bytes)
            except OverflowError:  # a context or batch past what a float holds
                raise ArchDSLError(f"seq_len {seq_len} or batch {batch} is too large to count") from None
        name = lambda role: (lambda s: s.name if s else "")(role_of(subs, role))  # noqa: E731
        rows.append(LayerReport(i, name(MIXER), name(FFN), name(INJECT),
                                ",".join(sorted({s.group for s in subs if s.group})),
                                params, active, flops, cache))
    embedding = spec.vocab_size * d * (1 if spec.tie_embeddings else 2)
    outer = embedding + norm_params(norm, d) * (2 if spec.embed_norm else 1)
    total = outer + sum(r.params for r in rows)
    # The active count adds a shared block at each use: compute reads it every time.
    active_total = outer + sum(r.active_params for r in rows)
    active_total -= sum(_shared_surplus(spec))
    if total > MAX_PARAMS:
        raise spec.error(f"absurd size: the spec has {total:.3e} parameters (over 10^13)", ("d_model",))
    head_flops = 2 * d * spec.vocab_size
    return Report(spec.name, seq_len, batch, dtype, total, active_total, embedding,
                  sum(r.flops_per_token for r in rows) + head_flops, sum(r.cache_bytes for r in rows), rows,
                  ssm_state_dtype)


def _shared_surplus(spec):
    """Active parameters count a shared group's set once too: it is one set of weights."""
    counted: dict[str, int] = {}
    for subs in layers(spec.graph):
        for s in subs:
            if s.group is not None:
                counted[s.group] = counted.get(s.group, -1) + 1
                if counted[s.group] > 0:
                    yield s.config.active_params()
