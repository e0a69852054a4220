"""Gated RMSNorm (Mamba-2's norm(y · silu(z))): the Triton kernels (interpreted on CPU) == the naive twin,
outputs and the gradients of x, z and weight, over random row counts, widths that are not powers of two,
groups, a gate whose rows are strided (a slice of in_proj's output, as the model passes it), and both
backward forms (one row a step, or two passes) at any width."""
import os
from contextlib import contextmanager

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from archdsl.kernels import gated_rmsnorm, gated_rmsnorm_linear
from archdsl.kernels.gated_rmsnorm.naive import gated_rmsnorm_naive

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _needs_triton(monkeypatch):
    monkeypatch.setenv("ARCHDSL_KERNELS", "triton")
    if DEV == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")


def _inputs(lead, N, dtype, strided, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, N, generator=g).to(DEV, dtype)
    z = torch.randn(*lead, N + 7 if strided else N, generator=g).to(DEV, dtype)[..., :N]  # rows N + 7 apart
    w = (1 + 0.2 * torch.randn(N, generator=g)).to(DEV, dtype)
    return x, z, w


def _check(lead, N, groups, strided, dtype, tol):
    x, z, w = (t.requires_grad_(True) for t in _inputs(lead, N, dtype, strided))
    ref_in = [t.detach().clone().requires_grad_(True) for t in (x, z, w)]
    out = gated_rmsnorm(x, z, w, 1e-5, groups)
    ref = gated_rmsnorm_naive(*ref_in, 1e-5, groups)
    assert out.dtype == x.dtype and out.shape == x.shape
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(DEV, dtype)
    (out.float() * dout.float()).sum().backward()
    (ref.float() * dout.float()).sum().backward()
    for name, a, b in zip("xzw", (x, z, w), ref_in):
        torch.testing.assert_close(a.grad, b.grad, rtol=tol, atol=tol * max(1, lead[0] ** 0.5 if name == "w" else 1),
                                   msg=lambda m, name=name: f"d{name}: {m}")


@contextmanager
def backward_form(two_pass):
    """The backward in two passes (the row dots, then tiles of 2 rows × 8 columns, row parts of a few tiles)
    or as the one-row kernel, whatever the width."""
    from archdsl.kernels.gated_rmsnorm import triton_gated_rmsnorm as tg
    old = tg._two_pass, tg.SPLIT
    tg._two_pass, tg.SPLIT = (lambda NG, store_out: two_pass), dict(dot=(2, 16, 4), grads=(2, 8, 4), parts=1)
    try:
        yield
    finally:
        tg._two_pass, tg.SPLIT = old


@settings(max_examples=16, deadline=None)
@given(rows=st.integers(1, 9), ng=st.sampled_from([1, 5, 16, 33]), groups=st.sampled_from([1, 2, 3]),
       strided=st.booleans(), two_pass=st.booleans())
def test_triton_matches_naive(rows, ng, groups, strided, two_pass):
    if DEV == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    os.environ["ARCHDSL_KERNELS"] = "triton"
    try:
        with backward_form(two_pass):
            _check((rows,), ng * groups, groups, strided, torch.float32, 1e-5)
    finally:
        del os.environ["ARCHDSL_KERNELS"]


def _check_linear(lead, N, R, groups, bias, dtype, tol):
    """gated_rmsnorm_linear against gated_rmsnorm then F.linear (same backend): outputs and the gradients of
    x, z, the norm's weight, weight and bias; and the tensors it saves hold N values a row fewer."""
    x, z, w = _inputs(lead, N, dtype, True)
    g = torch.Generator().manual_seed(2)
    W = (torch.randn(R, N, generator=g) / N ** 0.5).to(DEV, dtype)
    b = torch.randn(R, generator=g).to(DEV, dtype) if bias else None
    dy = torch.randn(*lead, R, generator=g).to(DEV, dtype)
    results = []
    for lean in (True, False):
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, z, w, W) + ((b,) if bias else ())]
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: (saved.append(t.numel()), t)[1], lambda t: t):
            if lean:
                y = gated_rmsnorm_linear(*leaves[:3], leaves[3], leaves[4] if bias else None, 1e-5, groups)
            else:
                y = torch.nn.functional.linear(gated_rmsnorm(*leaves[:3], 1e-5, groups), leaves[3],
                                               leaves[4] if bias else None)
        results.append((y, torch.autograd.grad(y, leaves, dy), sum(saved)))
    (y, grads, saved), (y_ref, grads_ref, saved_ref) = results
    rows = y.numel() // R
    assert y.shape == (*lead, R) and saved == saved_ref - rows * N
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    for name, a, r in zip(["x", "z", "norm_weight", "weight", "bias"], grads, grads_ref):
        torch.testing.assert_close(a, r, rtol=tol, atol=tol, msg=lambda m, name=name: f"d{name}: {m}")


