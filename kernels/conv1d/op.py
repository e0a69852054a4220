"""Public depthwise causal conv1d and its decode step, with the causal-conv1d package's conventions."""
from __future__ import annotations

import torch

from .._checks import (expect_flag, expect_float, expect_in_place, expect_integer, expect_same_device, expect_shape,
                      expect_slots)
from .._dispatch import backend_for, needs_grad, on_input_device, without_autocast
from .._host import pool_rows, seq_runs
from .chunked import causal_conv1d_torch
from .naive import causal_conv1d_naive, causal_conv1d_update_circular_naive, causal_conv1d_update_naive, final_window

_ACTIVATIONS = (None, "silu", "swish")


@on_input_device
@without_autocast
def causal_conv1d(x, weight, bias=None, activation=None, initial_states=None, return_final_states=False,
                  seq_idx=None):
    """Depthwise causal convolution: y[b, d, t] = act(bias[d] + sum_k weight[d, k] * x[b, d, t - W + 1 + k]).

    x: `[B, D, L]`; weight: `[D, W]` with W in 2..4; bias: `[D]`; activation: None, "silu" or "swish";
    initial_states: `[B, D, W-1]`, the W-1 inputs before x (zeros when None); seq_idx: `[B, L]` int32 or int64,
    packed sequences (causal-conv1d's keyword): a tap reads only inputs of its output's sequence, those of
    another read as 0 (as ssd_scan's seq_idx, the initial states belong to seq_idx 0).
    Returns y `[B, D, L]` in x's dtype, and with return_final_states also the last W-1 inputs
    `[B, D, W-1]` (the initial_states of a continuation of the last sequence; model prefill keeps them).
    L = 0 gives an empty y and, as the final states, a copy of initial_states (zeros without them), on every
    path without a kernel.
    """
    expect_shape("x", x, (None, None, None))
    batch, dim, seqlen = x.shape
    _check_weight(weight, bias, dim, activation, by=("x", x))
    W = weight.shape[1]
    expect_shape("initial_states", initial_states, (batch, dim, W - 1), optional=True,
                 by=(("x", x), ("weight", weight)))
    expect_flag(return_final_states=return_final_states)
    expect_shape("seq_idx", seq_idx, (batch, seqlen), optional=True, by=("x", x))
    expect_integer(seq_idx=seq_idx)
    expect_float(x=x, weight=weight, bias=bias, initial_states=initial_states)
    expect_same_device(x=x, weight=weight, bias=bias, initial_states=initial_states, seq_idx=seq_idx)
    if seqlen == 0:  # nothing to convolve: y empty (in x's graph), the window as it came
        if not return_final_states:
            return x * 0
        final = x.new_zeros(batch, dim, W - 1) if initial_states is None else initial_states.to(x.dtype, copy=True)
        return x * 0, final
    runs = None if seq_idx is None else seq_runs(seq_idx)
    # a float64 input takes the torch path unless ARCHDSL_KERNELS forces one (_dispatch.choose_backend)
    backend = backend_for(x, exact=(x, weight, bias, initial_states))
    if backend == "triton":
        from .triton_conv1d import causal_conv1d_triton
        y = causal_conv1d_triton(x, weight, bias, activation, initial_states, runs)
        if not return_final_states:
            return y
        init = initial_states if initial_states is not None else x.new_zeros(batch, dim, W - 1)
        last = torch.cat([init.to(x.dtype), x[:, :, -(W - 1):]], dim=-1)[:, :, -(W - 1):]
        return y, final_window(last, None if runs is None else torch.cat([runs.new_zeros(batch, W - 1), runs], 1))
    fn = causal_conv1d_naive if backend == "naive" else causal_conv1d_torch
    return fn(x, weight, bias, activation, initial_states, return_final_states, runs)


