"""Argument checks shared by the public ops: a ValueError naming the argument, before any launch."""
from __future__ import annotations

import math
import numbers

import torch


def expect_shape(name: str, t: torch.Tensor | None, shape: tuple, *, optional: bool = False) -> None:
    """Raise unless `t` has exactly `shape` (None entries match any size)."""
    if t is None:
        if optional:
            return
        raise ValueError(f"{name}: expected a tensor of shape {_fmt(shape)}, got None")
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor of shape {_fmt(shape)}, got {type(t).__name__}")
    got = t.shape
    if len(got) != len(shape):
        raise ValueError(f"{name}: expected shape {_fmt(shape)}, got {list(got)}")
    for s, d in zip(shape, got):  # a loop, not any(...): every op call checks ~10 shapes
        if s is not None and s != d:
            raise ValueError(f"{name}: expected shape {_fmt(shape)}, got {list(got)}")


def expect_same_device(**tensors: torch.Tensor | None) -> None:
    devices = {n: t.device for n, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"inputs must be on one device: {listing}")


def expect_float(**tensors: torch.Tensor | None) -> None:
    for n, t in tensors.items():
        if t is not None and not t.is_floating_point():
            raise ValueError(f"{n}: expected a floating-point tensor, got {t.dtype}")


def expect_integer(**tensors: torch.Tensor | None) -> None:
    for n, t in tensors.items():
        if t is not None and (t.is_floating_point() or t.is_complex()):
            raise ValueError(f"{n}: expected an integer tensor, got {t.dtype}")


def expect_flag(**flags) -> None:
    """Each flag True or False (a string such as "no" would read as True)."""
    for n, v in flags.items():
        if not isinstance(v, bool):
            raise ValueError(f"{n}: expected True or False, got {v!r}")


def expect_in_place(**tensors: torch.Tensor | None) -> None:
    """States an op updates in place: no two elements in one memory location (an expand()ed tensor, a stride 0
    over a size past 1), where each path would write something else, and not a leaf that requires grad, which
    autograd refuses to have written (the Triton paths would write it behind autograd's back)."""
    for n, t in tensors.items():
        if t is None:
            continue
        if 0 in t.stride() and any(st == 0 and sz > 1 for st, sz in zip(t.stride(), t.shape)):  # decode: fast
            raise ValueError(f"{n}: updated in place, so its elements must not share memory; got shape "
                             f"{list(t.shape)} with strides {list(t.stride())} (an expanded tensor: pass a clone)")
        if t.requires_grad and t.is_leaf and torch.is_grad_enabled():
            raise ValueError(f"{n}: updated in place, so it cannot be a leaf tensor that requires grad "
                             f"(pass a detached copy, or call under torch.no_grad())")


def expect_number(name: str, value, *, positive: bool = False) -> float:
    """`value` as a float: a finite real number (a one-element tensor too), > 0 if `positive`."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        value = value.item()
    # -inf < value < inf (NaN fails it too) rather than math.isfinite: torch.compile(dynamic=True) traces a float
    # argument as a symbol, which math.isfinite cannot take and a comparison can (a guard)
    real = isinstance(value, (numbers.Real, torch.SymFloat)) and not isinstance(value, bool)
    if not real or not -math.inf < value < math.inf or (positive and value <= 0):
        raise ValueError(f"{name}: expected a finite{' positive' if positive else ''} number, got {value!r}")
    return float(value)


def _fmt(shape: tuple) -> str:
    return "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
