"""Reference of rms_linear: the residual add, the (grouped) RMSNorm and the Linear as separate torch ops."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_linear_naive(x, weight, norm_weight, eps=1e-5, residual=None, groups=1, bias=None):
    """h = x + residual in x's dtype; n = norm_weight · (h / rms(h)) per group of K / groups channels, rounded to
    weight's dtype as HF's RMSNorm rounds its output; y = n Wᵀ + bias → (y [B, R], h [B, K]).
    The Triton kernel does not round n (it scales the accumulated sums): it agrees to that rounding."""
    h = x if residual is None else (x + residual).to(x.dtype)
    wd = torch.float64 if h.dtype == torch.float64 else torch.float32
    v = h.to(wd).view(h.shape[0], groups, h.shape[1] // groups)
    n = (v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps)).view(h.shape).to(weight.dtype)
    return F.linear(norm_weight.to(weight.dtype) * n, weight, None if bias is None else bias.to(weight.dtype)), h
