"""Reference residual add + RMSNorm, in float32 (float64 for float64 inputs), as HF's RMSNorm."""
from __future__ import annotations

import torch


def add_rmsnorm_naive(x, residual, weight, eps=1e-5, out_dtype=None):
    """h = x + residual in x's dtype (x alone when residual is None); out = weight · (h / rms(h)) → (out, h),
    out in out_dtype (default: h's and weight's promoted; the normalised h is rounded to it first)."""
    h = x if residual is None else (x + residual).to(x.dtype)
    wd = torch.float64 if h.dtype == torch.float64 else torch.float32
    hf = h.to(wd)
    n = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)
    out_dtype = out_dtype or torch.promote_types(h.dtype, weight.dtype)  # (n had been rounded to h's: not the kernel)
    return (weight.to(out_dtype) * n.to(out_dtype)).to(out_dtype), h
