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

from .._host import cdiv, next_pow2
from .._pdl import gdc_launch_dependents, gdc_wait, pdl_ok
from .triton_norm_gemv import _sms


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


# The launch (H200, bf16, one process, graphs of calls over weight copies that L2 cannot keep, 2026-12-02). At
# mamba-2.8b's widths, the fastest of 110 (BN, BK, K piece, stages, warps), µs a call at 4 / 16 rows against
# cuBLAS: out_proj (5120 → 2560) BN 64, K in halves: 11.73 / 11.78 against 13.38 / 12.66; x_proj (5120 → 192) BN
# 32, K in pieces of 1024: 5.13 / 5.00 against 7.45 / 7.67; both BK 256, 4 stages, 4 warps. Neither the last
# program of a column block summing the pieces (one kernel, an arrival counter) nor TMA loads of the weight gained.
# Then BN 32 / 64 and pieces of 512, 1024, K / 2 and K at ten widths of Mamba models (130m to 2.8b), 2 and 16
# rows: the best were pieces of 1024 (512 up to K 2048), BN 64 from 512 outputs, except where that gives more
# programs than SMs (one each: 160 KB of shared memory), then K in halves (out_proj 5120 → 2560 in pieces of 1024,
# 200 programs: 14.5 µs against 11.8). This rule is within 0.4 µs of the best at each (2 / 16 rows, µs, against
# cuBLAS): 4096 → 2048 8.3 / 8.8 (9.9 / 10.6), 3072 → 1536 6.7 / 6.8 (8.4 / 8.6), 2048 → 1024 4.4 / 4.7 (8.2 /
# 6.0), 1536 → 768 3.9 / 4.1 (6.0 / 5.2), 1024 → 512 3.6 / 3.8 (4.4 / 4.5); x_proj 4096 → 160 4.6 / 4.8 (6.9 /
# 7.1), 1536 → 80 3.3 / 3.5 (4.7 / 4.9).
BLOCK_K, STAGES, WARPS, REDUCE_BLOCK = 256, 4, 4, 1024


def _launch(N: int, K: int, sms: int) -> tuple[int, int]:
    """(BN, the K columns a program takes) for an [N, K] weight on a device of `sms` SMs."""
    bn = 64 if N >= 512 else 32
    ks = 512 if K <= 2048 else 1024
    if cdiv(N, bn) * cdiv(K, ks) > sms:
        ks = cdiv(cdiv(K, 2), BLOCK_K) * BLOCK_K
    return bn, ks


def rows_gemm_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, pdl: bool = False,
                     block_n: int | None = None, block_k: int | None = None, k_split: int | None = None,
                     stages: int | None = None, num_warps: int | None = None) -> torch.Tensor:
    """x [M, K] (any float dtype), weight [N, K] contiguous, bias [N] or None → y [M, N] in weight's dtype,
    products summed in float32; the rows padded to a power of two, 16 at least (gemv sends up to 16).
    k_split: the K columns a program takes (a multiple of block_k)."""
    M, K = x.shape
    N = weight.shape[0]
    bn, ks = _launch(N, K, _sms(x.device))
    BN, BK = block_n or bn, block_k or BLOCK_K
    KS = max(BK, (k_split or ks) // BK * BK)
    S = cdiv(K, KS)
    pdl = pdl_ok(x, pdl)
    ws = torch.empty(S, M, N, device=x.device, dtype=torch.float32)
    launch = {"launch_pdl": True} if pdl else {}
    _splitk_kernel[(cdiv(N, BN), S)](x.contiguous(), weight, ws, M, K, N, KS, PDL=pdl, BM=max(16, next_pow2(M)),
                                     BN=BN, BK=BK, STAGES=stages or STAGES, num_warps=num_warps or WARPS, **launch)
    y = torch.empty(M, N, device=x.device, dtype=weight.dtype)
    _reduce_kernel[(cdiv(M * N, REDUCE_BLOCK),)](ws, bias, y, M * N, N, S, HAS_BIAS=bias is not None, PDL=pdl,
                                                 BLOCK=REDUCE_BLOCK, num_warps=4, **launch)
    return y
