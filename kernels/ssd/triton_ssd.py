"""Mamba-2 SSD in Triton: one fused forward kernel, one fused backward kernel, one decode-step kernel.

Forward: one program per (batch, head, P block) walks the chunks in order, holding the
[P, N] state in registers: intra-chunk output by masked matrix products, the carried state's
contribution, then the state update -- chunk states never go through HBM (mamba_ssm's
chunk-state / state-passing / chunk-scan stages, fused). For the backward, the state entering
each chunk is stored in float32 [B, H, NC, P, N].
Backward: one program per (batch, head) walks the chunks in reverse, carrying dL/dstate
[P, N] in registers and recomputing the chunk's products; it writes dx, dz, d(dt) and
per-head dB, dC (summed over the heads of a group afterwards).
Offsets into [B, L, ...] tensors are int64 so that sequences of millions of tokens work.
"""
from __future__ import annotations

import types

import torch
import triton
import triton.language as tl

from .._host import cdiv, dense, fp32_dot, next_pow2


@triton.jit
def _skip_D(D_ptr, h, P, offs_p, mask_p, HAS_D: tl.constexpr, D_PER_P: tl.constexpr):
    """Head h's D as a factor of [T, P block] tiles: [1, P block] for D [H, P], a scalar for D [H]
    (0 without D)."""
    Dv = 0.0
    if HAS_D:
        if D_PER_P:
            Dv = tl.load(D_ptr + h * P + offs_p, mask=mask_p, other=0.0).to(tl.float32)[None, :]
        else:
            Dv = tl.load(D_ptr + h).to(tl.float32)
    return Dv


@triton.jit
def _finish_y(y, xf, Dv, z_ptr, y_ptr, ypre_ptr, xo, mask_tp, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
              STORE_YPRE: tl.constexpr):
    """Store a [T, P block] tile of y at offsets xo: y + D x (xf: x in float32), kept before the gate
    when asked (the backward's dz needs it), times silu(z)."""
    if HAS_D:
        y += Dv * xf
    if STORE_YPRE:
        tl.store(ypre_ptr + xo, y.to(ypre_ptr.dtype.element_ty), mask=mask_tp)
    if HAS_Z:
        zv = tl.load(z_ptr + xo, mask=mask_tp, other=0.0).to(tl.float32)
        y = y * zv * tl.sigmoid(zv)
    tl.store(y_ptr + xo, y.to(y_ptr.dtype.element_ty), mask=mask_tp)


@triton.jit
def dt_eff(raw, dt_lo, dt_hi, SOFTPLUS: tl.constexpr, LIMIT: tl.constexpr):
    """dt' from raw = dt + dt_bias (DtRule): the softplus, then the clamp to [dt_lo, dt_hi]."""
    dt = raw
    if SOFTPLUS:
        dt = tl.where(raw > 20.0, raw, tl.log(1.0 + tl.exp(tl.minimum(raw, 20.0))))
    if LIMIT:
        dt = tl.minimum(tl.maximum(dt, dt_lo), dt_hi)
    return dt


@triton.jit
def dt_back(ddt, raw, dt_lo, dt_hi, SOFTPLUS: tl.constexpr, LIMIT: tl.constexpr):
    """The gradient of raw = dt + dt_bias from that of dt': 0 where the clamp clamped (torch.clamp's rule),
    times the softplus' derivative."""
    if LIMIT:
        pre = dt_eff(raw, dt_lo, dt_hi, SOFTPLUS, False)
        ddt = tl.where((pre < dt_lo) | (pre > dt_hi), 0.0, ddt)
    if SOFTPLUS:
        ddt = ddt * tl.sigmoid(raw)
    return ddt


