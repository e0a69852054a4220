"""Triton kernels for RWKV-6's WKV: forward, and a two-sweep backward, over segments of the sequence.

One program owns one (segment, batch, head) (and a block of V or K) and walks its segment in
sub-chunks of BT = 16 tokens, carrying the [K, V] state in registers in float32 from the state
given for the segment's start. The serial layout (this file's `wkv6_triton`) has one segment, the
whole sequence; the chunked layout (triton_wkv6_chunked.py) first computes the state entering
every 64-token segment with a light serial pass, then runs these same kernels on all segments at
once.

Inside a sub-chunk the pairwise decay X_ij = 2^(e_i - b_j) (j < i; b the inclusive and e the
exclusive cumulative base-2 log-decay from the sub-chunk's start) enters three sums (`_pairs`).
When every column of the sub-chunk decays by at most 2^FAST_SPAN, X factors as 2^e_i · 2^-b_j with
both factors inside float32's range and the sums are tensor-core dots; otherwise they are formed a
column j at a time from exponents masked to j < i *before* the exp2, so nothing overflows however
fast w decays. Log-decays are converted to base 2 once so the hot loop uses exp2.

Backward: sweep 1 runs forward in time and produces dr (it needs the state before each
sub-chunk); sweep 2 runs backward in time carrying dS, the adjoint of the state, and produces
dk, dv, dw (a reverse cumulative sum of r·dr - k·dk), du and the gradient of the initial state.
What dw's reverse sum collects beyond a segment equals Σ_V(S_exit ⊙ dS_exit) at its end (scaling
the state there by e^δ touches exactly those terms), so a segment starts it from its exit state
and the gradient leaving it.

Packed sequences (HAS_SEQ: seq holds the runs of kernels._host.seq_runs, [B, T] int32) mask a sub-chunk
in three places (`_runs`): the pairs of two sequences, the reads of the entering state by tokens of a later
sequence than the token before the sub-chunk, and the writes into the leaving state by tokens of an earlier
sequence than its last; the state's own decay across the sub-chunk is zero where a sequence begins in it.
Every pair (j, i) that crosses a boundary then contributes nothing, to o and to every gradient; dw's
reverse sum holds as it is, since it sums exactly those pair contributions.

fla's varlen form with a state each (VARLEN: cu, the offsets [n + 1] of n sequences in a batch of 1) makes each
sequence a segment of its own: a program walks tokens cu[n] .. cu[n+1] from initial state n and leaves final state
n (`_segment`, `_entry`), so nothing is masked and the work is the tokens; the longest sequences start first (`_ids`).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dispatch import apply, interpreting
from .._host import cdiv, fp32_dot, next_pow2, on_device

BT = 16
# The serial backward's dw is a reverse sum over the whole segment of terms far larger than itself (rounded by the
# backward's TF32 dots for 16-bit inputs), so its error grew with T: 2.3e-2 of its norm at T 4096 and 4.5e-2 at 16384
# against float64 (H100, B1 H8 K=V=64 bf16; fla 1.8e-3, the chunked layout's 64-token segments 3.8e-3). Sweep 1
# stores the state every CKPT tokens (B·H·T/CKPT·K·V float32, a quarter of dr's float32 buffer: 64 MB at B4 H32
# T16384) and sweep 2 restarts the sum there from its exact value, Σ_V(S ⊙ dS), as a segment starts it from its exit
# state. Under the interpreter a smaller CKPT, so that the tests cross several.
# fla's varlen form (cu_seqlens, its lengths on the device) keeps T // CKPT + n slots a head: sequence i's j-th state
# at slot ⌊cu[i] / CKPT⌋ + i + j - 1 (`_ckpt_slot`), which no other sequence's reaches, as ⌊cu[i] / CKPT⌋ + its count
# ≤ ⌊cu[i + 1] / CKPT⌋.
CKPT, INTERPRET_CKPT = 256, 32
LOG2E = 1.4426950408889634
# Largest base-2 decay one sub-chunk may span in every column and still take the factored path:
# its factors then lie in [2^-80, 2^80] times the inputs, far inside float32's (and tf32's) range.
FAST_SPAN = tl.constexpr(80.0)
# The floor of a log-decay (w = -inf: forget everything, as exp(w) = 0). e^-110 ≈ 1.7e-48 is below float32's
# least subnormal (1.4e-45), so clamping w there changes no decay the kernels take (they compute in float32),
# and keeps the cumulative sums finite: a -inf in them would meet another as -inf - -inf = NaN. The clamp's
# gradient is 0 below the floor, as d(e^w)/dw = e^w is there.
W_FLOOR = tl.constexpr(-110.0)


@triton.jit
def _dot(a, b, PREC: tl.constexpr):
    """a @ b of float32 tiles on tensor cores: operands rounded to bfloat16 ("bf16", for bfloat16
    inputs: half the operand registers), or as tf32, three tf32 products or full float32 ("tf32", "tf32x3",
    "ieee")."""
    if PREC == "bf16":
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    else:
        return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _rows(i_b, i_h, t0, t_end, T, H: tl.constexpr, BT: tl.constexpr):
    """int64 row indices into [B, T, H, ·] of tokens t0 .. t0+BT of one (batch, head), and their mask."""
    t = t0 + tl.arange(0, BT)
    return (i_b * T + t).to(tl.int64) * H + i_h, t < t_end


@triton.jit
def _tile(x, rows, mt, oc, mc, D: tl.constexpr):
    """[BT, BD] tile of x `[B, T, H, D]` at the rows and columns given, in x's dtype (0 outside)."""
    return tl.load(x + rows[:, None] * D + oc[None, :], mask=mt[:, None] & mc[None, :], other=0.0)


