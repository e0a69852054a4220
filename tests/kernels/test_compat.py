"""The peers' entry points (kernels/compat.py): their signatures as the peers write them, and their meaning where it
differs from our ops' (mamba_ssm's cu_seqlens and dt_limit, causal-conv1d's order and final_states_out, fla's
chunk_size)."""
import inspect

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import archdsl.kernels as K

INF = float("inf")
# each peer's parameters and defaults, as its source writes them (mamba_ssm 2.3.2, causal-conv1d 1.5, fla 0.6)
PEERS = {
    "mamba_chunk_scan_combined": [("x",), ("dt",), ("A",), ("B",), ("C",), ("chunk_size",), ("D", None),
                                  ("z", None), ("dt_bias", None), ("initial_states", None), ("seq_idx", None),
                                  ("cu_seqlens", None), ("dt_softplus", False), ("dt_limit", (0.0, INF)),
                                  ("return_final_states", False), ("return_varlen_states", False)],
    "selective_scan_fn": [("u",), ("delta",), ("A",), ("B",), ("C",), ("D", None), ("z", None), ("delta_bias", None),
                          ("delta_softplus", False), ("return_last_state", False)],
    "selective_state_update": [("state",), ("x",), ("dt",), ("A",), ("B",), ("C",), ("D", None), ("z", None),
                               ("dt_bias", None), ("dt_softplus", False)],
    "causal_conv1d_fn": [("x",), ("weight",), ("bias", None), ("seq_idx", None), ("initial_states", None),
                         ("return_final_states", False), ("final_states_out", None), ("activation", None)],
    "causal_conv1d_varlen_states": [("x",), ("cu_seqlens",), ("state_len",)],
    "causal_conv1d_update": [("x",), ("conv_state",), ("weight",), ("bias", None), ("activation", None),
                             ("cache_seqlens", None), ("conv_state_indices", None)],
    "chunk_rwkv6": [("r",), ("k",), ("v",), ("w",), ("u",), ("scale", None), ("initial_state", None),
                    ("output_final_state", False), ("cu_seqlens", None), ("cu_seqlens_cpu", None)],
    "fused_recurrent_rwkv6": [("r",), ("k",), ("v",), ("w",), ("u",), ("scale", None), ("initial_state", None),
                              ("output_final_state", False), ("reverse", False), ("cu_seqlens", None)],
}


@pytest.mark.parametrize("name", sorted(PEERS))
def test_the_peers_signatures(name):
    """Their leading parameters in their order with their defaults: a call written for the peer, positional or
    by keyword, means the same here (ours may take more after them)."""
    params = list(inspect.signature(getattr(K, name)).parameters.values())
    ours = [(p.name,) if p.default is inspect.Parameter.empty else (p.name, p.default) for p in params
            if p.kind is not inspect.Parameter.VAR_KEYWORD][:len(PEERS[name])]
    assert ours == PEERS[name]


def _ssd(dtype=torch.float32, L=12):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, L, 2, 3, generator=g)
    dt = torch.randn(1, L, 2, generator=g)  # negative entries: the default dt_limit clamps them to 0
    A = -torch.rand(2, generator=g) - 0.5
    B, C = torch.randn(1, L, 1, 4, generator=g), torch.randn(1, L, 1, 4, generator=g)
    return x.to(dtype), dt, A, B.to(dtype), C.to(dtype)


