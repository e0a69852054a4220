"""RWKV-6 (Finch) WKV: the public op and its decoding step, dispatched by device."""
from __future__ import annotations

import torch

from .._checks import expect_flag, expect_float, expect_in_place, expect_integer, expect_number, expect_same_device, expect_shape
from .._dispatch import backend_for, needs_grad, on_input_device, pick_impl, time_or_inf, without_autocast
from .._host import cdiv, packing, seq_runs, sm_count
from .._opaque import PATHS, torch_path
from .chunked import wkv6_chunked
from .naive import wkv6_naive, wkv6_step_naive
from .varlen import packed, side_by_side


@on_input_device
@without_autocast
def wkv6(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None, cu_seqlens_cpu=None,
         seq_idx=None):
    """RWKV-6's WKV over a sequence, fla's `chunk_rwkv6` convention.

    r, k, w `[B, T, H, K]`, v `[B, T, H, V]`, w the log-decay (≤ 0: the per-step decay
    is exp(w); -inf forgets the state), u `[H, K]` the bonus of the current token, scale defaults to
    K**-0.5, initial_state `[B, H, K, V]`.

        o_t = scale * r_t · (S_{t-1} + (u ⊙ k_t) ⊗ v_t),   S_t = diag(exp(w_t)) S_{t-1} + k_t ⊗ v_t

    seq_idx `[B, T]` int32 or int64: packed sequences (mamba_ssm's convention, as in ssd_scan): S_{t-1} is zero
    wherever seq_idx changes, the initial state belongs to seq_idx 0, and the final state is the last sequence's.

    cu_seqlens `[n + 1]` int32 or int64 (fla's varlen form, batch 1: 0, each later sequence's first token, T)
    packs n sequences as fla's `chunk_rwkv6` does (and in its place among the arguments): each has its own state,
    initial_state `[n, H, K, V]` and the final state `[n, H, K, V]`. cu_seqlens_cpu, fla's host copy of it,
    spares the one wait for the device that reading the offsets costs (trusted to hold the same offsets; compared
    where both are on the CPU).
    Without states it runs as the packed row of seq_idx; with them, on the Triton backend, one program walks each
    sequence from its own state (the serial layout: the work is the tokens), or (ARCHDSL_WKV6_IMPL=chunked) each
    sequence is cut into pieces of 64 tokens, a boundary pass a sequence gives the state entering each piece and
    every piece runs at once; on the torch backend, as a batch of the n sequences padded to the longest
    (kernels/wkv6/varlen.py).

    Returns (o `[B, T, H, V]` in r's dtype, final state `[B, H, K, V]` in float32 (float64
    for float64 r) when output_final_state, else None). Differentiable in r, k, v,
    w, u and initial_state. A key size K of 0 with a scale given is empty work, as the other zero counts: o is 0, in
    autograd's graph, and the (empty) state passes through, on every path; without a scale it is a ValueError (the
    default K^-0.5 needs K >= 1).
    """
    expect_shape("r", r, (None, None, None, None))  # before packing reads its length and seq_idx
    expect_shape("seq_idx", seq_idx, tuple(r.shape[:2]), optional=True)
    expect_integer(seq_idx=seq_idx)
    expect_same_device(r=r, seq_idx=seq_idx)
    expect_flag(output_final_state=output_final_state)
    # cu_seqlens with states: the offsets alone are read (no seq_idx made on the device)
    varlen = cu_seqlens is not None and (initial_state is not None or output_final_state)
    seq_idx, offsets = packing(seq_idx, cu_seqlens, r, cu_seqlens_cpu, runs=not varlen)
    _check(r, k, v, w, u, initial_state, scale, seq_idx, states=None if offsets is None else len(offsets) - 1)
    scale = r.shape[-1] ** -0.5 if scale is None else expect_number("scale", scale)
    if r.shape[1] == 0:  # no token, no kernel: an empty o in v's graph, the final state a copy of the initial one
        ct = torch.float64 if r.dtype == torch.float64 else torch.float32
        B, _, H, K = r.shape
        state = None if not output_final_state else (
            initial_state.to(ct, copy=True) if initial_state is not None
            else r.new_zeros(B, H, K, v.shape[-1], dtype=ct))
        return (v * 0).to(r.dtype), state
    # a float64 input takes the torch path unless ARCHDSL_KERNELS forces one (_dispatch.choose_backend)
    backend = backend_for(r, exact=(r, k, v, w, u, initial_state))
    if varlen and backend != "triton":
        rows = [side_by_side(t, offsets) for t in (r, k, v, w)]
        o, state = wkv6(*rows, u, scale, initial_state, output_final_state)
        return packed(o, offsets), state
    seq = None if seq_idx is None or varlen else seq_runs(seq_idx)
    if backend == "triton":
        # The kernels round their products' operands as r's dtype says: mixed inputs meet in the widest
        # of r, k, v and w first, as the torch path computes them.
        o_dtype = r.dtype
        if not r.dtype == k.dtype == v.dtype == w.dtype:
            common = torch.promote_types(torch.promote_types(r.dtype, k.dtype), torch.promote_types(v.dtype, w.dtype))
            r, k, v, w = (t.to(common) for t in (r, k, v, w))
        if varlen:
            # the kernels' plans are made on the host from the offsets read above, and copied over once
            cu_host = torch.tensor(offsets, dtype=torch.int32)
            name = _triton_varlen_impl(r, k, v, w, u, scale, initial_state, output_final_state, cu_host, offsets)
            o, state = _TRITON_VARLEN[name]()(r, k, v, w, u, scale, initial_state, output_final_state,
                                               cu_seqlens=cu_host)
        else:
            impl = _TRITON[_triton_impl(r, k, v, w, u, scale, initial_state, output_final_state, seq)]()
            o, state = impl(r, k, v, w, u, scale, initial_state, output_final_state, seq)
        state_dtype = torch.float64 if o_dtype == torch.float64 else torch.float32
        if state is not None and state.dtype != state_dtype:
            state = state.to(state_dtype)
        return (o if o.dtype == o_dtype else o.to(o_dtype)), state
    if backend == "torch" and torch.compiler.is_compiling():  # one graph for every length (kernels/_opaque.py)
        # the runs travel as float64 (exact below 2^53): the operator's inputs are all floating point
        o, state = torch_path("wkv6", [r, k, v, w, u, initial_state, None if seq is None else seq.double()], [scale])
        return o, (state if output_final_state else None)
    impl = wkv6_chunked if backend == "torch" else wkv6_naive
    return impl(r, k, v, w, u, scale, initial_state, output_final_state, seq)