@triton.jit
def _log2_decay(w):
    """A w tile as the kernels sum it: float32, at least W_FLOOR, in base 2."""
    return tl.maximum(w.to(tl.float32), W_FLOOR) * 1.4426950408889634


@triton.jit
def _chunk_decays(w):
    """Base-2 inclusive (b) and exclusive (e) cumulative log-decay of a sub-chunk's w tile, and its total."""
    w = _log2_decay(w)
    bc = tl.cumsum(w, axis=0)
    return bc, bc - w, tl.sum(w, axis=0)


@triton.jit
def _run_before(seq, i_b, t, T):
    """The run of token t - 1 of batch row i_b (0 before the first token: the initial state's run)."""
    return tl.load(seq + i_b * T + t - 1, mask=t > 0, other=0)


@triton.jit
def _runs(seq, i_b, t0, t_end, T, BT: tl.constexpr):
    """A sub-chunk's masks for packed sequences, tokens t0 .. t0+BT (those past t_end take the last's run):
    same [BT, BT] (a pair of one sequence), read [BT] (a token that reads the state entering the sub-chunk),
    write [BT] (one that writes into the state leaving it), keep (the entering state lives through it)."""
    run = tl.load(seq + i_b * T + tl.minimum(t0 + tl.arange(0, BT), t_end - 1))
    before, last = _run_before(seq, i_b, t0, T), tl.max(run, axis=0)
    return run[:, None] == run[None, :], run == before, run == last, last == before


@triton.jit
def _pairs(b_r, b_k, dA, e, ee, bc, last, pm, BT: tl.constexpr, PREC: tl.constexpr):
    """The in-sub-chunk sums through X_ij = 2^(e_i - b_j), j < i (rows are tokens, columns K; ee = 2^e,
    which every caller also needs for the state):

        A  [BT, BT] = Σ_k r_ik k_jk X_ijk      dr [BT, K] = Σ_j dA_ij k_j X_ij
        dk [BT, K]  = Σ_i dA_ij r_i X_ij       (dA [BT, BT] must be 0 outside pm)

    pm [BT, BT]: the pairs that count, j < i (and of one sequence, when packed); A is 0 outside it.

    On the factored path the compiler drops the dots a caller does not read; the column loop (taken
    only by sub-chunks that decay past 2^FAST_SPAN) forms all three.
    """
    ot = tl.arange(0, BT)
    if tl.min(last, axis=0) >= -FAST_SPAN:
        # X_ij = 2^e_i · 2^-b_j: 2^e ≤ 1 and 2^-b ≤ 2^FAST_SPAN
        rq, kq = b_r * ee, b_k * tl.exp2(-bc)
        A = _dot(rq, tl.trans(kq), PREC)
        dr = ee * _dot(dA, kq, PREC)
        dk = tl.exp2(-bc) * _dot(tl.trans(dA), rq, PREC)
    else:
        A = tl.zeros([BT, BT], dtype=tl.float32)
        dr, dk = tl.zeros_like(b_r), tl.zeros_like(b_r)
        for j in range(BT):
            row = ot[:, None] == j
            k_j, b_j = tl.sum(tl.where(row, b_k, 0.0), axis=0), tl.sum(tl.where(row, bc, 0.0), axis=0)
            X = tl.exp2(tl.where(ot[:, None] > j, e - b_j[None, :], float("-inf")))
            A = tl.where(ot[None, :] == j, tl.sum(b_r * k_j[None, :] * X, axis=1)[:, None], A)
            dA_j = tl.sum(tl.where(ot[None, :] == j, dA, 0.0), axis=1)
            dr += dA_j[:, None] * k_j[None, :] * X
            dk = tl.where(row, tl.sum(dA_j[:, None] * b_r * X, axis=0)[None, :], dk)
    return tl.where(pm, A, 0.0), dr, dk


