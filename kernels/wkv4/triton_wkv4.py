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
Each sweep loads its rows two tokens ahead of the token it computes (`_row`): the compiler does not move a
load above the store before it (they might alias), so without that every token waited on its own loads.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dispatch import apply, interpreting
from .._host import cdiv, next_pow2, seq_starts, sm_count

NEG = -1e38


@triton.jit
def _exp(x):
    """e^x as 2^(x·log2 e): Triton compiles exp2 to one ex2.approx.ftz.f32, where tl.exp's ex2.approx.f32 adds a
    compare and two multiplies for subnormal results (here 0 instead: every exponent is a difference from a
    running max, so such a term is lost against the 1 beside it)."""
    return tl.exp2(x * 1.4426950408889634)


@triton.jit
def _recip(x, FAST: tl.constexpr):
    """1/x of a WKV denominator (≥ 1 in the scan: its term at the max counts 1). FAST (compiled only): one
    rcp.approx.ftz, within an ulp for normal x, not the division's range checks and scalings."""
    if FAST:
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
                                         pack=1)
    else:
        return 1.0 / x


@triton.jit
def _ln(x, FAST: tl.constexpr):
    """ln x for x ≥ 1. FAST (compiled only): one lg2.approx.ftz (absolute error 2^-22), not libdevice's
    ~25-instruction polynomial."""
    if FAST:
        lg = tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
                                       pack=1)
        return lg * 0.6931471805599453
    else:
        return tl.log(x)


@triton.jit
def _channels(w, u, C, BC: tl.constexpr):
    """The program's block of channels (grid axis 0): offsets, mask, the decay w' = -exp(w) and the bonus u,
    float32."""
    oc = tl.program_id(0) * BC + tl.arange(0, BC)
    mc = oc < C
    wd = -tl.exp(tl.load(w + oc, mask=mc, other=0.0).to(tl.float32))
    return oc, mc, wd, tl.load(u + oc, mask=mc, other=0.0).to(tl.float32)


@triton.jit
def _token(aa, bb, pp, kk, vv, wd, b_u, FAST: tl.constexpr):
    """One token from the state (num, den, max) = (aa, bb, pp): (wkv, the state after it)."""
    p = tl.maximum(pp, b_u + kk)
    e1, e2 = _exp(pp - p), _exp(b_u + kk - p)
    yy = (e1 * aa + e2 * vv) * _recip(e1 * bb + e2, FAST)
    _, aa, bb, pp = _update(aa, bb, pp, kk, vv, wd)
    return yy, aa, bb, pp


@triton.jit
def _update(aa, bb, pp, kk, vv, wd):
    """The state after a token: (e1, num, den, max), e1 the factor of the state before (and of its tangents)."""
    p = tl.maximum(pp + wd, kk)
    e1, e2 = _exp(pp + wd - p), _exp(kk - p)
    return e1, e1 * aa + e2 * vv, e1 * bb + e2, p


@triton.jit
def _row(x, o, mc, ok):
    """x's row at offsets o `[BC]` as float32 where mc; zeros where not ok (nothing is read there). The sweeps read two
    tokens ahead of the one they compute, so that a token's loads wait behind two tokens' work, not before its
    own."""
    return tl.load(x + o, mask=tl.where(ok, mc, False)).to(tl.float32)


@triton.jit
def _starts(rs, at, ok, HAS_SEQ: tl.constexpr):
    """Whether a sequence starts at rs[at] (False where not ok, and without seq_idx)."""
    if HAS_SEQ:
        return tl.load(rs + at, mask=ok, other=0) != 0
    else:
        return at < 0