def _run(args, flags):
    r, k, v, w, u, h0, seq = args
    return list(wkv6_chunked(r, k, v, w, u, flags[0], h0, True, None if seq is None else seq.long()))


def _fake(args, flags):
    r, v = args[0], args[2]
    B, T, H, K = r.shape
    ct = torch.float64 if r.dtype == torch.float64 else torch.float32
    return [r.new_empty(B, T, H, v.shape[-1]), r.new_empty(B, H, K, v.shape[-1], dtype=ct)]


PATHS["wkv6"] = (_run, _fake)


@on_input_device
@without_autocast
def wkv6_step(state, r, k, v, w, u, scale=None):
    """One decoding step: state `[B, H, K, V]` is updated in place (keep it float32).

    r, k, w `[B, H, K]`, v `[B, H, V]`, u `[H, K]`. Returns o `[B, H, V]` in r's dtype. On the Triton backend one
    kernel reads and writes the state once (kernels/wkv6/triton_wkv6_step.py), in float32; float64, or a gradient
    wanted, takes the torch step. K = 0 as in wkv6: o is 0 where scale is given, else a ValueError.
    """
    expect_shape("state", state, (None, None, None, None))
    B, H, K, V = state.shape
    for name, t in (("r", r), ("k", k), ("w", w)):
        expect_shape(name, t, (B, H, K))
    expect_shape("v", v, (B, H, V))
    expect_shape("u", u, (H, K))
    _check_K(K, scale)
    expect_float(state=state, r=r, k=k, v=v, w=w, u=u)
    expect_same_device(state=state, r=r, k=k, v=v, w=w, u=u)
    expect_in_place(state=state)
    scale = None if scale is None else expect_number("scale", scale)
    # the Triton step computes in float32 and has no backward: float64, or a gradient wanted, take the torch step
    wide = torch.promote_types(state.dtype, r.dtype) == torch.float64
    if backend_for(r, state) == "triton" and not wide and not needs_grad(state, r, k, v, w, u):
        from .triton_wkv6_step import wkv6_step_triton
        return wkv6_step_triton(state, r, k, v, w, u, K ** -0.5 if scale is None else scale)
    return wkv6_step_naive(state, r, k, v, w, u, scale)


