"""Public decode GEMVs: with the RMSNorm before it folded in, and plain. The Triton kernels have no backward:
where autograd records and an input requires grad, the torch ops run, which it differentiates.

The projection after a pre-norm at decode, as one kernel: the residual add, the RMSNorm (over the
whole vector, or per group as Mamba-2's gated norm) and the matrix-vector product. The compiler
uses it for Mamba-2's in_proj (after the layer's add + RMSNorm) and out_proj (after the gated
norm) when decoding one row ("norm_gemv" in archdsl.model.fusions), and the plain `gemv` for Mamba's
x_proj and out_proj (its "step" fusion) and Mamba-2's out_proj past one row: a GEMV kernel at one row, a
split-K GEMM at 2-16 rows.
"""
from __future__ import annotations

import torch

from .._checks import expect_count, expect_flag, expect_float, expect_number, expect_same_device, expect_shape
from .._dispatch import backend_for, needs_grad, on_input_device
from .._host import dense
from .naive import rms_linear_naive

# The GEMV reads the weight once a row, so its time grows with the rows; past MAX_ROWS the separate norm and
# cuBLAS's GEMM (the weight read once) win. H200, bf16, graphs, µs at 1 / 2 / 4 / 16 rows, GEMV against the
# separate torch ops (2026-12-01): mamba2-2.7b's in_proj (2560 → 10576) 17.9 / 29.1 / 53.5 / 201.9 against
# 31.4 / 33.9 / 34.1 / 38.0, its out_proj (5120 → 2560) 7.1 / 11.5 / 21.0 / 75.3 against 19.0 / 21.2 / 21.8 /
# 28.6; mamba2-1.3b's the same way. With 16 (before), mamba2-2.7b's graphed decode step at batch 16 took 20.1 ms
# against mamba_ssm's 5.1 (benchmarks/peer_model.py --decode). A tensor-core kernel with the norm folded in (every
# row against a weight block) lost to the separate ops at every width: each program re-reads and re-normalises
# the whole batch of vectors (74.6 µs at 16 rows for that in_proj).
# One row since 2026-12-01 (was 2): the figures above weighed the GEMV against torch's norm (several kernels),
# but the model's unfolded path is one add_rmsnorm kernel and cuBLAS. benchmarks/peer_model.py --decode 2x512
# (64 layers, graphs; each figure its own process, with the peer timed in it): mamba-2.8b 3.391 → 2.917 ms a
# step (mamba_ssm 3.380 / 3.498), mamba2-2.7b 3.111 → 2.860 (3.454 / 3.536). At one row the fold gains: without
# it mamba2-2.7b took 2.778 ms, mamba-2.8b 2.489 (against 2.194 and 2.387 with it, another call).
MAX_ROWS = 1


@on_input_device
def rms_linear(x, weight, norm_weight, eps=1e-5, *, residual=None, groups=1, bias=None, pdl=False):
    """y = Linear(weight, bias)(norm_weight · RMSNorm(x + residual)) and h = x + residual.

    x, residual `[B, K]`; weight `[R, K]`; norm_weight `[K]`; bias `[R]` or None. The RMSNorm runs
    over each of `groups` equal groups of K channels, statistics in float32 (float64 for float64
    inputs). The Triton kernel applies 1/rms to the accumulated products, so it skips the rounding
    of the normalised vector to weight's dtype that separate ops (the torch path) do.
    Returns (y `[B, R]` in weight's dtype, h `[B, K]` in x's dtype; h is x when residual is None).
    pdl: launch the Triton kernel with programmatic dependent launch (kernels/_pdl.py): it reads
    weight's first block before waiting for the kernel before it, which must not write weight.
    """
    expect_shape("x", x, (None, None))
    batch, K = x.shape
    expect_shape("weight", weight, (None, K))
    expect_shape("norm_weight", norm_weight, (K,))
    expect_shape("residual", residual, (batch, K), optional=True)
    expect_shape("bias", bias, (weight.shape[0],), optional=True)
    what = f"a positive int dividing K = {K}"
    groups = expect_count("groups", groups, what=what)
    if K % groups:
        raise ValueError(f"groups: expected {what}, got {groups!r}")
    eps = expect_number("eps", eps, positive=True)
    expect_flag(pdl=pdl)
    expect_float(x=x, weight=weight, norm_weight=norm_weight, residual=residual, bias=bias)
    expect_same_device(x=x, weight=weight, norm_weight=norm_weight, residual=residual, bias=bias)
    return rms_linear_unchecked(x, weight, norm_weight, eps, residual, groups, bias, pdl)


