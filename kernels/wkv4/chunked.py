"""RWKV-4's WKV as a time loop vectorised over batch and channels: the CPU path.

WKV-4 is a serial recurrence per channel; this is transformers' `rwkv_linear_attention_cpu`
formula for formula (the state carries a running max so exp never overflows), and it is
differentiable by autograd, the state included.
"""
from __future__ import annotations

import torch

from .naive import _initial, wkv4_step_naive


def wkv4_torch(w, u, k, v, state=None):
    """w, u `[C]`, k, v `[B, T, C]`, state (num, den, max) each `[B, C]` or None.

    Returns (wkv `[B, T, C]` in k's dtype, (num, den, max) `[B, C]` float32/float64).
    """
    B, T, C = k.shape
    ct = torch.float64 if k.dtype == torch.float64 else torch.float32
    st = _initial(state, B, C, ct, k.device)
    out = []
    for t in range(T):
        o, st = wkv4_step_naive(w, u, k[:, t], v[:, t], st)
        out.append(o)
    wkv = torch.stack(out, dim=1) if out else k.new_empty(B, 0, C)
    return wkv, st