def test_mamba_chunk_scan_combined_means_what_mamba_ssm_means():
    x, dt, A, B, C = _ssd()
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    plain = K.ssd_scan(x, dt.clamp(min=0), A, B, C, 4)
    # dt_limit (0, inf) by default; cu_seqlens read for the varlen states only: no restart at 5
    assert torch.equal(K.mamba_chunk_scan_combined(x, dt, A, B, C, 4), plain)
    assert torch.equal(K.mamba_chunk_scan_combined(x, dt, A, B, C, 4, cu_seqlens=cu), plain)
    assert not torch.allclose(K.ssd_scan(x, dt.clamp(min=0), A, B, C, 4, cu_seqlens=cu), plain)  # ours packs
    assert torch.allclose(K.mamba_chunk_scan_combined(x, dt, A, B, C, 4, dt_limit=(-INF, INF)),
                          K.ssd_scan(x, dt, A, B, C, 4))
    seq = torch.tensor([[0] * 5 + [1] * 7])
    y, final, states = K.mamba_chunk_scan_combined(x, dt, A, B, C, 4, seq_idx=seq, cu_seqlens=cu,
                                                   return_final_states=True, return_varlen_states=True)
    y2, final2, states2 = K.ssd_scan(x, dt, A, B, C, 4, seq_idx=seq, cu_seqlens=cu, dt_limit=(0.0, INF),
                                     return_final_states=True, return_varlen_states=True)
    assert torch.equal(y, y2) and torch.equal(final, final2) and torch.equal(states, states2)
    xb, _, _, Bb, Cb = _ssd(torch.bfloat16)
    _, states = K.mamba_chunk_scan_combined(xb, dt, A, Bb, Cb, 4, seq_idx=seq, cu_seqlens=cu,
                                            return_varlen_states=True)
    assert states.dtype == torch.bfloat16 and states.shape == (2, 2, 3, 4)  # C's dtype, as mamba_ssm's
    with pytest.raises(ValueError, match="cu_seqlens: return_varlen_states needs it"):
        K.mamba_chunk_scan_combined(x, dt, A, B, C, 4, seq_idx=seq, return_varlen_states=True)
    with pytest.raises(ValueError, match="seq_idx: return_varlen_states with cu_seqlens alone"):
        K.mamba_chunk_scan_combined(x, dt, A, B, C, 4, cu_seqlens=cu, return_varlen_states=True)


def test_causal_conv1d_fn_takes_causal_conv1ds_order_and_final_states_out():
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(2, 6, 7, generator=g), torch.randn(6, 4, generator=g), torch.randn(6, generator=g)
    seq = torch.tensor([[0, 0, 0, 1, 1, 1, 1]] * 2)
    h0 = torch.randn(2, 6, 3, generator=g)
    assert torch.equal(K.causal_conv1d_fn(x, w, b, seq, None, False, None, "silu"),
                       K.causal_conv1d(x, w, b, "silu", seq_idx=seq))
    out = torch.empty(2, 6, 3)
    y, final = K.causal_conv1d_fn(x, w, b, None, h0, True, out, "swish")
    y2, final2 = K.causal_conv1d(x, w, b, "swish", h0, True)
    assert final is out and torch.equal(out, final2) and torch.equal(y, y2)
    with pytest.raises(ValueError, match=r"final_states_out: expected shape \[2, 6, 3\], got \[2, 6, 2\]"):
        K.causal_conv1d_fn(x, w, b, return_final_states=True, final_states_out=torch.empty(2, 6, 2))
    kept = out.clone()  # without return_final_states, causal-conv1d leaves final_states_out alone
    assert torch.equal(K.causal_conv1d_fn(x, w, b, final_states_out=out), K.causal_conv1d(x, w, b))
    assert torch.equal(out, kept)
    for bad, msg in ((torch.zeros(1, 6, 3).expand(2, 6, 3), "final_states_out: updated in place, so its elements"),
                     (torch.zeros(2, 6, 3, requires_grad=True), "final_states_out: updated in place, so it cannot"),
                     (torch.zeros(2, 6, 3, dtype=torch.long), "final_states_out: expected x's dtype torch.float32"),
                     (torch.zeros(2, 6, 3, device="meta"), "x on cpu, final_states_out on meta")):
        with pytest.raises(ValueError, match=msg):
            K.causal_conv1d_fn(x, w, b, return_final_states=True, final_states_out=bad)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_causal_conv1d_fn_zeroes_padding_tokens(backend, monkeypatch):
    """causal-conv1d >= 1.5.3: a token with seq_idx < 0 is padding, its output 0 (no bias, no activation), and a
    tap reads only tokens of its own sequence; here against that rule in float64, with its gradients (pads' 0)."""
    monkeypatch.setenv("ARCHDSL_KERNELS", backend)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 10, 5, dtype=torch.float64, generator=g).mT.requires_grad_()  # channels-last [B, D, L]
    w, b = torch.randn(5, 4, dtype=torch.float64, generator=g), torch.randn(5, dtype=torch.float64, generator=g)
    seq = torch.tensor([[0, 0, 0, 1, 1, -1, -1, -1, -1, -1], [-1, -1, 0, 0, 0, 0, 1, 1, 1, 1]], dtype=torch.int32)
    want = torch.zeros(2, 5, 10, dtype=torch.float64)
    for r in range(2):
        for t in range(10):
            if seq[r, t] >= 0:
                taps = [k for k in range(4) if t - 3 + k >= 0 and seq[r, t - 3 + k] == seq[r, t]]
                want[r, :, t] = F.silu(b + sum(w[:, k] * x[r, :, t - 3 + k] for k in taps))
    y = K.causal_conv1d_fn(x, w, b, seq, activation="silu")
    tol = 1e-12 if backend == "torch" else 1e-5  # the kernel accumulates in float32
    torch.testing.assert_close(y, want, rtol=tol, atol=tol)
    (dx,) = torch.autograd.grad(y.sum(), x)
    assert not dx[0, :, 5:].any() and not dx[1, :, :2].any() and dx[0, :, :5].all()


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(0, 9), min_size=1, max_size=5), state_len=st.integers(0, 6),
       spare=st.integers(0, 3), dim=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_causal_conv1d_varlen_states_is_causal_conv1ds(lengths, state_len, spare, dim, seed):
    """causal-conv1d's varlen states: each sequence's last state_len tokens [n, D, state_len], right-aligned,
    zeros before its first token (empty sequences, ones shorter than state_len, tokens past the last sequence), stored
    [n, state_len, D] transposed, as its own; against its reference's loop."""
    x = torch.randn(sum(lengths) + spare, dim, generator=torch.Generator().manual_seed(seed))
    cu = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)
    got = K.causal_conv1d_varlen_states(x, cu, state_len)
    want = torch.zeros(len(lengths), dim, state_len)
    for i, (a, b) in enumerate(zip(cu.tolist(), cu[1:].tolist())):
        take = min(b - a, state_len)
        if take:
            want[i, :, state_len - take:] = x[b - take:b].T
    assert torch.equal(got, want) and (got.stride() == (state_len * dim, 1, dim) or not got.numel())


