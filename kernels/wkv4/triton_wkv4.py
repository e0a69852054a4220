"""Triton kernels for RWKV-4's WKV: one program per (batch, block of channels), a loop over T.

The state is (num, den, max) with num·e^max and den·e^max the decayed sums of
e^k·v and e^k — transformers' convention. Forward is HF's recurrence, cut into pieces along T where
B·C alone gives too few programs: each step waits on its loads, so a program's time is its step count
(B1 and B4 at C2048 took the same time), and more programs over fewer steps each cost the card little:
  * `_piece_sums` scans each piece from a fresh state (num, den, max, and whether a sequence starts in it);
  * `_fwd_kernel` folds the pieces before its own into the incoming state (a piece's sums decay by
    e^(length·w') on the way; a piece a sequence starts in drops what came before), then scans its piece.
Backward:
  * sweep 1 (forward in time) recomputes the state and accumulates d/dw' in forward mode
    (the derivative of num, den with respect to the log-decay w' rides along with them,
    scaled by the same e^max), and writes y and ln(denominator) per token;
  * sweep 2 (backward in time) carries the adjoints of (num, den) with their own running
    exponent R and gives dk, dv, du and the gradient of the incoming state. Every exp
    it takes, exp(R + k) and exp(u + k - lnD), has an exponent ≤ ~0.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dispatch import apply
from .._host import cdiv, next_pow2, seq_starts, sm_count

NEG = -1e38


@triton.jit
def _channels(w, u, C, BC: tl.constexpr):
    """The program's block of channels (grid axis 0): offsets, mask, the decay w' = -exp(w) and the bonus u,
    float32."""
    oc = tl.program_id(0) * BC + tl.arange(0, BC)
    mc = oc < C
    wd = -tl.exp(tl.load(w + oc, mask=mc, other=0.0).to(tl.float32))
    return oc, mc, wd, tl.load(u + oc, mask=mc, other=0.0).to(tl.float32)


@triton.jit
def _token(aa, bb, pp, kk, vv, wd, b_u):
    """One token from the state (num, den, max) = (aa, bb, pp): (wkv, the state after it)."""
    p = tl.maximum(pp, b_u + kk)
    e1, e2 = tl.exp(pp - p), tl.exp(b_u + kk - p)
    yy = (e1 * aa + e2 * vv) / (e1 * bb + e2)
    p = tl.maximum(pp + wd, kk)
    e1, e2 = tl.exp(pp + wd - p), tl.exp(kk - p)
    return yy, e1 * aa + e2 * vv, e1 * bb + e2, p


@triton.jit
def _piece_sums(w, u, k, v, sums, rs, T, C, LP, BC: tl.constexpr, HAS_SEQ: tl.constexpr):
    """sums[b, n] `[4, C]` float32: piece n (tokens n·LP .. n·LP + LP - 1) scanned from a fresh state, as
    (num, den, max), and 1 where a sequence starts in it (0 without). Grid (channel blocks, B, pieces)."""
    i_b, n = tl.program_id(1).to(tl.int64), tl.program_id(2)
    oc, mc, wd, b_u = _channels(w, u, C, BC)
    aa, bb, pp = _load_state(sums, 0, C, mc, False, BC)  # a fresh state (0, 0, -1e38): nothing is read
    starts = n * 0  # whether a sequence starts in the piece
    c64 = tl.zeros([BC], dtype=tl.int64) + C
    base = i_b * T * C + oc
    for t in range(n * LP, tl.minimum(T, n * LP + LP)):
        if HAS_SEQ:
            fresh = tl.load(rs + i_b * T + t) != 0
            aa, bb, pp = tl.where(fresh, 0.0, aa), tl.where(fresh, 0.0, bb), tl.where(fresh, -1e38, pp)
            starts = tl.maximum(starts, fresh.to(tl.int32))
        kk = tl.load(k + base + c64 * t, mask=mc, other=0.0).to(tl.float32)
        vv = tl.load(v + base + c64 * t, mask=mc, other=0.0).to(tl.float32)
        _, aa, bb, pp = _token(aa, bb, pp, kk, vv, wd, b_u)
    p_s = (i_b * tl.num_programs(2) + n) * 4 * C + oc
    tl.store(sums + p_s, aa, mask=mc)
    tl.store(sums + p_s + C, bb, mask=mc)
    tl.store(sums + p_s + 2 * C, pp, mask=mc)
    tl.store(sums + p_s + 3 * C, tl.zeros([BC], dtype=tl.float32) + starts, mask=mc)


@triton.jit
def _fold(aa, bb, pp, sums, p_s, C, mc, decay):
    """The state after a piece, from the state before it and the piece's sums at p_s; decay = the piece's length
    × w' (≤ 0)."""
    sa = tl.load(sums + p_s, mask=mc, other=0.0)
    sb = tl.load(sums + p_s + C, mask=mc, other=0.0)
    sp = tl.load(sums + p_s + 2 * C, mask=mc, other=-1e38)
    fresh = tl.load(sums + p_s + 3 * C, mask=mc, other=0.0) != 0
    q = pp + decay
    p = tl.maximum(q, sp)
    e1, e2 = tl.exp(q - p), tl.exp(sp - p)
    return tl.where(fresh, sa, e1 * aa + e2 * sa), tl.where(fresh, sb, e1 * bb + e2 * sb), tl.where(fresh, sp, p)


