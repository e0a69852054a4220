"""Triton kernels for RWKV-6's WKV in fla's layout: parallel chunks, a light serial state pass.

The serial kernel of triton_wkv6.py does the V-independent pairwise-decay work of every
chunk inside its time loop, on only B·H programs. Here that work runs in programs over
(chunk, batch, head) and only the [K, V] state is carried serially:

    forward   _chunk_state   (parallel)  each chunk's own state contribution and total decay
              _carry_fwd     (serial)    entering state of every chunk, in place; final state
              _chunk_out     (parallel)  o = scale·((r⊙decay)·S_in + A·v), A built on the fly
    backward  _chunk_state_grad (parallel), _carry_bwd (serial, reverse), _chunk_grads (parallel)

Chunks are C = 64 tokens cut into sub-chunks of BC = 16. Between sub-chunks the decay
exp2(e_i - b_j) is split at a reference point lying between j and i (the cumulative
log-decay at the sub-chunk boundary), so both factors have exponents ≤ 0 and the product
is a tensor-core dot. Inside a sub-chunk it is a [BC, BC, K] tensor masked to j < i
*before* the exp2, as in the serial kernel. Every exp2 we take has an exponent ≤ 0, so
nothing overflows however fast w decays.

dw needs a reverse cumulative sum of r·dr - k·dk over the whole sequence; what lies beyond
a chunk equals Σ_V(S_out ⊙ dS_out) at its end (scaling the state there by e^δ touches
exactly those terms), so each chunk gets it from its entering state and the carried
gradient and no extra pass runs.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dispatch import interpreting

CHUNK = 64
SUB = 16


@triton.jit
def _rows(i_b, i_h, t0, T, H: tl.constexpr, N: tl.constexpr):
    """Token rows t0 .. t0+N of one (batch, head): int64 row indices into [B, T, H, ·] and the mask."""
    t = t0 + tl.arange(0, N)
    return (i_b * T + t).to(tl.int64) * H + i_h, t < T


@triton.jit
def _load(x, rows, mt, D: tl.constexpr, BD: tl.constexpr, col0=0):
    oc = col0 + tl.arange(0, BD)
    m = mt[:, None] & (oc < D)[None, :]
    return tl.load(x + rows[:, None] * D + oc[None, :], mask=m, other=0.0).to(tl.float32)


@triton.jit
def _store(x, val, rows, mt, D: tl.constexpr, BD: tl.constexpr, col0=0):
    oc = col0 + tl.arange(0, BD)
    m = mt[:, None] & (oc < D)[None, :]
    tl.store(x + rows[:, None] * D + oc[None, :], val.to(x.dtype.element_ty), mask=m)


@triton.jit
def _state_ptrs(i_bhn, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, i_v):
    """Offsets and mask of one [K, V-block] state in a [B·H·N, K, V] float32 buffer."""
    ok, ov = tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    return i_bhn * K * V + ok[:, None] * V + ov[None, :], (ok < K)[:, None] & (ov < V)[None, :]


@triton.jit
def _log2_decay(w, rows, mt, K: tl.constexpr, BK: tl.constexpr):
    """Base-2 log-decay, its inclusive cumulative sum b and exclusive e over the rows given."""
    w2 = _load(w, rows, mt, K, BK) * 1.4426950408889634
    b = tl.cumsum(w2, axis=0)
    return w2, b, b - w2


@triton.jit
def _after(w2):
    """Σ_{m>j} w2_m for each row j: a sum of same-sign terms, so exact to rounding, unlike b_last - b_j."""
    return tl.cumsum(w2, axis=0, reverse=True) - w2


@triton.jit
def _diag_decay(el, bl, BC: tl.constexpr):
    """[BC, BC, K]: exp2(e_i - b_j) for j < i inside one sub-chunk, else 0 (masked before exp2)."""
    o = tl.arange(0, BC)
    strict = (o[:, None] > o[None, :])[:, :, None]
    return tl.exp2(tl.where(strict, el[:, None, :] - bl[None, :, :], float("-inf")))


@triton.jit
def _chunk_state(k, v, w, dS, glast, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                 BK: tl.constexpr, BV: tl.constexpr, C: tl.constexpr, PREC: tl.constexpr):
    """dS[n] = Σ_j (k_j ⊙ exp2(last - b_j)) ⊗ v_j over chunk n; glast[n] = its total base-2 decay."""
    i_n, i_bh, i_v = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    N = tl.cdiv(T, C)
    rows, mt = _rows(i_b, i_h, i_n * C, T, H, C)
    w2, _, _ = _log2_decay(w, rows, mt, K, BK)
    last = tl.sum(w2, axis=0)
    kt = _load(k, rows, mt, K, BK) * tl.exp2(_after(w2))
    b_v = _load(v, rows, mt, V, BV, i_v * BV)
    p, m = _state_ptrs(i_bh * N + i_n, K, V, BK, BV, i_v)
    tl.store(dS + p, tl.dot(tl.trans(kt), b_v, input_precision=PREC), mask=m)
    if i_v == 0:
        ok = tl.arange(0, BK)
        tl.store(glast + (i_bh * N + i_n) * K + ok, last, mask=ok < K)


@triton.jit
def _chunk_state_grad(r, w, do, dS, scale, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                      BK: tl.constexpr, BV: tl.constexpr, C: tl.constexpr, PREC: tl.constexpr):
    """dS[n] = scale · Σ_i (r_i ⊙ exp2(e_i)) ⊗ do_i: what chunk n's outputs add to d(entering state)."""
    i_n, i_bh, i_v = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    N = tl.cdiv(T, C)
    rows, mt = _rows(i_b, i_h, i_n * C, T, H, C)
    _, _, e = _log2_decay(w, rows, mt, K, BK)
    rq = _load(r, rows, mt, K, BK) * tl.exp2(e)
    b_do = _load(do, rows, mt, V, BV, i_v * BV)
    p, m = _state_ptrs(i_bh * N + i_n, K, V, BK, BV, i_v)
    tl.store(dS + p, scale * tl.dot(tl.trans(rq), b_do, input_precision=PREC), mask=m)


