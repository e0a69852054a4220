"""Time-segmented selective scan forward (`ARCHDSL_SCAN_FWD=segments`).

The serial forward (`ss_fwd`) gives each channel's N states to one thread and walks all L
steps in order: B·D threads, latency-bound by the time loop. Here the sequence is cut into
S segments of SEG steps (SEG a multiple of the checkpoint interval CK) and the work runs in
three launches:

1. `_seg_local_kernel`, grid (D blocks, B, S): each segment's final state from a zero start
   and its summed delta (the segment's decay is exp(A · Σ delta)), fp32;
2. `_seg_carry_kernel`, grid ([D·N] blocks, B): serial over the S segments only, the state
   entering each segment, h_in[s+1] = exp(A · Σ delta[s]) · h_in[s] + local[s], written over
   the local states; the last one is the final state;
3. `_seg_out_kernel`, grid (D blocks, B, S): each segment again from its entering state,
   writing y (D skip, z gating, delta_bias/softplus) and, when gradients are wanted, the
   checkpoints `[B, D, cdiv(L, CK), N]` exactly as the serial forward stores them (the state
   entering every CK-th step), so either backward runs unchanged after it.

u, delta and B are read twice; in exchange B·D·S threads run instead of B·D. Tiles are the
serial lanes forward's ([N, T, D]: a channel per thread, its N states and T steps in registers).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dispatch import interpreting
from .._host import cdiv, next_pow2
from .triton_selective_scan import CK, _block_d, _flags, _lanes_tile, _lin_combine, _pick, _pick_sum

# ~ resident threads of an H200 (132 SMs x 2048): segments are added until B·D·S reaches it
FILL_THREADS = 1 << 18
MAX_SEGMENTS = 4096  # also keeps the grid's third dimension within CUDA's 65535
# (BLOCK_D, T, warps), BLOCK_D = 32 x warps; T divides CK. The interpreter runs one small tile
# (two tiles per CK = 8 step segment, so the in-segment loop and the checkpoint condition are exercised).
_SEG_CONFIGS = [(64, 2, 2), (128, 2, 4), (128, 4, 4), (32, 4, 1), (32, 2, 1)]
_INTERP_SEG = (4, 4, 1)
_CARRY_BLOCK = 256


def segment_length(batch: int, dim: int, L: int) -> int:
    """Steps per segment: a multiple of CK, short enough that batch·dim·S threads fill the chip
    (under the interpreter: CK, so test sizes run several segments), at most MAX_SEGMENTS segments."""
    want = min(max(1, cdiv(FILL_THREADS, batch * dim)), MAX_SEGMENTS)
    seg = cdiv(cdiv(L, want), CK) * CK
    return max(seg, cdiv(cdiv(L, MAX_SEGMENTS), CK) * CK)


@triton.jit
def _seg_program(A_ptr, B_ptr, C_ptr, DIM, N, CPG, sB_b, sB_g, sC_b, sC_g,
                 BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, T: tl.constexpr):
    """What a (channel block, batch, segment) program of passes 1 and 3 starts from: batch (int64),
    segment, channel / state / step offsets and masks, the channels' rows (b·DIM + d, int64),
    A·log2(e) [BLOCK_N, BLOCK_D], and the B and C bases of the channels' group."""
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    dmask, nmask = d < DIM, n < N
    nd_mask = nmask[:, None] & dmask[None, :]
    g = ((pid_d * BLOCK_D) // CPG).to(tl.int64)
    A2 = tl.load(A_ptr + d[None, :] * N + n[:, None], mask=nd_mask, other=0.0).to(tl.float32) * 1.4426950408889634
    return (pid_b, tl.program_id(2), d, n, tl.arange(0, T), dmask, nmask, nd_mask, pid_b * DIM + d.to(tl.int64),
            A2, B_ptr + pid_b * sB_b + g * sB_g, C_ptr + pid_b * sC_b + g * sC_g)


@triton.jit(do_not_specialize=["s_l", "sB_l", "sC_l"])
def _seg_local_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, bias_ptr, loc_ptr, dts_ptr,
                      L, DIM, N, CPG, NSEG, SEG, s_l,
                      sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
                      BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, T: tl.constexpr,
                      HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Pass 1. u, delta `[B, D, L]`; B `[B, G, N, L]` (strides given). Writes loc `[B, S, D, N]`,
    the segment's final state from a zero start, and dts `[B, S, D]`, its summed delta (fp32)."""
    pid_b, seg, d, n, t, dmask, nmask, nd_mask, dch, A2, B_base, C_base = _seg_program(
        A_ptr, B_ptr, C_ptr, DIM, N, CPG, sB_b, sB_g, sC_b, sC_g, BLOCK_D, BLOCK_N, T)
    row = dch * L
    h = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dt_sum = tl.zeros([BLOCK_D], dtype=tl.float32)
    start = seg * SEG
    for c in range(start, tl.minimum(start + SEG, L), T):
        tt = c + t
        dt, _, u, _, Bt, _ = _lanes_tile(u_ptr, dt_ptr, bias_ptr, B_base, C_base, row, d, n, tt, dmask, nmask,
                                         L, s_l, sB_n, sB_l, sC_n, sC_l, HAS_BIAS, SOFTPLUS)
        aP, hS = tl.associative_scan((tl.exp2(dt[None, :, :] * A2[:, None, :]),
                                      (dt * u)[None, :, :] * Bt[:, :, None]), 1, _lin_combine)
        h = _pick_sum(hS + aP * h[:, None, :], t[None, :, None] == T - 1, 1)
        dt_sum += tl.sum(dt, axis=0)
    out = (pid_b * NSEG + seg) * DIM + d.to(tl.int64)
    tl.store(loc_ptr + out[None, :] * N + n[:, None], h, mask=nd_mask)
    tl.store(dts_ptr + out, dt_sum, mask=dmask)


@triton.jit
def _seg_carry_kernel(loc_ptr, dts_ptr, A_ptr, h0_ptr, hT_ptr, DIM, N, NSEG,
                      BLOCK: tl.constexpr, HAS_H0: tl.constexpr):
    """Pass 2, serial over segments. loc `[B, S, D, N]` in: local final states, out: the state
    entering each segment; dts `[B, S, D]`; A `[D, N]` contiguous; h0, hT `[B, D, N]`."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # index into a [D, N] plane
    b = tl.program_id(1).to(tl.int64)
    mask = i < DIM * N
    A2 = tl.load(A_ptr + i, mask=mask, other=0.0).to(tl.float32) * 1.4426950408889634
    h = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_H0:
        h = tl.load(h0_ptr + b * DIM * N + i, mask=mask, other=0.0).to(tl.float32)
    for s in range(0, NSEG):
        plane = (b * NSEG + s) * DIM
        loc = tl.load(loc_ptr + plane * N + i, mask=mask, other=0.0)
        dts = tl.load(dts_ptr + plane + i // N, mask=mask, other=0.0)
        tl.store(loc_ptr + plane * N + i, h, mask=mask)
        h = tl.exp2(A2 * dts) * h + loc
    tl.store(hT_ptr + b * DIM * N + i, h, mask=mask)


@triton.jit(do_not_specialize=["s_l", "sB_l", "sC_l"])
def _seg_out_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, hin_ptr, y_ptr, ck_ptr,
                    L, DIM, N, CPG, NSEG, SEG, NCK, s_l,
                    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
                    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, T: tl.constexpr, CKI: tl.constexpr,
                    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                    STORE_CK: tl.constexpr):
    """Pass 3. Each segment from its entering state hin `[B, S, D, N]`: y `[B, D, L]` and, with
    STORE_CK, the checkpoints ck `[B, D, NCK, N]` (state entering every CKI-th step)."""
    pid_b, seg, d, n, t, dmask, nmask, nd_mask, dch, A2, B_base, C_base = _seg_program(
        A_ptr, B_ptr, C_ptr, DIM, N, CPG, sB_b, sB_g, sC_b, sC_g, BLOCK_D, BLOCK_N, T)
    row = dch * L
    hin = ((pid_b * NSEG + seg) * DIM + d.to(tl.int64))[None, :] * N + n[:, None]
    h = tl.load(hin_ptr + hin, mask=nd_mask, other=0.0)
    start = seg * SEG
    for c in range(start, tl.minimum(start + SEG, L), T):
        tt = c + t
        if STORE_CK:
            if c % CKI == 0:
                tl.store(ck_ptr + (dch * NCK + c // CKI)[None, :] * N + n[:, None], h, mask=nd_mask)
        dt, _, u, m2, Bt, Ct = _lanes_tile(u_ptr, dt_ptr, bias_ptr, B_base, C_base, row, d, n, tt, dmask, nmask,
                                           L, s_l, sB_n, sB_l, sC_n, sC_l, HAS_BIAS, SOFTPLUS)
        aP, hS = tl.associative_scan((tl.exp2(dt[None, :, :] * A2[:, None, :]),
                                      (dt * u)[None, :, :] * Bt[:, :, None]), 1, _lin_combine)
        hs = hS + aP * h[:, None, :]
        y = tl.sum(hs * Ct[:, :, None], axis=0)
        h = _pick_sum(hs, t[None, :, None] == T - 1, 1)
        if HAS_D:
            y += tl.load(D_ptr + d, mask=dmask, other=0.0).to(tl.float32)[None, :] * u
        off = row[None, :] + tt[:, None].to(tl.int64) * s_l
        if HAS_Z:
            zz = tl.load(z_ptr + off, mask=m2, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(y_ptr + off, y.to(y_ptr.dtype.element_ty), mask=m2)


def ss_fwd_segments(u, delta, A, B4, C4, D, z, bias, h0, softplus, store_ck, seg=None):
    """Same contract as `ss_fwd`: u, delta, z `[B, D, L]` contiguous; A `[D, N]`; B4/C4 `[B, G, N, L]`
    (any strides); h0 `[B, D, N]` or None. Returns y `[B, D, L]`, the last state `[B, D, N]` fp32 and
    the checkpoints `[B, D, cdiv(L, CK), N]` (with store_ck). seg: steps per segment, a multiple of CK
    (default `segment_length`)."""
    batch, dim, L = u.shape
    N, cpg = A.shape[1], dim // B4.shape[1]
    seg = seg or segment_length(batch, dim, L)
    assert seg % CK == 0, f"segment length {seg} must be a multiple of CK={CK}"
    nseg = cdiv(L, seg)
    A = A.contiguous()
    y = torch.empty_like(u)
    hT = torch.empty(batch, dim, N, device=u.device, dtype=torch.float32)
    loc = torch.empty(batch, nseg, dim, N, device=u.device, dtype=torch.float32)  # becomes the entering states
    dts = torch.empty(batch, nseg, dim, device=u.device, dtype=torch.float32)
    nck = cdiv(L, CK)
    ck = torch.empty(batch, dim, nck, N, device=u.device, dtype=torch.float32) if store_ck else None
    flags = _flags(D, z, bias, softplus)
    BN = next_pow2(N)
    configs = [_INTERP_SEG] if interpreting() else _SEG_CONFIGS
    key = (batch, dim, L, N, cpg, u.dtype, tuple(flags.values()), seg)

    def local(cfg):
        bd, T, nw = cfg
        bd = _block_d(bd, cpg)
        _seg_local_kernel[(cdiv(dim, bd), batch, nseg)](
            u, delta, A, B4, C4, bias, loc, dts, L, dim, N, cpg, nseg, seg, 1, *B4.stride(), *C4.stride(),
            BLOCK_D=bd, BLOCK_N=BN, T=T, HAS_BIAS=flags["HAS_BIAS"], SOFTPLUS=flags["SOFTPLUS"], num_warps=nw)

    def out(cfg):
        bd, T, nw = cfg
        bd = _block_d(bd, cpg)
        _seg_out_kernel[(cdiv(dim, bd), batch, nseg)](
            u, delta, A, B4, C4, D, z, bias, loc, y, ck,
            L, dim, N, cpg, nseg, seg, nck, 1, *B4.stride(), *C4.stride(),
            BLOCK_D=bd, BLOCK_N=BN, T=T, CKI=CK, STORE_CK=store_ck, num_warps=nw, **flags)

    local(_pick(("seg_local",) + key, configs, local))
    _seg_carry_kernel[(cdiv(dim * N, _CARRY_BLOCK), batch)](
        loc, dts, A, h0, hT, dim, N, nseg, BLOCK=_CARRY_BLOCK, HAS_H0=h0 is not None, num_warps=4)
    out(_pick(("seg_out",) + key + (store_ck,), configs, out))
    return y, hT, ck
