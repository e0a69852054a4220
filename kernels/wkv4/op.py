"""RWKV-4 WKV with the bonus u: the public op and its decoding step, dispatched by device."""
from __future__ import annotations

import torch

from .._checks import expect_float, expect_integer, expect_same_device, expect_shape
from .._dispatch import backend_for, needs_grad, on_input_device, without_autocast
from .._host import seq_runs
from .._opaque import PATHS, torch_path
from .chunked import wkv4_torch
from .naive import _initial, wkv4_naive, wkv4_step_naive


@on_input_device
@without_autocast
def wkv4(w, u, k, v, state=None, seq_idx=None):
    """RWKV-4's WKV, transformers' `rwkv_linear_attention_cpu` formula for formula.

    w `[C]` the time decay parameter (the per-step decay is exp(-exp(w))), u `[C]` the
    bonus ("time_first"), k, v `[B, T, C]`. state is HF's: a tuple (num, den, max), each
    `[B, C]` float32, meaning the decayed sums num·e^max = Σ e^k·v and den·e^max = Σ e^k
    (a fresh state is (0, 0, -1e38)); a `[B, C, 3]` tensor is accepted too.

        wkv_t = (num' + e^{u+k_t} v_t) / (den' + e^{u+k_t}) with num', den' the state before t

    seq_idx `[B, T]` int32 or int64: packed sequences (mamba_ssm's convention, as in ssd_scan and wkv6): the
    state restarts fresh wherever seq_idx changes, the incoming state belongs to seq_idx 0, and the state
    returned is the last sequence's.

    Returns (wkv `[B, T, C]` in k's dtype, (num, den, max) after the last token, `[B, C]` each in float32,
    float64 for float64 k). Stable in
    bf16/fp16 for any length (running max). Differentiable in w, u, k, v and the state, the
    outgoing state's num, den and max each as the function it is (max moves with the winning logit).
    """
    state = _check(w, u, k, v, state, seq_idx)
    if k.shape[1] == 0:  # no token, no kernel: an empty wkv in k's and v's graph, the state a copy
        B, _, C = k.shape
        ct = torch.float64 if k.dtype == torch.float64 else torch.float32
        return k * 0 + (v * 0).to(k.dtype), tuple(s.to(ct, copy=True) for s in _initial(state, B, C, ct, k.device))
    # a float64 input takes the torch path unless ARCHDSL_KERNELS forces one (_dispatch.choose_backend)
    backend = backend_for(k, exact=(w, u, k, v, *(state or ())))
    if backend == "triton":
        from .triton_wkv4 import wkv4_triton
        return wkv4_triton(w, u, k, v, state, seq_idx)
    if backend == "torch" and torch.compiler.is_compiling():  # one graph for every length (kernels/_opaque.py)
        # seq_idx travels as float64 (exact below 2^53): the operator's inputs are all floating point
        seq = None if seq_idx is None else seq_runs(seq_idx).double()
        wkv, *st = torch_path("wkv4", [w, u, k, v, *(state or (None,) * 3), seq], [])
        return wkv, tuple(st)
    if backend == "torch":
        return wkv4_torch(w, u, k, v, state, seq_idx=seq_idx)
    return wkv4_naive(w, u, k, v, state, seq_idx)


def _run(args, flags):
    w, u, k, v, *state, seq = args
    wkv, st = wkv4_torch(w, u, k, v, None if state[0] is None else tuple(state), seq_idx=seq)
    return [wkv, *st]


def _fake(args, flags):
    k = args[2]
    B, T, C = k.shape
    ct = torch.float64 if k.dtype == torch.float64 else torch.float32
    return [k.new_empty(B, T, C)] + [k.new_empty(B, C, dtype=ct) for _ in range(3)]


PATHS["wkv4"] = (_run, _fake)


@on_input_device
@without_autocast
def wkv4_step(w, u, k, v, state):
    """One token: k, v `[B, C]`, state (num, den, max) `[B, C]` each (or `[B, C, 3]`).

    Returns (wkv `[B, C]` in k's dtype, new state tuple). On the Triton backend one kernel (triton_wkv4_step.py:
    one launch where the torch step takes ~15), in float32; float64, or a gradient wanted, takes the torch step.
    """
    expect_shape("k", k, (None, None))
    B, C = k.shape
    expect_shape("v", v, (B, C))
    state = _check_rest(w, u, k, v, state, B, C)
    if state is None:
        raise ValueError("state: expected (num, den, max) of shape [B, C] each, got None")
    wide = any(t.dtype == torch.float64 for t in (k, *state))
    if backend_for(k) == "triton" and not wide and not needs_grad(w, u, k, v, *state):
        from .triton_wkv4_step import wkv4_step_triton
        return wkv4_step_triton(w, u, k, v, state)
    return wkv4_step_naive(w, u, k, v, state)


def _check(w, u, k, v, state, seq_idx=None):
    """wkv4's inputs (k, v `[B, T, C]`); returns the state as a tuple, or None."""
    expect_shape("k", k, (None, None, None))
    B, T, C = k.shape
    expect_shape("v", v, (B, T, C), by=("k", k))
    expect_shape("seq_idx", seq_idx, (B, T), optional=True, by=("k", k))
    expect_integer(seq_idx=seq_idx)
    return _check_rest(w, u, k, v, state, B, C, seq_idx=seq_idx)


def _check_rest(w, u, k, v, state, B, C, **more):
    """What wkv4 and wkv4_step check alike: w, u `[C]`, the state (num, den, max) `[B, C]` each or `[B, C, 3]`,
    float dtypes, one device (with `more`'s tensors). Returns the state as a tuple, or None."""
    expect_shape("w", w, (C,), by=("k", k))
    expect_shape("u", u, (C,), by=("k", k))
    expect_float(w=w, u=u, k=k, v=v)
    if state is not None:
        if isinstance(state, torch.Tensor):
            expect_shape("state", state, (B, C, 3), by=("k", k))
            state = state.unbind(-1)
        if not isinstance(state, (tuple, list)) or len(state) != 3:
            raise ValueError("state: expected (num, den, max), each of shape [B, C]")
        named = dict(zip(("state[0] (num)", "state[1] (den)", "state[2] (max)"), state))
        for name, s in named.items():
            expect_shape(name, s, (B, C), by=("k", k))
        expect_float(**named)
        more.update(named)
    expect_same_device(w=w, u=u, k=k, v=v, **more)
    return None if state is None else tuple(state)
