"""Mamba-1 selective-scan forward in Gluon: the groups forward's tile with its layouts set by hand.

The Triton groups forward (`_ss_fwd_groups_kernel`) holds [NPT, T, BLOCK_D, NS] tiles: T steps of a
channel's NPT states in each thread, NS threads a channel. Triton loads B and C ([NPT, T, NS] a tile) and
u, delta, z ([T, BLOCK_D]) in layouts of its own choosing and converts them into the tile's through shared
memory, and those conversions bind it: on the H200 the L1 data pipe ran 88-93% busy, most of its wavefronts
shared memory. Here every tensor is created in a slice of the tile's one layout

    L4 = BlockedLayout(size_per_thread [NPT, T, 1, 1], threads_per_warp [1, 1, 32/NS, NS],
                       warps_per_cta [1, 1, WARPS, 1], order [1, 3, 2, 0])

so each thread loads the very values it uses (B and C: the T steps of its NPT states, the same addresses
for the channels of a warp; u, delta, z: the T steps of its channel) and nothing passes through shared
memory but y's sum over the NS threads of a channel (a warp shuffle). The scan, the checkpoints and the
outputs are the Triton forward's: see triton_selective_scan.py. Gluon is compiled only (the interpreter
does not run it), so this forward is CUDA's alone; its tests run on the GPU.

As written it is correct and slower (H200, bf16, B4 L4096 D5120 N16, 2026-11-29: 1.19 ms against the
Triton forward's 0.80; `ARCHDSL_SCAN_FWD=auto` keeps the faster). ptxas (Triton 3.6, sm_90): no shared
memory, 190 registers (10 warps an SM), 933 instructions a tile of 64 elements, 14.6 an element: B and C
widened from bf16 by two instructions each (PRMT, then a shift), every load's 64-bit address rebuilt each
tile, the scan's unused decay products kept. The ways down: B and C read as 32-bit pairs and widened by a
shift or a mask (one instruction a value), pointers carried across tiles, fewer registers for occupancy.
"""
from __future__ import annotations

import torch

from .._host import cdiv, next_pow2

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    HAVE_GLUON = True
except ImportError:  # an older Triton: the forward is not offered
    HAVE_GLUON = False

# (BLOCK_D, NS, T, warps): BLOCK_D = warps · 32 / NS channels a program.
TILE = (32, 2, 8, 2)

