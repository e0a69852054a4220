"""Triton's interpreter (TRITON_INTERPRET=1), corrected where archdsl's kernels rely on it.

The interpreter keeps bfloat16 values as their raw uint16 bits and `tl.dot` multiplies those bits
(triton 3.9): every dot of bfloat16 tiles returned garbage (~1e10 for 16 × 16 tiles of N(0, 1)), so
ssd_scan and wkv6 on bfloat16 CPU tensors did too. `fix_bf16_dots` widens bfloat16 operands to the
float32 numbers they are (exact) before the product, as the tensor cores read them.
"""
from __future__ import annotations


def fix_bf16_dots() -> None:
    """Patch the interpreter's dot once; a Triton without that builder method is left as it is."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    builder = getattr(interpreter, "InterpreterBuilder", None)
    plain = getattr(builder, "create_dot", None)
    if plain is None or getattr(plain, "_archdsl_bf16", False):
        return

    def as_f32(x):
        if x.dtype.scalar == tl.bfloat16 and x.data.dtype == np.uint16:
            return interpreter.TensorHandle((x.data.astype(np.uint32) << 16).view(np.float32), tl.float32)
        return x

    def create_dot(self, a, b, *rest):
        return plain(self, as_f32(a), as_f32(b), *rest)

    create_dot._archdsl_bf16 = True
    builder.create_dot = create_dot
