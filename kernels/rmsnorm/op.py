"""Public fused residual add + RMSNorm (the pre-norm of the next sublayer, mamba_ssm's
`rms_norm_fn(..., residual=, prenorm=True)`)."""
from __future__ import annotations

import torch

from .._checks import expect_float, expect_number, expect_same_device, expect_shape
from .._dispatch import apply, backend_for, on_input_device
from .naive import add_rmsnorm_naive


@on_input_device
def add_rmsnorm(x, residual, weight, eps=1e-5, out_dtype=None):
    """h = x + residual, out = weight · h / sqrt(mean(h²) + eps) over the last dim; returns (out, h).

    x, residual: `[..., N]` (residual may be None: plain RMSNorm); weight: `[N]`. Statistics in
    float32 (float64 for float64 inputs); h in x's dtype; out in `out_dtype` (default: x's and weight's
    promoted), the normalised h rounded to it before the weight, as the model's Norm does (HF's RMSNorm rounds
    to its input's dtype: the same unless weight is wider than x). The model passes out_dtype: a float32 residual
    stream x with bf16 weights gives h float32, out bf16. One Triton kernel on CUDA (and under
    TRITON_INTERPRET=1), plain torch on the CPU.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.layout != torch.strided:
        raise ValueError("x: expected a dense tensor [..., N]")
    N = x.shape[-1]
    expect_shape("weight", weight, (N,))
    if residual is not None:
        expect_shape("residual", residual, tuple(x.shape))
    expect_float(x=x, residual=residual, weight=weight)
    expect_same_device(x=x, residual=residual, weight=weight)
    eps = expect_number("eps", eps, positive=True)
    if out_dtype is not None and (not isinstance(out_dtype, torch.dtype) or not out_dtype.is_floating_point):
        raise ValueError(f"out_dtype: expected a floating torch.dtype or None, got {out_dtype!r}")
    backend = backend_for(x)
    if backend == "triton":
        from .triton_rmsnorm import AddRMSNormFn
        if x.dtype != torch.float64:
            return apply(AddRMSNormFn, x, residual, weight, float(eps), out_dtype)
    return add_rmsnorm_naive(x, residual, weight, eps, out_dtype)
