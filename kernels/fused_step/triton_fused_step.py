"""Fused decode steps in Triton: the Mamba-2 step in two kernels (three with its norm), the Mamba-1 step in two.

Mamba-2: `_conv_step_kernel` (below, shared with Mamba-1) convolves the x, B, C channels of the new
token and shifts the conv state, writing silu(conv) in float32. Then `_mamba2_step_kernel`: one program
per (batch, head, block of the head dim) updates its [BP, N] slice of the SSM state (softplus dt,
dt_bias, optional dt floor), forms y = C·h + D·x and the gate y·silu(z). Gate "norm" (an RMSNorm over each
group of E/G channels) needs the whole group: the step kernel writes y in float32 and each program's
sum of y², and `_group_norm_kernel` normalises. Gate "pre_norm" returns that float32 y for out_proj's
GEMV to normalise (kernels/norm_gemv).
Until 2026-12-02 it was one kernel: every program convolved its x channels and its group's B, C, and
the last program of a group to arrive (an atomic counter) shifted the B, C conv state and normalised the
group. The programs' arrivals on one counter a row cost more than the third kernel's launch: at 16 rows
(mamba2-2.7b) 27.1 -> 21.3 µs with the conv and norm as kernels of their own (docs/benchmarks.md).
With `pdl` (kernels/_pdl.py) each kernel reads what the one before does not write (the conv weights and
conv state; the SSM state slice and A_log; the norm weight) before waiting for it.

Mamba-1: `_conv_step_kernel` (conv update + silu, a channel a thread), then after x_proj
`_mamba_ssm_kernel` (inner RMSNorms of dt/B/C, dt_proj as a per-program product, softplus, state update,
D, gate) on [rows, channels, ·] tiles: up to SSM_ROWS batch rows a program, all their loads issued before
any state is written back, dt_proj's block read once for them. Both take `pdl` as the Mamba-2 kernel does
(weights and the layer's states before the wait).
All arithmetic in float32; batch offsets in int64.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._host import cdiv, dense, next_pow2
from .._pdl import gdc_launch_dependents, gdc_wait, pdl_ok


@triton.jit
def _conv_window(crow, w_ptr, b_ptr, chan, mask, cs_c, cs_k, K: tl.constexpr, HAS_CB: tl.constexpr):
    """bias + Σ_k<K-1 w[k]·state[k] of `chan`: the conv over its state, without the new input."""
    acc = tl.zeros(chan.shape, dtype=tl.float32)
    for k in tl.static_range(K - 1):
        s = tl.load(crow + chan * cs_c + k * cs_k, mask=mask, other=0.0).to(tl.float32)
        acc += s * tl.load(w_ptr + chan * K + k, mask=mask, other=0.0).to(tl.float32)
    if HAS_CB:
        acc += tl.load(b_ptr + chan, mask=mask, other=0.0).to(tl.float32)
    return acc


@triton.jit
def _conv_input(acc, xrow, w_ptr, chan, mask, K: tl.constexpr):
    """silu(acc + w[K-1]·x): the conv finished with the new input x of `chan`."""
    acc += tl.load(xrow + chan, mask=mask, other=0.0).to(tl.float32) * \
        tl.load(w_ptr + chan * K + (K - 1), mask=mask, other=0.0).to(tl.float32)
    return acc * tl.sigmoid(acc)


@triton.jit
def _shift(xrow, crow, chan, mask, cs_c, cs_k, K: tl.constexpr):
    """conv state of `chan` ← [state[1:], new input]."""
    for k in tl.static_range(K - 2):
        s = tl.load(crow + chan * cs_c + (k + 1) * cs_k, mask=mask)
        tl.store(crow + chan * cs_c + k * cs_k, s, mask=mask)
    xn = tl.load(xrow + chan, mask=mask)
    tl.store(crow + chan * cs_c + (K - 2) * cs_k, xn.to(crow.dtype.element_ty), mask=mask)


@triton.jit
def _softplus(x):
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))


@triton.jit
def _mamba2_step_kernel(
    zx_ptr, xc_ptr, st_ptr, alog_ptr, D_ptr, dtb_ptr, y_ptr, part_ptr,
    s_zx, s_b, s_h, s_p, s_n, E, CONV, H, G, P, N, dt_floor,
    HAS_D: tl.constexpr, HAS_DTB: tl.constexpr, FLOOR: tl.constexpr, GATE: tl.constexpr, PARTS: tl.constexpr,
    PDL: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
):
    if PDL:
        gdc_launch_dependents()
    pid = tl.program_id(0)
    pb = tl.program_id(1)
    b = pid // H
    h = pid % H
    g = h // (H // G)
    b64 = b.to(tl.int64)
    offs_n = tl.arange(0, BN)
    mask_n = offs_n < N
    offs_p = pb * BP + tl.arange(0, BP)
    mask_p = offs_p < P
    chx = h * P + offs_p

    # First what the conv kernel just before does not write (PDL may run this during it): this
    # program's slice of the SSM state and the head's weights.
    so = b64 * s_b + h * s_h + offs_p[:, None] * s_p + offs_n[None, :] * s_n
    mask_pn = mask_p[:, None] & mask_n[None, :]
    st = tl.load(st_ptr + so, mask=mask_pn, other=0.0).to(tl.float32)
    A = tl.minimum(tl.exp(tl.load(alog_ptr + h).to(tl.float32)), 1e30)  # floored as ssd_scan's -A (A_FLOOR)
    if PDL:
        gdc_wait()  # the conv kernel's output (xc) is written, and so in_proj's (zx), which it waited for
    xcrow = xc_ptr + b64 * CONV
    x = tl.load(xcrow + chx, mask=mask_p, other=0.0)
    Bv = tl.load(xcrow + E + g * N + offs_n, mask=mask_n, other=0.0)
    Cv = tl.load(xcrow + E + G * N + g * N + offs_n, mask=mask_n, other=0.0)
    row = zx_ptr + b64 * s_zx
    dt = tl.load(row + E + CONV + h).to(tl.float32)
    if HAS_DTB:
        dt += tl.load(dtb_ptr + h).to(tl.float32)
    dt = _softplus(dt)
    if FLOOR:
        dt = tl.maximum(dt, dt_floor)
    st = st * tl.exp(-dt * A) + (dt * x)[:, None] * Bv[None, :]
    tl.store(st_ptr + so, st.to(st_ptr.dtype.element_ty), mask=mask_pn)
    y = tl.sum(st * Cv[None, :], axis=1)
    if HAS_D:
        y += tl.load(D_ptr + h).to(tl.float32) * x
    if GATE:
        zv = tl.load(row + chx, mask=mask_p, other=0.0).to(tl.float32)
        y = y * zv * tl.sigmoid(zv)
    tl.store(y_ptr + b64 * E + chx, y.to(y_ptr.dtype.element_ty), mask=mask_p)
    if PARTS:
        tl.store(part_ptr + pid * tl.num_programs(1) + pb, tl.sum(tl.where(mask_p, y * y, 0.0), axis=0))


@triton.jit
def _group_norm_kernel(y_ptr, part_ptr, nw_ptr, out_ptr, E, H, G, P, npb, eps, PDL: tl.constexpr,
                       BPART: tl.constexpr, BLOCK: tl.constexpr):
    """Gate "norm": program (b·G + g, j) writes channels [j·BLOCK, (j+1)·BLOCK) of group g of row b,
    y · rsqrt(mean of the group's y²) · norm weight; the mean from the step kernel's partial sums."""
    if PDL:
        gdc_launch_dependents()
    pid = tl.program_id(0)
    b64 = (pid // G).to(tl.int64)
    g = pid % G
    GP = (H // G) * P
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = offs < GP
    ch = g * GP + offs
    w = tl.load(nw_ptr + ch, mask=m, other=0.0).to(tl.float32)
    if PDL:
        gdc_wait()  # the step kernel's y and partial sums are written
    offs_q = tl.arange(0, BPART)
    parts = tl.load(part_ptr + (b64 * H + g * (H // G)) * npb + offs_q, mask=offs_q < (H // G) * npb, other=0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(parts, axis=0) / GP + eps)
    v = tl.load(y_ptr + b64 * E + ch, mask=m, other=0.0)
    tl.store(out_ptr + b64 * E + ch, (v * rstd * w).to(out_ptr.dtype.element_ty), mask=m)


# A program: BLOCK_P head-dim channels (None: as many as make BLOCK_ELEMS state elements) in WARPS warps.
# H200, mamba2-2.7b's step (H80 P64 N128), gate "norm", graphs, µs, float32 / bf16 state (2026-12-02): 16 rows
# 21.3 / 11.2, 64 rows 96.7 / 53.0 (an in-place scale of the state: 17.2 / 8.0, 80.8 / 41.3); the 64-layer
# model's graphed step, ms, batch 1 / 16 with a float32 state 2.00 / 4.07. 8-64 channels in 1-4 warps were
# all within ~10% of it.
BLOCK_P, BLOCK_ELEMS, WARPS, NORM_BLOCK = None, 2048, 1, 1024


def mamba2_step_triton(zxbcdt, conv_state, conv_weight, conv_bias, ssm_state, A_log, D, dt_bias,
                       norm_weight, gate, norm_eps, dt_floor, pdl=False, block_p=None):
    batch, H, P, N = ssm_state.shape
    E = H * P
    conv_dim = conv_state.shape[1]
    G = (conv_dim - E) // (2 * N)
    zx = zxbcdt if zxbcdt.stride(-1) == 1 else zxbcdt.contiguous()
    A_log, D, dt_bias, norm_weight = map(dense, (A_log, D, dt_bias, norm_weight))
    pdl = pdl_ok(zx, pdl)
    launch = {"launch_pdl": True} if pdl else {}
    xc = conv_step_triton(zx[:, E:E + conv_dim], conv_state, conv_weight, conv_bias, pdl=pdl,
                          out_dtype=torch.float32)  # [batch, conv_dim]: silu(conv) of x, B, C
    BN = next_pow2(N)
    BP = block_p or BLOCK_P or min(next_pow2(P), max(1, BLOCK_ELEMS // BN))
    npb = cdiv(P, BP)
    norm = gate in ("norm", "pre_norm")
    y = torch.empty(batch, E, device=zx.device, dtype=torch.float32 if norm else zx.dtype)
    part = torch.empty(batch * H * npb, device=zx.device, dtype=torch.float32) if gate == "norm" else None
    _mamba2_step_kernel[(batch * H, npb)](
        zx, xc, ssm_state, A_log, D, dt_bias, y, part,
        zx.stride(0), *ssm_state.stride(), E, conv_dim, H, G, P, N, float(dt_floor),
        HAS_D=D is not None, HAS_DTB=dt_bias is not None, FLOOR=bool(dt_floor), GATE=gate is not None,
        PARTS=gate == "norm", PDL=pdl, BP=BP, BN=BN, num_warps=WARPS, **launch)
    if gate != "norm":
        return y
    out = torch.empty(batch, E, device=zx.device, dtype=zx.dtype)
    BLOCK = min(NORM_BLOCK, next_pow2(E // G))
    _group_norm_kernel[(batch * G, cdiv(E // G, BLOCK))](
        y, part, norm_weight, out, E, H, G, P, npb, float(norm_eps), PDL=pdl,
        BPART=max(2, next_pow2(H // G * npb)), BLOCK=BLOCK, num_warps=4, **launch)
    return out


@triton.jit
def _conv_step_kernel(x_ptr, cst_ptr, w_ptr, b_ptr, y_ptr, s_x, cs_b, cs_c, cs_k, D,
                      K: tl.constexpr, HAS_CB: tl.constexpr, PDL: tl.constexpr, BLOCK: tl.constexpr):
    if PDL:
        gdc_launch_dependents()
    b64 = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < D
    xrow = x_ptr + b64 * s_x
    crow = cst_ptr + b64 * cs_b
    acc = _conv_window(crow, w_ptr, b_ptr, offs, mask, cs_c, cs_k, K, HAS_CB)  # weights and the layer's state
    if PDL:
        gdc_wait()  # in_proj's output (x) is now written
    y = _conv_input(acc, xrow, w_ptr, offs, mask, K)
    tl.debug_barrier()  # a BLOCK smaller than the threads copies channels: all reads before the shift
    _shift(xrow, crow, offs, mask, cs_c, cs_k, K)
    tl.store(y_ptr + b64 * D + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


# A channel a thread: H200, mamba-2.8b's conv step (5120 channels, width 4), graphs, µs (2026-12-01), at batch
# 1 / 16 / 64: 1024 channels a program 3.39 / 3.51 / 7.18; 128 channels (4 warps) 1.41 / 1.81 / 3.63, the best
# or within 2% of it of 17 (channels, warps) pairs.
CONV_BLOCK = 128


def conv_step_triton(x, conv_state, weight, bias, block=None, warps=4, pdl=False, out_dtype=None):
    batch, D = x.shape
    x = x if x.stride(-1) == 1 else x.contiguous()
    weight, bias = map(dense, (weight, bias))
    y = torch.empty(batch, D, device=x.device, dtype=out_dtype or x.dtype)
    BLOCK = block or min(CONV_BLOCK, next_pow2(D))
    pdl = pdl_ok(x, pdl)
    _conv_step_kernel[(batch, cdiv(D, BLOCK))](
        x, conv_state, weight, bias, y, x.stride(0), *conv_state.stride(), D,
        K=conv_state.shape[2] + 1, HAS_CB=bias is not None, PDL=pdl, BLOCK=BLOCK, num_warps=warps,
        **({"launch_pdl": True} if pdl else {}))
    return y


@triton.jit
def _rms_rows(v, mask, n, eps):
    """v [ROWS, BV] over its n valid columns: v / rms(v), row by row."""
    v = tl.where(mask, v, 0.0)
    return v / tl.sqrt(tl.sum(v * v, axis=1) / n + eps)[:, None]


@triton.jit
def _mamba_ssm_kernel(
    u_ptr, z_ptr, xd_ptr, W_ptr, dtb_ptr, dtw_ptr, bw_ptr, cw_ptr, alog_ptr, D_ptr, st_ptr, y_ptr,
    s_u, s_z, s_xd, s_b, s_d, s_n, batch, E, R, N, eps,
    INNER: tl.constexpr, HAS_DTB: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    PDL: tl.constexpr, ROWS: tl.constexpr, BE: tl.constexpr, BR: tl.constexpr, RK: tl.constexpr,
    RKS: tl.constexpr, BN: tl.constexpr,
):
    """ROWS batch rows × BE channels a program, as [ROWS, BE, ·] tiles: every row's loads are issued
    before any state is written back, and dt_proj's [BE, R] block is read once for all ROWS rows,
    RK columns at a time (dt [ROWS, BE] = Σ_r W[e, r] · x_dbl[b, r]). With PDL the layer's state and A are
    read before waiting for x_proj's output."""
    if PDL:
        gdc_launch_dependents()
    offs_b = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    mask_b = offs_b < batch
    offs_e = tl.program_id(1) * BE + tl.arange(0, BE)
    mask_e = offs_e < E
    offs_n = tl.arange(0, BN)
    mask_n = offs_n < N
    mask_be = mask_b[:, None] & mask_e[None, :]                                      # [ROWS, BE]
    mask_bn = mask_b[:, None] & mask_n[None, :]                                      # [ROWS, BN]
    mask_en = mask_e[:, None] & mask_n[None, :]                                      # [BE, BN]
    mask_ben = mask_be[:, :, None] & mask_n[None, None, :]                           # [ROWS, BE, BN]
    so = offs_b[:, None, None] * s_b + offs_e[None, :, None] * s_d + offs_n[None, None, :] * s_n
    st = tl.load(st_ptr + so, mask=mask_ben, other=0.0).to(tl.float32)              # [ROWS, BE, BN]
    A = -tl.exp(tl.load(alog_ptr + offs_e[:, None] * N + offs_n[None, :], mask=mask_en, other=0.0).to(tl.float32))
    if PDL:
        gdc_wait()  # x_proj's output (and, before it, u and z) is now written
    xd = xd_ptr + offs_b[:, None] * s_xd
    Bv = tl.load(xd + R + offs_n[None, :], mask=mask_bn, other=0.0).to(tl.float32)     # [ROWS, BN]
    Cv = tl.load(xd + R + N + offs_n[None, :], mask=mask_bn, other=0.0).to(tl.float32)
    be = offs_b[:, None] * E + offs_e[None, :]
    u = tl.load(u_ptr + offs_b[:, None] * s_u + offs_e[None, :], mask=mask_be, other=0.0).to(tl.float32)
    if INNER > 0:  # 1: RMSNorm without weights (Falcon Mamba), 2: with weights (Jamba)
        offs_r = tl.arange(0, BR)
        mask_br = mask_b[:, None] & (offs_r < R)[None, :]
        dl = tl.load(xd + offs_r[None, :], mask=mask_br, other=0.0).to(tl.float32)      # [ROWS, BR]
        scale = 1.0 / tl.sqrt(tl.sum(dl * dl, axis=1) / R + eps)                         # [ROWS]
        Bv = _rms_rows(Bv, mask_bn, N, eps)
        Cv = _rms_rows(Cv, mask_bn, N, eps)
        if INNER == 2:
            Bv *= tl.load(bw_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
            Cv *= tl.load(cw_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    dt = tl.zeros((ROWS, BE), dtype=tl.float32)
    for r0 in tl.static_range(0, RKS * RK, RK):
        offs_k = r0 + tl.arange(0, RK)
        mask_k = offs_k < R
        w = tl.load(W_ptr + offs_e[:, None] * R + offs_k[None, :], mask=mask_e[:, None] & mask_k[None, :],
                    other=0.0).to(tl.float32)                                            # [BE, RK]
        d = tl.load(xd + offs_k[None, :], mask=mask_b[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
        if INNER > 0:
            d *= scale[:, None]
            if INNER == 2:
                d *= tl.load(dtw_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)[None, :]
        dt += tl.sum(w[None, :, :] * d[:, None, :], axis=2)
    if HAS_DTB:
        dt += tl.load(dtb_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)[None, :]
    dt = _softplus(dt)                                                                   # [ROWS, BE]
    st = st * tl.exp(dt[:, :, None] * A[None, :, :]) + (dt * u)[:, :, None] * Bv[:, None, :]
    tl.store(st_ptr + so, st.to(st_ptr.dtype.element_ty), mask=mask_ben)
    y = tl.sum(st * Cv[:, None, :], axis=2)                                              # [ROWS, BE]
    if HAS_D:
        y += tl.load(D_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)[None, :] * u
    if HAS_Z:
        zv = tl.load(z_ptr + offs_b[:, None] * s_z + offs_e[None, :], mask=mask_be, other=0.0).to(tl.float32)
        y = y * zv * tl.sigmoid(zv)
    tl.store(y_ptr + be, y.to(y_ptr.dtype.element_ty), mask=mask_be)


# _mamba_ssm_kernel's tiles: up to SSM_ROWS batch rows and SSM_BE channels a program, dt_proj's columns RK at a
# time (SSM_RK_ONE for one row, SSM_RK for more). H200, mamba-2.8b's step (E 5120, N 16, dt_rank 160), CUDA graphs,
# µs (2026-12-01), rows × channels × RK: batch 1: 1×16×32 2.7, 1×16×64 3.3; batch 4: 4×16×64 3.6, 4×16×32 4.3;
# batch 16: 4×16×64 8.0, 1×64×32 7.8, 2×16×64 9.4; batch 64: 4×16×64 23.8, 16×16×64 25.5; 16 rows × 64 channels
# spills (250-540). The kernel before these tiles (a program a row, each row reading dt_proj's block again):
# 2.7 / 4.9 / 14.1 / 51.4 at batch 1 / 4 / 16 / 64.
SSM_ROWS, SSM_BE, SSM_RK, SSM_RK_ONE = 4, 16, 64, 32
_INNER = {"none": 0, "unweighted": 1, "weighted": 2}


def mamba_ssm_step_triton(state, u, x_dbl, dt_proj_weight, A_log, dt_bias, D, z, inner_norms,
                          dt_norm_weight, b_norm_weight, c_norm_weight, inner_norm_eps, rows=None,
                          block_e=None, pdl=False):
    batch, E, N = state.shape
    R = dt_proj_weight.shape[1]
    u, x_dbl, z = (t if t is None or t.stride(-1) == 1 else t.contiguous() for t in (u, x_dbl, z))
    dt_proj_weight, A_log, dt_bias, D, dt_norm_weight, b_norm_weight, c_norm_weight = map(dense, (
        dt_proj_weight, A_log, dt_bias, D, dt_norm_weight, b_norm_weight, c_norm_weight))
    y = torch.empty(batch, E, device=u.device, dtype=u.dtype)
    rows = next_pow2(rows or min(SSM_ROWS, batch))
    BN = next_pow2(N)
    BE = block_e or max(1, min(SSM_BE, 4096 // (rows * BN)))  # narrower for large states: the tile in registers
    RK = min(SSM_RK if rows > 1 else SSM_RK_ONE, next_pow2(R))
    pdl = pdl_ok(u, pdl)
    _mamba_ssm_kernel[(cdiv(batch, rows), cdiv(E, BE))](
        u, z, x_dbl, dt_proj_weight, dt_bias, dt_norm_weight, b_norm_weight, c_norm_weight, A_log, D, state, y,
        u.stride(0), 0 if z is None else z.stride(0), x_dbl.stride(0), *state.stride(), batch, E, R, N,
        float(inner_norm_eps), INNER=_INNER[inner_norms], HAS_DTB=dt_bias is not None, HAS_D=D is not None,
        HAS_Z=z is not None, PDL=pdl, ROWS=rows, BE=BE, BR=next_pow2(R), RK=RK, RKS=cdiv(R, RK), BN=BN,
        num_warps=4, **({"launch_pdl": True} if pdl else {}))
    return y
