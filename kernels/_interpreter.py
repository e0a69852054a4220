"""Triton's interpreter (TRITON_INTERPRET=1), corrected where archdsl's kernels rely on it.

The interpreter keeps bfloat16 values as their raw uint16 bits (numpy has no bfloat16), and two of its
operations on them differ from the compiled kernels (triton 3.9):
- `tl.dot` multiplies the raw bits: every dot of bfloat16 tiles returned garbage (~1e10 for 16 × 16 tiles of
  N(0, 1)), so ssd_scan and wkv6 on bfloat16 CPU tensors did too. The operands are widened to the float32
  numbers they are (exact) before the product, as the tensor cores read them.
- float32 → bfloat16 (`x.to(tl.bfloat16)`) truncates, where the GPU rounds to nearest even: results landed
  up to an ulp off torch's. It rounds to nearest even here too.
`fix_bf16` patches both once; a Triton without those builder methods is left as it is.
"""
from __future__ import annotations


def fix_bf16() -> None:
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    builder = getattr(interpreter, "InterpreterBuilder", None)
    dot, cast = getattr(builder, "create_dot", None), getattr(builder, "cast_impl", None)
    if dot is None or cast is None or getattr(dot, "_archdsl_bf16", False):
        return

    def as_f32(x):
        if x.dtype.scalar == tl.bfloat16 and x.data.dtype == np.uint16:
            return interpreter.TensorHandle((x.data.astype(np.uint32) << 16).view(np.float32), tl.float32)
        return x

    def create_dot(self, a, b, *rest):
        return dot(self, as_f32(a), as_f32(b), *rest)

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            bits = np.ascontiguousarray(src.data, dtype=np.float32).view(np.uint32)
            nearest = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # ties to even
            quiet_nan = ((bits >> 16) | 0x40).astype(np.uint16)
            return interpreter.TensorHandle(np.where(np.isnan(src.data), quiet_nan, nearest), tl.bfloat16)
        return cast(self, src, dst_type)

    create_dot._archdsl_bf16 = True
    builder.create_dot, builder.cast_impl = create_dot, cast_impl
