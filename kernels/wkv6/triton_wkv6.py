"""Triton kernels for RWKV-6's WKV: forward, and a two-sweep backward.

One program owns one (batch, head) (and a block of V or K) and walks the sequence in
chunks of BT=16 tokens, carrying the [K, V] state in registers in float32. Inside a
chunk the pairwise decay exp(E_i - B_j) is formed as a [BT, BT, K] tensor whose
exponent is masked to j < i *before* the exp2, so every exp2 we take has an exponent
≤ 0 and nothing overflows however fast w decays (see chunked.py). Log-decays are
converted to base 2 once so the hot loop uses exp2.

Backward: sweep 1 runs forward in time and produces dr (it needs the state before
each chunk); sweep 2 runs backward in time carrying dS, the adjoint of the state, and
produces dk, dv, dw (a reverse cumulative sum of r·dr - k·dk), du and the gradient of
the initial state.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dispatch import interpreting

BT = 16
LOG2E = 1.4426950408889634


@triton.jit
def _chunk_decays(w_ptr, p_k, mask):
    """Base-2 inclusive (Bc) and exclusive (E) cumulative log-decay of a chunk, and its total."""
    w = tl.load(w_ptr + p_k, mask=mask, other=0.0).to(tl.float32) * 1.4426950408889634
    bc = tl.cumsum(w, axis=0)
    return bc, bc - w, tl.sum(w, axis=0)


@triton.jit
def _pair_decay(e, bc, BT: tl.constexpr):
    """[BT, BT, K] tensor exp2(E_i - B_j) for j < i, else 0 (masked before exp2: no overflow)."""
    o = tl.arange(0, BT)
    strict = (o[:, None] > o[None, :])[:, :, None]
    return tl.exp2(tl.where(strict, e[:, None, :] - bc[None, :, :], float("-inf")))


@triton.jit
def _fwd_kernel(r, k, v, w, u, h0, o, ht, scale, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr,
                HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, PREC: tl.constexpr):
    i_v, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    ot, ok, ov = tl.arange(0, BT), tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    mk, mv = ok < K, ov < V
    p_s = i_bh * K * V + ok[:, None] * V + ov[None, :]
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        S += tl.load(h0 + p_s, mask=mk[:, None] & mv[None, :], other=0.0).to(tl.float32)
    b_u = tl.load(u + i_h * K + ok, mask=mk, other=0.0).to(tl.float32)
    diag = ot[:, None] == ot[None, :]
    for t0 in range(0, T, BT):
        rows = t0 + ot
        mt = rows < T
        rows64 = (i_b * T + rows).to(tl.int64) * H + i_h
        p_k, m_k = rows64[:, None] * K + ok[None, :], mt[:, None] & mk[None, :]
        p_v, m_v = rows64[:, None] * V + ov[None, :], mt[:, None] & mv[None, :]
        b_r = tl.load(r + p_k, mask=m_k, other=0.0).to(tl.float32)
        b_k = tl.load(k + p_k, mask=m_k, other=0.0).to(tl.float32)
        b_v = tl.load(v + p_v, mask=m_v, other=0.0).to(tl.float32)
        bc, e, last = _chunk_decays(w, p_k, m_k)
        X = _pair_decay(e, bc, BT)
        A = tl.sum(b_r[:, None, :] * b_k[None, :, :] * X, axis=2)
        A += tl.where(diag, tl.sum(b_r * b_k * b_u[None, :], axis=1)[:, None], 0.0)
        b_o = tl.dot(b_r * tl.exp2(e), S, input_precision=PREC) + tl.dot(A, b_v, input_precision=PREC)
        tl.store(o + p_v, (scale * b_o).to(o.dtype.element_ty), mask=m_v)
        k_out = b_k * tl.exp2(last[None, :] - bc)
        S = S * tl.exp2(last)[:, None] + tl.dot(tl.trans(k_out), b_v, input_precision=PREC)
    if STORE_HT:
        tl.store(ht + p_s, S, mask=mk[:, None] & mv[None, :])


@triton.jit
def _bwd_dr_kernel(k, v, w, u, h0, do, dr, scale, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                   BK: tl.constexpr, BV: tl.constexpr, BT: tl.constexpr, HAS_H0: tl.constexpr,
                   PREC: tl.constexpr):
    i_k, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    ot, ok, ov = tl.arange(0, BT), i_k * BK + tl.arange(0, BK), tl.arange(0, BV)
    mk, mv = ok < K, ov < V
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        p_s = i_bh * K * V + ok[:, None] * V + ov[None, :]
        S += tl.load(h0 + p_s, mask=mk[:, None] & mv[None, :], other=0.0).to(tl.float32)
    b_u = tl.load(u + i_h * K + ok, mask=mk, other=0.0).to(tl.float32)
    strict = ot[:, None] > ot[None, :]
    for t0 in range(0, T, BT):
        rows = t0 + ot
        mt = rows < T
        rows64 = (i_b * T + rows).to(tl.int64) * H + i_h
        p_k, m_k = rows64[:, None] * K + ok[None, :], mt[:, None] & mk[None, :]
        p_v, m_v = rows64[:, None] * V + ov[None, :], mt[:, None] & mv[None, :]
        b_k = tl.load(k + p_k, mask=m_k, other=0.0).to(tl.float32)
        b_v = tl.load(v + p_v, mask=m_v, other=0.0).to(tl.float32)
        b_do = tl.load(do + p_v, mask=m_v, other=0.0).to(tl.float32)
        bc, e, last = _chunk_decays(w, p_k, m_k)
        X = _pair_decay(e, bc, BT)
        dA = tl.where(strict, tl.dot(b_do, tl.trans(b_v), input_precision=PREC), 0.0)
        b_dr = tl.sum(dA[:, :, None] * b_k[None, :, :] * X, axis=1)
        b_dr += tl.exp2(e) * tl.dot(b_do, tl.trans(S), input_precision=PREC)
        b_dr += b_u[None, :] * b_k * tl.sum(b_v * b_do, axis=1)[:, None]
        tl.store(dr + p_k, scale * b_dr, mask=m_k)
        k_out = b_k * tl.exp2(last[None, :] - bc)
        S = S * tl.exp2(last)[:, None] + tl.dot(tl.trans(k_out), b_v, input_precision=PREC)


@triton.jit
def _bwd_rev_kernel(r, k, v, w, u, do, dr, ht, dht, dk, dv, dw, du, dh0, scale, T,
                    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                    BT: tl.constexpr, HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr, PREC: tl.constexpr):
    i_bh = tl.program_id(0).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    ot, ok, ov = tl.arange(0, BT), tl.arange(0, BK), tl.arange(0, BV)
    mk, mv = ok < K, ov < V
    p_s, m_s = i_bh * K * V + ok[:, None] * V + ov[None, :], mk[:, None] & mv[None, :]
    dS = tl.zeros([BK, BV], dtype=tl.float32)
    carry = tl.zeros([BK], dtype=tl.float32)  # d loss / d (log-decay) summed over later tokens
    if HAS_DHT:
        dS += tl.load(dht + p_s, mask=m_s, other=0.0).to(tl.float32)
        carry += tl.sum(dS * tl.load(ht + p_s, mask=m_s, other=0.0), axis=1)
    b_u = tl.load(u + i_h * K + ok, mask=mk, other=0.0).to(tl.float32)
    b_du = tl.zeros([BK], dtype=tl.float32)
    strict = ot[:, None] > ot[None, :]
    n_chunks = tl.cdiv(T, BT)
    for i in range(0, n_chunks):
        rows = (n_chunks - 1 - i) * BT + ot
        mt = rows < T
        rows64 = (i_b * T + rows).to(tl.int64) * H + i_h
        p_k, m_k = rows64[:, None] * K + ok[None, :], mt[:, None] & mk[None, :]
        p_v, m_v = rows64[:, None] * V + ov[None, :], mt[:, None] & mv[None, :]
        b_r = tl.load(r + p_k, mask=m_k, other=0.0).to(tl.float32)
        b_k = tl.load(k + p_k, mask=m_k, other=0.0).to(tl.float32)
        b_v = tl.load(v + p_v, mask=m_v, other=0.0).to(tl.float32)
        b_do = tl.load(do + p_v, mask=m_v, other=0.0).to(tl.float32)
        b_dr = tl.load(dr + p_k, mask=m_k, other=0.0)
        bc, e, last = _chunk_decays(w, p_k, m_k)
        X = _pair_decay(e, bc, BT)
        A = tl.sum(b_r[:, None, :] * b_k[None, :, :] * X, axis=2)
        dA = tl.where(strict, tl.dot(b_do, tl.trans(b_v), input_precision=PREC), 0.0)
        to_end = tl.exp2(last[None, :] - bc)
        dk_s = scale * tl.sum(dA[:, :, None] * b_r[:, None, :] * X, axis=0)
        dk_s += to_end * tl.dot(b_v, tl.trans(dS), input_precision=PREC)
        vdo = tl.sum(b_v * b_do, axis=1)[:, None]
        ruk = tl.sum(b_r * b_u[None, :] * b_k, axis=1)[:, None]
        b_dv = scale * tl.dot(tl.trans(A), b_do, input_precision=PREC) + scale * ruk * b_do
        b_dv += tl.dot(b_k * to_end, dS, input_precision=PREC)
        b_du += scale * tl.sum(b_r * b_k * vdo, axis=0)
        g_r = b_r * (b_dr - scale * b_u[None, :] * b_k * vdo)
        g_k = b_k * dk_s
        b_dw = carry[None, :] + tl.cumsum(g_r, axis=0, reverse=True) - g_r - tl.cumsum(g_k, axis=0, reverse=True)
        carry += tl.sum(g_r - g_k, axis=0)
        tl.store(dk + p_k, (dk_s + scale * b_u[None, :] * b_r * vdo).to(dk.dtype.element_ty), mask=m_k)
        tl.store(dv + p_v, b_dv.to(dv.dtype.element_ty), mask=m_v)
        tl.store(dw + p_k, b_dw.to(dw.dtype.element_ty), mask=m_k)
        r_in = b_r * tl.exp2(e)
        dS = dS * tl.exp2(last)[:, None] + scale * tl.dot(tl.trans(r_in), b_do, input_precision=PREC)
    tl.store(du + i_bh * K + ok, b_du, mask=mk)
    if STORE_DH0:
        tl.store(dh0 + p_s, dS, mask=m_s)


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _prec(x: torch.Tensor) -> str:
    return "ieee" if x.dtype in (torch.float32, torch.float64) else "tf32"


def _num_warps(bk: int, bv: int) -> int:
    return 4 if bk * bv <= 64 * 32 else 8


def wkv6_fwd(r, k, v, w, u, scale, h0, store_ht, bv=None):
    """Launch the forward kernel; returns (o, ht or None) with ht in float32."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    BK = _pow2(K)
    BV = min(_pow2(V), bv or 64)  # H200, K=V=64 bf16: BV 64 1.29 ms, 32 2.17 ms, 16 4.14 ms (T=4096, B=4, H=32)
    o = torch.empty_like(v, dtype=r.dtype)
    ht = torch.empty(B, H, K, V, dtype=torch.float32, device=r.device) if store_ht else None
    grid = (triton.cdiv(V, BV), B * H)
    _fwd_kernel[grid](r, k, v, w, u, h0, o, ht, scale, T, H, K, V, BK, BV, BT,
                      h0 is not None, store_ht, _prec(r), num_warps=_num_warps(BK, BV))
    return o, ht


