"""Fused residual add + RMSNorm: the Triton kernel (interpreted on CPU) == the naive twin, outputs
and gradients, over shapes including one row, odd widths and no residual."""
import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

from archdsl.kernels import add_rmsnorm
from archdsl.kernels.rmsnorm.naive import add_rmsnorm_naive

SHAPES = [(1, 8), (3, 5, 33), (2, 7, 128), (4, 1, 300), (2, 23, 24)]  # the last: programs of 3 rows, one short


def _inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(dtype)
    r = torch.randn(shape, generator=g).to(dtype)
    w = (1 + 0.1 * torch.randn(shape[-1], generator=g)).to(dtype)
    return x, r, w


def _triton_device(dtype) -> str:
    """Where the Triton kernels run for `dtype`: the GPU, else the interpreter (skipped without it). The
    interpreter keeps bfloat16 as raw bits and adds those: the kernel sums in float32."""
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_residual", [True, False])
def test_triton_forward_backward_matches_naive(shape, with_residual, monkeypatch):
    monkeypatch.setenv("ARCHDSL_KERNELS", "triton")
    _check_against_naive(shape, with_residual)


@settings(max_examples=20, deadline=None)
@given(rows=st.integers(1, 80), n=st.integers(1, 70), with_residual=st.booleans())
def test_random_shapes_match_naive(rows, n, with_residual):
    """The backward's programs each walk a run of rows (the last one short): any row count and width."""
    with pytest.MonkeyPatch.context() as mp:  # hypothesis runs many examples in one test: no fixture
        mp.setenv("ARCHDSL_KERNELS", "triton")
        _check_against_naive((rows, n), with_residual)


def _check_against_naive(shape, with_residual):
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x, r, w = (t.to(dev).requires_grad_(True) for t in _inputs(shape, torch.float32))
    res = r if with_residual else None
    out, h = add_rmsnorm(x, res, w, 1e-5)
    x2, r2, w2 = (t.detach().clone().requires_grad_(True) for t in (x, r, w))
    ref_out, ref_h = add_rmsnorm_naive(x2, r2 if with_residual else None, w2, 1e-5)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, ref_h, rtol=0, atol=0)
    g = torch.Generator().manual_seed(1)
    dout, dh = torch.randn(shape, generator=g).to(dev), torch.randn(shape, generator=g).to(dev)
    (out * dout).sum().add_((h * dh).sum()).backward()
    (ref_out * dout).sum().add_((ref_h * dh).sum()).backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-4, atol=1e-4)
    if with_residual:
        torch.testing.assert_close(r.grad, r2.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_close_to_float32(dtype, monkeypatch):
    monkeypatch.setenv("ARCHDSL_KERNELS", "triton")
    dev = _triton_device(dtype)
    x, r, w = (t.to(dev) for t in _inputs((3, 64), dtype))
    out, h = add_rmsnorm(x, r, w)
    ref, _ = add_rmsnorm_naive(x, r, w)
    assert out.dtype == dtype
    assert torch.equal(h, x + r)  # one rounding of the sum, as torch's 16-bit add
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)


def test_cpu_default_and_float64_path():
    x, r, w = _inputs((2, 3, 16), torch.float64)
    out, h = add_rmsnorm(x, r, w)
    hh = x + r
    ref = w * hh / torch.sqrt(hh.pow(2).mean(-1, keepdim=True) + 1e-5)
    assert torch.allclose(out, ref) and torch.equal(h, hh)


def test_argument_errors():
    x, r, w = _inputs((2, 16), torch.float32)
    with pytest.raises(ValueError, match="weight"):
        add_rmsnorm(x, r, w[:8])
    with pytest.raises(ValueError, match="residual"):
        add_rmsnorm(x, r[:1], w)


def test_traces_with_eps_a_symbol():
    """torch.compile(dynamic=True) traces a float argument as a symbol: the eps check passes a finite eps in one
    graph (fullgraph; math.isfinite could not take a symbol), and a bad eps still raises the ValueError."""
    x, r, w = _inputs((2, 5, 8), torch.float32)
    torch._dynamo.reset()
    traced = torch.compile(add_rmsnorm, backend="eager", dynamic=True, fullgraph=True)
    for eps in (1e-5, 1e-6):
        for got, want in zip(traced(x, r, w, eps), add_rmsnorm(x, r, w, eps), strict=True):
            torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="eps: expected a finite positive number, got nan"):
        torch.compile(add_rmsnorm, backend="eager", dynamic=True)(x, r, w, float("nan"))


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_float32_stream_with_half_residual_and_output(half, monkeypatch):
    """A float32 residual stream (the spec's residual_fp32): x float32, residual and weight 16-bit,
    out_dtype 16-bit: h stays float32, out comes in the 16-bit dtype, each gradient in its input's dtype,
    all as the naive twin."""
    monkeypatch.setenv("ARCHDSL_KERNELS", "triton")
    dev = _triton_device(half)
    x, r, w = _inputs((2, 9, 40), torch.float32)
    x, r, w = x.to(dev).requires_grad_(), r.to(half).to(dev).requires_grad_(), w.to(half).to(dev).requires_grad_()
    out, h = add_rmsnorm(x, r, w, 1e-5, out_dtype=half)
    assert out.dtype == half and h.dtype == torch.float32
    leaves = [t.detach().clone().requires_grad_() for t in (x, r, w)]
    ref_out, ref_h = add_rmsnorm_naive(*leaves, 1e-5, out_dtype=half)
    torch.testing.assert_close(h, ref_h, rtol=0, atol=0)
    torch.testing.assert_close(out, ref_out, rtol=2e-3, atol=2e-3)
    g = torch.Generator().manual_seed(2)
    dout, dh = torch.randn(out.shape, generator=g).to(dev, half), torch.randn(h.shape, generator=g).to(dev)
    (out.float() * dout).sum().add_((h * dh).sum()).backward()
    (ref_out.float() * dout).sum().add_((ref_h * dh).sum()).backward()
    for a, b in zip((x, r, w), leaves):
        assert a.grad.dtype == a.dtype
        torch.testing.assert_close(a.grad.float(), b.grad.float(), rtol=2e-2, atol=2e-2)


def test_a_weight_wider_than_x_rounds_as_the_kernel(monkeypatch):
    """x bf16 with a float32 residual and weight, no out_dtype: out float32 (the promoted dtype), the normalised h
    not rounded to bf16 on either path (the torch path had rounded it to h's dtype: 6.5e-3 apart)."""
    monkeypatch.setenv("ARCHDSL_KERNELS", "triton")
    dev = _triton_device(torch.bfloat16)
    x, r, w = (t.to(dev) for t in _inputs((2, 3, 40), torch.float32))
    out, h = add_rmsnorm(x.bfloat16(), r, w)
    ref_out, ref_h = add_rmsnorm_naive(x.bfloat16(), r, w)
    assert out.dtype == ref_out.dtype == torch.float32 and h.dtype == torch.bfloat16
    torch.testing.assert_close(h, ref_h, rtol=0, atol=0)
    torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-6)


def test_bad_out_dtype_is_refused():
    x, r, w = _inputs((2, 8), torch.float32)
    with pytest.raises(ValueError, match="out_dtype"):
        add_rmsnorm(x, r, w, out_dtype=torch.int32)