@triton.jit
def _kv(k, v, rs, base, c64, row, t, ahead, end, mc, HAS_SEQ: tl.constexpr):
    """Token t + ahead's rows of k and v `[BC]` float32 and whether a sequence starts there (`_row`, `_starts`;
    nothing read past end). The offset is written base + C·t + C·ahead: so the compiler steps one pointer by C a
    token rather than multiply again."""
    o, ok = base + c64 * t + c64 * ahead, t + ahead < end
    return _row(k, o, mc, ok), _row(v, o, mc, ok), _starts(rs, row + t + ahead, ok, HAS_SEQ)


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
    base, lo, end = i_b * T * C + oc, n * LP, tl.minimum(T, n * LP + LP)
    k1, v1, f1 = _kv(k, v, rs, base, c64, i_b * T, lo, 0, end, mc, HAS_SEQ)
    k2, v2, f2 = _kv(k, v, rs, base, c64, i_b * T, lo, 1, end, mc, HAS_SEQ)
    for t in range(lo, end):
        kk, vv, fresh, k1, v1, f1 = k1, v1, f1, k2, v2, f2
        k2, v2, f2 = _kv(k, v, rs, base, c64, i_b * T, t, 2, end, mc, HAS_SEQ)
        if HAS_SEQ:
            aa, bb, pp = tl.where(fresh, 0.0, aa), tl.where(fresh, 0.0, bb), tl.where(fresh, -1e38, pp)
            ga, gb = tl.where(fresh, 0.0, ga), tl.where(fresh, 0.0, gb)
            starts = tl.maximum(starts, fresh.to(tl.int32))
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
    e1, e2 = _exp(q - p), _exp(sp - p)
    aa, bb = tl.where(fresh, sa, e1 * aa + e2 * sa), tl.where(fresh, sb, e1 * bb + e2 * sb)
    return aa, bb, tl.where(fresh, sp, p), e1, e2, fresh