if HAVE_GLUON:
    @gluon.jit
    def _combine(a1, b1, a2, b2):
        return a1 * a2, b1 * a2 + b2

    @gluon.jit
    def _softplus(x):
        """log(1 + e^x) with the log on the special-function unit (lg2.approx), x itself past 20."""
        lg = gl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=f,f", [1.0 + gl.exp2(x * 1.4426950408889634)],
                                       dtype=gl.float32, is_pure=True, pack=1)
        return gl.where(x > 20.0, x, lg * 0.6931471805599453)

    @gluon.jit
    def _inputs(u_ptr, dt_ptr, z_ptr, B_base, C_base, off, m2, bc_off, bc_mask, HAS_Z: gl.constexpr,
                EVEN: gl.constexpr):
        """One tile's inputs in float32: u, delta (before bias and softplus), z [T, BLOCK_D] (u again without
        z) and B, C [NPT, T, NS], each straight in its slice of the tile's layout."""
        if EVEN:
            u = gl.load(u_ptr + off).to(gl.float32)
            raw = gl.load(dt_ptr + off).to(gl.float32)
            zz = gl.load(z_ptr + off).to(gl.float32) if HAS_Z else u
            Bt = gl.load(B_base + bc_off).to(gl.float32)
            Ct = gl.load(C_base + bc_off).to(gl.float32)
        else:
            u = gl.load(u_ptr + off, mask=m2, other=0.0).to(gl.float32)
            raw = gl.load(dt_ptr + off, mask=m2, other=0.0).to(gl.float32)
            zz = gl.load(z_ptr + off, mask=m2, other=0.0).to(gl.float32) if HAS_Z else u
            Bt = gl.load(B_base + bc_off, mask=bc_mask, other=0.0).to(gl.float32)
            Ct = gl.load(C_base + bc_off, mask=bc_mask, other=0.0).to(gl.float32)
        return u, raw, zz, Bt, Ct

    @gluon.jit
    def _ss_fwd_gluon_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
                             y_ptr, hT_ptr, ck_ptr,
                             L, DIM, N, CPG, NCK,
                             sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
                             BLOCK_D: gl.constexpr, NS: gl.constexpr, NPT: gl.constexpr, T: gl.constexpr,
                             WARPS: gl.constexpr, CKI: gl.constexpr, HAS_D: gl.constexpr, HAS_Z: gl.constexpr,
                             HAS_BIAS: gl.constexpr, SOFTPLUS: gl.constexpr, HAS_H0: gl.constexpr,
                             STORE_CK: gl.constexpr, EVEN: gl.constexpr):
        """Program (channel block, batch): the channels' scan over all L steps, T at a time. u, delta, z, y
        [B, D, L] contiguous; B, C [B, G, N, L] at their strides; A [D, N]; h0, hT [B, D, N]; checkpoints ck
        [B, D, NCK, N] (the state before every CKI-th step). EVEN: L divides by T, DIM by BLOCK_D and N is
        NPT·NS, so no load or store needs a mask."""
        L4: gl.constexpr = gl.BlockedLayout([NPT, T, 1, 1], [1, 1, 32 // NS, NS], [1, 1, WARPS, 1], [1, 3, 2, 0])
        S_st: gl.constexpr = gl.SliceLayout(1, L4)  # [NPT, BLOCK_D, NS]: states
        S_bc: gl.constexpr = gl.SliceLayout(2, L4)  # [NPT, T, NS]: B, C
        S_tdn: gl.constexpr = gl.SliceLayout(0, L4)
        S_td: gl.constexpr = gl.SliceLayout(2, S_tdn)  # [T, BLOCK_D]: u, delta, z, y
        pid_d = gl.program_id(0)
        pid_b = gl.program_id(1).to(gl.int64)
        # [T, BLOCK_D] indices
        t_td = gl.expand_dims(gl.arange(0, T, layout=gl.SliceLayout(1, S_td)), 1)
        d_td = gl.expand_dims(pid_d * BLOCK_D + gl.arange(0, BLOCK_D, layout=gl.SliceLayout(0, S_td)), 0)
        # state [NPT, BLOCK_D, NS] indices: n = ns · NPT + i
        i_st = gl.expand_dims(gl.expand_dims(gl.arange(0, NPT, layout=gl.SliceLayout(1, gl.SliceLayout(2, S_st))),
                                             1), 2)
        d_st = gl.expand_dims(gl.expand_dims(
            pid_d * BLOCK_D + gl.arange(0, BLOCK_D, layout=gl.SliceLayout(0, gl.SliceLayout(2, S_st))), 0), 2)
        ns_st = gl.expand_dims(gl.expand_dims(gl.arange(0, NS, layout=gl.SliceLayout(0, gl.SliceLayout(1, S_st))),
                                              0), 1)
        n_st = ns_st * NPT + i_st
        # B, C [NPT, T, NS] indices
        i_bc = gl.expand_dims(gl.expand_dims(gl.arange(0, NPT, layout=gl.SliceLayout(1, gl.SliceLayout(2, S_bc))),
                                             1), 2)
        t_bc = gl.expand_dims(gl.expand_dims(gl.arange(0, T, layout=gl.SliceLayout(0, gl.SliceLayout(2, S_bc))),
                                             0), 2)
        ns_bc = gl.expand_dims(gl.expand_dims(gl.arange(0, NS, layout=gl.SliceLayout(0, gl.SliceLayout(1, S_bc))),
                                              0), 1)
        n_bc = ns_bc * NPT + i_bc
        # t as [1, T, 1, 1] of the tile, for the first and last steps
        t4 = gl.expand_dims(gl.expand_dims(t_td, 2), 0)

        dmask = d_td < DIM
        s_mask = (d_st < DIM) & (n_st < N)
        g = ((pid_d * BLOCK_D) // CPG).to(gl.int64)
        ch_td = pid_b * DIM + d_td.to(gl.int64)  # [1, BLOCK_D]
        ch_st = pid_b * DIM + d_st.to(gl.int64)
        state_off = ch_st * N + n_st
        if EVEN:
            A2 = gl.load(A_ptr + d_st * N + n_st).to(gl.float32) * 1.4426950408889634
        else:
            A2 = gl.load(A_ptr + d_st * N + n_st, mask=s_mask, other=0.0).to(gl.float32) * 1.4426950408889634
        h = gl.zeros([NPT, BLOCK_D, NS], gl.float32, layout=S_st)
        if HAS_H0:
            h = gl.load(h0_ptr + state_off, mask=s_mask, other=0.0).to(gl.float32)
        if HAS_BIAS:
            bias = gl.load(bias_ptr + d_td, mask=dmask, other=0.0).to(gl.float32)
        if HAS_D:
            Dv = gl.load(D_ptr + d_td, mask=dmask, other=0.0).to(gl.float32)
        B_base = B_ptr + pid_b * sB_b + g * sB_g
        C_base = C_ptr + pid_b * sC_b + g * sC_g
        row = ch_td * L
        off = row + t_td
        u_n, dt_n, z_n, B_n, C_n = _inputs(u_ptr, dt_ptr, z_ptr, B_base, C_base, off, (t_td < L) & dmask,
                                           n_bc * sB_n + t_bc.to(gl.int64) * sB_l, (n_bc < N) & (t_bc < L),
                                           HAS_Z, EVEN)
        for c in range(0, gl.cdiv(L, T)):
            u, raw, zz, Bt, Ct = u_n, dt_n, z_n, B_n, C_n
            tn = (c + 1) * T
            if EVEN:  # the last tile's prefetch reads the last tile again rather than past the end
                tn = gl.minimum(tn, L - T)
            u_n, dt_n, z_n, B_n, C_n = _inputs(u_ptr, dt_ptr, z_ptr, B_base, C_base, off + tn,
                                               (t_td + tn < L) & dmask,
                                               n_bc * sB_n + (t_bc + tn).to(gl.int64) * sB_l,
                                               (n_bc < N) & (t_bc + tn < L), HAS_Z, EVEN)
            if STORE_CK:
                if (c * T) % CKI == 0:
                    gl.store(ck_ptr + (ch_st * NCK + (c * T) // CKI) * N + n_st, h, mask=s_mask)
            m2 = (t_td + c * T < L) & dmask
            if HAS_BIAS:
                raw += bias
            dt = raw
            if SOFTPLUS:
                dt = _softplus(raw)
            if not EVEN:
                dt = gl.where(m2, dt, 0.0)
            dt4 = gl.expand_dims(gl.expand_dims(dt, 2), 0)
            dA = gl.exp2(dt4 * gl.expand_dims(A2, 1))
            dBu = gl.expand_dims(gl.expand_dims(dt * u, 2), 0) * gl.expand_dims(Bt, 2)
            dBu = gl.where(t4 == 0, dBu + dA * gl.expand_dims(h, 1), dBu)
            _, hs = gl.associative_scan((dA, dBu), 1, _combine)
            y = gl.sum(gl.sum(hs * gl.expand_dims(Ct, 2), axis=0), axis=2)
            h = gl.sum(gl.where(t4 == T - 1, hs, 0.0), axis=1)
            if HAS_D:
                y += Dv * u
            if HAS_Z:
                y = y * zz / (1.0 + gl.exp(-zz))
            if EVEN:
                gl.store(y_ptr + off + c * T, y.to(y_ptr.dtype.element_ty))
            else:
                gl.store(y_ptr + off + c * T, y.to(y_ptr.dtype.element_ty), mask=m2)
        gl.store(hT_ptr + state_off, h, mask=s_mask)


def ss_fwd_gluon(u, delta, A, B4, C4, D, z, bias, h0, softplus, store_ck, CK: int):
    """The forward of triton_selective_scan.ss_fwd on this kernel: y, last state (float32), checkpoints
    every CK steps [B, D, NCK, N] float32 (hT again when not stored). u, delta contiguous [B, D, L]."""
    batch, dim, L = u.shape
    N, cpg = A.shape[1], dim // B4.shape[1]
    bd, ns, T, warps = TILE
    block_n = next_pow2(N)
    ns = min(ns, block_n)
    if (B4.shape[1] > 1 and cpg % bd) or CK % T:  # a tile never straddles two B/C groups
        raise ValueError(f"the Gluon forward needs a multiple of {bd} channels a B/C group (got {cpg}) and a "
                         f"checkpoint interval that {T} divides (got {CK})")
    y = torch.empty_like(u)
    hT = torch.empty(batch, dim, N, device=u.device, dtype=torch.float32)
    nck = cdiv(L, CK)
    ck = torch.empty(batch, dim, nck, N, device=u.device, dtype=torch.float32) if store_ck else hT
    from .triton_selective_scan import _or
    even = L % T == 0 and dim % bd == 0 and block_n == N
    _ss_fwd_gluon_kernel[(cdiv(dim, bd), batch)](
        u, delta, A, B4, C4, _or(D, u), _or(z, u), _or(bias, u), _or(h0, u), y, hT, ck, L, dim, N, cpg, nck,
        *B4.stride(), *C4.stride(), BLOCK_D=bd, NS=ns, NPT=block_n // ns, T=T, WARPS=warps, CKI=CK,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None, SOFTPLUS=bool(softplus),
        HAS_H0=h0 is not None, STORE_CK=store_ck, EVEN=even, num_warps=warps)
    return y, hT, ck