def test_causal_conv1d_varlen_states_refuses_bad_input():
    x = torch.zeros(6, 3)
    for args, msg in (((x[0], torch.tensor([0, 6]), 2), r"x: expected shape \[\*, \*\], got \[3\]"),
                      ((x, torch.tensor([0.0, 6.0]), 2), "cu_seqlens: expected an integer tensor"),
                      ((x, torch.tensor([0, 4, 2]), 2), "cu_seqlens: expected 0, then non-decreasing offsets"),
                      ((x, torch.tensor([0, 7]), 2), "up to x's 6 tokens"),
                      ((x, torch.tensor([1, 6]), 2), "expected 0, then"),
                      ((x, torch.tensor([], dtype=torch.long), 2), "cu_seqlens: expected \\[n \\+ 1\\] offsets"),
                      ((x, torch.tensor([0, 6]), -1), "state_len: expected an int >= 0, got -1"),
                      ((x, torch.tensor([0, 6]), True), "state_len: expected an int >= 0, got True")):
        with pytest.raises(ValueError, match=msg):
            K.causal_conv1d_varlen_states(*args)


def test_the_fla_entry_points():
    g = torch.Generator().manual_seed(2)
    r, k, v = (torch.randn(2, 9, 2, 4, generator=g) for _ in range(3))
    w = -torch.rand(2, 9, 2, 4, generator=g)
    u, h0 = torch.randn(2, 4, generator=g), torch.randn(2, 2, 4, 4, generator=g)
    want = K.wkv6(r, k, v, w, u, None, h0, True)
    for got in (K.chunk_rwkv6(r, k, v, w, u, None, h0, True, chunk_size=16),
                K.fused_recurrent_rwkv6(r, k, v, w, u, None, h0, True, False)):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with pytest.raises(ValueError, match="chunk_size: expected a power of 2, got 12"):
        K.chunk_rwkv6(r, k, v, w, u, chunk_size=12)
    with pytest.raises(TypeError, match="unexpected keyword argument 'chunksize'"):
        K.chunk_rwkv6(r, k, v, w, u, chunksize=16)
    with pytest.raises(ValueError, match="reverse: expected True or False, got int"):
        K.fused_recurrent_rwkv6(r, k, v, w, u, reverse=1)
    # reverse flips them before wkv6 checks them: a sparse one was torch's NotImplementedError from flip
    cu = torch.tensor([0, 7, r.shape[1]])
    for name in ("r", "k", "v", "w"):
        args = dict(r=r[:1], k=k[:1], v=v[:1], w=w[:1])
        args[name] = args[name].to_sparse()
        with pytest.raises(ValueError, match=f"^{name}: expected a dense"):
            K.fused_recurrent_rwkv6(**args, u=u, reverse=True, cu_seqlens=cu)
    with pytest.raises(ValueError, match="^initial_state: expected a dense"):
        K.fused_recurrent_rwkv6(r[:1], k[:1], v[:1], w[:1], u, initial_state=h0.to_sparse(), reverse=True,
                                cu_seqlens=cu)


