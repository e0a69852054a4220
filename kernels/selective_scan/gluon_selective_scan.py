"""Mamba-1 selective scan in Gluon, forward and backward: a channel's states in a few threads, time walked
step by step.

The Triton groups forward (`_ss_fwd_groups_kernel`) scans [NPT, T, BLOCK_D, NS] tiles and leaves Triton to
place B and C: it loads them in layouts of its own and converts them through shared memory, and on the H200
those conversions bound it (the L1 data pipe 88-93% busy, most of it shared memory; 0.80 ms at B4 L4096
D5120 N16 bf16 against an ex2 bound of 0.32 ms). Here the layouts are set by hand so that values cross
threads only in shuffles, three a step:

  - NS threads (2) share a channel, each with NB/NS of its states (`[BLOCK_D, NB]` tiles, NB = N rounded
    up to a power of two), so y's sum over the states is one shuffle;
  - u, delta, z and y move as `[BLOCK_D, T]` tiles, each of a channel's NS threads holding T/NS consecutive
    steps (one 16-byte load a tensor; where L does not divide by 8 they are read and written with the lanes
    along the steps instead, `QL`, or, with enough channels, by programs of channels 8 apart with tiles
    shifted onto 16-byte boundaries, `SHIFT`); softplus, delta·u, D·u and the gate are computed on those tiles,
    each step by one thread;
  - the recurrence walks the T steps one at a time (unrolled): step t's delta and delta·u are read out of
    the tiles (a select on a register index known at compile time, then one shuffle from the thread that
    holds step t), then for the thread's states  h = exp2(delta·A·log2 e)·h + (delta·u)·B_t,
    y_t = Σ_n h·C_t  (one ex2, two multiplies and two multiply-adds a state);
  - B_t and C_t are the same for every channel of a program: they are read from a float32 copy laid out
    [B, G, L, 2, NB] (made by the launcher; 2 MB at B4 L4096 N16), so each thread fetches a step's 2·NB
    values with a few 16-byte loads of one address the whole warp shares, no widening, no conversion;
  - where rows lie on 16-byte boundaries (or are shifted onto them), u, delta, z and the B/C block move by
    cp.async into shared memory two tiles ahead (`ASYNC`; three buffers), so no load waits in registers:
    the forward that stores checkpoints for the backward, B4 L4096 D5120 N16 bf16, 0.669 -> 0.581 ms
    (thirty-second run).

A program runs a chain: a channel block of one batch row over all L steps. 1280 one-warp chains (B4 D5120)
land 2 or 3 to a scheduler, and the schedulers with 3 set the time (Nsight Compute, docs/benchmarks.md,
twenty-fourth run). Where one program a chain loads the schedulers that unevenly (`_persist`), the chains
are cut into UNITS segments and persistent programs, as many a scheduler as the chains fill whole
(`_programs`), take (segment, chain) units from a counter, a segment of every chain before the next segment
of any: a program free sooner takes more units, and the state crosses from one segment to the next through
hT and a flag a chain. The results are bit for bit the same. On the H200 (B4 L4096 D5120 N16 bf16,
2026-11-30): 0.533 ms against mamba_ssm's CUDA kernel's 1.447, 30% of the bandwidth floor; at L16384 2.011
against 6.925, 32% (docs/benchmarks.md, thirty-fourth run).

The backward (`_ss_bwd_rows_kernel`) takes the same checkpoints as the Triton backwards ([B, D, NCK, N], the
state before every CKI-th step), so it follows any forward. It keeps the forward's layout with four threads a
channel and walks each checkpoint chunk twice: up, to recompute the state entering each 8-step sub-tile, then
down, recomputing a sub-tile's states into registers and running the adjoint along them. dB and dC, sums over
channels, are summed across the warp's channels by a reduce-scatter of shuffles (each thread is left with one
(state, kind) sum a step) and leave through float32 atomics. On the H200 (same shapes): forward+backward 4.11
ms against 5.92 with the Triton groups backward and 7.15 for mamba_ssm's CUDA forward+backward
(docs/benchmarks.md, twenty-fifth run), with these sums made in shared memory then; the shuffles took the
backward alone from 3.31 to 3.05 ms (twenty-eighth run). Its programs (168 registers, 12 an SM) come in waves;
where one program a chain would leave the last wave short, or in one wave load the schedulers unevenly
(`_persist_bwd`), as many persistent programs as fit take units of chains from a counter as the forward's do,
last segment first, and d(state), dA, dD and d delta_bias cross from unit to unit through their output
buffers. That changes the results only by float32 rounding (the compilation differs). On the H200 (B4 L4096
D5120 N16 bf16, 2026-11-30), the backward alone: 3.300 -> 3.050 ms (1.62 waves), at D4608 3.327 -> 2.753 (1.45
waves), at D2560 1.793 -> 1.735 (0.81 waves, 2.42 programs a scheduler) (docs/benchmarks.md, twenty-eighth
run).

Gluon is compiled only (the interpreter does not run it), so these kernels are CUDA's alone; their tests run
on the GPU, and CI compiles their launches for sm_90 (tests/kernels/test_selective_scan.py).
"""
from __future__ import annotations

import math

import torch

from .._host import cdiv, next_pow2

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import async_copy
    HAVE_GLUON = True
except ImportError:  # an older Triton: the forward is not offered
    HAVE_GLUON = False

# (NS, T, warps): NS threads a channel, T steps a tile; BLOCK_D = warps · 32 / NS channels a program.
TILE = (2, 16, 1)
# The forward's units when its chains are cut (`_persist`): UNITS a chain, at least MIN_SEG steps each, so 256
# steps at L4096 and 512 at L16384. H200, B4 N16 bf16, persistent, 128 -> 256 steps at least, ms (thirty-fourth
# run, with `_programs`' fewer programs than chains): D5120 L4096 0.562 -> 0.533 (512: 0.535), L2048 0.295 ->
# 0.283, L1024 0.162 -> 0.154, with checkpoints 0.560 -> 0.538; L4096 D2560 0.384 -> 0.370, D3168 0.419 -> 0.408,
# D4608 0.506 -> 0.484, D7168 0.738 -> 0.752 (512: 0.790); N8 D5120 0.406 -> 0.381, N32 0.935 -> 0.906. At L16384,
# 512-step units (UNITS) 2.017, 256: 2.061, 1024: 2.014.
UNITS, MIN_SEG = 32, 256
# The forward's register cap where it copies its tiles asynchronously (`_async_io`) and N <= 16. Without one,
# ptxas gives that kernel ~100 registers and uses each ex2's result ~12 instructions after it issues; capped at
# 128 it takes 127 and ~23 (sm_90, Triton 3.6). H200, B4 bf16, ms, no cap -> 128 (thirty-third run): N16 L4096
# D5120 0.636 -> 0.589, L16384 2.399 -> 2.288, D7168 0.826 -> 0.799, L4104 0.642 -> 0.595, D2560 0.430 -> 0.423;
# with checkpoints D2560 0.455 -> 0.420, D5120 0.580 -> 0.580 (capped at 160: 0.598, 2.319, 0.751, 0.604, 0.426);
# N8 D5120 0.422 -> 0.403, D2560 0.307 -> 0.280; N4 D2560 0.232 -> 0.218. N32 (no cap: ~128 registers already)
# D5120 1.023 -> 1.028, D2560 0.695 -> 0.713.
FWD_MAXNREG = 128
MAX_N = 32  # the most states a channel compiled and timed here (168 registers); the Triton forward takes more

