"""Each packed sequence's last state (ssd_scan's return_varlen_states) in two Triton kernels.

A sequence k of a packed row, tokens s..e, ends in h_k = Σ_{j=s..e} w_j x_j ⊗ B_j with w_j = exp(A·r_j) dt'_j and
r_j = Σ_{i=j+1..e} dt'_i (varlen.py is the torch twin).

    _varlen_weights  (a program a row and head) walks the row from its end, BW tokens at a time: dt' (dt_eff),
                     then A·r by a reverse scan that sums within a sequence only (_same_seq: the sequence ids of
                     a row only grow), the sum of a block's first sequence carried to the block before it.
                     w [H, T] float32, and A·Σ dt' over each row's first sequence (its initial state's decay).
                     Summed from each sequence's end, A·r keeps its digits where its weight is not ~0.
    _varlen_states   (a program a piece of Q tokens of the rows laid end to end, a head, a block of P) walks its
                     piece BT tokens at a time; for each sequence a block touches it adds (x·w)ᵀ B [BP, N], w 0 off
                     that sequence, into a running [BP, N] sum, which it adds into h_k when the walk leaves the
                     sequence or ends. x and B are read once, a state written once for each piece of its sequence;
                     those pieces meet in h_k by atomic adds, in no fixed order.

The products are those of the scan's state pass for bf16 inputs (x and B·w rounded to bf16, summed in float32),
and float32's otherwise (as fp32_dot says: three TF32 products, or one where torch allows TF32). Differentiable
through the torch twin: where an input needs a gradient, the twin runs instead (its backward is autograd's).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dispatch import interpreting, needs_grad
from .._host import cdiv, fp32_dot, next_pow2
from .naive import DtRule
from .triton_ssd import dt_eff, dt_flags
from .varlen import beginnings, varlen_states

# Q tokens a program; (BT tokens a block, BP of P, warps) for bf16 inputs and for the others, whose products run
# as three TF32 ones in smaller tiles; BW tokens a block of the weights (H200, 16K tokens, H32 P64 N128: see
# docs/benchmarks.md; sm_90 compiles them without spilling). Under the interpreter small pieces and blocks, so
# that the tests cross several of each.
PIECE, CONFIG, BLOCK_W, WEIGHT_WARPS = 1024, {True: (64, 64, 4), False: (32, 32, 4)}, 2048, 8
INTERPRET_PIECE, INTERPRET_BLOCK_T, INTERPRET_BLOCK_W = 16, 8, 8   # tl.dot's least K: 8


@triton.jit
def _same_seq(v1, k1, v2, k2):
    """The reverse scan's step over ranges of non-decreasing sequence ids: the range's least id, and the sum of
    its tokens of that id (those of each part whose least id it is)."""
    k = tl.minimum(k1, k2)
    return tl.where(k1 == k, v1, 0.0) + tl.where(k2 == k, v2, 0.0), k


@triton.jit
def _varlen_weights(dt_ptr, A_ptr, bias_ptr, seq_ptr, w_ptr, first_ptr, L, H, T, dt_lo, dt_hi,
                    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, LIMIT: tl.constexpr, BW: tl.constexpr):
    """dt [Bt, L, H], A [H], dt_bias [H], seq [T] int32 (each token's sequence, T = Bt·L) → w [H, T] float32,
    first [Bt, H] float32: A·Σ dt' over each row's first sequence. Grid: (Bt, H)."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    row0 = b.to(tl.int64) * L
    a = tl.load(A_ptr + h).to(tl.float32)
    carry, carry_k = 0.0, -1                                         # A·Σ dt' of the sequence after the block
    for i in range(0, tl.cdiv(L, BW)):
        offs = L - (i + 1) * BW + tl.arange(0, BW)                   # the block i from the row's end
        mask = offs >= 0
        raw = tl.load(dt_ptr + (row0 + offs) * H + h, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            raw += tl.load(bias_ptr + h).to(tl.float32)
        dtp = tl.where(mask, dt_eff(raw, dt_lo, dt_hi, SOFTPLUS, LIMIT), 0.0)
        dA = dtp * a
        k = tl.load(seq_ptr + row0 + offs, mask=mask, other=-1)
        s, _ = tl.associative_scan((dA + tl.where((offs == L - 1 - i * BW) & (k == carry_k), carry, 0.0), k), 0,
                                   _same_seq, reverse=True)          # A·Σ dt' from j to its sequence's end
        tl.store(w_ptr + h.to(tl.int64) * T + row0 + offs, tl.exp(s - dA) * dtp, mask=mask)
        lead = offs == tl.maximum(L - (i + 1) * BW, 0)               # the block's first token
        carry = tl.sum(tl.where(lead, s, 0.0))
        carry_k = tl.sum(tl.where(lead, k, 0))
        tl.store(first_ptr + b * H + h, carry, mask=i == tl.cdiv(L, BW) - 1)


@triton.jit
def _flush(out_ptr, acc, k, h, H, P, N, offs_p, offs_n, mask_pn):
    """Add the [BP, BN] sum acc into out[k, h, P block, :]."""
    row = (k.to(tl.int64) * H + h) * P
    tl.atomic_add(out_ptr + (row + offs_p)[:, None] * N + offs_n[None, :], acc, mask=mask_pn, sem="relaxed")


@triton.jit
def _varlen_states(x_ptr, B_ptr, w_ptr, seq_ptr, out_ptr, T, H, G, P, N,
                   Q: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, BF16: tl.constexpr,
                   PREC: tl.constexpr):
    """x [T, H, P], B [T, G, N], w [H, T] float32, seq [T] int32 → out [n, H, P, N] float32, zeros on entry,
    added into. Grid: (Q-token pieces, H, P blocks). A block's tiles take its first token on an int64 base
    pointer and the rest as int32 offsets (BT·H·P below 2^31)."""
    t0 = tl.program_id(0) * Q
    h = tl.program_id(1)
    g = h // (H // G)
    offs_p = tl.program_id(2) * BP + tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    offs_t = tl.arange(0, BT)
    mask_p, mask_n = offs_p < P, offs_n < N
    base = t0.to(tl.int64)
    count = tl.minimum(Q, T - t0)                                    # the piece's tokens
    k_cur = tl.load(seq_ptr + base)
    acc = tl.zeros([BP, BN], tl.float32)
    for i in range(0, count, BT):
        row = base + i                                               # the block's first token
        mask = offs_t < count - i
        seq = tl.load(seq_ptr + row + offs_t, mask=mask, other=-1)
        w = tl.load(w_ptr + h.to(tl.int64) * T + row + offs_t, mask=mask, other=0.0)
        xt = tl.load(x_ptr + (row * H + h) * P + offs_t[None, :] * (H * P) + offs_p[:, None],
                     mask=mask_p[:, None] & mask[None, :], other=0.0)                        # [BP, BT]
        bt = tl.load(B_ptr + (row * G + g) * N + offs_t[:, None] * (G * N) + offs_n[None, :],
                     mask=mask[:, None] & mask_n[None, :], other=0.0)                        # [BT, BN]
        if not BF16:
            xt = xt.to(tl.float32)
        k_last = tl.load(seq_ptr + row + tl.minimum(BT, count - i) - 1)
        for k in range(tl.load(seq_ptr + row), k_last + 1):         # the sequences this block touches
            if k != k_cur:
                _flush(out_ptr, acc, k_cur, h, H, P, N, offs_p, offs_n, mask_p[:, None] & mask_n[None, :])
                acc = tl.zeros([BP, BN], tl.float32)
                k_cur = k
            bw = bt.to(tl.float32) * tl.where(seq == k, w, 0.0)[:, None]
            acc += tl.dot(xt, bw.to(xt.dtype), input_precision=PREC)
    _flush(out_ptr, acc, k_cur, h, H, P, N, offs_p, offs_n, mask_p[:, None] & mask_n[None, :])


def varlen_states_triton(x, dt, A, B, seq_idx, dt_bias=None, rule: DtRule = DtRule(), initial_states=None,
                         count: int | None = None):
    """varlen.varlen_states by the kernels: the same arguments and result, float32 (float64 for float64 x,
    computed in float32). Where an input needs a gradient, varlen_states itself. count: the number of sequences
    when the caller knows it (from cu_seqlens), else it is read from the device, a wait."""
    tensors = (x, dt, A, B, dt_bias, initial_states)
    if needs_grad(*tensors):
        return varlen_states(x, dt, A, B, seq_idx, dt_bias, rule, initial_states)
    wide = x.dtype == torch.float64
    if wide:
        x, dt, A, B, dt_bias, initial_states = (None if t is None else t.float() for t in tensors)
    batch, L, H, P = x.shape
    G, N = B.shape[-2:]
    T = batch * L
    restart, begins = beginnings(seq_idx)
    seq = begins.cumsum(0, dtype=torch.int32) - 1                    # [T] each token's sequence
    n = int(seq[-1]) + 1 if count is None else count                # the former waits for the device

    small = interpreting() and x.device.type != "cuda"
    w = torch.empty(H, T, device=x.device, dtype=torch.float32)
    first = torch.empty(batch, H, device=x.device, dtype=torch.float32)
    _varlen_weights[(batch, H)](dt.contiguous(), A, dt_bias, seq, w, first, L, H, T, **dt_flags(rule),
                                HAS_BIAS=dt_bias is not None, BW=INTERPRET_BLOCK_W if small else BLOCK_W,
                                num_warps=WEIGHT_WARPS)
    h = torch.zeros(n, H, P, N, device=x.device, dtype=torch.float32)
    bf16 = x.dtype == B.dtype == torch.bfloat16
    BT, BP, warps = CONFIG[bf16]
    Q, BT = (INTERPRET_PIECE, INTERPRET_BLOCK_T) if small else (PIECE, BT)
    BP = max(min(next_pow2(P), BP), 16)                              # tl.dot's least M
    _varlen_states[(cdiv(T, Q), H, cdiv(P, BP))](
        x.contiguous(), B.contiguous(), w, seq, h, T, H, G, P, N, Q=Q, BT=BT, BP=BP, BN=max(next_pow2(N), 16),
        BF16=bf16, PREC=None if bf16 else fp32_dot(), num_warps=warps)
    if initial_states is not None:  # a row's first sequence continues initial_states unless it restarts
        keep = (~restart[:, 0])[:, None] * first.exp()               # [Bt, H]
        h.index_add_(0, seq.view(batch, L)[:, 0], initial_states.float() * keep[:, :, None, None])
    return h.double() if wide else h