@triton.jit
def _chunk_dt(dt_ptr, bias_ptr, rows, t, L, h, H, mask_t, A, dt_lo, dt_hi,
              HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, LIMIT: tl.constexpr):
    """Effective dt of a chunk ([Q], 0 past the end), the raw value dt + dt_bias, cumsum of dt A."""
    raw = tl.load(dt_ptr + rows * H + h, mask=mask_t, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw += tl.load(bias_ptr + h).to(tl.float32)
    dt = tl.where(mask_t, dt_eff(raw, dt_lo, dt_hi, SOFTPLUS, LIMIT), 0.0)
    s = tl.cumsum(dt * A, axis=0)
    # past the end (t ≥ L), s is the last token's exactly: the compiled cumsum is a tree, whose padded entries may
    # round apart from it (an ulp of s, 1e24 at A = -1e30), and the chunk's end must give the last token a weight of 1
    s = tl.where(mask_t, s, tl.sum(tl.where(t == L - 1, s, 0.0), axis=0))
    return dt, raw, s


@triton.jit
def _seq_masks(seq_ptr, rows, row0, c, Q: tl.constexpr, L, mask_t, seq_prev, HAS_SEQ: tl.constexpr):
    """Masks of a chunk under packed sequences: in (token sees the carried state), out (token reaches
    the chunk's final state), same (token pairs of one sequence), carry (state crosses the chunk)."""
    if HAS_SEQ:
        seq = tl.load(seq_ptr + rows, mask=mask_t, other=-1)
        last_row = row0 + tl.minimum(c * Q + Q, L) - 1
        seq_last = tl.load(seq_ptr + last_row)
        m_in = seq == seq_prev
        m_out = seq == seq_last
        same = seq[:, None] == seq[None, :]
        carry = seq_last == seq_prev
    else:
        seq_last = seq_prev
        m_in = mask_t | True
        m_out = m_in
        same = m_in[:, None] | True
        carry = seq_prev == seq_prev
    return m_in, m_out, same, carry, seq_last


@triton.jit
def _ssd_fwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, seq_ptr,
    y_ptr, ypre_ptr, states_ptr, hT_ptr,
    L, H, G, P, N, NC, dt_lo, dt_hi,
    HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, LIMIT: tl.constexpr, HAS_H0: tl.constexpr, HAS_SEQ: tl.constexpr,
    STORE_YPRE: tl.constexpr, STORE_STATES: tl.constexpr,
    Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    b = pid_bh // H
    h = pid_bh % H
    g = h // (H // G)
    offs_q = tl.arange(0, Q)
    offs_p = tl.program_id(1) * BP + tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    mask_p = offs_p < P
    mask_n = offs_n < N
    mask_pn = mask_p[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + h).to(tl.float32)
    Dv = _skip_D(D_ptr, h, P, offs_p, mask_p, HAS_D, D_PER_P)
    row0 = b.to(tl.int64) * L
    bh64 = pid_bh.to(tl.int64)
    pn_offs = offs_p[:, None] * N + offs_n[None, :]
    if HAS_H0:
        state = tl.load(h0_ptr + bh64 * P * N + pn_offs, mask=mask_pn, other=0.0).to(tl.float32)
    else:
        state = tl.zeros((BP, BN), dtype=tl.float32)
    causal = offs_q[:, None] >= offs_q[None, :]
    seq_prev = 0
    if HAS_SEQ:
        seq_prev = tl.load(seq_ptr + row0) * 0
    for c in range(NC):
        t = c * Q + offs_q
        mask_t = t < L
        rows = row0 + t
        dt, raw, s = _chunk_dt(dt_ptr, bias_ptr, rows, t, L, h, H, mask_t, A, dt_lo, dt_hi, HAS_BIAS, SOFTPLUS, LIMIT)
        m_in, m_out, same, carry, seq_last = _seq_masks(seq_ptr, rows, row0, c, Q, L, mask_t, seq_prev, HAS_SEQ)
        xo = (rows * H + h)[:, None] * P + offs_p[None, :]
        mask_tp = mask_t[:, None] & mask_p[None, :]
        x = tl.load(x_ptr + xo, mask=mask_tp, other=0.0)
        bo = (rows * G + g)[:, None] * N + offs_n[None, :]
        mask_tn = mask_t[:, None] & mask_n[None, :]
        Bm = tl.load(B_ptr + bo, mask=mask_tn, other=0.0)
        Cm = tl.load(C_ptr + bo, mask=mask_tn, other=0.0)
        if STORE_STATES:
            tl.store(states_ptr + (bh64 * NC + c) * P * N + pn_offs, state, mask=mask_pn)

        CB = tl.dot(Cm, tl.trans(Bm), input_precision=PREC)
        keep = causal & same
        decay = tl.where(keep, tl.exp(s[:, None] - s[None, :]), 0.0)
        W = (CB * decay * dt[None, :]).to(x.dtype)
        y = tl.dot(W, x, input_precision=PREC)
        y_state = tl.dot(Cm, tl.trans(state.to(x.dtype)), input_precision=PREC)
        y += tl.where(m_in, tl.exp(s), 0.0)[:, None] * y_state
        xf = x.to(tl.float32)
        _finish_y(y, xf, Dv, z_ptr, y_ptr, ypre_ptr, xo, mask_tp, HAS_D, HAS_Z, STORE_YPRE)

        sT = tl.sum(tl.where(offs_q == Q - 1, s, 0.0), axis=0)  # s's last entry: exp(sT - s) is 1 there exactly
        w_out = tl.where(m_out, tl.exp(sT - s) * dt, 0.0)
        Bw = (Bm.to(tl.float32) * w_out[:, None]).to(x.dtype)
        state = state * tl.where(carry, tl.exp(sT), 0.0) + tl.dot(tl.trans(x), Bw, input_precision=PREC)
        seq_prev = seq_last
    tl.store(hT_ptr + bh64 * P * N + pn_offs, state, mask=mask_pn)


@triton.jit
def _ssd_bwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, seq_ptr, ypre_ptr, states_ptr,
    dy_ptr, dhT_ptr,
    dx_ptr, dz_ptr, ddt_ptr, dBh_ptr, dCh_ptr, dh0_ptr, dA_ptr, dD_ptr,
    L, H, G, P, N, NC, NPB, dt_lo, dt_hi,
    HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, LIMIT: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_DHT: tl.constexpr,
    Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    b = pid_bh // H
    h = pid_bh % H
    g = h // (H // G)
    pb = tl.program_id(1)
    offs_q = tl.arange(0, Q)
    offs_p = pb * BP + tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    mask_p = offs_p < P
    mask_n = offs_n < N
    mask_pn = mask_p[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + h).to(tl.float32)
    Dv = _skip_D(D_ptr, h, P, offs_p, mask_p, HAS_D, D_PER_P)
    row0 = b.to(tl.int64) * L
    bh64 = pid_bh.to(tl.int64)
    # every per-token gradient but dx is a sum over P: each P block writes its own part
    part = pb.to(tl.int64) * L * tl.num_programs(0)
    pn_offs = offs_p[:, None] * N + offs_n[None, :]
    if HAS_DHT:
        dstate = tl.load(dhT_ptr + bh64 * P * N + pn_offs, mask=mask_pn, other=0.0).to(tl.float32)
    else:
        dstate = tl.zeros((BP, BN), dtype=tl.float32)
    causal = offs_q[:, None] >= offs_q[None, :]
    is_last = offs_q == Q - 1
    dA_acc = tl.zeros((Q,), dtype=tl.float32)
    dD_acc = tl.zeros((BP,), dtype=tl.float32)
    for cc in range(NC):
        c = NC - 1 - cc
        t = c * Q + offs_q
        mask_t = t < L
        rows = row0 + t
        dt, raw, s = _chunk_dt(dt_ptr, bias_ptr, rows, t, L, h, H, mask_t, A, dt_lo, dt_hi, HAS_BIAS, SOFTPLUS, LIMIT)
        seq_prev = 0
        if HAS_SEQ:
            seq_prev = tl.load(seq_ptr + tl.maximum(row0 + c * Q - 1, row0)) * (c > 0)
        m_in, m_out, same, carry, seq_last = _seq_masks(seq_ptr, rows, row0, c, Q, L, mask_t, seq_prev, HAS_SEQ)
        xo = (rows * H + h)[:, None] * P + offs_p[None, :]
        mask_tp = mask_t[:, None] & mask_p[None, :]
        x = tl.load(x_ptr + xo, mask=mask_tp, other=0.0)
        xf = x.to(tl.float32)
        bo = (rows * G + g)[:, None] * N + offs_n[None, :]
        mask_tn = mask_t[:, None] & mask_n[None, :]
        Bm = tl.load(B_ptr + bo, mask=mask_tn, other=0.0)
        Cm = tl.load(C_ptr + bo, mask=mask_tn, other=0.0)
        state = tl.load(states_ptr + (bh64 * NC + c) * P * N + pn_offs, mask=mask_pn, other=0.0)
        gy = tl.load(dy_ptr + xo, mask=mask_tp, other=0.0).to(tl.float32)
        if HAS_Z:
            zv = tl.load(z_ptr + xo, mask=mask_tp, other=0.0).to(tl.float32)
            yp = tl.load(ypre_ptr + xo, mask=mask_tp, other=0.0).to(tl.float32)
            sz = tl.sigmoid(zv)
            tl.store(dz_ptr + xo, (gy * yp * sz * (1.0 + zv * (1.0 - sz))).to(dz_ptr.dtype.element_ty), mask=mask_tp)
            gy = gy * zv * sz
        g_lo = gy.to(x.dtype)

        # intra-chunk terms: M[t, u] = (C_t.B_u) decay[t, u] dt_u (g_t.x_u)
        CB = tl.dot(Cm, tl.trans(Bm), input_precision=PREC)
        gx = tl.dot(g_lo, tl.trans(x), input_precision=PREC)
        keep = causal & same
        decay = tl.where(keep, tl.exp(s[:, None] - s[None, :]), 0.0)
        Ld = decay * dt[None, :]
        R = Ld * gx
        M = R * CB
        ds = tl.sum(M, axis=1) - tl.sum(M, axis=0)
        ddt = tl.sum(decay * gx * CB, axis=0)
        dx = tl.dot(tl.trans((Ld * CB).to(x.dtype)), g_lo, input_precision=PREC)
        R_lo = R.to(x.dtype)
        dC = tl.dot(R_lo, Bm, input_precision=PREC)
        dB = tl.dot(tl.trans(R_lo), Cm, input_precision=PREC)

        # the carried state's contribution to y
        state_lo = state.to(x.dtype)
        e_in = tl.where(m_in, tl.exp(s), 0.0)
        y_state = tl.dot(Cm, tl.trans(state_lo), input_precision=PREC)
        ds += e_in * tl.sum(gy * y_state, axis=1)
        dC += e_in[:, None] * tl.dot(g_lo, state_lo, input_precision=PREC)

        # the chunk's contribution to the state it hands on
        sT = tl.sum(tl.where(is_last, s, 0.0), axis=0)  # s's last entry, as in the forward
        w_out = tl.where(m_out, tl.exp(sT - s), 0.0)
        dstate_lo = dstate.to(x.dtype)
        dHB = tl.dot(Bm, tl.trans(dstate_lo), input_precision=PREC)
        dx += (w_out * dt)[:, None] * dHB
        xdHB = tl.sum(xf * dHB, axis=1)
        ddt += w_out * xdHB
        w = w_out * dt * xdHB
        e_carry = tl.where(carry, tl.exp(sT), 0.0)
        ds_T = tl.sum(w, axis=0) + e_carry * tl.sum(tl.sum(dstate * state, axis=1), axis=0)
        ds = ds - w + tl.where(is_last, ds_T, 0.0)
        dB += (w_out * dt)[:, None] * tl.dot(x, dstate_lo, input_precision=PREC)

        if HAS_D:
            dx += Dv * gy
            dD_acc += tl.sum(gy * xf, axis=0)
        da = tl.sum(ds, axis=0) - tl.cumsum(ds, axis=0) + ds
        ddt += A * da
        dA_acc += da * dt
        ddt = dt_back(ddt, raw, dt_lo, dt_hi, SOFTPLUS, LIMIT)
        tl.store(dx_ptr + xo, dx.to(dx_ptr.dtype.element_ty), mask=mask_tp)
        tl.store(ddt_ptr + part + rows * H + h, ddt, mask=mask_t)
        ho = ((rows * H + h) * NPB + pb)[:, None] * N + offs_n[None, :]
        tl.store(dBh_ptr + ho, dB.to(dBh_ptr.dtype.element_ty), mask=mask_tn)
        tl.store(dCh_ptr + ho, dC.to(dCh_ptr.dtype.element_ty), mask=mask_tn)
        gs = (gy * e_in[:, None]).to(x.dtype)
        dstate = dstate * e_carry + tl.dot(tl.trans(gs), Cm, input_precision=PREC)
    tl.store(dh0_ptr + bh64 * P * N + pn_offs, dstate, mask=mask_pn)
    tl.store(dA_ptr + pb * tl.num_programs(0) + pid_bh, tl.sum(dA_acc, axis=0))
    if HAS_D:
        tl.store(dD_ptr + bh64 * P + offs_p, dD_acc, mask=mask_p)


@triton.jit
def _ssd_step_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr,
    s_b, s_h, s_p, s_n, H, G, P, N, dt_lo, dt_hi,
    HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, LIMIT: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    b = pid_bh // H
    h = pid_bh % H
    g = h // (H // G)
    offs_p = tl.program_id(1) * BP + tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    mask_p = offs_p < P
    mask_n = offs_n < N
    mask_pn = mask_p[:, None] & mask_n[None, :]
    dt = tl.load(dt_ptr + pid_bh).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + h).to(tl.float32)
    dt = dt_eff(dt, dt_lo, dt_hi, SOFTPLUS, LIMIT)
    decay = tl.exp(dt * tl.maximum(tl.load(A_ptr + h).to(tl.float32), -1e30))  # A floored as the scan's (A_FLOOR)
    so = b.to(tl.int64) * s_b + h * s_h + offs_p[:, None] * s_p + offs_n[None, :] * s_n
    st = tl.load(state_ptr + so, mask=mask_pn, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + pid_bh * P + offs_p, mask=mask_p, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + (b * G + g) * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + (b * G + g) * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    st = st * decay + (dt * x)[:, None] * Bv[None, :]
    tl.store(state_ptr + so, st.to(state_ptr.dtype.element_ty), mask=mask_pn)
    y = tl.sum(st * Cv[None, :], axis=1)
    if HAS_D:
        if D_PER_P:
            y += tl.load(D_ptr + h * P + offs_p, mask=mask_p, other=0.0).to(tl.float32) * x
        else:
            y += tl.load(D_ptr + h).to(tl.float32) * x
    if HAS_Z:
        zv = tl.load(z_ptr + pid_bh * P + offs_p, mask=mask_p, other=0.0).to(tl.float32)
        y = y * zv * tl.sigmoid(zv)
    tl.store(y_ptr + pid_bh * P + offs_p, y.to(y_ptr.dtype.element_ty), mask=mask_p)


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, next_pow2(n))


