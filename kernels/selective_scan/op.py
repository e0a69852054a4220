"""Public selective scan (Mamba-1) and its decode step, with mamba_ssm's conventions."""
from __future__ import annotations

import torch

from .._checks import (expect_flag, expect_float, expect_in_place, expect_integer, expect_same_device, expect_shape,
                      expect_slots)
from .._dispatch import backend_for, needs_grad, on_input_device, without_autocast
from .._host import pool_rows, seq_runs, seq_starts, unit_last
from .._opaque import PATHS, torch_path
from .chunked import selective_scan_chunked
from .naive import selective_scan_naive, selective_state_update_naive


@on_input_device
@without_autocast
def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, initial_state=None, seq_idx=None):
    """Mamba-1 selective scan, the semantics of mamba_ssm's `selective_scan_fn`.

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * u_t * B_t ;  y_t = <h_t, C_t> + D * u_t ;  out = y * silu(z)
    (delta is first shifted by delta_bias and passed through softplus when asked).

    u, delta, z: `[B, D, L]`; A: `[D, N]` (real); B, C: `[B, N, L]`, `[B, G, N, L]` with G | D,
    or `[D, N]` (time-invariant); D, delta_bias: `[D]`; initial_state: `[B, D, N]`; seq_idx: `[B, L]`
    int32 or int64 (packed sequences, ssd_scan's convention: the state restarts from zero wherever seq_idx
    changes; initial_state belongs to seq_idx 0 and the last state is the row's last sequence's; an
    extension: mamba_ssm's selective_scan_fn has no seq_idx).
    Returns out `[B, D, L]` in u's dtype, and with return_last_state also the last state
    `[B, D, N]` (float32, float64 for float64 u). L = 0 gives an empty out and a copy of initial_state (zeros
    without one) on every path, without a kernel.

    On CUDA the forward is a Gluon kernel with hand-set layouts where it takes the case (G = 1 or a
    multiple of 16 channels a group, N <= 32; 0.53 ms at B4 L4096 D5120 N16 bf16 on the H200, mamba_ssm's
    CUDA kernel 1.45), else a Triton one; `ARCHDSL_SCAN_FWD=gluon|serial|segments|auto` forces one (`auto`
    times them once per case). The backward is a Gluon kernel in the same layout where it takes the case
    (G = 1 or a multiple of 8 channels a group, 5 <= N <= 16; forward+backward 3.30 ms at that shape,
    mamba_ssm's CUDA kernels 7.16), else the Triton one in the Triton forward's layout (5.7 ms);
    `ARCHDSL_SCAN_BWD=gluon|groups|threads` forces one (`threads`: time across a program's threads, the
    oldest, kept as a cross-check). seq_idx is taken by all but the segmented forward (the Gluon kernels
    read the sequence starts as a bit a step).
    """
    batch, dim, seqlen, N = _check_scan(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx)
    expect_flag(delta_softplus=delta_softplus, return_last_state=return_last_state)
    if seqlen == 0:  # no steps: out empty (in u's graph), the state as it came (fresh: zeros); no kernel runs
        if not return_last_state:
            return u * 0
        wd = torch.float64 if u.dtype == torch.float64 else torch.float32
        last = u.new_zeros(batch, dim, N, dtype=wd) if initial_state is None else initial_state.to(wd, copy=True)
        return u * 0, last
    # a float64 input takes the torch path unless ARCHDSL_KERNELS forces one (_dispatch.choose_backend)
    backend = backend_for(u, A, exact=(u, delta, A, B, C, D, z, delta_bias, initial_state))
    if backend == "triton":
        from .triton_selective_scan import selective_scan_triton
        B4, C4 = (_as_groups(M, batch, dim, seqlen) for M in (B, C))
        if B4.shape[1] != C4.shape[1]:
            B4, C4 = (M.repeat_interleave(dim // M.shape[1], dim=1) for M in (B4, C4))
        starts = None if seq_idx is None else seq_starts(seq_idx).to(torch.int8)
        y, last = selective_scan_triton(u, delta, A, B4, C4, D, z, delta_bias, delta_softplus, initial_state, starts)
        return (y, last.to(u.dtype) if u.dtype == torch.float64 else last) if return_last_state else y
    if backend == "torch" and torch.compiler.is_compiling():  # one graph for every length (kernels/_opaque.py)
        # seq_idx as its runs in float64 (exact below 2^53): the operator's backward differentiates every input,
        # which torch.func.vjp refuses for an integer tensor
        runs = None if seq_idx is None else seq_runs(seq_idx).double()
        y, last = torch_path("selective_scan", [u, delta, A, B, C, D, z, delta_bias, initial_state, runs],
                             [delta_softplus])
        return (y, last) if return_last_state else y
    fn = selective_scan_naive if backend == "naive" else selective_scan_chunked
    return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state, seq_idx)


def _run(args, flags):
    u, delta, A, B, C, D, z, delta_bias, h0, runs = args
    return list(selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, bool(flags[0]), True, h0,
                                       None if runs is None else runs.long()))


