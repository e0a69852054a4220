"""Argument checks shared by the public ops: a ValueError naming the argument, before any launch."""
from __future__ import annotations

import math
import numbers

import torch


def expect_shape(name: str, t: torch.Tensor | None, shape: tuple, *, optional: bool = False,
                 by: torch.Tensor | tuple[str, torch.Tensor] | None = None) -> None:
    """Raise unless `t` has exactly `shape` (None entries match any size). by: (a name, its tensor), or several
    such pairs, whose sizes the expected shape takes: shown beside it where they disagree, as those may be the wrong
    ones."""
    if t is None:
        if optional:
            return
        raise ValueError(f"{name}: expected a tensor of shape {_fmt(shape)}, got None")
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor of shape {_fmt(shape)}, got {type(t).__name__}")
    if t.layout != torch.strided:  # sparse, or another layout no path reads by strides
        raise ValueError(f"{name}: expected a dense (strided) tensor of shape {_fmt(shape)}, got layout {t.layout}")
    got = t.shape
    if len(got) != len(shape):
        raise ValueError(f"{name}: expected shape {_fmt(shape)}{_by(by)}, got {list(got)}")
    for s, d in zip(shape, got):  # a loop, not any(...): every op call checks ~10 shapes
        if s is not None and s != d:
            raise ValueError(f"{name}: expected shape {_fmt(shape)}{_by(by)}, got {list(got)}")


def _by(by) -> str:
    """' (sizes from x [2, 5, 8, 3])' for by = ("x", x), or from each of several such pairs."""
    if by is None:
        return ""
    pairs = [by] if isinstance(by[0], str) else by
    return f" (sizes from {' and '.join(f'{n} {list(t.shape)}' for n, t in pairs)})"


def expect_same_device(**tensors: torch.Tensor | None) -> None:
    devices = {n: t.device for n, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"inputs must be on one device: {listing}")


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # what every path computes in (not float8)


def expect_float(**tensors: torch.Tensor | None) -> None:
    for n, t in tensors.items():
        if t is not None and t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{n}: expected a float16, bfloat16, float32 or float64 tensor, got {t.dtype}")


INDEX_DTYPES = (torch.int32, torch.int64)  # mamba_ssm's int32 (what its kernels and causal-conv1d's read), and int64


def expect_integer(**tensors: torch.Tensor | None) -> None:
    """Index tensors (seq_idx, cu_seqlens): int32 or int64. Not bool, which would be read as 0/1 (a mask passed where
    sequence numbers are meant), nor float or complex."""
    for n, t in tensors.items():
        if t is not None and t.dtype not in INDEX_DTYPES:
            raise ValueError(f"{n}: expected an integer tensor (int32 or int64), got {t.dtype}")


def expect_slots(name: str, idx: torch.Tensor | None, pool: int) -> None:
    """Indices into a pool of `pool` states (continuous batching; negative: a pad row): none past the pool, and no
    state named twice (two rows would write it). Checked where reading them costs no wait for a device (CPU
    tensors); on a GPU they are trusted, and the kernels leave a row whose index is past the pool alone, as a pad,
    rather than write outside it. Meta indices hold none to read: which rows step which state depends on them."""
    if idx is not None and idx.is_meta:
        raise ValueError(f"{name}: on the meta device it holds no indices to read (which rows step which state "
                         f"depends on them)")
    if idx is None or idx.device.type != "cpu" or idx.numel() == 0:
        return
    live = idx[idx >= 0]
    if live.numel() and int(live.max()) >= pool:
        raise ValueError(f"{name}: index {int(live.max())} is past the pool of {pool} states")
    if live.unique().numel() != live.numel():
        raise ValueError(f"{name}: names a state twice (each row steps its own): {idx.tolist()[:16]}")


def expect_flag(**flags) -> None:
    """Each flag True or False (a string such as "no" would read as True)."""
    for n, v in flags.items():
        if not isinstance(v, bool):
            raise ValueError(f"{n}: expected True or False, got {v!r}")


def expect_in_place(**tensors: torch.Tensor | None) -> None:
    """States an op updates in place: no two elements in one memory location (an expand()ed tensor, a stride 0
    over a size past 1, or an as_strided view whose rows overlap), where a path would write shared elements (the
    Triton kernels silently, in whatever order their programs run), and not a leaf that requires grad, which
    autograd refuses to have written (the Triton paths would write it behind autograd's back)."""
    for n, t in tensors.items():
        if t is None:
            continue
        if not t.is_contiguous() and shares_memory(t.shape, t.stride()):  # decode: a contiguous state is fast
            raise ValueError(f"{n}: updated in place, so its elements must not share memory; got shape "
                             f"{list(t.shape)} with strides {list(t.stride())} (an expanded or overlapping view: "
                             f"pass a clone)")
        if t.requires_grad and t.is_leaf and torch.is_grad_enabled():
            raise ValueError(f"{n}: updated in place, so it cannot be a leaf tensor that requires grad "
                             f"(pass a detached copy, or call under torch.no_grad())")


def shares_memory(shape, strides) -> bool:
    """Whether a tensor of `shape` and `strides` may reach one memory location from two indices (torch has no
    public test: its own answers "too hard" for any view that is not dense). Its dims of size past 1, taken
    by stride, reach distinct locations when each one's stride passes the farthest offset the smaller ones reach
    together. Exact for the views that slicing, stepping, permuting and expanding make of a dense tensor; the
    rare interleaved layout that only as_strided makes (strides (2, 3) over sizes (3, 2)) it takes for an
    overlap. Plain Python on the sizes and strides, cheap (~2 µs for four dims), and traced by torch.compile:
    each dim against all the others rather than sorted(), which Dynamo cannot sort symbolic sizes with."""
    if 0 in shape:  # no elements
        return False
    dims = [(st, sz) for st, sz in zip(strides, shape) if sz > 1]
    for i, (stride, _) in enumerate(dims):
        reach = 0  # the farthest offset the dims before this one (by stride, then index) reach together
        for j, (st, sz) in enumerate(dims):
            if st < stride or (st == stride and j < i):
                reach += st * (sz - 1)
        if stride <= reach:
            return True
    return False


def expect_count(name: str, value, *, minimum: int = 1, what: str = "int") -> int:
    """`value` as an int ≥ minimum: any integer (numpy's too, as the peers take), not a bool."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return int(value)


def expect_number(name: str, value, *, positive: bool = False) -> float:
    """`value` as a float: a finite real number (a one-element tensor too), > 0 if `positive`."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex() and not value.is_meta:
        value = value.item()
    # -inf < value < inf (NaN fails it too) rather than math.isfinite: torch.compile(dynamic=True) traces a float
    # argument as a symbol, which math.isfinite cannot take and a comparison can (a guard)
    real = isinstance(value, (numbers.Real, torch.SymFloat)) and not isinstance(value, bool)
    if not real or not -math.inf < value < math.inf or (positive and value <= 0):
        raise ValueError(f"{name}: expected a finite{' positive' if positive else ''} number, got {value!r}")
    return float(value)


def _fmt(shape: tuple) -> str:
    return "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
