"""Triton depthwise causal conv1d: forward and backward kernels, launchers, autograd.Function.

Every width W in 2..4 runs as width 4: the weight is zero-padded on the left and the
initial states on the left, so one kernel body with four unrolled taps serves all.
x_ext[j] is x[j] for j >= 0 and the (padded) initial state for -3 <= j < 0.
The backward runs over the positions j in [-3, L): dx_ext[j] = sum_s w[3-s] g[j+s], where
g = dout * act'(pre) is recomputed from x; the j < 0 part is the initial-state gradient.
Weight and bias gradients are per-tile partials summed by torch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .._dispatch import apply
from .._host import cdiv, dense, next_pow2

TAPS = 4


@triton.jit
def _x_ext(x_ptr, init_ptr, row, irow, j, L, dmask, sxt, HAS_INIT: tl.constexpr, STEPS1: tl.constexpr):
    """x_ext at positions j (>= -3 where used), as fp32 `[BLOCK_D, BLOCK_L]`; 0 outside. row: the
    channels' offsets into x, sxt: x's step stride."""
    jj = j[None, :]
    v = tl.load(x_ptr + row[:, None] + _steps(jj, sxt, STEPS1), mask=dmask[:, None] & (jj >= 0) & (jj < L),
                other=0.0).to(tl.float32)
    if HAS_INIT:
        iv = tl.load(init_ptr + irow[:, None] + 3 + jj, mask=dmask[:, None] & (jj < 0) & (jj >= -3), other=0.0)
        v += iv.to(tl.float32)
    return v


@triton.jit
def _steps(t, stride, STEPS1: tl.constexpr):
    """Offsets of steps t along a stride: t itself where the steps are adjacent (STEPS1; 32-bit, as the
    contiguous layout always had: 64-bit offsets cost the backward 4%), else t · stride in 64 bits."""
    if STEPS1:
        off = t
    else:
        off = t.to(tl.int64) * stride
    return off


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, b_ptr, init_ptr, y_ptr, L, DIM, sxb, sxd, sxt, syb, syd, syt,
                     BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
                     HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr, STEPS1: tl.constexpr):
    """STEPS1: x's and y's steps adjacent (step stride 1)."""
    pid_l, pid_d = tl.program_id(0), tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    t = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    dmask = d < DIM
    row = b * sxb + d.to(tl.int64) * sxd
    irow = (b * DIM + d.to(tl.int64)) * 3
    acc = tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + d, mask=dmask, other=0.0).to(tl.float32)[:, None]
    for k in tl.static_range(4):
        wk = tl.load(w_ptr + d * 4 + k, mask=dmask, other=0.0).to(tl.float32)
        acc += wk[:, None] * _x_ext(x_ptr, init_ptr, row, irow, t - 3 + k, L, dmask, sxt, HAS_INIT, STEPS1)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    yrow = b * syb + d.to(tl.int64) * syd
    tl.store(y_ptr + yrow[:, None] + _steps(t[None, :], syt, STEPS1), acc.to(y_ptr.dtype.element_ty),
             mask=dmask[:, None] & (t < L)[None, :])


@triton.jit
def _conv_bwd_kernel(x_ptr, w_ptr, b_ptr, init_ptr, dy_ptr, dx_ptr, dinit_ptr, dw_ptr, db_ptr, L, DIM, NBLK,
                     sxb, sxd, sxt, sgb, sgd, sgt, sdb, sdd, sdt,
                     BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
                     HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr, STEPS1: tl.constexpr):
    """sx*, sg*, sd*: the batch, channel and step strides of x, dy and dx; STEPS1: all three step strides 1."""
    pid_l, pid_d = tl.program_id(0), tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    j = pid_l * BLOCK_L + tl.arange(0, BLOCK_L) - 3
    dmask = d < DIM
    row = b * sxb + d.to(tl.int64) * sxd
    grow = b * sgb + d.to(tl.int64) * sgd
    irow = (b * DIM + d.to(tl.int64)) * 3
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    w0 = tl.load(w_ptr + d * 4 + 0, mask=dmask, other=0.0).to(tl.float32)[:, None]
    w1 = tl.load(w_ptr + d * 4 + 1, mask=dmask, other=0.0).to(tl.float32)[:, None]
    w2 = tl.load(w_ptr + d * 4 + 2, mask=dmask, other=0.0).to(tl.float32)[:, None]
    w3 = tl.load(w_ptr + d * 4 + 3, mask=dmask, other=0.0).to(tl.float32)[:, None]
    xm3 = _x_ext(x_ptr, init_ptr, row, irow, j - 3, L, dmask, sxt, HAS_INIT, STEPS1)
    xm2 = _x_ext(x_ptr, init_ptr, row, irow, j - 2, L, dmask, sxt, HAS_INIT, STEPS1)
    xm1 = _x_ext(x_ptr, init_ptr, row, irow, j - 1, L, dmask, sxt, HAS_INIT, STEPS1)
    x0 = _x_ext(x_ptr, init_ptr, row, irow, j, L, dmask, sxt, HAS_INIT, STEPS1)
    xp1 = _x_ext(x_ptr, init_ptr, row, irow, j + 1, L, dmask, sxt, HAS_INIT, STEPS1)
    xp2 = _x_ext(x_ptr, init_ptr, row, irow, j + 2, L, dmask, sxt, HAS_INIT, STEPS1)
    xp3 = _x_ext(x_ptr, init_ptr, row, irow, j + 3, L, dmask, sxt, HAS_INIT, STEPS1)
    # g at t = j + s needs x_ext[t-3 .. t]
    g0 = _grad_pre(dy_ptr, grow, j, L, dmask, sgt, bias, w0 * xm3 + w1 * xm2 + w2 * xm1 + w3 * x0, SILU, STEPS1)
    g1 = _grad_pre(dy_ptr, grow, j + 1, L, dmask, sgt, bias, w0 * xm2 + w1 * xm1 + w2 * x0 + w3 * xp1, SILU, STEPS1)
    g2 = _grad_pre(dy_ptr, grow, j + 2, L, dmask, sgt, bias, w0 * xm1 + w1 * x0 + w2 * xp1 + w3 * xp2, SILU, STEPS1)
    g3 = _grad_pre(dy_ptr, grow, j + 3, L, dmask, sgt, bias, w0 * x0 + w1 * xp1 + w2 * xp2 + w3 * xp3, SILU, STEPS1)
    dx = w3 * g0 + w2 * g1 + w1 * g2 + w0 * g3
    jj = j[None, :]
    drow = b * sdb + d.to(tl.int64) * sdd
    tl.store(dx_ptr + drow[:, None] + _steps(jj, sdt, STEPS1), dx.to(dx_ptr.dtype.element_ty),
             mask=dmask[:, None] & (jj >= 0) & (jj < L))
    if HAS_INIT:
        tl.store(dinit_ptr + irow[:, None] + 3 + jj, dx.to(dinit_ptr.dtype.element_ty),
                 mask=dmask[:, None] & (jj < 0))
    part = (b * NBLK + pid_l) * DIM + d
    tl.store(dw_ptr + part * 4 + 0, tl.sum(g0 * xm3, axis=1), mask=dmask)
    tl.store(dw_ptr + part * 4 + 1, tl.sum(g0 * xm2, axis=1), mask=dmask)
    tl.store(dw_ptr + part * 4 + 2, tl.sum(g0 * xm1, axis=1), mask=dmask)
    tl.store(dw_ptr + part * 4 + 3, tl.sum(g0 * x0, axis=1), mask=dmask)
    tl.store(db_ptr + part, tl.sum(g0, axis=1), mask=dmask)


@triton.jit
def _grad_pre(dy_ptr, row, t, L, dmask, sgt, bias, pre, SILU: tl.constexpr, STEPS1: tl.constexpr):
    """dout * act'(pre) at positions t; 0 outside [0, L). row: the channels' offsets into dy, sgt its step stride."""
    tt = t[None, :]
    m = dmask[:, None] & (tt >= 0) & (tt < L)
    g = tl.load(dy_ptr + row[:, None] + _steps(tt, sgt, STEPS1), mask=m, other=0.0).to(tl.float32)
    if SILU:
        p = pre + bias[:, None]
        s = tl.sigmoid(p)
        g = g * s * (1.0 + p * (1.0 - s))
    return tl.where(m, g, 0.0)


@triton.jit
def _conv_update_kernel(x_ptr, state_ptr, w_ptr, b_ptr, y_ptr, DIM, S, W, s_sb, s_sd, s_xb, s_yb,
                        BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
                        HAS_BIAS: tl.constexpr, SILU: tl.constexpr, OLD_TAP: tl.constexpr):
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    i = tl.arange(0, BLOCK_S)
    dmask = d < DIM
    ptrs = state_ptr + b * s_sb + d[:, None].to(tl.int64) * s_sd + i[None, :]
    x = tl.load(x_ptr + b * s_xb + d, mask=dmask, other=0.0).to(tl.float32)
    nxt = tl.load(ptrs + 1, mask=dmask[:, None] & (i + 1 < S)[None, :], other=0.0).to(tl.float32)
    nxt = tl.where((i == S - 1)[None, :], x[:, None], nxt)
    # after the shift the window is the last W entries of the new state
    k = i - (S - W)
    wk = tl.load(w_ptr + d[:, None] * W + k[None, :], mask=dmask[:, None] & (k >= 0)[None, :] & (i < S)[None, :],
                 other=0.0).to(tl.float32)
    y = tl.sum(wk * nxt, axis=1)
    # a state of W-1 entries: the oldest window entry was shifted out of nxt
    if OLD_TAP:
        w_old = tl.load(w_ptr + d * W, mask=dmask, other=0.0).to(tl.float32)
        y += w_old * tl.load(state_ptr + b * s_sb + d.to(tl.int64) * s_sd, mask=dmask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(b_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    if SILU:
        y = y * tl.sigmoid(y)
    tl.debug_barrier()  # every thread has read the old state before any shifted value lands
    tl.store(ptrs, nxt.to(state_ptr.dtype.element_ty), mask=dmask[:, None] & (i < S)[None, :])
    tl.store(y_ptr + b * s_yb + d, y.to(y_ptr.dtype.element_ty), mask=dmask)


# ---------------------------------------------------------------------------------------
def _blocks(x):
    """(BLOCK_D, BLOCK_L): 4096 elements a tile, long along whichever of channels and steps is contiguous."""
    return (64, 64) if _channels_last(x) else (16, 256)


def _channels_last(x) -> bool:
    """x [B, D, L] with its channels adjacent (a [B, L, D] tensor or a slice of one, transposed)."""
    return x.stride(1) == 1 and x.shape[1] > 1


def _empty_as(x):
    """A new [B, D, L] tensor laid out as x: channels-last stays channels-last (dense), else contiguous."""
    B, D, L = x.shape
    if _channels_last(x):
        return torch.empty(B, L, D, device=x.device, dtype=x.dtype).transpose(1, 2)
    return torch.empty(B, D, L, device=x.device, dtype=x.dtype)


def _pad(weight, init):
    W = weight.shape[1]
    w4 = F.pad(weight.float(), (TAPS - W, 0)).contiguous()
    i4 = F.pad(init, (TAPS - W, 0)).contiguous() if init is not None else None
    return w4, i4


def conv_fwd(x, weight, bias, init, silu):
    batch, dim, L = x.shape
    w4, i4 = _pad(weight, init)
    y = _empty_as(x)
    bd, bl = _blocks(x)
    grid = (cdiv(L, bl), cdiv(dim, bd), batch)
    _conv_fwd_kernel[grid](x, w4, bias, i4, y, L, dim, *x.stride(), *y.stride(),
                           BLOCK_D=bd, BLOCK_L=bl, HAS_BIAS=bias is not None,
                           HAS_INIT=init is not None, SILU=silu, STEPS1=x.stride(2) == y.stride(2) == 1, num_warps=4)
    return y


def conv_bwd(x, weight, bias, init, dy, silu):
    batch, dim, L = x.shape
    W = weight.shape[1]
    w4, i4 = _pad(weight, init)
    bd, bl = _blocks(x)
    nblk = cdiv(L + 3, bl)
    dx = _empty_as(x)
    dinit4 = torch.empty(batch, dim, TAPS - 1, device=x.device, dtype=init.dtype) if init is not None else None
    dw = torch.empty(batch, nblk, dim, TAPS, device=x.device, dtype=torch.float32)
    db = torch.empty(batch, nblk, dim, device=x.device, dtype=torch.float32)
    _conv_bwd_kernel[(nblk, cdiv(dim, bd), batch)](
        x, w4, bias, i4, dy, dx, dinit4, dw, db, L, dim, nblk, *x.stride(), *dy.stride(), *dx.stride(),
        BLOCK_D=bd, BLOCK_L=bl, HAS_BIAS=bias is not None, HAS_INIT=init is not None,
        SILU=silu, STEPS1=x.stride(2) == dy.stride(2) == dx.stride(2) == 1, num_warps=4)
    dweight = dw.sum((0, 1))[:, TAPS - W:].to(weight.dtype)
    dbias = db.sum((0, 1)).to(bias.dtype) if bias is not None else None
    dinit = dinit4[:, :, TAPS - W:] if dinit4 is not None else None
    return dx, dweight, dbias, dinit


class CausalConv1dFn(torch.autograd.Function):
    """(x, weight, bias, initial_states, silu) -> y."""

    @staticmethod
    def forward(ctx, x, weight, bias, init, silu):
        """x [B, D, L], strided along the steps or (channels-last) along the channels; y laid out as x."""
        if x.stride(2) != 1 and not _channels_last(x):
            x = x.contiguous()
        bias, init = map(dense, (bias, init))
        ctx.save_for_backward(x, weight, bias, init)
        ctx.silu = silu
        return conv_fwd(x, weight, bias, init, silu)

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, init = ctx.saved_tensors
        dx, dw, db, dinit = conv_bwd(x, weight, bias, init, dy, ctx.silu)  # dy: any strides
        return dx, dw, db, dinit, None


def causal_conv1d_triton(x, weight, bias, activation, initial_states):
    return apply(CausalConv1dFn, x, weight, bias, initial_states, activation in ("silu", "swish"))


def causal_conv1d_update_triton(x, conv_state, weight, bias, activation):
    """x `[B, D]`; conv_state `[B, D, S]` (last dim contiguous, S >= W-1) shifted in place."""
    batch, dim, S = conv_state.shape
    y = torch.empty_like(x)
    bd = 32
    _conv_update_kernel[(cdiv(dim, bd), batch)](
        x, conv_state, weight.contiguous(), dense(bias), y, dim, S, weight.shape[1],
        conv_state.stride(0), conv_state.stride(1), x.stride(0), y.stride(0),
        BLOCK_D=bd, BLOCK_S=next_pow2(S), HAS_BIAS=bias is not None,
        SILU=activation in ("silu", "swish"), OLD_TAP=S < weight.shape[1], num_warps=4)
    return y