def wkv6_bwd(r, k, v, w, u, scale, h0, ht, do, dht):
    """Launch both backward sweeps; returns (dr, dk, dv, dw, du, dh0 or None)."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    BKF, BVF = _pow2(K), _pow2(V)
    BK = min(BKF, 32)
    dr32 = torch.empty(B, T, H, K, dtype=torch.float32, device=r.device)
    _bwd_dr_kernel[(triton.cdiv(K, BK), B * H)](k, v, w, u, h0, do, dr32, scale, T, H, K, V, BK, BVF, BT,
                                                 h0 is not None, _prec(r), num_warps=_num_warps(BK, BVF))
    dk, dw, dv = torch.empty_like(k), torch.empty_like(w), torch.empty_like(v)
    du = torch.empty(B, H, K, dtype=torch.float32, device=r.device)
    dh0 = torch.empty(B, H, K, V, dtype=torch.float32, device=r.device) if h0 is not None else None
    _bwd_rev_kernel[(B * H,)](r, k, v, w, u, do, dr32, ht, dht, dk, dv, dw, du, dh0, scale, T, H, K, V,
                              BKF, BVF, BT, dht is not None, h0 is not None, _prec(r), num_warps=8)
    return dr32.to(r.dtype), dk, dv, dw, du.sum(0).to(u.dtype), dh0


class WKV6Function(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, k, v, w, u, scale, h0, output_final_state):
        r, k, v, w, u = (x.contiguous() for x in (r, k, v, w, u))
        h0 = h0.contiguous() if h0 is not None else None
        o, ht = wkv6_fwd(r, k, v, w, u, scale, h0, output_final_state)
        ctx.save_for_backward(r, k, v, w, u, h0, ht)
        ctx.scale = scale
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        r, k, v, w, u, h0, ht = ctx.saved_tensors
        dht = dht.contiguous() if dht is not None else None
        dr, dk, dv, dw, du, dh0 = wkv6_bwd(r, k, v, w, u, ctx.scale, h0, ht, do.contiguous(), dht)
        if dh0 is not None:
            dh0 = dh0.to(h0.dtype)
        return dr, dk, dv, dw, du, None, dh0, None


def wkv6_triton(r, k, v, w, u, scale, initial_state=None, output_final_state=False):
    if interpreting() and r.dtype == torch.float64:
        args = [x.float() if x is not None else None for x in (r, k, v, w, u, initial_state)]
        o, ht = WKV6Function.apply(*args[:5], scale, args[5], output_final_state)
        return o.double(), (ht.double() if ht is not None else None)
    return WKV6Function.apply(r, k, v, w, u, scale, initial_state, output_final_state)
