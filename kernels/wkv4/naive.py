"""Reference for RWKV-4's WKV: the definition as a sum over the whole history, float64-capable.

    wkv_t = (Σ_{i<t} e^{(t-1-i)w' + k_i} v_i + e^{u+k_t} v_t + e^{m0 + t w'} n0)
          / (Σ_{i<t} e^{(t-1-i)w' + k_i}     + e^{u+k_t}     + e^{m0 + t w'} d0),   w' = -exp(w)

with (n0, d0, m0) the incoming state. O(T²) and independent of the recurrence the fast
paths use, which is the point of a reference. Every weight is taken relative to the
row's largest exponent, so nothing overflows.
"""
from __future__ import annotations

import torch

from .._host import seq_starts


def wkv4_naive(w, u, k, v, state=None, seq_idx=None):
    """w, u `[C]`, k, v `[B, T, C]`, state (num, den, max) each `[B, C]` or None, seq_idx `[B, T]` integers or None
    (packed sequences: a token's sums run over its own sequence's tokens only; the incoming state belongs to
    seq_idx 0, the state returned is the last sequence's).

    Returns (wkv `[B, T, C]` in k's dtype, (num, den, max) `[B, C]`).
    """
    B, T, C = k.shape
    out_dtype = k.dtype  # k is cast to ct below
    ct = torch.float64 if k.dtype == torch.float64 else torch.float32
    wd = (-torch.exp(w.to(ct))).clamp_min(-torch.finfo(ct).max)  # finite: 0 · w' must be 0, not NaN
    u, k, v = u.to(ct), k.to(ct), v.to(ct)
    n0, d0, m0 = _initial(state, B, C, ct, k.device)
    out = torch.empty(B, T, C, dtype=ct, device=k.device)
    # start [B, T]: the first token of each token's sequence; -1 where the incoming state belongs to it too
    start = torch.full((B, T), -1, dtype=torch.long, device=k.device)
    if seq_idx is not None:
        pos = torch.arange(T, device=k.device).expand(B, T)
        start = torch.where(seq_starts(seq_idx.to(k.device)), pos, -1).cummax(1).values
    for t in range(T + 1):
        age = torch.arange(t - 1, -1, -1, device=k.device, dtype=ct)  # t-1-i for i < t
        first = start[:, min(t, T - 1)] if T else start.new_full((B,), -1)  # [B]: the final state is T-1's
        own = torch.arange(t, device=k.device)[None, :] >= first[:, None]  # [B, t]: history of t's sequence
        logits = [(m0[:, None] + t * wd).masked_fill((first >= 0)[:, None, None], float("-inf")),
                  (age[:, None] * wd + k[:, :t]).masked_fill(~own[..., None], float("-inf"))]
        # den 0 (a fresh state): n0 / tiny = 0, weighted by d0 = 0 (1e-300 is 0 in float32: 0/0, NaN everywhere)
        values = [n0[:, None] / d0.clamp_min(torch.finfo(ct).tiny)[:, None], v[:, :t]]
        weights = [d0[:, None], torch.ones_like(k[:, :t])]
        if t < T:
            logits.append((u + k[:, t])[:, None])
            values.append(v[:, t:t + 1])
            weights.append(torch.ones_like(k[:, :1]))
        lg, vals, wts = (torch.cat(x, dim=1) for x in (logits, values, weights))
        top = lg.max(dim=1, keepdim=True).values
        e = torch.exp(lg - top) * wts
        if t < T:
            out[:, t] = (e * vals).sum(1) / e.sum(1)
        else:  # the state after the last token: no bonus term
            den = e.sum(1)
            state_out = ((e * vals).sum(1), den, top.squeeze(1))
    return out.to(out_dtype), state_out


def wkv4_step_naive(w, u, k, v, state):
    """One token: k, v `[B, C]`; returns (wkv `[B, C]` in k's dtype, new state), HF's formulas. Computed in float32
    at least (float64 where k or the state is), whatever the state's storage dtype, as the scan computes it; the
    new state in that dtype (the scan's)."""
    ct = torch.promote_types(torch.float32, k.dtype)
    for s in state:
        ct = torch.promote_types(ct, s.dtype)
    num, den, mx = (s.to(ct) for s in state)
    wd = -torch.exp(w.to(ct))
    kk, vv = k.to(ct), v.to(ct)
    top = torch.maximum(mx, u + kk)
    e1, e2 = torch.exp(mx - top), torch.exp(u + kk - top)
    out = (e1 * num + e2 * vv) / (e1 * den + e2)
    top = torch.maximum(mx + wd, kk)
    e1, e2 = torch.exp(mx + wd - top), torch.exp(kk - top)
    return out.to(k.dtype), (e1 * num + e2 * vv, e1 * den + e2, top)


def _initial(state, B, C, ct, device):
    if state is None:
        z = torch.zeros(B, C, dtype=ct, device=device)
        return z, z, z - 1e38
    return tuple(s.to(ct) for s in state)
