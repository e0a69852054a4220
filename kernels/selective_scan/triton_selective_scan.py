"""Triton selective scan (Mamba-1): forward and backward kernels, launchers, autograd.Function.

On CUDA the default forward and backward are the Gluon ones (gluon_selective_scan.py: layouts set by hand,
a channel's states in two or four threads, B and C read from shared memory; forward 0.68 against 0.80 ms,
forward+backward 4.11 against 5.92 ms here at B4 L4096 D5120 N16 bf16 on the H200) wherever they take the
case; this module's Triton kernels run elsewhere, under the interpreter and on request (ARCHDSL_SCAN_FWD,
ARCHDSL_SCAN_BWD; see `_fwd_impl`, `_bwd_impl`).

The Triton forward (`_ss_fwd_groups_kernel`) gives each channel's N states to NS neighbouring threads
(N/NS states each) and walks the sequence in tiles of T steps held in registers: inside a tile
the recurrence h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t is a scan along the thread's own
registers (tl.associative_scan over (decay, input) pairs), y's sum over the states a warp
shuffle, and the next tile's inputs are loaded before this one is scanned. The state never
leaves the chip except at checkpoints (every CK steps, only when gradients are wanted). A
second forward layout (`_ss_fwd_lanes_kernel`, a channel and all its states per thread) stays
among the tiles timed once per shape on the card (at B4 D5120 N16 it is the slower, 1.9 ms
against 0.88).

The backward (`_ss_bwd_groups_kernel`) keeps the forward's layout and walks the checkpoint
chunks last first: it recomputes the states of a chunk from its checkpoint and runs the adjoint
recurrence k_t = C_t dy_t + exp(delta_{t+1} A) k_{t+1} backwards along each thread's registers.
B/C gradients are sums over channels and go out through fp32 atomics; A, D and delta_bias
gradients are per-(batch, channel) partials summed by torch. A second backward (`ss_bwd`,
ARCHDSL_SCAN_BWD=threads) lays time across a program's threads; it is the slower (16.8 against
6.7-6.9 ms forward+backward at B4 L4096 D5120 N16 bf16 on the H200) and stays as a cross-check.

A third forward (`ss_fwd_segments` in triton_selective_scan_segments.py, chosen by
ARCHDSL_SCAN_FWD=segments) cuts the sequence into segments run in parallel and stores the same
checkpoints, so either backward follows any of them.
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from .._dispatch import apply, interpreting, pick_impl, time_or_inf
from .._host import cdiv, dense, next_pow2, unit_last

LOG2E = 1.4426950408889634
# Checkpoint interval = backward chunk; the interpreter runs small tiles so CI stays fast.
CK = 8 if interpreting() else 64


@triton.jit
def _lin_combine(a1, b1, a2, b2):
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _pick_sum(x, at, axis: tl.constexpr):
    """x summed over `axis` where `at` holds (where it holds once along the axis: that entry). The rest are
    -0.0, since x + (-0.0) is x and folds away where x + 0.0 is an add that stays (it makes -0.0 +0.0); a
    literal -0.0 reaches the IR as +0.0, so it is made from its bits. ptxas (sm_90): the groups backward's loop
    1293 -> 1256 instructions a sub-tile; H200, B4 D5120 N16 bf16 (thirty-first run): the groups backward 0.3-1%
    faster, the serial forward's (32, 2, 8) tile 1.3-3.6%."""
    return tl.sum(tl.where(at, x, tl.full(x.shape, 0x80000000, tl.uint32).to(tl.float32, bitcast=True)), axis=axis)


@triton.jit
def _starts(rs_ptr, pid_b, tt, L):
    """[T] bool: which of the steps tt of row pid_b start a sequence (rs [B, L] int8, nonzero there; False past L)."""
    return tl.load(rs_ptr + pid_b * L + tt, mask=tt < L, other=0) != 0


