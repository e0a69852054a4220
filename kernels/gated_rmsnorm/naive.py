"""Reference gated RMSNorm (HF MambaRMSNormGated, norm after the gate), in float32 (float64 for float64)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gated_rmsnorm_naive(x, z, weight, eps=1e-5, groups=1):
    """h = x · silu(z); out = weight · (h / rms(h)) with the rms over each group of N / groups channels.
    x, z [..., N], weight [N] → out [..., N] in x's dtype (the normalised h rounded to it, then times weight)."""
    wd = torch.float64 if x.dtype == torch.float64 else torch.float32
    h = x.to(wd) * F.silu(z.to(wd))
    # (no size-1 axis for torch.compile's strides; the group's size, not -1, which no view of zero rows can infer)
    g = h if groups == 1 else h.view(*h.shape[:-1], groups, h.shape[-1] // groups)
    g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + eps)
    return (weight * g.view_as(h).to(x.dtype)).to(x.dtype)  # a wider weight's product rounded as the kernel's
