"""The chunked SSD forward's serial state pass and chunk scan in Gluon, for sm_90 (wgmma, TMA, mbarriers).

The state pass. The Triton pass (`_state_pass` in triton_ssd_chunked.py) holds a (batch, head)'s state transposed,
hᵀ [N, P], so that Bᵀ is the dot's first operand straight from shared memory; the weighted x, formed in
registers, is then stored to shared memory for the second operand, with a fence and a barrier, and the entering
state takes a round trip through shared memory and `ldmatrix` on its way out: four CTA barriers a step (ptxas for
sm_90, docs/benchmarks.md, fifty-fourth run). Here one program a (batch, head, 64 channels of P), one warpgroup,
walks the chunks with

  - the state as h [P block, N] in the accumulator of a warpgroup MMA: h = h · carry + (x ∘ w)ᵀ · B, where
    (x ∘ w)ᵀ [P block, Q] is the MMA's register operand (x read transposed out of shared memory, scaled by the
    token weights w in registers) and B [Q, N] its shared-memory operand, as the copy engine (TMA) left it;
  - x and B copied by TMA STAGES - 1 chunks ahead, each stage's arrival on an mbarrier;
  - the entering state written to one of HBUF shared buffers, as hᵀ [N, P block] (the entering states' layout),
    and stored by one TMA bulk store that nothing waits for until its buffer comes round again.

The token weights w = exp(s_end - s_t) dt'_t of every chunk come from the chunk preparation (`_chunk_cumsum`,
STORE_W), so the pass reads them as [Q] float32 rows. H200, B4 H32 P64 N128 bf16, the pass alone from a CUDA
graph (docs/benchmarks.md, fifty-fifth run): L4096 56.1 -> 50.8 µs, L16384 192.6 -> 180.0 µs, bit-identical.
Leaving parts out put the rest of its time in its memory traffic: without the entering states' stores 39 µs at
L4096, without the copies in 38, without the MMA and the weighting 46.

The chunk scan. One program a (batch, chunk, head), P block and target sub-block of Q / 2 tokens, the two
targets of a chunk side by side (they share h_in and x's first sub-block in L2). The weights
W = CB ∘ decay ∘ dt' are formed in registers in the MMA's register-operand layout, from C·Bᵀ loaded straight into
that layout, so nothing goes through shared memory but the TMA copies of C, h_in and x (49 KB, four programs an
SM) and y, staged in C's buffer for one TMA store. Bit-identical to `_chunk_scan`. H200, the forward with both
Gluon kernels, graph replay: L4096 0.1547 -> 0.1378 ms, L16384 0.5591 -> 0.5230 (docs/benchmarks.md, fifty-fifth
run; storing y from the accumulator's layout instead, 0.1541 and 0.5881).

Only the common case runs here: 16-bit inputs, no seq_idx, N 64 or 128, P a multiple of 64, tiles that TMA can
address (`fits_pass`); the scan, also bf16 only (whose C·Bᵀ is kept in scaled float16) and chunks of 128
(`fits_scan`); the Triton kernels take the rest. Gluon is compiled only (the interpreter does not run it): its
tests run on the GPU, and CI compiles its launches for sm_90 (tests/kernels/test_ssd.py).
"""
from __future__ import annotations

import torch

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                                  warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    HAVE_GLUON = True
except ImportError:  # an older Triton: the Triton pass runs
    HAVE_GLUON = False

BP, STAGES, WARPS, HBUF = 64, 3, 4, 3  # P channels a program, chunk stages, warps (one warpgroup), state buffers

