"""Triton kernels for RWKV-4's WKV: one program per (batch, block of channels, piece of T), a loop over its tokens.

The state is (num, den, max) with num·e^max and den·e^max the decayed sums of
e^k·v and e^k — transformers' convention. Every step waits on its loads, so a program's time is its step count
(B1 and B4 at C2048 took the same time in one piece): where B·C alone gives too few programs, every sweep cuts T
into pieces, and a program learns what the pieces before it (after it, going back) carry from a pass that scans
each piece alone:
  * `_piece_sums` scans each piece from a fresh state (num, den, max, whether a sequence starts in it, and for
    the backward d/dw' of num and den);
  * `_fold` carries a state across a piece: the state decays by e^(length·w') on the way and the piece's sums are
    added; a piece a sequence starts in drops what came before.
Forward: fold the pieces before the program's own into the incoming state, then HF's recurrence over its piece.
Backward:
  * sweep 1 (forward in time) recomputes the state and accumulates d/dw' in forward mode
    (the derivative of num, den with respect to the log-decay w' rides along with them,
    scaled by the same e^max; across a piece of L tokens it becomes e^(L·w')·(tangent + L·state) + the piece's
    own), and writes y and ln(denominator) per token;
  * `_rev_piece_sums` scans each piece backwards from a zero adjoint: the adjoint it hands the state before it;
  * sweep 2 (backward in time) folds the pieces after its own into the outgoing state's adjoint, then carries the
    adjoints of (num, den) with their own running exponent R over its piece and gives dk, dv, du and the gradient
    of the incoming state. Every exp it takes, exp(R + k) and exp(u + k - lnD), has an exponent ≤ ~0.
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
    _, aa, bb, pp = _update(aa, bb, pp, kk, vv, wd)
    return yy, aa, bb, pp


@triton.jit
def _update(aa, bb, pp, kk, vv, wd):
    """The state after a token: (e1, num, den, max), e1 the factor of the state before (and of its tangents)."""
    p = tl.maximum(pp + wd, kk)
    e1, e2 = tl.exp(pp + wd - p), tl.exp(kk - p)
    return e1, e1 * aa + e2 * vv, e1 * bb + e2, p


@triton.jit
def _piece_sums(w, u, k, v, sums, rs, T, C, LP, BC: tl.constexpr, HAS_SEQ: tl.constexpr, TANGENTS: tl.constexpr):
    """sums[b, n] `[ROWS, C]` float32: piece n (tokens n·LP .. n·LP + LP - 1) scanned from a fresh state, as
    (num, den, max), 1 where a sequence starts in it (0 without), and with TANGENTS d/dw' of num and den (ROWS 6;
    4 without). Grid (channel blocks, B, pieces)."""
    ROWS: tl.constexpr = 6 if TANGENTS else 4
    i_b, n = tl.program_id(1).to(tl.int64), tl.program_id(2)
    oc, mc, wd, b_u = _channels(w, u, C, BC)
    aa, bb, pp = _load_state(sums, 0, C, mc, False, BC)  # a fresh state (0, 0, -1e38): nothing is read
    ga = tl.zeros([BC], dtype=tl.float32)
    gb = tl.zeros([BC], dtype=tl.float32)
    starts = n * 0  # whether a sequence starts in the piece
    c64 = tl.zeros([BC], dtype=tl.int64) + C
    base = i_b * T * C + oc
    for t in range(n * LP, tl.minimum(T, n * LP + LP)):
        if HAS_SEQ:
            fresh = tl.load(rs + i_b * T + t) != 0
            aa, bb, pp = tl.where(fresh, 0.0, aa), tl.where(fresh, 0.0, bb), tl.where(fresh, -1e38, pp)
            ga, gb = tl.where(fresh, 0.0, ga), tl.where(fresh, 0.0, gb)
            starts = tl.maximum(starts, fresh.to(tl.int32))
        kk = tl.load(k + base + c64 * t, mask=mc, other=0.0).to(tl.float32)
        vv = tl.load(v + base + c64 * t, mask=mc, other=0.0).to(tl.float32)
        e1, a2, b2, pp = _update(aa, bb, pp, kk, vv, wd)
        if TANGENTS:
            ga, gb = e1 * (aa + ga), e1 * (bb + gb)
        aa, bb = a2, b2
    p_s = (i_b * tl.num_programs(2) + n) * ROWS * C + oc
    tl.store(sums + p_s, aa, mask=mc)
    tl.store(sums + p_s + C, bb, mask=mc)
    tl.store(sums + p_s + 2 * C, pp, mask=mc)
    tl.store(sums + p_s + 3 * C, tl.zeros([BC], dtype=tl.float32) + starts, mask=mc)
    if TANGENTS:
        tl.store(sums + p_s + 4 * C, ga, mask=mc)
        tl.store(sums + p_s + 5 * C, gb, mask=mc)


@triton.jit
def _fold(aa, bb, pp, sums, p_s, C, mc, decay):
    """The state after a piece, from the state before it and the piece's sums at p_s; decay = the piece's length
    × w' (≤ 0). Also (e1, e2, fresh): the factors of the state before and of the sums, and whether the piece
    restarts (then e1 counts for nothing). The backward's adjoints fold the same way, going back."""
    sa = tl.load(sums + p_s, mask=mc, other=0.0)
    sb = tl.load(sums + p_s + C, mask=mc, other=0.0)
    sp = tl.load(sums + p_s + 2 * C, mask=mc, other=-1e38)
    fresh = tl.load(sums + p_s + 3 * C, mask=mc, other=0.0) != 0
    q = pp + decay
    p = tl.maximum(q, sp)
    e1, e2 = tl.exp(q - p), tl.exp(sp - p)
    aa, bb = tl.where(fresh, sa, e1 * aa + e2 * sa), tl.where(fresh, sb, e1 * bb + e2 * sb)
    return aa, bb, tl.where(fresh, sp, p), e1, e2, fresh


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
            aa, bb, pp, _, _, _ = _fold(aa, bb, pp, sums, (i_b * tl.num_programs(2) + j) * 4 * C + oc, C, mc,
                                        wd * LP)
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
def _bwd_fwd_sweep(w, u, k, v, gy, s_in, s_out, g_s, y32, lnd, gw_part, rs, sums, T, C, LP, BC: tl.constexpr,
                   HAS_STATE: tl.constexpr, HAS_GS: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_SUMS: tl.constexpr):
    """Sweep 1 over piece n: y32, lnd `[B, T, C]` float32 and gw_part[b, n] `[C]`, the piece's share of dL/dw.
    sums: `_piece_sums` with TANGENTS. Grid (channel blocks, B, pieces)."""
    i_b, n = tl.program_id(1).to(tl.int64), tl.program_id(2)
    oc, mc, wd, b_u = _channels(w, u, C, BC)
    aa, bb, pp = _load_state(s_in, i_b * 3 * C + oc, C, mc, HAS_STATE, BC)
    ga = tl.zeros([BC], dtype=tl.float32)  # d/dw' of (num, den), scaled by e^-max; the incoming state has none
    gb = tl.zeros([BC], dtype=tl.float32)
    if HAS_SUMS:
        for j in range(0, n):  # every piece before this one is LP tokens long
            p_j = (i_b * tl.num_programs(2) + j) * 6 * C + oc
            a2, b2, pp, e1, e2, fresh = _fold(aa, bb, pp, sums, p_j, C, mc, wd * LP)
            ta = tl.load(sums + p_j + 4 * C, mask=mc, other=0.0)
            tb = tl.load(sums + p_j + 5 * C, mask=mc, other=0.0)
            ga = tl.where(fresh, ta, e1 * (ga + LP * aa) + e2 * ta)
            gb = tl.where(fresh, tb, e1 * (gb + LP * bb) + e2 * tb)
            aa, bb = a2, b2
    gwd = tl.zeros([BC], dtype=tl.float32)
    c64 = tl.zeros([BC], dtype=tl.int64) + C  # time stride, 64-bit: T·C passes 2^31
    base = i_b * T * C + oc
    for t in range(n * LP, tl.minimum(T, n * LP + LP)):
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
        e1, a2, b2, pp = _update(aa, bb, pp, kk, vv, wd)
        ga, gb = e1 * (aa + ga), e1 * (bb + gb)
        aa, bb = a2, b2
    if HAS_GS:  # the outgoing state's adjoint, as d/d(num·e^max) = g_num·e^-max; the last piece's program ends at T
        p_s = i_b * 3 * C + oc
        last = tl.where(n == tl.num_programs(2) - 1, mc, False)
        gwd += tl.load(g_s + p_s, mask=last, other=0.0) * ga + tl.load(g_s + p_s + C, mask=last, other=0.0) * gb
    tl.store(gw_part + (i_b * tl.num_programs(2) + n) * C + oc, gwd * wd, mask=mc)