def _serial():
    from .triton_wkv6 import wkv6_triton
    return wkv6_triton


def _chunked():
    from .triton_wkv6_chunked import wkv6_triton_chunked
    return wkv6_triton_chunked


def _varlen_chunked():
    from .triton_wkv6_chunked import wkv6_varlen_chunked
    return wkv6_varlen_chunked


_TRITON = {"serial": _serial, "chunked": _chunked}
# cu_seqlens with a state each: a program walks each sequence (serial), or a boundary pass a sequence over its
# pieces of 64 tokens, then every piece at once (chunked)
_TRITON_VARLEN = {"serial": _serial, "chunked": _varlen_chunked}


def _triton_impl(r, k, v, w, u, scale, h0, output_final_state, seq) -> str:
    """`ARCHDSL_WKV6_IMPL=serial|chunked|auto`; auto: on CUDA the faster of the two, timed once per case
    (a fraction of a second once per shapes, dtype, grad, initial state, seq_idx). Unset: _default_impl."""
    xs = (r, k, v, w, u) + ((h0,) if h0 is not None else ())
    grad = needs_grad(*xs)
    case = lambda: (r.shape, v.shape[-1], r.dtype, r.device, grad, h0 is not None, output_final_state, seq is not None)
    return pick_impl("ARCHDSL_WKV6_IMPL", _TRITON, _default_impl(r.shape, v.shape[-1], r.device, grad), r, case,
                     lambda name: _time(_TRITON[name](), xs, scale, output_final_state, grad, seq_idx=seq))


def _triton_varlen_impl(r, k, v, w, u, scale, h0, output_final_state, cu_seqlens, offsets) -> str:
    """`ARCHDSL_WKV6_IMPL` for cu_seqlens with states; unset: `_varlen_default`. auto times both once per shapes,
    dtype, grad, states, sequence count and longest sequence (to a power of two)."""
    xs = (r, k, v, w, u) + ((h0,) if h0 is not None else ())
    grad = needs_grad(*xs)
    longest = max(b - a for a, b in zip(offsets, offsets[1:]))
    case = lambda: (r.shape, v.shape[-1], r.dtype, r.device, grad, h0 is not None, output_final_state,
                    len(offsets) - 1, 1 << (longest - 1).bit_length(), "varlen")
    default = _varlen_default(r.shape[1], len(offsets) - 1, longest, grad, r.device)
    return pick_impl("ARCHDSL_WKV6_IMPL", _TRITON_VARLEN, default, r, case,
                     lambda name: _time(_TRITON_VARLEN[name](), xs, scale, output_final_state, grad,
                                        cu_seqlens=cu_seqlens))


def _varlen_default(T: int, n: int, longest: int, grad: bool, device: torch.device) -> str:
    """cu_seqlens with states: serial (a program walks each sequence), unless on CUDA a gradient is taken over a
    long row that one sequence holds at least half of: then one program walking it binds the serial layout, and
    the chunked form (the n sequences cut into pieces of 64 tokens, triton_wkv6_chunked.CHUNK; at most 65535 of
    them) is faster. The share of one half is a margin over the crossover the two packs below put near 40%.
    H100, B1 T16384 H32 K=V=64 bf16, a state each, one run (2026-12-05, docs/benchmarks.md's seventy-seventh),
    serial / chunked / fla chunk_rwkv6 ms (the longest sequence's share of the row in brackets):
                                                  forward              forward+backward
        16 sequences of 61..3589 tokens (22%)     0.70 / 1.11 / 1.28   2.93 / 4.22 / 4.67
        63 x 128 tokens, then 8320 (51%)          1.40 / 1.64 / 1.41   5.54 / 4.69 / 4.72"""
    if device.type == "cuda" and grad and T >= 8192 and 2 * longest >= T and n + cdiv(T, 64) <= 65535:
        return "chunked"
    return "serial"


