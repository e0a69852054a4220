"""The peers' entry points under their own names, with their parameters in their order, their defaults and their
meaning, on our ops: code written for mamba_ssm, causal-conv1d or fla switches by its import line alone.

    mamba_ssm      selective_scan_fn, mamba_chunk_scan_combined   (selective_state_update: the op's own name)
    causal-conv1d  causal_conv1d_fn                                 (causal_conv1d_update: the op's own name)
    fla            chunk_rwkv6, fused_recurrent_rwkv6

Our own ops keep the project's signatures (docs/kernels.md), which differ from these as follows, all handled here:
  * mamba_chunk_scan_combined takes initial_states, seq_idx and cu_seqlens before dt_softplus; its dt_limit
    defaults to (0, inf), which clamps a negative dt to 0 (ssd_scan's None clamps nothing); it reads cu_seqlens only
    for return_varlen_states (the scan restarts where seq_idx says, never where cu_seqlens does, while ssd_scan's
    cu_seqlens packs the row), and returns the varlen states in C's dtype (ssd_scan's are float32);
  * causal_conv1d_fn takes seq_idx, initial_states, return_final_states and final_states_out before activation,
    and writes the final states into final_states_out when given with return_final_states; a negative seq_idx is
    a padding token, its output 0 (causal-conv1d >= 1.5.3);
  * causal_conv1d_varlen_states (causal-conv1d's) gathers packed sequences' conv states;
  * chunk_rwkv6 takes a chunk_size keyword (a power of 2; our kernels pick their own chunks);
  * fused_recurrent_rwkv6 takes reverse (each sequence scanned from its last token back), built on wkv6 by flips;
  * chunk_rwkv6 and fused_recurrent_rwkv6 take head_first=False and refuse head_first=True with fla's
    DeprecationWarning (HeadFirstError, a ValueError too).
"""
from __future__ import annotations

import torch

from ._checks import expect_count, expect_in_place, expect_integer, expect_same_device, expect_shape
from ._dispatch import on_input_device
from ._host import packing
from .conv1d import causal_conv1d
from .selective_scan import selective_scan
from .ssd import ssd_scan
from .wkv6 import wkv6

selective_scan_fn = selective_scan  # mamba_ssm's order and defaults already (complex A refused: docs/kernels.md)


@on_input_device
def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                              seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, float("inf")),
                              return_final_states=False, return_varlen_states=False):
    """mamba_ssm's `mamba_chunk_scan_combined` (ops/triton/ssd_combined.py) on ssd_scan: x [B, L, H, P], dt
    [B, L, H], A [H], B, C [B, L, G, N]. Returns y [B, L, H, P] in x's dtype, then the final state [B, H, P, N]
    float32 (float64 for float64 x) with return_final_states, then with return_varlen_states each sequence's last
    state [sequences, H, P, N] in C's dtype. As there, return_varlen_states needs cu_seqlens, which must say the
    sequences seq_idx says: mamba_ssm, given no seq_idx, returns states that are neither each sequence's own nor
    the unbroken scan's, which this refuses rather than answer otherwise."""
    if not return_varlen_states:
        cu_seqlens = None  # as mamba_ssm: read for the varlen states only
    elif cu_seqlens is None:
        raise ValueError("cu_seqlens: return_varlen_states needs it (mamba_ssm asserts the same)")
    elif seq_idx is None:
        raise ValueError("seq_idx: return_varlen_states with cu_seqlens alone gives, in mamba_ssm, neither each "
                         "sequence's own last state nor the unbroken scan's (the state carried into the chunk where a "
                         "sequence ends is added unless the sequence starts in that chunk); pass seq_idx (the "
                         "sequences of cu_seqlens) for each sequence's own last state")
    out = ssd_scan(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
                   initial_states=initial_states, seq_idx=seq_idx, return_final_states=return_final_states,
                   dt_limit=dt_limit, cu_seqlens=cu_seqlens, return_varlen_states=return_varlen_states)
    if return_varlen_states:
        return (*out[:-1], out[-1].to(C.dtype))
    return out


