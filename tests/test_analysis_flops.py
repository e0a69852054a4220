"""The analyzer's FLOPs per token and cache bytes against the compiled model (float32, on the CPU).

FLOPs: torch's FlopCounterMode counts the matrix products, convolutions and attention of a forward pass (2 per
multiply-add), not elementwise work. Our scan and WKV kernels are counted apart (their chunked torch forms use
matrix products whose count depends on the chunk), so the count of the rest is the GEMM part of the analyzer's
figure, to the FLOP. The analyzer's other part, the recurrence of each SSM / RWKV mixer and the attention
scores, is checked against a formula written here from the papers' equations (scan_flops, attn_flops).

Cache bytes: the tensors of a filled decode cache, numel · element_size, against the analyzer at the same
batch, context, dtype and SSM state dtype.
"""
from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

import archdsl
import archdsl.kernels
from archdsl.graph import layers
from archdsl.model.modules import moe as moe_module
from archdsl.model.modules.s4d import S4D

V = 37
SMALL = {
    "mamba": {"d_state": 4},
    "mamba2": {"d_state": 8, "headdim": 8, "chunk_size": 4},
    "mlp": {"hidden": 24},
    "moe": {"experts": 3, "top_k": 2, "hidden": 8},
    "rwkv6": {"head_size": 8, "mix_lora": 4, "decay_lora": 4},
    "cmix": {"hidden": 24},
    "s4d": {"d_state": 8},
    "zamba": {"heads": 4, "lora": 4, "hidden": 24},
}
SCANS = ("selective_scan", "ssd_scan", "wkv6", "wkv4")  # archdsl.kernels' parallel scans, looked up at each call


def _sdpa_cpu(query, key, value, *args, **kwargs) -> int:
    """The CPU SDPA (`_scaled_dot_product_flash_attention_for_cpu`), which torch's table lacks: as its CUDA
    twins, q·kᵀ and the weighted sum of values over the full [Lq, Lk] square, masked or not. Takes shapes."""
    return sdpa_flop_count(query, key, value)


def _grouped_mm(a, b, *args, **kwargs) -> int:
    """torch._grouped_mm of rows a [T, K] by per-group weights b [G, K, F] (MoE experts): each row meets one group."""
    return 2 * a[0] * a[1] * b[-1]


SDPA_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
CUSTOM = {SDPA_CPU: _sdpa_cpu}
if hasattr(torch.ops.aten, "_grouped_mm"):  # torch 2.8 and later (before, the experts run one at a time)
    CUSTOM[torch.ops.aten._grouped_mm] = _grouped_mm


def count(spec, n: int, batch: int, monkeypatch) -> dict:
    """FLOPs of one forward pass of [batch, n] tokens: "total" (FlopCounterMode with CUSTOM), "sdpa" (its
    attention) and "scan" (inside the parallel scans and S4D's convolution, which `total` includes too)."""
    monkeypatch.delenv("ARCHDSL_KERNELS", raising=False)
    inner = {"scan": 0}

    def apart(fn):
        def run(*args, **kwargs):
            with FlopCounterMode(display=False, custom_mapping=CUSTOM) as fc:
                out = fn(*args, **kwargs)
            inner["scan"] += fc.get_total_flops()
            return out
        return run

    for name in SCANS:
        monkeypatch.setattr(archdsl.kernels, name, apart(getattr(archdsl.kernels, name)))
    monkeypatch.setattr(S4D, "_convolve", apart(S4D._convolve))
    model = archdsl.compile(spec, dtype=torch.float32)
    ids = torch.randint(0, V, (batch, n), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(ids)  # once uncounted: the MoE's first call probes whether torch runs _grouped_mm here (a GEMM)
    inner["scan"] = 0
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=CUSTOM) as fc:
        model(ids)
    sdpa = fc.get_flop_counts()["Global"].get(SDPA_CPU, 0)
    return {"total": fc.get_total_flops(), "sdpa": sdpa, "scan": inner["scan"]}


