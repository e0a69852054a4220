"""Public Mamba-2 SSD: `ssd_scan` (parallel, training / prefill) and `ssd_step` (one decode token)."""
from __future__ import annotations

import numbers
import sys

import torch

from .._checks import (expect_count, expect_flag, expect_float, expect_in_place, expect_integer, expect_same_device,
                       expect_shape)
from .._dispatch import apply, backend_for, needs_grad, on_input_device, pick_impl, time_or_inf, without_autocast
from .._host import packing, seq_runs
from .chunked import ssd_scan_chunked
from .naive import DtRule, ssd_scan_naive, ssd_step_naive

A_FLOOR = 1e30  # ssd_scan takes A as at least -A_FLOOR


@on_input_device
@without_autocast
def ssd_scan(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
             initial_states=None, seq_idx=None, return_final_states=False, keep_states=True, dt_limit=None,
             cu_seqlens=None, return_varlen_states=False):
    """Mamba-2 state-space duality scan, as mamba_ssm's `mamba_chunk_scan_combined`.

    x [B, L, H, P], dt [B, L, H], A [H] (negative), B, C [B, L, G, N] with G dividing H
    (head h reads group h // (H // G)), D [H] or [H, P], z [B, L, H, P], dt_bias [H],
    initial_states [B, H, P, N], seq_idx [B, L] int32 or int64, dt_limit (lo, hi) or None.

        dt' = clamp(softplus(dt + dt_bias), dt_limit);  h_t = exp(dt'_t A) h_{t-1} + dt'_t x_t ⊗ B_t
        y_t = (C_t · h_t + D x_t) * silu(z_t)

    Each part of dt' is optional: the softplus with dt_softplus, the clamp with a dt_limit (its gradient
    0 where it clamps, as torch.clamp's). mamba_ssm's default dt_limit (0, inf) clamps a negative dt to 0;
    ours, None, does not clamp: pass (0.0, float("inf")) for that.

    With seq_idx the state restarts from zero wherever seq_idx changes (any integers; packed
    sequences usually number 0, 1, 2, ...); initial_states belong to seq_idx 0. chunk_size is the
    chunk of the torch path; the Triton path picks its own (the result is the same function).
    Returns y [B, L, H, P] in x's dtype, and with return_final_states also the final state
    [B, H, P, N] (float32, float64 for float64 x).
    keep_states=False trades time for memory in training on the Triton path: its backward prepares the
    chunks and runs the chunked layout's state pass again rather than keeping the state entering every
    chunk, the chunks' dt cumsums and C·Bᵀ (H·P·N / chunk + 2·H + G·chunk values a token; ~6% more
    forward+backward time). The result is the same bits either way.

    cu_seqlens [n + 1] int32 or int64 (batch 1; mamba_ssm's varlen form: 0, each later sequence's first token, L) says
    the packing as offsets: it stands for seq_idx, or, with seq_idx, must say the same. return_varlen_states
    (with seq_idx or cu_seqlens) also returns each sequence's last state, [sequences, H, P, N] float32 (float64
    for float64 x), the sequences row after row, each row's first token starting one; it comes last, after
    the final state. It is computed after the scan: by the kernels of kernels/ssd/triton_varlen.py on the Triton
    path where no input needs a gradient, else by their torch twin (varlen.py), which autograd differentiates.
    L = 0 gives an empty y, a copy of initial_states (zeros without them) as the final state and no varlen state,
    on every path, without a kernel (cu_seqlens, which has no empty sequence, cannot say L = 0).
    """
    chunk_size = _check_scan(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx)
    _check_limit(dt_limit)
    expect_flag(dt_softplus=dt_softplus, return_final_states=return_final_states, keep_states=keep_states,
                return_varlen_states=return_varlen_states)
    # A = -inf (A_log = inf) is a decay of 0, but the chunked forms take decays as exp of differences of
    # cumulative sums, -inf - (-inf) = NaN; -1e30 decays to 0 as well for any dt above 1e-28 and keeps
    # those sums finite for dt below 1e6 (the clamp's gradient there is 0, as the decay's is)
    A = A.to(torch.promote_types(A.dtype, torch.float32)).clamp(min=-A_FLOOR)  # -1e30 is -inf in float16
    seq_idx, offsets = packing(seq_idx, cu_seqlens, x)
    if return_varlen_states and seq_idx is None:
        raise ValueError("return_varlen_states: needs seq_idx or cu_seqlens (the sequences whose states it returns)")
    if x.shape[1] == 0:
        return _no_tokens(x, B, initial_states, return_final_states, return_varlen_states)
    count = None if offsets is None else len(offsets) - 1
    # a float64 input takes the torch path unless ARCHDSL_KERNELS forces one (_dispatch.choose_backend)
    exact = (x, dt, A, B, C, D, z, dt_bias, initial_states)
    if return_varlen_states:
        out = ssd_scan(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, initial_states, seq_idx,
                       return_final_states, keep_states, dt_limit)
        rule = DtRule.of(dt_softplus, dt_limit)
        if backend_for(x, B, exact=exact) == "triton":
            from .triton_varlen import varlen_states_triton
            states = varlen_states_triton(x, dt, A, B, seq_idx, dt_bias, rule, initial_states, count=count)
        else:
            from .varlen import varlen_states
            states = varlen_states(x, dt, A, B, seq_idx, dt_bias, rule, initial_states)
        return (*out, states) if return_final_states else (out, states)
    seq_idx = None if seq_idx is None else seq_runs(seq_idx)
    backend = backend_for(x, B, exact=exact)
    kw = dict(D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, initial_states=initial_states,
              seq_idx=seq_idx, return_final_states=return_final_states, dt_limit=dt_limit)
    if backend == "naive":  # computed in float64; y in x's dtype, the final state float32 unless x is float64
        out = ssd_scan_naive(x, dt, A, B, C, **kw)
        if not return_final_states:
            return out.to(x.dtype)
        return out[0].to(x.dtype), out[1].to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    if backend == "torch":
        return ssd_scan_chunked(x, dt, A, B, C, chunk_size, **kw)
    return _triton_scan(x, dt, A, B, C, D, z, dt_bias, DtRule.of(dt_softplus, dt_limit), initial_states, seq_idx,
                        return_final_states, keep_states)