@pytest.mark.parametrize("name", ["chunk_rwkv6", "fused_recurrent_rwkv6"])
def test_fla_head_first(name):
    """Both fla entry points alike: head_first=False (fla 0.2-0.4's keyword for the [B, T, H, ...] layout, which
    fused_recurrent_rwkv6 declared) is taken and changes nothing; head_first=True raises what fla raises, a
    DeprecationWarning, which is our ValueError too (fused_recurrent_rwkv6 took no head_first at all, a TypeError;
    chunk_rwkv6 refused head_first=False with a ValueError alone)."""
    g = torch.Generator().manual_seed(3)
    r, k, v = (torch.randn(1, 5, 2, 4, generator=g) for _ in range(3))
    w, u = -torch.rand(1, 5, 2, 4, generator=g), torch.randn(2, 4, generator=g)
    fn = getattr(K, name)
    want = fn(r, k, v, w, u, output_final_state=True)
    got = fn(r, k, v, w, u, output_final_state=True, head_first=False)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    for bad in (True, None):
        with pytest.raises(DeprecationWarning, match=f"head_first: {name} takes"):
            fn(r, k, v, w, u, head_first=bad)
        with pytest.raises(ValueError, match=f"got {bad}"):
            fn(r, k, v, w, u, head_first=bad)
    with pytest.raises(TypeError, match="unexpected keyword argument 'headfirst'"):
        fn(r, k, v, w, u, headfirst=False)


def _reverse_rwkv6(r, k, v, w, u, scale, h, cu):
    """fla's REVERSE recurrence as its kernel writes it: each sequence from its last token back, h entering there."""
    o, finals = torch.zeros_like(v), []
    for n, (bos, eos) in enumerate(zip(cu, cu[1:])):
        for b in range(r.shape[0]):
            s = h[n if len(cu) > 2 else b].clone()
            for t in reversed(range(bos, eos)):
                kv = k[b, t, :, :, None] * v[b, t, :, None, :]
                o[b, t] = ((s + kv * u[:, :, None]) * r[b, t, :, :, None] * scale).sum(-2)
                s = s * w[b, t].exp()[:, :, None] + kv
            finals.append(s)
    return o, torch.stack(finals)


@pytest.mark.parametrize("packed", [False, True])
def test_fused_recurrent_rwkv6_reverse_is_flas_reverse_scan(packed):
    g = torch.Generator().manual_seed(3)
    B, T, H, Kd, Vd = (1, 11, 2, 3, 5) if packed else (2, 7, 2, 3, 5)
    cu = [0, 4, 5, 11] if packed else [0, T]
    n = len(cu) - 1 if packed else B
    r, k, w = (torch.randn(B, T, H, Kd, generator=g, dtype=torch.float64) for _ in range(3))
    w = -w.exp()
    v = torch.randn(B, T, H, Vd, generator=g, dtype=torch.float64)
    u, h0 = torch.randn(H, Kd, generator=g, dtype=torch.float64), torch.randn(n, H, Kd, Vd, generator=g,
                                                                                 dtype=torch.float64)
    ins = [t.requires_grad_() for t in (r, k, v, w, u, h0)]
    offsets = torch.tensor(cu) if packed else None
    o, final = K.fused_recurrent_rwkv6(*ins[:5], 0.7, ins[5], True, True, cu_seqlens=offsets)
    want_o, want_final = _reverse_rwkv6(*ins[:5], 0.7, ins[5], cu)
    close = dict(rtol=1e-5, atol=1e-5)  # the Triton kernels compute float64 inputs in float32
    torch.testing.assert_close(o, want_o, **close)
    torch.testing.assert_close(final, want_final, **close)
    gy, gs = torch.randn_like(o), torch.randn_like(final)
    got = torch.autograd.grad((o * gy).sum() + (final * gs).sum(), ins)
    want = torch.autograd.grad((want_o * gy).sum() + (want_final * gs).sum(), ins)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **close)
    if packed:
        with pytest.raises(ValueError, match=r"cu_seqlens: expected 0, then increasing offsets.*got \[0, 5, 4, 11\]"):
            K.fused_recurrent_rwkv6(r, k, v, w, u, None, h0, True, True, cu_seqlens=torch.tensor([0, 5, 4, 11]))