@triton.jit
def _ids(cu, VARLEN: tl.constexpr):
    """This program's (segment n, (batch, head), block of V or K, segment count). The grid is (segments, B·H,
    blocks); VARLEN's is (blocks, B·H, n) with cu = `varlen_plan`'s offsets and order: the programs of the longest
    sequence come first, as the card starts programs in the order of their index (x fastest), so the short ones
    fill in behind the long ones rather than a long one starting last."""
    if VARLEN:
        n = tl.num_programs(2)
        return tl.load(cu + n + 1 + tl.program_id(2)), tl.program_id(1).to(tl.int64), tl.program_id(0), n
    return tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2), tl.num_programs(0)


@triton.jit
def _segment(T, seg, i_n, cu, VARLEN: tl.constexpr):
    """First token of segment i_n and the end of its tokens: of `seg` tokens each, or (VARLEN) sequence i_n of
    a packed row of batch 1, cu its offsets [n + 1] (`varlen_plan`)."""
    if VARLEN:
        return tl.load(cu + i_n), tl.load(cu + i_n + 1)
    t_start = i_n * seg
    return t_start, tl.minimum(T, t_start + seg)


@triton.jit
def _state_mask(m, t_start, t_end, VARLEN: tl.constexpr):
    """The mask m of a segment's state loads, or (VARLEN) none where the segment is empty: the padding pieces of
    triton_wkv6_chunked.varlen_pieces, whose states nothing writes."""
    if VARLEN:
        return tl.where(t_end > t_start, m, False)  # (a scalar & a block: Triton's interpreter cannot mask by it)
    return m


@triton.jit
def _entry(i_bh, i_n, stride, H: tl.constexpr, VARLEN: tl.constexpr):
    """Which state of a state tensor belongs to segment i_n of (batch, head) i_bh: entry bh·stride + n, or
    (VARLEN: states [n, H, K, V], a batch of 1 so i_bh is the head) n·H + head."""
    if VARLEN:
        return i_n * H + i_bh
    return i_bh * stride + i_n


@triton.jit
def _ckpt_slot(i_bh, i_n, nseg, n_ckpt, t_start, j, CKPT: tl.constexpr, VARLEN: tl.constexpr):
    """Where the j-th state (j ≥ 1) stored in segment i_n of (batch, head) i_bh lies in ckpt: n_ckpt slots a
    segment, or (VARLEN: a head's n_ckpt = T // CKPT + n slots) sequence i_n's from ⌊t_start / CKPT⌋ + i_n."""
    if VARLEN:
        return i_bh * n_ckpt + t_start // CKPT + i_n + j - 1
    return (i_bh * nseg + i_n) * n_ckpt + j - 1


@triton.jit
def _fwd_kernel(r, k, v, w, u, s_in, o, s_out, seq, cu, scale, T, seg, s_in_stride, H: tl.constexpr, K: tl.constexpr,
                V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
                HAS_S_IN: tl.constexpr, STORE_S_OUT: tl.constexpr, HAS_SEQ: tl.constexpr, VARLEN: tl.constexpr,
                PREC: tl.constexpr):
    """o for one segment's tokens; s_in[_entry(bh, n, s_in_stride)] is the state entering segment n, and
    s_out[_entry(bh, n, 1)] receives the state leaving it."""
    scale = tl.cast(scale, tl.float32)  # torch.compile's Inductor passes a float as float64
    i_n, i_bh, i_v, nseg = _ids(cu, VARLEN)
    i_b, i_h = i_bh // H, i_bh % H
    ot, ok, ov = tl.arange(0, BT), tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    mk, mv = ok < K, ov < V
    p_s, m_s = ok[:, None] * V + ov[None, :], mk[:, None] & mv[None, :]
    t_start, t_end = _segment(T, seg, i_n, cu, VARLEN)
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_S_IN:
        S += tl.load(s_in + _entry(i_bh, i_n, s_in_stride, H, VARLEN) * K * V + p_s,
                     mask=_state_mask(m_s, t_start, t_end, VARLEN), other=0.0).to(tl.float32)
    b_u = tl.load(u + i_h * K + ok, mask=mk, other=0.0).to(tl.float32)
    diag, strict = ot[:, None] == ot[None, :], ot[:, None] > ot[None, :]
    # each sub-chunk's tiles are loaded one step ahead, so their latency hides behind the step before
    rows, mt = _rows(i_b, i_h, t_start, t_end, T, H, BT)
    n_r, n_k, n_v, n_w = _tile(r, rows, mt, ok, mk, K), _tile(k, rows, mt, ok, mk, K), \
        _tile(v, rows, mt, ov, mv, V), _tile(w, rows, mt, ok, mk, K)
    for t0 in range(t_start, t_end, BT):
        b_r, b_k, b_v, b_w = n_r.to(tl.float32), n_k.to(tl.float32), n_v.to(tl.float32), n_w
        p_v, m_v = rows[:, None] * V + ov[None, :], mt[:, None] & mv[None, :]
        rows, mt = _rows(i_b, i_h, t0 + BT, t_end, T, H, BT)
        n_r, n_k, n_v, n_w = _tile(r, rows, mt, ok, mk, K), _tile(k, rows, mt, ok, mk, K), \
            _tile(v, rows, mt, ov, mv, V), _tile(w, rows, mt, ok, mk, K)
        bc, e, last = _chunk_decays(b_w)
        ee = tl.exp2(e)
        r_in, k_out, decay, pm = b_r * ee, b_k * tl.exp2(last[None, :] - bc), tl.exp2(last), strict
        if HAS_SEQ:
            same, read, write, keep = _runs(seq, i_b, t0, t_end, T, BT)
            r_in, k_out = tl.where(read[:, None], r_in, 0.0), tl.where(write[:, None], k_out, 0.0)
            decay, pm = tl.where(keep, decay, 0.0), strict & same
        A, _, _ = _pairs(b_r, b_k, tl.zeros([BT, BT], dtype=tl.float32), e, ee, bc, last, pm, BT, PREC)
        A += tl.where(diag, tl.sum(b_r * b_k * b_u[None, :], axis=1)[:, None], 0.0)
        b_o = _dot(r_in, S, PREC) + _dot(A, b_v, PREC)
        tl.store(o + p_v, (scale * b_o).to(o.dtype.element_ty), mask=m_v)
        S = S * decay[:, None] + _dot(tl.trans(k_out), b_v, PREC)
    if STORE_S_OUT:
        tl.store(s_out + _entry(i_bh, i_n, 1, H, VARLEN) * K * V + p_s, S, mask=m_s)


