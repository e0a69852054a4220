"""Attention: parallel (SDPA) == decoding with the KV cache, RoPE as HF Llama, sliding windows."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

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


def _chunks_then_steps(m, x, state, sizes, ctx0):
    """Prefill sizes[0] tokens of x [B, T, d] into `state` (ctx0: its ctx, the padding), then each later size's
    tokens as one forward over the cache → the outputs [B, T, d]."""
    outs, t = [m(x[:, :sizes[0]], state, **ctx0)], sizes[0]
    for size in sizes[1:]:
        outs.append(m(x[:, t:t + size], state))
        t += size
    return torch.cat(outs, 1)


@settings(max_examples=60, deadline=None)
@given(window=st.sampled_from([None, 1, 2, 3, 5, 8, 40]), kv=st.sampled_from([4, 2, 1]),
       rope=st.sampled_from(["full", "partial", "off"]), cache=st.sampled_from(["dynamic", "hint", "static"]),
       sizes=st.lists(st.integers(1, 9), min_size=2, max_size=5), pads=st.lists(st.integers(0, 8), min_size=2,
                                                                                  max_size=2),
       seed=st.integers(0, 2**16))
def test_a_chunk_after_the_cache_equals_its_steps(window, kv, rope, cache, sizes, pads, seed):
    """forward over a cache that holds tokens (a chunked prefill, a chat's next turn) attends a chunk in one call:
    the outputs and the cache it leaves equal those of stepping its tokens one by one (float64), for windows
    narrower than a chunk and wider than the cache, GQA, partial RoPE, left padding, any chunk schedule, and
    dynamic (grown from nothing or from a small max_len) and static caches."""
    from archdsl.model.packed import Packed

    args = {"heads": 4, "kv_heads": kv, "window": window, "head_dim": 6}
    args.update({"full": {}, "partial": {"rope_fraction": 0.5}, "off": {"rope": False}}[rope])
    m = build("attn", args, d_model=12, seed=seed % 7)
    B, T, P = 2, sum(sizes), sizes[0]
    pads = [min(p, P - 1) for p in pads]  # each row's prompt ends in a token
    x = torch.randn(B, T, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    mask = torch.arange(P)[None] >= torch.tensor(pads)[:, None]
    ctx0 = {"packed": Packed.padding(mask)} if any(pads) else {}
    max_len = {"dynamic": None, "hint": 3, "static": T}[cache]
    dev = torch.device("cpu")
    with torch.no_grad():
        s1 = m.init_state(B, dev, torch.float64, max_len=max_len, static=cache == "static")
        s2 = m.init_state(B, dev, torch.float64, max_len=max_len, static=cache == "static")
        got = _chunks_then_steps(m, x, s1, sizes, ctx0)
        want = torch.cat([m(x[:, :P], s2, **ctx0)] + [m.step(x[:, t], s2)[:, None] for t in range(P, T)], 1)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        for b in range(B):  # and each row as its prompt alone, in one pass
            torch.testing.assert_close(got[b, pads[b]:], m(x[b:b + 1, pads[b]:])[0], rtol=1e-11, atol=1e-12)
    assert int(s1["pos"]) == int(s2["pos"]) == T
    held = s1["k"].shape[2] if cache == "static" else min(T, window or T)
    for name in ("k", "v"):
        assert s1[name].shape[2] >= held and s2[name].shape[2] >= held
        torch.testing.assert_close(s1[name][:, :, :held], s2[name][:, :, :held], rtol=1e-12, atol=1e-12)
    if window is not None:
        assert s1["k"].shape[2] <= window


@pytest.mark.parametrize("layout", ["attn", "attn(window=3)", "mamba2, attn", "zamba_layout"])
@pytest.mark.parametrize("static", [False, True])
def test_steps_then_a_chunk_then_steps_equal_one_forward(layout, static):
    """A cache that starts with steps, then takes a chunk: a static attention cache counted only its position
    tensor in a step, so the chunk took itself for a fresh prefill, overwrote the first slots and reset the
    positions (logits 0.05-0.34 off from then on)."""
    import archdsl

    small = {"mamba2": {"d_state": 8, "headdim": 8, "chunk_size": 4}, "attn": {"heads": 4, "kv_heads": 2}}
    spec = (archdsl.parse("3×mamba2, zamba(shared) at 0 2", d_model=16, vocab_size=37,
                          blocks={**small, "zamba": {"heads": 2}}) if layout == "zamba_layout"
            else archdsl.parse(layout, d_model=16, vocab_size=37, blocks=small))
    m = archdsl.compile(spec, dtype=torch.float64, seed=0)
    ids = torch.randint(0, 37, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = m(ids)
        c = m.init_cache(2, max_len=9, static=static)
        out = torch.cat([m.step(ids[:, 0], c)[:, None], m.step(ids[:, 1], c)[:, None], m(ids[:, 2:6], c),
                         *(m.step(ids[:, i], c)[:, None] for i in range(6, 9))], 1)
    torch.testing.assert_close(out, full, rtol=1e-10, atol=1e-10)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("layout", ["attn", "attn(window=3)", "mamba2, attn", "zamba_layout"])
@pytest.mark.parametrize("prefill", [False, True])
def test_graph_replayed_steps_then_a_chunk_equal_one_forward(layout, prefill):
    """The steps of a CUDA graph over a static cache, then a chunk, then more steps: the replays advance the layers'
    Python counts too (Cache.advance), so the chunk continues the cache rather than taking itself for a fresh
    prefill when no eager call came before it."""
    import archdsl

    small = {"mamba2": {"d_state": 8, "headdim": 8, "chunk_size": 4}, "attn": {"heads": 4, "kv_heads": 2}}
    spec = (archdsl.parse("3×mamba2, zamba(shared) at 0 2", d_model=16, vocab_size=37,
                          blocks={**small, "zamba": {"heads": 2}}) if layout == "zamba_layout"
            else archdsl.parse(layout, d_model=16, vocab_size=37, blocks=small))
    m = archdsl.compile(spec, dtype=torch.float32, seed=0, device="cuda", cuda_graph=True)
    ids = torch.randint(0, 37, (2, 11), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.no_grad():
        full = m(ids)
        runner = m._graph_runner(2, 11)
        c = runner.cache
        c.reset()
        head = [m(ids[:, :2], c)] if prefill else [runner(ids[:, i])[:, None] for i in range(2)]
        out = torch.cat([*head, *(runner(ids[:, i])[:, None] for i in range(2, 4)), m(ids[:, 4:8], c),
                         *(runner(ids[:, i])[:, None] for i in range(8, 11))], 1)
    assert c.pos == 11 and all(s["n"] == 11 for s in c.counts())
    torch.testing.assert_close(out, full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("window", [None, 2, 6])
@pytest.mark.parametrize("static", [False, True])
def test_gradients_through_a_continued_chunk(window, static):
    """With autograd on, a chunk after the cache gives the gradients of its steps (the cache's buffers that an
    earlier call's attention saved are copied before the chunk writes them: state.writable)."""
    m = build("attn", {"heads": 4, "kv_heads": 2, "window": window})
    x = torch.randn(2, 9, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    w = torch.randn(2, 9, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    grads = []
    for chunked in (True, False):
        m.zero_grad()
        xg = x.clone().requires_grad_(True)
        s = m.init_state(2, x.device, x.dtype, max_len=9 if static else None, static=static)
        if chunked:
            out = torch.cat([m(xg[:, :2], s), m.step(xg[:, 2], s)[:, None], m(xg[:, 3:7], s), m(xg[:, 7:], s)], 1)
        else:
            out = torch.cat([m(xg[:, :2], s)] + [m.step(xg[:, t], s)[:, None] for t in range(2, 9)], 1)
        (out * w).sum().backward()
        grads.append([xg.grad] + [p.grad.clone() for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