@triton.jit
def _adjoint_token(ga, gb, R, gg, yy, ld, wd):
    """The adjoint of the state before a token from the one after it: decayed by e^w', plus the token's output's
    pull on the state before it (g·e^-lnD · (1, -y)); the adjoint is (ga, gb)·e^R."""
    r1, r2 = R + wd, -ld
    rn = tl.maximum(r1, r2)
    f1, f2 = tl.exp(r1 - rn), tl.exp(r2 - rn)
    return f1 * ga + f2 * gg, f1 * gb - f2 * gg * yy, rn


@triton.jit
def _rev_piece_sums(w, u, gy, y32, lnd, sums, rs, T, C, LP, BC: tl.constexpr, HAS_SEQ: tl.constexpr):
    """sums[b, n] `[4, C]` float32: piece n scanned backwards from a zero adjoint: the adjoint it hands the state
    before it, as (ga, gb, R), and 1 where a sequence starts in it (what comes after then reaches nothing before).
    Grid (channel blocks, B, pieces)."""
    i_b, n = tl.program_id(1).to(tl.int64), tl.program_id(2)
    oc, mc, wd, _ = _channels(w, u, C, BC)
    ga, gb, R = _load_state(sums, 0, C, mc, False, BC)  # (0, 0, -1e38): nothing is read
    starts = n * 0
    c64 = tl.zeros([BC], dtype=tl.int64) + C
    base = i_b * T * C + oc
    end = tl.minimum(T, n * LP + LP)
    for i in range(0, end - n * LP):
        t = end - 1 - i
        gg = tl.load(gy + base + c64 * t, mask=mc, other=0.0).to(tl.float32)
        yy = tl.load(y32 + base + c64 * t, mask=mc, other=0.0)
        ld = tl.load(lnd + base + c64 * t, mask=mc, other=0.0)
        ga, gb, R = _adjoint_token(ga, gb, R, gg, yy, ld, wd)
        if HAS_SEQ:
            fresh = tl.load(rs + i_b * T + t) != 0
            ga, gb, R = tl.where(fresh, 0.0, ga), tl.where(fresh, 0.0, gb), tl.where(fresh, -1e38, R)
            starts = tl.maximum(starts, fresh.to(tl.int32))
    p_s = (i_b * tl.num_programs(2) + n) * 4 * C + oc
    tl.store(sums + p_s, ga, mask=mc)
    tl.store(sums + p_s + C, gb, mask=mc)
    tl.store(sums + p_s + 2 * C, R, mask=mc)
    tl.store(sums + p_s + 3 * C, tl.zeros([BC], dtype=tl.float32) + starts, mask=mc)