@triton.jit
def _bwd_dr_kernel(k, v, w, u, s_in, do, dr, ckpt, seq, cu, scale, T, seg, s_in_stride, n_ckpt, H: tl.constexpr,
                   K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
                   HAS_S_IN: tl.constexpr, HAS_SEQ: tl.constexpr, VARLEN: tl.constexpr, PREC: tl.constexpr,
                   PREC_IN: tl.constexpr, CKPT: tl.constexpr):
    """dr (float32) for one segment's tokens and one block of K, from the state entering the segment.
    PREC (_prec_bwd) for the dots, but PREC_IN (the inputs' own, _prec) for do·vᵀ, whose operands are
    inputs: exact in bfloat16 too. CKPT > 0: the state entering token t_start + j·CKPT (j ≥ 1) stored at
    ckpt[`_ckpt_slot`] for sweep 2's dw."""
    scale = tl.cast(scale, tl.float32)  # torch.compile's Inductor passes a float as float64
    i_n, i_bh, i_k, nseg = _ids(cu, VARLEN)
    i_b, i_h = i_bh // H, i_bh % H
    ot, ok, ov = tl.arange(0, BT), i_k * BK + tl.arange(0, BK), tl.arange(0, BV)
    mk, mv = ok < K, ov < V
    t_start, t_end = _segment(T, seg, i_n, cu, VARLEN)
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_S_IN:
        p_s = _entry(i_bh, i_n, s_in_stride, H, VARLEN) * K * V + ok[:, None] * V + ov[None, :]
        S += tl.load(s_in + p_s, mask=_state_mask(mk[:, None] & mv[None, :], t_start, t_end, VARLEN),
                     other=0.0).to(tl.float32)
    b_u = tl.load(u + i_h * K + ok, mask=mk, other=0.0).to(tl.float32)
    strict = ot[:, None] > ot[None, :]
    rows, mt = _rows(i_b, i_h, t_start, t_end, T, H, BT)
    n_k, n_v, n_do, n_w = _tile(k, rows, mt, ok, mk, K), _tile(v, rows, mt, ov, mv, V), \
        _tile(do, rows, mt, ov, mv, V), _tile(w, rows, mt, ok, mk, K)
    for t0 in range(t_start, t_end, BT):
        if CKPT > 0:
            if (t0 > t_start) & ((t0 - t_start) % CKPT == 0):
                c = _ckpt_slot(i_bh, i_n, nseg, n_ckpt, t_start, (t0 - t_start) // CKPT, CKPT, VARLEN)
                tl.store(ckpt + c * K * V + ok[:, None] * V + ov[None, :], S, mask=mk[:, None] & mv[None, :])
        b_k, b_v, b_do, b_w = n_k.to(tl.float32), n_v.to(tl.float32), n_do.to(tl.float32), n_w
        p_k, m_k = rows[:, None] * K + ok[None, :], mt[:, None] & mk[None, :]
        rows, mt = _rows(i_b, i_h, t0 + BT, t_end, T, H, BT)
        n_k, n_v, n_do, n_w = _tile(k, rows, mt, ok, mk, K), _tile(v, rows, mt, ov, mv, V), \
            _tile(do, rows, mt, ov, mv, V), _tile(w, rows, mt, ok, mk, K)
        bc, e, last = _chunk_decays(b_w)
        ee = tl.exp2(e)
        e_in, k_out, decay, pm = ee, b_k * tl.exp2(last[None, :] - bc), tl.exp2(last), strict
        if HAS_SEQ:
            same, read, write, keep = _runs(seq, i_b, t0, t_end, T, BT)
            e_in, k_out = tl.where(read[:, None], e_in, 0.0), tl.where(write[:, None], k_out, 0.0)
            decay, pm = tl.where(keep, decay, 0.0), strict & same
        dA = tl.where(pm, _dot(b_do, tl.trans(b_v), PREC_IN), 0.0)
        _, b_dr, _ = _pairs(b_k, b_k, dA, e, ee, bc, last, pm, BT, PREC)  # (its first argument, r, is not read for dr)
        b_dr += e_in * _dot(b_do, tl.trans(S), PREC)
        b_dr += b_u[None, :] * b_k * tl.sum(b_v * b_do, axis=1)[:, None]
        tl.store(dr + p_k, scale * b_dr, mask=m_k)
        S = S * decay[:, None] + _dot(tl.trans(k_out), b_v, PREC)


@triton.jit
def _bwd_rev_kernel(r, k, v, w, u, do, dr, s_exit, ds_in, dk, dv, dw, du, dh0, ckpt, seq, cu, scale, T, seg,
                    s_exit_stride, ds_in_stride, n_ckpt, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                    BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr, HAS_DS_IN: tl.constexpr,
                    STORE_DH0: tl.constexpr, HAS_SEQ: tl.constexpr, VARLEN: tl.constexpr, PREC: tl.constexpr,
                    PREC_IN: tl.constexpr, CKPT: tl.constexpr):
    """dk, dv, dw and a du partial for one segment, walking it backward from the gradient leaving it.

    ds_in[_entry(bh, n, ds_in_stride)] is d loss / d(state leaving segment n), s_exit[...] that state;
    dh0[_entry(bh, n, 1)] receives the gradient of the state entering it. CKPT > 0: dw's sum over the later
    tokens restarts from Σ_V(S ⊙ dS) at every state sweep 1 stored (`_bwd_dr_kernel`).
    """
    scale = tl.cast(scale, tl.float32)  # torch.compile's Inductor passes a float as float64
    i_n, i_bh, i_k, nseg = _ids(cu, VARLEN)
    i_b, i_h = i_bh // H, i_bh % H
    ot, ok, ov = tl.arange(0, BT), tl.arange(0, BK), tl.arange(0, BV)
    mk, mv = ok < K, ov < V
    p_s, m_s = ok[:, None] * V + ov[None, :], mk[:, None] & mv[None, :]
    t_start, t_end = _segment(T, seg, i_n, cu, VARLEN)
    dS = tl.zeros([BK, BV], dtype=tl.float32)
    carry = tl.zeros([BK], dtype=tl.float32)  # d loss / d (log-decay) summed over later tokens
    if HAS_DS_IN:
        m_in = _state_mask(m_s, t_start, t_end, VARLEN)
        dS += tl.load(ds_in + _entry(i_bh, i_n, ds_in_stride, H, VARLEN) * K * V + p_s, mask=m_in,
                      other=0.0).to(tl.float32)
        S_exit = tl.load(s_exit + _entry(i_bh, i_n, s_exit_stride, H, VARLEN) * K * V + p_s, mask=m_in, other=0.0)
        carry += tl.sum(dS * S_exit, axis=1)
    b_u = tl.load(u + i_h * K + ok, mask=mk, other=0.0).to(tl.float32)
    b_du = tl.zeros([BK], dtype=tl.float32)
    strict = ot[:, None] > ot[None, :]
    n_sub = tl.cdiv(t_end - t_start, BT)
    rows, mt = _rows(i_b, i_h, t_start + (n_sub - 1) * BT, t_end, T, H, BT)
    n_r, n_k, n_v, n_do = _tile(r, rows, mt, ok, mk, K), _tile(k, rows, mt, ok, mk, K), \
        _tile(v, rows, mt, ov, mv, V), _tile(do, rows, mt, ov, mv, V)
    n_dr, n_w = _tile(dr, rows, mt, ok, mk, K), _tile(w, rows, mt, ok, mk, K)
    for i in range(0, n_sub):
        b_r, b_k, b_v, b_do = n_r.to(tl.float32), n_k.to(tl.float32), n_v.to(tl.float32), n_do.to(tl.float32)
        b_dr, b_w = n_dr, n_w
        p_k, m_k = rows[:, None] * K + ok[None, :], mt[:, None] & mk[None, :]
        p_v, m_v = rows[:, None] * V + ov[None, :], mt[:, None] & mv[None, :]
        # the sub-chunk before: rows below t_start (i = n_sub - 1) are masked off and read nothing
        t0 = t_start + (n_sub - 1 - i) * BT
        t_prev = t0 - BT
        rows, mt = _rows(i_b, i_h, t_prev, t_end, T, H, BT)
        mt = mt & (t_prev + ot >= t_start)
        n_r, n_k, n_v, n_do = _tile(r, rows, mt, ok, mk, K), _tile(k, rows, mt, ok, mk, K), \
            _tile(v, rows, mt, ov, mv, V), _tile(do, rows, mt, ov, mv, V)
        n_dr, n_w = _tile(dr, rows, mt, ok, mk, K), _tile(w, rows, mt, ok, mk, K)
        if CKPT > 0:  # the state leaving this sub-chunk was stored: the later tokens' sum, exactly
            t1 = t0 + BT - t_start
            if (t0 + BT < t_end) & (t1 % CKPT == 0):
                c = _ckpt_slot(i_bh, i_n, nseg, n_ckpt, t_start, t1 // CKPT, CKPT, VARLEN)
                carry = tl.sum(dS * tl.load(ckpt + c * K * V + p_s, mask=m_s, other=0.0), axis=1)
        bc, e, last = _chunk_decays(b_w)
        ee = tl.exp2(e)
        e_in, to_end, decay, pm = ee, tl.exp2(last[None, :] - bc), tl.exp2(last), strict
        if HAS_SEQ:
            same, read, write, keep = _runs(seq, i_b, t0, t_end, T, BT)
            e_in, to_end = tl.where(read[:, None], e_in, 0.0), tl.where(write[:, None], to_end, 0.0)
            decay, pm = tl.where(keep, decay, 0.0), strict & same
        dA = tl.where(pm, _dot(b_do, tl.trans(b_v), PREC_IN), 0.0)
        A, _, dk_in = _pairs(b_r, b_k, dA, e, ee, bc, last, pm, BT, PREC)
        dk_s = scale * dk_in + to_end * _dot(b_v, tl.trans(dS), PREC)
        vdo = tl.sum(b_v * b_do, axis=1)[:, None]
        ruk = tl.sum(b_r * b_u[None, :] * b_k, axis=1)[:, None]
        b_dv = scale * _dot(tl.trans(A), b_do, PREC) + scale * ruk * b_do
        b_dv += _dot(b_k * to_end, dS, PREC)
        b_du += scale * tl.sum(b_r * b_k * vdo, axis=0)
        g_r = b_r * (b_dr - scale * b_u[None, :] * b_k * vdo)
        g_k = b_k * dk_s
        b_dw = carry[None, :] + tl.cumsum(g_r, axis=0, reverse=True) - g_r - tl.cumsum(g_k, axis=0, reverse=True)
        carry += tl.sum(g_r - g_k, axis=0)
        tl.store(dk + p_k, (dk_s + scale * b_u[None, :] * b_r * vdo).to(dk.dtype.element_ty), mask=m_k)
        tl.store(dv + p_v, b_dv.to(dv.dtype.element_ty), mask=m_v)
        b_dw = tl.where(b_w.to(tl.float32) < W_FLOOR, 0.0, b_dw)  # the clamp's (_log2_decay)
        tl.store(dw + p_k, b_dw.to(dw.dtype.element_ty), mask=m_k)
        dS = dS * decay[:, None] + scale * _dot(tl.trans(b_r * e_in), b_do, PREC)
    tl.store(du + (i_bh * nseg + i_n) * K + ok, b_du, mask=mk)
    if STORE_DH0:
        tl.store(dh0 + _entry(i_bh, i_n, 1, H, VARLEN) * K * V + p_s, dS, mask=m_s)


def _pow2(n: int) -> int:
    return max(16, next_pow2(n))


def _prec(x: torch.Tensor) -> str:
    """How the kernels' dots take their float32 operands for inputs of x's dtype (see `_dot`): float32's as
    fp32_dot says (float32's digits unless torch allows TF32), float64's (the interpreter's) in full."""
    if x.dtype == torch.float32:
        return fp32_dot()
    return {torch.float64: "ieee", torch.bfloat16: "bf16"}.get(x.dtype, "tf32")


def _prec_bwd(x: torch.Tensor) -> str:
    """The backward's dots keep tf32 for bfloat16 inputs, except do·vᵀ (PREC_IN: its operands are the
    inputs themselves, exact in bfloat16). With bfloat16 operands everywhere (the carried state and its
    gradient rounded too) the GPU test of gradients at T = 128K against float64 failed its 5% bound, and
    passes with tf32; that cost forward+backward 2.45 -> 2.77 ms at B4 T4096 H32 K=V=64 (H200,
    2026-11-29). bfloat16 for the other products inside a sub-chunk (the pairs, Aᵀ·do) took it to
    2.71 ms and 16K from 10.97 to 10.54 ms, and failed the same test (2026-11-29): not kept."""
    return "tf32" if _prec(x) == "bf16" else _prec(x)


def _num_warps(bk: int, bv: int) -> int:
    return 4 if bk * bv <= 64 * 32 else 8


def segments_fwd(r, k, v, w, u, scale, s_in, s_in_stride, seg, s_out=None, bv=None, num_warps=None, seq=None,
                 cu=None):
    """o `[B, T, H, V]` (r's dtype) over segments of `seg` tokens, each from its entering state in
    s_in (entry bh·s_in_stride + n; None: zeros); s_out, with one segment, receives the final state.
    seq: the runs `[B, T]` int32 of packed sequences, or None. cu: offsets `[n + 1]` int32 of n sequences
    packed in a batch of 1, each a segment with its own states in s_in and s_out `[n, H, K, V]` (seg unread)."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    BK = _pow2(K)
    # 64: op.SERIAL_V_BLOCK, which op's default layout counts programs by, must stay equal to it
    BV = min(_pow2(V), bv or 64)  # H200, serial, K=V=64 bf16: BV 64 1.29 ms, 32 2.17 ms, 16 4.14 ms (T=4096, B=4, H=32)
    o = torch.empty_like(v, dtype=r.dtype)
    grid = _grid(_count(T, seg, cu), B * H, cdiv(V, BV), cu)
    _fwd_kernel[grid](r, k, v, w, u, s_in, o, s_out, seq, cu, scale, T, seg, s_in_stride, H, K, V, BK, BV, BT,
                      s_in is not None, s_out is not None, seq is not None, cu is not None, _prec(r),
                      num_warps=num_warps or _num_warps(BK, BV))
    return o


def segments_bwd(r, k, v, w, u, scale, do, s_in, s_in_stride, s_exit, ds_in, exit_strides, seg, store_dh0,
                 rev_warps=8, seq=None, cu=None, restarts=True):
    """dr, dk, dv, dw, du and (one segment, store_dh0) dh0 over segments of `seg` tokens.

    s_in as for segments_fwd; ds_in (None: zeros) is d loss / d(state leaving each segment) and s_exit
    that state, at entries bh·stride + n with exit_strides = (s_exit's stride, ds_in's stride). cu as for
    segments_fwd: the states, their gradients and dh0 are then `[n, H, K, V]`, one a sequence. restarts=False:
    no dw restarts (CKPT) for cu's segments, which the caller knows to be short.
    """
    B, T, H, K = r.shape
    V = v.shape[-1]
    BKF, BVF = _pow2(K), _pow2(V)
    BK = min(BKF, 32)
    nseg = _count(T, seg, cu)
    dr32 = torch.empty(B, T, H, K, dtype=torch.float32, device=r.device)
    # dw's restarts (CKPT): slots for the segments longer than it, or (cu) for sequences of any length up to T
    every = INTERPRET_CKPT if interpreting() else CKPT
    if cu is None:
        n_ckpt, slots = max(0, (min(seg, T) - 1) // every), B * H * nseg
    else:
        n_ckpt, slots = (T // every + nseg if restarts and T > every else 0), H
    ckpt = torch.empty(slots * n_ckpt, K, V, dtype=torch.float32, device=r.device) if n_ckpt else None
    every = every if n_ckpt else 0  # 0: no restarts compiled in
    _bwd_dr_kernel[_grid(nseg, B * H, cdiv(K, BK), cu)](k, v, w, u, s_in, do, dr32, ckpt, seq, cu, scale, T, seg,
                                                      s_in_stride, n_ckpt, H, K, V, BK, BVF, BT, s_in is not None,
                                                      seq is not None, cu is not None, _prec_bwd(r), _prec(r), every,
                                                      num_warps=_num_warps(BK, BVF))
    dk, dw, dv = torch.empty_like(k), torch.empty_like(w), torch.empty_like(v)
    du = torch.empty(B, H, nseg, K, dtype=torch.float32, device=r.device)
    states = B if cu is None else nseg
    dh0 = torch.empty(states, H, K, V, dtype=torch.float32, device=r.device) if store_dh0 else None
    _bwd_rev_kernel[_grid(nseg, B * H, 1, cu)](r, k, v, w, u, do, dr32, s_exit, ds_in, dk, dv, dw, du, dh0, ckpt, seq,
                                               cu, scale, T, seg, *exit_strides, n_ckpt, H, K, V, BKF, BVF, BT,
                                               ds_in is not None, store_dh0, seq is not None, cu is not None,
                                               _prec_bwd(r), _prec(r), every, num_warps=rev_warps)
    return dr32.to(r.dtype), dk, dv, dw, du.sum((0, 2)).to(u.dtype), dh0


def _count(T: int, seg: int, cu) -> int:
    """How many segments: of `seg` tokens, or the sequences of a `varlen_plan`."""
    return max(1, cdiv(T, seg)) if cu is None else (cu.numel() - 1) // 2


def _grid(segments: int, bh: int, blocks: int, cu) -> tuple[int, int, int]:
    """The launch grid `_ids` reads."""
    return (segments, bh, blocks) if cu is None else (blocks, bh, segments)


def varlen_plan(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """cu_seqlens [n + 1] -> int32 [2n + 1] on its device: the offsets, then the sequences longest first (`_ids`),
    without waiting for the device (made on the host where cu_seqlens is there)."""
    cu = cu_seqlens.to(torch.int32)
    return torch.cat([cu, torch.argsort(cu.diff(), descending=True, stable=True).to(torch.int32)])


def wkv6_fwd(r, k, v, w, u, scale, h0, store_ht, bv=None, seq=None, cu=None):
    """The serial layout's forward: one segment, or (cu) one a packed sequence with its own states; returns
    (o, ht float32 or None)."""
    B, T, H, K = r.shape
    states = B if cu is None else _count(T, 1, cu)
    ht = torch.empty(states, H, K, v.shape[-1], dtype=torch.float32, device=r.device) if store_ht else None
    o = segments_fwd(r, k, v, w, u, scale, h0, 1, max(T, 1), s_out=ht, bv=bv, seq=seq, cu=cu)
    return o, ht


def wkv6_bwd(r, k, v, w, u, scale, h0, ht, do, dht, seq=None, cu=None):
    """Both backward sweeps over one segment (or one a sequence, cu); returns (dr, dk, dv, dw, du, dh0 or None)."""
    T = r.shape[1]
    return segments_bwd(r, k, v, w, u, scale, do, h0, 1, ht, dht, (1, 1), max(T, 1), h0 is not None, seq=seq,
                        cu=cu)


class WKV6Function(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, k, v, w, u, scale, h0, output_final_state, seq, cu):
        r, k, v, w, u = (x.contiguous() for x in (r, k, v, w, u))
        h0 = h0.contiguous() if h0 is not None else None
        seq = seq.contiguous() if seq is not None else None
        o, ht = wkv6_fwd(r, k, v, w, u, scale, h0, output_final_state, seq=seq, cu=cu)
        ctx.save_for_backward(r, k, v, w, u, h0, ht, seq, cu)
        ctx.scale = scale
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        r, k, v, w, u, h0, ht, seq, cu = ctx.saved_tensors
        dht = dht.contiguous() if dht is not None else None
        dr, dk, dv, dw, du, dh0 = wkv6_bwd(r, k, v, w, u, ctx.scale, h0, ht, do.contiguous(), dht, seq=seq, cu=cu)
        if dh0 is not None:
            dh0 = dh0.to(h0.dtype)
        return dr, dk, dv, dw, du, None, dh0, None, None, None


def wkv6_triton(r, k, v, w, u, scale, initial_state=None, output_final_state=False, seq_idx=None, cu_seqlens=None):
    """seq_idx: the runs `[B, T]` of packed sequences (`seq_runs`), or None. cu_seqlens: the offsets `[n + 1]` of
    n sequences packed in a batch of 1 (checked by the caller), each with its own initial and final state
    `[n, H, K, V]`: one program walks one sequence, so the work is the tokens, not n × the longest. On the host
    (the op's copy of the offsets it read) the plan is made there and copied over once."""
    seq = None if seq_idx is None else seq_idx.to(torch.int32)
    cu = None
    if cu_seqlens is not None:
        if cu_seqlens.numel() - 1 > 65535:  # the grid's z (`_grid`)
            raise ValueError(f"cu_seqlens: at most 65535 sequences on the Triton path, got {cu_seqlens.numel() - 1}")
        cu, = on_device([varlen_plan(cu_seqlens)], r.device)
    return run_function(WKV6Function, r, k, v, w, u, scale, initial_state, output_final_state, seq, cu)


def run_function(fn, r, k, v, w, u, scale, initial_state, output_final_state, *plan):
    """fn.apply (through `apply`) with the layouts' shared arguments, then plan (seq_idx's runs, offsets: tensors
    or None). float64 inputs are the interpreter's: the kernels compute in float32, the results come back float64."""
    if interpreting() and r.dtype == torch.float64:
        args = [x.float() if x is not None else None for x in (r, k, v, w, u, initial_state)]
        o, ht = apply(fn, *args[:5], scale, args[5], output_final_state, *plan)
        return o.double(), (ht.double() if ht is not None else None)
    return apply(fn, r, k, v, w, u, scale, initial_state, output_final_state, *plan)
