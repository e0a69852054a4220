"""PyTorch causal conv1d through F.conv1d (the CPU path, differentiable by autograd)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .naive import _act, final_window


def causal_conv1d_torch(x, weight, bias=None, activation=None, initial_states=None, return_final_states=False,
                        seq_idx=None):
    """Same contract as `archdsl.kernels.causal_conv1d`; one grouped F.conv1d over [initial_states; x], or with
    seq_idx (runs, as the naive twin takes them) W shifted products, each tap masked to its output's run. Computes
    in float32 (float64 for float64 x), as the naive twin and the Triton kernel accumulate; y in x's dtype."""
    batch, dim, seqlen = x.shape
    W = weight.shape[1]
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    init = x.new_zeros(batch, dim, W - 1, dtype=ct) if initial_states is None else initial_states.to(ct)
    xe = torch.cat([init, x.to(ct)], dim=-1)
    b = None if bias is None else bias.to(ct)
    runs = None if seq_idx is None else torch.cat([seq_idx.new_zeros(batch, W - 1), seq_idx], dim=1)
    if runs is not None:
        w = weight.to(ct)
        own = runs[:, None, W - 1:]
        out = sum(torch.where(runs[:, None, k:k + seqlen] == own, xe[:, :, k:k + seqlen], 0.0) * w[:, k, None]
                  for k in range(W))
        out = _act(out + b[:, None] if b is not None else out, activation)
    elif dim == 0:  # no channels: F.conv1d refuses groups=0
        out = xe[:, :, W - 1:]
    else:
        out = _act(F.conv1d(xe, weight.to(ct)[:, None, :], b, groups=dim), activation)
    out = out.to(x.dtype)
    if not return_final_states:
        return out
    return out, final_window(xe[:, :, xe.shape[-1] - (W - 1):], runs).to(x.dtype)