SERIAL_V_BLOCK = 64  # the serial layout's V block (triton_wkv6's BV): one program per (batch, head, V block)


def _default_impl(shape: tuple, V: int, device: torch.device, grad: bool = True) -> str:
    """serial, unless on CUDA it would leave most of the card idle over a long sequence: fewer programs
    (B·H·V blocks) than half the multiprocessors and T ≥ 2048, or T ≥ 1024 where no gradient is taken.
    Each serial program walks all T steps, so its time does not shrink with B; the chunked layout's does.
    H200, H32 K=V=64 bf16, no seq_idx, one run (2026-12-04, docs/benchmarks.md's sixty-second), serial /
    chunked ms, forward and forward+backward:
        B1 T1024 0.141 / 0.081, 0.611 / 0.733     B2 T1024 0.142 / 0.115, 0.680 / 0.875
        B1 T2048 0.277 / 0.156, 1.209 / 0.933     B2 T2048 0.279 / 0.205, 1.220 / 0.914
        B1 T4096 0.551 / 0.305, 2.404 / 1.206     B2 T4096 0.554 / 0.394, 2.409 / 1.779
        B4 T4096 (128 programs) 0.558 / 0.636, 2.594 / 3.071   B4 T16384 2.212 / 2.460, 10.103 / 11.919
    With seq_idx, one packed row of 16384 tokens: 2.999 / 1.429, 11.499 / 5.535 (sixtieth run)."""
    B, T, H, _ = shape  # r's [B, T, H, K]
    if device.type != "cuda" or T < (2048 if grad else 1024):
        return "serial"
    programs = B * H * -(-V // SERIAL_V_BLOCK)
    return "chunked" if 2 * programs <= sm_count(device) else "serial"


def _time(impl, xs, scale, output_final_state, grad, **packing) -> float:
    xs = [x.detach().requires_grad_(grad and x.requires_grad) for x in xs]
    leaves = [x for x in xs if x.requires_grad]
    h0 = xs[5] if len(xs) > 5 else None

    def go():
        o, _ = impl(*xs[:5], scale, h0, output_final_state, **packing)
        if leaves:
            torch.autograd.grad(o, leaves, torch.ones_like(o))
    return time_or_inf(go)


def _check(r, k, v, w, u, initial_state, scale, seq_idx=None, states=None):
    """states: the initial states' count where it is not the batch's (cu_seqlens: one a sequence)."""
    expect_shape("r", r, (None, None, None, None))
    B, T, H, K = r.shape
    expect_shape("k", k, (B, T, H, K), by=("r", r))
    expect_shape("w", w, (B, T, H, K), by=("r", r))
    expect_shape("v", v, (B, T, H, None), by=("r", r))
    expect_shape("u", u, (H, K), by=("r", r))
    _check_K(K, scale)
    expect_shape("initial_state", initial_state, (B if states is None else states, H, K, v.shape[-1]), optional=True,
                 by=(("r", r), ("v", v)))
    expect_shape("seq_idx", seq_idx, (B, T), optional=True, by=("r", r))
    expect_integer(seq_idx=seq_idx)
    expect_float(r=r, k=k, v=v, w=w, u=u, initial_state=initial_state)
    expect_same_device(r=r, k=k, v=v, w=w, u=u, initial_state=initial_state, seq_idx=seq_idx)


def _check_K(K, scale):
    """A key size K of 0 is empty work (o = 0, the state passes through) where scale is given; the default scale,
    K^-0.5, needs K >= 1."""
    if K == 0 and scale is None:
        raise ValueError("scale: the default, K^-0.5, needs a key size K (r's last dim) of at least 1, got K=0; "
                         "pass a scale for K = 0 (empty work: o is 0)")
