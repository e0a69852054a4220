"""Mamba-2 SSD in Triton in mamba_ssm's layout: parallel chunk kernels, a light serial state pass.

The fused kernels of triton_ssd.py walk all chunks of a (batch, head, P block) in one program:
B·H·P/BP programs, each a latency-bound serial loop. Here only the [P, N] state carry is serial;
everything that touches the tokens runs in programs over (batch, chunk, head, P block):

    forward   _chunk_prep    (parallel)  one launch of two independent parts:
                _chunk_cumsum            dt' = softplus(dt + dt_bias) and s = cumsum(dt' A) in each chunk
                _chunk_cb                CB = C Bᵀ of each chunk and group, once for all the group's heads
              _state_pass    (serial over chunks, parallel over batch, head, P and N blocks)
                                         each chunk's own state Σ_t exp(s_end - s_t) dt'_t x_t ⊗ B_t, added
                                         to the carried one: the state entering every chunk, the final state
              _chunk_scan    (parallel)  y = (CB ∘ decay ∘ dt') x + exp(s) C · h_in + D x, times silu(z)
    backward  _gate_grads    (parallel, with z only)  dz, and gy = dL/d(y before the gate), which the
                                         kernels below take for dy; dD from gy in float32
              _dstate_pass   (serial over chunks, last first; parallel over batch, head, P and N blocks)
                                         each chunk's own gradient of its entering state Σ_t exp(s_t) g_t ⊗ C_t,
                                         added to the carried one: the gradient of the state leaving every
                                         chunk, and of h0
              _chunk_grads   (parallel)  a head's own: dx, dL/ds and d(dt'), per-chunk dA (and dD without z)
              _group_dC      (parallel over batch, chunk, group; walks the group's heads)
                                         dC, and dCB = Σ_heads dL/d(CB) of each chunk
              _group_dB      (the same)  dB, with dCB

A chunk of Q tokens is worked through in sub-blocks of BT tokens: a head's program holds [BT, BT]
and [BT, N] tiles, never [Q, Q], and runs the intra-chunk products over the sub-block pairs t >= u;
a group kernel's program holds one sub-block's [BT, Q] row of dCB.

Buffers (NC = ceil(L / Q) chunks): dt' and s [B, H, NC, Q] float32; CB [B, NC, G, Q, Q] for the chunk
scan in float16 for bf16 inputs (each row scaled by a power of two, kept in a [B, NC, G, Q] float32
buffer), else float32, and in float32 for the backward; dCB [B, NC, G, Q, Q] float32; the entering
states transposed, [B, H, NC, N, P] (see _state_pass), in the state dtype (the input's for 16-bit
inputs -- the products read them in that precision anyway -- else float32); the gradients of the
leaving states, transposed too, [B, H, NC, N, P] (see _dstate_pass), in the same dtype. With
keep_states=False the forward keeps none of its chunk buffers for the backward, which prepares the
chunks and runs the state pass again (as mamba_ssm's backward does): the entering states are the largest
buffer a layer keeps, H·P·N / Q values a token (mamba2-2.7b: 5120, as many as x), and dt', s and the
float32 C·Bᵀ another 2·H + G·Q float32 values a token (mamba2-2.7b: 416, 13 MB a layer at B4 L2048);
for two more passes (H200, B4 H32 P64 N128 bf16, one process: forward+backward 0.897 -> 0.952 ms at L 4K,
3.287 -> 3.476 at 16K with the state pass alone again; the preparation is ~2% of a forward).
x, B and C are read where they lie when their token rows are evenly strided (token_rows: slices of a
wider [B, L, F] tensor, as Mamba-2 slices them from its conv's output), so the scan copies none of them.
Packed sequences (seq_idx), as in the fused kernels: a token sees the entering state only if it
belongs to the sequence of the token before the chunk, reaches the leaving state only if it
belongs to the chunk's last token's, and the entering state passes through the chunk only if
those two sequences are one; within a chunk only pairs of one sequence interact.
Offsets into [B, L, ...] and [B, H, NC, ...] tensors are int64 so that 1M-token sequences work; the tiles
of a chunk take its first token row on their base pointer and the rows within it as int32 offsets
(Q·H·P below 2^31).
On sm_90 the chunk scan of a long enough (or graph-captured) 16-bit forward reads its x, CB, C and
entering-state tiles through TMA tensor descriptors made on the host (TMA, TMA_MIN_PROGRAMS, _tma_pays,
_descriptors): the copy engine moves them into shared memory, bit-identical to the pointer loads.
On sm_90, where descriptors pay, the state pass and the chunk scan run in Gluon (gluon_chunked.py: the pass takes
the weighted x as the MMA's register operand, the scan forms its weights in the MMA's register layout and stores y
by TMA; GLUON_PASS, GLUON_SCAN).
On sm_90 and later the forward's three kernels are chained with programmatic dependent launch (CHAIN,
kernels/_pdl.py): each waits for the kernel before it at its start and then lets the next one launch,
so that the next kernel's programs wait on the SMs rather than in the launch queue. Waiting first keeps
this safe after any kernel of the caller's.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # an older Triton: the chunk scan reads by pointers only
    TensorDescriptor = None

from .._dispatch import interpreting
from .._host import cdiv
from .._pdl import gdc_launch_dependents, gdc_wait, pdl_ok
from .triton_ssd import _finish_y, _flags, _pow2, _prec, _skip_D, dt_back, dt_eff, dt_flags, scan_function

# Launch choices per chunk kernel: BT tokens per sub-block, BP head channels per program, warps,
# software-pipelining stages, ptxas's register cap. One chunk length for all (the buffers' layout depends on it): 128
# tokens (the [P, N] states per token, the largest traffic, halve from 64). The sub-blocks' tiles
# must fit the registers: ptxas for sm_90, the arguments 16-byte aligned as launched, gives _chunk_grads
# 213 registers at BT 32, 4 warps, 2 stages (255 and 0.7-0.8 KB of stack at BT 64, 4 warps), _group_dC
# 232 and _group_dB 128 at BT 64, 8 warps, 2 stages (both spill at 4 warps).
# benchmarks/ssd_configs.py times the alternatives on the card. The group kernels of dB and dC
# (2026-11-29, L 16K, one process): forward+backward 5.16 -> 4.61 ms at BT 64, 8 warps, 2 stages
# (1 stage 5.50, 4 warps 5.31-5.48, BT 32 5.26-6.07); _chunk_grads at BT 32, BP 64, 4 warps (5.50-7.66 else).
# _chunk_grads is latency-bound: capped at 128 registers (ptxas: 248 bytes of stack) 4 blocks share an SM
# instead of 2, and forward+backward went from 4.43 to 3.97-3.99 ms (cap 168: 4.05-4.12).
# _chunk_scan runs its sub-block pairs in one loop (2026-11-29, L 16K, one process): forward 0.952 ->
# 0.859 ms at BT 64, 4 warps, 2 stages (1 stage 0.968, 3 stages 1.141; BT 32 1.18-1.28; 8 warps 1.27-2.54).
# Reading CB from _chunk_cb and C only at a target's first pair (2026-11-29): 0.865 -> 0.835 ms; capped at
# 168 registers (ptxas: no stack; 3 blocks an SM instead of 2), 1 stage: 0.811 (2 stages 0.827, cap 128 0.832-0.875).
# Reading CB in float16, scaled row by row (2026-11-29, L 16K, bf16, one process): forward 0.784 -> 0.727 ms,
# _chunk_scan 482 -> 431 µs; still best at 1 stage, cap 168 (2 stages 0.758, cap 128 0.780, 2 stages cap 128
# 0.723-0.733).
# The chunk's first token row on the scan's base pointers, the rows within it int32 (fifteenth run,
# 2026-11-29, L 16K, one process): 1376 -> 1296 instructions (ptxas), 164 registers; 2 stages now win:
# _chunk_scan 420 -> 393-401 µs (1 stage 420, 3 stages 449, no cap 444, cap 144-160 399-402), forward
# 0.651 -> 0.632-0.638 ms. A chunk of 256 is slower (forward 0.740 at best: the scan 497 µs).
CHUNK, BLOCK_H, PASS_WARPS = 128, 32, 4
CONFIG = {  # kernel: (BT, BP, num_warps, num_stages, maxnreg: ptxas's register cap or None)
    "scan": (64, 64, 4, 2, 168),
    "scan_tma": (64, 64, 4, 2, 128),  # the scan with descriptors: 148 registers uncapped, 3 blocks an SM, not 4
    "grads": (32, 64, 4, 1, 128),
    "group": (64, 64, 8, 2, None),
}
# The serial passes (BP, BN, warps, stages), the forward's state pass and the backward's _dstate_pass:
# each forms every chunk's own state (or gradient of it) as it walks the chunks.
# H200, B4 H32 P64 N128 bf16, 2026-11-29, one process: replacing a parallel chunk-state kernel
# (fp32 states written and read back by a carry pass) took the forward at L 16K from 1.184 to 0.958 ms
# and fwd+bwd from 5.485 to 5.233; BN 128 or 8 warps were slower then (1.09-1.37 ms). Its backward twin
# replacing a parallel dstate kernel and a carry pass (fp32 states again): fwd+bwd 4.58 -> 4.43 ms.
# Their tiles prefetched one chunk ahead by hand, into registers, until the eleventh run (2026-11-29, L 16K,
# one process): loaded in the loop and pipelined by the compiler (cp.async into shared memory), the state
# pass went from 0.295 to 0.262 ms (forward 0.819-0.823 -> 0.779-0.784 ms at 8 warps, BN 128, 3 stages;
# 2 stages 0.819-0.823, 4 stages 0.787-0.794, 4 warps BN 64 0.794-0.834) and forward+backward from
# 3.764-3.770 to 3.684-3.692 ms with the dstate pass at 4 warps, BN 64, 2 stages (3 stages 3.722).
# The passes put each chunk's first token row on the tile's base pointer (a scalar) and keep the rows within
# the chunk as loop-invariant int32 offsets (fifteenth run, 2026-11-29, L 16K, one process): rebuilding
# 64-bit addresses every step made the state pass 601 instructions a thread and step, now 469 (ptxas,
# sm_90); the state pass went 262 -> 198 µs (forward 0.722 -> 0.657 ms), the dstate pass 299 -> 259 µs.
# Both passes hold their carry transposed (nineteenth run, L 16K, one process, bit-identical). Transposed, the
# dstate pass took 272 µs at its old choice (64, 64, 4, 2), where it took 255 before, and 199 at the state pass's
# choice, now its own (64, 64, 4, 3: 217; BN 128 at 4 warps: 247-250; BN 64 at 8 warps: 276); forward+backward
# 3.387 -> 3.310 ms. _group_dB reads dout [N, P] faster too: 314 -> 221 µs.
STATE_PASS = (64, 128, 8, 3)
DSTATE_PASS = (64, 128, 8, 3)
# float32 inputs: twice the bytes and registers a tile, and products of three TF32 ones by default (fp32_dot);
# their own choices (sixty-seventh run, `ssd_configs.py --float32 --L 4096`, B4 H32 P64 N128, one process, each
# swept with the others as they were: the state pass 1.708 -> 1.338 ms forward, the dstate pass 7.405 -> 7.281
# forward+backward; the chunk kernels together forward 1.716 -> 1.496, forward+backward 7.227 -> 5.280, the
# register caps of the 16-bit choices making float32's tiles spill).
CONFIG_32 = dict(CONFIG, scan=(32, 64, 4, 2, None), grads=(32, 64, 4, 1, None), group=(32, 32, 4, 2, None))
STATE_PASS_32, DSTATE_PASS_32 = (32, 64, 4, 2), (64, 64, 4, 2)
# float32 under one TF32 product (torch's "high" or "medium" matmul precision): a third of the products' work, so
# smaller serial-pass tiles, more programs, win (sixty-eighth run, `ssd_configs.py --float32 --tf32 --L 4096`,
# B4 H32 P64 N128, one process: the state pass 0.761 -> 0.636 ms forward, the dstate pass 2.358 -> 2.309 and
# _group_dB 2.359 -> 2.191 forward+backward). Two warps a program, more programs an SM, win again (seventieth
# run, same shape, L 4K / 16K, forward: the state pass at (64, 32, 2, 2) 0.642 / 2.419 -> 0.541 / 2.061 ms, then
# the scan at (32, 64, 2, 2) -> 0.504 / 1.923; the dstate pass at (64, 32, 2, 2) forward+backward 2.019 / 7.644 ->
# 1.914 / 7.228). The profile had the state pass at twice mamba_ssm's chunk-state and state-passing kernels.
CONFIG_TF32 = dict(CONFIG_32, scan=(32, 64, 2, 2, None), group=(64, 64, 8, 2, None))
STATE_PASS_TF32, DSTATE_PASS_TF32 = (64, 32, 2, 2), (64, 32, 2, 2)
# _gate_grads's tile [rows, columns] and warps (not swept). Going through the gate first (fifteenth run, L 16K,
# one process) took forward+backward with z from 6.94 to 3.74 ms: inside the backward kernels the gate had
# _chunk_grads at 4249 µs (1739 without z), _group_dC at 929 (482) and _dstate_pass at 569 (270).
GATE_BLOCK, GATE_WARPS = (64, 128), 8
# Under the interpreter small chunks and sub-blocks keep the tests fast and still cross several of each.
INTERPRET_CHUNK, INTERPRET_SUB = 32, 16
# The forward's kernels chained with PDL (H200, B4 H32 P64 N128 bf16, sixteenth run, one process; outputs
# and gradients bit-identical): forward at L 16K 0.633-0.643 -> 0.630-0.640 ms, at L 4K 0.181 -> 0.178 ms,
# forward+backward at L 16K 3.417-3.420 -> 3.388-3.392 ms.
CHAIN = True
# The chunk scan reads tiles through TMA tensor descriptors (see _descriptors and _chunk_scan): "pair", a pair's
# x and CB; "in", a target's C and the entering state. Each descriptor costs ~10 µs of host time a launch
# (Triton encodes it there), so only scans of TMA_MIN_PROGRAMS (batch · chunk · head) programs or more use them,
# or scans captured into a CUDA graph, whose replays do not run the host code (H200, L 4K, graph replay, one
# process: 0.1670 -> 0.1581 ms); and only 16-bit inputs (at the register cap below, float32 tiles spill).
TMA, TMA_MIN_PROGRAMS = ("pair", "in"), 8192
# The forward's state pass and chunk scan in Gluon (gluon_chunked.py: sm_90, 16-bit, no seq_idx, N 64 or 128; the
# scan bf16 and chunks of 128), where their descriptors' host time pays, as the scan's TMA reads (_tma_pays). H200,
# B4 H32 P64 N128 bf16, graph replay, fifty-fifth run, bit-identical throughout: the Gluon pass took the forward
# from 0.1574 to 0.1546 ms at L4096 and 0.5730 to 0.5557 at L16384; the Gluon scan with it, y stored by TMA, to
# 0.1378 and 0.5230 (y stored from registers: 0.1541 / 0.5881).
GLUON_PASS = True
GLUON_SCAN = True


def _choices(x) -> tuple[dict, tuple, tuple]:
    """(CONFIG, STATE_PASS, DSTATE_PASS) for x's products: the 16-bit choices, float32's of three TF32 products
    (the _32 ones) or of one (the _TF32 ones, as fp32_dot says)."""
    if x.element_size() <= 2:
        return CONFIG, STATE_PASS, DSTATE_PASS
    if _prec(x) == "tf32":
        return CONFIG_TF32, STATE_PASS_TF32, DSTATE_PASS_TF32
    return CONFIG_32, STATE_PASS_32, DSTATE_PASS_32


def _launch(kernel: str, x, Q: int, P: int) -> dict:
    """The sizes and launch options of one chunk kernel: BT, BP, NPB (P blocks), num_warps, num_stages
    and, when CONFIG caps them, maxnreg."""
    bt, bp, warps, stages, maxnreg = _choices(x)[0][kernel]
    small = interpreting() and x.device.type != "cuda"
    BP = min(_pow2(P), bp)
    cap = {} if maxnreg is None or small else dict(maxnreg=maxnreg)
    return dict(BT=min(INTERPRET_SUB if small else bt, Q), BP=BP, NPB=cdiv(P, BP), num_warps=warps,
                num_stages=stages, **cap)


@triton.jit
def _chunk_ids(pid, H, NC, G):
    """Program id over (batch, chunk, head) -- head fastest, so the heads of a group share B, C in L2."""
    h = pid % H
    c = (pid // H) % NC
    b = pid // (H * NC)
    return b, c, h, h // (H // G), (b * H + h).to(tl.int64)


@triton.jit
def _chunk_info(s_ptr, seq_ptr, bh64, row0, c, L, NC, Q: tl.constexpr, BT: tl.constexpr,
                HAS_SEQ: tl.constexpr):
    """Chunk-level facts: the number of sub-blocks holding tokens, s at the chunk's end, the sequence
    index before the chunk (0 before the first: h0 belongs to sequence 0) and of its last token
    (both 0 without seq_idx), and the factor exp(s_end) of the entering state in the leaving one
    (0 when a sequence boundary lies in between)."""
    nb = tl.cdiv(tl.minimum(L - c * Q, Q), BT)
    sT = tl.load(s_ptr + (bh64 * NC + c) * Q + Q - 1)
    carry = _exp(sT)
    seq_prev = 0
    seq_last = 0
    if HAS_SEQ:
        seq_prev = tl.load(seq_ptr + tl.maximum(row0 + c * Q - 1, row0)) * (c > 0)
        seq_last = tl.load(seq_ptr + row0 + tl.minimum(c * Q + Q, L) - 1)
        carry = tl.where(seq_last == seq_prev, carry, 0.0)
    return nb, sT, carry, seq_prev, seq_last


@triton.jit
def _program(s_ptr, seq_ptr, L, H, G, P, N, NC, Q: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr,
             BN: tl.constexpr, HAS_SEQ: tl.constexpr):
    """What a (batch·chunk·head, P block) program of the chunk kernels starts from: chunk c, head h,
    group g, (batch, head) as int64, the P and N offsets and masks, the batch's first token row,
    and _chunk_info's sub-block count, s at the chunk's end, carry factor and the sequence indices
    around it."""
    b, c, h, g, bh64 = _chunk_ids(tl.program_id(0), H, NC, G)
    offs_p = tl.program_id(1) * BP + tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    row0 = b.to(tl.int64) * L
    nb, sT, carry, seq_prev, seq_last = _chunk_info(s_ptr, seq_ptr, bh64, row0, c, L, NC, Q, BT, HAS_SEQ)
    return c, h, g, bh64, offs_p, offs_n, offs_p < P, offs_n < N, row0, nb, sT, carry, seq_prev, seq_last


@triton.jit
def _block(dtc_ptr, s_ptr, seq_ptr, bh64, row0, c, k, L, NC, Q: tl.constexpr, BT: tl.constexpr,
           HAS_SEQ: tl.constexpr):
    """Sub-block k of chunk c, [BT] each: position in the chunk, token rows (int64), mask, dt', s,
    sequence index (-1 past the end; 0 without seq_idx)."""
    offs = k * BT + tl.arange(0, BT)
    t = c * Q + offs
    mask_t = t < L
    rows = row0 + t
    cq = (bh64 * NC + c) * Q
    dt = tl.load(dtc_ptr + cq + offs)
    s = tl.load(s_ptr + cq + offs)
    if HAS_SEQ:
        seq = tl.load(seq_ptr + rows, mask=mask_t, other=-1)
    else:
        seq = offs * 0
    return offs, rows, mask_t, dt, s, seq


@triton.jit
def _tile(ptr, rows, mask_t, stride, col, width, offs, mask_c):
    """[BT, block] tile of a [B, L, ..., width] tensor whose token rows lie `stride` elements apart (a
    row's [..., width] contiguous in it) at token rows, index col of the middle dimension, columns offs."""
    return tl.load(ptr + (rows * stride + col * width)[:, None] + offs[None, :],
                   mask=mask_t[:, None] & mask_c[None, :], other=0.0)


@triton.jit
def _exp(x):
    """e^x as 2^(x log2 e): Triton compiles exp2 to PTX's ex2.approx.ftz.f32, one MUFU.EX2, where tl.exp's
    ex2.approx.f32 takes three more for subnormal results (a compare and two predicated multiplies).
    Results below 2^-126 are 0. H200, L 16K, one process: _chunk_scan 400 -> 389 µs, forward+backward
    3.39 -> 3.29 ms; outputs and gradients bit-identical."""
    return tl.exp2(x * 1.4426950408889634)


@triton.jit
def _decay(offs_i, s_i, seq_i, offs_j, s_j, seq_j):
    """exp(s_t - s_u) for targets t (rows) and sources u (columns) of one sequence with t >= u, else 0."""
    keep = (offs_i[:, None] >= offs_j[None, :]) & (seq_i[:, None] == seq_j[None, :])
    return tl.where(keep, _exp(s_i[:, None] - s_j[None, :]), 0.0)


@triton.jit
def _after_previous(PDL: tl.constexpr):
    """With PDL, at a forward kernel's start: wait for the kernel before it (its writes visible), then let
    the next one launch, whose programs so wait on the SMs rather than in the launch queue."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


@triton.jit
def _chunk_cumsum(dt_ptr, A_ptr, bias_ptr, dtc_ptr, s_ptr, w_ptr, b, c, hb, L, H, NC, dt_lo, dt_hi,
                  HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, LIMIT: tl.constexpr, Q: tl.constexpr,
                  BH: tl.constexpr, STORE_W: tl.constexpr):
    """Chunk c of batch b, heads block hb: dt [B, L, H] -> dt' (dt_eff) and s = cumsum(dt' A) within the chunk, into
    [B, H, NC, Q] (0 / constant past L); with STORE_W also each token's weight in the chunk's own state,
    w = exp(s_end - s_t) dt'_t, as _state_weights forms it without seq_idx (for the Gluon state pass)."""
    offs_q = tl.arange(0, Q)
    offs_h = hb * BH + tl.arange(0, BH)
    mask_h = offs_h < H
    t = c * Q + offs_q
    m = (t < L)[:, None] & mask_h[None, :]
    rows = b.to(tl.int64) * L + t
    raw = tl.load(dt_ptr + rows[:, None] * H + offs_h[None, :], mask=m, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw += tl.load(bias_ptr + offs_h, mask=mask_h, other=0.0).to(tl.float32)[None, :]
    dt = tl.where(m, dt_eff(raw, dt_lo, dt_hi, SOFTPLUS, LIMIT), 0.0)
    A = tl.load(A_ptr + offs_h, mask=mask_h, other=0.0).to(tl.float32)
    s = tl.cumsum(dt * A[None, :], axis=0)
    # past the end, s is the last token's exactly (the compiled cumsum is a tree, whose padded entries may round
    # apart from it): s at the chunk's end Q - 1, which the state pass reads, then gives the last token a weight of 1
    s = tl.where((t < L)[:, None], s, tl.sum(tl.where((t == L - 1)[:, None], s, 0.0), axis=0)[None, :])
    out = ((b * H + offs_h).to(tl.int64) * NC + c)[None, :] * Q + offs_q[:, None]
    keep = mask_h[None, :] & (offs_q[:, None] < Q)
    tl.store(dtc_ptr + out, dt, mask=keep)
    tl.store(s_ptr + out, s, mask=keep)
    if STORE_W:
        sT = tl.sum(tl.where(offs_q[:, None] == Q - 1, s, 0.0), axis=0)
        tl.store(w_ptr + out, _exp(sT[None, :] - s) * dt, mask=keep)


@triton.jit
def _state_weights(dtc_ptr, s_ptr, seq_ptr, bh64, row0, c, L, NC, Q: tl.constexpr, HAS_SEQ: tl.constexpr):
    """What chunk c's own state needs besides its x and B tiles: each token's weight in it,
    exp(s_end - s_t) dt'_t ([Q], 0 for tokens of another sequence than the chunk's last), and the
    factor carry of the entering state."""
    nb, sT, carry, seq_prev, seq_last = _chunk_info(s_ptr, seq_ptr, bh64, row0, c, L, NC, Q, Q, HAS_SEQ)
    offs, rows, mask_t, dt, s, seq = _block(dtc_ptr, s_ptr, seq_ptr, bh64, row0, c, 0, L, NC, Q, Q, HAS_SEQ)
    return tl.where(seq == seq_last, _exp(sT - s) * dt, 0.0), carry


@triton.jit
def _pass_program(first_ptr, L, H, G, P, N, BP: tl.constexpr, BN: tl.constexpr, HAS_FIRST: tl.constexpr):
    """What a (batch·head, P block, N block) program of the serial passes starts from: (batch, head) as
    int64, head, group, the batch's first token row, the P and N offsets and masks, and, for the carry
    held transposed [BN, BP], its offsets into a [P, N] state (so: h0, hT, dL/dhT, dL/dh0) and into a
    chunk's [N, P] one (st: the entering states and their gradients), their mask, and the carry itself,
    float32: first_ptr's block (h0 or dL/dhT) or 0."""
    bh64 = tl.program_id(0).to(tl.int64)
    h = tl.program_id(0) % H
    offs_p, offs_n = tl.program_id(1) * BP + tl.arange(0, BP), tl.program_id(2) * BN + tl.arange(0, BN)
    mask_p, mask_n = offs_p < P, offs_n < N
    so = offs_n[:, None] + offs_p[None, :] * N
    st = offs_n[:, None] * P + offs_p[None, :]
    mask_s = mask_n[:, None] & mask_p[None, :]
    v = tl.zeros((BN, BP), dtype=tl.float32)
    if HAS_FIRST:
        v += tl.load(first_ptr + bh64 * P * N + so, mask=mask_s, other=0.0).to(tl.float32)
    return (bh64, h, h // (H // G), (tl.program_id(0) // H).to(tl.int64) * L, offs_p, offs_n, mask_p, mask_n, so,
            st, mask_s, v)


@triton.jit
def _state_pass(x_ptr, B_ptr, seq_ptr, dtc_ptr, s_ptr, h0_ptr, hin_ptr, hT_ptr, L, H, G, P, N, NC, SX, SB,
                HAS_H0: tl.constexpr, HAS_SEQ: tl.constexpr, Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                PREC: tl.constexpr, PDL: tl.constexpr):
    """The forward's serial pass with each chunk's own state formed in it, over one (batch, head)'s
    [P block, N block], the state held transposed, hᵀ [BN, BP]: walking the chunks c, hin[c] = hᵀ, then
    hᵀ = hᵀ · carry[c] + Σ_t exp(s_end - s_t) dt'_t B_t ⊗ x_t (one [BN, Q]·[Q, BP] dot); the last h is
    the final state. The loads are left to the compiler's pipelining: with num_stages > 1 each chunk's
    tiles are copied into shared memory stages ahead, while the steps before compute.
    Why transposed: Bᵀ is the dot's first operand straight from the shared memory the pipelining loaded
    it into, and the weighted x, formed in registers, is stored there once as the second. In the other
    order, h = (x ∘ w)ᵀ B, the weighted x was the first operand, taken in registers: stored to shared
    memory and read back by each of the two warp groups. H200, L 16K, one process (eighteenth run):
    the pass 206 -> 189 µs, outputs and gradients bit-identical."""
    _after_previous(PDL)
    bh64, h, g, row0, offs_p, offs_n, mask_p, mask_n, so, st, mask_s, state = _pass_program(
        h0_ptr, L, H, G, P, N, BP, BN, HAS_H0)
    offs_q = tl.arange(0, Q)
    for c in range(NC):
        tl.store(hin_ptr + (bh64 * NC + c) * P * N + st, state.to(hin_ptr.dtype.element_ty), mask=mask_s)
        mask_t = c * Q + offs_q < L
        x = _tile(x_ptr + (row0 + c * Q) * SX, offs_q, mask_t, SX, h, P, offs_p, mask_p)
        Bm = _tile(B_ptr + (row0 + c * Q) * SB, offs_q, mask_t, SB, g, N, offs_n, mask_n)
        w, carry = _state_weights(dtc_ptr, s_ptr, seq_ptr, bh64, row0, c, L, NC, Q, HAS_SEQ)
        xw = (x.to(tl.float32) * w[:, None]).to(x.dtype)
        state = state * carry + tl.dot(tl.trans(Bm), xw, input_precision=PREC)
    tl.store(hT_ptr + bh64 * P * N + so, state, mask=mask_s)


@triton.jit
def _entry_tiles(C_ptr, seq_ptr, dtc_ptr, s_ptr, dy_ptr, bh64, row0, h, g, c, L, H, G, P, N, NC, SC,
                 offs_q, offs_p, offs_n, mask_p, mask_n, Q: tl.constexpr, HAS_SEQ: tl.constexpr):
    """What chunk c's own gradient of its entering state, Σ_t exp(s_t) g_t ⊗ C_t, takes: exp(s_t) g_t
    [Q, P block] in C's dtype (0 for tokens of another sequence than the one before the chunk), the
    C tile [Q, N block], and the factor carry of the entering state in the leaving one."""
    nb, sT, carry, seq_prev, seq_last = _chunk_info(s_ptr, seq_ptr, bh64, row0, c, L, NC, Q, Q, HAS_SEQ)
    offs, rows, mask_t, dt, s, seq = _block(dtc_ptr, s_ptr, seq_ptr, bh64, row0, c, 0, L, NC, Q, Q, HAS_SEQ)
    Cm = _tile(C_ptr + (row0 + c * Q) * SC, offs_q, mask_t, SC, g, N, offs_n, mask_n)
    gy = _tile(dy_ptr + (row0 + c * Q) * H * P, offs_q, mask_t, H * P, h, P, offs_p, mask_p).to(tl.float32)
    return (gy * tl.where(seq == seq_prev, _exp(s), 0.0)[:, None]).to(Cm.dtype), Cm, carry


@triton.jit
def _dstate_pass(C_ptr, seq_ptr, dtc_ptr, s_ptr, dy_ptr, dhT_ptr, dout_ptr, dh0_ptr, L, H, G, P, N, NC, SC,
                 HAS_FIRST: tl.constexpr, HAS_SEQ: tl.constexpr, Q: tl.constexpr,
                 BP: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr):
    """The backward's serial pass, the state pass reversed, over one (batch, head)'s [P block, N block],
    held transposed as the state pass holds its state, vᵀ [BN, BP]: walking the chunks c from the last,
    dout[c] = vᵀ (the gradient of the state leaving c, stored [N, P]), then
    vᵀ = vᵀ · carry[c] + Σ_t exp(s_t) C_t ⊗ g_t (c's own gradient of its entering state, one
    [BN, Q]·[Q, BP] dot: Cᵀ straight from the pipelining's shared memory, the weighted g stored there
    once), from v = dL/dhT (or 0); the last v is dL/dh0. Pipelined as the state pass."""
    bh64, h, g, row0, offs_p, offs_n, mask_p, mask_n, so, st, mask_s, v = _pass_program(
        dhT_ptr, L, H, G, P, N, BP, BN, HAS_FIRST)
    offs_q = tl.arange(0, Q)
    for i in range(NC):
        c = NC - 1 - i
        tl.store(dout_ptr + (bh64 * NC + c) * P * N + st, v.to(dout_ptr.dtype.element_ty), mask=mask_s)
        gs, Cm, carry = _entry_tiles(C_ptr, seq_ptr, dtc_ptr, s_ptr, dy_ptr, bh64, row0, h, g, c, L, H, G, P, N,
                                     NC, SC, offs_q, offs_p, offs_n, mask_p, mask_n, Q, HAS_SEQ)
        v = v * carry + tl.dot(tl.trans(Cm), gs, input_precision=PREC)
    tl.store(dh0_ptr + bh64 * P * N + so, v, mask=mask_s)


@triton.jit
def _chunk_cb(B_ptr, C_ptr, cb16_ptr, sc_ptr, cb32_ptr, b, c, g, k, L, G, N, NC, SB, SC, Q: tl.constexpr,
              BT: tl.constexpr,
              BN: tl.constexpr, PREC: tl.constexpr, STORE16: tl.constexpr, STORE32: tl.constexpr):
    """C_t · B_u of chunk c of batch b and group g, target rows t of sub-block k [BT, Q]: every head of
    the group reads it rather than forming it (zero past L). Into [B, NC, G, Q, Q] buffers:
      STORE16: cb16 float16, each row scaled by a power of two (its scale in sc [B, NC, G, Q] float32)
               that puts the row's largest |CB| in [2^13, 2^14): float16 keeps 11 bits of every entry
               whatever the magnitude of B and C, and the scaling is exact;
      STORE32: cb32 float32 as it is."""
    pid = (b * NC + c) * G + g
    row0 = b.to(tl.int64) * L
    offs_i = k * BT + tl.arange(0, BT)
    offs_q = tl.arange(0, Q)
    offs_n = tl.arange(0, BN)
    mask_n = offs_n < N
    Ci = _tile(C_ptr, row0 + c * Q + offs_i, c * Q + offs_i < L, SC, g, N, offs_n, mask_n)
    Bq = _tile(B_ptr, row0 + c * Q + offs_q, c * Q + offs_q < L, SB, g, N, offs_n, mask_n)
    cb = tl.dot(Ci, tl.trans(Bq), input_precision=PREC)
    out = pid.to(tl.int64) * Q * Q + offs_i[:, None] * Q + offs_q[None, :]
    if STORE32:
        tl.store(cb32_ptr + out, cb)
    if STORE16:
        # the biased exponent e of the row's max |CB| (0 for a row of zeros, 255 for inf or nan): scale
        # 2^(e - 127 - 13), clamped to normal numbers; 1 / scale is exact too
        e = (tl.max(tl.abs(cb), axis=1).to(tl.int32, bitcast=True) >> 23) & 255
        e = tl.minimum(tl.maximum(e - 13, 1), 253)
        tl.store(sc_ptr + pid.to(tl.int64) * Q + offs_i, (e << 23).to(tl.float32, bitcast=True))
        tl.store(cb16_ptr + out, (cb * ((254 - e) << 23).to(tl.float32, bitcast=True)[:, None]).to(tl.float16))


@triton.jit
def _chunk_prep(dt_ptr, A_ptr, bias_ptr, dtc_ptr, s_ptr, w_ptr, B_ptr, C_ptr, cb16_ptr, sc_ptr, cb32_ptr, L, H, G,
                N, NC, NHB, SB, SC, dt_lo, dt_hi, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                LIMIT: tl.constexpr, Q: tl.constexpr,
                BH: tl.constexpr, BT: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr, STORE16: tl.constexpr,
                STORE32: tl.constexpr, STORE_W: tl.constexpr, PDL: tl.constexpr):
    """The forward's two parallel preparations of chunk program_id(0) = b·NC + c in one launch, as they read
    different inputs: program_id(1) < NHB takes _chunk_cumsum's heads block program_id(1), the others
    _chunk_cb's sub-block and group (sub-block fastest). H200, B4 H32 P64 N128 bf16, one process (nineteenth
    run; outputs and gradients bit-identical): as two launches 4.5 + 6.4 µs at L 4K and 8.3 + 18.7 at 16K,
    in one 7.2 and 25.1; the 4K forward replayed from a CUDA graph 166 -> 161-164 µs."""
    _after_previous(PDL)
    b = tl.program_id(0) // NC
    c = tl.program_id(0) % NC
    r = tl.program_id(1)
    if r < NHB:
        _chunk_cumsum(dt_ptr, A_ptr, bias_ptr, dtc_ptr, s_ptr, w_ptr, b, c, r, L, H, NC, dt_lo, dt_hi, HAS_BIAS,
                      SOFTPLUS, LIMIT, Q, BH, STORE_W)
    else:
        r -= NHB
        _chunk_cb(B_ptr, C_ptr, cb16_ptr, sc_ptr, cb32_ptr, b, c, r // (Q // BT), r % (Q // BT), L, G, N, NC, SB, SC,
                  Q, BT,
                  BN, PREC, STORE16, STORE32)


@triton.jit
def _cb_tile(cb_ptr, sc_ptr, H, NC, G, c, g, offs_i, offs_j, Q: tl.constexpr, SCALED: tl.constexpr,
             LOWER: tl.constexpr):
    """CB[t, u] of the program's chunk and group for targets offs_i, sources offs_j (chunk positions),
    [BT, BT] float32 from one of _chunk_cb's buffers: float32 as it is, or (SCALED) float16 times the
    scales of its rows. Only t >= u is ever used: LOWER skips the groups of 8 columns wholly above the
    diagonal (zeros there). H200, L 16K, one process: _chunk_grads 1795 -> 1752 µs with it, _chunk_scan
    432 -> 442 µs."""
    base = (tl.program_id(0) // (H * NC)).to(tl.int64) * NC * G + c * G + g
    ptrs = cb_ptr + base * Q * Q + (offs_i[:, None] * Q + offs_j[None, :])
    if LOWER:
        cb = tl.load(ptrs, mask=(offs_i // 8)[:, None] >= (offs_j // 8)[None, :], other=0.0).to(tl.float32)
    else:
        cb = tl.load(ptrs).to(tl.float32)
    if SCALED:
        cb = cb * tl.load(sc_ptr + base * Q + offs_i)[:, None]
    return cb


@triton.jit
def _pair_ij(p):
    """The p-th pair (target i, source j <= i) of sub-blocks, in the order (0, 0), (1, 0), (1, 1),
    (2, 0), ...: i = floor((sqrt(8p + 1) - 1) / 2), exact in float32 for any chunk's count of pairs."""
    i = ((tl.sqrt_rn(tl.cast(8 * p + 1, tl.float32)) - 1.0) * 0.5).to(tl.int32)
    return i, p - i * (i + 1) // 2


@triton.jit
def _chunk_scan(x_ptr, C_ptr, cb_ptr, sc_ptr, D_ptr, z_ptr, seq_ptr, dtc_ptr, s_ptr, hin_ptr, y_ptr, ypre_ptr,
                x_desc, cb_desc, C_desc, hin_desc, L, H, G, P, N, NC, SX, SC,
                HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_Z: tl.constexpr, HAS_SEQ: tl.constexpr,
                STORE_YPRE: tl.constexpr, SCALED: tl.constexpr, TMA_PAIR: tl.constexpr, TMA_IN: tl.constexpr,
                Q: tl.constexpr, BT: tl.constexpr,
                BP: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr, PDL: tl.constexpr):
    """y of one chunk and P block, in one loop over the sub-block pairs t >= u (so that the compiler's
    pipelining loads each pair's tiles while the pair before computes, across target sub-blocks too):
    a target sub-block's y starts, at its first pair, as the entering state's part exp(s_t) C_t · h_in,
    takes (CB[t, u] ∘ decay ∘ dt'_u) x_u from each pair (CB from _chunk_cb: SCALED, float16 with its rows'
    scales in sc), and is stored at its last.
    TMA_PAIR / TMA_IN: a pair's x and CB tiles / a target's C tile and the entering state are read through
    tensor descriptors (see _descriptors: x [B, L, H, P], CB [B·NC·G·Q, Q], C [B, L, G, N], hin [B·H·NC, N, P];
    what lies past L, P or N reads as 0, as the masks give), which the copy engine (TMA) moves into
    shared memory.
    """
    _after_previous(PDL)
    c, h, g, bh64, offs_p, offs_n, mask_p, mask_n, row0, nb, sT, carry, seq_prev, seq_last = _program(
        s_ptr, seq_ptr, L, H, G, P, N, NC, Q, BT, BP, BN, HAS_SEQ)
    b, p0 = tl.program_id(0) // (H * NC), tl.program_id(1) * BP
    if TMA_IN:
        stateT = hin_desc.load([(bh64 * NC + c).to(tl.int32), 0, p0]).reshape(BN, BP)
    else:
        st = (bh64 * NC + c) * P * N + offs_n[:, None] * P + offs_p[None, :]  # hin[c] is [N, P]
        stateT = tl.load(hin_ptr + st, mask=mask_n[:, None] & mask_p[None, :], other=0.0)
    stateT = stateT.to(x_ptr.dtype.element_ty)
    Dv = _skip_D(D_ptr, h, P, offs_p, mask_p, HAS_D, D_PER_P)
    # the chunk's first token row on the base pointers: the tiles' rows within it are int32 offsets
    at = (row0 + c * Q) * H * P
    x_ptr += (row0 + c * Q) * SX
    y_ptr += at
    if HAS_Z:
        z_ptr += at
    if STORE_YPRE:
        ypre_ptr += at
    C_ptr += (row0 + c * Q) * SC
    y = tl.zeros((BT, BP), dtype=tl.float32)
    for p in range(nb * (nb + 1) // 2):
        i, j = _pair_ij(p)
        offs_i, rows_i, mask_i, dt_i, s_i, seq_i = _block(dtc_ptr, s_ptr, seq_ptr, bh64, row0, c, i, L, NC, Q, BT,
                                                       HAS_SEQ)
        offs_j, rows_j, mask_j, dt_j, s_j, seq_j = _block(dtc_ptr, s_ptr, seq_ptr, bh64, row0, c, j, L, NC, Q, BT,
                                                          HAS_SEQ)
        if TMA_PAIR:
            xj = x_desc.load([b, c * Q + j * BT, h, p0]).reshape(BT, BP)
            CB = cb_desc.load([((b * NC + c) * G + g) * Q + i * BT, j * BT]).to(tl.float32)
            if SCALED:
                CB = CB * tl.load(sc_ptr + ((b.to(tl.int64) * NC + c) * G + g) * Q + offs_i)[:, None]
        else:
            xj = _tile(x_ptr, offs_j, mask_j, SX, h, P, offs_p, mask_p)
            CB = _cb_tile(cb_ptr, sc_ptr, H, NC, G, c, g, offs_i, offs_j, Q, SCALED, False)
        if j == 0:  # the target's first pair
            if TMA_IN:
                Ci = C_desc.load([b, c * Q + i * BT, g, 0]).reshape(BT, BN)
            else:
                Ci = _tile(C_ptr, offs_i, mask_i, SC, g, N, offs_n, mask_n)
            y = tl.dot(Ci, stateT, input_precision=PREC)
            y = tl.where(seq_i == seq_prev, _exp(s_i), 0.0)[:, None] * y
        W = CB * _decay(offs_i, s_i, seq_i, offs_j, s_j, seq_j) * dt_j[None, :]
        y += tl.dot(W.to(xj.dtype), xj, input_precision=PREC)
        if j == i:  # the target's last pair: xj is its own x
            xo = (offs_i * H + h)[:, None] * P + offs_p[None, :]
            _finish_y(y, xj.to(tl.float32), Dv, z_ptr, y_ptr, ypre_ptr, xo, mask_i[:, None] & mask_p[None, :],
                      HAS_D, HAS_Z, STORE_YPRE)


@triton.jit
def _gate_grads(dy_ptr, z_ptr, ypre_ptr, x_ptr, gy_ptr, dz_ptr, dD_ptr, R, HP, SX,
                HAS_D: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    """Back through the gate y = y_pre silu(z), over [R = B·L rows, HP = H·P columns] in [BR, BC] tiles:
    gy = dL/dy_pre = dy silu(z) (in dy's dtype: the kernels after it take gy for dy), dz = dy y_pre σ(z)
    (1 + z (1 - σ(z))) and, HAS_D, the tile's column sums of gy x [cdiv(R, BR), HP] float32 (dD's parts,
    from gy before its rounding)."""
    rows = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    m = (rows < R)[:, None] & (cols < HP)[None, :]
    o = rows[:, None] * HP + cols[None, :]
    g = tl.load(dy_ptr + o, mask=m, other=0.0).to(tl.float32)
    zv = tl.load(z_ptr + o, mask=m, other=0.0).to(tl.float32)
    yp = tl.load(ypre_ptr + o, mask=m, other=0.0).to(tl.float32)
    sz = tl.sigmoid(zv)
    gy = g * zv * sz
    tl.store(gy_ptr + o, gy.to(gy_ptr.dtype.element_ty), mask=m)
    tl.store(dz_ptr + o, (g * yp * sz * (1.0 + zv * (1.0 - sz))).to(dz_ptr.dtype.element_ty), mask=m)
    if HAS_D:
        xv = tl.load(x_ptr + rows[:, None] * SX + cols[None, :], mask=m, other=0.0).to(tl.float32)
        tl.store(dD_ptr + tl.program_id(0).to(tl.int64) * HP + cols, tl.sum(gy * xv, axis=0), mask=cols < HP)


# The backward of a chunk, with g = dL/dy before the gate, R[t, u] = decay[t, u] dt'_u (g_t . x_u) and
# M[t, u] = CB[t, u] R[t, u] over the token pairs t >= u:
#   dx_u = dt'_u (Σ_t decay CB[t, u] g_t + w_out(u) dL/dh_out · B_u) + D g_u,   d(dt'_u) = x_u . dx_u / dt'_u
#   dC_t = Σ_u R[t, u] B_u + exp(s_t) g_t · h_in,     dB_u = Σ_t R[t, u] C_t + w_out(u) dt'_u x_u · dL/dh_out
# ds = dL/ds (s the in-chunk cumsum of dt' A): each pair t > u adds M[t, u] to ds_t and takes it from
# ds_u (the pairs t = u, decay 1 whatever s, are left out rather than added and taken away: dA comes out
# exactly 0 where it is, as in the float64 reference), the entering state's terms exp(s_t) g_t . C_t h_in
# add to ds_t, and the leaving state's terms w_out(u) dt'_u x_u ⊗ B_u move from ds_u to ds at the chunk's
# end; then d(dt'_u) += A Σ_{t>=u} ds_t. Everything but dB and dC is a head's own: _chunk_grads works
# it out per (batch, chunk, head, P block). dB and dC are sums over the group's heads: _group_dC sums
# dCB = Σ_h R_h and the entering-state terms over the heads in its loop, and hands dCB to _group_dB,
# so that dC = dCB B and dB = dCBᵀ C are formed once a group rather than once a head.


@triton.jit
def _pair(gi, xj, CB, offs_i, s_i, seq_i, offs_j, s_j, seq_j, dt_j, PREC: tl.constexpr):
    """The products of target sub-block i (rows t; gi its gradient of y [BT, P block] in the inputs'
    dtype) and source sub-block j (columns u; xj [BT, P block]) given their CB [BT, BT]: decay and
    M = CB R for t > u, else 0 (on t = u the decay is 1, independent of s)."""
    decay = _decay(offs_i, s_i, seq_i, offs_j, s_j, seq_j)
    R = decay * dt_j[None, :] * tl.dot(gi, tl.trans(xj), input_precision=PREC)
    return decay, tl.where(offs_i[:, None] > offs_j[None, :], R * CB, 0.0)


@triton.jit
def _add_row(rows, part, k):
    """rows [Q / BT, BT] (a chunk's [Q] values, a sub-block a row) with part [BT] added to row k."""
    return rows + tl.where(tl.arange(0, rows.shape[0])[:, None] == k, part[None, :], 0.0)


@triton.jit
def _chunk_grads(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, cb_ptr, D_ptr, bias_ptr, seq_ptr, dtc_ptr, s_ptr,
                 hin_ptr, dout_ptr, dy_ptr, dx_ptr, ddt_ptr, dA_ptr, dD_ptr,
                 L, H, G, P, N, NC, BLH, SX, SB, SC, dt_lo, dt_hi,
                 HAS_D: tl.constexpr, D_PER_P: tl.constexpr, SUM_DD: tl.constexpr, HAS_BIAS: tl.constexpr,
                 SOFTPLUS: tl.constexpr, LIMIT: tl.constexpr, HAS_SEQ: tl.constexpr, Q: tl.constexpr, BT: tl.constexpr,
                 BP: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr):
    """A head's backward of one chunk and P block, given dy (dL/dy before the gate: _gate_grads's gy
    when there is one), the state entering the chunk (hin) and the gradient of the one leaving it (dout):
    dx [B, L, H, P], and this P block's parts of d(dt + dt_bias) [NPB, B, L, H] (through dt_back),
    dA [NPB, B·NC·H] and, SUM_DD, dD [B, H, NC, P] per chunk. Walks the source sub-blocks j and, for
    each, the targets i >= j: dx_j sums over the targets, each pair's M goes to ds_i and from ds_j;
    sub-block j's own target term (the entering state's ds) comes with it."""
    c, h, g, bh64, offs_p, offs_n, mask_p, mask_n, row0, nb, sT, carry, seq_prev, seq_last = _program(
        s_ptr, seq_ptr, L, H, G, P, N, NC, Q, BT, BP, BN, HAS_SEQ)
    pb = tl.program_id(1)
    xdt = x_ptr.dtype.element_ty
    mask_pn = mask_p[:, None] & mask_n[None, :]
    sn = (bh64 * NC + c) * P * N + offs_p[:, None] + offs_n[None, :] * P  # hin[c] and dout[c] are [N, P]
    dstate = tl.load(dout_ptr + sn, mask=mask_pn, other=0.0)
    state = tl.load(hin_ptr + sn, mask=mask_pn, other=0.0)
    # ds at the chunk's end: exp(s_end) scales the entering state in the leaving one (the sources'
    # parts in it are added below)
    ds_T = carry * tl.sum(tl.sum(dstate.to(tl.float32) * state.to(tl.float32), axis=1), axis=0)
    dstate, state = dstate.to(xdt), state.to(xdt)
    Dv = _skip_D(D_ptr, h, P, offs_p, mask_p, HAS_D, D_PER_P)
    dD_acc = tl.zeros((BP,), dtype=tl.float32)
    ds_c = tl.zeros((Q // BT, BT), dtype=tl.float32)  # ds and d(dt') over the chunk, a sub-block a row
    ddt_c = tl.zeros((Q // BT, BT), dtype=tl.float32)
    for j in range(nb):
        offs_j, rows_j, mask_j, dt_j, s_j, seq_j = _block(dtc_ptr, s_ptr, seq_ptr, bh64, row0, c, j, L, NC, Q, BT,
                                                          HAS_SEQ)
        xj = _tile(x_ptr, rows_j, mask_j, SX, h, P, offs_p, mask_p)
        Bj = _tile(B_ptr, rows_j, mask_j, SB, g, N, offs_n, mask_n)
        Cj = _tile(C_ptr, rows_j, mask_j, SC, g, N, offs_n, mask_n)
        gj = _tile(dy_ptr, rows_j, mask_j, H * P, h, P, offs_p, mask_p).to(tl.float32)
        # as a target: the entering state's term exp(s_t) g_t . C_t h_in
        e_in = tl.where(seq_j == seq_prev, _exp(s_j), 0.0)
        ds_j = e_in * tl.sum(gj * tl.dot(Cj, tl.trans(state), input_precision=PREC), axis=1)
        dxs = tl.zeros((BT, BP), dtype=tl.float32)  # dx / dt'
        for i in range(j, nb):
            offs_i, rows_i, mask_i, dt_i, s_i, seq_i = _block(dtc_ptr, s_ptr, seq_ptr, bh64, row0, c, i, L, NC, Q, BT,
                                                           HAS_SEQ)
            gi = _tile(dy_ptr, rows_i, mask_i, H * P, h, P, offs_p, mask_p).to(xdt)
            CB = _cb_tile(cb_ptr, None, H, NC, G, c, g, offs_i, offs_j, Q, False, True)
            decay, M = _pair(gi, xj, CB, offs_i, s_i, seq_i, offs_j, s_j, seq_j, dt_j, PREC)
            ds_j -= tl.sum(M, axis=0)
            ds_c = _add_row(ds_c, tl.sum(M, axis=1), i)
            dxs += tl.dot(tl.trans((decay * CB).to(xdt)), gi, input_precision=PREC)
        # the sub-block's part in the state the chunk hands on: w_out dt' x ⊗ B, with exp(-s_u) in w_out
        w_out = tl.where(seq_j == seq_last, _exp(sT - s_j), 0.0)
        dHB = w_out[:, None] * tl.dot(Bj, tl.trans(dstate), input_precision=PREC)
        w = dt_j * tl.sum(xj.to(tl.float32) * dHB, axis=1)
        ds_T += tl.sum(w, axis=0)
        ds_c = _add_row(ds_c, ds_j - w, j)
        dxs += dHB
        ddt_c = _add_row(ddt_c, tl.sum(xj.to(tl.float32) * dxs, axis=1), j)
        dx = dt_j[:, None] * dxs
        if HAS_D:
            dx += Dv * gj
        if SUM_DD:
            dD_acc += tl.sum(gj * xj.to(tl.float32), axis=0)
        xo = (rows_j * H + h)[:, None] * P + offs_p[None, :]
        tl.store(dx_ptr + xo, dx.to(dx_ptr.dtype.element_ty), mask=mask_j[:, None] & mask_p[None, :])

    # s_t = Σ_{u<=t} dt'_u A: ds reaches dt'_u through every t >= u of the chunk
    offs_q = tl.arange(0, Q)
    t = c * Q + offs_q
    mask_t = t < L
    rows = row0 + t
    cq = (bh64 * NC + c) * Q + offs_q
    ds = tl.reshape(ds_c, (Q,))
    da = ds_T + tl.sum(ds, axis=0) - tl.cumsum(ds, axis=0) + ds
    tl.store(dA_ptr + pb.to(tl.int64) * tl.num_programs(0) + tl.program_id(0),
             tl.sum(da * tl.load(dtc_ptr + cq), axis=0))
    A = tl.load(A_ptr + h).to(tl.float32)
    ddt = tl.reshape(ddt_c, (Q,)) + A * da
    if SOFTPLUS or LIMIT:
        raw = tl.load(dt_ptr + rows * H + h, mask=mask_t, other=0.0).to(tl.float32)
        if HAS_BIAS:
            raw += tl.load(bias_ptr + h).to(tl.float32)
        ddt = dt_back(ddt, raw, dt_lo, dt_hi, SOFTPLUS, LIMIT)
    tl.store(ddt_ptr + pb.to(tl.int64) * BLH + rows * H + h, ddt, mask=mask_t)
    if SUM_DD:
        tl.store(dD_ptr + (bh64 * NC + c) * P + offs_p, dD_acc, mask=mask_p)


@triton.jit
def _group_program(L, G, NC, N, BN: tl.constexpr):
    """What a (batch·chunk·group, sub-block) program of the group kernels starts from: group g, chunk c,
    batch b, the sub-block, the batch's first token row, the N offsets and mask."""
    pid = tl.program_id(0)
    b = pid // (G * NC)
    offs_n = tl.arange(0, BN)
    return pid % G, (pid // G) % NC, b, tl.program_id(1), b.to(tl.int64) * L, offs_n, offs_n < N


@triton.jit
def _group_head(k, b, g, c, sub, row0, dtc_ptr, s_ptr, seq_ptr, L, H, G, P, NC, NPB, Q: tl.constexpr,
                BT: tl.constexpr, BP: tl.constexpr, HAS_SEQ: tl.constexpr):
    """The k-th (head, P block) of group g's loop: head h, (batch, head) as int64, P offsets and mask,
    s at the chunk's end, the sequence indices before the chunk and of its last token, and _block's
    sub-block sub of this head (positions, rows, mask, dt', s, sequence index)."""
    h = g * (H // G) + k // NPB
    bh64 = (b * H + h).to(tl.int64)
    offs_p = (k % NPB) * BP + tl.arange(0, BP)
    nb, sT, carry, seq_prev, seq_last = _chunk_info(s_ptr, seq_ptr, bh64, row0, c, L, NC, Q, BT, HAS_SEQ)
    offs, rows, mask, dt, s, seq = _block(dtc_ptr, s_ptr, seq_ptr, bh64, row0, c, sub, L, NC, Q, BT, HAS_SEQ)
    return h, bh64, offs_p, offs_p < P, sT, seq_prev, seq_last, offs, rows, mask, dt, s, seq


@triton.jit
def _group_dC(x_ptr, B_ptr, seq_ptr, dtc_ptr, s_ptr, hin_ptr, dy_ptr, dC_ptr, dcb_ptr,
              L, H, G, P, N, NC, NPB, SX, SB, HAS_SEQ: tl.constexpr, Q: tl.constexpr,
              BT: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr):
    """dC [B, L, G, N] (C's dtype, summed in float32) of target sub-block i of one chunk and group,
    summed over the group's heads: dCB[t, :] = Σ_h R_h[t, :] and Σ_h exp(s_t) g_t · h_in in the loop,
    then dC = that + dCB B. dCB's rows [BT, Q] go to dcb [B, NC, G, Q, Q] float32 for _group_dB."""
    g, c, b, i, row0, offs_n, mask_n = _group_program(L, G, NC, N, BN)
    dcb = tl.zeros((BT, Q), dtype=tl.float32)
    dC = tl.zeros((BT, BN), dtype=tl.float32)
    for k in range(H // G * NPB):
        h, bh64, offs_p, mask_p, sT, seq_prev, seq_last, offs_i, rows_i, mask_i, dt_i, s_i, seq_i = _group_head(
            k, b, g, c, i, row0, dtc_ptr, s_ptr, seq_ptr, L, H, G, P, NC, NPB, Q, BT, BP, HAS_SEQ)
        offs_q, rows_q, mask_q, dt_q, s_q, seq_q = _block(dtc_ptr, s_ptr, seq_ptr, bh64, row0, c, 0, L, NC, Q, Q,
                                                          HAS_SEQ)
        xq = _tile(x_ptr, rows_q, mask_q, SX, h, P, offs_p, mask_p)
        gi = _tile(dy_ptr, rows_i, mask_i, H * P, h, P, offs_p, mask_p).to(xq.dtype)
        dcb += _decay(offs_i, s_i, seq_i, offs_q, s_q, seq_q) * dt_q[None, :] * tl.dot(
            gi, tl.trans(xq), input_precision=PREC)
        hin = tl.load(hin_ptr + (bh64 * NC + c) * P * N + offs_p[:, None] + offs_n[None, :] * P,
                      mask=mask_p[:, None] & mask_n[None, :], other=0.0).to(xq.dtype)
        e_in = tl.where(seq_i == seq_prev, _exp(s_i), 0.0)
        dC += e_in[:, None] * tl.dot(gi, hin, input_precision=PREC)
    offs_q = tl.arange(0, Q)
    offs_i = i * BT + tl.arange(0, BT)
    t_q, t_i = c * Q + offs_q, c * Q + offs_i
    Bq = _tile(B_ptr, row0 + t_q, t_q < L, SB, g, N, offs_n, mask_n)
    dC += tl.dot(dcb.to(Bq.dtype), Bq, input_precision=PREC)
    tl.store(dC_ptr + ((row0 + t_i) * G + g)[:, None] * N + offs_n[None, :], dC.to(dC_ptr.dtype.element_ty),
             mask=(t_i < L)[:, None] & mask_n[None, :])
    tl.store(dcb_ptr + tl.program_id(0).to(tl.int64) * Q * Q + offs_i[:, None] * Q + offs_q[None, :], dcb)


@triton.jit
def _group_dB(x_ptr, C_ptr, seq_ptr, dtc_ptr, s_ptr, dout_ptr, dcb_ptr, dB_ptr,
              L, H, G, P, N, NC, NPB, SX, SC, HAS_SEQ: tl.constexpr, Q: tl.constexpr, BT: tl.constexpr,
              BP: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr):
    """dB [B, L, G, N] (B's dtype, summed in float32) of source sub-block j of one chunk and group,
    summed over the group's heads: Σ_h w_out(u) dt'_u x_u · dL/dh_out in the loop, then + dCBᵀ C with
    _group_dC's dCB."""
    g, c, b, j, row0, offs_n, mask_n = _group_program(L, G, NC, N, BN)
    dB = tl.zeros((BT, BN), dtype=tl.float32)
    for k in range(H // G * NPB):
        h, bh64, offs_p, mask_p, sT, seq_prev, seq_last, offs_j, rows_j, mask_j, dt_j, s_j, seq_j = _group_head(
            k, b, g, c, j, row0, dtc_ptr, s_ptr, seq_ptr, L, H, G, P, NC, NPB, Q, BT, BP, HAS_SEQ)
        xj = _tile(x_ptr, rows_j, mask_j, SX, h, P, offs_p, mask_p)
        dstate = tl.load(dout_ptr + (bh64 * NC + c) * P * N + offs_p[:, None] + offs_n[None, :] * P,
                         mask=mask_p[:, None] & mask_n[None, :], other=0.0).to(xj.dtype)  # dout[c] is [N, P]
        w_out = tl.where(seq_j == seq_last, _exp(sT - s_j), 0.0)
        dB += (w_out * dt_j)[:, None] * tl.dot(xj, dstate, input_precision=PREC)
    offs_q = tl.arange(0, Q)
    offs_j = j * BT + tl.arange(0, BT)
    t_q, t_j = c * Q + offs_q, c * Q + offs_j
    Cq = _tile(C_ptr, row0 + t_q, t_q < L, SC, g, N, offs_n, mask_n)
    dcb = tl.load(dcb_ptr + tl.program_id(0).to(tl.int64) * Q * Q + offs_q[:, None] * Q + offs_j[None, :])
    dB += tl.dot(tl.trans(dcb.to(Cq.dtype)), Cq, input_precision=PREC)
    tl.store(dB_ptr + ((row0 + t_j) * G + g)[:, None] * N + offs_n[None, :], dB.to(dB_ptr.dtype.element_ty),
             mask=(t_j < L)[:, None] & mask_n[None, :])


def pick_chunk(x, L: int, chunk: int | None) -> int:
    """The chunk length Q, a power of two; chunk forces it."""
    small = interpreting() and x.device.type != "cuda"
    return chunk or min(INTERPRET_CHUNK if small else CHUNK, _pow2(L))


def _sizes(x, B, C, chunk):
    batch, L, H, P = x.shape
    G, N = B.shape[2:]
    Q = pick_chunk(x, L, chunk)
    if Q * max(H * P, x.stride(1), B.stride(1), C.stride(1)) >= 2**31:  # the offsets within a chunk are int32
        raise ValueError(f"x: token rows of {max(H * P, x.stride(1))} elements (B: {B.stride(1)}, C: {C.stride(1)}) "
                         f"over a chunk of {Q} tokens pass 2^31 elements, past the chunked kernels' int32 offsets "
                         f"within a chunk")
    return batch, L, H, P, G, N, Q, cdiv(L, Q), _pow2(N)


def token_rows(t):
    """x [B, L, H, P], B or C [B, L, G, N] as the chunk kernels read it: as it is when its token rows lie
    evenly apart without overlapping (strides [L·s, s, P, 1], s ≥ H·P: a slice of a wider [B, L, F] tensor,
    as Mamba-2 slices x, B and C from its conv's output), else a contiguous copy."""
    _, L, H, P = t.shape
    rows = t.stride()[2:] == (P, 1) and t.stride(1) >= H * P and t.stride(0) == L * t.stride(1)
    return t if rows else t.contiguous()


def _run(kernel_fn, name: str, x, programs: int, *args, **kw):
    """Launch chunk kernel `name` over (batch · chunk · head = programs, P block) with its CONFIG
    (x [B, L, H, P] gives P; kw["Q"] the chunk length)."""
    cfg = _launch(name, x, kw["Q"], x.shape[3])
    npb = cfg.pop("NPB")
    kernel_fn[(programs, npb)](*args, **kw, **cfg)


def _pass_launch(x, forward: bool, P: int, BN: int) -> tuple:
    """(BP, BN, num_warps, num_stages) of a serial pass: its choice (STATE_PASS or DSTATE_PASS, as _choices
    picks them for x), the blocks clamped to P and N."""
    bp, bn, warps, stages = _choices(x)[1 if forward else 2]
    return min(_pow2(P), bp), min(BN, bn), warps, stages


def _state_dtype(x):
    """The entering states and their gradients are read in the input's precision by the products:
    16-bit inputs store them 16-bit (half the bytes of the largest buffers), others in float32."""
    return x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.float32


def _cb16(x) -> bool:
    """Whether the chunk scan reads C·Bᵀ in float16, each row scaled by a power of two (_chunk_cb): half
    its largest reads (H200, L 16K: forward 0.784 -> 0.727 ms). For bf16 inputs, whose products round
    CB ∘ decay ∘ dt' to bf16's 8 bits anyway: on the H200, y's error against float64 (of its norm) went
    2.325e-3 -> 2.333e-3 at B2 L4096, 2.551e-3 -> 2.556e-3 with slow decay (A in [-0.06, -0.01]) and
    2.328e-3 -> 2.337e-3 at B4 L16K (mamba_ssm: 2.324e-3, 2.461e-3, 2.326e-3). float16 inputs round to
    11 bits themselves, and storing CB in float16 too raised y's error by a fifth (L 512, interpreter:
    2.9e-4 -> 3.5e-4 of its norm), so they keep float32, as float32 inputs do."""
    return x.dtype == torch.bfloat16


def _descriptors(on: bool, *views):
    """Tensor descriptors of tensors with a contiguous last dimension, one a (tensor, block shape) pair, for the
    copy engine
    (TMA) of sm_90 and later; None when on is False, before sm_90 or Triton's host descriptors, or where a
    base or row is not 16-byte aligned. What a block holds past a tensor's end reads as 0."""
    t0 = views[0][0]
    if not on or TensorDescriptor is None or (t0.is_cuda and torch.cuda.get_device_capability(t0.device)[0] < 9):
        return None
    if any(t.data_ptr() % 16 or any(s * t.element_size() % 16 for s in (*t.stride()[:-1], t.shape[-1]))
           for t, _ in views):
        return None
    return tuple(TensorDescriptor(t, list(t.shape), list(t.stride()), block) for t, block in views)


def _tma_pays(x, programs: int) -> bool:
    """Whether the chunk scan of x [B, L, H, P] over `programs` programs takes descriptors: 16-bit inputs, and
    either enough programs to hide the descriptors' host time, or a CUDA graph being captured (its replays
    skip the host, so the encoding is paid once). torch.compile traces by the count alone (Dynamo cannot trace
    the capture query, and its graph may run captured or not)."""
    if x.element_size() > 2:
        return False
    if programs >= TMA_MIN_PROGRAMS:
        return True
    return x.is_cuda and not torch.compiler.is_compiling() and torch.cuda.is_current_stream_capturing()


def _gluon_ok(on: bool, x, sizes) -> bool:
    """Whether a Gluon kernel may take this forward: asked (on), on a GPU, not interpreted, not while torch.compile
    traces (Inductor re-emits a traced kernel's source without Gluon's imports), and where the descriptors' host
    time pays (_tma_pays)."""
    if not (on and x.is_cuda) or interpreting() or torch.compiler.is_compiling():
        return False
    return _tma_pays(x, sizes[0] * sizes[7] * sizes[2])


def _gluon_pass(x, B, seq, sizes) -> bool:
    """Whether the state pass runs in Gluon (gluon_chunked.py): GLUON_PASS, _gluon_ok, where its `fits_pass`."""
    if not _gluon_ok(GLUON_PASS, x, sizes):
        return False
    from . import gluon_chunked  # Gluon's import only where it may run
    return gluon_chunked.fits_pass(x, B, seq, sizes)


def _gluon_scan(x, C, seq, sizes, scaled: bool) -> bool:
    """Whether the chunk scan runs in Gluon (gluon_chunked.py): GLUON_SCAN, _gluon_ok, where its `fits_scan`."""
    if not _gluon_ok(GLUON_SCAN, x, sizes):
        return False
    from . import gluon_chunked
    return gluon_chunked.fits_scan(x, C, seq, sizes, scaled)


def _states(x, B, seq, dtc, s, w, h0, sizes, chain):
    """The serial state pass, in Gluon where the preparation stored the tokens' weights w (_gluon_pass),
    else in Triton: (the states entering every chunk, transposed [B, H, NC, N, P] in the state dtype, the
    final state [B, H, P, N] float32)."""
    batch, L, H, P, G, N, Q, NC, BN = sizes
    hT = torch.empty(batch, H, P, N, device=x.device, dtype=torch.float32)
    hin = torch.empty(batch, H, NC, N, P, device=x.device, dtype=_state_dtype(x))  # transposed: see _state_pass
    if w is not None:
        from . import gluon_chunked
        gluon_chunked.state_pass(x, B, w, s, h0, hin, hT, sizes, chain["PDL"])
        return hin, hT
    BP, BNP, warps, stages = _pass_launch(x, True, P, BN)
    _state_pass[(batch * H, cdiv(P, BP), cdiv(N, BNP))](
        x, B, seq, dtc, s, h0, hin, hT, L, H, G, P, N, NC, x.stride(1), B.stride(1), HAS_H0=h0 is not None,
        HAS_SEQ=seq is not None, Q=Q, BP=BP, BN=BNP, PREC=_prec(x), num_warps=warps, num_stages=stages, **chain)
    return hin, hT


def _new(t):
    """A contiguous tensor of t's shape, dtype and device (t may be a strided view: see token_rows)."""
    return torch.empty(t.shape, dtype=t.dtype, device=t.device)


def _prep(x, dt, A, B, C, dt_bias, rule, sizes, chain, *, store16, store32, store_w):
    """The chunk preparation (_chunk_prep): dt' and s [B, H, NC, Q] float32, the tokens' weights in their
    chunk's own state [B, H, NC, Q] float32 (store_w, for the Gluon state pass, else None), C·Bᵀ
    [B, NC, G, Q, Q] in float16 with its rows' scales [B, NC, G, Q] (store16, else None, None) and in float32
    (store32, else None)."""
    batch, L, H, P, G, N, Q, NC, BN = sizes
    f32 = dict(device=x.device, dtype=torch.float32)
    dtc = torch.empty(batch, H, NC, Q, **f32)
    s = torch.empty_like(dtc)
    w = torch.empty_like(dtc) if store_w else None
    cb16 = torch.empty(batch, NC, G, Q, Q, device=x.device, dtype=torch.float16) if store16 else None
    sc = torch.empty(batch, NC, G, Q, **f32) if store16 else None
    cb32 = torch.empty(batch, NC, G, Q, Q, **f32) if store32 else None
    BH, cbt = min(_pow2(H, 1), BLOCK_H), _launch("scan", x, Q, P)["BT"]
    NHB = cdiv(H, BH)
    _chunk_prep[(batch * NC, NHB + G * (Q // cbt))](
        dt, A, dt_bias, dtc, s, w, B, C, cb16, sc, cb32, L, H, G, N, NC, NHB, B.stride(1), C.stride(1),
        HAS_BIAS=dt_bias is not None, **dt_flags(rule), Q=Q, BH=BH, BT=cbt, BN=BN, PREC=_prec(x), STORE16=store16,
        STORE32=store32, STORE_W=store_w, num_warps=PASS_WARPS, **chain)
    return dtc, s, w, cb16, sc, cb32


def chunked_fwd(x, dt, A, B, C, D, z, dt_bias, rule, h0, seq, *, for_backward, chunk=None, keep_states=True):
    """y [B, L, H, P], final state [B, H, P, N] float32 and what the backward needs:
    (dt' [B, H, NC, Q], s [B, H, NC, Q], h0 or None, the entering states, y before the gate or None,
    C·Bᵀ [B, NC, G, Q, Q] float32); without keep_states only h0 and y before the gate (the rest None: the
    backward prepares the chunks and runs the state pass again).
    x, B and C may be strided views (token_rows). The chunk scan reads C·Bᵀ in float16 for bf16 inputs (see
    _cb16); the backward reads it in float32: _chunk_grads, at its register cap, spills more and is slower
    with the float16 tiles and their scales."""
    sizes = batch, L, H, P, G, N, Q, NC, BN = _sizes(x, B, C, chunk)
    pdl = pdl_ok(x, CHAIN)
    chain = dict(PDL=pdl, **({"launch_pdl": True} if pdl else {}))
    scaled = _cb16(x)
    dtc, s, w, cb16, sc, cb32 = _prep(x, dt, A, B, C, dt_bias, rule, sizes, chain, store16=scaled,
                                      store32=(for_backward and keep_states) or not scaled,
                                      store_w=_gluon_pass(x, B, seq, sizes))
    hin, hT = _states(x, B, seq, dtc, s, w, h0, sizes, chain)
    y = _new(x)
    ypre = _new(x) if for_backward and z is not None else None
    if _gluon_scan(x, C, seq, sizes, scaled):
        from . import gluon_chunked
        gluon_chunked.chunk_scan(x, C, cb16, sc, dtc, s, hin, D, z, y, ypre, sizes, chain["PDL"])
    else:
        _scan(x, C, cb16 if scaled else cb32, sc, D, z, dt_bias, rule, seq, dtc, s, hin, y, ypre, sizes,
              chain)
    if not keep_states:
        return y, hT, (None, None, h0, None, ypre, None)
    return y, hT, (dtc, s, h0, hin, ypre, cb32)


def _scan(x, C, cb, sc, D, z, dt_bias, rule, seq, dtc, s, hin, y, ypre, sizes, chain):
    """The Triton chunk scan (_chunk_scan) into y (and ypre, y before the gate, when given), from C·Bᵀ cb (float16
    with its rows' scales sc, or float32 with sc None); its tiles through TMA descriptors where they pay."""
    batch, L, H, P, G, N, Q, NC, BN = sizes
    scan = _launch("scan", x, Q, P)
    pair = enter = None
    if _tma_pays(x, batch * NC * H):
        tma = _launch("scan_tma", x, Q, P)  # the descriptors' blocks are its tiles
        cbt, bp = tma["BT"], tma["BP"]
        pair = _descriptors("pair" in TMA, (x, [1, cbt, 1, bp]), (cb.view(-1, Q), [cbt, cbt]))
        enter = _descriptors("in" in TMA, (C, [1, cbt, 1, BN]), (hin.view(-1, N, P), [1, BN, bp]))
        if pair or enter:
            scan = tma
    fl = _flags(D, z, dt_bias, rule)
    _chunk_scan[(batch * NC * H, scan.pop("NPB"))](
        x, C, cb, sc, D, z, seq, dtc, s, hin, y, ypre, *(pair or (None,) * 2), *(enter or (None,) * 2), L, H, G, P, N,
        NC, x.stride(1), C.stride(1), HAS_D=fl["HAS_D"], D_PER_P=fl["D_PER_P"], HAS_Z=fl["HAS_Z"],
        HAS_SEQ=seq is not None, STORE_YPRE=ypre is not None, SCALED=cb.dtype == torch.float16,
        TMA_PAIR=pair is not None, TMA_IN=enter is not None, Q=Q, BN=BN, PREC=_prec(x), **chain, **scan)


def chunked_bwd(dy, dhT, x, dt, A, B, C, D, z, dt_bias, rule, seq, dtc, s, h0, hin, ypre, cb, *,
                chunk=None):
    """Gradients of x, dt, A, B, C, D, z, dt_bias and the initial state (float32 except dx, dz, dB, dC:
    their inputs' dtype)."""
    sizes = batch, L, H, P, G, N, Q, NC, BN = _sizes(x, B, C, chunk)
    f32 = dict(device=x.device, dtype=torch.float32)
    if hin is None:  # not kept by the forward (keep_states=False): the chunk preparation and the state pass again
        dtc, s, w, _, _, cb = _prep(x, dt, A, B, C, dt_bias, rule, sizes, dict(PDL=False), store16=False,
                                    store32=True, store_w=_gluon_pass(x, B, seq, sizes))
        hin, _ = _states(x, B, seq, dtc, s, w, h0, sizes, dict(PDL=False))
    dz = dD_gate = None
    if z is not None:  # back through the gate first: the kernels below take gy = dL/d(y before it) for dy
        gy, dz = torch.empty_like(dy), torch.empty_like(z)
        R, HP = batch * L, H * P
        if D is not None:
            dD_gate = torch.empty(cdiv(R, GATE_BLOCK[0]), HP, **f32)
        _gate_grads[(cdiv(R, GATE_BLOCK[0]), cdiv(HP, GATE_BLOCK[1]))](
            dy, z, ypre, x, gy, dz, dD_gate, R, HP, x.stride(1), HAS_D=D is not None, BR=GATE_BLOCK[0],
            BC=GATE_BLOCK[1], num_warps=GATE_WARPS)
        dy = gy
    dout = torch.empty(batch, H, NC, N, P, device=x.device, dtype=hin.dtype)  # transposed: see _dstate_pass
    dh0 = torch.empty(batch, H, P, N, **f32)
    BP, BNP, warps, stages = _pass_launch(x, False, P, BN)
    _dstate_pass[(batch * H, cdiv(P, BP), cdiv(N, BNP))](
        C, seq, dtc, s, dy, dhT, dout, dh0, L, H, G, P, N, NC, C.stride(1), HAS_FIRST=dhT is not None,
        HAS_SEQ=seq is not None, Q=Q, BP=BP, BN=BNP, PREC=_prec(x), num_warps=warps, num_stages=stages)
    NPB = _launch("grads", x, Q, P)["NPB"]
    dx = _new(x)
    ddt = torch.empty(NPB, batch, L, H, **f32)
    dA = torch.empty(NPB, batch * NC * H, **f32)
    sum_dd = D is not None and z is None
    dD_chunks = torch.empty(batch, H, NC, P, **f32) if sum_dd else None
    _run(_chunk_grads, "grads", x, batch * NC * H,
         x, dt, A, B, C, cb, D, dt_bias, seq, dtc, s, hin, dout, dy, dx, ddt, dA, dD_chunks,
         L, H, G, P, N, NC, batch * L * H, x.stride(1), B.stride(1), C.stride(1), HAS_D=D is not None,
         D_PER_P=D is not None and D.dim() == 2, SUM_DD=sum_dd, HAS_BIAS=dt_bias is not None,
         **dt_flags(rule), HAS_SEQ=seq is not None, Q=Q, BN=BN, PREC=_prec(x))
    # dC, dB: programs over (batch, chunk, group) and sub-blocks, each walking the group's heads
    cfg = _launch("group", x, Q, P)
    grid, npb = (batch * NC * G, Q // cfg["BT"]), cfg.pop("NPB")
    dC, dB = _new(C), _new(B)  # stored as the kernels' float32 sums round
    dcb = torch.empty(batch, NC, G, Q, Q, **f32)
    _group_dC[grid](x, B, seq, dtc, s, hin, dy, dC, dcb, L, H, G, P, N, NC, npb, x.stride(1), B.stride(1),
                    HAS_SEQ=seq is not None, Q=Q, BN=BN, PREC=_prec(x), **cfg)
    _group_dB[grid](x, C, seq, dtc, s, dout, dcb, dB, L, H, G, P, N, NC, npb, x.stride(1), C.stride(1),
                    HAS_SEQ=seq is not None, Q=Q, BN=BN, PREC=_prec(x), **cfg)
    ddt = ddt.sum(0) if NPB > 1 else ddt[0]
    dD = None
    if D is not None:  # [B, H, NC, P] from _chunk_grads or [row blocks, H·P] from _gate_grads, to [H, P]
        dD = dD_chunks.sum((0, 2)) if sum_dd else dD_gate.sum(0).view(H, P)
        dD = dD if D.dim() == 2 else dD.sum(1)
    dA = dA.view(NPB * batch * NC, H).sum(0)
    ddt_bias = ddt.sum((0, 1)) if dt_bias is not None else None
    return dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dh0


SSDChunkedFn = scan_function("SSDChunkedFn", chunked_fwd, chunked_bwd,
                             "(y, final state) of the scan in the chunked layout (mamba_ssm's).", rows=token_rows)
