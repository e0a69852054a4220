"""Triton kernel for `wkv4_step`: one decode token of RWKV-4's WKV in one launch, no autograd on the way.

One program owns one batch row and a block of channels. From the state (num, den, max) before the token:

    top = max(max, u + k)        wkv = (e^(max-top) num + e^(u+k-top) v) / (e^(max-top) den + e^(u+k-top))
    top' = max(max + w', k)      num' = e^(max+w'-top') num + e^(k-top') v,  den' likewise,  max' = top'

with w' = -exp(w) (the scan's `_token`), in float32 whatever the storage dtypes, as wkv4_step_naive computes it.
Each of the three state tensors and k, v are read by their own strides (HF's `[B, C, 3]` state unbound, or rows of
a wider tensor), so nothing is copied or stacked first; the new state is written to one float32 `[3, B, C]` buffer.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dispatch import interpreting
from .._host import cdiv, dense, next_pow2
from .triton_wkv4 import _channels, _token

BLOCK_C = 256  # channels a program: 2 a thread at 4 warps


@triton.jit
def _step_kernel(w, u, k, v, num, den, mx, y, s_out, k_b, v_b, n_b, n_c, d_b, d_c, m_b, m_c, B, C,
                 BC: tl.constexpr, FAST: tl.constexpr):
    i_b = tl.program_id(1).to(tl.int64)
    oc, mc, wd, b_u = _channels(w, u, C, BC)
    kk = tl.load(k + i_b * k_b + oc, mask=mc, other=0.0).to(tl.float32)
    vv = tl.load(v + i_b * v_b + oc, mask=mc, other=0.0).to(tl.float32)
    aa = tl.load(num + i_b * n_b + oc * n_c, mask=mc, other=0.0).to(tl.float32)
    bb = tl.load(den + i_b * d_b + oc * d_c, mask=mc, other=0.0).to(tl.float32)
    pp = tl.load(mx + i_b * m_b + oc * m_c, mask=mc, other=-1e38).to(tl.float32)
    yy, aa, bb, pp = _token(aa, bb, pp, kk, vv, wd, b_u, FAST)
    tl.store(y + i_b * C + oc, yy.to(y.dtype.element_ty), mask=mc)
    p_s = i_b * C + oc
    tl.store(s_out + p_s, aa, mask=mc)
    tl.store(s_out + B * C + p_s, bb, mask=mc)
    tl.store(s_out + 2 * B * C + p_s, pp, mask=mc)


def wkv4_step_triton(w, u, k, v, state):
    """w, u `[C]`, k, v `[B, C]`, state (num, den, max) `[B, C]` each, any strides and float dtypes.
    Returns (wkv `[B, C]` in k's dtype, (num, den, max) float32, each `[B, C]`)."""
    B, C = k.shape
    w, u = dense(w), dense(u)
    k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (k, v))
    y = torch.empty(B, C, dtype=k.dtype, device=k.device)
    s_out = torch.empty(3, B, C, dtype=torch.float32, device=k.device)
    BC = min(BLOCK_C, next_pow2(C))
    strides = [s for t in state for s in t.stride()]
    _step_kernel[(cdiv(C, BC), B)](w, u, k, v, *state, y, s_out, k.stride(0), v.stride(0), *strides, B, C, BC,
                                   not interpreting(), num_warps=4)
    return y, tuple(s_out.unbind(0))