@settings(max_examples=10, deadline=None)
@given(rows=st.integers(1, 7), ng=st.sampled_from([1, 5, 16]), groups=st.sampled_from([1, 3]),
       R=st.sampled_from([1, 6]), bias=st.booleans(), two_pass=st.booleans())
def test_linear_keeps_no_norm_output(rows, ng, groups, R, bias, two_pass):
    """Either backward form writes the norm's output again with the forward's bits."""
    if DEV == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    os.environ["ARCHDSL_KERNELS"] = "triton"
    try:
        with backward_form(two_pass):
            _check_linear((rows,), ng * groups, R, groups, bias, torch.float32, 1e-6)
    finally:
        del os.environ["ARCHDSL_KERNELS"]



def test_linear_under_autocast_is_the_two_ops(monkeypatch):
    """Under autocast the fused Function's F.linear would run in autocast's dtype and its backward (outside
    autocast) in the operands' own, mixed: the two ops in turn instead, as autocast runs them, with gradients in
    each input's dtype (a float32 x, z and weight; bfloat16 the autocast dtype on both devices)."""
    _needs_triton(monkeypatch)
    x, z, w = (t.requires_grad_() for t in _inputs((3,), 16, torch.float32, False))
    W = torch.randn(5, 16).to(DEV).requires_grad_()
    with torch.autocast(DEV, dtype=torch.bfloat16):
        got = gated_rmsnorm_linear(x, z, w, W, None, 1e-6, 1)
        want = torch.nn.functional.linear(gated_rmsnorm(x, z, w, 1e-6, 1), W)
    assert got.dtype == want.dtype == torch.bfloat16 and torch.equal(got, want)
    grads = torch.autograd.grad(got.float().sum(), (x, z, w, W))
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)

def test_linear_on_the_cpu_is_the_two_ops():
    x, z, w = _inputs((2, 3), 12, torch.float64, True)
    W, b = torch.randn(5, 12, dtype=torch.float64).to(DEV), torch.randn(5, dtype=torch.float64).to(DEV)
    want = torch.nn.functional.linear(gated_rmsnorm_naive(x, z, w, 1e-6, 3), W, b)
    assert torch.equal(gated_rmsnorm_linear(x, z, w, W, b, 1e-6, 3), want)


def test_cpu_default_is_the_twin():
    x, z, w = _inputs((2, 3), 12, torch.float64, True)
    assert torch.equal(gated_rmsnorm(x, z, w, 1e-6, 3), gated_rmsnorm_naive(x, z, w, 1e-6, 3))


def test_argument_errors():
    x, z, w = _inputs((2,), 12, torch.float32, False)
    for args, what in [((x, z[:, :6], w), "z"), ((x, z, w[:6]), "weight"), ((x, z, w, 1e-5, 5), "groups"),
                       ((x, z, w, -1.0), "eps")]:
        with pytest.raises(ValueError, match=what):
            gated_rmsnorm(*args)
    W = torch.zeros(5, 12)
    for args, what in [((x, z, w, W[:, :6]), "weight"), ((x, z, w, W, torch.zeros(4)), "bias"),
                       ((x, z, w, W.long()), "weight")]:
        with pytest.raises(ValueError, match=what):
            gated_rmsnorm_linear(*args)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("lead, N, groups", [((2, 4096), 5120, 1), ((1, 1000), 8192, 8), ((3, 77), 2560, 2),
                                            ((2, 999), 3072, 1)])
def test_gpu_full_sizes(lead, N, groups, monkeypatch):
    """Mamba-2 2.7B's and Codestral's widths, float32 to the twin and bf16 as close as bf16 allows (5120 takes
    the two-pass backward, and 3072 where the output is written again: _check_linear)."""
    _needs_triton(monkeypatch)
    _check(lead, N, groups, True, torch.float32, 1e-4)
    x, z, w = _inputs(lead, N, torch.bfloat16, True)
    out = gated_rmsnorm(x, z, w, 1e-5, groups)
    ref = gated_rmsnorm_naive(x.float(), z.float(), w.float(), 1e-5, groups)
    assert ((out.float() - ref).norm() / ref.norm()).item() < 1e-2
    _check_linear(lead, N, 2560, groups, False, torch.bfloat16, 2e-2)
