"""Depthwise causal conv1d: Triton (interpreted on CPU) and the F.conv1d path against the loop."""
import os
from contextlib import contextmanager

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from archdsl.kernels.conv1d import causal_conv1d, causal_conv1d_update
from archdsl.kernels.conv1d.chunked import causal_conv1d_torch
from archdsl.kernels.conv1d.naive import causal_conv1d_naive

CUDA = torch.cuda.is_available()


@contextmanager
def backend(name):
    old = os.environ.get("ARCHDSL_KERNELS")
    os.environ["ARCHDSL_KERNELS"] = name
    try:
        yield
    finally:
        os.environ.pop("ARCHDSL_KERNELS") if old is None else os.environ.__setitem__("ARCHDSL_KERNELS", old)


def make(b, D, L, W, *, bias=True, init=False, dtype=torch.float32, device="cpu", seed=0, channels_last=False):
    """channels_last: x a transposed slice of a [b, L, D + 3] tensor, as Mamba-2 passes in_proj's output."""
    g = torch.Generator(device=device).manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, device=device).to(dtype)
    x = r(b, L, D + 3)[:, :, 1:D + 1].transpose(1, 2) if channels_last else r(b, D, L)
    return dict(x=x, weight=r(D, W) / W ** 0.5, bias=r(D) if bias else None,
                initial_states=r(b, D, W - 1) if init else None)


def run(fn, t, activation, grads=True):
    if not grads:
        with torch.no_grad():
            return list(fn(t["x"], t["weight"], t["bias"], activation, initial_states=t["initial_states"],
                           return_final_states=True))
    leaves = {k: (v.detach() if k == "x" else v.detach().clone()).requires_grad_() for k, v in t.items()
              if v is not None}  # x keeps its strides
    a = {**t, **leaves}
    y, fin = fn(a["x"], a["weight"], a["bias"], activation, initial_states=a["initial_states"],
                return_final_states=True)
    if not grads:
        return [y, fin]
    B, D, L = y.shape
    w = torch.randn(B, L, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64).transpose(1, 2)
    w = w.to(y.device) if t["x"].stride(1) == 1 else w.contiguous().to(y.device)  # dy laid out as x
    return [y, fin] + list(torch.autograd.grad((y.double() * w).sum(), list(leaves.values())))


def assert_close(got, want, tol, sums=(), sum_tol=1e-3):
    """Relative errors below tol; the outputs at the indices in `sums` (weight's and bias's gradients: sums of
    b·L terms that can cancel to far below the terms' size) get sum_tol, their size taken as at least 0.01.
    Seen: the bias gradient of D 1, L 300 is 0.0148 from terms of size ~1, and float32 torch is 1.8e-5 off it."""
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, (i, a.shape, b.shape)
        assert torch.isfinite(a).all(), i
        limit, floor = (sum_tol, 1e-2) if i in sums else (tol, 1e-6)
        err = ((a.double() - b.double()).norm() / b.double().norm().clamp_min(floor)).item()
        assert err < limit, (i, err)


shapes = dict(b=st.integers(1, 2), D=st.sampled_from([1, 3, 5, 17]), L=st.sampled_from([1, 2, 3, 7, 13, 300]),
              W=st.integers(2, 4), act=st.sampled_from([None, "silu", "swish"]), bias=st.booleans(),
              init=st.booleans())


@settings(max_examples=25, deadline=None)
@given(**shapes, channels_last=st.booleans())
@example(b=1, D=1, L=300, W=2, act="silu", bias=True, init=False, channels_last=True)  # a cancelling bias gradient
def test_triton_matches_naive(b, D, L, W, act, bias, init, channels_last):
    t = make(b, D, L, W, bias=bias, init=init, channels_last=channels_last)
    want = run(causal_conv1d_naive, {k: v.double() if v is not None else None for k, v in t.items()}, act)
    with backend("triton"):
        assert_close(run(causal_conv1d, t, act), want, 1e-5, sums=(3, 4) if bias else (3,))


@settings(max_examples=25, deadline=None)
@given(**shapes)
def test_torch_matches_naive(b, D, L, W, act, bias, init):
    t = make(b, D, L, W, bias=bias, init=init, dtype=torch.float64)
    assert_close(run(causal_conv1d_torch, t, act), run(causal_conv1d_naive, t, act), 1e-12)