@on_input_device
def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                     final_states_out=None, activation=None):
    """causal-conv1d's `causal_conv1d_fn` (causal_conv1d_interface.py) on causal_conv1d: x [B, D, L], weight
    [D, W], bias [D], seq_idx [B, L], initial_states [B, D, W - 1], activation None, "silu" or "swish". Returns y,
    and with return_final_states also the last W - 1 inputs [B, D, W - 1], written into final_states_out where
    given (and that tensor returned; without return_final_states it is left alone, as there). A token whose seq_idx
    is negative is padding, as causal-conv1d >= 1.5.3's: its output is 0 (no bias, no activation), and no other
    token's tap reads it (its id differs)."""
    if not return_final_states:  # as causal-conv1d: final_states_out is then not written, nor checked
        final_states_out = None
    if final_states_out is not None:
        _check_final_states_out(final_states_out, x, weight)
    out = causal_conv1d(x, weight, bias, activation=activation, initial_states=initial_states,
                        return_final_states=return_final_states, seq_idx=seq_idx)
    y, final = out if return_final_states else (out, None)
    if seq_idx is not None:  # checked by causal_conv1d: [B, L] integers
        y = y.masked_fill(seq_idx[:, None, :] < 0, 0)  # keeps y's layout
    if not return_final_states:
        return y
    if final_states_out is None:
        return y, final
    final_states_out.copy_(final)
    return y, final_states_out


@on_input_device
def causal_conv1d_varlen_states(x, cu_seqlens, state_len):
    """causal-conv1d's `causal_conv1d_varlen_states` (causal_conv1d_varlen.py): the conv states of packed
    sequences, to decode each from. x [total, D], cu_seqlens [n + 1] (0, then each sequence's end, non-decreasing),
    state_len ≥ 0 → states [n, D, state_len] in x's dtype, stored as causal-conv1d stores them ([n, state_len, D]
    transposed): sequence i's last state_len tokens, right-aligned, zeros before its first token where it is
    shorter. A gather, no wait for the device (on the CPU the offsets are checked); differentiable (the peer's
    has no backward)."""
    expect_shape("x", x, (None, None))
    expect_shape("cu_seqlens", cu_seqlens, (None,))
    expect_integer(cu_seqlens=cu_seqlens)
    expect_same_device(x=x, cu_seqlens=cu_seqlens)
    state_len = expect_count("state_len", state_len, minimum=0, what="an int >= 0")
    if cu_seqlens.numel() < 1:
        raise ValueError("cu_seqlens: expected [n + 1] offsets (0, then each sequence's end), got none")
    if cu_seqlens.device.type == "cpu":
        cu = cu_seqlens.tolist()
        if cu[0] != 0 or any(b < a for a, b in zip(cu, cu[1:])) or cu[-1] > x.shape[0]:
            raise ValueError(f"cu_seqlens: expected 0, then non-decreasing offsets up to x's {x.shape[0]} tokens, "
                             f"got {cu if len(cu) <= 8 else cu[:4] + ['...'] + cu[-2:]}")
    if x.shape[0] == 0:  # no token to gather: every state zero
        return x.new_zeros(cu_seqlens.numel() - 1, state_len, x.shape[1]).transpose(1, 2)
    ends, starts = cu_seqlens[1:].long(), cu_seqlens[:-1].long()
    at = ends[:, None] - state_len + torch.arange(state_len, device=x.device)  # [n, state_len]: the tokens read
    rows = x[at.clamp(0, x.shape[0] - 1)]  # [n, state_len, D]; clamped: bad offsets on a card are no device assert
    return rows.masked_fill((at < starts[:, None])[..., None], 0).transpose(1, 2)


def _check_final_states_out(out, x, weight) -> None:
    """causal_conv1d_fn's final_states_out, before anything runs: [B, D, W - 1] in x's dtype on x's device, its
    elements apart and writable (where x or weight is itself wrong, causal_conv1d names it instead)."""
    if not (isinstance(x, torch.Tensor) and x.dim() == 3 and isinstance(weight, torch.Tensor) and weight.dim() == 2):
        return
    expect_shape("final_states_out", out, (x.shape[0], x.shape[1], weight.shape[1] - 1))
    if out.dtype != x.dtype:
        raise ValueError(f"final_states_out: expected x's dtype {x.dtype}, got {out.dtype}")
    expect_same_device(x=x, final_states_out=out)
    expect_in_place(final_states_out=out)


