"""Public gated RMSNorm: Mamba-2's norm(y · silu(z)) before out_proj (mamba_ssm's `RMSNormGated` with
norm_before_gate=False, HF `MambaRMSNormGated`), one kernel each way instead of nine elementwise passes."""
from __future__ import annotations

import torch

from .._checks import expect_float, expect_number, expect_same_device, expect_shape
from .._dispatch import apply, backend_for
from .naive import gated_rmsnorm_naive


def gated_rmsnorm(x, z, weight, eps=1e-5, groups=1):
    """out = weight · n, n = h / sqrt(mean(h²) + eps) over each group of N / groups channels, h = x · silu(z).

    x, z: `[..., N]`; weight: `[N]`; groups divides N. Statistics in float32 (float64 for float64 inputs);
    returns `[..., N]` in x's dtype. Triton on CUDA (and under TRITON_INTERPRET=1), forward and backward;
    plain torch on the CPU.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError("x: expected a tensor [..., N]")
    N = x.shape[-1]
    expect_shape("z", z, tuple(x.shape))
    expect_shape("weight", weight, (N,))
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1 or N % groups:
        raise ValueError(f"groups: expected a positive int dividing N={N}, got {groups!r}")
    expect_float(x=x, z=z, weight=weight)
    expect_same_device(x=x, z=z, weight=weight)
    eps = expect_number("eps", eps, positive=True)
    if backend_for(x) == "triton" and x.dtype != torch.float64:
        from .triton_gated_rmsnorm import GatedRMSNormFn
        return apply(GatedRMSNormFn, x, z, weight, float(eps), groups)
    return gated_rmsnorm_naive(x, z, weight, eps, groups)
