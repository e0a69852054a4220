"""PyTorch causal conv1d through F.conv1d (the CPU path, differentiable by autograd)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .naive import _act, final_window


def causal_conv1d_torch(x, weight, bias=None, activation=None, initial_states=None, return_final_states=False,
                        seq_idx=None):
    """Same contract as `archdsl.kernels.causal_conv1d`; one grouped F.conv1d over [initial_states; x], or with
    seq_idx (runs, as the naive twin takes them) W shifted products, each tap masked to its output's run."""
    batch, dim, seqlen = x.shape
    W = weight.shape[1]
    init = x.new_zeros(batch, dim, W - 1) if initial_states is None else initial_states.to(x.dtype)
    xe = torch.cat([init, x], dim=-1)
    runs = None if seq_idx is None else torch.cat([seq_idx.new_zeros(batch, W - 1), seq_idx], dim=1)
    if runs is not None:
        w = weight.to(x.dtype)
        own = runs[:, None, W - 1:]
        out = sum(torch.where(runs[:, None, k:k + seqlen] == own, xe[:, :, k:k + seqlen], 0.0) * w[:, k, None]
                  for k in range(W))
        out = _act(out + bias.to(x.dtype)[:, None] if bias is not None else out, activation)
    elif dim == 0:  # no channels: F.conv1d refuses groups=0
        out = xe[:, :, W - 1:]
    else:
        w = weight.to(x.dtype)[:, None, :]
        out = _act(F.conv1d(xe, w, bias.to(x.dtype) if bias is not None else None, groups=dim), activation)
    if not return_final_states:
        return out
    return out, final_window(xe[:, :, xe.shape[-1] - (W - 1):], runs)
