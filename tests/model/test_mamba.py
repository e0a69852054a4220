"""Mamba-1 mixer: parallel == recurrent, prefill + decode, gradients; HF-style init and shapes."""
import pytest
from hypothesis import given, settings, strategies as st
import torch

from blockcheck import build, check_block


@pytest.mark.parametrize("args", [
    {"d_state": 4},
    {"d_state": 4, "inner_norms": "weighted", "dt_rank": 3},
    {"d_state": 3, "inner_norms": "unweighted", "d_conv": 2, "bias": True, "conv_bias": False},
    {"d_state": 5, "expand": 1, "d_conv": 3},
])
@pytest.mark.parametrize("length,split", [(1, 1), (7, 3), (13, 13)])
def test_parallel_equals_recurrent(args, length, split):
    check_block(build("mamba", args), length=length, split=split)


def test_init_and_names():
    m = build("mamba", {"d_state": 4, "inner_norms": "weighted"}, d_model=16)
    assert torch.allclose(m.A_log[3], torch.log(torch.arange(1, 5, dtype=torch.float64)))
    assert (m.D == 1).all()
    dt = torch.nn.functional.softplus(m.dt_proj.bias)
    assert (dt >= 1e-4).all() and (dt <= 0.1 + 1e-9).all()
    names = {n for n, _ in m.named_parameters()}
    assert {"in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias",
            "A_log", "D", "out_proj.weight", "dt_layernorm", "b_layernorm", "c_layernorm"} == names
    assert sum(p.numel() for p in m.parameters()) == m.cfg.params()


def test_falcon_norms_have_no_weights():
    m = build("mamba", {"inner_norms": "unweighted"})
    assert not any("layernorm" in n for n, _ in m.named_parameters())
    assert sum(p.numel() for p in m.parameters()) == m.cfg.params()


def test_state_is_constant_size():
    m = build("mamba", {"d_state": 4})
    s = m.init_state(3, torch.device("cpu"), torch.bfloat16)
    assert s["conv"].shape == (3, 32, 3) and s["conv"].dtype == torch.bfloat16
    assert s["ssm"].shape == (3, 32, 4) and s["ssm"].dtype == torch.float32
    nbytes = sum(t.numel() * t.element_size() for t in s.values())
    assert nbytes == m.cfg.cache_bytes(3, 10**6, 2)


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 4), k=st.integers(1, 6), n=st.integers(1, 6), length=st.integers(1, 9),
       bias=st.booleans(), tokens=st.booleans(), token_major=st.booleans(), chunk=st.sampled_from([1, 1 << 28]),
       rows_ratio=st.sampled_from([0, 10**9]), parts=st.integers(1, 3))
def test_steps_linear_equals_linear(batch, k, n, length, bias, tokens, token_major, chunk, rows_ratio, parts):
    """steps_linear == F.linear on the transposed input, values and the gradients of input, weight and bias
    (float64), for a steps-contiguous t and for t = x.mT of a token-major x, either output layout, the
    weight gradient by one GEMM over rows (ratio 0) or by batched GEMMs summed in one batch chunk or in
    chunks of one, W's rows in 1-3 parts (each part's output contiguous)."""
    import archdsl.model.modules.steps_linear as sl

    g = torch.Generator().manual_seed(batch * 1000 + k * 100 + n * 10 + length)
    x = torch.randn(batch, length, k, dtype=torch.float64, generator=g)
    t = (x.clone() if token_major else x.mT.contiguous()).requires_grad_()
    tv = t.mT if token_major else t  # [B, K, L]
    n *= parts
    w = torch.randn(n, k, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(n, dtype=torch.float64, generator=g, requires_grad=True) if bias else None
    with pytest.MonkeyPatch.context() as mp:  # hypothesis runs many examples in one test: no fixture
        mp.setattr(sl, "_CHUNK_BYTES", chunk)
        mp.setattr(sl, "ROWS_RATIO", rows_ratio)
        outs = sl.steps_linear(tv, w, b, tokens=tokens, parts=parts)
        outs = outs if parts > 1 else (outs,)
        m = n // parts
        assert all(o.is_contiguous() and o.shape == ((batch, length, m) if tokens else (batch, m, length))
                   for o in outs)
        out = torch.cat(outs, dim=2 if tokens else 1)
        ref = torch.nn.functional.linear(tv.mT, w, b)  # [B, L, N]
        torch.testing.assert_close(out, ref if tokens else ref.mT)
        gy = torch.randn(out.shape, dtype=torch.float64, generator=g)
        got = torch.autograd.grad(outs, [t, w] + ([b] if bias else []), gy.split(m, dim=2 if tokens else 1))
        want = torch.autograd.grad(ref, [t, w] + ([b] if bias else []), gy if tokens else gy.mT)
        for a, e in zip(got, want):
            torch.testing.assert_close(a, e)
