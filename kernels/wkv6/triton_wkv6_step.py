"""Triton kernel for `wkv6_step`: one decode token of RWKV-6's WKV, its state read and written once.

One program owns one (batch, head) and a block of V columns of the [K, V] state S:

    o = scale · rᵀ (S + (u ⊙ k) ⊗ v),   S ← diag(exp(w)) S + k ⊗ v

in float32 whatever the storage dtypes, as wkv6_step_naive computes it (a 16-bit state is read and written in its
own dtype). The state is indexed by its strides, so a view into a larger buffer is updated in place.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._host import cdiv, dense, next_pow2

BLOCK_V = 32  # V columns a program: at K = V = 64, two programs a (batch, head) and 64 state values a thread


@triton.jit
def _step_kernel(state, r, k, v, w, u, o, scale, s_b, s_h, s_k, s_v, H, K, V, BK: tl.constexpr, BV: tl.constexpr):
    scale = tl.cast(scale, tl.float32)  # torch.compile's Inductor passes a float as float64
    i_bh, i_v = tl.program_id(0).to(tl.int64), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    ok, ov = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    mk, mv = ok < K, ov < V
    m = mk[:, None] & mv[None, :]
    b_r = tl.load(r + i_bh * K + ok, mask=mk, other=0.0).to(tl.float32)
    b_k = tl.load(k + i_bh * K + ok, mask=mk, other=0.0).to(tl.float32)
    b_w = tl.load(w + i_bh * K + ok, mask=mk, other=0.0).to(tl.float32)
    b_u = tl.load(u + i_h * K + ok, mask=mk, other=0.0).to(tl.float32)
    b_v = tl.load(v + i_bh * V + ov, mask=mv, other=0.0).to(tl.float32)
    p_s = i_b * s_b + i_h * s_h + ok[:, None] * s_k + ov[None, :] * s_v
    S = tl.load(state + p_s, mask=m, other=0.0).to(tl.float32)
    kv = b_k[:, None] * b_v[None, :]
    b_o = scale * tl.sum(b_r[:, None] * (S + b_u[:, None] * kv), axis=0)
    tl.store(state + p_s, (S * tl.exp(b_w)[:, None] + kv).to(state.dtype.element_ty), mask=m)
    tl.store(o + i_bh * V + ov, b_o.to(o.dtype.element_ty), mask=mv)


def wkv6_step_triton(state, r, k, v, w, u, scale: float) -> torch.Tensor:
    """state `[B, H, K, V]` (any strides) updated in place; r, k, w `[B, H, K]`, v `[B, H, V]`, u `[H, K]`.
    Returns o `[B, H, V]` in r's dtype."""
    B, H, K, V = state.shape
    r, k, v, w, u = map(dense, (r, k, v, w, u))
    o = torch.empty(B, H, V, dtype=r.dtype, device=r.device)
    BK, BV = next_pow2(K), min(next_pow2(V), BLOCK_V)
    _step_kernel[(B * H, cdiv(V, BV))](state, r, k, v, w, u, o, scale, *state.stride(), H, K, V, BK, BV,
                                       num_warps=4)
    return o