@triton.jit
def _fwd_kernel(w, u, k, v, y, s_in, s_out, rs, sums, T, C, LP, BC: tl.constexpr, HAS_STATE: tl.constexpr,
                HAS_SEQ: tl.constexpr, HAS_SUMS: tl.constexpr, FAST: tl.constexpr):
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
    base, lo, end = i_b * T * C + oc, n * LP, tl.minimum(T, n * LP + LP)
    k1, v1, f1 = _kv(k, v, rs, base, c64, i_b * T, lo, 0, end, mc, HAS_SEQ)
    k2, v2, f2 = _kv(k, v, rs, base, c64, i_b * T, lo, 1, end, mc, HAS_SEQ)
    for t in range(lo, end):
        kk, vv, fresh, k1, v1, f1 = k1, v1, f1, k2, v2, f2
        k2, v2, f2 = _kv(k, v, rs, base, c64, i_b * T, t, 2, end, mc, HAS_SEQ)
        if HAS_SEQ:  # a sequence starts here: the state restarts fresh
            aa, bb, pp = tl.where(fresh, 0.0, aa), tl.where(fresh, 0.0, bb), tl.where(fresh, -1e38, pp)
        yy, aa, bb, pp = _token(aa, bb, pp, kk, vv, wd, b_u, FAST)
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
                   HAS_STATE: tl.constexpr, HAS_GS: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_SUMS: tl.constexpr,
                   FAST: tl.constexpr):
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
    base, lo, end = i_b * T * C + oc, n * LP, tl.minimum(T, n * LP + LP)
    o, ok = base + c64 * lo, lo < end
    k1, v1, g1 = _row(k, o, mc, ok), _row(v, o, mc, ok), _row(gy, o, mc, ok)
    f1 = _starts(rs, i_b * T + lo, ok, HAS_SEQ)
    o, ok = o + c64, lo + 1 < end
    k2, v2, g2 = _row(k, o, mc, ok), _row(v, o, mc, ok), _row(gy, o, mc, ok)
    f2 = _starts(rs, i_b * T + lo + 1, ok, HAS_SEQ)
    for t in range(lo, end):
        kk, vv, gg, fresh, k1, v1, g1, f1 = k1, v1, g1, f1, k2, v2, g2, f2
        o, ok = base + c64 * t + c64 * 2, t + 2 < end
        k2, v2, g2 = _row(k, o, mc, ok), _row(v, o, mc, ok), _row(gy, o, mc, ok)
        f2 = _starts(rs, i_b * T + t + 2, ok, HAS_SEQ)
        if HAS_SEQ:  # a fresh state depends on no decay
            aa, bb, pp = tl.where(fresh, 0.0, aa), tl.where(fresh, 0.0, bb), tl.where(fresh, -1e38, pp)
            ga, gb = tl.where(fresh, 0.0, ga), tl.where(fresh, 0.0, gb)
        p = tl.maximum(pp, b_u + kk)
        e1, e2 = _exp(pp - p), _exp(b_u + kk - p)
        den = e1 * bb + e2
        rd = _recip(den, FAST)
        yy = (e1 * aa + e2 * vv) * rd
        gwd += (ga - gb * yy) * e1 * gg * rd
        tl.store(y32 + base + c64 * t, yy, mask=mc)
        tl.store(lnd + base + c64 * t, p + _ln(den, FAST), mask=mc)
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
    f1, f2 = _exp(r1 - rn), _exp(r2 - rn)
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
    base, lo, end = i_b * T * C + oc, n * LP, tl.minimum(T, n * LP + LP)
    o, ok = base + c64 * (end - 1), end - 1 >= lo
    g1, y1, l1 = _row(gy, o, mc, ok), _row(y32, o, mc, ok), _row(lnd, o, mc, ok)
    f1 = _starts(rs, i_b * T + end - 1, ok, HAS_SEQ)
    o, ok = o - c64, end - 2 >= lo
    g2, y2, l2 = _row(gy, o, mc, ok), _row(y32, o, mc, ok), _row(lnd, o, mc, ok)
    f2 = _starts(rs, i_b * T + end - 2, ok, HAS_SEQ)
    for i in range(0, end - lo):
        gg, yy, ld, fresh, g1, y1, l1, f1 = g1, y1, l1, f1, g2, y2, l2, f2
        t = end - 3 - i
        o, ok = base + c64 * (end - 1 - i) - c64 * 2, t >= lo
        g2, y2, l2 = _row(gy, o, mc, ok), _row(y32, o, mc, ok), _row(lnd, o, mc, ok)
        f2 = _starts(rs, i_b * T + t, ok, HAS_SEQ)
        ga, gb, R = _adjoint_token(ga, gb, R, gg, yy, ld, wd)
        if HAS_SEQ:
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
    base, lo, end = i_b * T * C + oc, n * LP, tl.minimum(T, n * LP + LP)
    o, ok = base + c64 * (end - 1), end - 1 >= lo
    k1, v1, g1 = _row(k, o, mc, ok), _row(v, o, mc, ok), _row(gy, o, mc, ok)
    y1, l1, f1 = _row(y32, o, mc, ok), _row(lnd, o, mc, ok), _starts(rs, i_b * T + end - 1, ok, HAS_SEQ)
    o, ok = o - c64, end - 2 >= lo
    k2, v2, g2 = _row(k, o, mc, ok), _row(v, o, mc, ok), _row(gy, o, mc, ok)
    y2, l2, f2 = _row(y32, o, mc, ok), _row(lnd, o, mc, ok), _starts(rs, i_b * T + end - 2, ok, HAS_SEQ)
    for i in range(0, end - lo):
        kk, vv, gg, yy, ld, fresh = k1, v1, g1, y1, l1, f1
        k1, v1, g1, y1, l1, f1 = k2, v2, g2, y2, l2, f2
        off, t = base + c64 * (end - 1 - i), end - 3 - i
        o, ok = off - c64 * 2, t >= lo
        k2, v2, g2 = _row(k, o, mc, ok), _row(v, o, mc, ok), _row(gy, o, mc, ok)
        y2, l2, f2 = _row(y32, o, mc, ok), _row(lnd, o, mc, ok), _starts(rs, i_b * T + t, ok, HAS_SEQ)
        ek = _exp(R + kk)
        cq = gg * _exp(b_u + kk - ld)
        tl.store(gk + off, (ek * (ga * vv + gb) + cq * (vv - yy)).to(gk.dtype.element_ty), mask=mc)
        tl.store(gv + off, (ek * ga + cq).to(gv.dtype.element_ty), mask=mc)
        gu += cq * (vv - yy)
        ga, gb, R = _adjoint_token(ga, gb, R, gg, yy, ld, wd)
        if HAS_SEQ:  # the state before a sequence's first token reaches nothing after it
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
# B·C alone fills half of 8 a multiprocessor. H100, C2048 bf16, forward+backward ms, one piece → pieces
# (seventy-eighth run):
#   B1 T4096 6.24 → 0.55 (64 pieces), B4 T4096 6.49 → 0.95 (17), B4 T16384 25.5 → 3.63 (17),
#   B16 T4096 7.15 → 3.38 (5), B32 T2048 4.14 → 3.23 (3),
#   B64 T1024 2.75 → 3.15 (2: the extra passes cost more than the shorter walks).
# The forward takes twice the pieces of the backward (one wave of 16 programs a multiprocessor, ⌊16·SMs /
# programs⌋): its one sweep is short, so it gains from more of them where the backward's three lose (eighty-first
# run, H100, ms, 8 → 16: fwd B4 T16384 0.620 → 0.561, B16 packed 0.749 → 0.668; fwd+bwd B16 T4096 3.10 → 3.31).
PROGRAMS_PER_SM, PIECE_MIN = {"fwd": 16, "bwd": 8}, 64