@on_input_device
@without_autocast
def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None,
                         conv_state_indices=None):
    """Decode step (causal-conv1d's `causal_conv1d_update`, its arguments in its order): conv_state is shifted left
    in place.

    x: `[B, D]` (or `[B, D, T]` for T steps); conv_state: `[B, D, S]` with S >= W-1 (mamba_ssm keeps
    S = W); weight `[D, W]`; bias `[D]`. Returns `[B, D]` (or `[B, D, T]`) in x's dtype.
    cache_seqlens `[B]` int32 or int64 (causal-conv1d's keyword): conv_state is a circular buffer instead, nothing
    shifts: step t of row b writes its input at (cache_seqlens[b] + t) mod S, and its window is the W-1 entries
    before that position (negative counts wrap as torch.remainder does); the caller advances cache_seqlens.
    conv_state_indices `[B]` int32 or int64 (continuous batching, causal-conv1d's keyword): conv_state is a pool
    `[P, D, S]` and row b shifts conv_state[conv_state_indices[b]]; a negative index is a pad row (its y is 0 and
    no state is touched), as selective_state_update's state_batch_indices, and as there no two rows may name one
    state nor any index be past the pool (checked on the CPU, trusted on a GPU).
    The Triton step computes in float32: a float64 conv_state or x, or a gradient wanted, takes the torch step
    (float64 exact; it steps a copy of the state, written back once, so autograd differentiates it).
    """
    expect_shape("conv_state", conv_state, (None, None, None))
    pool, dim, S = conv_state.shape
    batch = pool if conv_state_indices is None else None
    if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3):
        rows = "B" if batch is None else batch
        raise ValueError(f"x: expected shape [{rows}, {dim}] or [{rows}, {dim}, T], got "
                         f"{list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    expect_shape("x", x, (batch, dim) if x.dim() == 2 else (batch, dim, None))
    batch = x.shape[0]
    if x.dim() == 3 and x.shape[2] < 1:
        raise ValueError(f"x: expected at least one time step, got shape {list(x.shape)}")
    _check_weight(weight, bias, dim, activation)
    if S < weight.shape[1] - 1:
        raise ValueError(f"conv_state: expected at least W-1={weight.shape[1] - 1} entries in the last dim, got {S}")
    for name, t in (("cache_seqlens", cache_seqlens), ("conv_state_indices", conv_state_indices)):
        expect_shape(name, t, (batch,), optional=True)
        expect_integer(**{name: t})
    expect_slots("conv_state_indices", conv_state_indices, pool)
    expect_float(x=x, conv_state=conv_state, weight=weight, bias=bias)
    expect_same_device(x=x, conv_state=conv_state, weight=weight, bias=bias, cache_seqlens=cache_seqlens,
                       conv_state_indices=conv_state_indices)
    expect_in_place(conv_state=conv_state)
    # the Triton step computes in float32 and has no backward: float64 (the state or x), or a gradient wanted,
    # take the torch step, exact in float64 and differentiated by autograd
    wide = torch.promote_types(conv_state.dtype, x.dtype) == torch.float64
    if (backend_for(x) == "triton" and conv_state.stride(2) == 1 and not wide
            and not needs_grad(x, conv_state, weight, bias)):
        from .triton_conv1d import causal_conv1d_update_triton
        step = lambda x_t, t: causal_conv1d_update_triton(x_t.contiguous(), conv_state, weight, bias, activation,
                                                          conv_state_indices, cache_seqlens, t)
        if x.dim() == 2:
            return step(x, 0)
        return torch.stack([step(x[:, :, t], t) for t in range(x.shape[-1])], dim=-1)

    def naive(x, state, cache):
        if cache is None:
            return causal_conv1d_update_naive(x, state, weight, bias, activation)
        return causal_conv1d_update_circular_naive(x, state, weight, bias, activation, cache)
    if conv_state_indices is None:
        return naive(x, conv_state, cache_seqlens)
    # the pool's rows: gathered, stepped, written back (the pads' rows neither read nor written)
    live, at = pool_rows(conv_state_indices, pool)
    rows = conv_state[at]
    y = torch.zeros_like(x)
    y[live] = naive(x[live], rows, None if cache_seqlens is None else cache_seqlens[live])
    conv_state[at] = rows
    return y


def _check_weight(weight, bias, dim, activation, by=None):
    """by: as expect_shape's, the tensor the channel count `dim` comes from."""
    expect_shape("weight", weight, (dim, None), by=by)
    if not 2 <= weight.shape[1] <= 4:
        raise ValueError(f"weight: expected width W in 2..4, got shape {list(weight.shape)}")
    expect_shape("bias", bias, (dim,), optional=True, by=by)
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation: expected one of None, 'silu', 'swish', got {activation!r}")
