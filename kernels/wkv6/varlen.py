"""Packed sequences with a state each, on the torch backend: fla's `cu_seqlens` with initial_state or
output_final_state. (The Triton kernels take the offsets themselves: one program walks one sequence.)

A packed row (seq_idx) restarts the state at each sequence but carries one initial state in, for the first
sequence, and one final state out, the last one's. fla's varlen form gives every sequence its own: initial
states [n, H, K, V] in, final states [n, H, K, V] out. Here the n sequences are laid side by side as the
rows of a batch, each padded after its end to the longest one, and scanned as one batch of n:

    r, k, v = 0 and w = 0 on a pad:   S_t = exp(0) S_{t-1} + 0 ⊗ 0 = S_{t-1}

so a row's final state is its sequence's, exactly, and the pads' outputs are dropped. The scan is the op
itself (any backend), and autograd takes the gradients through the gather. It costs what a padded batch
costs, n × the longest sequence; without states the packed row (seq_idx) costs the tokens alone.
"""
from __future__ import annotations

import torch


def side_by_side(x: torch.Tensor, offsets: list[int]) -> torch.Tensor:
    """x [1, T, H, D] packed at `offsets` (0, ..., T) -> [n, longest, H, D], each sequence a row, zero after
    its end."""
    index, real = _layout(offsets, x.device)
    rows = x[0][index]  # [n, longest, H, D]
    return torch.where(real[:, :, None, None], rows, rows.new_zeros(()))


def packed(rows: torch.Tensor, offsets: list[int]) -> torch.Tensor:
    """The inverse of side_by_side: rows [n, longest, H, D] -> [1, T, H, D], the sequences one after another."""
    _, real = _layout(offsets, rows.device)
    return rows[real][None]


def _layout(offsets: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(index [n, longest]: each row's tokens in the packed row, the pads pointing at its last token;
    real [n, longest] bool: which are tokens, not pads)."""
    starts = torch.tensor(offsets[:-1], device=device)
    lengths = torch.tensor([b - a for a, b in zip(offsets, offsets[1:])], device=device)
    step = torch.arange(max(b - a for a, b in zip(offsets, offsets[1:])), device=device)
    real = step[None, :] < lengths[:, None]
    index = starts[:, None] + torch.minimum(step[None, :], lengths[:, None] - 1)
    return index, real
