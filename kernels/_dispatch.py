"""Which implementation of an op runs: Triton on CUDA, chunked torch on the CPU.

`ARCHDSL_KERNELS=triton|torch|naive` overrides the choice for every op; with
`TRITON_INTERPRET=1` set, `triton` also runs on CPU tensors (through Triton's interpreter),
which is how CI exercises the Triton code.
"""
from __future__ import annotations

import os

import torch

BACKENDS = ("triton", "torch", "naive")


def backend_for(x: torch.Tensor) -> str:
    """The backend an op should use for tensor `x`."""
    forced = os.environ.get("ARCHDSL_KERNELS", "").strip().lower()
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"ARCHDSL_KERNELS={forced!r}: expected one of {', '.join(BACKENDS)}")
        if forced == "triton" and x.device.type != "cuda" and not interpreting():
            raise ValueError("ARCHDSL_KERNELS=triton on a CPU tensor needs TRITON_INTERPRET=1")
        return forced
    return "triton" if x.device.type == "cuda" else "torch"


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