if HAVE_GLUON:
    _sync = gl.thread_barrier if hasattr(gl, "thread_barrier") else gl.barrier  # renamed after Triton 3.6
    # cp.async from global to shared memory; renamed after Triton 3.6
    _async_load = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared

    @gluon.jit
    def _softplus(x):
        """log(1 + e^x) with the log on the special-function unit (lg2.approx), x itself past 20."""
        lg = gl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=f,f", [1.0 + gl.exp2(x * 1.4426950408889634)],
                                       dtype=gl.float32, is_pure=True, pack=1)
        return gl.where(x > 20.0, x, lg * 0.6931471805599453)

    @gluon.jit
    def _take(ptr, lane):
        """Add one to *ptr from the first thread (lane: the program's thread indices); the old value, for all."""
        lead = lane == 0
        return gl.max(gl.where(lead, gl.atomic_add(ptr + lane * 0, lane * 0 + 1, mask=lead, sem="relaxed"), 0), axis=0)

    @gluon.jit
    def _ld_acquire(ptrs):
        """int32 loads with acquire semantics at GPU scope."""
        return gl.inline_asm_elementwise("ld.acquire.gpu.global.b32 $0, [$1];", "=r,l", [ptrs], dtype=gl.int32,
                                         is_pure=False, pack=1)

    @gluon.jit
    def _wait_turn(sync_ptr, chain, seg, lane):
        """Spin until chain's flag says its segments before `seg` are done (acquire: what they wrote is seen)."""
        while gl.max(_ld_acquire(sync_ptr + 1 + chain + lane * 0), axis=0) < seg:
            pass

    @gluon.jit
    def _pass_on(sync_ptr, chain, seg):
        """Say chain's segment `seg` is done, after every thread's writes (release)."""
        _sync()
        gl.atomic_xchg(sync_ptr + 1 + chain, seg + 1, sem="release")

    @gluon.jit
    def _neg_zero(x):
        """-0.0 in x's shape and layout. A literal -0.0 reaches the IR as +0.0, and x + 0.0 is an add that stays
        (it turns -0.0 into +0.0), where x + (-0.0) folds away. In `_at`, `_col` and `_pick` that was one FADD for
        each value taken: 8 of the forward's 1094 instructions a tile, 15 of 230 in the backward's pass 1 and 54
        of 1073 in its pass 2 (ptxas, sm_90; thirtieth run)."""
        return gl.full(x.shape, 0x80000000, gl.uint32, x.type.layout).to(gl.float32, bitcast=True)

    @gluon.jit
    def _multiple(L, QL: gl.constexpr):
        """L, known to the compiler as a multiple of QL (a power of two that divides it), so that it knows where
        rows of L steps start. Triton specializes an argument divisible by 16 by itself, so QL 16 (and 1) add
        nothing; with 2 or 8 the rows' accesses can be as wide as with 16."""
        if QL > 1:
            if QL < 16:
                L = (L // QL) * QL
        return L

    @gluon.jit
    def _at(tile, t_idx, t: gl.constexpr, layout: gl.constexpr):
        """Step t of a [BLOCK_D, T] tile as a [BLOCK_D, 1] column of the states' layout (`layout` is its
        [BLOCK_D] slice). Within a thread the select folds away (adding -0.0 is exact); across a channel's NS
        threads the sum is a butterfly of shuffles, or nothing where every thread holds all T steps (the
        backward's replicated tiles)."""
        col = gl.sum(gl.where(t_idx == t, tile, _neg_zero(tile)), axis=1)
        return gl.expand_dims(gl.convert_layout(col, layout, assert_trivial=True), 1)

    @gluon.jit
    def _set(tile, t_idx, t: gl.constexpr, v, LT: gl.constexpr):
        """The [BLOCK_D, T] tile (layout LT) with step t set to v [BLOCK_D] (a per-channel sum over the states)."""
        v = gl.convert_layout(v, gl.SliceLayout(1, LT), assert_trivial=True)
        return gl.where(t_idx == t, gl.expand_dims(v, 1), tile)

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
    def _tile_at(u_ptr, dt_ptr, z_ptr, off, t0, t_io, L, dmask, HAS_Z: gl.constexpr):
        """`_tile` of a shifted tile, whose steps are t0 + t_io [1, T] of the rows, through registers (`_io_mask`)."""
        return _tile(u_ptr, dt_ptr, z_ptr, off, _io_mask(t0, t_io, L, dmask, True), HAS_Z, False)

    @gluon.jit
    def _copy_tile(u_ptr, dt_ptr, z_ptr, bc_ptrs, off, mask, u_s, dt_s, z_s, bc_s, HAS_Z: gl.constexpr,
                   MASKED: gl.constexpr):
        """Start the copies of one tile's u, delta, z ([BLOCK_D, T] at off, masked where MASKED; zeros where
        masked) and its B/C block (bc_ptrs) into the shared buffers u_s, dt_s, z_s, bc_s, as one group."""
        if MASKED:
            _async_load(u_s, u_ptr + off, mask=mask)
            _async_load(dt_s, dt_ptr + off, mask=mask)
            if HAS_Z:
                _async_load(z_s, z_ptr + off, mask=mask)
        else:
            _async_load(u_s, u_ptr + off)
            _async_load(dt_s, dt_ptr + off)
            if HAS_Z:
                _async_load(z_s, z_ptr + off)
        _async_load(bc_s, bc_ptrs)
        async_copy.commit_group()

    @gluon.jit
    def _restart(rs, t: gl.constexpr):
        """What a step's decay exponent adds with restarts: -1e38 where bit t of rs is set (a sequence starts: exp2
        of it is 0, so the state restarts from zero), else 0."""
        return ((rs >> t) & 1).to(gl.float32) * -1e38

    @gluon.jit
    def _sub_starts(w0, w1, base, s0, HAS_RESET: gl.constexpr):
        """The backward's sequence starts from step s0 on (bit t: step s0 + t), from the words w0, w1 of steps
        32·(base // 32) on (a checkpoint chunk of at most 64 steps, s0 in it a multiple of T, which divides 32);
        0 without HAS_RESET."""
        rs = 0
        if HAS_RESET:
            off = s0 - (base // 32) * 32
            rs = gl.where(off >= 32, w1, w0) >> (off % 32)
        return rs

    @gluon.jit
    def _io_mask(t0, t_io, L, dmask, SHIFT: gl.constexpr):
        """The load mask of the tile whose steps are t0 + t_io of the rows. With SHIFT, each thread's 8 steps, a
        16-byte group, move whole where any of them lies in its row (one access; the others are the next or last
        row's, which the caller masks), so the mask changes only from group to group; else by steps."""
        if SHIFT:
            first = t0 + (t_io // 8) * 8  # the first step of the thread's group
            m = (first > -8) & (first < L) & dmask
        else:
            m = (t0 + t_io < L) & dmask
        return m

    @gluon.jit
    def _ss_fwd_rows_kernel(u_ptr, dt_ptr, A_ptr, BC_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
                            y_ptr, hT_ptr, ck_ptr, sync_ptr, rs_ptr,
                            L, DIM, N, CPG, NCK, G, LP, NPD, NCHAIN, NUNITS, SEGT,
                            BLOCK_D: gl.constexpr, NB: gl.constexpr, NS: gl.constexpr, T: gl.constexpr,
                            WARPS: gl.constexpr,
                            BC_V: gl.constexpr, BC_TC: gl.constexpr,
                            CKI: gl.constexpr, HAS_D: gl.constexpr, HAS_Z: gl.constexpr, HAS_BIAS: gl.constexpr,
                            SOFTPLUS: gl.constexpr, HAS_H0: gl.constexpr, STORE_CK: gl.constexpr,
                            EVEN: gl.constexpr, QL: gl.constexpr, SHIFT: gl.constexpr, ASYNC: gl.constexpr,
                            PERSIST: gl.constexpr, HAS_RESET: gl.constexpr):
        """A chain is (channel block, batch): BLOCK_D channels over all L steps, NCHAIN = NPD · batch of them.
        Without PERSIST, program i runs chain i whole (SEGT covers L). With it, chains are cut into units of
        SEGT tiles of T steps, and a fixed number of programs take units from a counter until none is left:
        unit k is segment k // NCHAIN of chain k % NCHAIN, so the unit a program waits for (its chain's previous
        segment, taken NCHAIN units earlier by a running program) is done or under way. A unit hands its last
        state to the next through hT and a flag a chain (release, then acquire).

        u, delta, z, y [B, D, L] contiguous; BC [B, G, LP, 2, NB] float32 (B then C of each step, zero past N
        and past L; LP a multiple of T); A [D, N]; h0, hT [B, D, N]; checkpoints ck [B, D, NCK, N]; sync
        [1 + NCHAIN] int32 zeros with PERSIST (the unit counter, then each chain's segments done). The
        program's channels share one B/C group. EVEN: L divides by T and DIM by BLOCK_D (no masks). QL: 16, 8
        or 1, a power of two L is a multiple of (`_multiple`); with 8 or 16 every row starts on a 16-byte
        boundary, else u, delta, z and y move in tiles laid along the steps (`_fwd_unit`). HAS_RESET: rs
        [B, cdiv(L, 32) + 1] int32 holds bit t % 32 of word t // 32 set where step t starts a sequence (packed
        sequences; never with SHIFT), and there the state restarts from zero."""
        # B and C: a tile's [T, 2·NB] float32 block is read one tile ahead by the whole program and kept in
        # shared memory, two buffers; each step reads its row from there, the same address for every thread.
        SBC: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
        # ASYNC (u, delta and z in the states' threads' layout, LIO = LT in `_fwd_unit`, and 16-byte aligned):
        # they and B/C are copied asynchronously into shared memory two tiles ahead (three buffers); each thread
        # reads back the u, delta and z it copied.
        bc_smem = gl.allocate_shared_memory(gl.float32, [3 if ASYNC else 2, T, 2 * NB], SBC)
        if ASYNC:
            u_smem = gl.allocate_shared_memory(u_ptr.dtype.element_ty, [3, BLOCK_D, T], SBC)
            dt_smem = gl.allocate_shared_memory(dt_ptr.dtype.element_ty, [3, BLOCK_D, T], SBC)
            if HAS_Z:
                z_smem = gl.allocate_shared_memory(z_ptr.dtype.element_ty, [3, BLOCK_D, T], SBC)
            else:  # never copied to or read; the footprint (so the programs an SM) as with z
                z_smem = gl.allocate_shared_memory(u_ptr.dtype.element_ty, [3, BLOCK_D, T], SBC)
        else:
            u_smem = bc_smem
            dt_smem = bc_smem
            z_smem = bc_smem
        if PERSIST:
            LW: gl.constexpr = gl.BlockedLayout([1], [32], [WARPS], [0])
            lane = gl.arange(0, 32 * WARPS, layout=LW)
            unit = _take(sync_ptr, lane)
            while unit < NUNITS:
                _fwd_unit(u_ptr, dt_ptr, A_ptr, BC_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, y_ptr, hT_ptr, ck_ptr,
                          sync_ptr, rs_ptr, lane, bc_smem, u_smem, dt_smem, z_smem, unit, L, DIM, N, CPG, NCK, G, LP,
                          NPD, NCHAIN, SEGT, BLOCK_D, NB, NS, T, WARPS, BC_V, BC_TC, CKI, HAS_D, HAS_Z, HAS_BIAS,
                          SOFTPLUS, HAS_H0, STORE_CK, EVEN, QL, SHIFT, ASYNC, True, HAS_RESET)
                unit = _take(sync_ptr, lane)  # taken only now, by a program free to run it
        else:  # no loop around the one unit: with one, this path ran ~1% slower than the kernel before units
            _fwd_unit(u_ptr, dt_ptr, A_ptr, BC_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, y_ptr, hT_ptr, ck_ptr,
                      sync_ptr, rs_ptr, 0, bc_smem, u_smem, dt_smem, z_smem, gl.program_id(0), L, DIM, N, CPG, NCK, G,
                      LP, NPD, NCHAIN, SEGT, BLOCK_D, NB, NS, T, WARPS, BC_V, BC_TC, CKI, HAS_D, HAS_Z, HAS_BIAS,
                      SOFTPLUS, HAS_H0, STORE_CK, EVEN, QL, SHIFT, ASYNC, False, HAS_RESET)

    @gluon.jit
    def _fwd_unit(u_ptr, dt_ptr, A_ptr, BC_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, y_ptr, hT_ptr, ck_ptr,
                  sync_ptr, rs_ptr, lane, bc_smem, u_smem, dt_smem, z_smem, unit, L, DIM, N, CPG, NCK, G, LP, NPD,
                  NCHAIN, SEGT, BLOCK_D: gl.constexpr, NB: gl.constexpr, NS: gl.constexpr, T: gl.constexpr,
                  WARPS: gl.constexpr, BC_V: gl.constexpr, BC_TC: gl.constexpr, CKI: gl.constexpr, HAS_D: gl.constexpr,
                  HAS_Z: gl.constexpr, HAS_BIAS: gl.constexpr, SOFTPLUS: gl.constexpr, HAS_H0: gl.constexpr,
                  STORE_CK: gl.constexpr, EVEN: gl.constexpr, QL: gl.constexpr, SHIFT: gl.constexpr,
                  ASYNC: gl.constexpr, PERSIST: gl.constexpr, HAS_RESET: gl.constexpr):
        """One unit of `_ss_fwd_rows_kernel`: segment unit // NCHAIN of chain unit % NCHAIN."""
        LT: gl.constexpr = gl.BlockedLayout([1, T // NS], [32 // NS, NS], [WARPS, 1], [1, 0])  # [BLOCK_D, T]
        LS: gl.constexpr = gl.BlockedLayout([1, NB // NS], [32 // NS, NS], [WARPS, 1], [1, 0])  # [BLOCK_D, NB]
        SD: gl.constexpr = gl.SliceLayout(1, LS)  # [BLOCK_D] of the states
        LBC: gl.constexpr = gl.BlockedLayout([1, BC_V], [32 // BC_TC, BC_TC], [WARPS, 1], [1, 0])  # BC_V a load
        # u, delta, z and y move in LT where rows start on 16-byte boundaries, L a multiple of 8 (one 16-byte
        # access a thread and tensor). Else a thread's T / NS steps would be as many 2-byte accesses, each
        # warp-wide one touching 32 / NS rows; so they move with the lanes along the steps (a row's T steps in
        # one access) and change layout through shared memory. H200, B4 D5120 N16 bf16: L4093 1.03 -> 0.750 ms
        # (0.627 at L4096), L16381 3.86 -> 2.84 (thirtieth run); with QL 8, L4104 0.751 -> 0.659, L16376 2.843
        # -> 2.491 (thirty-first run).
        # With SHIFT (L not a multiple of 8), a program's channels are 8 apart, so that its rows start on the
        # same step modulo 8; its tiles then start sh steps before the rows (steps -sh .. -1 are masked: they
        # leave h as it is), on 16-byte boundaries. u, delta and z move in full-width accesses (`_tile_at`), y
        # too but in a row's first and last tiles, and a checkpoint, the state before step k·CKI, is stored from
        # inside its tile, before step sh. H200, B4 D5120 N16 bf16: L4093 0.750 -> 0.715 ms, L16381 2.85 -> 2.77,
        # D2560 L4093 0.589 -> 0.523 (thirty-second run); storing checkpoints, L4093 0.705 -> 0.646, L16381 2.630
        # -> 2.324, D2560 0.510 -> 0.454 (thirty-third run).
        LIO: gl.constexpr = LT if QL >= 8 or SHIFT else gl.BlockedLayout([1, 1], [32 // T, T], [WARPS, 1], [1, 0])
        DS: gl.constexpr = 8 if SHIFT else 1  # from one of a program's channels to the next
        L = _multiple(L, QL)
        seg = unit // NCHAIN
        chain = unit - seg * NCHAIN
        pid_b = (chain // NPD).to(gl.int64)
        pid_d = chain % NPD
        if SHIFT:
            d0 = (pid_d // 8) * (8 * BLOCK_D) + pid_d % 8
        else:
            d0 = pid_d * BLOCK_D
        t_idx = gl.expand_dims(gl.arange(0, T, layout=gl.SliceLayout(0, LT)), 0)  # [1, T]
        d_t = gl.expand_dims(d0 + DS * gl.arange(0, BLOCK_D, layout=gl.SliceLayout(1, LT)), 1)
        n_s = gl.expand_dims(gl.arange(0, NB, layout=gl.SliceLayout(0, LS)), 0)  # [1, NB]
        d_s = gl.expand_dims(d0 + DS * gl.arange(0, BLOCK_D, layout=SD), 1)  # [BLOCK_D, 1]
        bc_tile = (gl.expand_dims(gl.arange(0, T, layout=gl.SliceLayout(1, LBC)), 1) * (2 * NB)
                   + gl.expand_dims(gl.arange(0, 2 * NB, layout=gl.SliceLayout(0, LBC)), 0))
        dmask = d_t < DIM
        s_mask = (d_s < DIM) & (n_s < N)
        ch_s = pid_b * DIM + d_s.to(gl.int64)
        state_off = ch_s * N + n_s
        A2 = gl.load(A_ptr + d_s * N + n_s, mask=s_mask, other=0.0).to(gl.float32) * 1.4426950408889634
        if HAS_BIAS:
            bias = gl.load(bias_ptr + d_t, mask=dmask, other=0.0).to(gl.float32)
        if HAS_D:
            Dv = gl.load(D_ptr + d_t, mask=dmask, other=0.0).to(gl.float32)
        sh = 0  # tile c holds the rows' steps c·T - sh ..
        full = True  # all BLOCK_D channels are < DIM
        if SHIFT:
            sh = (((pid_b * DIM + d0) * L) % 8).to(gl.int32)
            full = d0 + DS * (BLOCK_D - 1) < DIM
        NT = gl.cdiv(L + sh, T)
        c0 = seg * SEGT
        c1 = gl.minimum(c0 + SEGT, NT)
        g = d0 // CPG
        bc_row = (pid_b * G + g) * LP
        if SHIFT:  # BC has 8 rows of zeros before step 0
            bc_row += 8 - sh
        bc_base = BC_ptr + bc_row * (2 * NB) + bc_tile
        t_io = gl.expand_dims(gl.arange(0, T, layout=gl.SliceLayout(0, LIO)), 0)  # [1, T]
        d_io = gl.expand_dims(d0 + DS * gl.arange(0, BLOCK_D, layout=gl.SliceLayout(1, LIO)), 1)
        dmask_io = d_io < DIM
        row = (pid_b * DIM + d_io.to(gl.int64)) * L
        if SHIFT:
            row = ((row - sh) // 8) * 8  # exact (the rows start sh past a multiple of 8); the compiler sees 8 | row
        off = row + t_io  # [BLOCK_D, T]
        if ASYNC:  # tiles c0 and c0 + 1, none past the unit's last (the copies are waited for at its end)
            for i in gl.static_range(2):
                ci = gl.minimum(c0 + i, c1 - 1)
                _copy_tile(u_ptr, dt_ptr, z_ptr, bc_base + gl.minimum(ci, NT - 1) * (T * 2 * NB), off + ci * T,
                           _io_mask(ci * T - sh, t_io, L, dmask_io, SHIFT), u_smem.index(i), dt_smem.index(i),
                           z_smem.index(i), bc_smem.index(i), HAS_Z, not EVEN)
        else:
            bc_smem.index(0).store(gl.load(bc_base + c0 * (T * 2 * NB)))
            bc_n = gl.load(bc_base + gl.minimum(c0 + 1, NT - 1) * (T * 2 * NB))
            if SHIFT:
                u_n, raw_n, z_n = _tile_at(u_ptr, dt_ptr, z_ptr, off + c0 * T, c0 * T - sh, t_io, L, dmask_io,
                                           HAS_Z)
            else:
                u_n, raw_n, z_n = _tile(u_ptr, dt_ptr, z_ptr, off + c0 * T, (t_io + c0 * T < L) & dmask_io, HAS_Z,
                                        EVEN)
        h = gl.zeros([BLOCK_D, NB], gl.float32, layout=LS)
        if HAS_H0:
            h = gl.load(h0_ptr + state_off, mask=s_mask & (seg == 0), other=0.0).to(gl.float32)
        if PERSIST:
            if seg > 0:  # the chain's previous segment leaves its state in hT
                _wait_turn(sync_ptr, chain, seg, lane)
                h = gl.load(hT_ptr + state_off, mask=s_mask, other=0.0, cache_modifier=".cg")
        if HAS_RESET:
            rs_row = rs_ptr + pid_b * (gl.cdiv(L, 32) + 1)
            rs_n = gl.load(rs_row + (c0 * T) // 32)
        _sync()
        for c in range(c0, c1):
            if ASYNC:
                k = (c - c0) % 3
                async_copy.wait_group(1)  # this tile's group is in
                _sync()  # and every thread's copies of it; the tile before, which all have finished, frees its buffer
                u = u_smem.index(k).load(LT).to(gl.float32)
                raw = dt_smem.index(k).load(LT).to(gl.float32)
                zz = u
                if HAS_Z:
                    zz = z_smem.index(k).load(LT).to(gl.float32)
                cn = gl.minimum(c + 2, c1 - 1)  # past the unit's end, its last tile again (from L2)
                kn = (c - c0 + 2) % 3
                _copy_tile(u_ptr, dt_ptr, z_ptr, bc_base + gl.minimum(cn, NT - 1) * (T * 2 * NB), off + cn * T,
                           _io_mask(cn * T - sh, t_io, L, dmask_io, SHIFT), u_smem.index(kn), dt_smem.index(kn),
                           z_smem.index(kn), bc_smem.index(kn), HAS_Z, not EVEN)
                rows = bc_smem.index(k)
            else:
                u = gl.convert_layout(u_n, LT).to(gl.float32)
                raw = gl.convert_layout(raw_n, LT).to(gl.float32)
                zz = gl.convert_layout(z_n, LT).to(gl.float32)
                rows = bc_smem.index((c - c0) % 2)
            if SHIFT:  # the steps in the rows (0 <= step < L, one unsigned compare); the groups read whole hold
                # the next or last row's values too
                inrow = (t_idx + (c * T - sh)).to(gl.uint32) < L.to(gl.uint32)
                u = gl.where(inrow, u, 0.0)
            if not ASYNC:
                tn = (c + 1) * T
                if EVEN:  # the last tile's prefetch reads the last tile again rather than past the end
                    tn = gl.minimum(tn, L - T)
                if SHIFT:
                    u_n, raw_n, z_n = _tile_at(u_ptr, dt_ptr, z_ptr, off + tn, tn - sh, t_io, L, dmask_io, HAS_Z)
                else:
                    u_n, raw_n, z_n = _tile(u_ptr, dt_ptr, z_ptr, off + tn, (t_io + tn < L) & dmask_io, HAS_Z, EVEN)
            ck_here = False  # this tile holds step k·CKI: at its start, or at step sh with SHIFT
            if STORE_CK:
                ck_here = (c * T) % CKI == 0
                ck_at = ck_ptr + (ch_s * NCK + (c * T) // CKI) * N + n_s
                if SHIFT:  # a shifted row's last tile can start at c·T = L or past it: no step k·CKI there
                    ck_here = ck_here & (c * T < L)
                else:
                    if ck_here:
                        gl.store(ck_at, h, mask=s_mask)
            if HAS_BIAS:
                raw += bias
            dt = raw
            if SOFTPLUS:
                dt = _softplus(raw)
            if SHIFT:  # a masked step leaves h as it is (masked channels' u, A and delta·u are 0)
                dt = gl.where(inrow, dt, 0.0)
            elif not EVEN:
                dt = gl.where((t_idx + c * T < L) & dmask, dt, 0.0)
            dtu = dt * u
            y = gl.zeros([BLOCK_D, T], gl.float32, layout=LT)
            if HAS_RESET:  # the tile's T steps' sequence starts (T divides 32), the same for every channel; the
                # next tile's word is read now, so that no tile waits for its own
                rs = rs_n >> ((c * T) % 32)
                rs_n = gl.load(rs_row + ((c + 1) * T) // 32)  # at most the spare word
            for t in gl.static_range(T):
                if STORE_CK and SHIFT:  # the state before step k·CKI, which is step t of this tile
                    if ck_here & (sh == t):
                        gl.store(ck_at, h, mask=s_mask)
                Bt = rows.slice(t, 1).slice(0, NB, dim=1).load(LS)  # [1, NB]
                Ct = rows.slice(t, 1).slice(NB, NB, dim=1).load(LS)
                e = _at(dt, t_idx, t, SD) * A2
                if HAS_RESET:
                    e += _restart(rs, t)
                h = gl.exp2(e) * h + _at(dtu, t_idx, t, SD) * Bt
                y = _set(y, t_idx, t, gl.sum(h * Ct, axis=1), LT)
            if HAS_D:
                y += Dv * u
            if HAS_Z:
                y = y * zz / (1.0 + gl.exp2(-zz * 1.4426950408889634))
            y = gl.convert_layout(y.to(y_ptr.dtype.element_ty), LIO)
            if EVEN:
                gl.store(y_ptr + off + c * T, y)
            elif SHIFT:
                # a branch, not a second store masked step by step every tile: 0.715 against 0.740 ms (L4093)
                if full & (c * T >= sh) & (c * T + T - sh <= L):
                    gl.store(y_ptr + off + c * T, y)
                else:
                    inrow_io = (t_io + (c * T - sh)).to(gl.uint32) < L.to(gl.uint32)
                    gl.store(y_ptr + off + c * T, y, mask=inrow_io & dmask_io)
            else:
                gl.store(y_ptr + off + c * T, y, mask=(t_io + c * T < L) & dmask_io)
            if not ASYNC:
                bc_smem.index((c - c0 + 1) % 2).store(bc_n)  # its last reads were the tile before this one
                bc_n = gl.load(bc_base + gl.minimum(c + 2, NT - 1) * (T * 2 * NB))
                _sync()
        if ASYNC:  # the copies started past the unit's last tile land before its buffers are used again
            async_copy.wait_group(0)
            _sync()
        gl.store(hT_ptr + state_off, h, mask=s_mask)
        if PERSIST:  # a later segment of the chain waits for this state. With SHIFT, even past the row's last tile:
            # the launcher counts a chain's units by the longest shifted row (L + 7 steps), so a shorter row can
            # end with an empty unit, which waits for this flag all the same (it deadlocked, when this pass was
            # skipped at c1 = NT: B4 D5120 L 2047 with 8- or 16-tile units).
            _pass_on(sync_ptr, chain, seg)


    @gluon.jit
    def _col(x3, t3, t: gl.constexpr):
        """Step t of a [BLOCK_D, T, K] tile whose T steps are all in each thread: [BLOCK_D, K] (the select
        folds away: the register holding step t is known at compile time)."""
        return gl.sum(gl.where(t3 == t, x3, _neg_zero(x3)), axis=1)

    @gluon.jit
    def _put(x3, t3, t: gl.constexpr, v):
        """The tile x3 [BLOCK_D, T, K] with step t set to v [BLOCK_D, K] (a move, as in `_col`)."""
        return gl.where(t3 == t, gl.expand_dims(v, 1), x3)

    @gluon.jit
    def _xor_shfl(x, m):
        """x of the lane whose index is this thread's xor m (an int32 tensor shaped as x): one shuffle a register."""
        return gl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, $2, 0x1f, -1;", "=f,f,r", [x, m],
                                         dtype=gl.float32, is_pure=True, pack=1)

    @gluon.jit
    def _halve(a, b, bit, m: gl.constexpr):
        """One level of a reduce-scatter over lane pairs (lane, lane xor m): the thread with `bit` clear keeps a
        and sends b, its mate the reverse; each adds what it receives."""
        return gl.where(bit, b, a) + _xor_shfl(gl.where(bit, a, b), gl.full(a.shape, m, gl.int32, a.type.layout))

    @gluon.jit
    def _pick(x3, r3, r: gl.constexpr):
        """Register r of each thread's last axis, all in-thread, of a 3-D tile: the tile less that axis (the
        select folds away: adding -0.0 is exact)."""
        return gl.sum(gl.where(r3 == r, x3, _neg_zero(x3)), axis=2)

    @gluon.jit
    def _own(x, BLOCK_D: gl.constexpr, NS: gl.constexpr, NBS: gl.constexpr, LS3: gl.constexpr):
        """x [BLOCK_D, NB] (a step's states) summed over each thread's own NBS states, no shuffle: [BLOCK_D, NS]."""
        return gl.sum(gl.convert_layout(gl.reshape(x, [BLOCK_D, NS, NBS]), LS3, assert_trivial=True), axis=2)

    @gluon.jit
    def _keep(p3, r3, t: gl.constexpr, v):
        """The partials p3 [BLOCK_D, NS, T] (all T steps in each thread) with step t set to v [BLOCK_D, NS]."""
        v = gl.convert_layout(v, gl.SliceLayout(2, p3.type.layout), assert_trivial=True)
        return gl.where(r3 == t, gl.expand_dims(v, 2), p3)

    @gluon.jit
    def _scatter_steps(p3, r3, s0, s1, BLOCK_D: gl.constexpr, T: gl.constexpr, LT: gl.constexpr):
        """Each step's sum over a channel's NS = 4 lanes of their partials p3 [BLOCK_D, NS, T], as a [BLOCK_D, T]
        tile in LT (lane s of a channel holds steps 2s and 2s + 1): a reduce-scatter, 4 shuffles by the lane's
        s bit 1 (s1; it keeps steps 4-7 where set), then 2 by bit 0 (s0). A butterfly each step took 2 a step,
        16 a sub-tile."""
        gl.static_assert(T == 8 and p3.shape[1] == 4, "8 steps over a channel's 4 lanes")
        w0 = _halve(_pick(p3, r3, 0), _pick(p3, r3, 4), s1, 2 * BLOCK_D)
        w1 = _halve(_pick(p3, r3, 1), _pick(p3, r3, 5), s1, 2 * BLOCK_D)
        w2 = _halve(_pick(p3, r3, 2), _pick(p3, r3, 6), s1, 2 * BLOCK_D)
        w3 = _halve(_pick(p3, r3, 3), _pick(p3, r3, 7), s1, 2 * BLOCK_D)
        tile = gl.join(_halve(w0, w2, s0, BLOCK_D), _halve(w1, w3, s0, BLOCK_D))  # [BLOCK_D, NS, 2]
        return gl.convert_layout(gl.reshape(tile, [BLOCK_D, T]), LT, assert_trivial=True)

    @gluon.jit
    def _dbc_sum(pb, pc, ptrs, b0, b1, b2, BLOCK_D: gl.constexpr, NS: gl.constexpr, NBS: gl.constexpr,
                 LS3: gl.constexpr):
        """Add a step's dB and dC partials pb, pc [BLOCK_D, NB] (this warp's 8 channels; thread (d, s) holds
        states s·NBS ..) summed over the channels to dB/dC: a reduce-scatter over the channel bits of the lane
        (three levels of shuffles: dB or dC by bit 0, then halves of the thread's states by bits 1 and 2), then
        one float32 atomic add a thread at ptrs [BLOCK_D, NS] (its state and kind; b0-b2 the lane's bits)."""
        gl.static_assert(BLOCK_D == 8 and (NBS == 2 or NBS == 4), "8 channels a warp, 2 or 4 states a thread")
        pb = gl.convert_layout(gl.reshape(pb, [BLOCK_D, NS, NBS]), LS3, assert_trivial=True)
        pc = gl.convert_layout(gl.reshape(pc, [BLOCK_D, NS, NBS]), LS3, assert_trivial=True)
        i3 = gl.expand_dims(gl.expand_dims(gl.arange(0, NBS, layout=gl.SliceLayout(0, gl.SliceLayout(1, LS3))), 0), 1)
        w0 = _halve(_pick(pb, i3, 0), _pick(pc, i3, 0), b0, 1)
        w1 = _halve(_pick(pb, i3, 1), _pick(pc, i3, 1), b0, 1)
        if NBS == 4:
            w2 = _halve(_pick(pb, i3, 2), _pick(pc, i3, 2), b0, 1)
            w3 = _halve(_pick(pb, i3, 3), _pick(pc, i3, 3), b0, 1)
            s = _halve(_halve(w0, w1, b1, 2), _halve(w2, w3, b1, 2), b2, 4)
            gl.atomic_add(ptrs, s, sem="relaxed")
        else:  # NBS 2: two levels leave one value a thread; the third sums it with lane xor 4's
            s = _halve(w0, w1, b1, 2)
            s += _xor_shfl(s, gl.full(s.shape, 4, gl.int32, s.type.layout))
            gl.atomic_add(ptrs, s, mask=~b2, sem="relaxed")

    @gluon.jit
    def _bwd_load(u_ptr, dt_ptr, z_ptr, dy_ptr, bc_ptrs, off, mask, HAS_Z: gl.constexpr):
        """A sub-tile's inputs as stored: u, delta, z (u without z), dy [BLOCK_D, T] and its B/C block."""
        u = gl.load(u_ptr + off, mask=mask, other=0.0)
        raw = gl.load(dt_ptr + off, mask=mask, other=0.0)
        dy = gl.load(dy_ptr + off, mask=mask, other=0.0)
        zz = u
        if HAS_Z:
            zz = gl.load(z_ptr + off, mask=mask, other=0.0)
        return u, raw, zz, dy, gl.load(bc_ptrs)

    @gluon.jit
    def _bwd_delta(raw, bias, mask, HAS_BIAS: gl.constexpr, SOFTPLUS: gl.constexpr):
        """delta (bias and softplus applied, 0 where masked) and delta before softplus, float32."""
        raw = raw.to(gl.float32)
        if HAS_BIAS:
            raw += bias
        dt = raw
        if SOFTPLUS:
            dt = _softplus(raw)
        return gl.where(mask, dt, 0.0), raw

    @gluon.jit
    def _ss_bwd_rows_kernel(u_ptr, dt_ptr, A_ptr, BC_ptr, D_ptr, z_ptr, bias_ptr, ck_ptr, dy_ptr, dhT_ptr,
                            scr_ptr, du_ptr, ddt_ptr, dz_ptr, dA_ptr, dBC_ptr, dD_ptr, dbias_ptr, dh0_ptr, sync_ptr,
                            rs_ptr, L, DIM, N, CPG, NCK, G, LP, NPD, NCHAIN, NUNITS, SEGC,
                            BLOCK_D: gl.constexpr, NB: gl.constexpr, NS: gl.constexpr, T: gl.constexpr,
                            BC_V: gl.constexpr, BC_TC: gl.constexpr, CKI: gl.constexpr,
                            HAS_D: gl.constexpr, HAS_Z: gl.constexpr, HAS_BIAS: gl.constexpr,
                            SOFTPLUS: gl.constexpr, HAS_DHT: gl.constexpr, QL: gl.constexpr, PERSIST: gl.constexpr,
                            HAS_RESET: gl.constexpr):
        """A chain is (channel block, batch row) over all L steps, NCHAIN = NPD · batch of them, walked last
        step first. Without PERSIST, program (i, b) runs chain (i, b) whole (grid (NPD, batch)). With
        it, as the forward's `_ss_fwd_rows_kernel`: chains are cut into units of SEGC chunks, the last first,
        and persistent programs take units from a counter (sync [1 + NCHAIN] int32 zeros); a unit hands
        d(state), dA and the dD, d delta_bias sums on to the next through dh0, dA, dD, dbias and its chain's
        flag. Buffers as `_bwd_unit`."""
        SBC: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
        bc_smem = gl.allocate_shared_memory(gl.float32, [T, 2 * NB], SBC)
        if PERSIST:
            LW: gl.constexpr = gl.BlockedLayout([1], [32], [1], [0])
            lane = gl.arange(0, 32, layout=LW)
            unit = _take(sync_ptr, lane)
            while unit < NUNITS:
                _bwd_unit(u_ptr, dt_ptr, A_ptr, BC_ptr, D_ptr, z_ptr, bias_ptr, ck_ptr, dy_ptr, dhT_ptr, scr_ptr,
                          du_ptr, ddt_ptr, dz_ptr, dA_ptr, dBC_ptr, dD_ptr, dbias_ptr, dh0_ptr, sync_ptr, rs_ptr, lane,
                          bc_smem, unit, L, DIM, N, CPG, NCK, G, LP, NPD, NCHAIN, SEGC,
                          BLOCK_D, NB, NS, T, BC_V, BC_TC, CKI, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, HAS_DHT, QL, True,
                          HAS_RESET)
                unit = _take(sync_ptr, lane)
        else:
            _bwd_unit(u_ptr, dt_ptr, A_ptr, BC_ptr, D_ptr, z_ptr, bias_ptr, ck_ptr, dy_ptr, dhT_ptr, scr_ptr,
                      du_ptr, ddt_ptr, dz_ptr, dA_ptr, dBC_ptr, dD_ptr, dbias_ptr, dh0_ptr, sync_ptr, rs_ptr, 0,
                      bc_smem, 0, L, DIM, N, CPG, NCK, G, LP, NPD, NCHAIN, SEGC,
                      BLOCK_D, NB, NS, T, BC_V, BC_TC, CKI, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, HAS_DHT, QL, False,
                      HAS_RESET)

    @gluon.jit
    def _bwd_unit(u_ptr, dt_ptr, A_ptr, BC_ptr, D_ptr, z_ptr, bias_ptr, ck_ptr, dy_ptr, dhT_ptr, scr_ptr,
                  du_ptr, ddt_ptr, dz_ptr, dA_ptr, dBC_ptr, dD_ptr, dbias_ptr, dh0_ptr, sync_ptr, rs_ptr, lane,
                  bc_smem, unit, L, DIM, N, CPG, NCK, G, LP, NPD, NCHAIN, SEGC,
                  BLOCK_D: gl.constexpr, NB: gl.constexpr, NS: gl.constexpr, T: gl.constexpr,
                  BC_V: gl.constexpr, BC_TC: gl.constexpr, CKI: gl.constexpr,
                  HAS_D: gl.constexpr, HAS_Z: gl.constexpr, HAS_BIAS: gl.constexpr,
                  SOFTPLUS: gl.constexpr, HAS_DHT: gl.constexpr, QL: gl.constexpr, PERSIST: gl.constexpr,
                  HAS_RESET: gl.constexpr):
        """One unit of `_ss_bwd_rows_kernel`, one warp: with PERSIST segment unit // NCHAIN (counted from the
        end) of chain unit % NCHAIN, else the program's whole chain; in the forward's layout.

        u, delta, z, dy, du, d delta, dz [B, D, L] contiguous; BC [B, G, LP, 2, NB] float32 as the forward's;
        checkpoints ck [B, D, NCK, N] (the state before every CKI-th step); dhT, dh0, dA [B, D, N] (dA per
        batch); dD, d delta_bias [B, D] per batch; dBC [B, G, LP, NB, 2] float32 zeros (dB then dC of each
        state, summed into); scr [B, D, CKI / T, NB] float32 scratch.

        Checkpoint chunks are walked last first. A first pass recomputes the state entering each T-step
        sub-tile into the scratch (each thread reads back only what it wrote in the same unit, so a unit of the
        chain on another SM leaves nothing stale). A second walks the sub-tiles in reverse: it recomputes their
        T states into registers ([BLOCK_D, T, NB]: all T steps of a state in its thread, so a step is a select
        at a compile-time register index), then runs the adjoint
        k_t = C_t g_t + exp(delta_{t+1} A) k_{t+1} last step first. Sums over the states (du, d delta, y for
        dz): each thread keeps the sums over its own states for all T steps, and one reduce-scatter over the
        channel's NS lanes a sub-tile leaves each lane its T / NS steps (`_scatter_steps`). dB and dC, sums
        over the channels, are a reduce-scatter of a step's [BLOCK_D, NB, 2] partials over the channel bits of
        the lanes, then one float32 atomic add a thread (`_dbc_sum`); in shared memory, these sums made the
        loop wait on it (the L1 83% busy, short-scoreboard stalls the first), and the shuffles took the
        backward 8% less time. The steps' delta, delta·u and g are copied once a sub-tile (through shared
        memory) into tiles that hold all T steps in each of a channel's lanes (LTR), so the loops take a step's
        value from a register rather than by a butterfly: 184 -> 104 shuffles a sub-tile, the backward 3-5%
        faster (twenty-ninth run). The reduce-scatter of the sums over the states (6 shuffles a sum a sub-tile,
        where a butterfly a step took 16) took 104 -> 74: the backward 6.3% faster where L divides by 16, 1-2%
        slower on rows of 2-byte accesses. QL 2 (L even) gives a thread's 2 steps of a row one access: L4094
        3.298 -> 2.836 ms, L4104 3.080 -> 2.727; only odd L keep the 2-byte accesses (thirty-first run).
        HAS_RESET: rs as the forward's (packed sequences); a step that starts a sequence has a decay of 0 in the
        recomputed states and in the adjoint."""
        # lanes: channel fastest (lane = channel + BLOCK_D · half), so a quarter warp is 8 channels
        L3: gl.constexpr = gl.BlockedLayout([1, T, NB // NS], [BLOCK_D, 1, NS], [1, 1, 1], [0, 2, 1])
        LS: gl.constexpr = gl.SliceLayout(1, L3)  # [BLOCK_D, NB]: a step's states
        SD: gl.constexpr = gl.SliceLayout(1, LS)  # [BLOCK_D] of the states
        LT: gl.constexpr = gl.BlockedLayout([1, T // NS], [BLOCK_D, NS], [1, 1], [0, 1])  # [BLOCK_D, T] I/O
        # [BLOCK_D, T] with all T steps in each of a channel's NS lanes (replicated): a step is then a register known at
        # compile time, where in LT it takes a butterfly of shuffles (`_at`)
        LTR: gl.constexpr = gl.BlockedLayout([1, T], [BLOCK_D, NS], [1, 1], [0, 1])
        LBC: gl.constexpr = gl.BlockedLayout([1, BC_V], [32 // BC_TC, BC_TC], [1, 1], [1, 0])
        NBS: gl.constexpr = NB // NS
        LS3: gl.constexpr = gl.BlockedLayout([1, 1, NBS], [BLOCK_D, NS, 1], [1, 1, 1], [2, 0, 1])  # [BLOCK_D, NS, NBS]
        S2: gl.constexpr = gl.SliceLayout(2, LS3)  # [BLOCK_D, NS]: one value a thread
        LP3: gl.constexpr = gl.BlockedLayout([1, 1, T], [BLOCK_D, NS, 1], [1, 1, 1], [2, 0, 1])  # [BLOCK_D, NS, T]
        LOG2E: gl.constexpr = 1.4426950408889634
        NSUB: gl.constexpr = CKI // T
        L = _multiple(L, QL)  # with QL 2 or 16, a thread's 2 steps of a row move in one access
        NC = gl.cdiv(L, CKI)
        if PERSIST:
            seg = unit // NCHAIN
            chain = unit - seg * NCHAIN
            pid_b = (chain // NPD).to(gl.int64)
            pid_d = chain % NPD
            c_hi = NC - seg * SEGC  # the unit's chunks: [c_lo, c_hi), last first
            c_lo = gl.maximum(c_hi - SEGC, 0)
        else:  # the grid is (channel block, batch), which ptxas schedules ~1% faster than chains taken apart
            seg = 0
            pid_b = gl.program_id(1).to(gl.int64)
            pid_d = gl.program_id(0)
            c_hi = NC
            c_lo = 0

        t_lt = gl.expand_dims(gl.arange(0, T, layout=gl.SliceLayout(0, LT)), 0)  # [1, T]
        t_r = gl.expand_dims(gl.arange(0, T, layout=gl.SliceLayout(0, LTR)), 0)  # [1, T]
        d1 = pid_d * BLOCK_D + gl.arange(0, BLOCK_D, layout=gl.SliceLayout(1, LT))  # [BLOCK_D]
        d_lt = gl.expand_dims(d1, 1)
        t3 = gl.expand_dims(gl.expand_dims(gl.arange(0, T, layout=gl.SliceLayout(0, gl.SliceLayout(2, L3))), 0), 2)
        n_s = gl.expand_dims(gl.arange(0, NB, layout=gl.SliceLayout(0, LS)), 0)  # [1, NB]
        d_s = gl.expand_dims(pid_d * BLOCK_D + gl.arange(0, BLOCK_D, layout=gl.SliceLayout(1, LS)), 1)
        dmask = d_lt < DIM
        s_mask = (d_s < DIM) & (n_s < N)
        scr_mask = (d_s < DIM) & (n_s < NB)
        ch_s = pid_b * DIM + d_s.to(gl.int64)
        state_off = ch_s * N + n_s
        scr = scr_ptr + ch_s * (NSUB * NB) + n_s
        A2 = gl.load(A_ptr + d_s * N + n_s, mask=s_mask, other=0.0).to(gl.float32) * LOG2E
        bias = 0.0
        if HAS_BIAS:
            bias = gl.load(bias_ptr + d_lt, mask=dmask, other=0.0).to(gl.float32)
        Dv = 0.0
        if HAS_D:
            Dv = gl.load(D_ptr + d_lt, mask=dmask, other=0.0).to(gl.float32)
        q = gl.zeros([BLOCK_D, NB], gl.float32, layout=LS)  # dL/d(the state entering the step after)
        if HAS_DHT:
            q = gl.load(dhT_ptr + state_off, mask=s_mask & (seg == 0), other=0.0).to(gl.float32)
        dA_acc = gl.zeros([BLOCK_D, NB], gl.float32, layout=LS)
        dD_acc = gl.zeros([BLOCK_D, T], gl.float32, layout=LT)
        dbias_acc = gl.zeros([BLOCK_D, T], gl.float32, layout=LT)
        if PERSIST:
            if seg > 0:  # the chain's later segment leaves its sums in dh0, dA, dD, dbias
                _wait_turn(sync_ptr, chain, seg, lane)
                q = gl.load(dh0_ptr + state_off, mask=s_mask, other=0.0, cache_modifier=".cg")
                dA_acc = gl.load(dA_ptr + state_off, mask=s_mask, other=0.0, cache_modifier=".cg")
                if HAS_D:
                    dD_acc = gl.where(t_lt == 0, gl.expand_dims(gl.load(dD_ptr + pid_b * DIM + d1, mask=d1 < DIM,
                                                                        other=0.0, cache_modifier=".cg"), 1), 0.0)
                if HAS_BIAS:
                    dbias_acc = gl.where(t_lt == 0, gl.expand_dims(gl.load(dbias_ptr + pid_b * DIM + d1, mask=d1 < DIM,
                                                                           other=0.0, cache_modifier=".cg"), 1), 0.0)

        bc_tile = (gl.expand_dims(gl.arange(0, T, layout=gl.SliceLayout(1, LBC)), 1) * (2 * NB)
                   + gl.expand_dims(gl.arange(0, 2 * NB, layout=gl.SliceLayout(0, LBC)), 0))
        g = (pid_d * BLOCK_D) // CPG
        bc_base = BC_ptr + ((pid_b * G + g) * LP) * (2 * NB) + bc_tile
        # dB and dC: after the reduce-scatter over the channels (`_dbc_sum`), thread (d, s) holds state
        # s·NBS + 2·d2 + d1 (NB 16; s·NBS + d1 at NB 8), of dB where d0 = 0, of dC where d0 = 1
        # (d = 4·d2 + 2·d1 + d0)
        dd = gl.expand_dims(gl.arange(0, BLOCK_D, layout=gl.SliceLayout(1, S2)), 1)  # [BLOCK_D, 1]
        ss = gl.expand_dims(gl.arange(0, NS, layout=gl.SliceLayout(0, S2)), 0)  # [1, NS]
        b0 = (dd % 2 + ss * 0) == 1  # [BLOCK_D, NS]
        b1 = ((dd // 2) % 2 + ss * 0) == 1
        b2 = ((dd // 4) % 2 + ss * 0) == 1
        if NBS == 4:
            n_red = ss * NBS + 2 * (dd // 4) + (dd // 2) % 2
        else:
            n_red = ss * NBS + (dd // 2) % 2
        dbc_lane = dBC_ptr + ((pid_b * G + g) * LP) * (2 * NB) + n_red * 2 + dd % 2  # [BLOCK_D, NS]
        row = (pid_b * DIM + d_lt.to(gl.int64)) * L + t_lt  # [BLOCK_D, T]
        # sums over the states: each thread's partials of all T steps (`_keep`), then one reduce-scatter a sub-tile
        r3 = gl.expand_dims(gl.expand_dims(gl.arange(0, T, layout=gl.SliceLayout(0, gl.SliceLayout(1, LP3))), 0), 1)
        sp = gl.expand_dims(gl.arange(0, NS, layout=gl.SliceLayout(0, gl.SliceLayout(2, LP3))), 0)  # [1, NS]
        dp = gl.expand_dims(gl.arange(0, BLOCK_D, layout=gl.SliceLayout(1, gl.SliceLayout(2, LP3))), 1)
        sb0 = (sp % 2 + dp * 0) == 1  # [BLOCK_D, NS]: bits 0 and 1 of the thread's place in its channel
        sb1 = (sp // 2 + dp * 0) == 1

        # each sub-tile's inputs are read one visit ahead (pass 1 walks a chunk's sub-tiles up, pass 2 down)
        sn = (c_hi - 1) * CKI
        u_n, raw_n, z_n, dy_n, bc_n = _bwd_load(u_ptr, dt_ptr, z_ptr, dy_ptr, bc_base + sn * (2 * NB), row + sn,
                                                (t_lt + sn < L) & dmask, HAS_Z)
        bc_smem.store(bc_n)
        _sync()
        w0 = 0
        w1 = 0
        if HAS_RESET:  # a chunk's sequence starts, its two words read a chunk ahead
            rs_row = rs_ptr + pid_b * (gl.cdiv(L, 32) + 1)
            w0_n = gl.load(rs_row + ((c_hi - 1) * CKI) // 32)
            w1_n = gl.load(rs_row + ((c_hi - 1) * CKI) // 32 + 1)
        for cr in range(0, c_hi - c_lo):
            c = c_hi - 1 - cr
            base = c * CKI
            if HAS_RESET:
                w0 = w0_n
                w1 = w1_n
                w0_n = gl.load(rs_row + (gl.maximum(c - 1, 0) * CKI) // 32)
                w1_n = gl.load(rs_row + (gl.maximum(c - 1, 0) * CKI) // 32 + 1)
            nsub = gl.minimum(NSUB, gl.cdiv(L - base, T))
            # pass 1: the state entering each sub-tile of the chunk, from its checkpoint (the last sub-tile's
            # states are pass 2's to recompute: walking it here too would cost 1/8 of this pass for nothing)
            h = gl.load(ck_ptr + (ch_s * NCK + c) * N + n_s, mask=s_mask, other=0.0)
            for j in range(0, nsub - 1):
                s0 = base + j * T
                gl.store(scr + j * NB, h, mask=scr_mask)
                u = u_n.to(gl.float32)
                dt, raw = _bwd_delta(raw_n, bias, (t_lt + s0 < L) & dmask, HAS_BIAS, SOFTPLUS)
                sn = s0 + T  # the last reads pass 2's first
                u_n, raw_n, z_n, dy_n, bc_n = _bwd_load(u_ptr, dt_ptr, z_ptr, dy_ptr, bc_base + sn * (2 * NB),
                                                        row + sn, (t_lt + sn < L) & dmask, HAS_Z)
                dtu_r = gl.convert_layout(dt * u, LTR)
                dt_r = gl.convert_layout(dt, LTR)
                rs = _sub_starts(w0, w1, base, s0, HAS_RESET)
                for t in gl.static_range(T):
                    Bt = bc_smem.slice(t, 1).slice(0, NB, dim=1).load(LS)
                    e = _at(dt_r, t_r, t, SD) * A2
                    if HAS_RESET:
                        e += _restart(rs, t)
                    h = gl.exp2(e) * h + _at(dtu_r, t_r, t, SD) * Bt
                _sync()
                bc_smem.store(bc_n)
                _sync()
            gl.store(scr + (nsub - 1) * NB, h, mask=scr_mask)
            # pass 2: the sub-tiles last first
            for jr in range(0, nsub):
                j = nsub - 1 - jr
                s0 = base + j * T
                m2 = (t_lt + s0 < L) & dmask
                u = u_n.to(gl.float32)
                dt, raw = _bwd_delta(raw_n, bias, m2, HAS_BIAS, SOFTPLUS)
                zz = z_n.to(gl.float32)
                gy = dy_n.to(gl.float32)
                sn = s0 - T
                if j == 0:  # then the next chunk's pass 1 begins at its first sub-tile
                    sn = gl.maximum(base - CKI, 0)
                u_n, raw_n, z_n, dy_n, bc_n = _bwd_load(u_ptr, dt_ptr, z_ptr, dy_ptr, bc_base + sn * (2 * NB),
                                                        row + sn, (t_lt + sn < L) & dmask, HAS_Z)
                h = gl.load(scr + j * NB, mask=scr_mask, other=0.0)
                dtu = dt * u
                dt_r = gl.convert_layout(dt, LTR)
                dtu_r = gl.convert_layout(dtu, LTR)
                hs = gl.zeros([BLOCK_D, T, NB], gl.float32, layout=L3)
                yp = gl.zeros([BLOCK_D, NS, T], gl.float32, layout=LP3)
                rs = _sub_starts(w0, w1, base, s0, HAS_RESET)
                for t in gl.static_range(T):
                    Bt = bc_smem.slice(t, 1).slice(0, NB, dim=1).load(LS)
                    e = _at(dt_r, t_r, t, SD) * A2
                    if HAS_RESET:
                        e += _restart(rs, t)
                    h = gl.exp2(e) * h + _at(dtu_r, t_r, t, SD) * Bt
                    hs = _put(hs, t3, t, h)
                    if HAS_Z:
                        Ct = bc_smem.slice(t, 1).slice(NB, NB, dim=1).load(LS)
                        yp = _keep(yp, r3, t, _own(h * Ct, BLOCK_D, NS, NBS, LS3))
                if HAS_Z:
                    ypre = _scatter_steps(yp, r3, sb0, sb1, BLOCK_D, T, LT)
                    if HAS_D:
                        ypre += Dv * u
                    sz = 1.0 / (1.0 + gl.exp2(-zz * LOG2E))
                    gl.store(dz_ptr + row + s0, (gy * ypre * sz * (1.0 + zz * (1.0 - sz))).to(dz_ptr.dtype.element_ty),
                             mask=m2)
                    gy = gy * zz * sz
                _sync()  # B and C are read again below rather than held (held, the loop spills at 168 registers)
                gy_r = gl.convert_layout(gy, LTR)
                kBp = gl.zeros([BLOCK_D, NS, T], gl.float32, layout=LP3)
                ddp = gl.zeros([BLOCK_D, NS, T], gl.float32, layout=LP3)
                for i in gl.static_range(T):  # step T - 1 - i
                    Bt = bc_smem.slice(T - 1 - i, 1).slice(0, NB, dim=1).load(LS)
                    Ct = bc_smem.slice(T - 1 - i, 1).slice(NB, NB, dim=1).load(LS)
                    h_t = _col(hs, t3, T - 1 - i)
                    d_t = _at(dt_r, t_r, T - 1 - i, SD)
                    du_t = _at(dtu_r, t_r, T - 1 - i, SD)
                    g_t = _at(gy_r, t_r, T - 1 - i, SD)
                    k = Ct * g_t + q
                    Gm = k * (h_t - du_t * Bt)  # dL/d(exp(delta A)) · exp(delta A) h_{t-1}
                    dA_acc += Gm * d_t
                    ddp = _keep(ddp, r3, T - 1 - i, _own(Gm * A2, BLOCK_D, NS, NBS, LS3))
                    kBp = _keep(kBp, r3, T - 1 - i, _own(k * Bt, BLOCK_D, NS, NBS, LS3))
                    _dbc_sum(k * du_t, h_t * g_t, dbc_lane + (s0 + T - 1 - i) * (2 * NB), b0, b1, b2,
                             BLOCK_D, NS, NBS, LS3)
                    e = d_t * A2
                    if HAS_RESET:
                        e += _restart(rs, T - 1 - i)
                    q = gl.exp2(e) * k
                _sync()
                bc_smem.store(bc_n)  # this sub-tile's last reads of it were before the barrier
                kB = _scatter_steps(kBp, r3, sb0, sb1, BLOCK_D, T, LT)
                dds = _scatter_steps(ddp, r3, sb0, sb1, BLOCK_D, T, LT)
                ddt = dds * 0.6931471805599453 + kB * u  # A2 is A·log2 e
                du = kB * dt
                if HAS_D:
                    du += Dv * gy
                    dD_acc += u * gy
                if SOFTPLUS:
                    ddt = ddt / (1.0 + gl.exp2(-raw * LOG2E))
                ddt = gl.where(m2, ddt, 0.0)
                dbias_acc += ddt
                gl.store(du_ptr + row + s0, du.to(du_ptr.dtype.element_ty), mask=m2)
                gl.store(ddt_ptr + row + s0, ddt.to(ddt_ptr.dtype.element_ty), mask=m2)
                _sync()  # the next sub-tile's B/C are in place
        gl.store(dh0_ptr + state_off, q, mask=s_mask)
        gl.store(dA_ptr + state_off, dA_acc, mask=s_mask)
        if HAS_D:
            gl.store(dD_ptr + pid_b * DIM + d1, gl.sum(dD_acc, axis=1), mask=d1 < DIM)
        if HAS_BIAS:
            gl.store(dbias_ptr + pid_b * DIM + d1, gl.sum(dbias_acc, axis=1), mask=d1 < DIM)
        if PERSIST:
            if c_lo > 0:  # the chain's earlier segment waits for these sums
                _pass_on(sync_ptr, chain, seg)


def _pack_bc(B4, C4, rows: int, nb: int, front: int = 0):
    """B4, C4 [B, G, N, L] (any strides) as one float32 [B, G, rows, 2, NB]: `front` rows of zeros, then each
    step's B then C row, zero past N and past L."""
    batch, groups, N, L = B4.shape
    bc = torch.zeros(batch, groups, rows, 2, nb, device=B4.device, dtype=torch.float32)
    bc[:, :, front:front + L, 0, :N] = B4.transpose(2, 3)
    bc[:, :, front:front + L, 1, :N] = C4.transpose(2, 3)
    return bc


def _groups_fit(dim: int, groups: int, block_d: int) -> bool:
    """Whether a program's block_d channels share one B/C group (it reads one group's B and C)."""
    return groups == 1 or (dim // groups) % block_d == 0


def _bc_layout(nb: int) -> dict:
    """The constexprs of the [T, 2·NB] B/C block's load: 4 floats a thread, a row over 2·NB / 4 threads."""
    return dict(BC_V=min(4, 2 * nb), BC_TC=min(32, max(1, 2 * nb // 4)))


def _sms(device) -> int:
    """Streaming multiprocessors of a CUDA device (132, an H100's or H200's, for a tensor elsewhere)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132


def _uneven(rounds: float, least: float) -> bool:
    """Whether work of `rounds` rounds (programs a scheduler, waves), run as whole rounds, is worth cutting into
    units for persistent programs: more than `least` rounds, and the last one ≥ 10% short of full."""
    return rounds > least and math.ceil(rounds) / rounds >= 1.1


def _persist(nchain: int, sms: int) -> bool:
    """Whether the forward's chains are cut into units taken by persistent programs: where one program a chain
    would give the schedulers uneven numbers of programs. Over 2 programs a scheduler, where the last round
    is 10% short or more (`_uneven`); from 1 to 2, only where it is 25% short or more, since a scheduler left
    with one program runs it faster than two, so the spread costs less. H200, B4 L4096 N16 bf16, one
    program a chain -> persistent, ms (thirty-third run): D2560 (1.21 a scheduler) 0.423 -> 0.383, D3072
    (1.45) 0.427 -> 0.414, D3584 (1.70, left alone) 0.426 -> 0.441, D4096 (1.94, left alone) 0.429 -> 0.462,
    D6144 (2.91, left alone) 0.641 -> 0.661; B2 L8192 D5120 (1.21) 0.827 -> 0.707."""
    rounds = nchain / (4 * sms)
    return _uneven(rounds, 2) or (rounds > 1 and math.ceil(rounds) / rounds >= 1.25)


def _programs(nchain: int, sms: int) -> int:
    """The persistent forward's programs: as many a scheduler as the chains fill whole (2 at least: one alone
    waits on its loads), so fewer than the chains where those are over 2 a scheduler. A unit's previous
    segment was then taken a round of programs or more before it, and is most likely done when its flag is
    read. H200, B4 N16 bf16, as many programs as chains -> this, ms (thirty-third run): L4096 D5120 0.590 ->
    0.560, L16384 2.292 -> 2.015, L2048 0.314 -> 0.294, D4608 0.542 -> 0.506, D7168 0.797 -> 0.738 (with 2
    a scheduler 0.774); 1.5 a scheduler was slower everywhere (L4096 D5120 0.646)."""
    per_scheduler = max(2, nchain // (4 * sms))
    return min(nchain, per_scheduler * 4 * sms)


def _tile_for(N: int):
    """(NS, T, warps, BLOCK_D) for N states a channel."""
    ns, T, warps = TILE
    ns = min(ns, next_pow2(N))
    return ns, T, warps, 32 * warps // ns


def _shift(batch: int, dim: int, L: int, groups: int, bd: int) -> bool:
    """Whether the forward's programs take channels 8 apart and shift their tiles onto 16-byte boundaries
    (`SHIFT` in `_fwd_unit`): where L is not a multiple of 8 (else the rows are aligned already), the channels
    fill such programs (8 · bd of them at least) and each program's share a B/C group, and the last row ends a
    16-byte group (so a group read whole stays in the tensor). Prefill and training alike."""
    return L % 8 != 0 and dim >= 8 * bd and _groups_fit(dim, groups, 8 * bd) and batch * dim * L % 8 == 0


def fits(dim: int, groups: int, N: int, CK: int) -> bool:
    """Whether this forward takes the case: a program's BLOCK_D channels share one B/C group, N is at most
    MAX_N, and T divides the checkpoint interval CK."""
    _, T, _, bd = _tile_for(N)
    return _groups_fit(dim, groups, bd) and N <= MAX_N and CK % T == 0


def start_words(starts, L: int) -> torch.Tensor:
    """starts [B, L] (nonzero where a packed sequence starts) as the kernels read them: [B, cdiv(L, 32) + 1]
    int32, bit t % 32 of word t // 32 set where step t starts one (the last word is spare)."""
    batch = starts.shape[0]
    bits = torch.zeros(batch, (cdiv(L, 32) + 1) * 32, device=starts.device, dtype=torch.int64)
    bits[:, :L] = starts != 0
    words = (bits.view(batch, -1, 32) << torch.arange(32, device=starts.device)).sum(-1)
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)


def _ss_fwd(u, delta, A, B4, C4, D, z, bias, h0, softplus, store_ck, CK: int, starts=None):
    """The forward's launch (`ss_fwd_gluon`)."""
    batch, dim, L = u.shape
    N, groups = A.shape[1], B4.shape[1]
    ns, T, warps, bd = _tile_for(N)
    nb = next_pow2(N)
    if not fits(dim, groups, N, CK):
        raise ValueError(f"the Gluon forward needs a multiple of {bd} channels a B/C group (got {dim // groups}), "
                         f"at most {MAX_N} states (got {N}) and a checkpoint interval that {T} divides (got {CK})")
    ql = 16 if L % 16 == 0 else 8 if L % 8 == 0 else 1
    shift = starts is None and _shift(batch, dim, L, groups, bd)  # a shifted tile's steps straddle two words of rs
    nt = cdiv(L + 7, T) if shift else cdiv(L, T)  # a chain's tiles, at most
    bc = _pack_bc(B4, C4, 8 + (nt + 1) * T if shift else nt * T, nb, front=8 if shift else 0)
    lp = bc.shape[2]
    y = torch.empty_like(u)
    hT = torch.empty(batch, dim, N, device=u.device, dtype=torch.float32)
    nck = cdiv(L, CK)
    ck = torch.empty(batch, dim, nck, N, device=u.device, dtype=torch.float32) if store_ck else None
    even = L % T == 0 and dim % bd == 0
    npd = 8 * cdiv(dim, 8 * bd) if shift else cdiv(dim, bd)
    nchain = npd * batch
    sms = _sms(u.device)
    persist = _persist(nchain, sms)
    async_io = _async_io((u, delta, z), ql, shift)
    # shifted and storing checkpoints, the capped kernel spills (8 bytes of stack): L4093 0.654 ms, 0.647 uncapped
    cap = dict(maxnreg=FWD_MAXNREG) if async_io and nb <= 16 and not (shift and store_ck) else {}
    segt = max(cdiv(MIN_SEG, T), cdiv(nt, UNITS)) if persist else nt
    sync = torch.zeros(1 + nchain, device=u.device, dtype=torch.int32) if persist else None
    rs = None if starts is None else start_words(starts, L)
    _ss_fwd_rows_kernel[(_programs(nchain, sms) if persist else nchain,)](
        u, delta, A, bc, D, z, bias, h0, y, hT, ck, sync, rs,
        L, dim, N, dim // groups, nck, groups, lp, npd, nchain, nchain * cdiv(nt, segt), segt,
        BLOCK_D=bd, NB=nb, NS=ns, T=T, WARPS=warps, CKI=CK, **_bc_layout(nb),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None, SOFTPLUS=bool(softplus),
        HAS_H0=h0 is not None, STORE_CK=store_ck, EVEN=even, QL=ql, SHIFT=shift, ASYNC=async_io, PERSIST=persist,
        HAS_RESET=rs is not None, num_warps=warps, **cap)
    return y, hT, ck


def _async_io(tensors, ql: int, shift: bool) -> bool:
    """Whether the forward copies u, delta, z and B/C into shared memory asynchronously (`ASYNC`): where rows
    start on 16-byte boundaries (QL 8 or 16) or are shifted onto them, in tensors that start on one (cp.async
    moves 16 bytes). H200, B4 N16 bf16, ms (thirty-second run): with checkpoints L4096 D5120 0.669 -> 0.581,
    D2560 0.503 -> 0.455; without, D2560 (one program a chain) 0.470 -> 0.430, L4093 (shifted) 0.714 -> 0.615,
    L4104 0.658 -> 0.642. Where programs are persistent, rows 16 · k steps and no checkpoints stored, it gains
    only with the register cap FWD_MAXNREG (without it 0.627 -> 0.637 ms at L4096 D5120)."""
    aligned = all(t.data_ptr() % 16 == 0 for t in tensors if t is not None)
    return aligned and (ql >= 8 or shift)


# The backward's tile: T steps a sub-tile (their states stay in registers, [T, NB / NS] a thread), NS threads a
# channel (BLOCK_D = 32 / NS channels a one-warp program), a register cap. H200, B4 L4096 D5120 N16 bf16, fwd+bwd
# after the Gluon forward (2026-11-30, one process; the Triton groups backward 5.90 ms): NS 2 4.93 ms (255
# registers: 8 warps an SM, 1280 programs in 1.2 waves; capped at 200 it spills, 7.57); T 4 5.27; NS 4 4.32,
# capped at 168 registers **4.12**, at 152 / 128 4.29 / 5.53 (spills). NS 4 with T 4 at caps 168-112 (12-18 programs an
# SM), the backward alone: 3.61-3.89 ms against 3.05 (twenty-ninth run).
BWD_T, BWD_NS, BWD_MAXNREG = 8, 4, 168
# The backward's units when its chains are cut (`_persist_bwd`): BWD_UNITS a chain, so 4 checkpoint chunks at
# L4096. H200, B4 N16 bf16, the backward alone (2026-11-30): D5120 3.367 -> 3.304 ms (8 units 3.297), L16384 13.30
# -> 12.80 (8 units 12.92), D4608 3.386 -> 2.989 (8 units 2.953); D3168 (one wave, left alone by the rule) 1.990
# -> 2.084.
BWD_UNITS = 16


def _bwd_slots(sms: int) -> int:
    """One-warp backward programs resident at once on `sms` SMs: BWD_MAXNREG registers a thread, 64K an SM."""
    return sms * (65536 // (32 * BWD_MAXNREG))


def _persist_bwd(nchain: int, sms: int) -> bool:
    """Whether the backward's chains are cut into units taken by persistent programs (as many as fit at once,
    `_bwd_slots`): when one program a chain would need more than one wave and leave the last short, or, in less
    than one wave, would give the schedulers uneven numbers of programs, over 2 a scheduler (as the forward's rule,
    `_persist`, did before its thirty-third run). H200, B4 L4096 N16 bf16, the backward alone (2026-11-30), one
    program a chain -> persistent, ms: D2304 (2.18 programs a scheduler) 1.772 -> 1.642, D2560 (2.42) 1.793 ->
    1.735, D2816 (2.67) 1.830 -> 1.807, D3072 (2.91, left alone) 1.896 -> 1.895, D2048 (1.94, left alone) 1.500 ->
    1.519."""
    waves = nchain / _bwd_slots(sms)
    return _uneven(waves, 1) or (waves < 1 and _uneven(nchain / (4 * sms), 2))


def _bwd_tile_for(N: int):
    """(NS, BLOCK_D) of the backward for N states a channel."""
    ns = min(BWD_NS, next_pow2(N))
    return ns, 32 // ns


def fits_bwd(dim: int, groups: int, N: int, CK: int) -> bool:
    """Whether the Gluon backward takes the case: as the forward, with 5 to 16 states a channel (a step's
    dB/dC row of 2·NB floats spans 4-wide column blocks over a whole quarter warp or more)."""
    _, bd = _bwd_tile_for(N)
    return _groups_fit(dim, groups, bd) and 5 <= N <= 16 and CK % BWD_T == 0


def _ss_bwd(u, delta, A, B4, C4, D, z, bias, ck, dy, dhT, softplus, CK: int, starts=None):
    """The backward's launch (`ss_bwd_gluon`)."""
    batch, dim, L = u.shape
    N, groups = A.shape[1], B4.shape[1]
    ns, bd = _bwd_tile_for(N)
    nb, T = next_pow2(N), BWD_T
    if not fits_bwd(dim, groups, N, CK):
        raise ValueError(f"the Gluon backward needs a multiple of {bd} channels a B/C group (got {dim // groups}), "
                         f"5 to 16 states (got {N}) and a checkpoint interval that {T} divides (got {CK})")
    if starts is not None and not (CK <= 64 and 32 % T == 0):
        raise ValueError(f"the Gluon backward reads sequence starts in checkpoint chunks of at most 64 steps "
                         f"(got {CK})")
    bc = _pack_bc(B4, C4, cdiv(L, T) * T, nb)
    lp = bc.shape[2]
    from .triton_selective_scan import _bwd_grads, _bwd_outputs
    du, ddt, dz, _, _, dA, dD, dbias, dh0 = _bwd_outputs(u, delta, A, B4, z, dbc=False)
    dbc = torch.zeros(batch, groups, lp, nb, 2, device=u.device, dtype=torch.float32)  # dB, dC of each state
    scratch = torch.empty(batch, dim, CK // T, nb, device=u.device, dtype=torch.float32)
    nchain, nc = cdiv(dim, bd) * batch, cdiv(L, CK)
    sms = _sms(u.device)
    slots, persist = _bwd_slots(sms), _persist_bwd(nchain, sms)
    segc = cdiv(nc, BWD_UNITS) if persist else nc
    sync = torch.zeros(1 + nchain, device=u.device, dtype=torch.int32) if persist else None
    _ss_bwd_rows_kernel[(min(nchain, slots),) if persist else (cdiv(dim, bd), batch)](
        u, delta, A, bc, D, z, bias, ck, dy, dhT, scratch,
        du, ddt, dz, dA, dbc, dD, dbias, dh0, sync, None if starts is None else start_words(starts, L),
        L, dim, N, dim // groups, ck.shape[2], groups, lp, cdiv(dim, bd), nchain, nchain * cdiv(nc, segc), segc,
        BLOCK_D=bd, NB=nb, NS=ns, T=T, CKI=CK, **_bc_layout(nb),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None, SOFTPLUS=bool(softplus),
        HAS_DHT=dhT is not None, QL=16 if L % 16 == 0 else 2 if L % 2 == 0 else 1,
        PERSIST=persist, HAS_RESET=starts is not None, num_warps=1, maxnreg=BWD_MAXNREG)
    dB, dC = (dbc[:, :, :L, :N, k].transpose(2, 3) for k in (0, 1))
    return _bwd_grads((du, ddt, dz, dB, dC, dA, dD, dbias, dh0), A, B4, C4, D, bias)


# Under torch.compile the two launchers run as custom ops, opaque to Dynamo and Inductor, so a compiled model
# keeps them in its graph with no break (fullgraph=True included). Traced as plain Triton launches they failed:
# Inductor re-emits the source of each kernel a graph launches in a module of its own, without Gluon's imports
# (NameError: gl). Their fake twins give the outputs' shapes, dtypes and strides, which the real ones keep
# (dB and dC made contiguous); an absent output is an empty tensor inside the op. Eager calls go straight to
# the launchers, without the dispatcher.
def _none_to_empty(outs, u):
    return [o if o is not None else u.new_empty(0) for o in outs]


def _fwd_op(u, delta, A, B4, C4, D, z, bias, h0, softplus, store_ck, CK, starts=None):
    return _none_to_empty(_ss_fwd(u, delta, A, B4, C4, D, z, bias, h0, softplus, store_ck, CK=CK, starts=starts), u)


_FWD_OP = torch.library.custom_op(
    "archdsl::selective_scan_fwd_gluon", mutates_args=(),
    schema="(Tensor u, Tensor delta, Tensor A, Tensor B4, Tensor C4, Tensor? D, Tensor? z, Tensor? bias, "
           "Tensor? h0, bool softplus, bool store_ck, int CK, Tensor? starts=None) -> (Tensor, Tensor, Tensor)"
)(_fwd_op)


@_FWD_OP.register_fake
def _ss_fwd_fake(u, delta, A, B4, C4, D, z, bias, h0, softplus, store_ck, CK, starts=None):
    """y like u, the last state [B, D, N] float32, checkpoints [B, D, NCK, N] float32 (empty unless stored)."""
    batch, dim, L = u.shape
    N = A.shape[1]
    return (torch.empty_like(u), u.new_empty(batch, dim, N, dtype=torch.float32),
            u.new_empty((batch, dim, cdiv(L, CK), N) if store_ck else (0,), dtype=torch.float32))


def _bwd_op(u, delta, A, B4, C4, D, z, bias, ck, dy, dhT, softplus, CK, starts=None):
    grads = list(_ss_bwd(u, delta, A, B4, C4, D, z, bias, ck, dy, dhT, softplus, CK=CK, starts=starts))
    grads[3:5] = (g.contiguous() for g in grads[3:5])  # dB, dC: views of one buffer
    return _none_to_empty(grads, u)


_BWD_OP = torch.library.custom_op(
    "archdsl::selective_scan_bwd_gluon", mutates_args=(),
    schema="(Tensor u, Tensor delta, Tensor A, Tensor B4, Tensor C4, Tensor? D, Tensor? z, Tensor? bias, "
           "Tensor ck, Tensor dy, Tensor? dhT, bool softplus, int CK, Tensor? starts=None) -> Tensor[]")(_bwd_op)


@_BWD_OP.register_fake
def _ss_bwd_fake(u, delta, A, B4, C4, D, z, bias, ck, dy, dhT, softplus, CK, starts=None):
    """The gradients of (u, delta, A, B4, C4, D, z, delta_bias, initial state), each in its input's dtype,
    dB and dC [B, G, N, L] contiguous, the initial state's [B, D, N] float32; empty where the input is absent."""
    like = lambda t: u.new_empty(t.shape, dtype=t.dtype) if t is not None else u.new_empty(0)
    batch, dim, _ = u.shape
    return [torch.empty_like(u), torch.empty_like(delta), like(A), like(B4), like(C4), like(D),
            torch.empty_like(z) if z is not None else u.new_empty(0), like(bias),
            u.new_empty(batch, dim, A.shape[1], dtype=torch.float32)]


def ss_fwd_gluon(u, delta, A, B4, C4, D, z, bias, h0, softplus, store_ck, CK: int, starts=None):
    """The forward of triton_selective_scan.ss_fwd on this kernel: y, last state (float32), checkpoints
    every CK steps [B, D, NCK, N] float32 (None when not stored). u, delta contiguous [B, D, L];
    B4, C4 [B, G, N, L] at any strides; starts [B, L] (nonzero where a packed sequence starts) or None."""
    if not torch.compiler.is_compiling():
        return _ss_fwd(u, delta, A, B4, C4, D, z, bias, h0, softplus, store_ck, CK=CK, starts=starts)
    y, hT, ck = _FWD_OP(u, delta, A, B4, C4, D, z, bias, h0, bool(softplus), bool(store_ck), CK, starts)
    return y, hT, ck if store_ck else None


def ss_bwd_gluon(u, delta, A, B4, C4, D, z, bias, ck, dy, dhT, softplus, CK: int, starts=None):
    """The backward of triton_selective_scan.ss_bwd_groups on this kernel, same contract: the gradients of
    (u, delta, A, B4, C4, D, z, delta_bias, initial state); dB and dC [B, G, N, L] in B4's and C4's dtype."""
    if not torch.compiler.is_compiling():
        return _ss_bwd(u, delta, A, B4, C4, D, z, bias, ck, dy, dhT, softplus, CK=CK, starts=starts)
    grads = _BWD_OP(u, delta, A, B4, C4, D, z, bias, ck, dy, dhT, bool(softplus), CK, starts)
    absent = {5: D, 6: z, 7: bias}
    return tuple(None if i in absent and absent[i] is None else g for i, g in enumerate(grads))