def _fake(args, flags):
    u, A = args[0], args[2]
    wd = torch.float64 if u.dtype == torch.float64 else torch.float32
    return [u.new_empty(u.shape), u.new_empty(u.shape[0], u.shape[1], A.shape[1], dtype=wd)]


PATHS["selective_scan"] = (_run, _fake)


@on_input_device
@without_autocast
def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                           state_batch_indices=None):
    """One decode step of the selective scan (mamba_ssm's `selective_state_update`).

    state: `[B, D, N]`, updated in place; x, dt, z: `[B, D]`; A: `[D, N]`; B, C: `[B, N]` or
    `[B, G, N]`; D, dt_bias: `[D]`. Returns y `[B, D]` in x's dtype.

    mamba_ssm's head form, as its Mamba-2 step calls it: state `[B, H, P, N]`; x, dt, z `[B, H, P]`; A `[H, P, N]`;
    B, C `[B, G, N]` with G dividing H (head h reads group h // (H / G)); D, dt_bias `[H, P]`; y `[B, H, P]`.
    It is the op above over the H·P channels (expanded, stride-0 A, dt, D and dt_bias as Mamba-2 passes them
    are fine).

    state_batch_indices `[B]` int32 or int64 (continuous batching, mamba_ssm's keyword): state is a pool
    `[S, D, N]` (`[S, H, P, N]`) and row b updates state[state_batch_indices[b]]; a negative index is a pad
    row: its y is 0 and no state is touched. Two rows must not name one state, and none may be past the pool
    (checked on the CPU; on a GPU, trusted: such a row is left alone as a pad, checking would wait for the card).
    """
    if isinstance(state, torch.Tensor) and state.dim() == 4:
        return _head_form(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices)
    expect_shape("state", state, (None, None, None))
    pool, dim, N = state.shape
    expect_shape("x", x, (None if state_batch_indices is not None else pool, dim))
    batch = x.shape[0]
    for name, t in (("dt", dt), ("z", z)):
        expect_shape(name, t, (batch, dim), optional=name == "z")
    expect_shape("A", A, (dim, N))
    for name, t in (("B", B), ("C", C)):
        if not isinstance(t, torch.Tensor) or t.dim() not in (2, 3):
            raise ValueError(f"{name}: expected shape [{batch}, {N}] or [{batch}, G, {N}], got "
                             f"{list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        expect_shape(name, t, (batch, N) if t.dim() == 2 else (batch, None, N))
        groups = t.shape[1] if t.dim() == 3 else 1
        if groups == 0 or dim % groups:
            raise ValueError(f"{name}: groups G={groups} must divide D={dim}")
    expect_shape("D", D, (dim,), optional=True)
    expect_shape("dt_bias", dt_bias, (dim,), optional=True)
    expect_shape("state_batch_indices", state_batch_indices, (batch,), optional=True)
    expect_integer(state_batch_indices=state_batch_indices)
    expect_slots("state_batch_indices", state_batch_indices, pool)
    expect_float(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    expect_same_device(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                       state_batch_indices=state_batch_indices)
    expect_in_place(state=state)
    expect_flag(dt_softplus=dt_softplus)
    return selective_state_update_unchecked(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices)


@on_input_device
@without_autocast
def selective_state_update_unchecked(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                                     state_batch_indices=None):
    """selective_state_update of a state `[B, D, N]` without its argument checks, for a caller that made the
    arguments itself: the Mamba mixer's decode step, where on the CPU the checks took ~40 µs a layer, more than
    the torch step's arithmetic. The same paths, the same results."""
    B3, C3 = (t if t.dim() == 3 else t[:, None] for t in (B, C))
    # the Triton step computes in float32 and has no backward: float64 (the state or x), or a gradient wanted,
    # take the torch step, exact in float64 and differentiated by autograd
    wide = torch.promote_types(state.dtype, x.dtype) == torch.float64
    if (backend_for(state, x) == "triton" and state.stride(2) == 1 and not wide
            and not needs_grad(state, x, dt, A, B, C, D, z, dt_bias)):
        from .triton_selective_scan import selective_state_update_triton
        return selective_state_update_triton(state, unit_last(x), unit_last(dt), A, B3, C3, D, unit_last(z), dt_bias,
                                             dt_softplus, state_batch_indices)
    if state_batch_indices is None:
        return selective_state_update_naive(state, x, dt, A, B3, C3, D, z, dt_bias, dt_softplus)
    # the pool's rows: gathered, stepped, written back (the pads' rows neither read nor written)
    live, at = pool_rows(state_batch_indices, state.shape[0])
    rows = state[at]
    pick = lambda t: None if t is None else t[live]
    y = torch.zeros_like(x)
    y[live] = selective_state_update_naive(rows, x[live], dt[live], A, B3[live], C3[live], D, pick(z), dt_bias,
                                           dt_softplus)
    state[at] = rows
    return y


def _head_form(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices):
    """selective_state_update's head form, checked as such, run over the H·P channels (a view of the state where
    its strides allow, else a copy written back)."""
    pool, H, P, N = state.shape
    expect_shape("x", x, (None if state_batch_indices is not None else pool, H, P))
    batch = x.shape[0]
    for name, t in (("dt", dt), ("z", z)):
        expect_shape(name, t, (batch, H, P), optional=name == "z")
    expect_shape("A", A, (H, P, N))
    for name, t in (("B", B), ("C", C)):
        if not isinstance(t, torch.Tensor) or t.dim() not in (2, 3):
            raise ValueError(f"{name}: expected shape [{batch}, {N}] or [{batch}, G, {N}], got "
                             f"{list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        expect_shape(name, t, (batch, N) if t.dim() == 2 else (batch, None, N))
        if t.dim() == 3 and (t.shape[1] == 0 or H % t.shape[1]):
            raise ValueError(f"{name}: groups G={t.shape[1]} must divide the heads H={H}")
    expect_shape("D", D, (H, P), optional=True)
    expect_shape("dt_bias", dt_bias, (H, P), optional=True)
    expect_in_place(state=state)
    per_row = lambda t: None if t is None else t.reshape(batch, H * P)
    per_channel = lambda t: None if t is None else t.reshape(H * P)
    try:
        channels, copied = state.view(pool, H * P, N), False
    except RuntimeError:  # strides that do not flatten
        channels, copied = state.reshape(pool, H * P, N), True
    y = selective_state_update(channels, per_row(x), per_row(dt), A.reshape(H * P, N), B, C, per_channel(D),
                               per_row(z), per_channel(dt_bias), dt_softplus, state_batch_indices)
    if copied:
        state.copy_(channels.view(pool, H, P, N))
    return y.view(batch, H, P)


def _as_groups(M, batch, dim, seqlen):
    """B or C as `[B, G, N, L]` (a view where possible)."""
    if M.dim() == 2:
        return M[None, :, :, None].expand(batch, dim, M.shape[1], seqlen)
    return M[:, None] if M.dim() == 3 else M


def _check_scan(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx):
    expect_shape("u", u, (None, None, None))
    batch, dim, seqlen = u.shape
    expect_shape("delta", delta, (batch, dim, seqlen), by=("u", u))
    expect_shape("A", A, (dim, None), by=("u", u))
    N = A.shape[1]
    if A.is_complex():
        raise ValueError("A: complex A is not supported; expected a real [D, N] tensor")
    for name, M in (("B", B), ("C", C)):
        if not isinstance(M, torch.Tensor) or M.dim() not in (2, 3, 4):
            raise ValueError(f"{name}: expected shape [{batch}, {N}, {seqlen}], [{batch}, G, {N}, {seqlen}] "
                             f"or [{dim}, {N}], got {list(M.shape) if isinstance(M, torch.Tensor) else M!r}")
        shape = {2: (dim, N), 3: (batch, N, seqlen), 4: (batch, None, N, seqlen)}[M.dim()]
        expect_shape(name, M, shape, by=(("u", u), ("A", A)))
        if M.dim() == 4 and (M.shape[1] == 0 or dim % M.shape[1]):
            raise ValueError(f"{name}: groups G={M.shape[1]} must divide D={dim}")
    expect_shape("D", D, (dim,), optional=True, by=("u", u))
    expect_shape("z", z, (batch, dim, seqlen), optional=True, by=("u", u))
    expect_shape("delta_bias", delta_bias, (dim,), optional=True, by=("u", u))
    expect_shape("initial_state", initial_state, (batch, dim, N), optional=True, by=("u", u))
    expect_shape("seq_idx", seq_idx, (batch, seqlen), optional=True, by=("u", u))
    expect_float(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, initial_state=initial_state)
    expect_integer(seq_idx=seq_idx)
    expect_same_device(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                       initial_state=initial_state, seq_idx=seq_idx)
    return batch, dim, seqlen, N
