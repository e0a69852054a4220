"""PyTorch causal conv1d through F.conv1d (the CPU path, differentiable by autograd)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .naive import _act


def causal_conv1d_torch(x, weight, bias=None, activation=None, initial_states=None, return_final_states=False):
    """Same contract as `archdsl.kernels.causal_conv1d`; one grouped F.conv1d over [initial_states; x]."""
    batch, dim, seqlen = x.shape
    W = weight.shape[1]
    init = x.new_zeros(batch, dim, W - 1) if initial_states is None else initial_states.to(x.dtype)
    xe = torch.cat([init, x], dim=-1)
    w = weight.to(x.dtype)[:, None, :]
    if dim == 0:  # no channels: F.conv1d refuses groups=0
        out = xe[:, :, W - 1:]
    else:
        out = _act(F.conv1d(xe, w, bias.to(x.dtype) if bias is not None else None, groups=dim), activation)
    return (out, xe[:, :, xe.shape[-1] - (W - 1):]) if return_final_states else out
