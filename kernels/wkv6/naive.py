"""Sequential reference for RWKV-6's WKV: a plain loop over time, float64-capable.

    o_t = scale * r_t · (S_{t-1} + (u ⊙ k_t) ⊗ v_t)
    S_t = diag(exp(w_t)) S_{t-1} + k_t ⊗ v_t

With seq_idx S_{t-1} is zero wherever seq_idx changes (packed sequences); the initial state belongs to
seq_idx 0.
"""
from __future__ import annotations

import torch


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def wkv6_naive(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, seq_idx=None):
    """r, k, w `[B, T, H, K]`, v `[B, T, H, V]`, u `[H, K]`, initial_state `[B, H, K, V]`, seq_idx `[B, T]`
    integers (any: read as given).

    Returns (o `[B, T, H, V]` in r's dtype, final state `[B, H, K, V]` (float32 or float64) or None).
    """
    B, T, H, K = r.shape
    V = v.shape[-1]
    ct = _compute_dtype(r)
    scale = K ** -0.5 if scale is None else scale
    S = torch.zeros(B, H, K, V, dtype=ct, device=r.device)
    if initial_state is not None:
        S = S + initial_state.to(ct)
    o = torch.empty(B, T, H, V, dtype=ct, device=r.device)
    prev = torch.zeros(B, dtype=torch.long, device=r.device)
    for t in range(T):
        if seq_idx is not None:
            S = S * (seq_idx[:, t].long() == prev).to(ct)[:, None, None, None]
            prev = seq_idx[:, t].long()
        o[:, t] = wkv6_step_naive(S, r[:, t], k[:, t], v[:, t], w[:, t], u, scale)
    return o.to(r.dtype), (S if output_final_state else None)


def wkv6_step_naive(state, r, k, v, w, u, scale=None):
    """One token: state `[B, H, K, V]` updated in place; r, k, w `[B, H, K]`, v `[B, H, V]`.

    Returns o `[B, H, V]` in r's dtype. Computed in float32 at least (float64 where state or r is), whatever the
    state's storage dtype (a 16-bit state is read and written in it, as the scan's final state).
    """
    out = r.dtype
    ct = torch.promote_types(torch.promote_types(state.dtype, r.dtype), torch.float32)
    K = r.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    r, k, v, w, u = (t.to(ct) for t in (r, k, v, w, u))
    s = state.to(ct)  # state itself where it is in ct already
    kv = k[..., :, None] * v[..., None, :]
    o = scale * torch.einsum("bhk,bhkv->bhv", r, s + u[None, :, :, None] * kv)
    if s is state:  # in place, as autograd (the naive scan's gradients go through here) allows
        state.mul_(torch.exp(w)[..., None]).add_(kv)
    else:
        state.copy_(s * torch.exp(w)[..., None] + kv)
    return o.to(out)