def _no_tokens(x, B, initial_states, return_final_states, return_varlen_states):
    """ssd_scan of L = 0 tokens, on every path, no kernel launched: y empty (in x's graph), the final state a copy of
    initial_states (zeros without them), and no sequence's state ([0, H, P, N]: no row has a first token)."""
    batch, _, H, P = x.shape
    wd = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = x * 0
    if return_final_states:
        final = (x.new_zeros(batch, H, P, B.shape[-1], dtype=wd) if initial_states is None
                 else initial_states.to(wd, copy=True))
        y = (y, final)
    if not return_varlen_states:
        return y
    states = x.new_zeros(0, H, P, B.shape[-1], dtype=wd)
    return (*y, states) if return_final_states else (y, states)


@on_input_device
@without_autocast
def ssd_step(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=None):
    """One decode token of ssd_scan: state [B, H, P, N] is updated in place; returns y [B, H, P] in x's dtype.

    x [B, H, P], dt [B, H], A [H], B, C [B, G, N], D [H] or [H, P], z [B, H, P], dt_bias [H],
    dt_limit (lo, hi) or None, as ssd_scan's. The Triton step computes in float32: a float64 state or x, or a
    gradient wanted, takes the torch step (float64 exact).
    """
    _check_step(state, x, dt, A, B, C, D, z, dt_bias)
    expect_flag(dt_softplus=dt_softplus)
    _check_limit(dt_limit)
    # the Triton step computes in float32 and has no backward: float64 (the state or x), or a gradient wanted,
    # take the torch step, exact in float64 and differentiated by autograd
    ct = torch.float64 if state.dtype == torch.float64 or x.dtype == torch.float64 else torch.float32
    if (backend_for(x, B) == "triton" and ct != torch.float64
            and not needs_grad(state, x, dt, A, B, C, D, z, dt_bias)):
        from .triton_ssd import ssd_step_triton
        return ssd_step_triton(state, x, dt, A, B, C, D, z, dt_bias, DtRule.of(dt_softplus, dt_limit))
    # a copy of the state where autograd records: the step keeps it for the backward, and it is written next
    s = state.to(ct, copy=needs_grad(state, x, dt, A, B, C, D, z, dt_bias))
    # A floored as ssd_scan floors it: A = -inf with dt' = 0 (dt_limit's lower bound) is 0 · -inf = NaN in the decay
    y, new = ssd_step_naive(s, x.to(ct), dt.to(ct), A.to(ct).clamp(min=-A_FLOOR), B.to(ct), C.to(ct),
                            *(None if t is None else t.to(ct) for t in (D, z, dt_bias)), dt_softplus, dt_limit)
    state.copy_(new)
    return y.to(x.dtype)


