"""Tensors of more than 2**31 elements: every offset a kernel computes past that must be int64. Each scan runs over
such a tensor forward and backward, and its last channels (heads) must equal — output and input gradients — those
channels run alone, whose offsets all fit in int32; an offset that wrapped reads or writes elsewhere (or faults).
Channels and heads are independent in each op, so the two runs compute the same values."""
from __future__ import annotations

import pytest
import torch

from archdsl.kernels import causal_conv1d, selective_scan, ssd_scan, wkv6

pytestmark = [pytest.mark.gpu, pytest.mark.big_memory,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

L = 1 << 20
BIG = 2 ** 31


def _need(gib):
    torch.cuda.empty_cache()  # an earlier test's blocks, cached by the allocator
    free, _ = torch.cuda.mem_get_info()
    if free < gib * 2 ** 30:
        pytest.skip(f"needs {gib} GiB of free GPU memory")


def _rand(*shape, scale=1.0, offset=0.0, seed):
    g = torch.Generator("cuda").manual_seed(seed)
    return (torch.randn(*shape, device="cuda", dtype=torch.bfloat16, generator=g) * scale + offset)


def _check(fn, full, part, grad_names, pick):
    """fn's output and input gradients over `full`, restricted by pick, equal those over `part`."""
    leaves = {k: v.detach().requires_grad_(k in grad_names) if isinstance(v, torch.Tensor) else v
              for k, v in full.items()}
    y = fn(**leaves)
    cot = _rand(*y.shape, seed=7)
    y.backward(cot)
    y, grads = pick(y.detach()), {k: pick(leaves[k].grad) for k in grad_names}
    part_leaves = {k: v.detach().requires_grad_(k in grad_names) if isinstance(v, torch.Tensor) else v
                   for k, v in part.items()}
    y_part = fn(**part_leaves)
    y_part.backward(pick(cot).contiguous())
    _close("y", y, y_part.detach())
    for k in grad_names:
        _close(f"d{k}", grads[k], part_leaves[k].grad)


def _close(name, got, want):
    """The two runs block their work apart, so bf16 roundings differ (a near-cancelling element by up to its size):
    held in norm and in the largest difference. A wrapped offset reads or writes whole blocks elsewhere: norm ~1."""
    got, want = got.float(), want.float()
    diff = got - want
    rel = float(diff.norm() / want.norm())
    worst = float(diff.abs().max() / want.abs().max())
    assert rel < 1e-2 and worst < 5e-2, f"{name}: relative norm error {rel:.2e}, largest difference {worst:.2e}"


@pytest.mark.parametrize("fwd", ["", "serial", "segments"])  # the default (Gluon on Hopper), the Triton forwards
def test_gpu_selective_scan_past_2_31_elements(fwd, monkeypatch):
    if fwd:
        monkeypatch.setenv("ARCHDSL_SCAN_FWD", fwd)
    else:
        monkeypatch.delenv("ARCHDSL_SCAN_FWD", raising=False)
    D, N, keep = 2112, 16, 64  # u [1, D, L]: 2.2e9 elements
    assert D * L > BIG and keep * L < BIG
    _need(60)
    full = dict(u=_rand(1, D, L, seed=0), delta=_rand(1, D, L, scale=0.5, offset=-1.0, seed=1),
                A=-torch.rand(D, N, device="cuda") - 0.1, B=_rand(1, N, L, seed=2), C=_rand(1, N, L, seed=3),
                z=_rand(1, D, L, seed=4), delta_bias=torch.zeros(D, device="cuda"), delta_softplus=True)
    cut = lambda t: t[:, -keep:] if t.dim() == 3 else t[-keep:]  # noqa: E731
    part = {k: cut(v).contiguous() if k in ("u", "delta", "z", "A", "delta_bias") else v for k, v in full.items()}
    _check(lambda **kw: selective_scan(**kw), full, part, ("u", "delta", "z"), lambda t: t[:, -keep:])


@pytest.mark.parametrize("layout", ["rows", "channels_last"])  # the two kernels: x [B, D, L] strided by steps or channels
def test_gpu_causal_conv1d_past_2_31_elements(layout):
    D, W, keep = 2112, 4, 64
    assert D * L > BIG
    _need(40)
    x = _rand(1, D, L, seed=0) if layout == "rows" else _rand(1, L, D, seed=0).transpose(1, 2)
    full = dict(x=x, weight=_rand(D, W, seed=1), bias=_rand(D, seed=2), activation="silu")
    part = dict(full, x=full["x"][:, -keep:].contiguous(), weight=full["weight"][-keep:].contiguous(),
                bias=full["bias"][-keep:].contiguous())
    _check(causal_conv1d, full, part, ("x",), lambda t: t[:, -keep:])


def test_gpu_ssd_scan_past_2_31_elements():
    H, P, N, keep = 33, 64, 16, 2  # x [1, L, H, P]: 2.2e9 elements
    assert L * H * P > BIG
    _need(60)
    full = dict(x=_rand(1, L, H, P, seed=0), dt=_rand(1, L, H, scale=0.5, offset=-2.0, seed=1),
                A=-torch.rand(H, device="cuda") - 0.5, B=_rand(1, L, 1, N, seed=2), C=_rand(1, L, 1, N, seed=3),
                dt_bias=torch.zeros(H, device="cuda"), dt_softplus=True)
    part = dict(full, x=full["x"][:, :, -keep:].contiguous(), dt=full["dt"][:, :, -keep:].contiguous(),
                A=full["A"][-keep:].contiguous(), dt_bias=full["dt_bias"][-keep:].contiguous())
    _check(ssd_scan, full, part, ("x", "dt"), lambda t: t[:, :, -keep:])


def test_gpu_wkv6_past_2_31_elements():
    H, K, keep = 33, 64, 2  # r, k, v, w [1, L, H, K]: 2.2e9 elements each
    assert L * H * K > BIG
    _need(60)
    full = dict(r=_rand(1, L, H, K, seed=0), k=_rand(1, L, H, K, scale=0.3, seed=1), v=_rand(1, L, H, K, seed=2),
                w=-torch.exp(_rand(1, L, H, K, scale=0.5, offset=-2.0, seed=3)), u=_rand(H, K, seed=4))
    part = {name: (t[:, :, -keep:] if t.dim() == 4 else t[-keep:]).contiguous() for name, t in full.items()}
    _check(lambda **kw: wkv6(**kw)[0], full, part, ("r", "k", "v", "w"), lambda t: t[:, :, -keep:])