def scan_flops(cfg) -> int:
    """The recurrence per token as the papers write it: each real multiply and add per state element, a factor
    formed once where it has fewer indices than the state (Δ·x per channel, Mamba-2's exp(Δ·A) per head);
    exponentials not counted."""
    if cfg.kind == "mamba":  # h = exp(Δ·A)·h + (Δ·x)·B, y = Σ_n C·h; A [E, N]: Δ·A per element
        return (1 + 1 + 1 + 1 + 2) * cfg.inner * cfg.d_state
    if cfg.kind == "mamba2":  # the same with A one scalar a head: exp(Δ·A) per head, not per element
        return (1 + 1 + 1 + 2) * cfg.inner * cfg.d_state
    if cfg.kind == "rwkv6":  # o = r·(S + diag(u)·kᵀv), S = diag(w)·S + kᵀv over [H, K, V]
        return (1 + 1 + 1 + 2 + 1 + 1) * cfg.adim * cfg.head_size  # kᵀv; u·; S +; r· summed; w·S; + kᵀv
    if cfg.kind == "rwkv4":  # wkv = (a + e^(u+k)·v) / (b + e^(u+k)); a = e^-w·a + e^k·v; b = e^-w·b + e^k
        return (5 + 5) * cfg.adim
    if cfg.kind == "s4d":  # s = Ā·s + B̄·u, y = 2·Re(Σ C·s) + D·u, per complex mode (N/2 of them):
        per_mode = (4 + 2) + 2 + 2 + (2 + 1) + 1  # Ā·s; B̄·u (real u); the add; Re(C·s); Σ
        return per_mode * cfg.d_model * cfg.d_state // 2 + 2 * cfg.d_model
    return 0


def attn_flops(cfg, n: int) -> Fraction:
    """q·kᵀ and the weighted sum of values, one multiply-add each per query channel and key, over the keys a query
    sees in a causal sequence of n (min(t, window) at position t), per token."""
    if cfg.kind not in ("attn", "zamba"):
        return Fraction(0)
    window = getattr(cfg, "window", None) or n
    keys = sum(min(t, window) for t in range(1, n + 1))
    return Fraction(4 * cfg.heads * cfg.hdim * keys, n)


FLOP_CASES = [
    "mamba", "mamba(d_state=6, dt_rank=3, inner_norms=weighted, bias=true)",
    "mamba2", "mamba2(ngroups=2, d_conv=3)",
    "attn(heads=4)", "attn(heads=4, kv_heads=2)", "attn(heads=4, kv_heads=1, window=3)",
    "attn(heads=2, head_dim=6, rope=false, bias=true)",
    "mlp", "mlp(act=gelu)", "mlp(act=relu2, hidden=20)", "mlp(act=geglu, bias=true)",
    "moe", "moe(top_k=1)", "moe(experts=4, top_k=3, shared_hidden=12, router=sigmoid)", "moe(act=gelu)",
    "rwkv6+cmix(version=6, hidden=32)", "rwkv4+cmix", "s4d", "s4d(glu=false)",
    "rwkv4, rwkv4, rwkv4, zamba(shared) at 1 2",
    "rwkv4, rwkv4, zamba(shared, kv_heads=2, act=silu, lora=0) at 1",
    "rwkv4, rwkv4, zamba(shared, heads=2, attn_lora=true) at 1",
]


