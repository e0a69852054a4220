"""The compiler's fusions, each with a name, switched on or off per model.

    compile(spec, fuse=True)                 every fusion (the default)
    compile(spec, fuse=False)                none: every op on its own
    compile(spec, fuse={"qkv", "step"})      exactly those (also "qkv,step")
    model.set_fuse(...)                      the same values, later

Every fusion computes the same function on or off (tests/model/test_fusions.py);
benchmarks/fusions.py times each on against off. Two more speed-ups are whole-model switches
outside `fuse`: generate replays the decode step from a CUDA graph on a card (compile's cuda_graph, on
by default), and the model runs under torch.compile(model).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Union

from ..errors import ArchDSLError, did_you_mean

FUSIONS: dict[str, str] = {
    "add_norm": "the residual add and the next RMSNorm as one Triton kernel forward and one backward (where the "
                "Triton kernels run)",
    "qkv": "attention's q, k and v projections as one GEMM over their packed weights (inference)",
    "epilogue": "Mamba / Mamba-2: the D skip and the silu(z) gate inside the scan kernel, not after it in torch",
    "step": "Mamba / Mamba-2 decode step as one or two Triton kernels between the projections, and Mamba's "
            "x_proj and out_proj at one row by a Triton GEMV (Triton only)",
    "norm_gemv": "Mamba / Mamba-2 decode (a few rows, with \"step\"): the residual add and RMSNorm inside "
                 "in_proj's GEMV, and Mamba-2's gated RMSNorm inside out_proj's, one Triton kernel each (Triton only)",
    "pdl": "Mamba / Mamba-2 decode: its Triton kernels launched with programmatic dependent launch, each reading "
           "its weights (and the step kernels their states) while the kernel before it ends (sm_90 and later)",
    "recompute": "Mamba / Mamba-2 training: the conv's output (and Mamba's delta) kept for the backward as "
                 "recipes and rebuilt there from tensors kept anyway; Mamba-2's scan keeps no chunk buffers and "
                 "out_proj not the gated norm's output, all formed again in the backward (Mamba 2·d_inner "
                 "values a token a layer less, Mamba-2 its conv width + d_inner·(1 + d_state / 128) + "
                 "2·nheads + ngroups·128; "
                 "mamba_ssm's checkpoint_lvl=1 and its Mamba-2 split-conv path)",
}

Fuse = Union[bool, str, Iterable[str]]


def resolve_fuse(fuse: Fuse) -> frozenset[str]:
    """The fusion names that `fuse` switches on: True → all of FUSIONS, False → none, a set (or
    any iterable) of names → exactly those, a string → its comma-separated names. An unknown name
    or another type raises ArchDSLError listing the valid names."""
    if isinstance(fuse, bool):
        return frozenset(FUSIONS) if fuse else frozenset()
    if isinstance(fuse, str):
        names = [n.strip() for n in fuse.split(",") if n.strip()]
    elif isinstance(fuse, Iterable) and not isinstance(fuse, (bytes, bytearray)):
        names = list(fuse)
    else:
        raise ArchDSLError(f"fuse: expected True, False or a set of fusion names, got {fuse!r}",
                           hint=f"fusions: {', '.join(FUSIONS)}")
    for n in names:
        if not isinstance(n, str) or n not in FUSIONS:
            close = did_you_mean(n, FUSIONS) if isinstance(n, str) else ""
            raise ArchDSLError(f"fuse: unknown fusion {n!r} (valid: {', '.join(FUSIONS)})",
                               hint=close if close.startswith("did you mean") else "")  # else the list again
    return frozenset(names)


class Fusable:
    """Mixin of a module with fusions: FUSES names the ones it has, `fused` holds those switched
    on (set by ArchModel.set_fuse). `module.fuse = value` takes what compile(fuse=) takes."""

    FUSES: tuple[str, ...] = ()
    fused: frozenset[str] = frozenset()

    @property
    def fuse(self) -> bool:
        """Whether any of this module's fusions is on."""
        return bool(self.fused)

    @fuse.setter
    def fuse(self, value: Fuse) -> None:
        self.fused = resolve_fuse(value) & frozenset(self.FUSES)
