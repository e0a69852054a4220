"""Public fused decode steps of the Mamba mixers (the Triton kernels have no backward).

Triton on CUDA (and on the CPU under TRITON_INTERPRET=1 with ARCHDSL_KERNELS=triton); otherwise, for
float64, and wherever an input needs a gradient, the plain torch references of naive.py, which autograd
differentiates.
"""
from __future__ import annotations

import torch

from .._checks import expect_flag, expect_float, expect_in_place, expect_number, expect_same_device, expect_shape
from .._dispatch import backend_for, needs_grad, on_input_device
from .naive import conv_step_naive, mamba2_step_naive, mamba_ssm_step_naive

_GATES = (None, "silu", "norm", "pre_norm")


def _triton(args, x, *sized, chosen=None):
    """Whether the Triton kernels take a step of these args: not for float64, nor where autograd records and a
    tensor among args requires grad (they have no backward). chosen: backend_for(x, *sized) == "triton" where
    the caller has asked it, else None to ask here."""
    return ((backend_for(x, *sized) == "triton" if chosen is None else chosen) and x.dtype != torch.float64
            and not needs_grad(*args))


@on_input_device
def mamba2_step_fused(zxbcdt, conv_state, conv_weight, conv_bias, ssm_state, A_log, D=None, dt_bias=None,
                      norm_weight=None, gate="norm", norm_eps=1e-5, dt_floor=0.0, pdl=False):
    """One Mamba-2 decode token from the in_proj output to the out_proj input.

    zxbcdt `[B, E + conv_dim + H]` (z, xBC, dt, HF Mamba2Mixer order); conv_state `[B, conv_dim, K-1]`
    and ssm_state `[B, H, P, N]` are updated in place; conv_weight `[conv_dim, K]`, conv_bias
    `[conv_dim]`; A_log, D, dt_bias `[H]`; E = H·P, conv_dim = E + 2·G·N.
    dt = max(softplus(dt + dt_bias), dt_floor); h = exp(-dt·exp(A_log))·h + dt·x·B; y = C·h + D·x;
    gate None: y; "silu": y·silu(z); "norm": RMSNorm over each group of E/G channels of y·silu(z),
    times norm_weight `[E]`; "pre_norm": y·silu(z) before that norm, in float32 (float64 for float64),
    for a caller that folds the norm into out_proj (norm_gemv.rms_linear). Returns `[B, E]` in
    zxbcdt's dtype (float32 for "pre_norm"). pdl: launch the Triton kernel with programmatic
    dependent launch (kernels/_pdl.py): the weights and both states are read before waiting for the
    kernel before it, which must not write them (a no-op off sm_90+ and off Triton).
    """
    expect_shape("ssm_state", ssm_state, (None, None, None, None))
    batch, H, P, N = ssm_state.shape
    E = H * P
    expect_shape("conv_state", conv_state, (batch, None, None))
    conv_dim, K1 = conv_state.shape[1:]
    G2N = conv_dim - E
    if N < 1:  # no states: no group count G makes conv_dim = E + 2·G·N
        raise ValueError(f"ssm_state: expected N >= 1 states, got {list(ssm_state.shape)}")
    if G2N <= 0 or G2N % (2 * N) or H % (G2N // (2 * N)):
        raise ValueError(f"conv_state: expected [{batch}, {E} + 2·G·{N}, K-1] with G dividing {H}, "
                         f"got {list(conv_state.shape)}")
    if K1 < 1:
        raise ValueError(f"conv_state: expected K-1 >= 1 columns, got {list(conv_state.shape)}")
    expect_shape("zxbcdt", zxbcdt, (batch, E + conv_dim + H))
    expect_shape("conv_weight", conv_weight, (conv_dim, K1 + 1))
    expect_shape("conv_bias", conv_bias, (conv_dim,), optional=True)
    for name, t in (("A_log", A_log), ("D", D), ("dt_bias", dt_bias)):
        expect_shape(name, t, (H,), optional=name != "A_log")
    if gate not in _GATES:
        raise ValueError(f"gate: expected one of {_GATES}, got {gate!r}")
    expect_shape("norm_weight", norm_weight, (E,), optional=gate not in ("norm", "pre_norm"))
    expect_float(zxbcdt=zxbcdt, conv_state=conv_state, conv_weight=conv_weight, conv_bias=conv_bias,
                 ssm_state=ssm_state, A_log=A_log, D=D, dt_bias=dt_bias, norm_weight=norm_weight)
    expect_same_device(zxbcdt=zxbcdt, conv_state=conv_state, conv_weight=conv_weight, conv_bias=conv_bias,
                       ssm_state=ssm_state, A_log=A_log, D=D, dt_bias=dt_bias, norm_weight=norm_weight)
    expect_in_place(conv_state=conv_state, ssm_state=ssm_state)
    norm_eps = expect_number("norm_eps", norm_eps, positive=True)
    dt_floor = expect_number("dt_floor", dt_floor)
    expect_flag(pdl=pdl)
    return mamba2_step_unchecked(zxbcdt, conv_state, conv_weight, conv_bias, ssm_state, A_log, D, dt_bias,
                                 norm_weight, gate, norm_eps, dt_floor, pdl)


@on_input_device
def mamba2_step_unchecked(zxbcdt, conv_state, conv_weight, conv_bias, ssm_state, A_log, D, dt_bias, norm_weight,
                          gate, norm_eps, dt_floor, pdl, triton=None):
    """mamba2_step_fused without its argument checks, for a caller that made the arguments itself: the Mamba-2
    decode step, where the checks (~20 shapes, dtypes, devices, in-place states) took more host time than the
    launches' own arguments. The same paths, the same results. triton: whether backend_for(zxbcdt, ssm_state) is
    "triton", where the caller has just asked it (the decode step, once a layer), else None to ask here."""
    args = (zxbcdt, conv_state, conv_weight, conv_bias, ssm_state, A_log, D, dt_bias,
            norm_weight if gate in ("norm", "pre_norm") else None, gate, norm_eps, dt_floor)
    if _triton(args, zxbcdt, ssm_state, chosen=triton):
        from .triton_fused_step import mamba2_step_triton
        return mamba2_step_triton(*args, pdl=pdl)
    return mamba2_step_naive(*args)


@on_input_device
def mamba_conv_step(x, conv_state, weight, bias=None, pdl=False):
    """silu(depthwise causal conv) of one token: x `[B, D]` (rows may be strided), conv_state
    `[B, D, K-1]` shifted in place, weight `[D, K]`, bias `[D]` → `[B, D]` in x's dtype. pdl: weight, bias
    and conv_state read before waiting for the kernel before (which must not write them), as in
    mamba2_step_fused."""
    expect_shape("x", x, (None, None))
    batch, dim = x.shape
    expect_shape("conv_state", conv_state, (batch, dim, None))
    if conv_state.shape[2] < 1:
        raise ValueError(f"conv_state: expected K-1 >= 1 columns, got {list(conv_state.shape)}")
    expect_shape("weight", weight, (dim, conv_state.shape[2] + 1))
    expect_shape("bias", bias, (dim,), optional=True)
    expect_float(x=x, conv_state=conv_state, weight=weight, bias=bias)
    expect_same_device(x=x, conv_state=conv_state, weight=weight, bias=bias)
    expect_in_place(conv_state=conv_state)
    expect_flag(pdl=pdl)
    return mamba_conv_step_unchecked(x, conv_state, weight, bias, pdl)


@on_input_device
def mamba_conv_step_unchecked(x, conv_state, weight, bias, pdl, triton=None):
    """mamba_conv_step without its argument checks, for the Mamba decode step (as mamba2_step_unchecked);
    triton as there, for backend_for(x)."""
    if _triton((x, conv_state, weight, bias), x, chosen=triton):
        from .triton_fused_step import conv_step_triton
        return conv_step_triton(x, conv_state, weight, bias, pdl=pdl)
    return conv_step_naive(x, conv_state, weight, bias)


@on_input_device
def mamba_ssm_step_fused(state, u, x_dbl, dt_proj_weight, A_log, dt_bias=None, D=None, z=None,
                         inner_norms="none", dt_norm_weight=None, b_norm_weight=None, c_norm_weight=None,
                         inner_norm_eps=1e-6, pdl=False):
    """One Mamba-1 decode token after x_proj: state `[B, E, N]` updated in place; u, z `[B, E]`;
    x_dbl `[B, R + 2N]` = (dt_low, B, C); dt_proj_weight `[E, R]`; A_log `[E, N]`; dt_bias, D `[E]`.

    inner_norms "weighted" / "unweighted" RMS-normalise dt_low, B, C first (Jamba / Falcon Mamba);
    dt = softplus(dt_proj_weight · dt_low + dt_bias); y = (C·h + D·u)·silu(z). Returns `[B, E]`.
    pdl: state and A_log read before waiting for the kernel before (which must not write them).
    """
    expect_shape("state", state, (None, None, None))
    batch, E, N = state.shape
    expect_shape("dt_proj_weight", dt_proj_weight, (E, None))
    R = dt_proj_weight.shape[1]
    expect_shape("u", u, (batch, E))
    expect_shape("z", z, (batch, E), optional=True)
    expect_shape("x_dbl", x_dbl, (batch, R + 2 * N))
    expect_shape("A_log", A_log, (E, N))
    expect_shape("dt_bias", dt_bias, (E,), optional=True)
    expect_shape("D", D, (E,), optional=True)
    if inner_norms not in ("none", "weighted", "unweighted"):
        raise ValueError(f"inner_norms: expected none, weighted or unweighted, got {inner_norms!r}")
    w = inner_norms == "weighted"
    for name, t, n in (("dt_norm_weight", dt_norm_weight, R), ("b_norm_weight", b_norm_weight, N),
                       ("c_norm_weight", c_norm_weight, N)):
        expect_shape(name, t, (n,), optional=not w)
    tensors = dict(state=state, u=u, x_dbl=x_dbl, dt_proj_weight=dt_proj_weight, A_log=A_log, dt_bias=dt_bias, D=D,
                   z=z, dt_norm_weight=dt_norm_weight, b_norm_weight=b_norm_weight, c_norm_weight=c_norm_weight)
    expect_float(**tensors)
    expect_same_device(**tensors)
    expect_in_place(state=state)
    inner_norm_eps = expect_number("inner_norm_eps", inner_norm_eps, positive=True)
    expect_flag(pdl=pdl)
    return mamba_ssm_step_unchecked(state, u, x_dbl, dt_proj_weight, A_log, dt_bias, D, z, inner_norms,
                                    dt_norm_weight, b_norm_weight, c_norm_weight, inner_norm_eps, pdl)


@on_input_device
def mamba_ssm_step_unchecked(state, u, x_dbl, dt_proj_weight, A_log, dt_bias, D, z, inner_norms, dt_norm_weight,
                             b_norm_weight, c_norm_weight, inner_norm_eps, pdl, triton=None):
    """mamba_ssm_step_fused without its argument checks, for the Mamba decode step (as mamba2_step_unchecked);
    triton as there, for backend_for(u, state)."""
    w = inner_norms == "weighted"
    norms = (dt_norm_weight, b_norm_weight, c_norm_weight) if w else (None, None, None)
    args = (state, u, x_dbl, dt_proj_weight, A_log, dt_bias, D, z, inner_norms, *norms, inner_norm_eps)
    if _triton(args, u, state, chosen=triton):
        from .triton_fused_step import mamba_ssm_step_triton
        return mamba_ssm_step_triton(*args, pdl=pdl)
    return mamba_ssm_step_naive(*args)
