"""Triton gated RMSNorm: one program a (row, group) forward; the backward a block of rows per program,
the weight's gradient summed over them in registers, then over programs by torch.

    h = x · silu(z);  r = rsqrt(mean_group(h²) + eps);  n = h · r;  out = w · n
    backward (dn = dout · w):  dh = r · (dn - n · mean_group(dn · n));  dx = dh · silu(z)
                               dz = dh · x · σ(z) · (1 + z · (1 - σ(z)));  dw = Σ_rows dout · n
The forward reads x, z once and writes out and r; the backward reads x, z, dout and r and recomputes h.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._host import cdiv, next_pow2, row_warps, sm_count


@triton.jit
def _gated_fwd(X, Z, W, OUT, RSTD, NG, G, eps, stride_x, stride_z, BLOCK: tl.constexpr):
    row, g = tl.program_id(0).to(tl.int64), tl.program_id(1)
    cols = g * NG + tl.arange(0, BLOCK)
    mask = tl.arange(0, BLOCK) < NG
    off = row * NG * G + cols
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(Z + row * stride_z + cols, mask=mask, other=0.0).to(tl.float32)
    h = x * z * tl.sigmoid(z)
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / NG + eps)
    tl.store(RSTD + row * G + g, rstd)
    n = (h * rstd).to(OUT.dtype.element_ty).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + off, (n * w).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _gated_bwd(X, Z, W, DOUT, RSTD, DX, DZ, DW, ROWS, NG, G, stride_x, stride_z,
               rows_per, BLOCK: tl.constexpr):
    pid, g = tl.program_id(0), tl.program_id(1)
    cols = g * NG + tl.arange(0, BLOCK)
    mask = tl.arange(0, BLOCK) < NG
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(rows_per):
        row = pid.to(tl.int64) * rows_per + i
        if row < ROWS:
            off = row * NG * G + cols
            x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
            z = tl.load(Z + row * stride_z + cols, mask=mask, other=0.0).to(tl.float32)
            dout = tl.load(DOUT + off, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + row * G + g)
            sz = tl.sigmoid(z)
            silu = z * sz
            n = x * silu * rstd
            dw += dout * n.to(DX.dtype.element_ty).to(tl.float32)
            dn = dout * w
            dh = rstd * (dn - n * (tl.sum(dn * n, axis=0) / NG))
            tl.store(DX + off, (dh * silu).to(DX.dtype.element_ty), mask=mask)
            tl.store(DZ + off, (dh * x * sz * (1.0 + z * (1.0 - sz))).to(DZ.dtype.element_ty), mask=mask)
    tl.store(DW + pid.to(tl.int64) * NG * G + cols, dw, mask=mask)


def _rows(t):
    """t [..., N] as [rows, N] with unit column stride: a view where one exists (the gate z is a slice of
    in_proj's output, its rows strided), else a copy."""
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


class GatedRMSNormFn(torch.autograd.Function):
    """(x, z, weight, eps, groups) → out, x's shape and dtype."""

    @staticmethod
    def forward(ctx, x, z, weight, eps, groups):
        shape, N = x.shape, x.shape[-1]
        x2, z2 = _rows(x), _rows(z)
        rows, NG = x2.shape[0], N // groups
        out = torch.empty(rows, N, device=x.device, dtype=x.dtype)
        rstd = torch.empty(rows, groups, device=x.device, dtype=torch.float32)
        block = next_pow2(NG)
        if rows:
            _gated_fwd[(rows, groups)](x2, z2, weight.contiguous(), out, rstd, NG, groups, eps, x2.stride(0),
                                       z2.stride(0), BLOCK=block, num_warps=row_warps(block))
        ctx.save_for_backward(x2, z2, weight, rstd)
        ctx.shape, ctx.groups = shape, groups
        return out.view(shape)

    @staticmethod
    def backward(ctx, dout):
        x2, z2, weight, rstd = ctx.saved_tensors
        rows, N = x2.shape
        G = ctx.groups
        NG = N // G
        dout = dout.reshape(rows, N).contiguous()
        dx = torch.empty(rows, N, device=x2.device, dtype=x2.dtype)
        dz = torch.empty(rows, N, device=z2.device, dtype=z2.dtype)
        rows_per = max(1, cdiv(rows, 2 * sm_count(x2.device)))  # 2 programs an SM (swept 1-16), each many rows
        progs = cdiv(rows, rows_per) if rows else 0
        dw = torch.empty(progs, N, device=x2.device, dtype=torch.float32)
        block = next_pow2(NG)
        if rows:
            _gated_bwd[(progs, G)](x2, z2, weight.contiguous(), dout, rstd, dx, dz, dw, rows, NG, G, x2.stride(0),
                                   z2.stride(0), rows_per, BLOCK=block, num_warps=row_warps(block))
        dweight = dw.sum(0).to(weight.dtype)
        return dx.view(ctx.shape), dz.view(ctx.shape), dweight, None, None
