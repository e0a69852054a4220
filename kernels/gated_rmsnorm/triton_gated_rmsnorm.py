"""Triton gated RMSNorm: one program a (row, group) forward; the backward a block of rows per program,
the weight's gradient summed over them in registers, then over programs by torch. Where a group's width
is far from a power of two (mamba2-2.7b's 5120, in a block of 8192) the backward runs in two passes
instead: each row's mean(dn · n) (_gated_dot), then tiles of rows × columns (_gated_grads).

    h = x · silu(z);  r = rsqrt(mean_group(h²) + eps);  n = h · r;  out = w · n
    backward (dn = dout · w):  dh = r · (dn - n · mean_group(dn · n));  dx = dh · silu(z)
                               dz = dh · x · σ(z) · (1 + z · (1 - σ(z)));  dw = Σ_rows dout · n
The forward reads x, z once and writes out and r; the backward reads x, z, dout and r and recomputes h.
GatedRMSNormLinearFn puts out_proj after the norm and keeps no `out` for its weight's gradient: the
backward kernel writes it again (mamba_ssm's recompute_output), the same bits as the forward's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
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
def _gated_bwd(X, Z, W, DOUT, RSTD, DX, DZ, DW, OUT, ROWS, NG, G, stride_x, stride_z,
               rows_per, BLOCK: tl.constexpr, STORE_OUT: tl.constexpr):
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
            if STORE_OUT:  # the forward's out, computed in its order
                h = x * z * sz
                o = (h * rstd).to(OUT.dtype.element_ty).to(tl.float32)
                tl.store(OUT + off, (o * w).to(OUT.dtype.element_ty), mask=mask)
    tl.store(DW + pid.to(tl.int64) * NG * G + cols, dw, mask=mask)


@triton.jit
def _gated_dot(X, Z, W, DOUT, RSTD, MDOT, ROWS, NG, G, stride_x, stride_z, BR: tl.constexpr, BC: tl.constexpr):
    """MDOT[row, g] = mean over the group of dn · n (dn = dout · w): the one sum each row's gradient needs.
    A program: BR rows of one group, walked BC columns at a time."""
    pid, g = tl.program_id(0), tl.program_id(1)
    rows = pid.to(tl.int64) * BR + tl.arange(0, BR)
    rmask = rows < ROWS
    acc = tl.zeros([BR], dtype=tl.float32)
    for c in range(0, NG, BC):
        cols = g * NG + c + tl.arange(0, BC)
        cmask = c + tl.arange(0, BC) < NG
        mask = rmask[:, None] & cmask[None, :]
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        z = tl.load(Z + rows[:, None] * stride_z + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dout = tl.load(DOUT + rows[:, None] * NG * G + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
        acc += tl.sum(dout * w[None, :] * (x * z * tl.sigmoid(z)), axis=1)
    rstd = tl.load(RSTD + rows * G + g, mask=rmask, other=0.0)
    tl.store(MDOT + rows * G + g, acc * rstd / NG, mask=rmask)


@triton.jit
def _gated_grads(X, Z, W, DOUT, RSTD, MDOT, DX, DZ, DW, OUT, ROWS, N, NG, G, stride_x, stride_z, rows_per,
                 BR: tl.constexpr, BC: tl.constexpr, STORE_OUT: tl.constexpr, ONE_GROUP: tl.constexpr):
    """dx, dz (and with STORE_OUT the forward's out again, in its order) for BC columns of rows_per rows,
    BR at a time; the program's part of dw in DW[program row, columns]."""
    cb, part = tl.program_id(0), tl.program_id(1)
    cols = cb * BC + tl.arange(0, BC)
    cmask = cols < N
    grp = cols // NG
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    dw = tl.zeros([BR, BC], dtype=tl.float32)
    for r in range(0, rows_per, BR):
        rows = part.to(tl.int64) * rows_per + r + tl.arange(0, BR)
        rmask = (rows < ROWS) & (r + tl.arange(0, BR) < rows_per)
        mask = rmask[:, None] & cmask[None, :]
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        z = tl.load(Z + rows[:, None] * stride_z + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        off = rows[:, None] * N + cols[None, :]
        dout = tl.load(DOUT + off, mask=mask, other=0.0).to(tl.float32)
        if ONE_GROUP:  # the block's columns are one group's: a row's statistics are one number
            stat = rows * G + (cb * BC) // NG
            rstd = tl.load(RSTD + stat, mask=rmask, other=0.0)[:, None]
            mdot = tl.load(MDOT + stat, mask=rmask, other=0.0)[:, None]
        else:
            stat = rows[:, None] * G + grp[None, :]
            rstd = tl.load(RSTD + stat, mask=mask, other=0.0)
            mdot = tl.load(MDOT + stat, mask=mask, other=0.0)
        sz = tl.sigmoid(z)
        silu = z * sz
        n = x * silu * rstd
        dw += dout * n.to(DX.dtype.element_ty).to(tl.float32)
        dh = rstd * (dout * w[None, :] - n * mdot)
        tl.store(DX + off, (dh * silu).to(DX.dtype.element_ty), mask=mask)
        tl.store(DZ + off, (dh * x * sz * (1.0 + z * (1.0 - sz))).to(DZ.dtype.element_ty), mask=mask)
        if STORE_OUT:
            o = (x * z * sz * rstd).to(OUT.dtype.element_ty).to(tl.float32)
            tl.store(OUT + off, (o * w[None, :]).to(OUT.dtype.element_ty), mask=mask)
    tl.store(DW + part.to(tl.int64) * N + cols, tl.sum(dw, axis=0), mask=cmask)


# The two-pass backward: (rows, columns, warps) of the dot and the gradient programs, and row parts a
# multiprocessor. Used for groups of at least SPLIT_MIN that the one-row kernel pads by half (5120 in a
# block of 8192), or by a quarter when it also writes the output again. H200, [8192, NG] bf16, µs, one-row →
# two-pass (docs/benchmarks.md, forty-second run): NG 5120 237 → 218, with the output 272 → 222; NG 3072
# 133 → 142, with the output 150 → 143.
SPLIT = dict(dot=(4, 1024, 4), grads=(4, 512, 4), parts=8)
SPLIT_MIN = 2048


def _two_pass(NG: int, store_out: bool) -> bool:
    pad = next_pow2(NG) / NG
    return NG >= SPLIT_MIN and (pad >= 1.5 or (store_out and pad >= 1.25))


def _two_pass_grads(x2, z2, weight, rstd, dout, dx, dz, out, groups, cfg=None):
    """_row_grads' contract in two passes: each row's mean(dn · n), then every element's gradients in tiles."""
    cfg = cfg or SPLIT
    rows, N = x2.shape
    NG = N // groups
    mdot = torch.empty(rows, groups, device=x2.device, dtype=torch.float32)
    (br, bc, nw), (gr, gc, gw) = cfg["dot"], cfg["grads"]
    cblocks = cdiv(N, gc)
    parts = max(1, min(cdiv(rows, gr), cdiv(cfg["parts"] * sm_count(x2.device), cblocks)))
    rows_per = cdiv(cdiv(rows, parts), gr) * gr
    parts = cdiv(rows, rows_per) if rows else 0
    dw = torch.empty(parts, N, device=x2.device, dtype=torch.float32)
    if rows:
        _gated_dot[(cdiv(rows, br), groups)](x2, z2, weight, dout, rstd, mdot, rows, NG, groups, x2.stride(0),
                                             z2.stride(0), BR=br, BC=min(bc, next_pow2(NG)), num_warps=nw)
        _gated_grads[(cblocks, parts)](x2, z2, weight, dout, rstd, mdot, dx, dz, dw, out, rows, N, NG, groups,
                                       x2.stride(0), z2.stride(0), rows_per, BR=gr, BC=gc, STORE_OUT=out is not None,
                                       ONE_GROUP=NG % gc == 0, num_warps=gw)
    return dw


def _rows(t):
    """t [..., N] as [rows, N] with unit column stride: a view where one exists (the gate z is a slice of
    in_proj's output, its rows strided), else a copy."""
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


def _forward(x2, z2, weight, eps, groups):
    """x2, z2 [rows, N] → (out [rows, N] in x's dtype, rstd [rows, groups] float32)."""
    rows, N = x2.shape
    NG = N // groups
    out = torch.empty(rows, N, device=x2.device, dtype=x2.dtype)
    rstd = torch.empty(rows, groups, device=x2.device, dtype=torch.float32)
    block = next_pow2(NG)
    if rows:
        _gated_fwd[(rows, groups)](x2, z2, weight.contiguous(), out, rstd, NG, groups, eps, x2.stride(0),
                                   z2.stride(0), BLOCK=block, num_warps=row_warps(block))
    return out, rstd


def _row_grads(x2, z2, weight, rstd, dout, dx, dz, out, groups):
    """Writes dx, dz [rows, N] (and out, if given: the forward's out again) with _gated_bwd; returns the
    programs' parts of dweight [programs, N] float32."""
    rows, N = x2.shape
    NG = N // groups
    rows_per = max(1, cdiv(rows, 2 * sm_count(x2.device)))  # 2 programs an SM (swept 1-16), each many rows
    progs = cdiv(rows, rows_per) if rows else 0
    dw = torch.empty(progs, N, device=x2.device, dtype=torch.float32)
    block = next_pow2(NG)
    if rows:
        _gated_bwd[(progs, groups)](x2, z2, weight, dout, rstd, dx, dz, dw, out, rows, NG, groups,
                                    x2.stride(0), z2.stride(0), rows_per, BLOCK=block, STORE_OUT=out is not None,
                                    num_warps=row_warps(block))
    return dw


def _backward(x2, z2, weight, rstd, dout, groups, store_out=False):
    """(dx, dz [rows, N], dweight [N], and with store_out the forward's out [rows, N] again, else None)."""
    rows, N = x2.shape
    weight, dout = weight.contiguous(), dout.contiguous()
    dx = torch.empty(rows, N, device=x2.device, dtype=x2.dtype)
    dz = torch.empty(rows, N, device=z2.device, dtype=z2.dtype)
    out = torch.empty(rows, N, device=x2.device, dtype=x2.dtype) if store_out else None
    grads = _two_pass_grads if _two_pass(N // groups, store_out) else _row_grads
    dw = grads(x2, z2, weight, rstd, dout, dx, dz, out, groups)
    return dx, dz, dw.sum(0).to(weight.dtype), out


class GatedRMSNormFn(torch.autograd.Function):
    """(x, z, weight, eps, groups) → out, x's shape and dtype."""

    @staticmethod
    def forward(ctx, x, z, weight, eps, groups):
        x2, z2 = _rows(x), _rows(z)
        out, rstd = _forward(x2, z2, weight, eps, groups)
        ctx.save_for_backward(x2, z2, weight, rstd)
        ctx.shape, ctx.groups = x.shape, groups
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, dout):
        x2, z2, weight, rstd = ctx.saved_tensors
        dx, dz, dweight, _ = _backward(x2, z2, weight, rstd, dout.reshape(x2.shape), ctx.groups)
        return dx.view(ctx.shape), dz.view(ctx.shape), dweight, None, None


class GatedRMSNormLinearFn(torch.autograd.Function):
    """(x, z, norm_weight, eps, groups, weight, bias) → F.linear(gated_rmsnorm(x, z, norm_weight), weight, bias),
    [..., R] in x's dtype, keeping x, z, the rstd and the weights for the backward but not the norm's output:
    dL/d(out) = g · weight needs no output, and _gated_bwd writes the output again for weight's gradient."""

    @staticmethod
    def forward(ctx, x, z, norm_weight, eps, groups, weight, bias):
        x2, z2 = _rows(x), _rows(z)
        out, rstd = _forward(x2, z2, norm_weight, eps, groups)
        y = F.linear(out, weight, bias)
        ctx.save_for_backward(x2, z2, norm_weight, rstd, weight)
        ctx.shape, ctx.groups, ctx.bias = x.shape, groups, bias is not None
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, g):
        x2, z2, norm_weight, rstd, weight = ctx.saved_tensors
        g2 = g.reshape(x2.shape[0], weight.shape[0])
        dx, dz, dnorm, out = _backward(x2, z2, norm_weight, rstd, g2 @ weight, ctx.groups, store_out=True)
        dweight = g2.t() @ out
        dbias = g2.sum(0) if ctx.bias else None
        return dx.view(ctx.shape), dz.view(ctx.shape), dnorm, None, None, dweight, dbias
