"""Triton residual add + RMSNorm: one row per program, the row read once, h and out written once.

    h = x + r;  out = w · (h · rsqrt(mean(h²) + eps))      (statistics in float32)

The backward is one kernel too, from the saved h and rstd, two programs a multiprocessor each walking a run
of rows (its part of dw kept in registers, the parts summed after):

    n = h · rstd;  dn = dout · w;  dx = rstd · (dn - n · mean(dn · n)) + dh;  dw = Σ_rows dout · n

(dh: the gradient reaching h itself, from the residual stream; the residual's gradient is dx too.)
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._host import cdiv, next_pow2, row_warps, sm_count


@triton.jit
def _add_rmsnorm_fwd(X, R, W, OUT, H, RSTD, N, eps, stride_x, stride_r, stride_o, stride_h,
                     HAS_R: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_R:  # summed in float32 and rounded to x's dtype once, as a 16-bit add does (and as the interpreter,
        # which adds bfloat16's raw bits, does not)
        r = tl.load(R + row * stride_r + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
    tl.store(H + row * stride_h + cols, x, mask=mask)
    h = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / N + eps)
    tl.store(RSTD + row, rstd)
    n = (h * rstd).to(OUT.dtype.element_ty).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + row * stride_o + cols, (n * w).to(OUT.dtype.element_ty), mask=mask)


def add_rmsnorm_fwd(x, residual, weight, eps, out_dtype=None):
    """x, residual [..., N] → (out in out_dtype (default x's and weight's promoted), h, rstd [rows] float32)."""
    shape = x.shape
    N = shape[-1]
    x2 = x.reshape(-1, N).contiguous()
    r2 = residual.reshape(-1, N).contiguous() if residual is not None else None
    rows = x2.shape[0]
    h = torch.empty_like(x2)
    out = torch.empty(rows, N, device=x.device, dtype=out_dtype or torch.promote_types(x.dtype, weight.dtype))
    rstd = torch.empty(rows, device=x.device, dtype=torch.float32)
    BLOCK = next_pow2(N)
    if rows:
        _add_rmsnorm_fwd[(rows,)](x2, r2, weight.contiguous(), out, h, rstd, N, eps, x2.stride(0),
                                  0 if r2 is None else r2.stride(0), out.stride(0), h.stride(0),
                                  HAS_R=residual is not None, BLOCK=BLOCK,
                                  num_warps=row_warps(BLOCK))
    return out.view(*shape[:-1], N), h.view(shape), rstd


@triton.jit
def _add_rmsnorm_bwd(DOUT, DH, H, RSTD, W, DX, DW, ROWS, N, stride_do, stride_dh, stride_h, stride_dx, rows_per,
                     HAS_DH: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(rows_per):
        row = pid.to(tl.int64) * rows_per + i
        if row < ROWS:
            n = tl.load(H + row * stride_h + cols, mask=mask, other=0.0).to(tl.float32) * tl.load(RSTD + row)
            dout = tl.load(DOUT + row * stride_do + cols, mask=mask, other=0.0).to(tl.float32)
            dw += dout * n.to(DOUT.dtype.element_ty).to(tl.float32)  # the forward rounds n before the weight
            dn = dout * w
            dx = tl.load(RSTD + row) * (dn - n * (tl.sum(dn * n, axis=0) / N))
            if HAS_DH:
                dx += tl.load(DH + row * stride_dh + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
    tl.store(DW + pid.to(tl.int64) * N + cols, dw, mask=mask)


def add_rmsnorm_bwd(dout, dh, h, rstd, weight):
    """dout [..., N] (out's gradient), dh (h's own gradient, or None), the forward's h and rstd →
    (dx in h's dtype and shape, dw in weight's dtype)."""
    N = h.shape[-1]
    h2, do2 = h.reshape(-1, N), dout.reshape(-1, N).contiguous()
    dh2 = dh.reshape(-1, N).contiguous() if dh is not None else None
    rows = h2.shape[0]
    dx = torch.empty_like(h2)
    rows_per = max(1, cdiv(rows, 2 * sm_count(h.device)))  # 2 programs an SM (swept 1-16), each many rows
    progs = cdiv(rows, rows_per) if rows else 0
    dw = torch.empty(progs, N, device=h.device, dtype=torch.float32)  # no rows: sums to zeros
    BLOCK = next_pow2(N)
    if rows:
        _add_rmsnorm_bwd[(progs,)](do2, dh2, h2, rstd, weight.contiguous(), dx, dw, rows, N, do2.stride(0),
                                   0 if dh2 is None else dh2.stride(0), h2.stride(0), dx.stride(0), rows_per,
                                   HAS_DH=dh2 is not None, BLOCK=BLOCK, num_warps=row_warps(BLOCK))
    return dx.view(h.shape), dw.sum(0).to(weight.dtype)


class AddRMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, eps, out_dtype=None):
        out, h, rstd = add_rmsnorm_fwd(x, residual, weight, eps, out_dtype)
        ctx.save_for_backward(h, rstd, weight)
        ctx.has_residual = residual is not None
        return out, h

    @staticmethod
    def backward(ctx, dout, dh):
        h, rstd, weight = ctx.saved_tensors
        dx, dw = add_rmsnorm_bwd(dout, dh, h, rstd, weight)
        return dx, (dx if ctx.has_residual else None), dw, None, None
