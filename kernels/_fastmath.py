"""The exponential on the special-function unit alone, for compiled kernels.

`tl.exp(x)` compiles to x·log2(e) and PTX's `ex2.approx.f32`, which ptxas wraps for subnormal results:
a compare and two predicated multiplies around each MUFU.EX2, five instructions where two do. `exp_ftz`
asks for `ex2.approx.ftz.f32`: the same special-function op, its results below 2^-126 flushed to zero
(a decay that small is zero in every product it enters; every other result is the same bits).

Inline PTX does not run under the interpreter, which takes `tl.exp`. COMPILED is fixed at import,
as `triton.jit` fixes there whether a kernel is compiled or interpreted.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._dispatch import interpreting

COMPILED = tl.constexpr(not interpreting())


@triton.jit
def exp_ftz(x):
    """e^x of a float32 tensor; compiled, results below 2^-126 are 0."""
    if COMPILED:
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x * 1.4426950408889634],
                                         dtype=tl.float32, is_pure=True, pack=1)
    else:
        return tl.exp(x)
