"""Triton decode GEMV with the RMSNorm before it folded in: one kernel instead of add, norm, GEMV.

At decode (a few rows) a projection is a matrix-vector product bound by reading its weight, and the
norm before it is a reduction over one vector. The norm's scale 1/rms is one number per group of
channels, so it can wait: each program streams its BR rows of the weight once, block by block of
BK channels, and accumulates for each group g

    acc[r, g] += Σ_k∈block W[r, k] · norm_weight[k] · v[k],   ss[g] += Σ_k∈block v[k]²

with v = x (+ residual) read from L2 (a few KB); at the end y[r] = Σ_g acc[r, g] / rms_g. The weight
block's load is issued first in each step and nothing waits on a statistic of the whole vector, so
the weight streams as in a plain GEMV. Program 0 of each batch row writes h = v. A block lies in one
group (BK divides K / groups). The normalised vector is never rounded to the weight's dtype, as
separate ops round it: the two agree to that rounding.

Without a norm weight the same kernel is a plain GEMV, y = W v (+ bias): Mamba's x_proj and out_proj at one
row, where cuBLAS's split-K GEMM and its reduce take longer (H200, bf16, graphs, µs, this kernel with a norm
against cuBLAS, 2026-12-01: 5120 → 192 4.06 against 6.29, 5120 → 2560 7.01 against 9.26).

Grid (batch, row blocks) with the batch fastest: the programs that read one block of rows run
together, so a batch of a few rows reads the weight from memory once. Offsets are int64. With
`pdl` (kernels/_pdl.py) the first weight block is read before waiting for the kernel before.

One row of one group with K up to 4096 (in_proj) takes a streaming kernel instead (`_rms_gemv_stream_kernel`):
four programs an SM, each reading and normalising the whole vector once into registers, then walking its row
blocks with the next block's weight in flight during this block's sum.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .._host import cdiv, dense, next_pow2
from .._pdl import gdc_launch_dependents, gdc_wait, pdl_ok

# (rows per program, K block, warps), the fastest of 60 on the H200 (benchmarks/kernels_norm_gemv.py,
# 2026-11-29): mamba2-1.3b's in_proj (K 2048 → 8512 rows) 2, 2048, 4 and out_proj (K 4096 → 2048
# rows) 2, 1024, 4, each within 3% of the next choices and of cuBLAS's GEMV without the norm.
# 4 rows a program since 2026-12-01 (H200, one process, graphs of 16 calls): each program reads the whole
# vector (and residual) from L2, so 2 rows a program read it R / 2 times, more bytes than the weight with
# a float32 stream. µs a call, 2 → 4 rows: mamba2-2.7b's in_proj (K 2560 → 10576 rows) 22.14 → 18.61 with a
# float32 stream, 21.35 → 19.46 with bf16; its out_proj (5120 → 2560) 10.76 → 10.47; mamba2-1.3b's
# 12.90 → 12.50 and 8.29 → 8.27 (8 rows: 19.33, 19.67, 16.11). mamba2-2.7b's graphed decode step, batch 1:
# 2.499 → 2.174 ms as published (residual_fp32), 2.374 → 2.173 ms with a bf16 stream.
BLOCK_R, WARPS = 4, 4


def _block_k_cap(K: int) -> int:
    return 2048 if K <= 2048 else 1024


@triton.jit
def _vector(x_ptr, res_ptr, h_ptr, b, offs, m, K, write_h, HAS_RES: tl.constexpr):
    """x (+ residual, rounded to x's dtype after the add, as torch's add rounds) at offs of row b, float32;
    where write_h, also stored as h."""
    v = tl.load(x_ptr + b * K + offs, mask=m, other=0.0)
    if HAS_RES:
        v = (v.to(tl.float32) + tl.load(res_ptr + b * K + offs, mask=m, other=0.0).to(tl.float32)).to(v.dtype)
        if write_h:
            tl.store(h_ptr + b * K + offs, v, mask=m)
    return v.to(tl.float32)


@triton.jit
def _accumulate(acc, ss, w, k0, x_ptr, res_ptr, nw_ptr, h_ptr, b, pr, K, KG, offs_g,
                HAS_RES: tl.constexpr, NORM: tl.constexpr, BK: tl.constexpr):
    """Adds the K block at k0 (weight block w [BR, BK]) to acc [BR, BG] and, with NORM, ss [BG]."""
    offs = k0 + tl.arange(0, BK)
    m = offs < K
    v = _vector(x_ptr, res_ptr, h_ptr, b, offs, m, K, pr == 0, HAS_RES)
    if NORM:
        p = tl.load(nw_ptr + offs, mask=m, other=0.0).to(tl.float32) * v
        here = offs_g == k0 // KG  # the block's group
        ss += tl.where(here, tl.sum(v * v, axis=0), 0.0)
        acc += tl.where(here[None, :], tl.sum(w.to(tl.float32) * p[None, :], axis=1)[:, None], 0.0)
    else:
        acc += tl.sum(w.to(tl.float32) * v[None, :], axis=1)[:, None]
    return acc, ss


@triton.jit
def _rms_gemv_kernel(x_ptr, res_ptr, nw_ptr, w_ptr, b_ptr, y_ptr, h_ptr, K, R, KG, eps,
                     HAS_RES: tl.constexpr, NORM: tl.constexpr, HAS_BIAS: tl.constexpr, PDL: tl.constexpr,
                     BR: tl.constexpr, BK: tl.constexpr, BG: tl.constexpr):
    if PDL:
        gdc_launch_dependents()
    b = tl.program_id(0).to(tl.int64)
    pr = tl.program_id(1)
    rows = pr * BR + tl.arange(0, BR)
    mask_r = rows < R
    wrow = w_ptr + rows.to(tl.int64)[:, None] * K
    offs_g = tl.arange(0, BG)
    acc = tl.zeros((BR, BG), dtype=tl.float32)
    ss = tl.zeros((BG,), dtype=tl.float32)
    offs = tl.arange(0, BK)
    w = tl.load(wrow + offs[None, :], mask=mask_r[:, None] & (offs < K)[None, :], other=0.0)
    if PDL:
        gdc_wait()  # the first weight block is on its way; x and residual are now written
    acc, ss = _accumulate(acc, ss, w, 0, x_ptr, res_ptr, nw_ptr, h_ptr, b, pr, K, KG, offs_g, HAS_RES, NORM, BK)
    for k0 in range(BK, K, BK):
        offs = k0 + tl.arange(0, BK)
        w = tl.load(wrow + offs[None, :], mask=mask_r[:, None] & (offs < K)[None, :], other=0.0)
        acc, ss = _accumulate(acc, ss, w, k0, x_ptr, res_ptr, nw_ptr, h_ptr, b, pr, K, KG, offs_g, HAS_RES, NORM,
                              BK)
    if NORM:
        y = tl.sum(acc * (1.0 / tl.sqrt(ss / KG + eps))[None, :], axis=1)
    else:
        y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y += tl.load(b_ptr + rows, mask=mask_r, other=0.0).to(tl.float32)
    tl.store(y_ptr + b * R + rows, y.to(y_ptr.dtype.element_ty), mask=mask_r)


# One row, one group, K up to STREAM_MAX_K: the streaming kernel below (STREAM; PROGRAMS_PER_SM, STREAM_ROWS,
# STREAM_WARPS, the best of a sweep, 2026-12-01), else the blocked one above, whose programs each read the whole
# vector (and residual, and norm weight) from L2 for 4 rows. H200, bf16, one row, µs a call over 8 weight copies
# (L2 keeps none), blocked -> streaming, 2026-12-02: mamba2-2.7b's in_proj (2560 -> 10576, float32 residual)
# 18.12 -> 15.85, mamba-2.8b's (2560 -> 10240) 17.79 -> 15.47; the graphed 64-layer step at batch 1, same
# process, two rounds: mamba2-2.7b 2.180 / 2.175 -> 2.160 / 2.157 ms, mamba-2.8b 2.390 / 2.413 -> 2.291 / 2.292
# (streaming without PDL: 2.239 / 2.212 and 2.359 / 2.338). At K 5120 (out_proj, x_proj: 8192 lanes a program)
# it lost alone (mamba2-2.7b's out_proj 11.09 -> 11.97 µs). A first wiring into the model (2026-12-01, not kept,
# its limits not recorded) lost in the graph: mamba2-2.7b 2.194 -> 2.654 ms, the cause not found.
STREAM, STREAM_MAX_K, PROGRAMS_PER_SM, STREAM_ROWS, STREAM_WARPS = True, 4096, 4, 2, 8


@triton.jit
def _rms_gemv_stream_kernel(x_ptr, res_ptr, nw_ptr, w_ptr, b_ptr, y_ptr, h_ptr, K, R, eps, NPROG,
                            HAS_RES: tl.constexpr, NORM: tl.constexpr, HAS_BIAS: tl.constexpr, PDL: tl.constexpr,
                            BR: tl.constexpr, BKF: tl.constexpr):
    """A few programs an SM, each with the whole (normalised) vector in registers, read once, walking row
    blocks pid, pid + NPROG, ...; the next block's weight is loaded before this block's sum."""
    if PDL:
        gdc_launch_dependents()
    b = tl.program_id(0).to(tl.int64)
    pid = tl.program_id(1)
    offs = tl.arange(0, BKF)
    m = offs < K
    rows = pid * BR + tl.arange(0, BR)
    w = tl.load(w_ptr + rows.to(tl.int64)[:, None] * K + offs[None, :], mask=(rows < R)[:, None] & m[None, :],
                other=0.0)
    if PDL:
        gdc_wait()  # the first weight block is on its way; x and residual are now written
    v = _vector(x_ptr, res_ptr, h_ptr, b, offs, m, K, pid == 0, HAS_RES)
    scale = 1.0
    if NORM:
        scale = 1.0 / tl.sqrt(tl.sum(v * v, axis=0) / K + eps)
        v = v * tl.load(nw_ptr + offs, mask=m, other=0.0).to(tl.float32)
    for rb in range(pid, tl.cdiv(R, BR), NPROG):
        nxt = (rb + NPROG) * BR + tl.arange(0, BR)
        w_next = tl.load(w_ptr + nxt.to(tl.int64)[:, None] * K + offs[None, :],
                         mask=(nxt < R)[:, None] & m[None, :], other=0.0)
        y = tl.sum(w.to(tl.float32) * v[None, :], axis=1) * scale
        if HAS_BIAS:
            y += tl.load(b_ptr + rows, mask=rows < R, other=0.0).to(tl.float32)
        tl.store(y_ptr + b * R + rows, y.to(y_ptr.dtype.element_ty), mask=rows < R)
        w, rows = w_next, nxt


def _block_k(K: int, groups: int, cap: int) -> int:
    """The K block: a power of two up to cap; with several groups the largest that divides K / groups."""
    if groups == 1:
        return min(cap, next_pow2(K))
    kg = K // groups
    return min(cap, kg & -kg)


@functools.cache
def _sms(device: torch.device) -> int:
    """The device's SM count (the interpreter's CPU: 4); asked once a device, off the decode path's host time."""
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def rms_linear_triton(x, weight, norm_weight, eps, residual, groups, bias, block_r=None, block_k=None,
                      num_warps=None, pdl=False):
    batch, K = x.shape
    R = weight.shape[0]
    x = x.contiguous()
    res, norm_weight, bias = map(dense, (residual, norm_weight, bias))
    h = torch.empty_like(x) if res is not None else None
    y = torch.empty(batch, R, device=x.device, dtype=weight.dtype)
    pdl = pdl_ok(x, pdl)
    if STREAM and batch == 1 and groups == 1 and next_pow2(K) <= STREAM_MAX_K and not (block_r or block_k):
        BR = STREAM_ROWS
        nprog = min(cdiv(R, BR), PROGRAMS_PER_SM * _sms(x.device))
        _rms_gemv_stream_kernel[(batch, nprog)](
            x, res, norm_weight, weight.contiguous(), bias, y, h, K, R, float(eps), nprog,
            HAS_RES=res is not None, NORM=norm_weight is not None, HAS_BIAS=bias is not None, PDL=pdl, BR=BR,
            BKF=next_pow2(K), num_warps=STREAM_WARPS, **({"launch_pdl": True} if pdl else {}))
        return y, x if h is None else h
    BR = block_r or BLOCK_R
    _rms_gemv_kernel[(batch, cdiv(R, BR))](
        x, res, norm_weight, weight.contiguous(), bias, y, h, K, R, K // groups, float(eps),
        HAS_RES=res is not None, NORM=norm_weight is not None, HAS_BIAS=bias is not None, PDL=pdl, BR=BR,
        BK=_block_k(K, groups, block_k or _block_k_cap(K)),
        BG=max(1, next_pow2(groups)), num_warps=num_warps or WARPS,
        **({"launch_pdl": True} if pdl else {}))
    return y, x if h is None else h
