"""RWKV-4's WKV on the CPU: chunks of tokens in closed form, or a time loop, vectorised over batch and channels.

Both keep transformers' state (num, den, max): the sums of e^logit · v and e^logit, each taken relative to the
largest logit so far, so exp never overflows. The state after any prefix is the same in both forms: the running
max max(m + w', k_t) is the largest logit of the whole history.

Chunks (`chunk` > 1). Inside a chunk of T tokens (t, s counted from its start, w' = -exp(w) ≤ 0):

    wkv_t = (e^{m + t w'} n + Σ_{s<t} e^{(t-1-s) w' + k_s} v_s + e^{u + k_t} v_t) / (the same with d, 1, 1)

all logits of a row taken relative to the row's largest ([B, T, T, C] pairwise logits), and the state passed
on is the same sums at t = T without the bonus. Every exponent taken is ≤ 0. That is T times the exponentials
of the loop, in a few large ops instead of a dozen small ones a token.

Time loop (`chunk` 1): transformers' `rwkv_linear_attention_cpu`, formula for formula (`wkv4_step_naive`).

The default follows what ran faster on 2 CPU cores (float32, best of 3, s; forward / backward):
- autograd recording, B1 T1024 C768: loop 0.344 / 1.092, chunks of 8 0.110 / 0.271, of 16 0.122 / 0.141;
- autograd recording, B4 T512 C2560: loop 0.262 / 3.838, chunks of 8 0.351 / 0.758, of 16 0.644 / 0.685;
- no autograd: B1 T1024 C768 loop 0.094, chunks of 16 0.106; B4 T512 C2560 0.149 against 0.323 (8);
  B1 T256 C64 0.037 against 0.009 (16).
Chunks keep T times the loop's activations a token for the backward (2.4× the loop's at 8).
"""
from __future__ import annotations

import torch

from .._dispatch import needs_grad
from .._host import seq_starts
from .naive import _initial, wkv4_step_naive

CHUNK = 16  # tokens a chunk: with autograd recording, or without it for at most SMALL batch × channels
CHUNK_WIDE = 8  # with autograd recording past WIDE batch × channels
SMALL, WIDE = 1024, 4096


def default_chunk(k, *tensors) -> int:
    """The form that ran faster for k `[B, T, C]` (module docstring): a chunk size, 1 for the time loop."""
    bc = k.shape[0] * k.shape[2]
    if needs_grad(k, *tensors):
        return CHUNK if bc <= WIDE else CHUNK_WIDE
    return CHUNK if bc <= SMALL else 1


def wkv4_torch(w, u, k, v, state=None, chunk=None, seq_idx=None):
    """w, u `[C]`, k, v `[B, T, C]`, state (num, den, max) each `[B, C]` or None; chunk: tokens a chunk (1: the
    time loop; None: `default_chunk`); seq_idx `[B, T]` integers or None: the state restarts fresh where it
    changes (and at the first token when it is not 0: the incoming state belongs to seq_idx 0).

    Returns (wkv `[B, T, C]` in k's dtype, (num, den, max) `[B, C]` float32/float64).
    """
    B, T, C = k.shape
    ct = torch.float64 if k.dtype == torch.float64 else torch.float32
    st = _initial(state, B, C, ct, k.device)
    chunk = chunk or default_chunk(k, w, u, v, *(state or ()))
    if T == 0:
        return k.new_empty(B, 0, C), st
    restart = None if seq_idx is None else seq_starts(seq_idx)  # [B, T] bool
    if chunk == 1:
        out, fresh = [], _initial(None, B, C, ct, k.device)
        for t in range(T):
            if restart is not None:
                st = tuple(torch.where(restart[:, t, None], f, s) for f, s in zip(fresh, st))
            o, st = wkv4_step_naive(w, u, k[:, t], v[:, t], st)
            out.append(o)
        return torch.stack(out, dim=1), st
    wd = (-torch.exp(w.to(ct))).clamp_min(-torch.finfo(ct).max)  # finite: 0 · w' must be 0, not NaN
    u = u.to(ct)
    j = torch.arange(chunk, device=k.device, dtype=ct)
    gap = j[:, None] - 1 - j[None, :]  # t - 1 - s   [T, T]
    out = []
    for t0 in range(0, T, chunk):
        # seg [B, t]: the restarts in the chunk up to each token (tokens of one sequence share it)
        seg = None if restart is None else restart[:, t0:t0 + chunk].long().cumsum(1)
        o, st = _chunk(wd, u, k[:, t0:t0 + chunk].to(ct), v[:, t0:t0 + chunk].to(ct), st, gap, j, seg)
        out.append(o)
    return torch.cat(out, dim=1).to(k.dtype), st


def _chunk(wd, u, k, v, state, gap, j, seg=None):
    """One chunk: k, v `[B, T, C]`, seg `[B, T]` or None → (wkv `[B, T, C]`, the state after it). Where seg is
    given, a token sees only the tokens of its own sequence, and the incoming state only while no restart came
    (seg 0)."""
    n, d, m = state
    T = k.shape[1]
    gap, j = gap[:T, :T], j[:T]
    hidden = (gap < 0)[None]  # [1 or B, t, s]: pairs a token does not see
    from_state = m[:, None] + j[None, :, None] * wd  # [B, T, C]
    if seg is not None:
        hidden = hidden | (seg[:, :, None] != seg[:, None, :])
        from_state = from_state.masked_fill((seg > 0)[..., None], float("-inf"))
    pair = (gap[None, :, :, None] * wd + k[:, None]).masked_fill(hidden[..., None], float("-inf"))
    bonus = u + k
    # the row's largest logit: the output does not depend on it, so no gradient goes through it
    top = torch.maximum(torch.maximum(from_state, bonus), pair.amax(2)).detach()
    e_pair = torch.exp(pair - top[:, :, None])  # [B, t, s, C]
    e_state, e_bonus = torch.exp(from_state - top), torch.exp(bonus - top)
    num = (e_pair * v[:, None]).sum(2) + e_state * n[:, None] + e_bonus * v
    den = e_pair.sum(2) + e_state * d[:, None] + e_bonus
    # the state after the chunk: logits m + T w' (the state) and (T-1-s) w' + k_s (its tokens)
    end_state = m + T * wd
    end_tokens = (T - 1 - j)[None, :, None] * wd + k
    if seg is not None:  # the last token's sequence alone
        end_state = end_state.masked_fill((seg[:, -1] > 0)[:, None], float("-inf"))
        end_tokens = end_tokens.masked_fill((seg != seg[:, -1:])[..., None], float("-inf"))
    m2 = torch.maximum(end_state, end_tokens.amax(1))
    e_s, e_t = torch.exp(end_state - m2), torch.exp(end_tokens - m2[:, None])
    return num / den, (e_s * n + (e_t * v).sum(1), e_s * d + e_t.sum(1), m2)
