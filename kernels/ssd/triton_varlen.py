"""Each packed sequence's last state (ssd_scan's return_varlen_states) in one Triton kernel.

A sequence k of a packed row, tokens s..e, ends in h_k = Σ_{j=s..e} exp(A·(c_e - c_j)) dt'_j x_j ⊗ B_j, c the
row's running sum of dt' (varlen.py, the torch twin, which also adds the initial state's share). A program takes
Q tokens of the rows laid end to end, one head and a block of P, and walks them BT at a time: for each sequence a
block touches it adds (x·w)ᵀ B [BP, N] (w_j = exp(A·(c_e - c_j)) dt'_j, 0 off that sequence) into a running
[BP, N] sum, which it adds into h_k when the walk leaves the sequence or ends. x and B are read once, a state is
written once for each Q-token piece of its sequence; those pieces meet in h_k by atomic adds, in no fixed order.
A sequence's weights come from float64 running sums made by torch (varlen.running), so long rows keep their
digits. The products are those of the scan's state pass for bf16 inputs (x and B·w rounded to bf16, summed in
float32), and float32's otherwise (as three TF32 products). The backward runs the torch twin again and differentiates it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dispatch import apply, interpreting
from .._host import cdiv, next_pow2
from .naive import DtRule
from .varlen import add_initial, packing, running, varlen_states

# Q tokens a program; (BT tokens a block, BP of P, warps) for bf16 inputs and for the others, whose products run
# as three TF32 ones ("tf32x3", float32's digits) in smaller tiles (H200, 16K tokens, H32 P64 N128: see
# docs/benchmarks.md; sm_90 compiles them without spilling). Under the interpreter small pieces and blocks, so
# that the tests cross several of each.
PIECE, CONFIG = 1024, {True: (64, 64, 8), False: (32, 32, 4)}
INTERPRET_PIECE, INTERPRET_BLOCK_T = 16, 8                       # tl.dot's least K: 8


@triton.jit
def _flush(out_ptr, acc, k, h, H, P, N, offs_p, offs_n, mask_pn):
    """Add the [BP, BN] sum acc into out[k, h, P block, :]."""
    row = (k.to(tl.int64) * H + h) * P
    tl.atomic_add(out_ptr + (row + offs_p)[:, None] * N + offs_n[None, :], acc, mask=mask_pn, sem="relaxed")


@triton.jit
def _varlen_states(x_ptr, B_ptr, dtp_ptr, c_ptr, seq_ptr, end_ptr, out_ptr, T, H, G, P, N,
                   Q: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, BF16: tl.constexpr,
                   PREC: tl.constexpr):
    """x [T, H, P], B [T, G, N], dt' [T, H] float32, A·c [T, H] float64, seq [T] int64 (each token's sequence),
    end [n] int64 (each sequence's last token) → out [n, H, P, N] float32, zeros on entry, added into.
    Grid: (Q-token pieces, H, P blocks). A block's tiles take its first token on an int64 base pointer and the
    rest as int32 offsets (BT·H·P below 2^31)."""
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
        ce = tl.load(c_ptr + tl.load(end_ptr + seq, mask=mask, other=0) * H + h, mask=mask, other=0.0)
        cj = tl.load(c_ptr + row * H + h + offs_t * H, mask=mask, other=0.0)
        w = tl.exp((ce - cj).to(tl.float32)) * tl.load(dtp_ptr + row * H + h + offs_t * H, mask=mask, other=0.0)
        xt = tl.load(x_ptr + (row * H + h) * P + offs_t[None, :] * (H * P) + offs_p[:, None],
                     mask=mask_p[:, None] & mask[None, :], other=0.0)                        # [BP, BT]
        bt = tl.load(B_ptr + (row * G + g) * N + offs_t[:, None] * (G * N) + offs_n[None, :],
                     mask=mask[:, None] & mask_n[None, :], other=0.0)                        # [BT, BN]
        if not BF16:
            xt = xt.to(tl.float32)
        k_last = tl.load(seq_ptr + row + tl.minimum(BT, count - i) - 1)
        for k in range(tl.load(seq_ptr + row), k_last + 1):          # the sequences this block touches
            if k != k_cur:
                _flush(out_ptr, acc, k_cur, h, H, P, N, offs_p, offs_n, mask_p[:, None] & mask_n[None, :])
                acc = tl.zeros([BP, BN], tl.float32)
                k_cur = k
            bw = bt.to(tl.float32) * tl.where(seq == k, w, 0.0)[:, None]
            acc += tl.dot(xt, bw.to(xt.dtype), input_precision=PREC)
    _flush(out_ptr, acc, k_cur, h, H, P, N, offs_p, offs_n, mask_p[:, None] & mask_n[None, :])


class VarlenStatesFn(torch.autograd.Function):
    """(x, dt, A, B, dt_bias, initial_states, seq_idx, rule) → [sequences, H, P, N] float32: the kernel
    forward; the backward differentiates the torch twin (varlen.varlen_states) run again."""

    @staticmethod
    def forward(ctx, x, dt, A, B, dt_bias, h0, seq_idx, rule):
        ctx.save_for_backward(x, dt, A, B, dt_bias, h0, seq_idx)
        ctx.rule = rule
        return _states(x, dt, A, B, dt_bias, h0, seq_idx, rule)

    @staticmethod
    def backward(ctx, dh):
        saved = ctx.saved_tensors
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() if t is not None and need else None
                      for t, need in zip(saved[:6], ctx.needs_input_grad)]
            args = [t if leaf is None else leaf for t, leaf in zip(saved[:6], leaves)]
            x, dt, A, B, dt_bias, h0 = args
            h = varlen_states(x, dt, A, B, saved[6], dt_bias, ctx.rule, h0)
            wanted = [t for t in leaves if t is not None]
            grads = iter(torch.autograd.grad(h, wanted, dh, allow_unused=True))
        return (*(next(grads) if t is not None else None for t in leaves), None, None)


def _states(x, dt, A, B, dt_bias, h0, seq_idx, rule):
    batch, L, H, P = x.shape
    G, N = B.shape[-2:]
    T = batch * L
    pk = packing(seq_idx)
    dtp, c = running(dt, A, dt_bias, rule, torch.float32)
    out = torch.zeros(pk.starts.numel(), H, P, N, device=x.device, dtype=torch.float32)
    bf16 = x.dtype == B.dtype == torch.bfloat16
    BT, BP, warps = CONFIG[bf16]
    Q = PIECE
    if interpreting() and x.device.type != "cuda":
        Q, BT = INTERPRET_PIECE, INTERPRET_BLOCK_T
    BP = max(min(next_pow2(P), BP), 16)                              # tl.dot's least M
    _varlen_states[(cdiv(T, Q), H, cdiv(P, BP))](
        x.contiguous(), B.contiguous(), dtp.contiguous(), c.contiguous(), pk.seq, pk.ends, out, T, H, G, P, N, Q=Q,
        BT=BT, BP=BP, BN=max(next_pow2(N), 16), BF16=bf16, PREC=None if bf16 else "tf32x3", num_warps=warps)
    return out if h0 is None else add_initial(out, h0, pk, c)


def varlen_states_triton(x, dt, A, B, seq_idx, dt_bias=None, rule: DtRule = DtRule(), initial_states=None):
    """varlen.varlen_states by the kernel: the same arguments and result, float32 (float64 for float64 x,
    computed in float32)."""
    wide = x.dtype == torch.float64
    if wide:
        x, dt, A, B, dt_bias, initial_states = (None if t is None else t.float()
                                                for t in (x, dt, A, B, dt_bias, initial_states))
    h = apply(VarlenStatesFn, x, dt, A, B, dt_bias, initial_states, seq_idx, rule)
    return h.double() if wide else h