@on_input_device
def chunk_rwkv6(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
                cu_seqlens_cpu=None, **kwargs):
    """fla's `chunk_rwkv6` (fla/ops/rwkv6/chunk.py) on wkv6: r, k, w [B, T, H, K] (w the log decay), v
    [B, T, H, V], u [H, K]; returns (o, final state or None), o in r's dtype (fla's: v's). chunk_size, fla's one
    keyword, is checked as fla checks it (a power of 2) and otherwise unused: the kernels pick their own chunks, the
    result is the same function. head_first=False (fla 0.2-0.4's keyword for this layout) is taken and changes
    nothing; head_first=True raises what fla raises, a DeprecationWarning (a ValueError too: `HeadFirstError`)."""
    _fla_keywords(kwargs, "chunk_rwkv6", ("chunk_size",))
    return wkv6(r, k, v, w, u, scale=scale, initial_state=initial_state, output_final_state=output_final_state,
                cu_seqlens=cu_seqlens, cu_seqlens_cpu=cu_seqlens_cpu)


@on_input_device
def fused_recurrent_rwkv6(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, reverse=False,
                          cu_seqlens=None, **kwargs):
    """fla's `fused_recurrent_rwkv6` (fla/ops/rwkv6/fused_recurrent.py) on wkv6: the same function as chunk_rwkv6,
    head_first taken as there (False: nothing changes; True: `HeadFirstError`, fla's DeprecationWarning), any other
    keyword a TypeError. reverse=True runs each sequence's scan from its last token back to its first, as fla's
    REVERSE: the initial state enters at the last token and the final state is the one after the first. It is wkv6
    on the inputs flipped along T (a packed row flips whole, so its sequences come in reverse order, their offsets
    T - cu_seqlens reversed, and the initial and final states reversed with them), its output flipped back: exact,
    and differentiable through the flips."""
    _fla_keywords(kwargs, "fused_recurrent_rwkv6", ())
    if not isinstance(reverse, bool):
        raise ValueError(f"reverse: expected True or False, got {type(reverse).__name__}")
    if not reverse:
        return wkv6(r, k, v, w, u, scale=scale, initial_state=initial_state, output_final_state=output_final_state,
                    cu_seqlens=cu_seqlens)
    flip = [t.flip(1) if _flippable(t, 2) else t for t in (r, k, v, w)]  # anything else: wkv6 names it
    if cu_seqlens is not None:
        expect_shape("r", r, (None, None, None, None))
        packing(None, cu_seqlens, r, runs=False)  # checked as given, before the flip
        cu_seqlens = (cu_seqlens[-1] - cu_seqlens).flip(0)
        if _flippable(initial_state, 1):
            initial_state = initial_state.flip(0)
    o, final = wkv6(*flip, u, scale=scale, initial_state=initial_state, output_final_state=output_final_state,
                    cu_seqlens=cu_seqlens)
    if final is not None and cu_seqlens is not None:
        final = final.flip(0)
    return o.flip(1), final


def _flippable(t, dims: int) -> bool:
    """Whether t is a dense tensor of at least `dims` dims, which reverse flips (wkv6 checks what it then gets)."""
    return isinstance(t, torch.Tensor) and t.dim() >= dims and t.layout == torch.strided


class HeadFirstError(ValueError, DeprecationWarning):
    """head_first=True given to chunk_rwkv6 or fused_recurrent_rwkv6: fla raises DeprecationWarning for it (since
    0.2.1; since 0.5 for any head_first), so code written for fla catches it as that, and ours as a ValueError."""


def _fla_keywords(kwargs: dict, where: str, known: tuple[str, ...]) -> None:
    """fla's extra keywords: head_first=False taken (the [B, T, H, ...] layout, fla 0.2-0.4's keyword for it; fla
    0.5 raises for any head_first, so code written for it passes none), any other head_first refused as fla refuses
    it; chunk_size a power of 2; anything else a TypeError (fla would drop it unread)."""
    if "head_first" in kwargs and kwargs["head_first"] is not False:
        raise HeadFirstError(f"head_first: {where} takes [B, T, H, ...] inputs only (head_first=False), as fla, "
                             f"which removed head_first=True; got {kwargs['head_first']!r}")
    chunk = kwargs.get("chunk_size")
    if chunk is not None and expect_count("chunk_size", chunk, what="a power of 2") & (int(chunk) - 1):
        raise ValueError(f"chunk_size: expected a power of 2, got {chunk!r}")
    unknown = sorted(set(kwargs) - set(known) - {"head_first"})
    if unknown:
        raise TypeError(f"{where}() got an unexpected keyword argument {unknown[0]!r}")
