"""Fused decode steps in Triton: the Mamba-2 step in one kernel, the Mamba-1 step in two.

Mamba-2 (`_mamba2_step_kernel`): one program per (batch, head, block of the head dim). It
convolves its own x channels and its group's B, C channels (conv state shifted in place), updates
its [BP, N] slice of the SSM state (softplus dt, dt_bias, optional dt floor), forms
y = C·h + D·x and the gate y·silu(z). The gated RMSNorm needs the whole group, and the B, C conv
state is read by every program of the group, so the last program of each (batch, group) to
finish -- an atomic arrival counter -- shifts the B, C conv state and normalises the group from
the fp32 scratch the others wrote; it then resets the counter to 0 for the next launch (so the
kernel is CUDA-graph safe: the counters are zero between launches). Gate "pre_norm" returns that
scratch, y·silu(z) before the norm, for out_proj's GEMV to normalise (kernels/norm_gemv), and the
last program only shifts. A barrier separates the threads' reads of the x channels' conv windows
from the one write of each shifted window: without it, a lagging warp read shifted windows and
left wrong SSM states at full size on the H200 (6 runs of 6 once the last program's norm block was
gone; test_gpu_mamba2_kernel_full_size), with it every variant agrees with the float32 reference.
With `pdl` (kernels/_pdl.py) the weights, the conv state's part of each convolution and the SSM
state slice are read before waiting for in_proj.

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
    zx_ptr, cst_ptr, cw_ptr, cb_ptr, st_ptr, alog_ptr, D_ptr, dtb_ptr, nw_ptr,
    out_ptr, hbuf_ptr, part_ptr, cnt_ptr,
    s_zx, cs_b, cs_c, cs_k, s_b, s_h, s_p, s_n,
    E, CONV, H, G, P, N, dt_floor, eps,
    K: tl.constexpr, HAS_CB: tl.constexpr, HAS_D: tl.constexpr, HAS_DTB: tl.constexpr,
    FLOOR: tl.constexpr, GATE: tl.constexpr, NORM: tl.constexpr, TAIL_NORM: tl.constexpr,
    PDL: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, BPART: tl.constexpr, BNORM: tl.constexpr,
):
    if PDL:
        gdc_launch_dependents()
    pid = tl.program_id(0)
    pb = tl.program_id(1)
    npb = tl.num_programs(1)
    b = pid // H
    h = pid % H
    HG = H // G
    g = h // HG
    b64 = b.to(tl.int64)
    row = zx_ptr + b64 * s_zx
    xbc = row + E
    crow = cst_ptr + b64 * cs_b
    offs_n = tl.arange(0, BN)
    mask_n = offs_n < N
    chB = E + g * N + offs_n
    chC = E + G * N + g * N + offs_n
    offs_p = pb * BP + tl.arange(0, BP)
    mask_p = offs_p < P
    chx = h * P + offs_p

    # First what no kernel just before this one writes (PDL may run this during that kernel): the
    # weights, the conv state's part of the convolutions, this head's slice of the SSM state.
    Bv = _conv_window(crow, cw_ptr, cb_ptr, chB, mask_n, cs_c, cs_k, K, HAS_CB)
    Cv = _conv_window(crow, cw_ptr, cb_ptr, chC, mask_n, cs_c, cs_k, K, HAS_CB)
    x = _conv_window(crow, cw_ptr, cb_ptr, chx, mask_p, cs_c, cs_k, K, HAS_CB)
    so = b64 * s_b + h * s_h + offs_p[:, None] * s_p + offs_n[None, :] * s_n
    mask_pn = mask_p[:, None] & mask_n[None, :]
    st = tl.load(st_ptr + so, mask=mask_pn, other=0.0).to(tl.float32)
    A = tl.exp(tl.load(alog_ptr + h).to(tl.float32))
    if PDL:
        gdc_wait()  # in_proj's output (zx) is now written
    Bv = _conv_input(Bv, xbc, cw_ptr, chB, mask_n, K)
    Cv = _conv_input(Cv, xbc, cw_ptr, chC, mask_n, K)
    x = _conv_input(x, xbc, cw_ptr, chx, mask_p, K)
    dt = tl.load(row + E + CONV + h).to(tl.float32)
    if HAS_DTB:
        dt += tl.load(dtb_ptr + h).to(tl.float32)
    dt = _softplus(dt)
    if FLOOR:
        dt = tl.maximum(dt, dt_floor)
    # The BP channels are copied across the program's threads: all copies read a channel's conv
    # window above, one writes the shifted window. The barrier keeps every read before that write
    # (without it a lagging warp read shifted windows: wrong states on the H200, 2026-11-28/29).
    tl.debug_barrier()
    _shift(xbc, crow, chx, mask_p, cs_c, cs_k, K)
    st = st * tl.exp(-dt * A) + (dt * x)[:, None] * Bv[None, :]
    tl.store(st_ptr + so, st.to(st_ptr.dtype.element_ty), mask=mask_pn)
    y = tl.sum(st * Cv[None, :], axis=1)
    if HAS_D:
        y += tl.load(D_ptr + h).to(tl.float32) * x
    if GATE:
        zv = tl.load(row + chx, mask=mask_p, other=0.0).to(tl.float32)
        y = y * zv * tl.sigmoid(zv)
    if NORM:
        tl.store(hbuf_ptr + b64 * E + chx, y, mask=mask_p)
        tl.store(part_ptr + pid * npb + pb, tl.sum(tl.where(mask_p, y * y, 0.0), axis=0))
    else:
        tl.store(out_ptr + b64 * E + chx, y.to(out_ptr.dtype.element_ty), mask=mask_p)

    # Arrival: every program of the group has read the B, C conv state (and written its part of
    # the scratch) before it counts in; the last one in shifts the group's B, C conv state and,
    # for gate "norm", normalises the group from the scratch.
    tl.debug_barrier()
    arrived = tl.atomic_add(cnt_ptr + b * G + g, 1)
    if arrived == HG * npb - 1:
        _shift(xbc, crow, chB, mask_n, cs_c, cs_k, K)
        _shift(xbc, crow, chC, mask_n, cs_c, cs_k, K)
        if TAIL_NORM:
            GP = HG * P
            offs_q = tl.arange(0, BPART)
            parts = tl.load(part_ptr + (b * H + g * HG) * npb + offs_q, mask=offs_q < HG * npb, other=0.0,
                            cache_modifier=".cg")
            rstd = 1.0 / tl.sqrt(tl.sum(parts, axis=0) / GP + eps)
            for c0 in range(0, GP, BNORM):
                offs = c0 + tl.arange(0, BNORM)
                m = offs < GP
                ch = g * GP + offs
                v = tl.load(hbuf_ptr + b64 * E + ch, mask=m, other=0.0, cache_modifier=".cg")
                w = tl.load(nw_ptr + ch, mask=m, other=0.0).to(tl.float32)
                tl.store(out_ptr + b64 * E + ch, (v * rstd * w).to(out_ptr.dtype.element_ty), mask=m)
        tl.atomic_xchg(cnt_ptr + b * G + g, 0)


_COUNTERS: dict = {}


def _counters(device, n):
    """Zeroed int32 arrival counters, kept per device (each launch leaves them at zero)."""
    key = (str(device), n)
    if key not in _COUNTERS:
        _COUNTERS[key] = torch.zeros(n, dtype=torch.int32, device=device)
    return _COUNTERS[key]


BLOCK_P, WARPS = None, 4  # head-dim channels per program (None: up to 2048 state elements), warps
# From WIDE_ROWS rows on, programs of up to WIDE_ELEMS state elements (a whole head of 64 × 128) in WIDE_WARPS
# warps. H200, mamba2-2.7b's step (H80 P64 N128), graphs, µs with gate "norm", default -> wide (2026-12-01):
# 4 rows 12.7 -> 10.9, 16 rows 32.2 -> 26.7, 64 rows 127.8 -> 99.9 (floor at 4.8 TB/s 4.4, 17.6, 70.3); at one
# row 7.6 -> 7.8, so one and two rows keep the default.
WIDE_ROWS, WIDE_ELEMS, WIDE_WARPS = 4, 8192, 2


def mamba2_step_triton(zxbcdt, conv_state, conv_weight, conv_bias, ssm_state, A_log, D, dt_bias,
                       norm_weight, gate, norm_eps, dt_floor, pdl=False, block_p=None):
    batch, H, P, N = ssm_state.shape
    E = H * P
    conv_dim, K1 = conv_state.shape[1:]
    G = (conv_dim - E) // (2 * N)
    zx = zxbcdt if zxbcdt.stride(-1) == 1 else zxbcdt.contiguous()
    w, conv_bias, A_log, D, dt_bias, norm_weight = map(dense, (conv_weight, conv_bias, A_log, D, dt_bias, norm_weight))
    out = torch.empty(batch, E, device=zx.device, dtype=zx.dtype)
    BN = next_pow2(N)
    BP = block_p or BLOCK_P or min(next_pow2(P), max(1, 2048 // BN))
    warps = WARPS
    if not (block_p or BLOCK_P) and batch >= WIDE_ROWS and next_pow2(P) * BN <= WIDE_ELEMS:
        BP, warps = next_pow2(P), WIDE_WARPS
    npb = cdiv(P, BP)
    norm = gate in ("norm", "pre_norm")
    hbuf = torch.empty(batch, E, device=zx.device, dtype=torch.float32) if norm else None
    part = torch.empty(batch * H * npb, device=zx.device, dtype=torch.float32) if norm else None
    cnt = _counters(zx.device, batch * G)
    pdl = pdl_ok(zx, pdl)
    _mamba2_step_kernel[(batch * H, npb)](
        zx, conv_state, w, conv_bias, ssm_state, A_log, D, dt_bias, norm_weight,
        out, hbuf, part, cnt,
        zx.stride(0), *conv_state.stride(), *ssm_state.stride(),
        E, conv_dim, H, G, P, N, float(dt_floor), float(norm_eps),
        K=K1 + 1, HAS_CB=conv_bias is not None, HAS_D=D is not None, HAS_DTB=dt_bias is not None,
        FLOOR=bool(dt_floor), GATE=gate is not None, NORM=norm, TAIL_NORM=gate == "norm", PDL=pdl,
        BP=BP, BN=BN, BPART=max(2, next_pow2(H // G * npb)),
        BNORM=min(1024, next_pow2(E // G)), num_warps=warps, **({"launch_pdl": True} if pdl else {}))
    return hbuf if gate == "pre_norm" else out


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


def conv_step_triton(x, conv_state, weight, bias, block=None, warps=4, pdl=False):
    batch, D = x.shape
    x = x if x.stride(-1) == 1 else x.contiguous()
    weight, bias = map(dense, (weight, bias))
    y = torch.empty(batch, D, device=x.device, dtype=x.dtype)
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
