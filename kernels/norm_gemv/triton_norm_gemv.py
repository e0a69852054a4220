"""Triton decode GEMV with the RMSNorm before it folded in: one kernel instead of add, norm, GEMV.

At decode (a few rows) a projection is a matrix-vector product bound by reading its weight, and the
norm before it is a reduction over one vector. Every program reads the whole input vector (a few
KB, from L2), forms the per-group 1/rms itself, and streams its BR rows of the weight once:

    pass 1   v = x (+ residual), [K] in blocks of BK: the per-group sums of v²; program 0 of each
             batch row writes h = v
    pass 2   acc[BR] += W[rows, k-block] · (norm_weight · round(v · rstd))

Grid (batch, row blocks) with the batch fastest: the programs that read one block of rows run
together, so a batch of a few rows reads the weight from memory once. Offsets are int64.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# (rows per program, K block, warps): timed on the H200 by benchmarks/kernels_norm_gemv.py.
BLOCK_R, BLOCK_K, WARPS = 8, 1024, 4


@triton.jit
def _input(x_ptr, res_ptr, offs, m, HAS_RES: tl.constexpr):
    """x (+ residual) at offs, float32, rounded to x's dtype after the add as torch's add rounds."""
    v = tl.load(x_ptr + offs, mask=m, other=0.0)
    if HAS_RES:
        v = (v.to(tl.float32) + tl.load(res_ptr + offs, mask=m, other=0.0).to(tl.float32)).to(v.dtype)
    return v.to(tl.float32)


@triton.jit
def _rms_gemv_kernel(x_ptr, res_ptr, nw_ptr, w_ptr, b_ptr, y_ptr, h_ptr, K, R, KG, eps,
                     HAS_RES: tl.constexpr, HAS_BIAS: tl.constexpr,
                     BR: tl.constexpr, BK: tl.constexpr, BG: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    pr = tl.program_id(1)
    offs_g = tl.arange(0, BG)
    wdt = w_ptr.dtype.element_ty

    ss = tl.zeros((BG,), dtype=tl.float32)
    for k0 in range(0, K, BK):
        offs = k0 + tl.arange(0, BK)
        m = offs < K
        v = _input(x_ptr, res_ptr, b * K + offs, m, HAS_RES)
        if HAS_RES:
            if pr == 0:
                tl.store(h_ptr + b * K + offs, v.to(h_ptr.dtype.element_ty), mask=m)
        ss += tl.sum(tl.where((offs // KG)[:, None] == offs_g[None, :], (v * v)[:, None], 0.0), axis=0)
    rstd_g = 1.0 / tl.sqrt(ss / KG + eps)

    rows = (pr * BR + tl.arange(0, BR)).to(tl.int64)
    mask_r = rows < R
    acc = tl.zeros((BR,), dtype=tl.float32)
    for k0 in range(0, K, BK):
        offs = k0 + tl.arange(0, BK)
        m = offs < K
        v = _input(x_ptr, res_ptr, b * K + offs, m, HAS_RES)
        rstd = tl.sum(tl.where((offs // KG)[:, None] == offs_g[None, :], rstd_g[None, :], 0.0), axis=1)
        n = (v * rstd).to(wdt).to(tl.float32)
        p = (tl.load(nw_ptr + offs, mask=m, other=0.0).to(wdt).to(tl.float32) * n).to(wdt).to(tl.float32)
        w = tl.load(w_ptr + rows[:, None] * K + offs[None, :], mask=mask_r[:, None] & m[None, :], other=0.0)
        acc += tl.sum(w.to(tl.float32) * p[None, :], axis=1)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rows, mask=mask_r, other=0.0).to(tl.float32)
    tl.store(y_ptr + b * R + rows, acc.to(y_ptr.dtype.element_ty), mask=mask_r)


def rms_linear_triton(x, weight, norm_weight, eps, residual, groups, bias, block_r=None, block_k=None,
                      num_warps=None):
    batch, K = x.shape
    R = weight.shape[0]
    x = x.contiguous()
    res = residual.contiguous() if residual is not None else None
    h = torch.empty_like(x) if res is not None else x
    y = torch.empty(batch, R, device=x.device, dtype=weight.dtype)
    BK = min(block_k or BLOCK_K, triton.next_power_of_2(K))
    BR = block_r or BLOCK_R
    _rms_gemv_kernel[(batch, triton.cdiv(R, BR))](
        x, res, norm_weight, weight.contiguous(), bias, y, h, K, R, K // groups, float(eps),
        HAS_RES=res is not None, HAS_BIAS=bias is not None, BR=BR, BK=BK,
        BG=max(1, triton.next_power_of_2(groups)), num_warps=num_warps or WARPS)
    return y, h
