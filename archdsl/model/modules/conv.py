"""The depthwise causal conv1d of the Mamba mixers, with its decode state.

The state is the last d_conv - 1 conv inputs, [B, D, d_conv - 1]; a parallel call with a state
convolves [state, x] and keeps the new tail, so a prefill can continue an earlier one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def conv_forward(x, weight, bias, state=None, seq_idx=None):
    """x [B, D, L], weight [D, K], bias [D] or None → silu(causal conv) [B, D, L]; seq_idx [B, L]: packed
    sequences, each convolved on its own, without a state (with one, seq_idx is not read: a left-padded
    prefill, model/packed.py, comes with its pads zeroed, which convolve as the zeros before a fresh state)."""
    from archdsl.kernels import causal_conv1d

    if state is None:
        return causal_conv1d(x, weight, bias, activation="silu", seq_idx=seq_idx)
    # where autograd records, the conv reads a copy: the Triton conv keeps its initial states for the backward,
    # and the state is written in place below
    records = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias, state))
    y, last = causal_conv1d(x, weight, bias, activation="silu", initial_states=state.to(x.dtype, copy=records),
                            return_final_states=True)
    state.copy_(last)
    return y


def conv_step(x, weight, bias, state):
    """x [B, D] → silu(conv) [B, D]; state [B, D, K-1] shifted in place."""
    window = torch.cat([state, x[..., None].to(state.dtype)], dim=-1)
    state.copy_(window[..., 1:])
    y = (window * weight).sum(-1)
    if bias is not None:
        y = y + bias
    return F.silu(y).to(x.dtype)
