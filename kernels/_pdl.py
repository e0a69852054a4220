"""Programmatic dependent launch (PDL, Hopper and later): a kernel launched with it may start while
the kernel before it in the stream is still running.

A decode step is a chain of small kernels, each waiting for the one before. With PDL a kernel
calls `gdc_launch_dependents()` first (the next kernel may be scheduled), reads what the kernel
before it cannot be writing -- its weights, its layer's own recurrent state -- and then
`gdc_wait()`s for that kernel to finish (its writes then visible) before reading its inputs and
writing anything. The next kernel's weight loads so overlap this kernel's tail and the launch
gap. It is the caller's promise that no kernel just before writes what is read before the wait;
the ops take `pdl=True` only from callers that keep it (archdsl.model, fusion "pdl").

Inside a kernel: `if PDL: gdc_launch_dependents()` ... `if PDL: gdc_wait()`, PDL a constexpr
that is False under the interpreter and on cards before sm_90 (`pdl_ok`).

The chunked SSD forward (ssd/triton_ssd_chunked.py) uses PDL the other way round: each of its kernels
waits first and only then signals. Nothing overlaps but the launch, and no promise is needed.
"""
from __future__ import annotations

import torch
import triton

from ._dispatch import interpreting

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
    HAVE_GDC = True
except ImportError:  # an older Triton: the kernels keep PDL off, these are never traced
    HAVE_GDC = False

    @triton.jit
    def gdc_wait():
        pass

    @triton.jit
    def gdc_launch_dependents():
        pass

__all__ = ["gdc_wait", "gdc_launch_dependents", "pdl_ok"]


def pdl_ok(x: torch.Tensor, pdl: bool) -> bool:
    """Whether a launch on x's device can use PDL when the caller asks for it (pdl). Not while torch.compile
    traces: it reads which arguments a kernel writes from the kernel's code, and gdc_wait's inline PTX stops
    that reading (it then copies every argument as written, and warns). PDL's gain is the decode step's launch
    gaps, eager or replayed from a CUDA graph, neither of which torch.compile traces."""
    return (bool(pdl) and HAVE_GDC and x.is_cuda and not interpreting() and not torch.compiler.is_compiling()
            and _hopper_or_later(x.device.index))


_HOPPER: dict = {}  # device index → compute capability 9 or later; a dict, which torch.compile traces quietly


def _hopper_or_later(index) -> bool:  # asked three times a Mamba-2 layer per eager decode step
    if index not in _HOPPER:
        _HOPPER[index] = torch.cuda.get_device_capability(index)[0] >= 9
    return _HOPPER[index]
