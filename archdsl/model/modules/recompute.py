"""Activations kept for the backward as recipes, not tensors: recomputed when the backward reads them.

    rc = Recompute()
    with rc:                                   # autograd's saved-tensor hooks, for the ops inside
        u = rc.keep(conv(x), lambda: conv(x))  # any op that saves u saves the recipe instead
        y = f(u)

A tensor registered with `keep` and saved by an op inside the block is packed as its recipe; the first
backward node to read it runs the recipe (without autograd) and the value is shared by the others that
saved it, until the last of them is done. For activations that are cheap to rebuild from tensors the
graph keeps anyway: Mamba's conv output from the conv's input (saved by the conv), delta from dt_proj's
input (saved by dt_proj), as mamba_ssm's `checkpoint_lvl=1` does; Mamba-2's conv output from in_proj's
output. Modules may also spend time for memory in their own ops where `active` says the block recomputes
(Mamba-2: ssd_scan's keep_states=False, gated_rmsnorm_linear). The recipe must give the same bits
as the forward (the same deterministic kernels on the same inputs), so the gradients are unchanged; it runs
under the autocast the block ran under (on the kept tensor's device), as torch.utils.checkpoint does.
A kept tensor must own its storage (a fresh output); a saved tensor on that storage (itself, or a view:
F.linear saves its 3-d input as a [B·L, F] view) is packed as the recipe and its place in the result.
The block holds the kept tensors, so no other tensor takes their memory while it runs.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch


class _Lazy:
    """A kept tensor's recipe and, once run, its value (shared by every node that saved it or a view)."""

    __slots__ = ("fn", "value", "shape", "dtype", "autocast")

    def __init__(self, fn: Callable[[], torch.Tensor], like: torch.Tensor):
        self.fn, self.value, self.shape, self.dtype = fn, None, like.shape, like.dtype
        dev = like.device.type  # the forward's autocast, which the backward (where the recipe runs) is not under
        from archdsl.kernels._dispatch import autocast_dtype  # here: archdsl.kernels imports torch._dynamo

        dtype = autocast_dtype(dev)
        self.autocast = (dev, dtype) if dtype is not None else None

    def get(self) -> torch.Tensor:
        if self.value is None:
            with torch.no_grad(), torch.autocast(*self.autocast) if self.autocast else contextlib.nullcontext():
                value = self.fn()
            if value.shape != self.shape or value.dtype != self.dtype or not value.is_contiguous():
                raise RuntimeError(f"recompute: a recipe gave {value.dtype} {tuple(value.shape)}, the forward "
                                   f"kept a contiguous {self.dtype} {tuple(self.shape)}")
            self.value = value
        return self.value


class _View:
    """A saved view of a kept tensor: its recipe and where in it the view lies."""

    __slots__ = ("lazy", "shape", "stride", "offset")

    def __init__(self, lazy: _Lazy, t: torch.Tensor, base: torch.Tensor):
        self.lazy, self.shape, self.stride = lazy, tuple(t.shape), t.stride()
        self.offset = t.storage_offset() - base.storage_offset()

    def get(self) -> torch.Tensor:
        base = self.lazy.get()
        return base.as_strided(self.shape, self.stride, base.storage_offset() + self.offset)


def _inside(t: torch.Tensor, base: torch.Tensor) -> bool:
    """Whether t's elements all lie in the contiguous base's memory (t, base on one storage)."""
    start = t.storage_offset() - base.storage_offset()
    end = start + sum((n - 1) * s for n, s in zip(t.shape, t.stride()) if n > 0)
    return t.dtype == base.dtype and t.numel() > 0 and start >= 0 and end < base.numel()


class Recompute:
    """Saved-tensor hooks that pack the tensors given to `keep`, and views of them, as recipes (see the
    module)."""

    active = True  # what recomputes: modules may trade more of their own memory for time (Keep: False)

    def __init__(self):
        self._recipes: dict[int, tuple[torch.Tensor, _Lazy]] = {}  # by storage
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def keep(self, t: torch.Tensor, recipe: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Register t: it or a view of it, saved inside the block, is kept as `recipe`, which must rebuild t
        exactly (a contiguous tensor of the same values). A t that does not own its whole storage
        contiguously (a view of something larger) is saved as it is."""
        if t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size():
            self._recipes[t.untyped_storage().data_ptr()] = (t, _Lazy(recipe, t))
        return t

    def _pack(self, t: torch.Tensor):
        kept = self._recipes.get(t.untyped_storage().data_ptr())
        if kept is None or t.device != kept[0].device or not _inside(t, kept[0]):
            return t
        base, lazy = kept
        return lazy if t.shape == base.shape and t.stride() == base.stride() else _View(lazy, t, base)

    @staticmethod
    def _unpack(saved):
        return saved.get() if isinstance(saved, (_Lazy, _View)) else saved

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._recipes.clear()  # the packed recipes live on in the graph; the block's table does not
        return self._hooks.__exit__(*exc)


class Keep:
    """Recompute's stand-in where nothing is recomputed: keeps every tensor."""

    active = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def keep(t, recipe):
        return t


def recompute_block(module, x: torch.Tensor, state) -> Recompute | Keep:
    """Recompute() where `module`'s "recompute" fusion applies (a training forward: autograd on and
    something to differentiate, no decode state, not traced by torch.compile), else Keep()."""
    on = ("recompute" in module.fused and state is None and torch.is_grad_enabled()
          and (x.requires_grad or any(p.requires_grad for p in module.parameters()))
          and not torch.compiler.is_compiling())
    return Recompute() if on else Keep()