@triton.jit
def _bwd_rev_sweep(u, w, k, v, gy, s_in, s_out, g_s, y32, lnd, gk, gv, gu_part, g_s_in, rs, sums, T, C, LP,
                   BC: tl.constexpr, HAS_STATE: tl.constexpr, HAS_GS: tl.constexpr, HAS_SEQ: tl.constexpr,
                   HAS_SUMS: tl.constexpr):
    """Sweep 2 over piece n, going back: gk, gv over the piece, gu_part[b, n] `[C]` its share of dL/du, and from
    the first piece's program the incoming state's gradient. sums: `_rev_piece_sums`. Grid (channel blocks, B,
    pieces)."""
    i_b, n = tl.program_id(1).to(tl.int64), tl.program_id(2)
    NP = tl.num_programs(2)
    oc, mc, wd, b_u = _channels(w, u, C, BC)
    p_s = i_b * 3 * C + oc
    ga = tl.zeros([BC], dtype=tl.float32)
    gb = tl.zeros([BC], dtype=tl.float32)
    R = tl.zeros([BC], dtype=tl.float32) - 1e38
    if HAS_GS:
        ga += tl.load(g_s + p_s, mask=mc, other=0.0)
        gb += tl.load(g_s + p_s + C, mask=mc, other=0.0)
        R = -tl.load(s_out + p_s + 2 * C, mask=mc, other=0.0)
    if HAS_SUMS:
        for i in range(0, NP - 1 - n):  # the pieces after this one, the last first (it may be shorter)
            j = NP - 1 - i
            p_j = (i_b * NP + j) * 4 * C + oc
            ga, gb, R, _, _, _ = _fold(ga, gb, R, sums, p_j, C, mc, wd * tl.minimum(LP, T - j * LP))
    gu = tl.zeros([BC], dtype=tl.float32)
    c64 = tl.zeros([BC], dtype=tl.int64) + C  # time stride, 64-bit: T·C passes 2^31
    base = i_b * T * C + oc
    end = tl.minimum(T, n * LP + LP)
    for i in range(0, end - n * LP):
        off = base + c64 * (end - 1 - i)
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
        ga, gb, R = _adjoint_token(ga, gb, R, gg, yy, ld, wd)
        if HAS_SEQ:  # the state before a sequence's first token reaches nothing after it
            fresh = tl.load(rs + i_b * T + (end - 1 - i)) != 0
            ga, gb, R = tl.where(fresh, 0.0, ga), tl.where(fresh, 0.0, gb), tl.where(fresh, -1e38, R)
    tl.store(gu_part + (i_b * NP + n) * C + oc, gu, mask=mc)
    if HAS_STATE:  # the first piece's program ends at the incoming state
        first = tl.where(n == 0, mc, False)
        a0 = tl.load(s_in + p_s, mask=mc, other=0.0)
        b0 = tl.load(s_in + p_s + C, mask=mc, other=0.0)
        scale = tl.exp(R + tl.load(s_in + p_s + 2 * C, mask=mc, other=0.0))
        tl.store(g_s_in + p_s, ga * scale, mask=first)
        tl.store(g_s_in + p_s + C, gb * scale, mask=first)
        tl.store(g_s_in + p_s + 2 * C, (ga * a0 + gb * b0) * scale, mask=first)