def _flags(D, z, dt_bias, rule):
    """The kernels' options from the optional inputs and the DtRule (its clamp's bounds included)."""
    return dict(HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, HAS_Z=z is not None,
                HAS_BIAS=dt_bias is not None, **dt_flags(rule))


def dt_flags(rule):
    """A DtRule as kernel arguments: SOFTPLUS, LIMIT and the bounds dt_lo, dt_hi (float32)."""
    return dict(SOFTPLUS=rule.softplus, LIMIT=rule.limit, dt_lo=rule.lo, dt_hi=rule.hi)


def _prec(x):
    """The products' precision for float32 inputs: float32's digits unless torch allows TF32 (fp32_dot)."""
    return fp32_dot() if x.dtype == torch.float32 else None


# Chosen from a sweep on the H200 (bf16, B=4, L=4096, H=32, P=64, N=128).
CHUNK, FWD_BLOCK_P, FWD_WARPS, FWD_STAGES, BWD_BLOCK_P, BWD_WARPS, BWD_STAGES = 32, 32, 4, 2, 64, 8, 1


def pick_chunk(L: int, chunk: int | None) -> int:
    if chunk is not None:
        return chunk
    return min(CHUNK, _pow2(L))


def ssd_fwd(x, dt, A, B, C, D, z, dt_bias, rule, h0, seq, *, for_backward, chunk=None, keep_states=True,
            block_p=None, num_warps=None, num_stages=None):
    """Returns y [B, L, H, P], final state [B, H, P, N] fp32 and what the backward needs: (the
    float32 state entering every chunk [B, H, NC, P, N], y before the gate or None without z). The
    states are kept whatever keep_states says: this backward has no state pass of its own."""
    batch, L, H, P = x.shape
    G, N = B.shape[2:]
    Q = pick_chunk(L, chunk)
    NC = cdiv(L, Q)
    BN = _pow2(N)
    BP = block_p or min(_pow2(P), FWD_BLOCK_P)
    y = torch.empty_like(x)
    hT = torch.empty(batch, H, P, N, device=x.device, dtype=torch.float32)
    states = torch.empty(batch, H, NC, P, N, device=x.device, dtype=torch.float32) if for_backward else None
    ypre = torch.empty_like(x) if (for_backward and z is not None) else None
    grid = (batch * H, cdiv(P, BP))
    _ssd_fwd_kernel[grid](
        x, dt, A, B, C, D, z, dt_bias, h0, seq, y, ypre, states, hT,
        L, H, G, P, N, NC, **_flags(D, z, dt_bias, rule),
        HAS_H0=h0 is not None, HAS_SEQ=seq is not None,
        STORE_YPRE=for_backward and z is not None, STORE_STATES=for_backward,
        Q=Q, BP=BP, BN=BN, PREC=_prec(x),
        num_warps=num_warps or FWD_WARPS, num_stages=num_stages or FWD_STAGES)
    return y, hT, (states, ypre)


