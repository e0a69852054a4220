"""Attention: parallel (SDPA) == decoding with the KV cache, RoPE as HF Llama, sliding windows."""
import pytest
import torch

from blockcheck import build, check_block
from archdsl.model.modules.attn import apply_rope, rope_cos_sin


@pytest.mark.parametrize("args", [
    {"heads": 4},
    {"heads": 4, "kv_heads": 2, "rope": False},
    {"heads": 4, "kv_heads": 1, "window": 3},
    {"heads": 2, "head_dim": 6, "bias": True, "out_bias": True, "rope_fraction": 0.5},
    {"heads": 4, "window": 1},
])
@pytest.mark.parametrize("length,split", [(1, 1), (8, 3), (10, 10)])
def test_parallel_equals_recurrent(args, length, split):
    check_block(build("attn", args), length=length, split=split)


def test_rope_matches_hf_llama():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    q, k = torch.randn(1, 2, 5, 8, dtype=torch.float64), torch.randn(1, 2, 5, 8, dtype=torch.float64)
    cos, sin = rope_cos_sin(torch.arange(5), 8, 10000.0, torch.float64)
    q2, k2 = apply_rotary_pos_emb(q, k, cos[None], sin[None])
    assert torch.allclose(apply_rope(q, cos, sin), q2) and torch.allclose(apply_rope(k, cos, sin), k2)


def test_unfused_projection_same():
    m = build("attn", {"heads": 4, "kv_heads": 2})
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    with torch.no_grad():
        a = m(x)
        m.fuse = False
        b = m(x)
    assert torch.equal(a, b) or torch.allclose(a, b, rtol=1e-12)


def test_cache_growth_and_window():
    m = build("attn", {"heads": 4, "kv_heads": 2})
    s = m.init_state(1, torch.device("cpu"), torch.float64)
    with torch.no_grad():
        m(torch.randn(1, 20, 16, dtype=torch.float64), s)
    assert s["k"].shape[2] >= 20 and s["n"] == 20
    w = build("attn", {"heads": 4, "window": 4})
    s = w.init_state(1, torch.device("cpu"), torch.float64)
    with torch.no_grad():
        w(torch.randn(1, 20, 16, dtype=torch.float64), s)
        w.step(torch.randn(1, 16, dtype=torch.float64), s)
    assert s["k"].shape[2] == 4


def test_static_cache_matches_dynamic():
    m = build("attn", {"heads": 4, "kv_heads": 2, "window": 5})
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    with torch.no_grad():
        full = m(x)
        s = m.init_state(2, torch.device("cpu"), torch.float64, max_len=12, static=True)
        out = [m(x[:, :3], s)] + [m.step(x[:, t], s)[:, None] for t in range(3, 9)]
    assert torch.allclose(torch.cat(out, 1), full, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("max_len", [None, 1, 3, 6, 20])
@pytest.mark.parametrize("split", [1, 2, 7])
def test_window_ring_outgrows_a_small_max_len(max_len, split):
    """A dynamic cache takes max_len as a hint and grows past it: with a window wider than max_len its ring grows
    to the window (it stayed at max_len slots, dropped keys still inside the window and wrote past its end: wrong
    outputs, no error), never past it."""
    m = build("attn", {"heads": 4, "kv_heads": 2, "window": 5})
    x = torch.randn(2, 11, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(split))
    with torch.no_grad():
        full = m(x)
        s = m.init_state(2, torch.device("cpu"), torch.float64, max_len=max_len)
        out = [m(x[:, :split], s)] + [m.step(x[:, t], s)[:, None] for t in range(split, 11)]
    torch.testing.assert_close(torch.cat(out, 1), full, rtol=1e-9, atol=1e-12)
    assert s["k"].shape[2] == 5
