"""Test-wide settings.

- Under CI (CI=true) hypothesis draws the same examples every run, so a red build is reproducible;
  locally it explores new ones each time.
- Without a GPU the Triton kernels run in Triton's interpreter (set before anything imports triton:
  its standard library is built interpreted or compiled at import).
- With ARCHDSL_RECORD_LAUNCHES=FILE (make test) every interpreted launch is recorded, for
  tests/kernels/sm90.py to compile for sm_90 afterwards.
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

if os.environ.get("ARCHDSL_RECORD_LAUNCHES"):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "kernels"))
    from sm90 import record_launches

    record_launches(os.environ["ARCHDSL_RECORD_LAUNCHES"])
