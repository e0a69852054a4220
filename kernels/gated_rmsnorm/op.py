"""Public gated RMSNorm: Mamba-2's norm(y · silu(z)) before out_proj (mamba_ssm's `RMSNormGated` with
norm_before_gate=False, HF `MambaRMSNormGated`), one kernel each way instead of nine elementwise passes."""
from __future__ import annotations

import torch

from .._checks import expect_count, expect_float, expect_number, expect_same_device, expect_shape
from .._dispatch import apply, autocast_dtype, backend_for, on_input_device
from .naive import gated_rmsnorm_naive


def _check(x, z, weight, eps, groups, weight_name="weight"):
    """(eps as a float, groups as an int); weight_name: the norm weight's argument (gated_rmsnorm_linear's is
    norm_weight)."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.layout != torch.strided:
        raise ValueError("x: expected a dense tensor [..., N]")
    N = x.shape[-1]
    expect_shape("z", z, tuple(x.shape))
    expect_shape(weight_name, weight, (N,))
    what = f"a positive int dividing N={N}"
    groups = expect_count("groups", groups, what=what)
    if N % groups:
        raise ValueError(f"groups: expected {what}, got {groups!r}")
    expect_float(**{"x": x, "z": z, weight_name: weight})
    expect_same_device(**{"x": x, "z": z, weight_name: weight})
    return expect_number("eps", eps, positive=True), groups


@on_input_device
def gated_rmsnorm(x, z, weight, eps=1e-5, groups=1):
    """out = weight · n, n = h / sqrt(mean(h²) + eps) over each group of N / groups channels, h = x · silu(z).

    x, z: `[..., N]`; weight: `[N]`; groups divides N. Statistics in float32 (float64 for float64 inputs);
    returns `[..., N]` in x's dtype. Triton on CUDA (and under TRITON_INTERPRET=1), forward and backward;
    plain torch on the CPU.
    """
    eps, groups = _check(x, z, weight, eps, groups)
    if backend_for(x) == "triton" and x.dtype != torch.float64:
        from .triton_gated_rmsnorm import GatedRMSNormFn
        return apply(GatedRMSNormFn, x, z, weight, float(eps), groups)
    return gated_rmsnorm_naive(x, z, weight, eps, groups)


@on_input_device
def gated_rmsnorm_linear(x, z, norm_weight, weight, bias=None, eps=1e-5, groups=1):
    """F.linear(gated_rmsnorm(x, z, norm_weight, eps, groups), weight, bias): Mamba-2's gated norm and
    out_proj, for training with less memory. x, z `[..., N]`; norm_weight `[N]`; weight `[R, N]`; bias `[R]`
    or None → `[..., R]`. On the Triton path the norm's output is not kept for the backward, whose norm
    kernel writes it again (N values a row less; the same gradients); elsewhere the two ops in turn.
    Returns x's dtype; a weight or bias of another dtype meets the norm's output in the widest of them (the two
    ops in turn)."""
    eps, groups = _check(x, z, norm_weight, eps, groups, "norm_weight")
    expect_shape("weight", weight, (None, x.shape[-1]))
    expect_shape("bias", bias, (weight.shape[0],), optional=True)
    expect_float(weight=weight, bias=bias)
    expect_same_device(x=x, weight=weight, bias=bias)
    # operands of mixed dtypes, which F.linear refuses (the fused backward too, under autocast): the two ops in turn
    mixed = weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype)
    # under autocast, too: the fused Function's F.linear would run in autocast's dtype and its backward, which
    # autograd runs outside autocast, in the operands' own
    if backend_for(x) == "triton" and x.dtype != torch.float64 and not mixed and autocast_dtype(x.device.type) is None:
        from .triton_gated_rmsnorm import GatedRMSNormLinearFn
        return apply(GatedRMSNormLinearFn, x, z, norm_weight, float(eps), groups, weight, bias)
    if not mixed:
        return torch.nn.functional.linear(gated_rmsnorm_naive(x, z, norm_weight, eps, groups), weight, bias)
    wide = torch.promote_types(x.dtype, weight.dtype)
    wide = wide if bias is None else torch.promote_types(wide, bias.dtype)
    n = gated_rmsnorm(x, z, norm_weight, eps, groups)
    return torch.nn.functional.linear(n.to(wide), weight.to(wide), None if bias is None else bias.to(wide)).to(x.dtype)