@triton.jit
def _load_dt(ptrs, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """delta after bias and softplus, and the pre-softplus value (for the backward); 0 where masked."""
    raw = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw = raw + bias[:, None]
    dt = raw
    if SOFTPLUS:
        dt = _softplus(raw, False)
    return tl.where(mask, dt, 0.0), raw


@triton.jit(do_not_specialize=["s_l", "sB_l", "sC_l"])
def _ss_fwd_lanes_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, rs_ptr,
                         y_ptr, hT_ptr, ck_ptr,
                         L, DIM, N, CPG, NCK, s_l,
                         sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
                         BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, T: tl.constexpr, CKI: tl.constexpr,
                         HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                         HAS_H0: tl.constexpr, STORE_CK: tl.constexpr, HAS_RESET: tl.constexpr):
    """The forward with tiles ordered [N, T, D]: channels across lanes, a channel's N states and T
    steps in one thread, so the scan and both reductions stay in registers. The time stride is a
    runtime value (s_l = 1) so the compiler does not lay lanes along time to coalesce the loads."""
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    t = tl.arange(0, T)
    dmask, nmask = d < DIM, n < N
    nd_mask = nmask[:, None] & dmask[None, :]
    g = ((pid_d * BLOCK_D) // CPG).to(tl.int64)
    row = (pid_b * DIM + d.to(tl.int64)) * L
    state_off = (pid_b * DIM + d.to(tl.int64))[None, :] * N + n[:, None]
    A2 = tl.load(A_ptr + d[None, :] * N + n[:, None], mask=nd_mask, other=0.0).to(tl.float32) * 1.4426950408889634
    h = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    if HAS_H0:
        h = tl.load(h0_ptr + state_off, mask=nd_mask, other=0.0).to(tl.float32)
    B_base = B_ptr + pid_b * sB_b + g * sB_g
    C_base = C_ptr + pid_b * sC_b + g * sC_g
    for c in range(0, tl.cdiv(L, T)):
        tt = c * T + t
        tmask = tt < L
        m2 = tmask[:, None] & dmask[None, :]
        off = row[None, :] + tt[:, None].to(tl.int64) * s_l
        if STORE_CK:
            if (c * T) % CKI == 0:
                ck_off = ((pid_b * DIM + d.to(tl.int64)) * NCK + (c * T) // CKI)[None, :] * N + n[:, None]
                tl.store(ck_ptr + ck_off, h, mask=nd_mask)
        u = tl.load(u_ptr + off, mask=m2, other=0.0).to(tl.float32)
        dt = tl.load(dt_ptr + off, mask=m2, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt += tl.load(bias_ptr + d, mask=dmask, other=0.0).to(tl.float32)[None, :]
        if SOFTPLUS:
            dt = _softplus(dt, False)
        dt = tl.where(m2, dt, 0.0)
        bn_mask = nmask[:, None] & tmask[None, :]
        Bt = tl.load(B_base + n[:, None] * sB_n + tt[None, :].to(tl.int64) * sB_l, mask=bn_mask, other=0.0).to(tl.float32)
        Ct = tl.load(C_base + n[:, None] * sC_n + tt[None, :].to(tl.int64) * sC_l, mask=bn_mask, other=0.0).to(tl.float32)
        dA = tl.exp2(dt[None, :, :] * A2[:, None, :])
        if HAS_RESET:  # a sequence starts: its decay is 0, the state restarts from zero
            dA = tl.where(_starts(rs_ptr, pid_b, tt, L)[None, :, None], 0.0, dA)
        dBu = (dt * u)[None, :, :] * Bt[:, :, None]
        aP, hS = tl.associative_scan((dA, dBu), 1, _lin_combine)
        hs = hS + aP * h[:, None, :]
        y = tl.sum(hs * Ct[:, :, None], axis=0)
        h = _pick_sum(hs, t[None, :, None] == T - 1, 1)
        if HAS_D:
            y += tl.load(D_ptr + d, mask=dmask, other=0.0).to(tl.float32)[None, :] * u
        if HAS_Z:
            zz = tl.load(z_ptr + off, mask=m2, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(y_ptr + off, y.to(y_ptr.dtype.element_ty), mask=m2)
    tl.store(hT_ptr + state_off, h, mask=nd_mask)


@triton.jit(do_not_specialize=["sB_l", "sC_l"])  # s_l = 1 specialized: see the launchers' notes
def _ss_fwd_groups_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, rs_ptr,
                          y_ptr, hT_ptr, ck_ptr,
                          L, DIM, N, CPG, NCK, s_l,
                          sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
                          BLOCK_D: tl.constexpr, NS: tl.constexpr, NPT: tl.constexpr, T: tl.constexpr,
                          CKI: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                          SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr, STORE_CK: tl.constexpr,
                          FAST_LOG: tl.constexpr, HAS_RESET: tl.constexpr):
    """The forward with a channel's N states split over NS neighbouring threads, NPT = N / NS each:
    tiles [NPT, T, BLOCK_D, NS], T steps of a channel in one thread's registers. At B·D = 20K
    channels a channel per thread leaves most of the GPU idle; NS threads a channel multiply the
    warps by NS, and y's sum over the NS groups is a warp shuffle. The next T steps' tiles are
    loaded before this tile is scanned, so their latency hides behind it. The carried state enters
    through the first step's input (h_0 = a_0 h + b_0), so the scan needs no decay products.
    FAST_LOG (compiled only) takes softplus's log on the special-function unit (see _softplus)."""
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    t = tl.arange(0, T)
    n3 = tl.arange(0, NS)[None, None, :] * NPT + tl.arange(0, NPT)[:, None, None]  # [NPT, 1, NS]
    d3 = d[None, :, None]
    dmask = d < DIM
    s_mask = (d3 < DIM) & (n3 < N)  # [NPT, BLOCK_D, NS]
    g = ((pid_d * BLOCK_D) // CPG).to(tl.int64)
    ch = pid_b * DIM + d.to(tl.int64)
    row = ch * L
    state_off = ch[None, :, None] * N + n3
    A2 = tl.load(A_ptr + d3 * N + n3, mask=s_mask, other=0.0).to(tl.float32) * 1.4426950408889634
    h = tl.zeros([NPT, BLOCK_D, NS], dtype=tl.float32)
    if HAS_H0:
        h = tl.load(h0_ptr + state_off, mask=s_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0).to(tl.float32)[None, :]
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=dmask, other=0.0).to(tl.float32)[None, :]
    B_base = B_ptr + pid_b * sB_b + g * sB_g
    C_base = C_ptr + pid_b * sC_b + g * sC_g
    u_n, dt_n, z_n, B_n, C_n = _groups_tile(u_ptr, dt_ptr, z_ptr, B_base, C_base, row, t, n3, dmask, L, N, s_l,
                                            sB_n, sB_l, sC_n, sC_l, HAS_Z)
    for c in range(0, tl.cdiv(L, T)):
        u, raw, zz, Bt, Ct = u_n, dt_n, z_n, B_n, C_n
        u_n, dt_n, z_n, B_n, C_n = _groups_tile(u_ptr, dt_ptr, z_ptr, B_base, C_base, row, (c + 1) * T + t, n3,
                                                dmask, L, N, s_l, sB_n, sB_l, sC_n, sC_l, HAS_Z)
        if STORE_CK:
            if (c * T) % CKI == 0:
                ck_off = (ch[None, :, None] * NCK + (c * T) // CKI) * N + n3
                tl.store(ck_ptr + ck_off, h, mask=s_mask)
        tt = c * T + t
        m2 = (tt < L)[:, None] & dmask[None, :]
        if HAS_BIAS:
            raw += bias
        dt = raw
        if SOFTPLUS:
            dt = _softplus(raw, FAST_LOG)
        dt = tl.where(m2, dt, 0.0)
        dA = tl.exp2(dt[None, :, :, None] * A2[:, None, :, :])
        if HAS_RESET:  # a sequence starts: its decay is 0, the state restarts from zero
            dA = tl.where(_starts(rs_ptr, pid_b, tt, L)[None, :, None, None], 0.0, dA)
        dBu = (dt * u)[None, :, :, None] * Bt[:, :, None, :]
        dBu = tl.where((t == 0)[None, :, None, None], dBu + dA * h[:, None, :, :], dBu)
        _, hs = tl.associative_scan((dA, dBu), 1, _lin_combine)
        y = tl.sum(tl.sum(hs * Ct[:, :, None, :], axis=0), axis=2)
        h = _pick_sum(hs, (t == T - 1)[None, :, None, None], 1)
        if HAS_D:
            y += Dv * u
        if HAS_Z:
            y = y * zz * tl.sigmoid(zz)
        tl.store(y_ptr + row[None, :] + tt[:, None].to(tl.int64) * s_l, y.to(y_ptr.dtype.element_ty), mask=m2)
    tl.store(hT_ptr + state_off, h, mask=s_mask)


@triton.jit
def _softplus(x, FAST_LOG: tl.constexpr):
    """log(1 + e^x), x itself past 20. FAST_LOG: lg2.approx (one special-function op, relative error
    ~2^-22) instead of libdevice's log, a ~20-instruction polynomial that cost a tenth of the groups
    forward's instructions; inline PTX, so not under the interpreter."""
    if FAST_LOG:
        lg = tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=f,f", [1.0 + tl.exp2(x * 1.4426950408889634)],
                                       dtype=tl.float32, is_pure=True, pack=1)
        sp = lg * 0.6931471805599453
    else:
        sp = tl.log(1.0 + tl.exp(x))
    return tl.where(x > 20.0, x, sp)


@triton.jit
def _groups_tile(u_ptr, dt_ptr, z_ptr, B_base, C_base, row, tt, n3, dmask, L, N, s_l,
                 sB_n, sB_l, sC_n, sC_l, HAS_Z: tl.constexpr):
    """The groups forward's inputs at steps tt, float32, 0 past L: u, delta (before bias and softplus),
    z `[T, BLOCK_D]` (u again without HAS_Z: a compiled function cannot return None), and B, C
    `[NPT, T, NS]`."""
    m2 = (tt < L)[:, None] & dmask[None, :]
    off = row[None, :] + tt[:, None].to(tl.int64) * s_l
    u = tl.load(u_ptr + off, mask=m2, other=0.0).to(tl.float32)
    raw = tl.load(dt_ptr + off, mask=m2, other=0.0).to(tl.float32)
    zz = tl.load(z_ptr + off, mask=m2, other=0.0).to(tl.float32) if HAS_Z else u  # unread without z
    t3 = tt[None, :, None].to(tl.int64)
    bn_mask = (n3 < N) & (t3 < L)
    Bt = tl.load(B_base + n3 * sB_n + t3 * sB_l, mask=bn_mask, other=0.0).to(tl.float32)
    Ct = tl.load(C_base + n3 * sC_n + t3 * sC_l, mask=bn_mask, other=0.0).to(tl.float32)
    return u, raw, zz, Bt, Ct


@triton.jit
def _ss_bwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ck_ptr, dy_ptr, dhT_ptr, rs_ptr,
                   du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr,
                   L, DIM, N, CPG, NCK,
                   sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l, sdB_b, sdB_g, sdC_b, sdC_g,
                   BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, T: tl.constexpr,
                   HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                   HAS_DHT: tl.constexpr, HAS_RESET: tl.constexpr):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    t = tl.arange(0, T)
    dmask, nmask = d < DIM, n < N
    dn_mask = dmask[:, None] & nmask[None, :]
    g = ((pid_d * BLOCK_D) // CPG).to(tl.int64)
    row = (pid_b * DIM + d.to(tl.int64)) * L
    state_off = (pid_b * DIM + d.to(tl.int64))[:, None] * N + n[None, :]
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=dn_mask, other=0.0).to(tl.float32)
    A2 = A * 1.4426950408889634
    bias = tl.load(bias_ptr + d, mask=dmask, other=0.0).to(tl.float32) if HAS_BIAS else None
    Dv = tl.load(D_ptr + d, mask=dmask, other=0.0).to(tl.float32) if HAS_D else None
    kc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    if HAS_DHT:
        kc = tl.load(dhT_ptr + state_off, mask=dn_mask, other=0.0).to(tl.float32)
    dA_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    B_base = B_ptr + pid_b * sB_b + g * sB_g
    C_base = C_ptr + pid_b * sC_b + g * sC_g
    dB_base = dB_ptr + pid_b * sdB_b + g * sdB_g
    dC_base = dC_ptr + pid_b * sdC_b + g * sdC_g
    for cr in range(0, tl.cdiv(L, T)):
        c = tl.cdiv(L, T) - 1 - cr
        tt = c * T + t
        tmask = tt < L
        m2 = dmask[:, None] & tmask[None, :]
        off = row[:, None] + tt[None, :]
        bn_mask = nmask[:, None] & tmask[None, :]
        u = tl.load(u_ptr + off, mask=m2, other=0.0).to(tl.float32)
        dt, raw = _load_dt(dt_ptr + off, m2, bias, HAS_BIAS, SOFTPLUS)
        dtn, _ = _load_dt(dt_ptr + off + 1, dmask[:, None] & (tt + 1 < L)[None, :], bias, HAS_BIAS, SOFTPLUS)
        Bt = tl.load(B_base + n[:, None] * sB_n + tt[None, :].to(tl.int64) * sB_l, mask=bn_mask, other=0.0).to(tl.float32)
        Ct = tl.load(C_base + n[:, None] * sC_n + tt[None, :].to(tl.int64) * sC_l, mask=bn_mask, other=0.0).to(tl.float32)
        ck_off = ((pid_b * DIM + d.to(tl.int64)) * NCK + c)[:, None] * N + n[None, :]
        h0 = tl.load(ck_ptr + ck_off, mask=dn_mask, other=0.0)
        dA = tl.exp2(dt[:, None, :] * A2[:, :, None])
        if HAS_RESET:  # a sequence starts: its decay is 0, the state restarts from zero
            dA = tl.where(_starts(rs_ptr, pid_b, tt, L)[None, None, :], 0.0, dA)
        dtu = dt * u
        dBu = dtu[:, None, :] * Bt[None, :, :]
        aP, hS = tl.associative_scan((dA, dBu), 2, _lin_combine)
        hs = hS + aP * h0[:, :, None]
        gy = tl.load(dy_ptr + off, mask=m2, other=0.0).to(tl.float32)
        if HAS_Z:
            zz = tl.load(z_ptr + off, mask=m2, other=0.0).to(tl.float32)
            sz = tl.sigmoid(zz)
            ypre = tl.sum(hs * Ct[None, :, :], axis=1)
            if HAS_D:
                ypre += Dv[:, None] * u
            dz = gy * ypre * sz * (1.0 + zz * (1.0 - sz))
            tl.store(dz_ptr + off, dz.to(dz_ptr.dtype.element_ty), mask=m2)
            gy = gy * zz * sz
        an = tl.exp2(dtn[:, None, :] * A2[:, :, None])
        if HAS_RESET:  # the next step's decay: 0 where the next step starts a sequence
            an = tl.where(_starts(rs_ptr, pid_b, tt + 1, L)[None, None, :], 0.0, an)
        P, K = tl.associative_scan((an, Ct[None, :, :] * gy[:, None, :]), 2, _lin_combine, reverse=True)
        k = K + P * kc[:, :, None]
        kc = _pick_sum(k, t[None, None, :] == 0, 2)
        G = k * (hs - dBu)
        kB = tl.sum(k * Bt[None, :, :], axis=1)
        ddt = tl.sum(G * A[:, :, None], axis=1) + kB * u
        du = kB * dt
        if HAS_D:
            du += Dv[:, None] * gy
            dD_acc += tl.sum(u * gy, axis=1)
        dA_acc += tl.sum(G * dt[:, None, :], axis=2)
        tl.atomic_add(dB_base + n[:, None] * L + tt[None, :],
                      tl.sum(k * dtu[:, None, :], axis=0), mask=bn_mask, sem="relaxed")
        tl.atomic_add(dC_base + n[:, None] * L + tt[None, :],
                      tl.sum(hs * gy[:, None, :], axis=0), mask=bn_mask, sem="relaxed")
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(raw)
        ddt = tl.where(m2, ddt, 0.0)
        dbias_acc += tl.sum(ddt, axis=1)
        tl.store(du_ptr + off, du.to(du_ptr.dtype.element_ty), mask=m2)
        tl.store(ddt_ptr + off, ddt.to(ddt_ptr.dtype.element_ty), mask=m2)
    dt0, _ = _load_dt(dt_ptr + row[:, None] + t[None, :], dmask[:, None] & (t == 0)[None, :], bias, HAS_BIAS, SOFTPLUS)
    dt0 = tl.sum(dt0, axis=1)
    a0 = tl.exp2(dt0[:, None] * A2)
    if HAS_RESET:  # the row's first token starts a sequence of its own: the initial state is not read
        a0 = tl.where(tl.load(rs_ptr + pid_b * L) != 0, 0.0, a0)
    tl.store(dh0_ptr + state_off, a0 * kc, mask=dn_mask)
    part = pid_b * DIM + d
    tl.store(dA_ptr + part[:, None] * N + n[None, :], dA_acc, mask=dn_mask)
    if HAS_D:
        tl.store(dD_ptr + part, dD_acc, mask=dmask)
    if HAS_BIAS:
        tl.store(dbias_ptr + part, dbias_acc, mask=dmask)



@triton.jit(do_not_specialize=["sB_l", "sC_l"])  # s_l = 1 specialized: see the launchers' notes
def _ss_bwd_groups_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ck_ptr, dy_ptr, dhT_ptr, rs_ptr,
                          scr_ptr, du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr,
                          L, DIM, N, CPG, NCK, s_l,
                          sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l, sdB_b, sdB_g,
                          BLOCK_D: tl.constexpr, NS: tl.constexpr, NPT: tl.constexpr, T: tl.constexpr,
                          CKI: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                          SOFTPLUS: tl.constexpr, HAS_DHT: tl.constexpr, FAST_LOG: tl.constexpr,
                          SUMC: tl.constexpr, HAS_RESET: tl.constexpr):
    """The backward in the groups forward's layout: [NPT, T, BLOCK_D, NS] tiles, a channel's N states over
    NS neighbouring threads, T steps of a channel in one thread's registers. The checkpoint chunks of
    CKI steps are walked last first: a first pass recomputes the state entering each T-step sub-tile
    into a per-program scratch (read back after a barrier), a second walks the sub-tiles in
    reverse (each sub-tile's inputs loaded while the one after it is worked through), recomputes their
    states and runs the adjoint k_t = C_t gy_t + exp(delta_{t+1} A) k_{t+1} one step at a time along
    the registers. Sums over the states (du, d delta, y for dz) are in-thread adds and a warp shuffle.
    dB and dC are sums over the block's channels: SUMC channels at a time in a warp shuffle, then fp32
    atomic adds. dA, dD and d delta_bias are per-(batch, channel) partials summed by torch. One-warp
    blocks are the fastest: their sums over channels need no shared memory or barriers."""
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    t = tl.arange(0, T)
    t4 = t[None, :, None, None]
    NSUB = CKI // T
    n3 = tl.arange(0, NS)[None, None, :] * NPT + tl.arange(0, NPT)[:, None, None]  # [NPT, 1, NS]
    d3 = d[None, :, None]
    dmask = d < DIM
    s_mask = (d3 < DIM) & (n3 < N)  # [NPT, BLOCK_D, NS]
    g = ((pid_d * BLOCK_D) // CPG).to(tl.int64)
    ch = pid_b * DIM + d.to(tl.int64)
    row = ch * L
    state_off = ch[None, :, None] * N + n3
    A = tl.load(A_ptr + d3 * N + n3, mask=s_mask, other=0.0).to(tl.float32)
    A2 = A * 1.4426950408889634
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0).to(tl.float32)[None, :]
    Dv = 0.0
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=dmask, other=0.0).to(tl.float32)[None, :]
    q = tl.zeros([NPT, BLOCK_D, NS], dtype=tl.float32)  # dL/d(the state entering the sub-tile after this one)
    if HAS_DHT:
        q = tl.load(dhT_ptr + state_off, mask=s_mask, other=0.0).to(tl.float32)
    dA_acc = tl.zeros([NPT, BLOCK_D, NS], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    B_base = B_ptr + pid_b * sB_b + g * sB_g
    C_base = C_ptr + pid_b * sC_b + g * sC_g
    dB_base = dB_ptr + pid_b * sdB_b + g * sdB_g
    dC_base = dC_ptr + pid_b * sdB_b + g * sdB_g  # dB and dC: one shape and strides
    scr = scr_ptr + (ch[None, :, None] * NSUB) * N + n3
    for cr in range(0, tl.cdiv(L, CKI)):
        c = tl.cdiv(L, CKI) - 1 - cr
        h = tl.load(ck_ptr + (ch[None, :, None] * NCK + c) * N + n3, mask=s_mask, other=0.0)
        base = c * CKI
        nxt = _groups_tile(u_ptr, dt_ptr, z_ptr, B_base, C_base, row, base + t, n3, dmask, L, N, s_l,
                           sB_n, sB_l, sC_n, sC_l, False)
        for j in range(0, NSUB):  # the state entering each sub-tile, into the scratch; the next tile loaded ahead
            tl.store(scr + j * N, h, mask=s_mask)
            tt = base + j * T + t
            u, raw, zz, Bt, Ct = nxt
            nxt = _groups_tile(u_ptr, dt_ptr, z_ptr, B_base, C_base, row, base + tl.minimum(j + 1, NSUB - 1) * T + t,
                               n3, dmask, L, N, s_l, sB_n, sB_l, sC_n, sC_l, False)
            dt = _groups_dt(raw + bias, tt, dmask, L, SOFTPLUS, FAST_LOG)
            dA = tl.exp2(dt[None, :, :, None] * A2[:, None, :, :])
            if HAS_RESET:  # a sequence starts: its decay is 0, the state restarts from zero
                dA = tl.where(_starts(rs_ptr, pid_b, tt, L)[None, :, None, None], 0.0, dA)
            dBu = (dt * u)[None, :, :, None] * Bt[:, :, None, :]
            _, hs = tl.associative_scan((dA, tl.where(t4 == 0, dBu + dA * h[:, None, :, :], dBu)), 1, _lin_combine)
            h = _pick_sum(hs, t4 == T - 1, 1)
        tl.debug_barrier()
        tt = base + (NSUB - 1) * T + t
        nxt = _groups_tile(u_ptr, dt_ptr, z_ptr, B_base, C_base, row, tt, n3, dmask, L, N, s_l,
                           sB_n, sB_l, sC_n, sC_l, HAS_Z)
        gy_n = tl.load(dy_ptr + row[None, :] + tt[:, None].to(tl.int64) * s_l,
                       mask=(tt < L)[:, None] & dmask[None, :], other=0.0)
        for jr in range(0, NSUB):
            j = NSUB - 1 - jr
            tt = base + j * T + t
            h0 = tl.load(scr + j * N, mask=s_mask, other=0.0)
            u, raw, zz, Bt, Ct = nxt
            gy = gy_n.to(tl.float32)
            tp = base + tl.maximum(j - 1, 0) * T + t
            nxt = _groups_tile(u_ptr, dt_ptr, z_ptr, B_base, C_base, row, tp, n3, dmask, L, N, s_l,
                               sB_n, sB_l, sC_n, sC_l, HAS_Z)
            gy_n = tl.load(dy_ptr + row[None, :] + tp[:, None].to(tl.int64) * s_l,
                           mask=(tp < L)[:, None] & dmask[None, :], other=0.0)
            m2 = (tt < L)[:, None] & dmask[None, :]
            off = row[None, :] + tt[:, None].to(tl.int64) * s_l
            raw = raw + bias
            dt = _groups_dt(raw, tt, dmask, L, SOFTPLUS, FAST_LOG)
            dA = tl.exp2(dt[None, :, :, None] * A2[:, None, :, :])
            if HAS_RESET:  # a sequence starts: its decay is 0, the state restarts from zero
                dA = tl.where(_starts(rs_ptr, pid_b, tt, L)[None, :, None, None], 0.0, dA)
            dtu = dt * u
            dBu = dtu[None, :, :, None] * Bt[:, :, None, :]
            _, hs = tl.associative_scan((dA, tl.where(t4 == 0, dBu + dA * h0[:, None, :, :], dBu)), 1, _lin_combine)
            if HAS_Z:
                ypre = tl.sum(tl.sum(hs * Ct[:, :, None, :], axis=0), axis=2)
                if HAS_D:
                    ypre += Dv * u
                sz = tl.sigmoid(zz)
                tl.store(dz_ptr + off, (gy * ypre * sz * (1.0 + zz * (1.0 - sz))).to(dz_ptr.dtype.element_ty),
                         mask=m2)
                gy = gy * zz * sz
            Cgy = Ct[:, :, None, :] * gy[None, :, :, None]
            # the adjoint, last step first: k_t = C_t gy_t + q, then q = exp(delta_t A) k_t flows to step t - 1;
            # T is in each thread's registers, so the selects fold away (a reversed tl.associative_scan
            # would shuffle every value across the warp and back)
            k = tl.zeros([NPT, T, BLOCK_D, NS], dtype=tl.float32)
            for i in tl.static_range(T):
                at = t4 == T - 1 - i
                kt = _pick_sum(Cgy, at, 1) + q
                k = tl.where(at, kt[:, None, :, :], k)
                q = _pick_sum(dA, at, 1) * kt
            G = k * (hs - dBu)  # dL/d(exp(delta A)) times exp(delta A) h_{t-1}
            kB = tl.sum(tl.sum(k * Bt[:, :, None, :], axis=0), axis=2)
            ddt = tl.sum(tl.sum(G * A[:, None, :, :], axis=0), axis=2) + kB * u
            du = kB * dt
            if HAS_D:
                du += Dv * gy
                dD_acc += tl.sum(u * gy, axis=0)
            dA_acc += tl.sum(G * dt[None, :, :, None], axis=1)
            # dB, dC: sums over the block's channels, SUMC at a time in the warp, the rest by atomic adds
            o4 = n3[:, :, None, :] * L + tt[None, :, None, None] + tl.zeros([1, 1, BLOCK_D // SUMC, 1], tl.int32)
            m4 = (n3[:, :, None, :] < N) & (tt[None, :, None, None] < L)
            kd = tl.sum(tl.reshape(k * dtu[None, :, :, None], [NPT, T, BLOCK_D // SUMC, SUMC, NS]), axis=3)
            hg = tl.sum(tl.reshape(hs * gy[None, :, :, None], [NPT, T, BLOCK_D // SUMC, SUMC, NS]), axis=3)
            tl.atomic_add(dB_base + o4, kd, mask=m4, sem="relaxed")
            tl.atomic_add(dC_base + o4, hg, mask=m4, sem="relaxed")
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(raw)
            ddt = tl.where(m2, ddt, 0.0)
            dbias_acc += tl.sum(ddt, axis=0)
            tl.store(du_ptr + off, du.to(du_ptr.dtype.element_ty), mask=m2)
            tl.store(ddt_ptr + off, ddt.to(ddt_ptr.dtype.element_ty), mask=m2)
        tl.debug_barrier()  # the next chunk's first pass overwrites the scratch
    tl.store(dh0_ptr + state_off, q, mask=s_mask)
    tl.store(dA_ptr + state_off, dA_acc, mask=s_mask)
    if HAS_D:
        tl.store(dD_ptr + ch, dD_acc, mask=dmask)
    if HAS_BIAS:
        tl.store(dbias_ptr + ch, dbias_acc, mask=dmask)


@triton.jit
def _groups_dt(raw, tt, dmask, L, SOFTPLUS: tl.constexpr, FAST_LOG: tl.constexpr):
    """delta [T, BLOCK_D] from its tile after the bias: through softplus when asked, 0 past L."""
    dt = raw
    if SOFTPLUS:
        dt = _softplus(dt, FAST_LOG)
    return tl.where((tt < L)[:, None] & dmask[None, :], dt, 0.0)


@triton.jit
def _lanes_tile(u_ptr, dt_ptr, bias_ptr, B_base, C_base, row, d, n, tt, dmask, nmask,
                L, s_l, sB_n, sB_l, sC_n, sC_l, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """One [T, D] tile of delta (after bias and softplus; 0 past L), pre-softplus delta, u, the mask,
    and the [N, T] tiles of B and C."""
    tmask = tt < L
    m2 = tmask[:, None] & dmask[None, :]
    off = row[None, :] + tt[:, None].to(tl.int64) * s_l
    u = tl.load(u_ptr + off, mask=m2, other=0.0).to(tl.float32)
    raw = tl.load(dt_ptr + off, mask=m2, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw += tl.load(bias_ptr + d, mask=dmask, other=0.0).to(tl.float32)[None, :]
    dt = raw
    if SOFTPLUS:
        dt = _softplus(raw, False)
    dt = tl.where(m2, dt, 0.0)
    bn_mask = nmask[:, None] & tmask[None, :]
    Bt = tl.load(B_base + n[:, None] * sB_n + tt[None, :].to(tl.int64) * sB_l, mask=bn_mask, other=0.0).to(tl.float32)
    Ct = tl.load(C_base + n[:, None] * sC_n + tt[None, :].to(tl.int64) * sC_l, mask=bn_mask, other=0.0).to(tl.float32)
    return dt, raw, u, m2, Bt, Ct

# ---------------------------------------------------------------------------------------
# Launchers. Tile choices are timed once per problem key on the GPU (the best tile
# depends on D, L and the GPU); the interpreter always runs the smallest tile.
# "groups" tiles (BLOCK_D, NS, T, warps, register cap or None) run the [N/NS, T, BLOCK_D, NS] forward
# (BLOCK_D·NS = 32 x warps; T divides CK), "lanes" tiles (BLOCK_D = 32 x warps, T, warps) the [N, T, D] one.
# At B4 D5120 N16 and NS 4 there are 19.4 warps a card's SM: the cap of 96 registers lets them all be
# resident at once (at ~110, a second wave runs a fifth of the blocks). H200, bf16, L 4096
# (benchmarks/scan_configs.py, 2026-11-29): the four groups tiles 0.883 / 0.980 / 0.954 / 1.188 ms, the
# lanes tile 1.93 ms; a [D, N, T] forward (time across threads) took 6.7-12 ms and was removed.
# The time stride: the groups kernels take s_l (always 1) as a specialized value, where the lanes kernel keeps
# it a runtime one. Knowing it, the compiler loads u, delta, z (and stores y) a warp on 8 steps of 8 channels,
# 2 contiguous steps a thread; with a runtime stride the 32 lanes of a warp went across 32 channels, 2 bytes
# each from its own row (Triton's layouts, read offline). H200, bf16, B4 D5120 N16, one process, outputs
# bit-identical: forward 0.883 -> 0.848 ms at L 4096 and 3.507 -> 3.367 at 16K; forward+backward at L 4096
# with each backward tile fixed 6.99 -> 6.64 ms (8, 4, 8, 1), 7.45 -> 7.36 (8, 4, 4, 1), 7.06 -> 7.00
# (4, 8, 8, 1). The forward stays bound by the L1 data pipe (88% busy per Nsight Compute, 72% of its
# wavefronts shared memory: the layout conversions of B, C, delta and delta u into the tile).
# The tiles again with the stride specialized (twentieth run, 2026-11-29, one process, L 4096 / 16384):
# (32, 4, 8, 4, 96) 0.848 / 3.377 ms; NS 2 at 2 warps, (32, 2, 8, 2, None), 0.804 / 3.200 (NPT 8: one
# shuffle level of y's sum over the states, not two); (64, 2, 8, 4) 0.826 / 3.273 (caps 168 / 128: 0.843 /
# 0.867 at 4K); two channels a thread (BLOCK_D 64 at NS 4, T 8) 0.893; T 4 at BLOCK_D 64-128 1.9-3.3 ms.
_FWD_CONFIGS = [("groups", 32, 2, 8, 2, None), ("groups", 32, 4, 8, 4, 96), ("groups", 16, 4, 8, 2, 96),
                ("groups", 32, 4, 8, 4, None), ("groups", 16, 8, 8, 4, 96), ("lanes", 32, 4, 1)]
# The groups backward's tiles: (BLOCK_D, NS, T, warps, register cap or None, SUMC: channels summed in the warp
# before each atomic add of dB and dC), T dividing CK. H200, bf16, B4 L4096 D5120 N16, fwd+bwd (2026-11-29, one
# process): one warp 7.10-7.12 ms at T 8 (255 registers, 248 bytes of stack) summing all 8 channels, 6.66 summing
# 4 (two atomic adds, 64 fewer shuffles a sub-tile), 7.52 summing 2, 10.9 none; 7.51 at T 4 (228 registers);
# two warps 10.0-10.4, four 12.9-13.5 (their channel sums cross warps through shared memory); caps of 104-128
# registers 9.2-16.3 (spills); T 2 12.2. The threads backward: 16.8.
_BWD_GROUPS_CONFIGS = [(8, 4, 8, 1, None, 4), (8, 4, 4, 1, None, 8), (4, 8, 8, 1, None, 4)]
_BWD_THREADS_CONFIGS = [(2, 2), (4, 4), (8, 8)]  # the threads backward: (BLOCK_D, warps)
_INTERP_FWD, _INTERP_BWD_GROUPS, _INTERP_BWD_THREADS = ("groups", 2, 2, 4, 1, None), (2, 2, 4, 1, None, 1), (2, 1)
_best: dict = {}
FWD_OVERRIDE = None  # a forward tile to use instead of timing (tests run both kernels with it)


def _block_d(bd: int, cpg: int) -> int:
    """Largest power of two <= bd dividing the channels per B/C group, so a tile never straddles groups."""
    while cpg % bd:
        bd //= 2
    return bd


def _pick(key, configs, launch):
    if interpreting() or len(configs) == 1:
        return configs[0]
    if key not in _best:
        timed = []
        for cfg in configs:
            try:
                timed.append((triton.testing.do_bench(lambda: launch(cfg), warmup=5, rep=20), cfg))
            except Exception:  # a tile that does not fit this GPU (registers, shared memory) is skipped
                continue
        _best[key] = min(timed, key=lambda tc: tc[0])[1] if timed else configs[0]
    return _best[key]


def _flags(D, z, bias, softplus):
    return dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None, SOFTPLUS=bool(softplus))


def ss_fwd(u, delta, A, B4, C4, D, z, bias, h0, softplus, store_ck, starts=None):
    """Launch the forward. B4/C4 `[B, G, N, L]` (any strides); starts `[B, L]` int8, nonzero where a sequence
    starts (packed sequences), or None. Returns y, last state (fp32), checkpoints."""
    batch, dim, L = u.shape
    N, cpg = A.shape[1], dim // B4.shape[1]
    y = torch.empty_like(u)
    hT = torch.empty(batch, dim, N, device=u.device, dtype=torch.float32)
    nck = cdiv(L, CK)
    ck = torch.empty(batch, dim, nck, N, device=u.device, dtype=torch.float32) if store_ck else None
    flags = _flags(D, z, bias, softplus)

    def launch(cfg):
        if cfg[0] == "groups":
            _, bd, ns, T, nw, maxnreg = cfg
            block_n = next_pow2(N)
            ns = min(ns, block_n)
            bd = _block_d(bd, cpg)
            compiled = not interpreting()
            _ss_fwd_groups_kernel[(cdiv(dim, bd), batch)](
                u, delta, A, B4, C4, D, z, bias, h0, starts, y, hT, ck,
                L, dim, N, cpg, nck, 1, *B4.stride(), *C4.stride(),
                BLOCK_D=bd, NS=ns, NPT=block_n // ns, T=T, CKI=CK, HAS_RESET=starts is not None,
                HAS_H0=h0 is not None, STORE_CK=store_ck, FAST_LOG=compiled, num_warps=nw,
                **({"maxnreg": maxnreg} if maxnreg and compiled else {}), **flags)
            return
        _, bd, T, nw = cfg
        bd = _block_d(bd, cpg)
        _ss_fwd_lanes_kernel[(cdiv(dim, bd), batch)](
            u, delta, A, B4, C4, D, z, bias, h0, starts, y, hT, ck,
            L, dim, N, cpg, nck, 1, *B4.stride(), *C4.stride(),
            BLOCK_D=bd, BLOCK_N=next_pow2(N), T=T, CKI=CK, HAS_RESET=starts is not None,
            HAS_H0=h0 is not None, STORE_CK=store_ck, num_warps=nw, **flags)

    key = ("fwd", batch, dim, L, N, cpg, u.dtype, tuple(flags.values()), h0 is not None, store_ck, starts is not None)
    launch(FWD_OVERRIDE or _pick(key, [_INTERP_FWD] if interpreting() else _FWD_CONFIGS, launch))
    return y, hT, ck


def _bwd_outputs(u, delta, A, B4, z, dbc=True):
    """The backward's buffers: du, d delta, dz (None without z) like their inputs; dB, dC [B, G, N, L] float32
    zeros (the kernels add into them; None unless dbc); per-batch partials dA [B, D, N], dD, d delta_bias
    [B, D]; dh0."""
    batch, dim, L = u.shape
    dB = torch.zeros(batch, B4.shape[1], A.shape[1], L, device=u.device, dtype=torch.float32) if dbc else None
    dA = torch.empty(batch, dim, A.shape[1], device=u.device, dtype=torch.float32)
    dD = torch.empty(batch, dim, device=u.device, dtype=torch.float32)
    return (torch.empty_like(u), torch.empty_like(delta), torch.empty_like(z) if z is not None else None,
            dB, torch.zeros_like(dB) if dbc else None, dA, dD, torch.empty_like(dD), torch.empty_like(dA))


def _bwd_grads(out, A, B4, C4, D, bias):
    """The gradients of (u, delta, A, B4, C4, D, z, bias, initial state) from the buffers `out` (as
    _bwd_outputs lays them out, dB and dC filled): per-batch partials summed, dtypes of the inputs."""
    du, ddt, dz, dB, dC, dA, dD, dbias, dh0 = out
    return (du, ddt, dA.sum(0).to(A.dtype), dB.to(B4.dtype), dC.to(C4.dtype),
            dD.sum(0).to(D.dtype) if D is not None else None, dz,
            dbias.sum(0).to(bias.dtype) if bias is not None else None, dh0)


def _bwd_run(key, configs, interp, launch, out, A, B4, C4, D, bias):
    """Pick a tile (timed once per key), launch it on zeroed dB and dC, and return the gradients (_bwd_grads)."""
    cfg = _pick(key, [interp] if interpreting() else configs, launch)
    out[3].zero_(), out[4].zero_()  # dB, dC: the timing runs added into them
    launch(cfg)
    return _bwd_grads(out, A, B4, C4, D, bias)


def ss_bwd_groups(u, delta, A, B4, C4, D, z, bias, ck, dy, dhT, softplus, starts=None):
    """Launch the backward (the groups layout); returns grads of (u, delta, A, B4, C4, D, z, bias, initial state)."""
    batch, dim, L = u.shape
    N, cpg = A.shape[1], dim // B4.shape[1]
    out = _bwd_outputs(u, delta, A, B4, z)
    du, ddt, dz, dB, dC, dA, dD, dbias, dh0 = out
    flags = _flags(D, z, bias, softplus)
    block_n = next_pow2(N)

    def launch(cfg):
        bd, ns, T, nw, maxnreg, sumc = cfg
        ns = min(ns, block_n)
        bd = _block_d(bd, cpg)
        compiled = not interpreting()
        scratch = torch.empty(batch, dim, CK // T, N, device=u.device, dtype=torch.float32)
        _ss_bwd_groups_kernel[(cdiv(dim, bd), batch)](
            u, delta, A, B4, C4, D, z, bias, ck, dy, dhT, starts,
            scratch, du, ddt, dz, dA, dB, dC, dD, dbias, dh0,
            L, dim, N, cpg, ck.shape[2], 1, *B4.stride(), *C4.stride(), dB.stride(0), dB.stride(1),
            BLOCK_D=bd, NS=ns, NPT=block_n // ns, T=T, CKI=CK, HAS_DHT=dhT is not None, FAST_LOG=compiled,
            SUMC=min(sumc, bd), HAS_RESET=starts is not None, num_warps=nw, **({"maxnreg": maxnreg} if maxnreg and compiled else {}), **flags)

    key = ("bwd_groups", batch, dim, L, N, cpg, u.dtype, tuple(flags.values()), dhT is not None, starts is not None)
    return _bwd_run(key, _BWD_GROUPS_CONFIGS, _INTERP_BWD_GROUPS, launch, out, A, B4, C4, D, bias)


def ss_bwd(u, delta, A, B4, C4, D, z, bias, ck, dy, dhT, softplus, starts=None):
    """The threads backward (time across a program's threads); same contract as `ss_bwd_groups`."""
    batch, dim, L = u.shape
    N, cpg = A.shape[1], dim // B4.shape[1]
    out = _bwd_outputs(u, delta, A, B4, z)
    du, ddt, dz, dB, dC, dA, dD, dbias, dh0 = out
    flags = _flags(D, z, bias, softplus)

    def launch(cfg):
        bd, nw = cfg
        bd = _block_d(bd, cpg)
        _ss_bwd_kernel[(cdiv(dim, bd), batch)](
            u, delta, A, B4, C4, D, z, bias, ck, dy, dhT, starts,
            du, ddt, dz, dA, dB, dC, dD, dbias, dh0,
            L, dim, N, cpg, ck.shape[2], *B4.stride(), *C4.stride(),
            dB.stride(0), dB.stride(1), dC.stride(0), dC.stride(1),
            BLOCK_D=bd, BLOCK_N=next_pow2(N), T=CK, HAS_DHT=dhT is not None, HAS_RESET=starts is not None,
            num_warps=nw, **flags)

    key = ("bwd", batch, dim, L, N, cpg, u.dtype, tuple(flags.values()), dhT is not None, starts is not None)
    return _bwd_run(key, _BWD_THREADS_CONFIGS, _INTERP_BWD_THREADS, launch, out, A, B4, C4, D, bias)


SCAN_BWD = ("gluon", "groups", "threads")  # ARCHDSL_SCAN_BWD's values (unset: the default, see _bwd_impl)


def _bwd_choice() -> str:
    """ARCHDSL_SCAN_BWD as set ('' when unset); a ValueError for any other value, which would otherwise run the
    default backward unsaid (a typo such as `thread`)."""
    want = os.environ.get("ARCHDSL_SCAN_BWD", "").strip().lower()
    if want and want not in SCAN_BWD:
        raise ValueError(f"ARCHDSL_SCAN_BWD={want!r}: expected one of {', '.join(SCAN_BWD)} (or unset)")
    return want


def _bwd_impl(u, A, B4, starts=None):
    """`ARCHDSL_SCAN_BWD=gluon|groups|threads`: the backward in the Gluon forward's layout (CUDA only; the
    default there where it takes the case, `gluon_selective_scan.fits_bwd`), the Triton groups one (the
    default elsewhere) or the threads one. `starts` (packed sequences) go to whichever runs."""
    want = _bwd_choice()
    impl = ss_bwd if want == "threads" else ss_bwd_groups
    if want in ("", "gluon") and u.is_cuda and torch.version.hip is None:
        from .gluon_selective_scan import HAVE_GLUON, fits_bwd, ss_bwd_gluon
        if HAVE_GLUON and (want == "gluon" or fits_bwd(u.shape[1], B4.shape[1], A.shape[1], CK)):
            return lambda *a: ss_bwd_gluon(*a, CK=CK, starts=starts)
    if want == "gluon":
        raise ValueError("ARCHDSL_SCAN_BWD=gluon: the Gluon backward runs on CUDA tensors only (Gluon is compiled, "
                         "never interpreted), with a Triton that has Gluon")
    return lambda *a: impl(*a, starts=starts)


SCAN_FWD = ("gluon", "serial", "segments", "auto")  # ARCHDSL_SCAN_FWD's values (unset: the default, see _fwd_impl)


def _fwd_choice() -> str:
    """ARCHDSL_SCAN_FWD as set ('' when unset); a ValueError naming every value it takes for any other (pick_impl
    would list only the forwards this call can run: not gluon off CUDA, nor segments with seq_idx)."""
    want = os.environ.get("ARCHDSL_SCAN_FWD", "").strip().lower()
    if want and want not in SCAN_FWD:
        raise ValueError(f"ARCHDSL_SCAN_FWD={want!r}: expected one of gluon (CUDA only), serial, segments, auto "
                         "(or unset)")
    return want


def _fwd_impl(args, starts=None):
    """`ARCHDSL_SCAN_FWD=gluon|serial|segments|auto`: the forward with hand-set layouts (`ss_fwd_gluon`: a
    channel's states in two threads, B and C from shared memory; CUDA only, since Gluon is compiled, never
    interpreted), the Triton one walking all L steps per channel (`ss_fwd`), the time-segmented one
    (`ss_fwd_segments`: B·D·S threads, u/delta/B read twice), or on CUDA the fastest, timed once per case.
    The default is the Gluon one on CUDA where it takes the case (`gluon_selective_scan.fits`: G = 1 or a
    multiple of 16 channels a group, N <= 32), else the serial one. All store the same checkpoints. `starts`
    (packed sequences) go to the serial or the Gluon one."""
    from .triton_selective_scan_segments import ss_fwd_segments
    want = _fwd_choice()
    impls = {"serial": lambda *a: ss_fwd(*a, starts=starts)}
    if starts is None:  # the segmented forward takes no sequence starts
        impls["segments"] = ss_fwd_segments
    elif want == "segments":
        raise ValueError("ARCHDSL_SCAN_FWD='segments': with seq_idx the forward is serial, gluon or auto (the "
                         "segmented forward takes no sequence starts)")
    default = "serial"
    wants_gluon = want == "gluon"
    u, A, B4, h0, store_ck = args[0], args[2], args[3], args[8], args[10]
    if u.is_cuda or wants_gluon:  # Gluon's import (~75 ms) only where it may run
        from .gluon_selective_scan import HAVE_GLUON, fits, ss_fwd_gluon
        if HAVE_GLUON and u.is_cuda:
            impls["gluon"] = lambda *a: ss_fwd_gluon(*a, CK=CK, starts=starts)
            if fits(u.shape[1], B4.shape[1], A.shape[1], CK) and torch.version.hip is None:  # 32-lane warps
                default = "gluon"
        elif wants_gluon:
            raise ValueError("ARCHDSL_SCAN_FWD=gluon: the Gluon forward runs on CUDA tensors only (Gluon is "
                             "compiled, never interpreted)" + ("" if HAVE_GLUON else ", with a Triton that has Gluon"))
    case = lambda: (tuple(u.shape), A.shape[1], B4.shape[1], u.dtype, tuple(_flags(*args[5:8], args[9]).values()),
                    h0 is not None, store_ck, starts is not None)
    return impls[pick_impl("ARCHDSL_SCAN_FWD", impls, default, u, case,
                           lambda name: time_or_inf(lambda: impls[name](*args)))]


class SelectiveScanFn(torch.autograd.Function):
    """(u, delta, A, B4, C4, D, z, delta_bias, initial_state, softplus, starts) -> (y, last_state fp32);
    starts `[B, L]` int8 (nonzero where a packed sequence starts) or None."""

    @staticmethod
    def forward(ctx, u, delta, A, B4, C4, D, z, bias, h0, softplus, starts):
        u, delta = u.contiguous(), delta.contiguous()
        z, D, bias, h0c = map(dense, (z, D, bias, h0))
        need = any(ctx.needs_input_grad)
        if need:  # a bad ARCHDSL_SCAN_BWD told before the forward runs, not at the backward
            _bwd_choice()
        args = (u, delta, A.contiguous(), B4, C4, D, z, bias, h0c, softplus, need)
        starts = dense(starts)
        y, hT, ck = _fwd_impl(args, starts)(*args)
        if need:
            ctx.save_for_backward(u, delta, A.contiguous(), B4, C4, D, z, bias, ck, starts)
            ctx.softplus, ctx.h0_dtype = softplus, (h0.dtype if h0 is not None else None)
        return y, hT

    @staticmethod
    def backward(ctx, dy, dhT):
        u, delta, A, B4, C4, D, z, bias, ck, starts = ctx.saved_tensors
        dy = torch.zeros_like(u) if dy is None else dy.contiguous()
        dhT = dhT.contiguous() if dhT is not None else None
        bwd = _bwd_impl(u, A, B4, starts)
        du, ddt, dA, dB, dC, dD, dz, dbias, dh0 = bwd(u, delta, A, B4, C4, D, z, bias, ck, dy, dhT, ctx.softplus)
        dh0 = dh0.to(ctx.h0_dtype) if ctx.h0_dtype is not None else None
        return du, ddt, dA, dB, dC, dD, dz, dbias, dh0, None, None


def selective_scan_triton(u, delta, A, B4, C4, D, z, delta_bias, delta_softplus, initial_state, starts=None):
    return apply(SelectiveScanFn, u, delta, A, B4, C4, D, z, delta_bias, initial_state, delta_softplus, starts)


# ---------------------------------------------------------------------------------------
# Decode step: one token, state updated in place.
@triton.jit
def _ss_step_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, idx_ptr,
                    POOL, DIM, N, CPG, s_sb, s_sd, s_xb, s_dtb, s_zb, s_yb, s_Bb, s_Bg, s_Cb, s_Cg,
                    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                    HAS_IDX: tl.constexpr):
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    dmask, nmask = d < DIM, n < N
    m = dmask[:, None] & nmask[None, :]
    sb = b  # the state this row steps: its own, or the pool's row idx[b] (negative or past the pool: none)
    if HAS_IDX:
        sb = tl.load(idx_ptr + b).to(tl.int64)
    sb_d = sb + tl.zeros([BLOCK_D], dtype=tl.int64)  # [BLOCK_D], as the masks it joins
    live = (sb_d >= 0) & (sb_d < POOL)
    m = m & live[:, None]
    s_ptrs = state_ptr + sb * s_sb + d[:, None].to(tl.int64) * s_sd + n[None, :]
    h = tl.load(s_ptrs, mask=m, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + b * s_xb + d, mask=dmask, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + b * s_dtb + d, mask=dmask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt, False)
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=m, other=0.0).to(tl.float32)
    g = (d // CPG).to(tl.int64)
    Bv = tl.load(B_ptr + b * s_Bb + g[:, None] * s_Bg + n[None, :], mask=m, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b * s_Cb + g[:, None] * s_Cg + n[None, :], mask=m, other=0.0).to(tl.float32)
    h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * Bv
    tl.store(s_ptrs, h.to(state_ptr.dtype.element_ty), mask=m)
    y = tl.sum(h * Cv, axis=1)
    if HAS_D:
        y += tl.load(D_ptr + d, mask=dmask, other=0.0).to(tl.float32) * x
    if HAS_Z:
        zz = tl.load(z_ptr + b * s_zb + d, mask=dmask, other=0.0).to(tl.float32)
        y = y * zz * tl.sigmoid(zz)
    y = tl.where(live, y, 0.0)
    tl.store(y_ptr + b * s_yb + d, y.to(y_ptr.dtype.element_ty), mask=dmask)


def selective_state_update_triton(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                                  state_batch_indices=None):
    """state `[B, D, N]` updated in place; x, dt, z `[B, D]`; B, C `[B, G, N]`: each read at its leading strides,
    its last dimension contiguous; returns y `[B, D]`. state_batch_indices `[B]`: row b steps state[idx[b]] of a
    pool `[S, D, N]` (none where negative, and y is 0)."""
    batch, dim, N = x.shape[0], *state.shape[1:]
    assert state.stride(2) == 1, "state's last dimension must be contiguous"
    y = torch.empty_like(x)
    G = math.lcm(B.shape[1], C.shape[1])  # the kernel reads B and C at one group size: the finer of the two
    Bc, Cc = (unit_last(M if M.shape[1] == G else M.repeat_interleave(G // M.shape[1], dim=1)) for M in (B, C))
    bd = 32 if N <= 32 else 8
    _ss_step_kernel[(cdiv(dim, bd), batch)](
        state, x, dt, A.contiguous(), Bc, Cc, dense(D), z, dense(dt_bias), y, dense(state_batch_indices),
        state.shape[0], dim, N, dim // G, state.stride(0), state.stride(1), x.stride(0), dt.stride(0),
        z.stride(0) if z is not None else 0, y.stride(0), Bc.stride(0), Bc.stride(1), Cc.stride(0), Cc.stride(1),
        BLOCK_D=bd, BLOCK_N=next_pow2(N), num_warps=4, HAS_IDX=state_batch_indices is not None,
        **_flags(D, z, dt_bias, dt_softplus))
    return y