@on_input_device
def rms_linear_unchecked(x, weight, norm_weight, eps, residual, groups, bias, pdl, triton=None):
    """rms_linear without its argument checks, for a caller that made the arguments itself: the Mamba /
    Mamba-2 decode step (in_proj with the layer's norm, out_proj with the gated norm), where the checks cost
    more host time than the launch's own arguments. The same paths, the same results. triton: whether
    backend_for(x) is "triton", where the caller has just asked it (the decode step, once a layer: each ask
    reads the environment), else None to ask here."""
    if triton is None:
        triton = backend_for(x) == "triton"
    if (triton and x.dtype != torch.float64 and weight.dtype != torch.float64
            and x.shape[0] <= MAX_ROWS and not needs_grad(x, weight, norm_weight, residual, bias)):
        from .triton_norm_gemv import rms_linear_triton
        with torch.no_grad():
            return rms_linear_triton(x, weight, norm_weight, eps, residual, groups, bias, pdl=pdl)
    return rms_linear_naive(x, weight, norm_weight, eps, residual, groups, bias)


GEMV_ROWS = 1  # the plain GEMV's rows; at 4 rows it loses to cuBLAS on out_proj's shape (19.7 against 9.3 µs)
# From GEMV_ROWS + 1 to SPLITK_ROWS rows, weights of at most SPLITK_MAX_N rows and SPLITK_MAX_K columns (the widths
# measured, up to mamba-2.8b's out_proj; larger weights stay with cuBLAS, whose bandwidth grows with the size):
# the split-K GEMM (triton_rows.py) in place of cuBLAS. H200, bf16, the graphed 64-layer step, one process, ms,
# cuBLAS → split-K (2026-12-02): mamba-2.8b (x_proj, out_proj) 2.920 → 2.622 at 2 rows, 3.015 → 2.703 at 4,
# 3.429 → 3.095 at 16; mamba2-2.7b (out_proj) 2.604 → 2.454 at 2, 4.061 → 3.878 at 16. The in_projs (N over
# 10000) stay with cuBLAS: alone the same kernel took 19.5-19.9 µs against cuBLAS's 18.8. x_proj's partial sums
# added in the step kernel instead of a reduce kernel lost in the graphed step (mamba-2.8b 3.095 → 3.226 ms at 16
# rows; 2.292 → 2.554 at one row, against the GEMV).
SPLITK_ROWS, SPLITK_MAX_N, SPLITK_MAX_K = 16, 2560, 5120


@on_input_device
def gemv(x, weight, bias=None, *, pdl=False):
    """y = x @ weight.T (+ bias) for decoding: one Triton kernel up to GEMV_ROWS rows, the split-K GEMM for
    a few more rows against a 16-bit weight of at most SPLITK_MAX_N × SPLITK_MAX_K (up to SPLITK_ROWS rows), else
    F.linear.

    x `[B, K]`; weight `[R, K]`; bias `[R]` or None (x and bias in any float dtype). Returns y `[B, R]` in
    weight's dtype, products summed in float32 (float64 for float64 weights). pdl as in rms_linear.
    """
    expect_shape("x", x, (None, None))
    batch, K = x.shape
    expect_shape("weight", weight, (None, K))
    expect_shape("bias", bias, (weight.shape[0],), optional=True)
    expect_flag(pdl=pdl)
    expect_float(x=x, weight=weight, bias=bias)
    expect_same_device(x=x, weight=weight, bias=bias)
    return gemv_unchecked(x, weight, bias, pdl)


@on_input_device
def gemv_unchecked(x, weight, bias, pdl, triton=None):
    """gemv without its argument checks, for a caller that made the arguments itself (the Mamba-2 decode step's
    out_proj where the gated norm is not folded in, the Mamba step's x_proj and out_proj); triton as in
    rms_linear_unchecked."""
    batch, K = x.shape
    if triton is None:
        triton = backend_for(x) == "triton"
    triton = triton and x.dtype != torch.float64 and not needs_grad(x, weight, bias)
    splitk = (triton and weight.dtype in (torch.bfloat16, torch.float16) and batch <= SPLITK_ROWS
              and weight.shape[0] <= SPLITK_MAX_N and K <= SPLITK_MAX_K)
    if triton and weight.dtype != torch.float64 and batch <= GEMV_ROWS:
        from .triton_norm_gemv import rms_linear_triton
        with torch.no_grad():
            return rms_linear_triton(x, weight, None, 1.0, None, 1, bias, pdl=pdl)[0]
    if splitk:
        from .triton_rows import rows_gemm_triton
        with torch.no_grad():
            return rows_gemm_triton(x, weight.contiguous(), dense(bias), pdl=pdl)
    return torch.nn.functional.linear(x.to(weight.dtype), weight, None if bias is None else bias.to(weight.dtype))
