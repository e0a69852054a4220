"""Triton residual add + RMSNorm: one row per program, the row read once, h and out written once.

    h = x + r;  out = w · (h · rsqrt(mean(h²) + eps))      (statistics in float32)

The backward is plain torch from the saved h and rstd (it runs during training only, where the
GEMMs dominate); the forward is the decode / prefill hot path.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._host import next_pow2


@triton.jit
def _add_rmsnorm_fwd(X, R, W, OUT, H, RSTD, N, eps, stride_x, stride_r, stride_o, stride_h,
                     HAS_R: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_R:
        x = x + tl.load(R + row * stride_r + cols, mask=mask, other=0.0)
    tl.store(H + row * stride_h + cols, x, mask=mask)
    h = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / N + eps)
    tl.store(RSTD + row, rstd)
    n = (h * rstd).to(OUT.dtype.element_ty).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + row * stride_o + cols, (n * w).to(OUT.dtype.element_ty), mask=mask)


def add_rmsnorm_fwd(x, residual, weight, eps):
    """x, residual [..., N] → (out, h, rstd [rows] float32)."""
    shape = x.shape
    N = shape[-1]
    x2 = x.reshape(-1, N).contiguous()
    r2 = residual.reshape(-1, N).contiguous() if residual is not None else None
    rows = x2.shape[0]
    h = torch.empty_like(x2)
    out = torch.empty(rows, N, device=x.device, dtype=torch.promote_types(x.dtype, weight.dtype))
    rstd = torch.empty(rows, device=x.device, dtype=torch.float32)
    BLOCK = next_pow2(N)
    if rows:
        _add_rmsnorm_fwd[(rows,)](x2, r2, weight.contiguous(), out, h, rstd, N, eps, x2.stride(0),
                                  0 if r2 is None else r2.stride(0), out.stride(0), h.stride(0),
                                  HAS_R=residual is not None, BLOCK=BLOCK,
                                  num_warps=min(16, max(1, BLOCK // 256)))
    return out.view(*shape[:-1], N), h.view(shape), rstd


class AddRMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, eps):
        out, h, rstd = add_rmsnorm_fwd(x, residual, weight, eps)
        ctx.save_for_backward(h, rstd, weight)
        ctx.has_residual = residual is not None
        return out, h

    @staticmethod
    def backward(ctx, dout, dh):
        h, rstd, weight = ctx.saved_tensors
        N = h.shape[-1]
        hf = h.reshape(-1, N).float()
        n = hf * rstd[:, None]
        dy = dout.reshape(-1, N).float()
        dw = (dy * n.to(h.dtype).float()).sum(0).to(weight.dtype)
        dn = dy * weight.float()
        dx = rstd[:, None] * (dn - n * (dn * n).mean(-1, keepdim=True))
        if dh is not None:
            dx = dx + dh.reshape(-1, N).float()
        dx = dx.to(h.dtype).view(h.shape)
        return dx, (dx if ctx.has_residual else None), dw, None
