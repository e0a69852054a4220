"""Triton split-K GEMM for a few rows (2-16) against a narrow weight: Mamba's x_proj and the out_projs at decode.

At decode with a batch of a few rows, y [M, N] = x [M, K] · W [N, K]ᵀ is bound by reading W once. When N is
small against K (x_proj 5120 → 192, out_proj 5120 → 2560) blocks of N alone give too few programs to fill
the SMs, so K is split as well: program (n, s) reads the weight block W[n·BN : (n+1)·BN, s·KS : (s+1)·KS]
and writes its partial product, float32, to ws [S, M, N]; a second kernel sums the S partials, adds the bias
and rounds to the weight's dtype. The rows, padded to 16 (the tensor cores' smallest M), go through
`tl.dot` against each [BN, BK] weight block.

With `pdl` (kernels/_pdl.py) the split kernel reads its first weight block before waiting for the kernel
before it, and the reduce is launched to start during the split kernel's tail.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._host import cdiv
from .._pdl import gdc_launch_dependents, gdc_wait, pdl_ok


@triton.jit
def _splitk_kernel(x_ptr, w_ptr, ws_ptr, M, K, N, KS, PDL: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, STAGES: tl.constexpr):
    """ws[s, m, n] = Σ_{k in split s} x[m, k] · w[n, k] for this program's n block and split s."""
    if PDL:
        gdc_launch_dependents()
    pn = tl.program_id(0)
    s = tl.program_id(1)
    offs_n = pn * BN + tl.arange(0, BN)
    offs_m = tl.arange(0, BM)
    offs_k = tl.arange(0, BK)
    mask_n = offs_n < N
    mask_m = offs_m < M
    k_lo = s * KS
    k_hi = tl.minimum(k_lo + KS, K)
    wrow = w_ptr + offs_n.to(tl.int64)[:, None] * K
    xrow = x_ptr + offs_m.to(tl.int64)[:, None] * K
    w = tl.load(wrow + (k_lo + offs_k)[None, :], mask=mask_n[:, None] & (k_lo + offs_k < k_hi)[None, :], other=0.0)
    if PDL:
        gdc_wait()  # the first weight block is on its way; x is now written
    xb = tl.load(xrow + (k_lo + offs_k)[None, :], mask=mask_m[:, None] & (k_lo + offs_k < k_hi)[None, :], other=0.0)
    acc = tl.dot(xb.to(w.dtype), tl.trans(w), out_dtype=tl.float32)
    for k in tl.range(k_lo + BK, k_hi, BK, num_stages=STAGES):
        mk = k + offs_k < k_hi
        w = tl.load(wrow + (k + offs_k)[None, :], mask=mask_n[:, None] & mk[None, :], other=0.0)
        xb = tl.load(xrow + (k + offs_k)[None, :], mask=mask_m[:, None] & mk[None, :], other=0.0)
        acc = tl.dot(xb.to(w.dtype), tl.trans(w), acc, out_dtype=tl.float32)
    tl.store(ws_ptr + (s * M + offs_m)[:, None] * N + offs_n[None, :], acc, mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _reduce_kernel(ws_ptr, b_ptr, y_ptr, MN, N, S, HAS_BIAS: tl.constexpr, PDL: tl.constexpr,
                   BLOCK: tl.constexpr):
    """y[m, n] = Σ_s ws[s, m, n] (+ bias[n]), flattened over m, n."""
    if PDL:
        gdc_launch_dependents()
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < MN
    if PDL:
        gdc_wait()  # the partials are written
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(S):
        acc += tl.load(ws_ptr + s * MN + offs, mask=m, other=0.0)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs % N, mask=m, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=m)


# The launch, the fastest of 110 (BN, BK, K split, stages, warps) on the H200 (bf16, one process, graphs of calls
# over weight copies that L2 cannot keep, 2026-12-02), µs a call at 4 / 16 rows, against cuBLAS: mamba-2.8b's
# out_proj (5120 → 2560) K in 2, BN 64: 11.73 / 11.78 against 13.38 / 12.66; its x_proj (5120 → 192) K in 1024s,
# BN 32: 5.13 / 5.00 against 7.45 / 7.67. Both: BK 256, 4 stages, 4 warps. Few programs won: at 160 (K in 1280s)
# out_proj took 12.4, and neither the last program of a column block summing (one kernel, an arrival counter) nor
# TMA loads of the weight gained.
BLOCK_K, STAGES, WARPS, REDUCE_BLOCK = 256, 4, 4, 1024
WIDE_N = 1024  # from this many outputs: BN 64 and K split in two; below: BN 32 and K in pieces of 1024


def _launch(N: int, K: int) -> tuple[int, int]:
    """(BN, the K columns a program takes) for an [N, K] weight."""
    return (64, cdiv(cdiv(K, 2), BLOCK_K) * BLOCK_K) if N >= WIDE_N else (32, 1024)


def rows_gemm_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, pdl: bool = False,
                     block_n: int | None = None, block_k: int | None = None, k_split: int | None = None,
                     stages: int | None = None, num_warps: int | None = None) -> torch.Tensor:
    """x [M, K] (M ≤ 16, any float dtype), weight [N, K] contiguous, bias [N] or None → y [M, N] in weight's
    dtype, products summed in float32. k_split: the K columns a program takes (a multiple of block_k)."""
    M, K = x.shape
    N = weight.shape[0]
    bn, ks = _launch(N, K)
    BN, BK = block_n or bn, block_k or BLOCK_K
    KS = max(BK, (k_split or ks) // BK * BK)
    S = cdiv(K, KS)
    pdl = pdl_ok(x, pdl)
    ws = torch.empty(S, M, N, device=x.device, dtype=torch.float32)
    launch = {"launch_pdl": True} if pdl else {}
    _splitk_kernel[(cdiv(N, BN), S)](x.contiguous(), weight, ws, M, K, N, KS, PDL=pdl, BM=16, BN=BN, BK=BK,
                                     STAGES=stages or STAGES, num_warps=num_warps or WARPS, **launch)
    y = torch.empty(M, N, device=x.device, dtype=weight.dtype)
    _reduce_kernel[(cdiv(M * N, REDUCE_BLOCK),)](ws, bias, y, M * N, N, S, HAS_BIAS=bias is not None, PDL=pdl,
                                                 BLOCK=REDUCE_BLOCK, num_warps=4, **launch)
    return y