@triton.jit
def _fwd_kernel(w, u, k, v, y, s_in, s_out, rs, sums, T, C, LP, BC: tl.constexpr, HAS_STATE: tl.constexpr,
                HAS_SEQ: tl.constexpr, HAS_SUMS: tl.constexpr):
    """y over piece n (tokens n·LP .. n·LP + LP - 1; one piece: all of T), from the incoming state and the sums
    of the pieces before it; the last piece's program writes the state after T. Grid (channel blocks, B,
    pieces)."""
    i_b, n = tl.program_id(1).to(tl.int64), tl.program_id(2)
    oc, mc, wd, b_u = _channels(w, u, C, BC)
    aa, bb, pp = _load_state(s_in, i_b * 3 * C + oc, C, mc, HAS_STATE, BC)
    if HAS_SUMS:
        for j in range(0, n):  # every piece before this one is LP tokens long
            aa, bb, pp = _fold(aa, bb, pp, sums, (i_b * tl.num_programs(2) + j) * 4 * C + oc, C, mc, wd * LP)
    c64 = tl.zeros([BC], dtype=tl.int64) + C  # time stride, 64-bit: T·C passes 2^31
    base = i_b * T * C + oc
    for t in range(n * LP, tl.minimum(T, n * LP + LP)):
        if HAS_SEQ:  # a sequence starts here: the state restarts fresh
            fresh = tl.load(rs + i_b * T + t) != 0
            aa, bb, pp = tl.where(fresh, 0.0, aa), tl.where(fresh, 0.0, bb), tl.where(fresh, -1e38, pp)
        kk = tl.load(k + base + c64 * t, mask=mc, other=0.0).to(tl.float32)
        vv = tl.load(v + base + c64 * t, mask=mc, other=0.0).to(tl.float32)
        yy, aa, bb, pp = _token(aa, bb, pp, kk, vv, wd, b_u)
        tl.store(y + base + c64 * t, yy.to(y.dtype.element_ty), mask=mc)
    p_s = i_b * 3 * C + oc
    last = tl.where(n == tl.num_programs(2) - 1, mc, False)  # (a scalar & a block: the interpreter cannot mask by it)
    tl.store(s_out + p_s, aa, mask=last)
    tl.store(s_out + p_s + C, bb, mask=last)
    tl.store(s_out + p_s + 2 * C, pp, mask=last)


@triton.jit
def _load_state(s, p_s, C, mc, HAS_STATE: tl.constexpr, BC: tl.constexpr):
    if HAS_STATE:
        aa = tl.load(s + p_s, mask=mc, other=0.0)
        bb = tl.load(s + p_s + C, mask=mc, other=0.0)
        pp = tl.load(s + p_s + 2 * C, mask=mc, other=-1e38)
    else:
        aa = tl.zeros([BC], dtype=tl.float32)
        bb = tl.zeros([BC], dtype=tl.float32)
        pp = tl.zeros([BC], dtype=tl.float32) - 1e38
    return aa, bb, pp


