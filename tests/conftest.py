"""Test-wide settings.

- Under CI (CI=true) hypothesis draws the same examples every run, so a red build is reproducible;
  locally it explores new ones each time.
- Without a GPU the Triton kernels run in Triton's interpreter (set before anything imports triton:
  its standard library is built interpreted or compiled at import).
- Triton's interpreter multiplies bfloat16 dot operands as their raw uint16 bits (triton 3.9); the
  interpreted dots here read them as the numbers they are, so kernels that round operands to
  bfloat16 are checked on the CPU too.
- Every interpreted launch fails if it passes one tensor twice (tests/kernels/sm90.py, shared_tensors);
  with ARCHDSL_RECORD_LAUNCHES=FILE (make test) each is also recorded, for tests/kernels/sm90.py to
  compile for sm_90 afterwards.
"""
import os
import sys

import torch
from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _interpreted_bf16_dots() -> None:
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    plain = builder.create_dot

    def as_f32(x):
        if x.dtype.scalar == tl.bfloat16 and x.data.dtype == np.uint16:
            return interpreter.TensorHandle((x.data.astype(np.uint32) << 16).view(np.float32), tl.float32)
        return x

    builder.create_dot = lambda self, a, b, *rest: plain(self, as_f32(a), as_f32(b), *rest)


if os.environ.get("TRITON_INTERPRET") == "1":
    _interpreted_bf16_dots()

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "kernels"))
    from sm90 import watch_launches

    watch_launches(os.environ.get("ARCHDSL_RECORD_LAUNCHES"))