@pytest.mark.parametrize("channels_last", [False, True])
def test_triton_gradient_in_the_other_layout(channels_last):
    """dy laid out unlike x (a steps-contiguous dy for a channels-last x runs the walk reading dy across the
    channels; the reverse runs the tiles reading dy across the steps): the same gradients, in x's layout."""
    t = make(2, 19, 150, 4, init=True, channels_last=channels_last)
    leaves = {k: v.detach().clone().requires_grad_() for k, v in t.items()}
    dy = torch.randn(2, 19, 150, dtype=torch.float64, generator=torch.Generator().manual_seed(1))  # reproducible
    dy = dy.float() if channels_last else dy.transpose(1, 2).contiguous().transpose(1, 2).float()
    want = torch.autograd.grad(causal_conv1d_naive(*(leaves[k].double() for k in ("x", "weight", "bias")), "silu",
                                                   leaves["initial_states"].double()), list(leaves.values()), dy.double())
    with backend("triton"):
        y = causal_conv1d(leaves["x"], leaves["weight"], leaves["bias"], "silu", leaves["initial_states"])
        got = torch.autograd.grad(y, list(leaves.values()), dy)
    assert (got[0].stride(1) == 1) == channels_last
    assert_close(got, want, 1e-5)


@pytest.mark.parametrize("name", ["triton", "torch"])
def test_split_continues_from_final_states(name):
    t = make(2, 5, 23, 4, init=True)
    with backend(name):
        y, fin = run(causal_conv1d, t, "silu", grads=False)
        y1, f1 = run(causal_conv1d, {**t, "x": t["x"][..., :2]}, "silu", grads=False)
        y2, f2 = run(causal_conv1d, {**t, "x": t["x"][..., 2:], "initial_states": f1}, "silu", grads=False)
    assert_close([torch.cat([y1, y2], -1), f2], [y, fin], 1e-6)


@pytest.mark.parametrize("name", ["triton", "torch"])
@pytest.mark.parametrize("W,extra", [(2, 0), (4, 0), (4, 1), (3, 2)])
def test_update_matches_parallel(name, W, extra):
    """conv_state [B, D, W-1+extra]; extra=1 is mamba_ssm's [B, D, W] layout."""
    t = make(2, 6, 9, W, init=True)
    with backend(name):
        y, fin = run(causal_conv1d, t, "silu", grads=False)
        state = torch.cat([torch.randn(2, 6, extra), t["initial_states"]], -1)
        ys = [causal_conv1d_update(t["x"][..., i], state, t["weight"], t["bias"], "silu") for i in range(9)]
        multi_state = torch.cat([torch.randn(2, 6, extra), t["initial_states"]], -1)
        multi = causal_conv1d_update(t["x"], multi_state, t["weight"], t["bias"], "silu")
    assert_close([torch.stack(ys, -1), state[..., extra:], multi], [y, fin, y], 1e-6)


def test_bad_input():
    x, w = torch.randn(2, 3, 5), torch.randn(3, 4)
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d(x, torch.randn(3, 5))
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d(x, torch.randn(2, 4))
    with pytest.raises(ValueError, match="bias"):
        causal_conv1d(x, w, torch.randn(4))
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(x, w, activation="gelu")
    with pytest.raises(ValueError, match="initial_states"):
        causal_conv1d(x, w, initial_states=torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="conv_state"):
        causal_conv1d_update(x[..., 0], torch.randn(2, 3, 2), w)
    with pytest.raises(ValueError, match="x"):
        causal_conv1d_update(x[0, :, 0], torch.randn(2, 3, 3), w)


# ------------------------------------------------------------------ GPU (H200)
gpu = pytest.mark.skipif(not CUDA, reason="needs CUDA")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gpu_full_size(dtype, tol, channels_last):
    t = make(4, 5120, 4096, 4, init=True, dtype=dtype, device="cuda", channels_last=channels_last)
    want = run(causal_conv1d_torch, {k: v.double() for k, v in t.items()}, "silu")
    got = run(causal_conv1d, t, "silu")
    assert_close(got, want, tol)
    assert (got[0].stride(1) == 1) == channels_last  # y laid out as x


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("L", [131072, 1 << 20])
def test_gpu_long_sequences(L):
    t = make(1, 64, L, 4, init=True, device="cuda")
    want = run(causal_conv1d_torch, {k: v.double() for k, v in t.items()}, "silu")
    assert_close(run(causal_conv1d, t, "silu"), want, 1e-5)


@pytest.mark.gpu
@gpu
def test_gpu_update_matches_parallel_bf16():
    t = make(2, 256, 4096, 4, init=True, dtype=torch.bfloat16, device="cuda")
    y, fin = run(causal_conv1d, t, "silu", grads=False)
    state = t["initial_states"].clone()
    ys = [causal_conv1d_update(t["x"][..., i], state, t["weight"], t["bias"], "silu") for i in range(4096)]
    assert_close([torch.stack(ys, -1), state], [y, fin], 1e-2)
