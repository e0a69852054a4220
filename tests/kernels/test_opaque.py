"""The torch paths of selective_scan, wkv6 and wkv4 under torch.compile (kernels/_opaque.py): one graph serves
every sequence length, through Inductor's generated code too, with eager's outputs and gradients."""
from __future__ import annotations

import pytest
import torch

from archdsl.kernels.selective_scan import selective_scan
from archdsl.kernels.wkv4 import wkv4
from archdsl.kernels.wkv6 import wkv6

D, N, H, K = 6, 4, 2, 8


def _selective_scan(L, g):
    A, Dp, db = -torch.rand(D, N, generator=g) - 0.5, torch.randn(D, generator=g), torch.randn(D, generator=g)

    def f(u, delta, B, C, z, h0):
        return selective_scan(u, delta, A, B, C, D=Dp, z=z, delta_bias=db, delta_softplus=True,
                              return_last_state=True, initial_state=h0)
    return f, [torch.randn(2, D, L, generator=g), torch.randn(2, D, L, generator=g), torch.randn(2, N, L, generator=g),
               torch.randn(2, N, L, generator=g), torch.randn(2, D, L, generator=g), torch.randn(2, D, N, generator=g)]


def _wkv6(L, g):
    u = torch.randn(H, K, generator=g)

    def f(r, k, v, w, h0):
        return wkv6(r, k, v, w, u, initial_state=h0, output_final_state=True)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return f, [r(2, L, H, K), r(2, L, H, K), r(2, L, H, K), -torch.rand(2, L, H, K, generator=g), r(2, H, K, K)]


def _wkv6_packed(L, g):
    """Two sequences a row, the second from a third of the way in (its runs reach the path as float64)."""
    _, xs = _wkv6(L, g)
    u = torch.randn(H, K, generator=g)

    def f(r, k, v, w, h0):
        seq = (3 * torch.arange(r.shape[1]) >= r.shape[1]).long().expand(r.shape[0], -1)
        return wkv6(r, k, v, w, u, initial_state=h0, output_final_state=True, seq_idx=seq)
    return f, xs


def _wkv4(L, g):
    w, u = torch.randn(D, generator=g), torch.randn(D, generator=g)

    def f(k, v):
        o, (num, den, mx) = wkv4(w, u, k, v)
        return o, num, den
    return f, [torch.randn(2, L, D, generator=g), torch.randn(2, L, D, generator=g)]


def _wkv4_packed(L, g):
    """As _wkv6_packed: two sequences a row, the second from a third of the way in."""
    w, u = torch.randn(D, generator=g), torch.randn(D, generator=g)

    def f(k, v):
        seq = (3 * torch.arange(k.shape[1]) >= k.shape[1]).long().expand(k.shape[0], -1)
        o, (num, den, mx) = wkv4(w, u, k, v, seq_idx=seq)
        return o, num, den
    return f, [torch.randn(2, L, D, generator=g), torch.randn(2, L, D, generator=g)]


@pytest.mark.parametrize("make", [_selective_scan, _wkv6, _wkv6_packed, _wkv4, _wkv4_packed],
                         ids=["selective_scan", "wkv6", "wkv6_packed", "wkv4", "wkv4_packed"])
def test_compiled_torch_path_serves_every_length(make):
    import torch._dynamo.utils

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for L in (16, 23, 40):
        f, xs = make(L, torch.Generator().manual_seed(L))
        xs = [x.requires_grad_() for x in xs]
        got, want = torch.compile(f, backend="inductor", dynamic=True)(*xs), f(*xs)
        cot = [torch.randn_like(w) for w in want]
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        ga = torch.autograd.grad(got, xs, cot)
        gb = torch.autograd.grad(want, xs, cot)
        for a, b in zip(ga, gb, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