def _pieces(B, T, C, BC, device, sweep="bwd") -> tuple[int, int]:
    """(pieces, tokens a piece) of the sweeps over T: one piece (the plain scan) where B·C gives enough programs."""
    programs, sms = cdiv(C, BC) * B, sm_count(device)
    slots = PROGRAMS_PER_SM[sweep] * sms
    n = 1 if 2 * programs >= 8 * sms else min(slots // programs if sweep == "fwd" else cdiv(slots, programs),
                                                T // PIECE_MIN)
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
        NP, LP = _pieces(B, T, C, BC, k.device, "fwd")
        grid, seq = _grid(B, C, BC, NP), restart is not None
        sums = None
        if NP > 1:
            sums = torch.empty(B, NP, 4, C, dtype=torch.float32, device=k.device)
            _piece_sums[grid](w, u, k, v, sums, restart, T, C, LP, BC, seq, False, num_warps=4)
        _fwd_kernel[grid](w, u, k, v, y, s_in, s_out, restart, sums, T, C, LP, BC, s_in is not None, seq,
                          sums is not None, not interpreting(), num_warps=4)
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
                             not interpreting(), num_warps=4)
        if NP > 1:
            back = torch.empty(B, NP, 4, C, **f32)
            _rev_piece_sums[grid](w, u, gy, y32, lnd, back, restart, T, C, LP, BC, has[2], num_warps=4)
        gk, gv = torch.empty_like(k), torch.empty_like(v)
        g_in = torch.empty_like(s_in) if s_in is not None else None
        _bwd_rev_sweep[grid](u, w, k, v, gy, s_in, s_out, g_s, y32, lnd, gk, gv, gu, g_in, restart, back,
                             T, C, LP, BC, *has, num_warps=4)
        gw = gw.sum((0, 1))
        if g_s is not None and T:
            gw += _through_max(w, k, s_in, s_out, g_s, restart, gk, g_in)
        return gw.to(w.dtype), gu.sum((0, 1)).to(u.dtype), gk, gv, g_in, None


def _through_max(w, k, s_in, s_out, g_s, restart, gk, g_in):
    """What the sweeps leave out of a gradient that reaches the outgoing state: they take it as acting on
    num·e^max and den·e^max, exact where the state feeds another wkv4; a loss that reads num, den or max
    themselves also moves them through max. With num·e^max and den·e^max held, dL/dmax is
    c = g_max - g_num·num - g_den·den, and max is the largest logit of the last sequence's history:
    k_j + (T-1-j)·w' for its winning token j, or m0 + T·w' for the incoming state. Adds c to gk at j (or to the
    incoming max's gradient in g_in) and returns the part of dL/dw `[C]` (d/dw of n·w' is n·w')."""
    B, T, C = k.shape
    num, den, top = s_out.unbind(1)
    g_num, g_den, g_max = g_s.unbind(1)
    c = g_max - g_num * num - g_den * den                                         # [B, C]
    wd = -torch.exp(w.float())
    age = torch.arange(T - 1, -1, -1, device=k.device, dtype=torch.float32)      # T-1-j
    logits = age[:, None] * wd + k.float()                                        # [B, T, C]
    state_in = torch.ones(B, 1, dtype=torch.bool, device=k.device)
    if restart is not None:  # the last sequence's tokens: those with no restart after them
        r = restart.long()
        later = r.flip(1).cumsum(1).flip(1) - r
        logits = logits.masked_fill((later > 0)[..., None], float("-inf"))
        state_in = r.sum(1, keepdim=True) == 0
    best, j = logits.max(1)                                                       # [B, C]
    from_state = torch.full_like(best, float("-inf")) if s_in is None else s_in[:, 2] + T * wd
    wins = state_in & (from_state > best)                                         # the incoming state's logit
    gk.scatter_add_(1, j[:, None], torch.where(wins, 0.0, c)[:, None].to(gk.dtype))
    if g_in is not None:
        g_in[:, 2] += torch.where(wins, c, 0.0)
    return (c * wd * torch.where(wins, float(T), (T - 1 - j).float())).sum(0)


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