def ssd_bwd(dy, dhT, x, dt, A, B, C, D, z, dt_bias, rule, seq, states, ypre, *, chunk=None,
            block_p=None, num_warps=None, num_stages=None):
    """Gradients of x, dt, A, B, C, D, z, dt_bias and the initial state (float32 except dx, dz)."""
    batch, L, H, P = x.shape
    G, N = B.shape[2:]
    Q = pick_chunk(L, chunk)
    NC = cdiv(L, Q)
    dx = torch.empty_like(x)
    dz = torch.empty_like(z) if z is not None else None
    BP = block_p or min(_pow2(P), BWD_BLOCK_P)
    NPB = cdiv(P, BP)
    f32 = dict(device=x.device, dtype=torch.float32)
    ddt = torch.empty(NPB, batch, L, H, **f32)
    # per-head dB, dC parts in the input's precision when 16-bit: they are summed in fp32 below
    dBh = torch.empty(batch, L, H * NPB, N, device=x.device, dtype=x.dtype)
    dCh = torch.empty_like(dBh)
    dh0 = torch.empty(batch, H, P, N, **f32)
    dA = torch.empty(NPB, batch, H, **f32)
    dD = torch.empty(batch, H, P, **f32) if D is not None else None
    _ssd_bwd_kernel[(batch * H, NPB)](
        x, dt, A, B, C, D, z, dt_bias, seq, ypre, states, dy, dhT,
        dx, dz, ddt, dBh, dCh, dh0, dA, dD,
        L, H, G, P, N, NC, NPB, **_flags(D, z, dt_bias, rule),
        HAS_SEQ=seq is not None, HAS_DHT=dhT is not None,
        Q=Q, BP=BP, BN=_pow2(N), PREC=_prec(x), num_warps=num_warps or BWD_WARPS,
        num_stages=num_stages or BWD_STAGES)
    dB = dBh.view(batch, L, G, H // G * NPB, N).sum(3, dtype=torch.float32)
    dC = dCh.view(batch, L, G, H // G * NPB, N).sum(3, dtype=torch.float32)
    ddt = ddt.sum(0) if NPB > 1 else ddt[0]
    if dD is not None:
        dD = dD.sum(0) if D.dim() == 2 else dD.sum((0, 2))
    ddt_bias = ddt.sum((0, 1)) if dt_bias is not None else None
    return dx, ddt, dA.sum((0, 1)), dB, dC, dD, dz, ddt_bias, dh0


def scan_function(name: str, fwd, bwd, doc: str, rows=dense) -> type:
    """The autograd.Function of one Triton implementation of the scan, arguments (x, dt, A, B, C, D,
    z, dt_bias, h0, seq, rule (a DtRule), chunk, keep_states) -> (y, final state); every tensor input but seq
    is differentiable.
      fwd(x, dt, A, B, C, D, z, dt_bias, rule, h0, seq, for_backward=, chunk=, keep_states=)
          -> (y, final state, the tensors its backward needs)
      bwd(dy, dhT, x, dt, A, B, C, D, z, dt_bias, rule, seq, *those tensors, chunk=)
          -> the gradients of x, dt, A, B, C, D, z, dt_bias and h0
    The other tensors are made contiguous; x, B and C go through `rows` (dense, or the layout the
    implementation reads strided)."""

    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, h0, seq, rule, chunk, keep_states=True):
        dt, A, D, z, dt_bias, h0 = map(dense, (dt, A, D, z, dt_bias, h0))
        x, B, C = map(rows, (x, B, C))
        seq = None if seq is None else seq.to(torch.int32).contiguous()
        grad = any(ctx.needs_input_grad)
        y, hT, saved = fwd(x, dt, A, B, C, D, z, dt_bias, rule, h0, seq, for_backward=grad, chunk=chunk,
                           keep_states=keep_states)
        if grad:
            ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, seq, *saved)
            ctx.rule, ctx.chunk = rule, chunk
            ctx.h0_dtype = None if h0 is None else h0.dtype
        return y, hT

    def backward(ctx, dy, dhT):
        x, dt, A, B, C, D, z, dt_bias, seq, *saved = ctx.saved_tensors
        grads = bwd(dy.contiguous(), dense(dhT), x, dt, A, B, C, D, z, dt_bias, ctx.rule, seq, *saved,
                    chunk=ctx.chunk)
        dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dh0 = grads
        cast = lambda g, ref: None if g is None or ref is None else g.to(ref.dtype)
        return (dx, cast(ddt, dt), cast(dA, A), cast(dB, B), cast(dC, C), cast(dD, D), dz,
                cast(ddt_bias, dt_bias), None if ctx.h0_dtype is None else dh0.to(ctx.h0_dtype), None, None, None,
                None)

    body = {"__doc__": doc, "__module__": fwd.__module__, "forward": staticmethod(forward),
            "backward": staticmethod(backward)}
    return types.new_class(name, (torch.autograd.Function,), exec_body=lambda ns: ns.update(body))


SSDScanFn = scan_function("SSDScanFn", ssd_fwd, ssd_bwd,
                          "(y, final state) of the scan, one program walking all chunks of a (batch, head).")


def ssd_step_triton(state, x, dt, A, B, C, D, z, dt_bias, rule):
    """One decode token; updates state [B, H, P, N] in place, returns y [B, H, P]."""
    batch, H, P, N = state.shape
    G = B.shape[1]
    x, dt, A, B, C, D, z, dt_bias = map(dense, (x, dt, A, B, C, D, z, dt_bias))
    y = torch.empty_like(x)
    BN = next_pow2(N)
    BP = min(next_pow2(P), max(1, 2048 // BN))
    _ssd_step_kernel[(batch * H, cdiv(P, BP))](
        state, x, dt, A, B, C, D, z, dt_bias, y, *state.stride(), H, G, P, N,
        **_flags(D, z, dt_bias, rule), BP=BP, BN=BN, num_warps=4)
    return y
