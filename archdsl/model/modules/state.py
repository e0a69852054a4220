"""Decode states written in place, and autograd.

A block's forward with a state and its step read the state, then write the new one into the same tensors (so
that a static cache keeps its buffers where a CUDA graph reads them). Where autograd records, an op that read
the old state may have saved it for its backward (S4D's and RWKV-4's recurrences, Mamba-1's scan, attention
over the KV buffer), and a write in place then fails that backward ("modified by an inplace operation").
`writable` gives the block new tensors to write into there: the old ones stay as the backward saw them.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def writable(state: dict, mod: nn.Module, x: torch.Tensor, *names: str) -> None:
    """Before `mod` writes its state's tensors `names` in place: where autograd records its ops on x (grad
    mode on, x or a weight of mod requiring grad), each replaced by a copy of itself (the gradient flows
    through the copy); else left as they are."""
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in mod.parameters())):
        for name in names:
            state[name] = state[name].clone()
