"""Sequential reference for the depthwise causal conv1d and its decode step (loops over time)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _act(y, activation):
    return F.silu(y) if activation in ("silu", "swish") else y


def causal_conv1d_naive(x, weight, bias=None, activation=None, initial_states=None, return_final_states=False,
                        seq_idx=None):
    """Same contract as `archdsl.kernels.causal_conv1d`; computes in float64 for float64 input, else float32.
    seq_idx: the runs [B, L] (`seq_runs`); a tap reads only inputs of its output's run, the initial states being
    run 0's."""
    wd = torch.float64 if x.dtype == torch.float64 else torch.float32
    batch, dim, seqlen = x.shape
    W = weight.shape[1]
    init = x.new_zeros(batch, dim, W - 1, dtype=wd) if initial_states is None else initial_states.to(wd)
    xe = torch.cat([init, x.to(wd)], dim=-1)  # position p at index p + W - 1
    runs = None if seq_idx is None else torch.cat([seq_idx.new_zeros(batch, W - 1), seq_idx], dim=1)
    w = weight.to(wd)
    ys = []
    for t in range(seqlen):
        window = xe[:, :, t:t + W]
        if runs is not None:
            window = torch.where((runs[:, t:t + W] == runs[:, t + W - 1:t + W])[:, None, :], window, 0.0)
        y = (window * w).sum(-1)
        ys.append(y + bias.to(wd) if bias is not None else y)
    out = _act(torch.stack(ys, dim=-1) if ys else xe[:, :, :0], activation).to(x.dtype)  # L = 0: empty
    if not return_final_states:
        return out
    return out, final_window(xe[:, :, -(W - 1):], runs).to(x.dtype)


def final_window(last, runs):
    """The last W-1 inputs `last` [B, D, W-1] as a continuation of the last token's run reads them: 0 where
    another run's (runs [B, W-1 + L] of every position, initial states first; None: all kept). A tensor of its
    own: `last` is a view of the padded input, which autograd keeps for the backward (a decode step writing the
    state in place would spoil it) and which is the prompt's size."""
    if runs is None:
        return last.clone(memory_format=torch.contiguous_format)
    W1 = last.shape[-1]  # >= 1: W is 2..4
    return torch.where((runs[:, -W1:] == runs[:, -1:])[:, None, :], last, 0.0)


def causal_conv1d_update_circular_naive(x, conv_state, weight, bias, activation, cache_seqlens):
    """Decode step(s) with conv_state `[B, D, S]` a circular buffer (causal-conv1d's cache_seqlens `[B]`): token t
    of row b is written at (cache_seqlens[b] + t) mod S, and its window is the W-1 entries before that position,
    then the token itself. The other entries are left as they are; cache_seqlens is not advanced.

    The steps read and write a copy of the state (in its dtype, so that each reads what the state would hold),
    written back once at the end: a read's gather keeps its input for the backward, which writing the state
    itself in place between the steps would change under it (autograd's error, for a state in the graph or
    x of several tokens that needs a gradient)."""
    squeeze = x.dim() == 2
    xs = x[:, :, None] if squeeze else x
    wd = step_dtype(conv_state, x)
    (B, D, S), W = conv_state.shape, weight.shape[1]
    back = torch.arange(-(W - 1), 0, device=x.device)
    buf = conv_state.clone()
    outs = []
    for t in range(xs.shape[-1]):
        at = cache_seqlens.long() + t  # [B]
        window = buf.gather(2, torch.remainder(at[:, None] + back, S)[:, None, :].expand(B, D, W - 1))
        full = torch.cat([window.to(wd), xs[:, :, t:t + 1].to(wd)], dim=-1)
        y = (full * weight.to(wd)).sum(-1)
        outs.append(_act(y + bias.to(wd) if bias is not None else y, activation))
        buf = buf.scatter(2, torch.remainder(at, S)[:, None, None].expand(B, D, 1), xs[:, :, t:t + 1].to(buf.dtype))
    conv_state.copy_(buf)
    out = torch.stack(outs, dim=-1).to(x.dtype)
    return out[:, :, 0] if squeeze else out


def step_dtype(conv_state, x):
    """The decode steps' working dtype: float64 where the state or x is float64 (exact), else float32."""
    return torch.float64 if torch.float64 in (conv_state.dtype, x.dtype) else torch.float32


def causal_conv1d_update_naive(x, conv_state, weight, bias=None, activation=None):
    """Decode step(s): x `[B, D]` or `[B, D, T]`; conv_state `[B, D, S]` (S >= W-1) shifted in place."""
    squeeze = x.dim() == 2
    xs = x[:, :, None] if squeeze else x
    wd = step_dtype(conv_state, x)
    W, S = weight.shape[1], conv_state.shape[-1]
    outs = []
    for t in range(xs.shape[-1]):
        full = torch.cat([conv_state.to(wd), xs[:, :, t:t + 1].to(wd)], dim=-1)
        y = (full[:, :, -W:] * weight.to(wd)).sum(-1)
        outs.append(_act(y + bias.to(wd) if bias is not None else y, activation))
        conv_state.copy_(full[:, :, -S:])
    out = torch.stack(outs, dim=-1).to(x.dtype)
    return out[:, :, 0] if squeeze else out