@triton.jit
def _bwd_fwd_sweep(w, u, k, v, gy, s_in, s_out, g_s, y32, lnd, gw_part, rs, T, C, BC: tl.constexpr,
                   HAS_STATE: tl.constexpr, HAS_GS: tl.constexpr, HAS_SEQ: tl.constexpr):
    i_b = tl.program_id(1).to(tl.int64)
    oc, mc, wd, b_u = _channels(w, u, C, BC)
    aa, bb, pp = _load_state(s_in, i_b * 3 * C + oc, C, mc, HAS_STATE, BC)
    ga = tl.zeros([BC], dtype=tl.float32)
    gb = tl.zeros([BC], dtype=tl.float32)
    gwd = tl.zeros([BC], dtype=tl.float32)
    c64 = tl.zeros([BC], dtype=tl.int64) + C  # time stride, 64-bit: T·C passes 2^31
    base = i_b * T * C + oc
    for t in range(0, T):
        if HAS_SEQ:  # a fresh state depends on no decay
            fresh = tl.load(rs + i_b * T + t) != 0
            aa, bb, pp = tl.where(fresh, 0.0, aa), tl.where(fresh, 0.0, bb), tl.where(fresh, -1e38, pp)
            ga, gb = tl.where(fresh, 0.0, ga), tl.where(fresh, 0.0, gb)
        kk = tl.load(k + base + c64 * t, mask=mc, other=0.0).to(tl.float32)
        vv = tl.load(v + base + c64 * t, mask=mc, other=0.0).to(tl.float32)
        gg = tl.load(gy + base + c64 * t, mask=mc, other=0.0).to(tl.float32)
        p = tl.maximum(pp, b_u + kk)
        e1, e2 = tl.exp(pp - p), tl.exp(b_u + kk - p)
        den = e1 * bb + e2
        yy = (e1 * aa + e2 * vv) / den
        gwd += (ga - gb * yy) * e1 * gg / den
        tl.store(y32 + base + c64 * t, yy, mask=mc)
        tl.store(lnd + base + c64 * t, p + tl.log(den), mask=mc)
        p = tl.maximum(pp + wd, kk)
        e1, e2 = tl.exp(pp + wd - p), tl.exp(kk - p)
        ga, gb = e1 * (aa + ga), e1 * (bb + gb)
        aa, bb, pp = e1 * aa + e2 * vv, e1 * bb + e2, p
    if HAS_GS:  # the outgoing state's adjoint, as d/d(num·e^max) = g_num·e^-max
        p_s = i_b * 3 * C + oc
        gwd += tl.load(g_s + p_s, mask=mc, other=0.0) * ga + tl.load(g_s + p_s + C, mask=mc, other=0.0) * gb
    tl.store(gw_part + i_b * C + oc, gwd * wd, mask=mc)


@triton.jit
def _bwd_rev_sweep(u, w, k, v, gy, s_in, s_out, g_s, y32, lnd, gk, gv, gu_part, g_s_in, rs, T, C,
                   BC: tl.constexpr, HAS_STATE: tl.constexpr, HAS_GS: tl.constexpr, HAS_SEQ: tl.constexpr):
    i_b = tl.program_id(1).to(tl.int64)
    oc, mc, wd, b_u = _channels(w, u, C, BC)
    p_s = i_b * 3 * C + oc
    ga = tl.zeros([BC], dtype=tl.float32)
    gb = tl.zeros([BC], dtype=tl.float32)
    R = tl.zeros([BC], dtype=tl.float32) - 1e38
    if HAS_GS:
        ga += tl.load(g_s + p_s, mask=mc, other=0.0)
        gb += tl.load(g_s + p_s + C, mask=mc, other=0.0)
        R = -tl.load(s_out + p_s + 2 * C, mask=mc, other=0.0)
    gu = tl.zeros([BC], dtype=tl.float32)
    c64 = tl.zeros([BC], dtype=tl.int64) + C  # time stride, 64-bit: T·C passes 2^31
    base = i_b * T * C + oc
    for i in range(0, T):
        off = base + c64 * (T - 1 - i)
        kk = tl.load(k + off, mask=mc, other=0.0).to(tl.float32)
        vv = tl.load(v + off, mask=mc, other=0.0).to(tl.float32)
        gg = tl.load(gy + off, mask=mc, other=0.0).to(tl.float32)
        yy = tl.load(y32 + off, mask=mc, other=0.0)
        ld = tl.load(lnd + off, mask=mc, other=0.0)
        ek = tl.exp(R + kk)
        cq = gg * tl.exp(b_u + kk - ld)
        tl.store(gk + off, (ek * (ga * vv + gb) + cq * (vv - yy)).to(gk.dtype.element_ty), mask=mc)
        tl.store(gv + off, (ek * ga + cq).to(gv.dtype.element_ty), mask=mc)
        gu += cq * (vv - yy)
        r1, r2 = R + wd, -ld
        rn = tl.maximum(r1, r2)
        f1, f2 = tl.exp(r1 - rn), tl.exp(r2 - rn)
        ga, gb, R = f1 * ga + f2 * gg, f1 * gb - f2 * gg * yy, rn
        if HAS_SEQ:  # the state before a sequence's first token reaches nothing after it
            fresh = tl.load(rs + i_b * T + (T - 1 - i)) != 0
            ga, gb, R = tl.where(fresh, 0.0, ga), tl.where(fresh, 0.0, gb), tl.where(fresh, -1e38, R)
    tl.store(gu_part + i_b * C + oc, gu, mask=mc)
    if HAS_STATE:
        a0 = tl.load(s_in + p_s, mask=mc, other=0.0)
        b0 = tl.load(s_in + p_s + C, mask=mc, other=0.0)
        scale = tl.exp(R + tl.load(s_in + p_s + 2 * C, mask=mc, other=0.0))
        tl.store(g_s_in + p_s, ga * scale, mask=mc)
        tl.store(g_s_in + p_s + C, gb * scale, mask=mc)
        tl.store(g_s_in + p_s + 2 * C, (ga * a0 + gb * b0) * scale, mask=mc)