@triton.jit
def _carry(hs, glast, s0, s_end, T, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
           C: tl.constexpr, REVERSE: tl.constexpr, HAS_S0: tl.constexpr, STORE_END: tl.constexpr):
    """The only serial pass: hs[n] holds chunk n's own contribution on entry and the carried value on exit.

    Forward: S_in[n+1] = exp2(glast[n]) ⊙ S_in[n] + dS[n], from s0 (the initial state).
    Reverse: G[n-1] = exp2(glast[n]) ⊙ G[n] + dS[n], from s0 (d final state); G[n] is d(exit state of n).
    """
    i_v, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    N = tl.cdiv(T, C)
    ok = tl.arange(0, BK)
    p0, m = _state_ptrs(i_bh, K, V, BK, BV, i_v)
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_S0:
        S += tl.load(s0 + p0, mask=m, other=0.0).to(tl.float32)
    for i in range(0, N):
        n = i
        if REVERSE:
            n = N - 1 - i
        p = p0 + (i_bh * (N - 1) + n) * K * V  # row i_bh·N + n of the [B·H·N, K, V] buffer
        d = tl.load(hs + p, mask=m, other=0.0)
        g = tl.load(glast + (i_bh * N + n) * K + ok, mask=ok < K, other=0.0)
        tl.store(hs + p, S, mask=m)
        S = S * tl.exp2(g)[:, None] + d
    if STORE_END:
        tl.store(s_end + p0, S, mask=m)


