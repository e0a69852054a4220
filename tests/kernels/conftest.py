"""Kernel tests run the Triton code through Triton's interpreter when no GPU is present."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

if os.environ.get("ARCHDSL_RECORD_LAUNCHES") and os.environ.get("TRITON_INTERPRET") == "1":
    from sm90 import record_launches  # tests/kernels/sm90.py: compile what the interpreter ran, for sm_90

    record_launches(os.environ["ARCHDSL_RECORD_LAUNCHES"])