if HAVE_GLUON:
    _sync = gl.thread_barrier if hasattr(gl, "thread_barrier") else gl.barrier  # renamed after Triton 3.6
    # TMA copies, renamed after Triton 3.6 (the old names then raise)
    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
    _tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global
    # a shared buffer seen as another shape and layout: `_reinterpret` until Triton 3.6, `reinterpret` after
    _REINTERPRET_NAMED = gl.constexpr(hasattr(gl.shared_memory_descriptor, "reinterpret"))

    @gluon.jit
    def _gdc(WAIT: gl.constexpr):
        """PDL (kernels/_pdl.py): wait for the kernel before, or let the next one launch."""
        if WAIT:
            gl.inline_asm_elementwise("griddepcontrol.wait; // $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)
        else:
            gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // $0", "=r", [], dtype=gl.int32,
                                      is_pure=False, pack=1)

    @gluon.jit
    def _copy_in(x_desc, B_desc, xs, bs, ready, b, h, g, c, p0, P, N: gl.constexpr, Q: gl.constexpr,
                 STAGES: gl.constexpr):
        """Start the TMA copies of chunk c's x [Q, BP] and B [Q, N] tiles into stage c % STAGES."""
        k = c % STAGES
        bar = ready.index(k)
        mbarrier.expect(bar, x_desc.block_type.nbytes + B_desc.block_type.nbytes)
        _tma_load(x_desc, [b, c * Q, h * P + p0], bar, xs.index(k))
        _tma_load(B_desc, [b, c * Q, g * N], bar, bs.index(k))

    @gluon.jit
    def _state_pass_kernel(x_desc, B_desc, hin_desc, w_ptr, s_ptr, h0_ptr, hT_ptr, H, G, P, NC,
                           N: gl.constexpr, Q: gl.constexpr, BP: gl.constexpr, STAGES: gl.constexpr,
                           HBUF: gl.constexpr, HAS_H0: gl.constexpr, PDL: gl.constexpr, num_warps: gl.constexpr):
        """Program (batch·head, P block): walking the chunks c, hin[c] = hᵀ, then h = h · exp(s_end) +
        (x_c ∘ w_c)ᵀ · B_c; the last h is the final state hT [B, H, P, N] float32 (h0 the first, or 0).
        x_desc: [B, L, H·P] blocks [1, Q, BP]; B_desc: [B, L, G·N] blocks [1, Q, N]; hin_desc: [B·H·NC, N, P]
        blocks [1, N, BP]; w, s [B, H, NC, Q] float32."""
        bh = gl.program_id(0)
        b = bh // H
        h = bh % H
        g = h // (H // G)
        p0 = gl.program_id(1) * BP
        bh64 = bh.to(gl.int64)
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, num_warps // 4],
                                                      instr_shape=[16, N // (num_warps // 4), 16])
        a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
        q_l: gl.constexpr = gl.SliceLayout(0, a_l)
        dt16: gl.constexpr = x_desc.dtype

        xs = gl.allocate_shared_memory(dt16, [STAGES, 1, Q, BP], x_desc.layout)
        bs = gl.allocate_shared_memory(dt16, [STAGES, 1, Q, N], B_desc.layout)
        hs = gl.allocate_shared_memory(dt16, [HBUF, 1, N, BP], hin_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
        _sync()
        if PDL:
            _gdc(True)
            _gdc(False)
        for i in gl.static_range(STAGES - 1):
            if i < NC:
                _copy_in(x_desc, B_desc, xs, bs, ready, b, h, g, i, p0, P, N, Q, STAGES)

        offs_p = p0 + gl.arange(0, BP, layout=gl.SliceLayout(1, mma))
        offs_n = gl.arange(0, N, layout=gl.SliceLayout(0, mma))
        so = bh64 * P * N + offs_p[:, None] * N + offs_n[None, :]
        if HAS_H0:
            state = gl.load(h0_ptr + so).to(gl.float32)
        else:
            state = gl.zeros([BP, N], gl.float32, layout=mma)
        offs_q = gl.arange(0, Q, layout=q_l)
        w = gl.load(w_ptr + bh64 * NC * Q + offs_q)
        sT = gl.load(s_ptr + bh64 * NC * Q + Q - 1)
        for c in range(NC):
            k = c % STAGES
            cn = gl.minimum(c + 1, NC - 1)  # the next chunk's weights, loaded a step ahead
            w_next = gl.load(w_ptr + (bh64 * NC + cn) * Q + offs_q)
            sT_next = gl.load(s_ptr + (bh64 * NC + cn) * Q + Q - 1)
            mbarrier.wait(ready.index(k), phase=(c // STAGES) & 1)
            xa = xs.index(k).reshape([Q, BP]).permute((1, 0)).load(a_l)
            xw = (xa.to(gl.float32) * w[None, :]).to(dt16)
            entering = state.to(dt16)
            acc = warpgroup_mma(xw, bs.index(k).reshape([Q, N]), state * gl.exp2(sT * 1.4426950408889634),
                                is_async=True)
            buf = hs.index(c % HBUF)
            buf.reshape([N, BP]).store(gl.permute(entering, (1, 0)))
            fence_async_shared()
            _sync()
            _tma_store(hin_desc, [bh * NC + c, 0, p0], buf)
            tma.store_wait(pendings=HBUF - 1)  # the store that read buffer (c + 1) % HBUF is done: all may write it
            _sync()
            if c + STAGES - 1 < NC:  # into the stage chunk c - 1 used: every warp has passed its MMA's wait
                _copy_in(x_desc, B_desc, xs, bs, ready, b, h, g, c + STAGES - 1, p0, P, N, Q, STAGES)
            state, xw = warpgroup_mma_wait(num_outstanding=0, deps=(acc, xw))
            w = w_next
            sT = sT_next
        gl.store(hT_ptr + so, state)
        tma.store_wait(pendings=0)
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(i))


    @gluon.jit
    def _scan_target(x_desc, C_desc, hin_desc, y_desc, xs, cs, hs, bar, cb_ptr, sc_ptr, dtc_ptr, s_ptr, D_ptr, z_ptr,
                     ypre_ptr, b, c, h, g, p0, L, H, G, P, NC, I: gl.constexpr, N: gl.constexpr,
                     Q: gl.constexpr, BP: gl.constexpr, HAS_D: gl.constexpr, D_PER_P: gl.constexpr,
                     HAS_Z: gl.constexpr, STORE_YPRE: gl.constexpr, num_warps: gl.constexpr):
        """Target sub-block I of _chunk_scan_kernel's program (see there)."""
        QB: gl.constexpr = Q // 2
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                      instr_shape=[16, BP, 16])
        a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
        dt16: gl.constexpr = x_desc.dtype
        bh64 = (b * H + h).to(gl.int64)
        cg = ((b * NC + c) * G + g).to(gl.int64)  # the chunk's CB and scales
        mbarrier.expect(bar, C_desc.block_type.nbytes + hin_desc.block_type.nbytes
                        + (I + 1) * x_desc.block_type.nbytes)
        _tma_load(hin_desc, [(bh64 * NC + c).to(gl.int32), 0, p0], bar, hs)
        _tma_load(C_desc, [b, c * Q + I * QB, g * N], bar, cs)
        _tma_load(x_desc, [b, c * Q, h * P + p0], bar, xs.index(0))
        if I == 1:
            _tma_load(x_desc, [b, c * Q + QB, h * P + p0], bar, xs.index(1))

        # what the weights take, loaded while the copies fly: CB_Ij, the scales of target I's rows, s, dt'
        cq = (bh64 * NC + c) * Q
        rows_a = I * QB + gl.arange(0, QB, layout=gl.SliceLayout(1, a_l))
        cols_a = gl.arange(0, QB, layout=gl.SliceLayout(0, a_l))
        cb_at = cb_ptr + cg * Q * Q + (rows_a * Q)[:, None] + cols_a[None, :]
        sc_i = gl.load(sc_ptr + cg * Q + rows_a)
        s_i = gl.load(s_ptr + cq + rows_a)
        cb0 = gl.load(cb_at)
        s_0 = gl.load(s_ptr + cq + cols_a)
        dt_0 = gl.load(dtc_ptr + cq + cols_a)
        if I == 1:
            cb1 = gl.load(cb_at + QB)
            s_1 = gl.load(s_ptr + cq + QB + cols_a)
            dt_1 = gl.load(dtc_ptr + cq + QB + cols_a)
        rows_m = I * QB + gl.arange(0, QB, layout=gl.SliceLayout(1, mma))
        e_i = gl.exp2(gl.load(s_ptr + cq + rows_m) * 1.4426950408889634)
        offs_p = p0 + gl.arange(0, BP, layout=gl.SliceLayout(0, mma))
        Dv = 0.0
        if HAS_D:
            if D_PER_P:
                Dv = gl.load(D_ptr + h * P + offs_p).to(gl.float32)[None, :]
            else:
                Dv = gl.load(D_ptr + h).to(gl.float32)

        mbarrier.wait(bar, phase=0)
        # the entering state's part, exp(s_t) C_t · h_in; meanwhile the first source's weights
        acc = gl.zeros([QB, BP], gl.float32, layout=mma)
        acc = warpgroup_mma(cs.reshape([QB, N]), hs.reshape([N, BP]), acc, use_acc=False, is_async=True)
        d0 = gl.exp2((s_i[:, None] - s_0[None, :]) * 1.4426950408889634)
        if I == 0:  # the diagonal sub-block: t >= u
            d0 = gl.where(rows_a[:, None] >= cols_a[None, :], d0, 0.0)
        W0 = (cb0.to(gl.float32) * sc_i[:, None] * d0 * dt_0[None, :]).to(dt16)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        acc = warpgroup_mma(W0, xs.index(0).reshape([QB, BP]), acc * e_i[:, None], is_async=True)
        if I == 1:  # the second source sub-block, diagonal
            d1 = gl.exp2((s_i[:, None] - s_1[None, :]) * 1.4426950408889634)
            d1 = gl.where(rows_a[:, None] >= (QB + cols_a)[None, :], d1, 0.0)
            W1 = (cb1.to(gl.float32) * sc_i[:, None] * d1 * dt_1[None, :]).to(dt16)
            acc = warpgroup_mma(W1, xs.index(1).reshape([QB, BP]), acc, is_async=True)
            acc, W0, W1 = warpgroup_mma_wait(num_outstanding=0, deps=(acc, W0, W1))
        else:
            acc, W0 = warpgroup_mma_wait(num_outstanding=0, deps=(acc, W0))

        # D x, the gate (z and ypre by pointers, tokens past L left out; base: the chunk's first token row)
        base = ((b.to(gl.int64) * L + c * Q) * H + h) * P
        keep = (c * Q + rows_m < L)[:, None] & (offs_p < P)[None, :]
        at = base + (rows_m * (H * P))[:, None] + offs_p[None, :]
        if HAS_D:
            acc += Dv * xs.index(I).reshape([QB, BP]).load(mma).to(gl.float32)
        if STORE_YPRE:
            gl.store(ypre_ptr + at, acc.to(dt16), mask=keep)
        if HAS_Z:
            zv = gl.load(z_ptr + at, mask=keep, other=0.0).to(gl.float32)
            acc = acc * zv * (1.0 / (1.0 + gl.exp2(-zv * 1.4426950408889634)))
        # y through C's buffer, free since its MMA, by one TMA store (rows past L are left out): H200, L4096 0.1541
        # -> 0.1378 ms against stores from the accumulator's layout (fifty-fifth run)
        if _REINTERPRET_NAMED:
            ys = cs.reinterpret(dt16, [1, QB, BP], y_desc.layout)
        else:
            ys = cs._reinterpret(dt16, [1, QB, BP], y_desc.layout)
        _sync()
        ys.reshape([QB, BP]).store(acc.to(dt16))
        fence_async_shared()
        _sync()
        _tma_store(y_desc, [b, c * Q + I * QB, h * P + p0], ys)
        tma.store_wait(pendings=0)

    @gluon.jit
    def _chunk_scan_kernel(x_desc, C_desc, hin_desc, y_desc, cb_ptr, sc_ptr, dtc_ptr, s_ptr, D_ptr, z_ptr, ypre_ptr,
                           L, H, G, P, NC,
                           N: gl.constexpr, Q: gl.constexpr, BP: gl.constexpr, HAS_D: gl.constexpr,
                           D_PER_P: gl.constexpr, HAS_Z: gl.constexpr, STORE_YPRE: gl.constexpr, PDL: gl.constexpr,
                           num_warps: gl.constexpr):
        """y of one (batch, chunk, head), P block and target sub-block i of QB = Q / 2 tokens (program_id(0) =
        2 · (batch, chunk, head) + i, program_id(1) the P block), as _chunk_scan forms it:
        y_i = exp(s_i) C_i · h_in + Σ_{j <= i} (CB_ij ∘ decay ∘ dt'_j) x_j, + D x_i, times silu(z_i).
        One warpgroup's MMAs: C_i [QB, N] and h_in [N, BP] from shared memory, as TMA copies them; the weights
        W_ij [QB, QB] formed in registers, in the MMA's register-operand layout, from CB_ij loaded straight into
        that layout (float16, its rows' scales sc), and x_j [QB, BP] from shared memory. Every copy and load is
        issued at the start; y leaves by a TMA store.
        x_desc, y_desc [B, L, H·P] blocks [1, QB, BP]; C_desc [B, L, G·N] blocks [1, QB, N]; hin_desc
        [B·H·NC, N, P] blocks [1, N, BP]; cb [B, NC, G, Q, Q] float16 and sc [B, NC, G, Q]; dt', s [B, H, NC, Q];
        z, ypre [B, L, H, P]."""
        QB: gl.constexpr = Q // 2
        pid = gl.program_id(0) // 2  # the two targets of a chunk side by side: they share h_in and x_0 in L2
        h = pid % H
        c = (pid // H) % NC
        b = pid // (H * NC)
        g = h // (H // G)
        p0 = gl.program_id(1) * BP
        dt16: gl.constexpr = x_desc.dtype
        xs = gl.allocate_shared_memory(dt16, [2, 1, QB, BP], x_desc.layout)
        cs = gl.allocate_shared_memory(dt16, [1, QB, N], C_desc.layout)
        hs = gl.allocate_shared_memory(dt16, [1, N, BP], hin_desc.layout)
        bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        mbarrier.init(bar, count=1)
        _sync()
        if PDL:
            _gdc(True)
            _gdc(False)
        if gl.program_id(0) % 2 == 0:
            _scan_target(x_desc, C_desc, hin_desc, y_desc, xs, cs, hs, bar, cb_ptr, sc_ptr, dtc_ptr, s_ptr, D_ptr,
                         z_ptr, ypre_ptr, b, c, h, g, p0, L, H, G, P, NC, 0, N, Q, BP, HAS_D, D_PER_P, HAS_Z,
                         STORE_YPRE, num_warps)
        else:
            _scan_target(x_desc, C_desc, hin_desc, y_desc, xs, cs, hs, bar, cb_ptr, sc_ptr, dtc_ptr, s_ptr, D_ptr,
                         z_ptr, ypre_ptr, b, c, h, g, p0, L, H, G, P, NC, 1, N, Q, BP, HAS_D, D_PER_P, HAS_Z,
                         STORE_YPRE, num_warps)
        mbarrier.invalidate(bar)


def fits_pass(x, B, seq, sizes) -> bool:
    """Whether the Gluon pass takes this forward: sm_90, 16-bit x and B alike, no seq_idx, N 64 or 128, P a
    multiple of BP, and x, B token rows TMA can address (16-byte aligned bases and strides)."""
    batch, L, H, P, G, N, Q, NC, BN = sizes
    if not (HAVE_GLUON and x.is_cuda and seq is None and x.dtype in (torch.bfloat16, torch.float16)
            and B.dtype == x.dtype and N in (64, 128) and P % BP == 0 and Q % 16 == 0 and Q <= 256):
        return False
    return _sm90(x) and _tma_rows(L, x, B)


def state_pass(x, B, w, s, h0, hin, hT, sizes, pdl: bool):
    """Run the pass: hin [B, H, NC, N, P] (x's dtype) and hT [B, H, P, N] float32 are written; w and s
    [B, H, NC, Q] float32 from the chunk preparation."""
    batch, L, H, P, G, N, Q, NC, BN = sizes
    xd = _rows_desc(x, H * P, [1, Q, BP])
    Bd = _rows_desc(B, G * N, [1, Q, N])
    hd = _desc(hin, [batch * H * NC, N, P], [N * P, P, 1], [1, N, BP])
    extra = {"launch_pdl": True} if pdl else {}
    _state_pass_kernel[(batch * H, P // BP)](xd, Bd, hd, w, s, h0, hT, H, G, P, NC, N=N, Q=Q, BP=BP, STAGES=STAGES,
                                             HBUF=HBUF, HAS_H0=h0 is not None, PDL=pdl, num_warps=WARPS, **extra)


def fits_scan(x, C, seq, sizes, scaled: bool) -> bool:
    """Whether the Gluon chunk scan takes this forward: sm_90, chunks of 128, bf16 (C·Bᵀ in scaled float16), no
    seq_idx, N 64 or 128, P a multiple of 64 (one program a 64-wide block), any groups, and x, C token rows TMA
    can address."""
    batch, L, H, P, G, N, Q, NC, BN = sizes
    if not (HAVE_GLUON and x.is_cuda and seq is None and scaled and Q == 128 and C.dtype == x.dtype
            and N in (64, 128) and P % BP == 0):
        return False
    return _sm90(x) and _tma_rows(L, x, C)


def chunk_scan(x, C, cb16, sc, dtc, s, hin, D, z, y, ypre, sizes, pdl: bool):
    """Run the chunk scan: y (and ypre, y before the gate, when given) [B, L, H, P] written from the chunk
    preparation's C·Bᵀ (float16 [B, NC, G, Q, Q] with its rows' scales sc), dt', s and the entering states hin."""
    batch, L, H, P, G, N, Q, NC, BN = sizes
    QB = Q // 2
    xd = _rows_desc(x, H * P, [1, QB, BP])
    Cd = _rows_desc(C, G * N, [1, QB, N])
    hd = _desc(hin, [batch * H * NC, N, P], [N * P, P, 1], [1, N, BP])
    yd = _rows_desc(y, H * P, [1, QB, BP])
    extra = {"launch_pdl": True} if pdl else {}
    _chunk_scan_kernel[(2 * batch * NC * H, P // BP)](
        xd, Cd, hd, yd, cb16, sc, dtc, s, D, z, ypre, L, H, G, P, NC, N=N, Q=Q, BP=BP, HAS_D=D is not None,
        D_PER_P=D is not None and D.dim() == 2, HAS_Z=z is not None, STORE_YPRE=ypre is not None, PDL=pdl,
        num_warps=WARPS, **extra)


_SM90: dict = {}  # device index → whether it is sm_90 (wgmma), asked at every forward that may take Gluon


def _sm90(x) -> bool:
    if x.device.index not in _SM90:
        _SM90[x.device.index] = torch.cuda.get_device_capability(x.device) == (9, 0)
    return _SM90[x.device.index]


def _tma_rows(L: int, *ts) -> bool:
    """Whether TMA can address the token rows of each [B, L, ...] tensor (rows evenly apart, token_rows): a 16-byte
    aligned base and row stride (16-bit elements)."""
    return all(t.data_ptr() % 16 == 0 and t.stride(1) * 2 % 16 == 0 and t.stride(0) == L * t.stride(1) for t in ts)


def _desc(t, shape, strides, block):
    """A TMA descriptor of t (16-bit) with blocks `block` in the shared layout the kernels' MMAs read."""
    gdt = gl.bfloat16 if t.dtype == torch.bfloat16 else gl.float16
    return TensorDescriptor(t, shape, strides, block, gl.NVMMASharedLayout.get_default_for(block, gdt))


def _rows_desc(t, width: int, block):
    """The descriptor of a [B, L, ..., ...] tensor's token rows as [B, L, width] (a row's width elements
    contiguous), blocks [1, tokens, columns]: what lies past L reads as 0 and is not written."""
    return _desc(t, [t.shape[0], t.shape[1], width], [t.stride(0), t.stride(1), 1], block)