def _triton_scan(x, dt, A, B, C, D, z, dt_bias, rule, h0, seq_idx, return_final_states, keep_states):
    y_dtype = x.dtype
    # The kernels' products take x, B and C in one dtype: mixed ones meet in the wider of them.
    common = torch.promote_types(torch.promote_types(x.dtype, B.dtype), C.dtype)
    # the kernels compute in float32: float64 reaches them only where ARCHDSL_KERNELS=triton forces them (the
    # interpreted tests); unforced, it takes the torch path (_dispatch.choose_backend)
    wide = common == torch.float64
    if wide:
        x, dt, A, B, C, D, z, dt_bias, h0 = (None if t is None else t.float()
                                             for t in (x, dt, A, B, C, D, z, dt_bias, h0))
    elif not x.dtype == B.dtype == C.dtype:
        x, B, C = x.to(common), B.to(common), C.to(common)
    args = (x, dt, A, B, C, D, z, dt_bias, h0, seq_idx, rule, None, bool(keep_states))
    y, hT = apply(_TRITON[_triton_impl(args)](), *args)
    if y.dtype != y_dtype:
        y = y.to(y_dtype)
    if y_dtype == torch.float64:
        hT = hT.double()
    return (y, hT) if return_final_states else y


def _fused():
    from .triton_ssd import SSDScanFn
    return SSDScanFn


def _chunked():
    from .triton_ssd_chunked import SSDChunkedFn
    return SSDChunkedFn


_TRITON = {"fused": _fused, "chunked": _chunked}


def _triton_impl(args) -> str:
    """`ARCHDSL_SSD_IMPL=fused|chunked|auto`; auto: on CUDA the faster of the two, timed once per case.

    fused walks the chunks of a (batch, head) in one program; chunked runs the chunks in parallel
    and carries only the [P, N] state serially (mamba_ssm's layout). Which wins depends on B·H·L
    against the chip's size, so auto measures it once per (shapes, dtype, options, grad). Unset,
    each pass takes the one measured faster on the H200 (docs/benchmarks.md, B4 H32 P64 N128, one
    process): chunked (forward 0.639 vs 1.293 ms at L 16K, at 4K 0.21 vs 0.33;
    forward+backward 1.38 vs 2.33 ms at 4K and 3.40 vs 9.20 at 16K; mamba2-1.3b trained 7.5% faster
    with it, measured before the backward's group kernels) -- and fused whenever the chunked
    layout's per-chunk buffers would pass CHUNKED_STATE_BYTES (a 1M-token bf16 prefill of 80 heads
    keeps ~11 GB of them; the fused layout keeps none).
    """
    x, tensors = args[0], args[:9]
    grad = needs_grad(*tensors)
    case = lambda: (x.shape, args[3].shape, x.dtype, x.device, grad, args[10], args[9] is not None,
                    tuple(None if t is None else tuple(t.shape) for t in tensors[5:9]))
    default = "fused" if chunked_state_bytes(x, args[3]) > CHUNKED_STATE_BYTES else "chunked"
    return pick_impl("ARCHDSL_SSD_IMPL", _TRITON, default, x, case, lambda name: _time(_TRITON[name](), args, grad))


CHUNKED_STATE_BYTES = 2 << 30


