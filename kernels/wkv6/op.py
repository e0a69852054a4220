"""RWKV-6 (Finch) WKV: the public op and its decoding step, dispatched by device."""
from __future__ import annotations

import torch

from .._checks import expect_float, expect_same_device, expect_shape
from .._dispatch import backend_for
from .chunked import wkv6_chunked
from .naive import wkv6_naive, wkv6_step_naive


def wkv6(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False):
    """RWKV-6's WKV over a sequence, fla's `chunk_rwkv6` convention.

    r, k, w `[B, T, H, K]`, v `[B, T, H, V]`, w the log-decay (≤ 0: the per-step decay
    is exp(w)), u `[H, K]` the bonus of the current token, scale defaults to K**-0.5,
    initial_state `[B, H, K, V]`.

        o_t = scale * r_t · (S_{t-1} + (u ⊙ k_t) ⊗ v_t),   S_t = diag(exp(w_t)) S_{t-1} + k_t ⊗ v_t

    Returns (o `[B, T, H, V]` in r's dtype, final state `[B, H, K, V]` in float32 (float64
    for float64 inputs) when output_final_state, else None). Differentiable in r, k, v,
    w, u and initial_state.
    """
    _check(r, k, v, w, u, initial_state)
    scale = r.shape[-1] ** -0.5 if scale is None else float(scale)
    backend = backend_for(r)
    if backend == "triton":
        from .triton_wkv6 import wkv6_triton
        return wkv6_triton(r, k, v, w, u, scale, initial_state, output_final_state)
    impl = wkv6_chunked if backend == "torch" else wkv6_naive
    return impl(r, k, v, w, u, scale, initial_state, output_final_state)


def wkv6_step(state, r, k, v, w, u, scale=None):
    """One decoding step: state `[B, H, K, V]` is updated in place (keep it float32).

    r, k, w `[B, H, K]`, v `[B, H, V]`, u `[H, K]`. Returns o `[B, H, V]` in r's dtype.
    """
    expect_shape("state", state, (None, None, None, None))
    B, H, K, V = state.shape
    for name, t in (("r", r), ("k", k), ("w", w)):
        expect_shape(name, t, (B, H, K))
    expect_shape("v", v, (B, H, V))
    expect_shape("u", u, (H, K))
    expect_float(state=state, r=r, k=k, v=v, w=w, u=u)
    expect_same_device(state=state, r=r, k=k, v=v, w=w, u=u)
    return wkv6_step_naive(state, r, k, v, w, u, scale)


def _check(r, k, v, w, u, initial_state):
    expect_shape("r", r, (None, None, None, None))
    B, T, H, K = r.shape
    expect_shape("k", k, (B, T, H, K))
    expect_shape("w", w, (B, T, H, K))
    expect_shape("v", v, (B, T, H, None))
    expect_shape("u", u, (H, K))
    expect_shape("initial_state", initial_state, (B, H, K, v.shape[-1]), optional=True)
    expect_float(r=r, k=k, v=v, w=w, u=u, initial_state=initial_state)
    expect_same_device(r=r, k=k, v=v, w=w, u=u, initial_state=initial_state)
