"""Triton depthwise causal conv1d: forward and backward kernels, launchers, autograd.Function.

Every width W in 2..4 runs as width 4: the weight is zero-padded on the left and the
initial states on the left, so one kernel body with four unrolled taps serves all.
x_ext[j] is x[j] for j >= 0 and the (padded) initial state for -3 <= j < 0.
The backward runs over the positions j in [-3, L): dx_ext[j] = sum_s w[3-s] g[j+s], where
g = dout * act'(pre) is recomputed from x; the j < 0 part is the initial-state gradient.
Weight and bias gradients are per-program partials summed by torch.

Packed sequences (seq_idx, numbered into runs that only grow; the initial states are run 0's): an output
t's reach r_t in 0..3 is how many of the three inputs before it share its run; its tap at lag l reads
x_ext[t - l] only when l <= r_t (_lag). The backward masks each g[t] the same way where it meets x_ext[t - l].
The tiles load the runs in quads as they load x; the walks keep the last three steps' runs in registers.

Two kernel shapes, by x's layout:
- steps contiguous ([B, D, L], Mamba-1): 2-D tiles [BLOCK_D, BLOCK_L] loaded whole (coalesced along the
  steps) and split into quads, four tiles [BLOCK_D, BLOCK_L / 4] of the steps 4i, 4i + 1, 4i + 2, 4i + 3,
  so that a step's neighbours are the same quad's other tiles; the three steps before a quad are the last
  three of the tile loaded again four steps back, the three after it (backward) four steps on. So x is read
  three times and g computed 7/4 times a step (the first version's shifted loads: seven and four).
- channels contiguous (a [B, L, D] tensor transposed, Mamba-2 reads in_proj's slice so): a program
  walks its steps in order, four at a time, with a row of BLOCK_D channels a step (coalesced) and the
  window of the last three inputs (and, backward, of the next three g) in registers, so every x, dy
  and g is loaded or computed once.
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
def _run(runs_ptr, b, t, L, HAS_SEQ: tl.constexpr):
    """The runs of positions t (a step or a block of steps): runs[b, t], 0 before 0 (the initial states'),
    the last step's past L; 0 without packed sequences (unread then)."""
    if HAS_SEQ:
        r = tl.load(runs_ptr + b * L + tl.minimum(tl.maximum(t, 0), L - 1))
        return tl.where(t < 0, 0, r)
    return t * 0


@triton.jit
def _count(ra, rb, rc, rd):
    """The reach of an output of run rd whose inputs at lags 3, 2, 1 have runs ra, rb, rc."""
    return (ra == rd).to(tl.int32) + (rb == rd).to(tl.int32) + (rc == rd).to(tl.int32)


@triton.jit
def _lag(v, r, lag: tl.constexpr, HAS_SEQ: tl.constexpr):
    """v where an output of reach r may read `lag` steps back, else 0."""
    if HAS_SEQ and lag > 0:
        v = tl.where(r >= lag, v, 0.0)
    return v


@triton.jit
def _pre(w0, w1, w2, w3, bias, xa, xb, xc, xd, r, HAS_SEQ: tl.constexpr):
    """An output's value before the activation from its four inputs xa..xd (lags 3..0) and its reach r."""
    return (bias + w0 * _lag(xa, r, 3, HAS_SEQ) + w1 * _lag(xb, r, 2, HAS_SEQ) + w2 * _lag(xc, r, 1, HAS_SEQ)
            + w3 * xd)


@triton.jit
def _dx(w0, w1, w2, w3, ga, gb, rb, gc, rc, gd, rd, HAS_SEQ: tl.constexpr):
    """dx_ext[t] from g at t .. t + 3 (ga .. gd) and the reaches of t + 1 .. t + 3: each g[t + l] meets x_ext[t]
    at lag l, where its reach allows."""
    return w3 * ga + w2 * _lag(gb, rb, 1, HAS_SEQ) + w1 * _lag(gc, rc, 2, HAS_SEQ) + w0 * _lag(gd, rd, 3, HAS_SEQ)


@triton.jit
def _dw(g0, g1, g2, g3, r0, r1, r2, r3, xa, xb, xc, x0, x1, x2, x3, HAS_SEQ: tl.constexpr):
    """The weight gradients' terms (dw0, dw1, dw2, dw3) of four steps' g (reaches r0 .. r3) with their inputs
    x_ext at the three steps before them (xa, xb, xc) and their own (x0 .. x3): g[t] meets x_ext[t - l] (weight
    3 - l) where t's reach allows lag l."""
    dw0 = (_lag(g0, r0, 3, HAS_SEQ) * xa + _lag(g1, r1, 3, HAS_SEQ) * xb + _lag(g2, r2, 3, HAS_SEQ) * xc
           + _lag(g3, r3, 3, HAS_SEQ) * x0)
    dw1 = (_lag(g0, r0, 2, HAS_SEQ) * xb + _lag(g1, r1, 2, HAS_SEQ) * xc + _lag(g2, r2, 2, HAS_SEQ) * x0
           + _lag(g3, r3, 2, HAS_SEQ) * x1)
    dw2 = (_lag(g0, r0, 1, HAS_SEQ) * xc + _lag(g1, r1, 1, HAS_SEQ) * x0 + _lag(g2, r2, 1, HAS_SEQ) * x1
           + _lag(g3, r3, 1, HAS_SEQ) * x2)
    return dw0, dw1, dw2, g0 * x0 + g1 * x1 + g2 * x2 + g3 * x3


# ------------------------------------------------------------------ channels contiguous: a walk over the steps
@triton.jit
def _when(dmask, ok):
    """dmask where the one step's condition ok holds (`dmask & ok`, which the interpreter makes an int mask)."""
    return tl.where(ok, dmask, False)


@triton.jit
def _x_at(x_ptr, init_ptr, row, irow, t, L, dmask, sxt, HAS_INIT: tl.constexpr):
    """x_ext at one step t of the channels, fp32 `[BLOCK_D]`; 0 past L and before the initial states (t < -3; the
    backward's first program reads back to -6), and before 0 without them."""
    v = tl.load(x_ptr + row + tl.cast(t, tl.int64) * sxt, mask=_when(dmask, (t >= 0) & (t < L)), other=0.0).to(tl.float32)
    if HAS_INIT:
        v += tl.load(init_ptr + irow + 3 + t, mask=_when(dmask, (t < 0) & (t >= -3)), other=0.0).to(tl.float32)
    return v


@triton.jit
def _act(pre, SILU: tl.constexpr):
    if SILU:
        pre = pre * tl.sigmoid(pre)
    return pre


@triton.jit
def _g_at(dy_ptr, grow, t, L, dmask, sgt, pre, SILU: tl.constexpr):
    """g = dout * act'(pre) at one step t, fp32 `[BLOCK_D]`; exactly 0 outside [0, L), whatever pre is there (an
    inf pre of the initial states' steps must not make 0 · inf). pre includes the bias."""
    ok = (t >= 0) & (t < L)
    g = tl.load(dy_ptr + grow + tl.cast(t, tl.int64) * sgt, mask=_when(dmask, ok), other=0.0).to(tl.float32)
    if SILU:
        s = tl.sigmoid(pre)
        g = tl.where(ok, g * s * (1.0 + pre * (1.0 - s)), 0.0)
    return g


@triton.jit
def _taps(w_ptr, b_ptr, d, dmask, HAS_BIAS: tl.constexpr):
    """The four (padded) weights and the bias of the channels d, fp32 `[BLOCK_D]` each (bias 0 without one)."""
    w0 = tl.load(w_ptr + d * 4 + 0, mask=dmask, other=0.0)
    w1 = tl.load(w_ptr + d * 4 + 1, mask=dmask, other=0.0)
    w2 = tl.load(w_ptr + d * 4 + 2, mask=dmask, other=0.0)
    w3 = tl.load(w_ptr + d * 4 + 3, mask=dmask, other=0.0)
    bias = tl.zeros_like(w0)
    if HAS_BIAS:
        bias = tl.load(b_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    return w0, w1, w2, w3, bias


@triton.jit
def _conv_fwd_steps_kernel(x_ptr, w_ptr, b_ptr, init_ptr, runs_ptr, y_ptr, L, DIM, sxb, sxd, sxt, syb, syd, syt,
                           BLOCK_D: tl.constexpr, STEPS: tl.constexpr,
                           HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr,
                           SILU: tl.constexpr):
    """One program: BLOCK_D channels over the steps [pid_l * STEPS, + STEPS), STEPS a multiple of 4."""
    pid_l, pid_d = tl.program_id(0), tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < DIM
    row = b * sxb + d.to(tl.int64) * sxd
    yrow = b * syb + d.to(tl.int64) * syd
    irow = (b * DIM + d.to(tl.int64)) * 3
    w0, w1, w2, w3, bias = _taps(w_ptr, b_ptr, d, dmask, HAS_BIAS)
    t0 = pid_l * STEPS
    xa = _x_at(x_ptr, init_ptr, row, irow, t0 - 3, L, dmask, sxt, HAS_INIT)  # the window x[t-3 .. t-1]
    xb = _x_at(x_ptr, init_ptr, row, irow, t0 - 2, L, dmask, sxt, HAS_INIT)
    xc = _x_at(x_ptr, init_ptr, row, irow, t0 - 1, L, dmask, sxt, HAS_INIT)
    ua = _run(runs_ptr, b, t0 - 3, L, HAS_SEQ)  # their runs
    ub = _run(runs_ptr, b, t0 - 2, L, HAS_SEQ)
    uc = _run(runs_ptr, b, t0 - 1, L, HAS_SEQ)
    for t in range(t0, tl.minimum(t0 + STEPS, L), 4):
        x0 = _x_at(x_ptr, init_ptr, row, irow, t, L, dmask, sxt, HAS_INIT)
        x1 = _x_at(x_ptr, init_ptr, row, irow, t + 1, L, dmask, sxt, HAS_INIT)
        x2 = _x_at(x_ptr, init_ptr, row, irow, t + 2, L, dmask, sxt, HAS_INIT)
        x3 = _x_at(x_ptr, init_ptr, row, irow, t + 3, L, dmask, sxt, HAS_INIT)
        u0 = _run(runs_ptr, b, t, L, HAS_SEQ)
        u1 = _run(runs_ptr, b, t + 1, L, HAS_SEQ)
        u2 = _run(runs_ptr, b, t + 2, L, HAS_SEQ)
        u3 = _run(runs_ptr, b, t + 3, L, HAS_SEQ)
        y0 = _act(_pre(w0, w1, w2, w3, bias, xa, xb, xc, x0, _count(ua, ub, uc, u0), HAS_SEQ), SILU)
        y1 = _act(_pre(w0, w1, w2, w3, bias, xb, xc, x0, x1, _count(ub, uc, u0, u1), HAS_SEQ), SILU)
        y2 = _act(_pre(w0, w1, w2, w3, bias, xc, x0, x1, x2, _count(uc, u0, u1, u2), HAS_SEQ), SILU)
        y3 = _act(_pre(w0, w1, w2, w3, bias, x0, x1, x2, x3, _count(u0, u1, u2, u3), HAS_SEQ), SILU)
        ty = y_ptr.dtype.element_ty
        tl.store(y_ptr + yrow + tl.cast(t, tl.int64) * syt, y0.to(ty), mask=dmask)
        tl.store(y_ptr + yrow + tl.cast(t + 1, tl.int64) * syt, y1.to(ty), mask=_when(dmask, t + 1 < L))
        tl.store(y_ptr + yrow + tl.cast(t + 2, tl.int64) * syt, y2.to(ty), mask=_when(dmask, t + 2 < L))
        tl.store(y_ptr + yrow + tl.cast(t + 3, tl.int64) * syt, y3.to(ty), mask=_when(dmask, t + 3 < L))
        xa, xb, xc = x1, x2, x3
        ua, ub, uc = u1, u2, u3


@triton.jit
def _conv_bwd_steps_kernel(x_ptr, w_ptr, b_ptr, init_ptr, runs_ptr, dy_ptr, dx_ptr, dinit_ptr, dw_ptr, db_ptr, L,
                           DIM, NBLK, sxb, sxd, sxt, sgb, sgd, sgt, sdb, sdd, sdt,
                           BLOCK_D: tl.constexpr, STEPS: tl.constexpr,
                           HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr,
                           SILU: tl.constexpr):
    """One program: BLOCK_D channels, dx_ext at j in [pid_l * STEPS - 3, + STEPS), and the weight and bias
    gradients' parts from g at [pid_l * STEPS, + STEPS). It walks g forward four steps at a time: g[q .. q+3]
    completes dx_ext[q-3 .. q] with the three g before it (the window gm3, gm2, gm1)."""
    pid_l, pid_d = tl.program_id(0), tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < DIM
    row = b * sxb + d.to(tl.int64) * sxd
    grow = b * sgb + d.to(tl.int64) * sgd
    drow = b * sdb + d.to(tl.int64) * sdd
    irow = (b * DIM + d.to(tl.int64)) * 3
    w0, w1, w2, w3, bias = _taps(w_ptr, b_ptr, d, dmask, HAS_BIAS)
    q0 = pid_l * STEPS
    # the prologue: g at q0-3 .. q0-1 (the previous program's, not counted in dw here) from x at q0-6 .. q0-1
    xa = _x_at(x_ptr, init_ptr, row, irow, q0 - 6, L, dmask, sxt, HAS_INIT)
    xb = _x_at(x_ptr, init_ptr, row, irow, q0 - 5, L, dmask, sxt, HAS_INIT)
    xc = _x_at(x_ptr, init_ptr, row, irow, q0 - 4, L, dmask, sxt, HAS_INIT)
    x0 = _x_at(x_ptr, init_ptr, row, irow, q0 - 3, L, dmask, sxt, HAS_INIT)
    x1 = _x_at(x_ptr, init_ptr, row, irow, q0 - 2, L, dmask, sxt, HAS_INIT)
    x2 = _x_at(x_ptr, init_ptr, row, irow, q0 - 1, L, dmask, sxt, HAS_INIT)
    ua = _run(runs_ptr, b, q0 - 6, L, HAS_SEQ)  # the runs of x[q0-6 .. q0-1], and the reaches of g's window
    ub = _run(runs_ptr, b, q0 - 5, L, HAS_SEQ)
    uc = _run(runs_ptr, b, q0 - 4, L, HAS_SEQ)
    u0 = _run(runs_ptr, b, q0 - 3, L, HAS_SEQ)
    u1 = _run(runs_ptr, b, q0 - 2, L, HAS_SEQ)
    u2 = _run(runs_ptr, b, q0 - 1, L, HAS_SEQ)
    rm3 = _count(ua, ub, uc, u0)
    rm2 = _count(ub, uc, u0, u1)
    rm1 = _count(uc, u0, u1, u2)
    gm3 = _g_at(dy_ptr, grow, q0 - 3, L, dmask, sgt, _pre(w0, w1, w2, w3, bias, xa, xb, xc, x0, rm3, HAS_SEQ), SILU)
    gm2 = _g_at(dy_ptr, grow, q0 - 2, L, dmask, sgt, _pre(w0, w1, w2, w3, bias, xb, xc, x0, x1, rm2, HAS_SEQ), SILU)
    gm1 = _g_at(dy_ptr, grow, q0 - 1, L, dmask, sgt, _pre(w0, w1, w2, w3, bias, xc, x0, x1, x2, rm1, HAS_SEQ), SILU)
    xa, xb, xc = x0, x1, x2  # the window x[q-3 .. q-1] and its runs
    ua, ub, uc = u0, u1, u2
    dw0 = tl.zeros([BLOCK_D], dtype=tl.float32)
    dw1 = tl.zeros([BLOCK_D], dtype=tl.float32)
    dw2 = tl.zeros([BLOCK_D], dtype=tl.float32)
    dw3 = tl.zeros([BLOCK_D], dtype=tl.float32)
    db = tl.zeros([BLOCK_D], dtype=tl.float32)
    for q in range(q0, tl.minimum(q0 + STEPS, L + 3), 4):
        x0 = _x_at(x_ptr, init_ptr, row, irow, q, L, dmask, sxt, HAS_INIT)
        x1 = _x_at(x_ptr, init_ptr, row, irow, q + 1, L, dmask, sxt, HAS_INIT)
        x2 = _x_at(x_ptr, init_ptr, row, irow, q + 2, L, dmask, sxt, HAS_INIT)
        x3 = _x_at(x_ptr, init_ptr, row, irow, q + 3, L, dmask, sxt, HAS_INIT)
        u0 = _run(runs_ptr, b, q, L, HAS_SEQ)
        u1 = _run(runs_ptr, b, q + 1, L, HAS_SEQ)
        u2 = _run(runs_ptr, b, q + 2, L, HAS_SEQ)
        u3 = _run(runs_ptr, b, q + 3, L, HAS_SEQ)
        r0 = _count(ua, ub, uc, u0)
        r1 = _count(ub, uc, u0, u1)
        r2 = _count(uc, u0, u1, u2)
        r3 = _count(u0, u1, u2, u3)
        g0 = _g_at(dy_ptr, grow, q, L, dmask, sgt, _pre(w0, w1, w2, w3, bias, xa, xb, xc, x0, r0, HAS_SEQ), SILU)
        g1 = _g_at(dy_ptr, grow, q + 1, L, dmask, sgt, _pre(w0, w1, w2, w3, bias, xb, xc, x0, x1, r1, HAS_SEQ), SILU)
        g2 = _g_at(dy_ptr, grow, q + 2, L, dmask, sgt, _pre(w0, w1, w2, w3, bias, xc, x0, x1, x2, r2, HAS_SEQ), SILU)
        g3 = _g_at(dy_ptr, grow, q + 3, L, dmask, sgt, _pre(w0, w1, w2, w3, bias, x0, x1, x2, x3, r3, HAS_SEQ), SILU)
        k0, k1, k2, k3 = _dw(g0, g1, g2, g3, r0, r1, r2, r3, xa, xb, xc, x0, x1, x2, x3, HAS_SEQ)
        dw0 += k0
        dw1 += k1
        dw2 += k2
        dw3 += k3
        db += g0 + g1 + g2 + g3
        _store_dx(dx_ptr, dinit_ptr, drow, irow, q - 3, L, dmask, sdt,
                  _dx(w0, w1, w2, w3, gm3, gm2, rm2, gm1, rm1, g0, r0, HAS_SEQ), HAS_INIT)
        _store_dx(dx_ptr, dinit_ptr, drow, irow, q - 2, L, dmask, sdt,
                  _dx(w0, w1, w2, w3, gm2, gm1, rm1, g0, r0, g1, r1, HAS_SEQ), HAS_INIT)
        _store_dx(dx_ptr, dinit_ptr, drow, irow, q - 1, L, dmask, sdt,
                  _dx(w0, w1, w2, w3, gm1, g0, r0, g1, r1, g2, r2, HAS_SEQ), HAS_INIT)
        _store_dx(dx_ptr, dinit_ptr, drow, irow, q, L, dmask, sdt,
                  _dx(w0, w1, w2, w3, g0, g1, r1, g2, r2, g3, r3, HAS_SEQ), HAS_INIT)
        xa, xb, xc = x1, x2, x3
        ua, ub, uc = u1, u2, u3
        gm3, gm2, gm1 = g1, g2, g3
        rm2, rm1 = r2, r3
    part = (b * NBLK + pid_l) * DIM + d
    tl.store(dw_ptr + part * 4 + 0, dw0, mask=dmask)
    tl.store(dw_ptr + part * 4 + 1, dw1, mask=dmask)
    tl.store(dw_ptr + part * 4 + 2, dw2, mask=dmask)
    tl.store(dw_ptr + part * 4 + 3, dw3, mask=dmask)
    tl.store(db_ptr + part, db, mask=dmask)


@triton.jit
def _store_dx(dx_ptr, dinit_ptr, drow, irow, j, L, dmask, sdt, dx, HAS_INIT: tl.constexpr):
    """dx_ext at one step j >= -3: into dx for j in [0, L), into the initial state's gradient for j < 0."""
    tl.store(dx_ptr + drow + tl.cast(j, tl.int64) * sdt, dx.to(dx_ptr.dtype.element_ty), mask=_when(dmask, (j >= 0) & (j < L)))
    if HAS_INIT:
        tl.store(dinit_ptr + irow + 3 + j, dx.to(dinit_ptr.dtype.element_ty), mask=_when(dmask, j < 0))


# ------------------------------------------------------------------ steps contiguous: the steps in quads
@triton.jit
def _quads(v, BLOCK_D: tl.constexpr, G: tl.constexpr):
    """v [BLOCK_D, 4·G] → its four phases [BLOCK_D, G]: phase p holds the steps 4i + p."""
    even, odd = tl.split(tl.reshape(v, [BLOCK_D, G, 2, 2]))  # steps 4i + 2a (a the last index), 4i + 2a + 1
    p0, p2 = tl.split(even)
    p1, p3 = tl.split(odd)
    return p0, p1, p2, p3


@triton.jit
def _x_quads(x_ptr, init_ptr, row, irow, t0, L, dmask, sxt, BLOCK_D: tl.constexpr, G: tl.constexpr,
             HAS_INIT: tl.constexpr):
    """x_ext at the steps t0 .. t0 + 4·G - 1 of the channels (row: their offsets into x, sxt: the step stride)
    as quads, four fp32 [BLOCK_D, G]; 0 outside, as _x_at."""
    t = t0 + tl.arange(0, 4 * G)[None, :]
    v = tl.load(x_ptr + row[:, None] + t.to(tl.int64) * sxt, mask=dmask[:, None] & (t >= 0) & (t < L),
                other=0.0).to(tl.float32)
    if HAS_INIT:
        v += tl.load(init_ptr + irow[:, None] + 3 + t, mask=dmask[:, None] & (t < 0) & (t >= -3),
                     other=0.0).to(tl.float32)
    return _quads(v, BLOCK_D, G)


@triton.jit
def _run_quads(runs_ptr, b, t0, L, G: tl.constexpr, HAS_SEQ: tl.constexpr):
    """The runs of the steps t0 .. t0 + 4·G - 1 as quads, four [1, G] (as _run: 0 before 0, unread without
    packed sequences)."""
    r = _run(runs_ptr, b, t0 + tl.arange(0, 4 * G), L, HAS_SEQ)
    even, odd = tl.split(tl.reshape(r, [G, 2, 2]))
    u0, u2 = tl.split(even)
    u1, u3 = tl.split(odd)
    return u0[None, :], u1[None, :], u2[None, :], u3[None, :]


@triton.jit
def _g(dy, pre, t, L, SILU: tl.constexpr):
    """g = dout · act'(pre) from the loaded dout, exactly 0 at steps t outside [0, L) (as _g_at)."""
    ok = (t >= 0) & (t < L)
    if SILU:
        s = tl.sigmoid(pre)
        dy = dy * s * (1.0 + pre * (1.0 - s))
    return tl.where(ok, dy, 0.0)


@triton.jit
def _conv_fwd_quads_kernel(x_ptr, w_ptr, b_ptr, init_ptr, runs_ptr, y_ptr, L, DIM, sxb, sxd, sxt, syb, syd, syt,
                           BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
                           HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr,
                           SILU: tl.constexpr):
    """One program: BLOCK_D channels over the steps [pid_l * BLOCK_L, + BLOCK_L) in quads: each step's inputs
    are its quad's and the three before it (the tile loaded again four steps back)."""
    G: tl.constexpr = BLOCK_L // 4
    pid_l, pid_d = tl.program_id(0), tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < DIM
    row = b * sxb + d.to(tl.int64) * sxd
    irow = (b * DIM + d.to(tl.int64)) * 3
    w0, w1, w2, w3, bias = _taps(w_ptr, b_ptr, d, dmask, HAS_BIAS)
    w0, w1, w2, w3, bias = w0[:, None], w1[:, None], w2[:, None], w3[:, None], bias[:, None]
    j0 = pid_l * BLOCK_L
    _, xa, xb, xc = _x_quads(x_ptr, init_ptr, row, irow, j0 - 4, L, dmask, sxt, BLOCK_D, G, HAS_INIT)
    x0, x1, x2, x3 = _x_quads(x_ptr, init_ptr, row, irow, j0, L, dmask, sxt, BLOCK_D, G, HAS_INIT)
    _, ua, ub, uc = _run_quads(runs_ptr, b, j0 - 4, L, G, HAS_SEQ)
    u0, u1, u2, u3 = _run_quads(runs_ptr, b, j0, L, G, HAS_SEQ)
    y0 = _act(_pre(w0, w1, w2, w3, bias, xa, xb, xc, x0, _count(ua, ub, uc, u0), HAS_SEQ), SILU)
    y1 = _act(_pre(w0, w1, w2, w3, bias, xb, xc, x0, x1, _count(ub, uc, u0, u1), HAS_SEQ), SILU)
    y2 = _act(_pre(w0, w1, w2, w3, bias, xc, x0, x1, x2, _count(uc, u0, u1, u2), HAS_SEQ), SILU)
    y3 = _act(_pre(w0, w1, w2, w3, bias, x0, x1, x2, x3, _count(u0, u1, u2, u3), HAS_SEQ), SILU)
    y = tl.reshape(tl.join(tl.join(y0, y2), tl.join(y1, y3)), [BLOCK_D, BLOCK_L])
    t = j0 + tl.arange(0, BLOCK_L)[None, :]
    yrow = b * syb + d.to(tl.int64) * syd
    tl.store(y_ptr + yrow[:, None] + t.to(tl.int64) * syt, y.to(y_ptr.dtype.element_ty), mask=dmask[:, None] & (t < L))


@triton.jit
def _conv_bwd_quads_kernel(x_ptr, w_ptr, b_ptr, init_ptr, runs_ptr, dy_ptr, dx_ptr, dinit_ptr, dw_ptr, db_ptr, L,
                           DIM, NBLK, sxb, sxd, sxt, sgb, sgd, sgt, sdb, sdd, sdt,
                           BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
                           HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr,
                           SILU: tl.constexpr):
    """One program: BLOCK_D channels, dx_ext at the steps j in [pid_l * BLOCK_L - 4, + BLOCK_L) (the tiles start
    at -4, so that the initial states' -3 .. -1 are the first quad's), and the weight and bias gradients' parts
    from g at those steps. dx_ext[j] takes g at j .. j + 3: its quad's and the next quad's first three."""
    G: tl.constexpr = BLOCK_L // 4
    pid_l, pid_d = tl.program_id(0), tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < DIM
    row = b * sxb + d.to(tl.int64) * sxd
    grow = b * sgb + d.to(tl.int64) * sgd
    drow = b * sdb + d.to(tl.int64) * sdd
    irow = (b * DIM + d.to(tl.int64)) * 3
    w0, w1, w2, w3, bias = _taps(w_ptr, b_ptr, d, dmask, HAS_BIAS)
    w0, w1, w2, w3, bias = w0[:, None], w1[:, None], w2[:, None], w3[:, None], bias[:, None]
    j0 = pid_l * BLOCK_L - 4
    tq = (j0 + 4 * tl.arange(0, G))[None, :]  # each quad's first step
    _, xa, xb, xc = _x_quads(x_ptr, init_ptr, row, irow, j0 - 4, L, dmask, sxt, BLOCK_D, G, HAS_INIT)
    x0, x1, x2, x3 = _x_quads(x_ptr, init_ptr, row, irow, j0, L, dmask, sxt, BLOCK_D, G, HAS_INIT)
    n0, n1, n2, _ = _x_quads(x_ptr, init_ptr, row, irow, j0 + 4, L, dmask, sxt, BLOCK_D, G, HAS_INIT)
    _, ua, ub, uc = _run_quads(runs_ptr, b, j0 - 4, L, G, HAS_SEQ)
    u0, u1, u2, u3 = _run_quads(runs_ptr, b, j0, L, G, HAS_SEQ)
    v0, v1, v2, _ = _run_quads(runs_ptr, b, j0 + 4, L, G, HAS_SEQ)
    r0, r1, r2, r3 = _count(ua, ub, uc, u0), _count(ub, uc, u0, u1), _count(uc, u0, u1, u2), _count(u0, u1, u2, u3)
    s0, s1, s2 = _count(u1, u2, u3, v0), _count(u2, u3, v0, v1), _count(u3, v0, v1, v2)
    t = j0 + tl.arange(0, BLOCK_L)[None, :]
    gm = dmask[:, None] & (t >= 0) & (t < L)
    e0, e1, e2, e3 = _quads(tl.load(dy_ptr + grow[:, None] + t.to(tl.int64) * sgt, mask=gm, other=0.0).to(tl.float32),
                            BLOCK_D, G)
    tn = t + 4
    gn = dmask[:, None] & (tn >= 0) & (tn < L)
    f0, f1, f2, _ = _quads(tl.load(dy_ptr + grow[:, None] + tn.to(tl.int64) * sgt, mask=gn, other=0.0).to(tl.float32),
                           BLOCK_D, G)
    g0 = _g(e0, _pre(w0, w1, w2, w3, bias, xa, xb, xc, x0, r0, HAS_SEQ), tq, L, SILU)
    g1 = _g(e1, _pre(w0, w1, w2, w3, bias, xb, xc, x0, x1, r1, HAS_SEQ), tq + 1, L, SILU)
    g2 = _g(e2, _pre(w0, w1, w2, w3, bias, xc, x0, x1, x2, r2, HAS_SEQ), tq + 2, L, SILU)
    g3 = _g(e3, _pre(w0, w1, w2, w3, bias, x0, x1, x2, x3, r3, HAS_SEQ), tq + 3, L, SILU)
    h0 = _g(f0, _pre(w0, w1, w2, w3, bias, x1, x2, x3, n0, s0, HAS_SEQ), tq + 4, L, SILU)
    h1 = _g(f1, _pre(w0, w1, w2, w3, bias, x2, x3, n0, n1, s1, HAS_SEQ), tq + 5, L, SILU)
    h2 = _g(f2, _pre(w0, w1, w2, w3, bias, x3, n0, n1, n2, s2, HAS_SEQ), tq + 6, L, SILU)
    dx0 = _dx(w0, w1, w2, w3, g0, g1, r1, g2, r2, g3, r3, HAS_SEQ)
    dx1 = _dx(w0, w1, w2, w3, g1, g2, r2, g3, r3, h0, s0, HAS_SEQ)
    dx2 = _dx(w0, w1, w2, w3, g2, g3, r3, h0, s0, h1, s1, HAS_SEQ)
    dx3 = _dx(w0, w1, w2, w3, g3, h0, s0, h1, s1, h2, s2, HAS_SEQ)
    dx = tl.reshape(tl.join(tl.join(dx0, dx2), tl.join(dx1, dx3)), [BLOCK_D, BLOCK_L])
    tl.store(dx_ptr + drow[:, None] + t.to(tl.int64) * sdt, dx.to(dx_ptr.dtype.element_ty),
             mask=dmask[:, None] & (t >= 0) & (t < L))
    if HAS_INIT:
        tl.store(dinit_ptr + irow[:, None] + 3 + t, dx.to(dinit_ptr.dtype.element_ty),
                 mask=dmask[:, None] & (t < 0) & (t >= -3))
    dw0, dw1, dw2, dw3 = _dw(g0, g1, g2, g3, r0, r1, r2, r3, xa, xb, xc, x0, x1, x2, x3, HAS_SEQ)
    part = (b * NBLK + pid_l) * DIM + d
    tl.store(dw_ptr + part * 4 + 0, tl.sum(dw0, axis=1), mask=dmask)
    tl.store(dw_ptr + part * 4 + 1, tl.sum(dw1, axis=1), mask=dmask)
    tl.store(dw_ptr + part * 4 + 2, tl.sum(dw2, axis=1), mask=dmask)
    tl.store(dw_ptr + part * 4 + 3, tl.sum(dw3, axis=1), mask=dmask)
    tl.store(db_ptr + part, tl.sum(g0 + g1 + g2 + g3, axis=1), mask=dmask)


@triton.jit
def _update_rows(idx_ptr, POOL, DIM, BLOCK_D: tl.constexpr, HAS_IDX: tl.constexpr):
    """A step program's batch row b, its channels d (and their mask), the state it steps (its own row, or the
    pool's row idx[b]), whether that state exists (negative or past the pool: none) and the channels it touches."""
    b = tl.program_id(1).to(tl.int64)
    d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < DIM
    sb = b
    if HAS_IDX:
        sb = tl.load(idx_ptr + b).to(tl.int64)
    sb_d = sb + tl.zeros([BLOCK_D], dtype=tl.int64)
    live = (sb_d >= 0) & (sb_d < POOL)
    return b, d, dmask, sb, live, dmask & live


@triton.jit
def _conv_update_kernel(x_ptr, state_ptr, w_ptr, b_ptr, y_ptr, idx_ptr, POOL, DIM, S, W, s_sb, s_sd, s_xb, s_yb,
                        BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
                        HAS_BIAS: tl.constexpr, SILU: tl.constexpr, OLD_TAP: tl.constexpr, HAS_IDX: tl.constexpr):
    b, d, dmask, sb, live, smask = _update_rows(idx_ptr, POOL, DIM, BLOCK_D, HAS_IDX)
    i = tl.arange(0, BLOCK_S)
    ptrs = state_ptr + sb * s_sb + d[:, None].to(tl.int64) * s_sd + i[None, :]
    x = tl.load(x_ptr + b * s_xb + d, mask=dmask, other=0.0).to(tl.float32)
    nxt = tl.load(ptrs + 1, mask=smask[:, None] & (i + 1 < S)[None, :], other=0.0).to(tl.float32)
    nxt = tl.where((i == S - 1)[None, :], x[:, None], nxt)
    # after the shift the window is the last W entries of the new state
    k = i - (S - W)
    wk = tl.load(w_ptr + d[:, None] * W + k[None, :], mask=dmask[:, None] & (k >= 0)[None, :] & (i < S)[None, :],
                 other=0.0).to(tl.float32)
    y = tl.sum(wk * nxt, axis=1)
    # a state of W-1 entries: the oldest window entry was shifted out of nxt
    if OLD_TAP:
        w_old = tl.load(w_ptr + d * W, mask=dmask, other=0.0).to(tl.float32)
        y += w_old * tl.load(state_ptr + sb * s_sb + d.to(tl.int64) * s_sd, mask=smask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(b_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    if SILU:
        y = y * tl.sigmoid(y)
    y = tl.where(live, y, 0.0)
    tl.debug_barrier()  # every thread has read the old state before any shifted value lands
    tl.store(ptrs, nxt.to(state_ptr.dtype.element_ty), mask=smask[:, None] & (i < S)[None, :])
    tl.store(y_ptr + b * s_yb + d, y.to(y_ptr.dtype.element_ty), mask=dmask)


@triton.jit
def _conv_update_circular_kernel(x_ptr, state_ptr, w_ptr, b_ptr, y_ptr, idx_ptr, cache_ptr, step, POOL, DIM, S, W,
                                 s_sb, s_sd, s_xb, s_yb, BLOCK_D: tl.constexpr, BLOCK_W: tl.constexpr,
                                 HAS_BIAS: tl.constexpr, SILU: tl.constexpr, HAS_IDX: tl.constexpr):
    """The step with conv_state a circular buffer (cache_seqlens): x lands at (cache_seqlens[b] + step) mod S and
    its window is the W-1 entries before it; nothing shifts."""
    b, d, dmask, sb, live, smask = _update_rows(idx_ptr, POOL, DIM, BLOCK_D, HAS_IDX)
    j = tl.arange(0, BLOCK_W)  # the taps: j < W-1 read the buffer, j = W-1 is x
    at = tl.load(cache_ptr + b).to(tl.int64) + step
    pos = ((at - (W - 1) + j) % S + S) % S  # a remainder that wraps negative counts up, as torch.remainder
    row = state_ptr + sb * s_sb + d[:, None].to(tl.int64) * s_sd
    win = tl.load(row + pos[None, :], mask=smask[:, None] & (j < W - 1)[None, :], other=0.0).to(tl.float32)
    x = tl.load(x_ptr + b * s_xb + d, mask=dmask, other=0.0).to(tl.float32)
    win = tl.where((j == W - 1)[None, :], x[:, None], win)
    wk = tl.load(w_ptr + d[:, None] * W + j[None, :], mask=dmask[:, None] & (j < W)[None, :], other=0.0)
    y = tl.sum(wk.to(tl.float32) * win, axis=1)
    if HAS_BIAS:
        y += tl.load(b_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    if SILU:
        y = y * tl.sigmoid(y)
    y = tl.where(live, y, 0.0)
    tl.debug_barrier()  # every thread has read its window before x lands (with S = W-1 on the oldest entry)
    tl.store(state_ptr + sb * s_sb + d.to(tl.int64) * s_sd + (at % S + S) % S, x.to(state_ptr.dtype.element_ty),
             mask=smask)
    tl.store(y_ptr + b * s_yb + d, y.to(y_ptr.dtype.element_ty), mask=dmask)


# ---------------------------------------------------------------------------------------
# (BLOCK_D, BLOCK_L, num_warps) of the tile kernels (steps contiguous), forward and backward, and
# (BLOCK_D, STEPS, num_warps) of the step walks (channels contiguous), from sweeps on the H200
# (docs/benchmarks.md; B4 D5120 L4096 bf16, SiLU, the tiles in quads: forward 0.104 ms, backward 0.290,
# with seq_idx 0.127 and 0.408).
TILE_FWD = (16, 256, 4)
TILE_BWD = (16, 128, 4)
WALK = (256, 64, 4)


def _walk_blocks(dim, config):
    """(BLOCK_D, STEPS, num_warps) for `dim` channels: narrower blocks (and fewer warps) for few channels."""
    bd, steps, warps = config
    bd = min(bd, max(next_pow2(dim), 16))
    return bd, steps, max(1, min(warps, bd // 32))


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


def conv_fwd(x, weight, bias, init, runs, silu):
    batch, dim, L = x.shape
    w4, i4 = _pad(weight, init)
    y = _empty_as(x)
    flags = dict(HAS_BIAS=bias is not None, HAS_INIT=init is not None, HAS_SEQ=runs is not None, SILU=silu)
    if _channels_last(x):
        bd, steps, warps = _walk_blocks(dim, WALK)
        _conv_fwd_steps_kernel[(cdiv(L, steps), cdiv(dim, bd), batch)](
            x, w4, bias, i4, runs, y, L, dim, *x.stride(), *y.stride(), BLOCK_D=bd, STEPS=steps, **flags,
            num_warps=warps)
        return y
    bd, bl, warps = TILE_FWD
    _conv_fwd_quads_kernel[(cdiv(L, bl), cdiv(dim, bd), batch)](
        x, w4, bias, i4, runs, y, L, dim, *x.stride(), *y.stride(), BLOCK_D=bd, BLOCK_L=bl, **flags, num_warps=warps)
    return y


def conv_bwd(x, weight, bias, init, runs, dy, silu):
    batch, dim, L = x.shape
    W = weight.shape[1]
    w4, i4 = _pad(weight, init)
    walk = _channels_last(x)
    bd, bl, warps = _walk_blocks(dim, WALK) if walk else TILE_BWD
    nblk = cdiv(L + (3 if walk else 4), bl)  # dx_ext from -3 (walks) or from -4 (tiles of quads)
    dx = _empty_as(x)
    dinit4 = torch.empty(batch, dim, TAPS - 1, device=x.device, dtype=init.dtype) if init is not None else None
    dw = torch.empty(batch, nblk, dim, TAPS, device=x.device, dtype=torch.float32)
    db = torch.empty(batch, nblk, dim, device=x.device, dtype=torch.float32)
    args = (x, w4, bias, i4, runs, dy, dx, dinit4, dw, db, L, dim, nblk, *x.stride(), *dy.stride(), *dx.stride())
    flags = dict(HAS_BIAS=bias is not None, HAS_INIT=init is not None, HAS_SEQ=runs is not None, SILU=silu,
                 num_warps=warps)
    if walk:
        _conv_bwd_steps_kernel[(nblk, cdiv(dim, bd), batch)](*args, BLOCK_D=bd, STEPS=bl, **flags)
    else:
        _conv_bwd_quads_kernel[(nblk, cdiv(dim, bd), batch)](
            *args, BLOCK_D=bd, BLOCK_L=bl, **flags)
    dweight = dw.sum((0, 1))[:, TAPS - W:].to(weight.dtype)
    dbias = db.sum((0, 1)).to(bias.dtype) if bias is not None else None
    dinit = dinit4[:, :, TAPS - W:] if dinit4 is not None else None
    return dx, dweight, dbias, dinit


class CausalConv1dFn(torch.autograd.Function):
    """(x, weight, bias, initial_states, runs, silu) -> y; runs [B, L] int32 (seq_runs) or None."""

    @staticmethod
    def forward(ctx, x, weight, bias, init, runs, silu):
        """x [B, D, L], strided along the steps or (channels-last) along the channels; y laid out as x."""
        if x.stride(2) != 1 and not _channels_last(x):
            x = x.contiguous()
        bias, init, runs = map(dense, (bias, init, runs))
        ctx.save_for_backward(x, weight, bias, init, runs)
        ctx.silu = silu
        return conv_fwd(x, weight, bias, init, runs, silu)

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, init, runs = ctx.saved_tensors
        dx, dw, db, dinit = conv_bwd(x, weight, bias, init, runs, dy, ctx.silu)  # dy: any strides
        return dx, dw, db, dinit, None, None


def causal_conv1d_triton(x, weight, bias, activation, initial_states, runs=None):
    """runs: seq_runs of seq_idx, or None."""
    return apply(CausalConv1dFn, x, weight, bias, initial_states, runs, activation in ("silu", "swish"))


def causal_conv1d_update_triton(x, conv_state, weight, bias, activation, conv_state_indices=None, cache_seqlens=None,
                                step=0):
    """x `[B, D]`; conv_state `[B, D, S]` (last dim contiguous, S >= W-1) shifted in place; conv_state_indices
    `[B]`: row b shifts conv_state[idx[b]] of a pool `[P, D, S]` (none where negative, and y is 0);
    cache_seqlens `[B]`: conv_state is a circular buffer instead, x written at (cache_seqlens + step) mod S."""
    (batch, dim), S = x.shape, conv_state.shape[2]
    y = torch.empty_like(x)
    bd = 32
    if cache_seqlens is not None:
        _conv_update_circular_kernel[(cdiv(dim, bd), batch)](
            x, conv_state, weight.contiguous(), dense(bias), y, dense(conv_state_indices), dense(cache_seqlens), step,
            conv_state.shape[0], dim, S, weight.shape[1], conv_state.stride(0), conv_state.stride(1), x.stride(0),
            y.stride(0), BLOCK_D=bd, BLOCK_W=next_pow2(weight.shape[1]), HAS_BIAS=bias is not None,
            SILU=activation in ("silu", "swish"), HAS_IDX=conv_state_indices is not None, num_warps=4)
        return y
    _conv_update_kernel[(cdiv(dim, bd), batch)](
        x, conv_state, weight.contiguous(), dense(bias), y, dense(conv_state_indices), conv_state.shape[0], dim, S,
        weight.shape[1],
        conv_state.stride(0), conv_state.stride(1), x.stride(0), y.stride(0),
        BLOCK_D=bd, BLOCK_S=next_pow2(S), HAS_BIAS=bias is not None,
        SILU=activation in ("silu", "swish"), OLD_TAP=S < weight.shape[1], HAS_IDX=conv_state_indices is not None,
        num_warps=4)
    return y