def chunked_state_bytes(x, B) -> int:
    """Bytes of the chunked layout's per-chunk buffers that grow with L·H: the entering states
    [B, H, NC, P, N] (16-bit for 16-bit inputs, else float32) and C·Bᵀ [B, NC, G, Q, Q]: float32, kept
    for the backward, and for bf16 inputs also the chunk scan's float16 copy."""
    from .triton_ssd_chunked import pick_chunk

    batch, L, H, P = x.shape
    G, N = B.shape[-2:]
    Q = pick_chunk(x, L, None)
    NC = -(-L // Q)
    states = batch * H * NC * P * N * (2 if x.dtype in (torch.bfloat16, torch.float16) else 4)
    return states + batch * NC * G * Q * Q * (6 if x.dtype == torch.bfloat16 else 4)


def _time(fn, args, grad) -> float:
    tensors = [None if t is None else t.detach().requires_grad_(grad and t.requires_grad) for t in args[:9]]
    leaves = [t for t in tensors if t is not None and t.requires_grad]

    def go():
        y, _ = fn.apply(*tensors, *args[9:])
        if leaves:
            torch.autograd.grad(y, leaves, torch.ones_like(y))
    return time_or_inf(go)


def _check_scan(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx):
    """The scan's arguments checked; returns chunk_size as an int."""
    expect_shape("x", x, (None, None, None, None))
    batch, L, H, P = x.shape
    expect_shape("B", B, (batch, L, None, None), by=("x", x))
    G, N = B.shape[2:]
    if G == 0 or H % G:
        raise ValueError(f"B: the group count G={G} must divide the head count H={H}")
    expect_shape("dt", dt, (batch, L, H), by=("x", x))
    expect_shape("A", A, (H,), by=("x", x))
    expect_shape("C", C, (batch, L, G, N), by=("B", B))
    _check_D(D, H, P)
    expect_shape("z", z, (batch, L, H, P), optional=True, by=("x", x))
    expect_shape("dt_bias", dt_bias, (H,), optional=True, by=("x", x))
    expect_shape("initial_states", initial_states, (batch, H, P, N), optional=True, by=("x", x))
    expect_shape("seq_idx", seq_idx, (batch, L), optional=True, by=("x", x))
    expect_integer(seq_idx=seq_idx)
    chunk_size = expect_count("chunk_size", chunk_size, what="a positive int")
    expect_float(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states)
    expect_same_device(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                       initial_states=initial_states, seq_idx=seq_idx)
    return chunk_size


def _check_step(state, x, dt, A, B, C, D, z, dt_bias):
    expect_shape("state", state, (None, None, None, None))
    batch, H, P, N = state.shape
    expect_shape("x", x, (batch, H, P))
    expect_shape("B", B, (batch, None, N))
    G = B.shape[1]
    if G == 0 or H % G:
        raise ValueError(f"B: the group count G={G} must divide the head count H={H}")
    expect_shape("dt", dt, (batch, H))
    expect_shape("A", A, (H,))
    expect_shape("C", C, (batch, G, N))
    _check_D(D, H, P)
    expect_shape("z", z, (batch, H, P), optional=True)
    expect_shape("dt_bias", dt_bias, (H,), optional=True)
    expect_float(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    expect_same_device(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    expect_in_place(state=state)


_FLOAT_MAX = sys.float_info.max


def _check_limit(dt_limit):
    """dt_limit: None or (lo, hi), two real numbers (Python's or numpy's), lo <= hi, each a float; lo may be -inf and
    hi inf (no bound), but lo = inf or hi = -inf would clamp every dt' to an infinity (y all NaN)."""
    if dt_limit is None:
        return
    # the message only where it is raised: under torch.compile(dynamic=True) the numbers are symbols, which
    # Dynamo cannot repr (building it first broke the graph of every call with a dt_limit)
    bad = lambda: ValueError(f"dt_limit: expected None or (lo, hi), two numbers with lo <= hi, lo < inf and "
                             f"hi > -inf, got {dt_limit!r}")
    if not (isinstance(dt_limit, (tuple, list)) and len(dt_limit) == 2
            and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in dt_limit)):
        raise bad()
    try:
        lo, hi = map(float, dt_limit)
    except OverflowError:  # an int past float's range
        raise bad() from None
    # lo > float max rather than lo == inf: a symbol (torch.compile(dynamic=True)) is taken as finite, so == inf
    # would be False with no guard, and a graph traced with finite numbers would take (inf, inf) without a check
    if not lo <= hi or lo > _FLOAT_MAX or hi < -_FLOAT_MAX:  # NaN too
        raise bad()


def _check_D(D, H, P):
    if D is not None and not (isinstance(D, torch.Tensor) and tuple(D.shape) in ((H,), (H, P))):
        got = list(D.shape) if isinstance(D, torch.Tensor) else type(D).__name__
        raise ValueError(f"D: expected shape [{H}] or [{H}, {P}], got {got}")
    if D is not None:
        expect_shape("D", D, (H, P)[:D.dim()])  # its layout (dense)
