"""Reference residual add + RMSNorm, in float32 (float64 for float64 inputs), as HF's RMSNorm."""
from __future__ import annotations

import torch


def add_rmsnorm_naive(x, residual, weight, eps=1e-5):
    """h = x + residual in x's dtype (x alone when residual is None); out = weight · (h / rms(h)) → (out, h)."""
    h = x if residual is None else (x + residual).to(x.dtype)
    wd = torch.float64 if h.dtype == torch.float64 else torch.float32
    hf = h.to(wd)
    n = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * n.to(h.dtype), h