@triton.jit
def _chunk_out(r, k, v, w, u, hs, o, scale, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
               BK: tl.constexpr, BV: tl.constexpr, C: tl.constexpr, BC: tl.constexpr, PREC: tl.constexpr):
    """o = scale · ((r ⊙ exp2(e)) · S_in + A · v) for one chunk, one sub-chunk of rows at a time."""
    i_n, i_bh, i_v = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    N = tl.cdiv(T, C)
    rows_f, mt_f = _rows(i_b, i_h, i_n * C, T, H, C)
    w2_f, _, _ = _log2_decay(w, rows_f, mt_f, K, BK)
    k_f = _load(k, rows_f, mt_f, K, BK)
    v_f = _load(v, rows_f, mt_f, V, BV, i_v * BV)
    p, m = _state_ptrs(i_bh * N + i_n, K, V, BK, BV, i_v)
    h = tl.load(hs + p, mask=m, other=0.0)
    ok, jl = tl.arange(0, BK), tl.arange(0, C)
    b_u = tl.load(u + i_h * K + ok, mask=ok < K, other=0.0).to(tl.float32)
    diag = tl.arange(0, BC)[:, None] == tl.arange(0, BC)[None, :]
    for I in tl.static_range(C // BC):
        rows, mt = _rows(i_b, i_h, i_n * C + I * BC, T, H, BC)
        _, bl, el = _log2_decay(w, rows, mt, K, BK)
        r_i, k_i = _load(r, rows, mt, K, BK), _load(k, rows, mt, K, BK)
        v_i = _load(v, rows, mt, V, BV, i_v * BV)
        wb = tl.where(jl[:, None] < I * BC, w2_f, 0.0)
        ref = tl.sum(wb, axis=0)  # b just before the sub-chunk
        kc = k_f * tl.exp2(tl.where(jl[:, None] < I * BC, _after(wb), float("-inf")))
        rl = r_i * tl.exp2(el)
        A = tl.sum(r_i[:, None, :] * k_i[None, :, :] * _diag_decay(el, bl, BC), axis=2)
        A += tl.where(diag, tl.sum(r_i * b_u[None, :] * k_i, axis=1)[:, None], 0.0)
        b_o = tl.dot(rl * tl.exp2(ref)[None, :], h, input_precision=PREC)
        b_o += tl.dot(tl.dot(rl, tl.trans(kc), input_precision=PREC), v_f, input_precision=PREC)
        b_o += tl.dot(A, v_i, input_precision=PREC)
        _store(o, scale * b_o, rows, mt, V, BV, i_v * BV)


@triton.jit
def _chunk_grads(r, k, v, w, u, do, hs, gs, dr, dk, dv, dw, du, scale, T, H: tl.constexpr, K: tl.constexpr,
                 V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, C: tl.constexpr, BC: tl.constexpr,
                 PREC: tl.constexpr):
    """dr, dk, dv, dw and a du partial for one chunk, given its entering state and d(exit state).

    Sub-chunks run last to first so the in-chunk suffix of r·dr - k·dk that dw needs is at hand.
    """
    i_n, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    N = tl.cdiv(T, C)
    rows_f, mt_f = _rows(i_b, i_h, i_n * C, T, H, C)
    w2_f, _, _ = _log2_decay(w, rows_f, mt_f, K, BK)
    last = tl.sum(w2_f, axis=0)
    r_f, k_f = _load(r, rows_f, mt_f, K, BK), _load(k, rows_f, mt_f, K, BK)
    v_f, do_f = _load(v, rows_f, mt_f, V, BV), _load(do, rows_f, mt_f, V, BV)
    p, m = _state_ptrs(i_bh * N + i_n, K, V, BK, BV, 0)
    h, G = tl.load(hs + p, mask=m, other=0.0), tl.load(gs + p, mask=m, other=0.0)
    ok, jl = tl.arange(0, BK), tl.arange(0, C)
    b_u = tl.load(u + i_h * K + ok, mask=ok < K, other=0.0).to(tl.float32)
    strict = tl.arange(0, BC)[:, None] > tl.arange(0, BC)[None, :]
    # Σ_V(S_out ⊙ G) at the chunk's end: the part of dw's reverse sum beyond this chunk, seen from inside it
    kt_f = k_f * tl.exp2(_after(w2_f))
    suffix = tl.exp2(last) * tl.sum(h * G, axis=1)
    suffix += tl.sum(kt_f * tl.dot(v_f, tl.trans(G), input_precision=PREC), axis=0)
    b_du = tl.zeros([BK], dtype=tl.float32)
    for J in tl.static_range(C // BC):
        I = C // BC - 1 - J
        rows, mt = _rows(i_b, i_h, i_n * C + I * BC, T, H, BC)
        w2_i, bl, el = _log2_decay(w, rows, mt, K, BK)
        r_i, k_i = _load(r, rows, mt, K, BK), _load(k, rows, mt, K, BK)
        v_i, do_i = _load(v, rows, mt, V, BV), _load(do, rows, mt, V, BV)
        wb = tl.where(jl[:, None] < I * BC, w2_f, 0.0)
        wa = tl.where(jl[:, None] >= I * BC + BC, w2_f, 0.0)
        ref, rest = tl.sum(wb, axis=0), tl.sum(wa, axis=0)  # decay before / after the sub-chunk
        X = _diag_decay(el, bl, BC)
        dA = tl.where(strict, tl.dot(do_i, tl.trans(v_i), input_precision=PREC), 0.0)
        A = tl.sum(r_i[:, None, :] * k_i[None, :, :] * X, axis=2)
        # rows of this sub-chunk against earlier tokens of the chunk (dr)
        kc = k_f * tl.exp2(tl.where(jl[:, None] < I * BC, _after(wb), float("-inf")))
        g_r = tl.exp2(el) * tl.dot(tl.dot(do_i, tl.trans(v_f), input_precision=PREC), kc, input_precision=PREC)
        g_r += tl.exp2(ref[None, :] + el) * tl.dot(do_i, tl.trans(h), input_precision=PREC)
        g_r += tl.sum(dA[:, :, None] * k_i[None, :, :] * X, axis=1)
        # columns of this sub-chunk against later tokens of the chunk (dk, dv)
        rc = r_f * tl.exp2(tl.where(jl[:, None] >= I * BC + BC, tl.cumsum(wa, axis=0) - wa, float("-inf")))
        kq = tl.exp2(tl.sum(w2_i, axis=0)[None, :] - bl)
        A_c = tl.dot(rc, tl.trans(k_i * kq), input_precision=PREC)
        dA_c = tl.dot(do_f, tl.trans(v_i), input_precision=PREC)
        g_k = kq * tl.dot(tl.trans(dA_c), rc, input_precision=PREC)
        g_k += tl.sum(dA[:, :, None] * r_i[:, None, :] * X, axis=0)
        b_dv = tl.dot(tl.trans(A_c), do_f, input_precision=PREC) + tl.dot(tl.trans(A), do_i, input_precision=PREC)
        # bonus on the diagonal, then the path through the exit state
        vdo = tl.sum(v_i * do_i, axis=1)[:, None]
        ruk = tl.sum(r_i * b_u[None, :] * k_i, axis=1)[:, None]
        to_end = tl.exp2(rest[None, :] + tl.sum(w2_i, axis=0)[None, :] - bl)
        g_r, g_k = scale * g_r, scale * g_k + to_end * tl.dot(v_i, tl.trans(G), input_precision=PREC)
        b_dv = scale * (b_dv + ruk * do_i) + tl.dot(k_i * to_end, G, input_precision=PREC)
        _store(dr, g_r + scale * b_u[None, :] * k_i * vdo, rows, mt, K, BK)
        _store(dk, g_k + scale * b_u[None, :] * r_i * vdo, rows, mt, K, BK)
        _store(dv, b_dv, rows, mt, V, BV)
        g_r, g_k = r_i * g_r, k_i * g_k
        b_dw = suffix[None, :] + tl.cumsum(g_r, axis=0, reverse=True) - g_r - tl.cumsum(g_k, axis=0, reverse=True)
        _store(dw, b_dw, rows, mt, K, BK)
        suffix += tl.sum(g_r - g_k, axis=0)
        b_du += scale * tl.sum(r_i * k_i * vdo, axis=0)
    tl.store(du + (i_bh * N + i_n) * K + ok, b_du, mask=ok < K)


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _prec(x: torch.Tensor) -> str:
    return "ieee" if x.dtype in (torch.float32, torch.float64) else "tf32"


def _entering_states(k, v, w, h0, store_ht, chunk):
    """Parallel chunk contributions, then the serial carry: ([B·H·N, K, V] entering states, glast, ht)."""
    B, T, H, K = k.shape
    V, N, BK = v.shape[-1], triton.cdiv(T, chunk), _pow2(K)
    hs = torch.empty(B * H * N, K, V, dtype=torch.float32, device=k.device)
    glast = torch.empty(B * H * N, K, dtype=torch.float32, device=k.device)
    BV = min(_pow2(V), 64)
    _chunk_state[(N, B * H, triton.cdiv(V, BV))](k, v, w, hs, glast, T, H, K, V, BK, BV, chunk, _prec(k),
                                                 num_warps=4)
    ht = torch.empty(B, H, K, V, dtype=torch.float32, device=k.device) if store_ht else None
    BV = min(_pow2(V), 32)  # 2 programs per (batch, head) at V = 64: the serial pass is latency-bound
    _carry[(triton.cdiv(V, BV), B * H)](hs, glast, h0, ht, T, K, V, BK, BV, chunk, False, h0 is not None,
                                        store_ht, num_warps=4)
    return hs, glast, ht


def wkv6_fwd(r, k, v, w, u, scale, h0, store_ht, chunk=CHUNK):
    """Forward; returns (o `[B, T, H, V]` in r's dtype, ht `[B, H, K, V]` float32 or None)."""
    B, T, H, K = r.shape
    V, N = v.shape[-1], triton.cdiv(T, chunk)
    hs, _, ht = _entering_states(k, v, w, h0, store_ht, chunk)
    o = torch.empty_like(v, dtype=r.dtype)
    BV = min(_pow2(V), 64)
    _chunk_out[(N, B * H, triton.cdiv(V, BV))](r, k, v, w, u, hs, o, scale, T, H, K, V, _pow2(K), BV, chunk,
                                               SUB, _prec(r), num_warps=4)
    return o, ht


def wkv6_bwd(r, k, v, w, u, scale, h0, do, dht, chunk=CHUNK):
    """Backward, recomputing the entering states; returns (dr, dk, dv, dw, du, dh0 or None)."""
    B, T, H, K = r.shape
    V, N, BK = v.shape[-1], triton.cdiv(T, chunk), _pow2(K)
    hs, glast, _ = _entering_states(k, v, w, h0, False, chunk)
    gs = torch.empty_like(hs)
    BV = min(_pow2(V), 64)
    _chunk_state_grad[(N, B * H, triton.cdiv(V, BV))](r, w, do, gs, scale, T, H, K, V, BK, BV, chunk, _prec(r),
                                                      num_warps=4)
    dh0 = torch.empty(B, H, K, V, dtype=torch.float32, device=r.device) if h0 is not None else None
    BV = min(_pow2(V), 32)
    _carry[(triton.cdiv(V, BV), B * H)](gs, glast, dht, dh0, T, K, V, BK, BV, chunk, True, dht is not None,
                                        h0 is not None, num_warps=4)
    dr, dk, dv, dw = (torch.empty_like(x) for x in (r, k, v, w))
    du = torch.empty(B, H, N, K, dtype=torch.float32, device=r.device)
    _chunk_grads[(N, B * H)](r, k, v, w, u, do, hs, gs, dr, dk, dv, dw, du, scale, T, H, K, V, BK, _pow2(V),
                             chunk, SUB, _prec(r), num_warps=8)
    return dr, dk, dv, dw, du.sum((0, 2)).to(u.dtype), dh0


class WKV6ChunkedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, k, v, w, u, scale, h0, output_final_state):
        r, k, v, w, u = (x.contiguous() for x in (r, k, v, w, u))
        h0 = h0.contiguous() if h0 is not None else None
        o, ht = wkv6_fwd(r, k, v, w, u, scale, h0, output_final_state)
        ctx.save_for_backward(r, k, v, w, u, h0)
        ctx.scale = scale
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        r, k, v, w, u, h0 = ctx.saved_tensors
        dht = dht.contiguous() if dht is not None else None
        dr, dk, dv, dw, du, dh0 = wkv6_bwd(r, k, v, w, u, ctx.scale, h0, do.contiguous(), dht)
        if dh0 is not None:
            dh0 = dh0.to(h0.dtype)
        return dr, dk, dv, dw, du, None, dh0, None


def wkv6_triton_chunked(r, k, v, w, u, scale, initial_state=None, output_final_state=False):
    """Same contract as triton_wkv6.wkv6_triton."""
    if interpreting() and r.dtype == torch.float64:
        args = [x.float() if x is not None else None for x in (r, k, v, w, u, initial_state)]
        o, ht = WKV6ChunkedFunction.apply(*args[:5], scale, args[5], output_final_state)
        return o.double(), (ht.double() if ht is not None else None)
    return WKV6ChunkedFunction.apply(r, k, v, w, u, scale, initial_state, output_final_state)
