"""Mamba-1 selective-scan forward in Gluon: a channel's states in two threads, time walked step by step.

The Triton groups forward (`_ss_fwd_groups_kernel`) scans [NPT, T, BLOCK_D, NS] tiles and leaves Triton to
place B and C: it loads them in layouts of its own and converts them through shared memory, and on the H200
those conversions bound it (the L1 data pipe 88-93% busy, most of it shared memory; 0.80 ms at B4 L4096
D5120 N16 bf16 against an ex2 bound of 0.32 ms). Here the layouts are set by hand so that values cross
threads only in shuffles, three a step:

  - NS threads (2) share a channel, each with NB/NS of its states (`[BLOCK_D, NB]` tiles, NB = N rounded
    up to a power of two), so y's sum over the states is one shuffle;
  - u, delta, z and y move as `[BLOCK_D, T]` tiles, each of a channel's NS threads holding T/NS consecutive
    steps (one 16-byte load a tensor); softplus, delta·u, D·u and the gate are computed on those tiles,
    each step by one thread;
  - the recurrence walks the T steps one at a time (unrolled): step t's delta and delta·u are read out of
    the tiles (a select on a register index known at compile time, then one shuffle from the thread that
    holds step t), then for the thread's states  h = exp2(delta·A·log2 e)·h + (delta·u)·B_t,
    y_t = Σ_n h·C_t  (one ex2, two multiplies and two multiply-adds a state);
  - B_t and C_t are the same for every channel of a program: they are read from a float32 copy laid out
    [B, G, L, 2, NB] (made by the launcher; 2 MB at B4 L4096 N16), so each thread fetches a step's 2·NB
    values with a few 16-byte loads of one address the whole warp shares, no widening, no conversion.

On the H200 (B4 L4096 D5120 N16 bf16, 2026-11-30): 0.679 ms against the Triton forward's 0.802 and
mamba_ssm's CUDA kernel's 1.443, 24% of the bandwidth floor. Nsight Compute finds the busiest schedulers
issuing ~80% of cycles: 1280 one-warp programs land 2 or 3 to a scheduler, and the ones with 3 set the time
(docs/benchmarks.md, twenty-fourth run).

Gluon is compiled only (the interpreter does not run it), so this forward is CUDA's alone; its tests run on
the GPU, and CI compiles its launches for sm_90 (tests/kernels/test_selective_scan.py). The backward
follows it unchanged: the checkpoints are the Triton forward's ([B, D, NCK, N], the state before every
CKI-th step).
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

# (NS, T, warps): NS threads a channel, T steps a tile; BLOCK_D = warps · 32 / NS channels a program.
TILE = (2, 16, 1)
MAX_N = 32  # the most states a channel compiled and timed here (168 registers); the Triton forward takes more

if HAVE_GLUON:
    _sync = gl.thread_barrier if hasattr(gl, "thread_barrier") else gl.barrier  # renamed after Triton 3.6

    @gluon.jit
    def _softplus(x):
        """log(1 + e^x) with the log on the special-function unit (lg2.approx), x itself past 20."""
        lg = gl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=f,f", [1.0 + gl.exp2(x * 1.4426950408889634)],
                                       dtype=gl.float32, is_pure=True, pack=1)
        return gl.where(x > 20.0, x, lg * 0.6931471805599453)

    @gluon.jit
    def _at(tile, t_idx, t: gl.constexpr, layout: gl.constexpr):
        """Step t of a [BLOCK_D, T] tile as a [BLOCK_D, 1] column of the states' layout. Within a thread the
        select folds away (adding -0.0 is exact); across a channel's NS threads the sum is a shuffle."""
        col = gl.sum(gl.where(t_idx == t, tile, -0.0), axis=1)
        return gl.expand_dims(gl.convert_layout(col, layout, assert_trivial=True), 1)

    @gluon.jit
    def _tile(u_ptr, dt_ptr, z_ptr, off, mask, HAS_Z: gl.constexpr, EVEN: gl.constexpr):
        """u, delta (before bias and softplus), z of one [BLOCK_D, T] tile, as stored (z is u without z)."""
        if EVEN:
            u = gl.load(u_ptr + off)
            raw = gl.load(dt_ptr + off)
            zz = gl.load(z_ptr + off) if HAS_Z else u
        else:
            u = gl.load(u_ptr + off, mask=mask, other=0.0)
            raw = gl.load(dt_ptr + off, mask=mask, other=0.0)
            zz = gl.load(z_ptr + off, mask=mask, other=0.0) if HAS_Z else u
        return u, raw, zz

    @gluon.jit
    def _ss_fwd_rows_kernel(u_ptr, dt_ptr, A_ptr, BC_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
                            y_ptr, hT_ptr, ck_ptr,
                            L, DIM, N, CPG, NCK, G, LP,
                            BLOCK_D: gl.constexpr, NB: gl.constexpr, NS: gl.constexpr, T: gl.constexpr,
                            WARPS: gl.constexpr,
                            BC_V: gl.constexpr, BC_TC: gl.constexpr,
                            CKI: gl.constexpr, HAS_D: gl.constexpr, HAS_Z: gl.constexpr, HAS_BIAS: gl.constexpr,
                            SOFTPLUS: gl.constexpr, HAS_H0: gl.constexpr, STORE_CK: gl.constexpr,
                            EVEN: gl.constexpr):
        """Program (channel block, batch): BLOCK_D channels over all L steps. u, delta, z, y [B, D, L]
        contiguous; BC [B, G, LP, 2, NB] float32 (B then C of each step, zero past N and past L; LP a
        multiple of T); A [D, N]; h0, hT [B, D, N]; checkpoints ck [B, D, NCK, N]. The program's channels
        share one B/C group. EVEN: L divides by T and DIM by BLOCK_D, so u, delta, z, y need no mask."""
        LT: gl.constexpr = gl.BlockedLayout([1, T // NS], [32 // NS, NS], [WARPS, 1], [1, 0])  # [BLOCK_D, T]
        LS: gl.constexpr = gl.BlockedLayout([1, NB // NS], [32 // NS, NS], [WARPS, 1], [1, 0])  # [BLOCK_D, NB]
        SD: gl.constexpr = gl.SliceLayout(1, LS)  # [BLOCK_D] of the states
        pid_d = gl.program_id(0)
        pid_b = gl.program_id(1).to(gl.int64)
        t_idx = gl.expand_dims(gl.arange(0, T, layout=gl.SliceLayout(0, LT)), 0)  # [1, T]
        d_t = gl.expand_dims(pid_d * BLOCK_D + gl.arange(0, BLOCK_D, layout=gl.SliceLayout(1, LT)), 1)
        n_s = gl.expand_dims(gl.arange(0, NB, layout=gl.SliceLayout(0, LS)), 0)  # [1, NB]
        d_s = gl.expand_dims(pid_d * BLOCK_D + gl.arange(0, BLOCK_D, layout=SD), 1)  # [BLOCK_D, 1]
        # B and C: a tile's [T, 2·NB] float32 block is read one tile ahead by the whole program (BC_V values a
        # thread and load) and kept in shared memory, two buffers; each step reads its row from there, the
        # same address for every thread.
        LBC: gl.constexpr = gl.BlockedLayout([1, BC_V], [32 // BC_TC, BC_TC], [WARPS, 1], [1, 0])
        SBC: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
        bc_smem = gl.allocate_shared_memory(gl.float32, [2, T, 2 * NB], SBC)
        bc_tile = (gl.expand_dims(gl.arange(0, T, layout=gl.SliceLayout(1, LBC)), 1) * (2 * NB)
                   + gl.expand_dims(gl.arange(0, 2 * NB, layout=gl.SliceLayout(0, LBC)), 0))

        dmask = d_t < DIM
        s_mask = (d_s < DIM) & (n_s < N)
        ch_s = pid_b * DIM + d_s.to(gl.int64)
        state_off = ch_s * N + n_s
        A2 = gl.load(A_ptr + d_s * N + n_s, mask=s_mask, other=0.0).to(gl.float32) * 1.4426950408889634
        h = gl.zeros([BLOCK_D, NB], gl.float32, layout=LS)
        if HAS_H0:
            h = gl.load(h0_ptr + state_off, mask=s_mask, other=0.0).to(gl.float32)
        if HAS_BIAS:
            bias = gl.load(bias_ptr + d_t, mask=dmask, other=0.0).to(gl.float32)
        if HAS_D:
            Dv = gl.load(D_ptr + d_t, mask=dmask, other=0.0).to(gl.float32)
        g = (pid_d * BLOCK_D) // CPG
        bc_base = BC_ptr + ((pid_b * G + g) * LP) * (2 * NB) + bc_tile
        NT = gl.cdiv(L, T)
        bc_smem.index(0).store(gl.load(bc_base))
        bc_n = gl.load(bc_base + gl.minimum(1, NT - 1) * (T * 2 * NB))
        _sync()
        off = (pid_b * DIM + d_t.to(gl.int64)) * L + t_idx  # [BLOCK_D, T]
        u_n, raw_n, z_n = _tile(u_ptr, dt_ptr, z_ptr, off, (t_idx < L) & dmask, HAS_Z, EVEN)
        for c in range(0, NT):
            u, raw, zz = u_n.to(gl.float32), raw_n.to(gl.float32), z_n.to(gl.float32)
            tn = (c + 1) * T
            if EVEN:  # the last tile's prefetch reads the last tile again rather than past the end
                tn = gl.minimum(tn, L - T)
            u_n, raw_n, z_n = _tile(u_ptr, dt_ptr, z_ptr, off + tn, (t_idx + tn < L) & dmask, HAS_Z, EVEN)
            if STORE_CK:
                if (c * T) % CKI == 0:
                    gl.store(ck_ptr + (ch_s * NCK + (c * T) // CKI) * N + n_s, h, mask=s_mask)
            if HAS_BIAS:
                raw += bias
            dt = raw
            if SOFTPLUS:
                dt = _softplus(raw)
            if not EVEN:
                dt = gl.where((t_idx + c * T < L) & dmask, dt, 0.0)  # a masked step leaves h as it is
            dtu = dt * u
            y = gl.zeros([BLOCK_D, T], gl.float32, layout=LT)
            rows = bc_smem.index(c % 2)
            for t in gl.static_range(T):
                Bt = rows.slice(t, 1).slice(0, NB, dim=1).load(LS)  # [1, NB]
                Ct = rows.slice(t, 1).slice(NB, NB, dim=1).load(LS)
                h = gl.exp2(_at(dt, t_idx, t, SD) * A2) * h + _at(dtu, t_idx, t, SD) * Bt
                y_t = gl.convert_layout(gl.sum(h * Ct, axis=1), gl.SliceLayout(1, LT), assert_trivial=True)
                y = gl.where(t_idx == t, gl.expand_dims(y_t, 1), y)
            if HAS_D:
                y += Dv * u
            if HAS_Z:
                y = y * zz / (1.0 + gl.exp2(-zz * 1.4426950408889634))
            if EVEN:
                gl.store(y_ptr + off + c * T, y.to(y_ptr.dtype.element_ty))
            else:
                gl.store(y_ptr + off + c * T, y.to(y_ptr.dtype.element_ty), mask=(t_idx + c * T < L) & dmask)
            bc_smem.index((c + 1) % 2).store(bc_n)  # its last reads were the tile before this one
            bc_n = gl.load(bc_base + gl.minimum(c + 2, NT - 1) * (T * 2 * NB))
            _sync()
        gl.store(hT_ptr + state_off, h, mask=s_mask)


def _tile_for(N: int):
    """(NS, T, warps, BLOCK_D) for N states a channel."""
    ns, T, warps = TILE
    ns = min(ns, next_pow2(N))
    return ns, T, warps, 32 * warps // ns


def fits(dim: int, groups: int, N: int, CK: int) -> bool:
    """Whether this forward takes the case: a program's BLOCK_D channels share one B/C group (it reads one
    group's B and C), N is at most MAX_N, and T divides the checkpoint interval CK."""
    _, T, _, bd = _tile_for(N)
    return (groups == 1 or (dim // groups) % bd == 0) and N <= MAX_N and CK % T == 0


def ss_fwd_gluon(u, delta, A, B4, C4, D, z, bias, h0, softplus, store_ck, CK: int):
    """The forward of triton_selective_scan.ss_fwd on this kernel: y, last state (float32), checkpoints
    every CK steps [B, D, NCK, N] float32 (hT again when not stored). u, delta contiguous [B, D, L];
    B4, C4 [B, G, N, L] at any strides."""
    batch, dim, L = u.shape
    N, groups = A.shape[1], B4.shape[1]
    ns, T, warps, bd = _tile_for(N)
    nb = next_pow2(N)
    if not fits(dim, groups, N, CK):
        raise ValueError(f"the Gluon forward needs a multiple of {bd} channels a B/C group (got {dim // groups}), "
                         f"at most {MAX_N} states (got {N}) and a checkpoint interval that {T} divides (got {CK})")
    lp = cdiv(L, T) * T
    bc = torch.zeros(batch, groups, lp, 2, nb, device=u.device, dtype=torch.float32)
    bc[:, :, :L, 0, :N] = B4.transpose(2, 3)
    bc[:, :, :L, 1, :N] = C4.transpose(2, 3)
    y = torch.empty_like(u)
    hT = torch.empty(batch, dim, N, device=u.device, dtype=torch.float32)
    nck = cdiv(L, CK)
    ck = torch.empty(batch, dim, nck, N, device=u.device, dtype=torch.float32) if store_ck else hT
    from .triton_selective_scan import _or
    even = L % T == 0 and dim % bd == 0
    _ss_fwd_rows_kernel[(cdiv(dim, bd), batch)](
        u, delta, A, bc, _or(D, u), _or(z, u), _or(bias, u), _or(h0, u), y, hT, ck,
        L, dim, N, dim // groups, nck, groups, lp,
        BLOCK_D=bd, NB=nb, NS=ns, T=T, WARPS=warps, BC_V=min(4, 2 * nb), BC_TC=min(32, max(1, 2 * nb // 4)), CKI=CK,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None, SOFTPLUS=bool(softplus),
        HAS_H0=h0 is not None, STORE_CK=store_ck, EVEN=even, num_warps=warps)
    return y, hT, ck
