"""Activations kept for the backward as recipes, not tensors: recomputed when the backward reads them.

    rc = Recompute()
    with rc:                                   # autograd's saved-tensor hooks, for the ops inside
        u = rc.keep(conv(x), lambda: conv(x))  # any op that saves u saves the recipe instead
        y = f(u)

A tensor registered with `keep` and saved by an op inside the block is packed as its recipe; the first
backward node to read it runs the recipe (without autograd) and the value is shared by the others that
saved it, until the last of them is done. For activations that are cheap to rebuild from tensors the
graph keeps anyway: Mamba's conv output from the conv's input (saved by the conv), delta from dt_proj's
input (saved by dt_proj), as mamba_ssm's `checkpoint_lvl=1` does. The recipe must give the same bits
as the forward (the same deterministic kernels on the same inputs), so the gradients are unchanged.
Tensors are matched by storage, offset, shape, strides and dtype; the block holds the registered ones, so
no other tensor takes their memory (and their key) while it runs.
"""
from __future__ import annotations

from typing import Callable

import torch


def _key(t: torch.Tensor) -> tuple:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype, t.device)


class _Lazy:
    """A saved tensor's recipe and, once run, its value (shared by every node that saved it)."""

    __slots__ = ("fn", "value")

    def __init__(self, fn: Callable[[], torch.Tensor]):
        self.fn, self.value = fn, None

    def get(self) -> torch.Tensor:
        if self.value is None:
            with torch.no_grad():
                self.value = self.fn()
        return self.value


class Recompute:
    """Saved-tensor hooks that pack the tensors given to `keep` as their recipes (see the module)."""

    def __init__(self):
        self._recipes: dict[tuple, tuple[torch.Tensor, _Lazy]] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def keep(self, t: torch.Tensor, recipe: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Register t: saved inside the block, it is kept as `recipe` (which must rebuild t exactly)."""
        self._recipes[_key(t)] = (t, _Lazy(recipe))
        return t

    def _pack(self, t: torch.Tensor):
        kept = self._recipes.get(_key(t))
        return t if kept is None else kept[1]

    @staticmethod
    def _unpack(saved):
        return saved.get() if isinstance(saved, _Lazy) else saved

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._recipes.clear()  # the packed recipes live on in the graph; the block's table does not
        return self._hooks.__exit__(*exc)