@pytest.mark.parametrize("layout", FLOP_CASES)
@pytest.mark.parametrize("n, batch", [(8, 1), (5, 2)])
def test_flops_per_token_against_the_counted_forward(layout, n, batch, monkeypatch):
    """analyzer = counted GEMMs (projections, convs, experts, LM head) + the recurrence + the causal scores."""
    spec = archdsl.parse(layout, d_model=16, vocab_size=V, blocks=SMALL)
    rep = archdsl.analyze(spec, seq_len=n, batch=batch, dtype="float32")
    got = count(spec, n, batch, monkeypatch)
    tokens = n * batch
    gemm = got["total"] - got["sdpa"] - got["scan"]
    assert gemm % tokens == 0
    configs = [s.config for subs in layers(spec.graph) for s in subs]
    rest = sum(scan_flops(c) for c in configs) + sum(attn_flops(c, n) for c in configs)
    assert abs(rep.flops_per_token - (gemm // tokens + rest)) < 1, (rep.flops_per_token, gemm // tokens, rest)
    # SDPA computes the full [n, n] square of scores, masked or not: the analyzer counts the causal keys only
    square = sum(4 * c.heads * c.hdim * n * n * batch for c in configs if c.kind in ("attn", "zamba"))
    assert got["sdpa"] == square


def test_lm_head_and_layers_add_up():
    spec = archdsl.parse("mamba2, attn(heads=4), moe every 2", d_model=16, vocab_size=V, blocks=SMALL)
    rep = archdsl.analyze(spec, seq_len=9)
    assert rep.flops_per_token == sum(r.flops_per_token for r in rep.layers) + 2 * 16 * V


@pytest.mark.parametrize("grouped", [True, False])
def test_moe_counts_top_k_experts_a_token(grouped, monkeypatch):
    """The model sends each token to its top_k experts only (grouped GEMMs over the token-expert pairs, or one
    expert's tokens at a time): the experts' work grows with top_k, not with the number of experts."""
    if not grouped:
        monkeypatch.setattr(moe_module, "grouped_ok", lambda x, experts: False)
    flops = {}
    for experts, top_k in [(4, 1), (4, 2), (8, 2)]:
        spec = archdsl.parse(f"moe(experts={experts}, top_k={top_k}, hidden=8)", d_model=16, vocab_size=V)
        got = count(spec, 6, 1, monkeypatch)["total"] // 6 - 2 * 16 * V - 2 * 16 * experts  # less head and router
        flops[experts, top_k] = got
        assert got == top_k * 2 * 3 * 16 * 8
    assert flops[4, 2] == flops[8, 2] == 2 * flops[4, 1]


CACHE_LAYOUT = "mamba, mamba2, rwkv4, rwkv6+cmix, s4d, attn(heads=4, kv_heads=2), attn(heads=4, window={w}), mlp"


@pytest.mark.parametrize("dtype, ssm, batch, n, window", [
    (torch.float32, None, 1, 5, 3), (torch.bfloat16, None, 3, 12, 8), (torch.float16, "float32", 1, 6, 16),
    (torch.bfloat16, "bfloat16", 2, 9, 4), (torch.float32, "float16", 2, 7, 32), (torch.float64, None, 2, 4, 2)])
def test_cache_bytes_against_the_model_cache(dtype, ssm, batch, n, window):
    """A cache allocated at max_len n and filled by a prefill and a step: its tensors' bytes are the analyzer's
    (KV min(n, window) positions in the model dtype; the SSM states in `ssm`, float32 by default)."""
    spec = archdsl.parse(CACHE_LAYOUT.format(w=window), d_model=16, vocab_size=V, blocks=SMALL)
    model = archdsl.compile(spec, dtype=dtype, ssm_state_dtype=ssm)
    cache = model.init_cache(batch, max_len=n)
    with torch.no_grad():
        model(torch.randint(0, V, (batch, n - 1)), cache)
        model.step(torch.ones(batch, dtype=torch.long), cache)
    real = sum(t.numel() * t.element_size() for t in cache.tensors() if t.is_floating_point() or t.is_complex())
    rep = archdsl.analyze(spec, seq_len=n, batch=batch, dtype=str(dtype)[6:], ssm_state_dtype=ssm)
    assert real == cache.nbytes() == rep.cache_bytes
    for i, states in enumerate(cache.states):
        held = sum(t.numel() * t.element_size() for s in states.values() if s
                   for t in s.values() if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()))
        assert held == rep.layers[i].cache_bytes, (i, rep.layers[i].mixer)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cache_bytes_of_zamba_uses(dtype):
    """Each use of a shared zamba block keeps its own KV cache, over 2·d_model-wide heads."""
    spec = archdsl.parse("3×rwkv4, zamba(shared, kv_heads=2) at 1 2", d_model=16, vocab_size=V, blocks=SMALL)
    model = archdsl.compile(spec, dtype=dtype)
    cache = model.init_cache(2, max_len=7)
    with torch.no_grad():
        model(torch.randint(0, V, (2, 7)), cache)
    assert cache.nbytes() == archdsl.analyze(spec, seq_len=7, batch=2, dtype=str(dtype)[6:]).cache_bytes


def test_a_cache_without_max_len_holds_at_least_the_count():
    """Without max_len the KV buffers grow by doubling (16 positions at least, a window's ring up to its slots): the
    analyzer counts the n positions that a cache made with max_len n holds, so a grown one holds as much or more."""
    spec = archdsl.parse("mamba, attn(heads=4), attn(heads=4, window=8)", d_model=16, vocab_size=V, blocks=SMALL)
    model = archdsl.compile(spec)
    for n in (3, 12, 21):
        cache = model.init_cache(1)
        with torch.no_grad():
            model(torch.randint(0, V, (1, n - 2)), cache)
            for _ in range(2):
                model.step(torch.ones(1, dtype=torch.long), cache)
        assert cache.nbytes() >= archdsl.analyze(spec, seq_len=n, dtype="float32").cache_bytes