def _grid(B, C, BC, NP):
    return (cdiv(C, BC), B, NP)


# Pieces along T: enough for PROGRAMS_PER_SM programs a multiprocessor, each PIECE_MIN tokens at least; none where
# B·C alone fills half of that. H100, C2048 bf16, forward+backward ms, one piece → pieces (seventy-eighth run):
#   B1 T4096 6.24 → 0.55 (64 pieces), B4 T4096 6.49 → 0.95 (17), B4 T16384 25.5 → 3.63 (17),
#   B16 T4096 7.15 → 3.38 (5), B32 T2048 4.14 → 3.23 (3),
#   B64 T1024 2.75 → 3.15 (2: the extra passes cost more than the shorter walks).
PROGRAMS_PER_SM, PIECE_MIN = 8, 64


def _pieces(B, T, C, BC, device) -> tuple[int, int]:
    """(pieces, tokens a piece) of the sweeps over T: one piece (the plain scan) where B·C gives enough programs."""
    programs, slots = cdiv(C, BC) * B, PROGRAMS_PER_SM * sm_count(device)
    n = 1 if 2 * programs >= slots else min(cdiv(slots, programs), T // PIECE_MIN)
    LP = cdiv(max(T, 1), max(n, 1))
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
        grid, seq = _grid(B, C, BC, NP), restart is not None
        sums = None
        if NP > 1:
            sums = torch.empty(B, NP, 4, C, dtype=torch.float32, device=k.device)
            _piece_sums[grid](w, u, k, v, sums, restart, T, C, LP, BC, seq, False, num_warps=4)
        _fwd_kernel[grid](w, u, k, v, y, s_in, s_out, restart, sums, T, C, LP, BC, s_in is not None, seq,
                          sums is not None, num_warps=4)
        ctx.save_for_backward(w, u, k, v, s_in, s_out, restart)
        return y, s_out

    @staticmethod
    def backward(ctx, gy, g_s):
        w, u, k, v, s_in, s_out, restart = ctx.saved_tensors
        B, T, C = k.shape
        BC = _block(C)
        NP, LP = _pieces(B, T, C, BC, k.device)
        grid, f32 = _grid(B, C, BC, NP), dict(dtype=torch.float32, device=k.device)
        gy = gy.contiguous()
        g_s = g_s.contiguous() if g_s is not None else None
        y32, lnd = torch.empty(B, T, C, **f32), torch.empty(B, T, C, **f32)
        gw, gu = torch.empty(B, NP, C, **f32), torch.empty(B, NP, C, **f32)
        has = (s_in is not None, g_s is not None, restart is not None, NP > 1)
        ahead = back = None  # the pieces' sums going forward (states, tangents) and back (adjoints)
        if NP > 1:
            ahead = torch.empty(B, NP, 6, C, **f32)
            _piece_sums[grid](w, u, k, v, ahead, restart, T, C, LP, BC, has[2], True, num_warps=4)
        _bwd_fwd_sweep[grid](w, u, k, v, gy, s_in, s_out, g_s, y32, lnd, gw, restart, ahead, T, C, LP, BC, *has,
                             num_warps=4)
        if NP > 1:
            back = torch.empty(B, NP, 4, C, **f32)
            _rev_piece_sums[grid](w, u, gy, y32, lnd, back, restart, T, C, LP, BC, has[2], num_warps=4)
        gk, gv = torch.empty_like(k), torch.empty_like(v)
        g_in = torch.empty_like(s_in) if s_in is not None else None
        _bwd_rev_sweep[grid](u, w, k, v, gy, s_in, s_out, g_s, y32, lnd, gk, gv, gu, g_in, restart, back,
                             T, C, LP, BC, *has, num_warps=4)
        return gw.sum((0, 1)).to(w.dtype), gu.sum((0, 1)).to(u.dtype), gk, gv, g_in, None


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