def _grid(B, C, BC):
    return (cdiv(C, BC), B)


# The forward's pieces along T: enough for PROGRAMS_PER_SM programs a multiprocessor, each PIECE_MIN tokens at least.
PROGRAMS_PER_SM, PIECE_MIN = 8, 64


def _pieces(B, T, C, BC, device) -> tuple[int, int]:
    """(pieces, tokens a piece) of the forward over T: one piece (the plain scan) where B·C gives enough programs."""
    want = cdiv(PROGRAMS_PER_SM * sm_count(device), cdiv(C, BC) * B)
    n = max(1, min(want, T // PIECE_MIN))
    LP = cdiv(max(T, 1), n)
    return cdiv(max(T, 1), LP), LP


def _block(C):
    return min(128, max(16, next_pow2(C)))


class WKV4Function(torch.autograd.Function):
    """State travels as one float32 tensor `[B, 3, C]` (num, den, max) inside."""

    @staticmethod
    def forward(ctx, w, u, k, v, s_in, restart=None):
        """restart `[B, T]` int8 or None: 1 where the state restarts fresh (a packed sequence's first token)."""
        B, T, C = k.shape
        k, v = k.contiguous(), v.contiguous()
        y = torch.empty_like(k)
        s_out = torch.empty(B, 3, C, dtype=torch.float32, device=k.device)
        BC = _block(C)
        NP, LP = _pieces(B, T, C, BC, k.device)
        sums = torch.empty(B, NP, 4, C, dtype=torch.float32, device=k.device) if NP > 1 else None
        grid = _grid(B, C, BC) + (NP,)
        if NP > 1:
            _piece_sums[grid](w, u, k, v, sums, restart, T, C, LP, BC, restart is not None, num_warps=4)
        _fwd_kernel[grid](w, u, k, v, y, s_in, s_out, restart, sums, T, C, LP, BC, s_in is not None,
                          restart is not None, sums is not None, num_warps=4)
        ctx.save_for_backward(w, u, k, v, s_in, s_out, restart)
        return y, s_out

    @staticmethod
    def backward(ctx, gy, g_s):
        w, u, k, v, s_in, s_out, restart = ctx.saved_tensors
        B, T, C = k.shape
        BC = _block(C)
        gy = gy.contiguous()
        g_s = g_s.contiguous() if g_s is not None else None
        y32, lnd = (torch.empty(B, T, C, dtype=torch.float32, device=k.device) for _ in range(2))
        gw, gu = (torch.empty(B, C, dtype=torch.float32, device=k.device) for _ in range(2))
        has = (s_in is not None, g_s is not None, restart is not None)
        _bwd_fwd_sweep[_grid(B, C, BC)](w, u, k, v, gy, s_in, s_out, g_s, y32, lnd, gw, restart, T, C, BC, *has)
        gk, gv = torch.empty_like(k), torch.empty_like(v)
        g_in = torch.empty_like(s_in) if s_in is not None else None
        _bwd_rev_sweep[_grid(B, C, BC)](u, w, k, v, gy, s_in, s_out, g_s, y32, lnd, gk, gv, gu, g_in, restart,
                                        T, C, BC, *has)
        return gw.sum(0).to(w.dtype), gu.sum(0).to(u.dtype), gk, gv, g_in, None


def wkv4_triton(w, u, k, v, state=None, seq_idx=None):
    """Same contract as `wkv4_torch`: the state (num, den, max) comes back float32 (float64 for float64 k,
    computed in float32)."""
    s_in = None
    if state is not None:
        s_in = torch.stack([s.float() for s in state], dim=1).contiguous()
    ct = k.dtype
    if ct == torch.float64:  # the interpreter's float64 escape hatch: compute in float32
        w, u, k, v = (x.float() for x in (w, u, k, v))
    restart = None if seq_idx is None else seq_starts(seq_idx).to(torch.int8).contiguous()
    y, s_out = apply(WKV4Function, w.contiguous(), u.contiguous(), k, v, s_in, restart)
    return y.to(ct), tuple((s_out.double() if ct == torch.float64 else s_out).unbind(1))
