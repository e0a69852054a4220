"""Mamba-2 SSD as a plain loop over time: the float64 reference the fast paths are tested against.

h_t = exp(dt_t A) h_{t-1} + dt_t x_t ⊗ B_t ;  y_t = C_t · h_t + D x_t ;  y_t *= silu(z_t),
dt_t = clamp(softplus(dt_t + dt_bias), dt_limit) (each part optional: DtRule).
With seq_idx the state is zeroed where seq_idx changes; the initial state belongs to seq_idx 0
(mamba_ssm's convention), so a sequence whose first index is not 0 starts from zeros.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class DtRule(NamedTuple):
    """How dt becomes the scan's dt': dt' = clamp(softplus(dt + dt_bias) (or dt + dt_bias), lo, hi), the
    clamp only when `limit` (mamba_ssm's dt_limit); the gradient is 0 where it clamps, as torch.clamp's."""
    softplus: bool = False
    limit: bool = False
    lo: float = 0.0
    hi: float = float("inf")

    @classmethod
    def of(cls, dt_softplus, dt_limit) -> "DtRule":
        """From ssd_scan's arguments: dt_limit None (no clamp) or a checked (lo, hi) pair."""
        if dt_limit is None:
            return cls(bool(dt_softplus))
        return cls(bool(dt_softplus), True, float(dt_limit[0]), float(dt_limit[1]))


def effective_dt(dt: torch.Tensor, dt_bias: torch.Tensor | None, rule: DtRule) -> torch.Tensor:
    if dt_bias is not None:
        dt = dt + dt_bias
    dt = F.softplus(dt) if rule.softplus else dt
    return dt.clamp(rule.lo, rule.hi) if rule.limit else dt


def heads_of_groups(t: torch.Tensor, nheads: int) -> torch.Tensor:
    """[..., G, N] -> [..., H, N]: head h reads group h // (H // G)."""
    return t.repeat_interleave(nheads // t.shape[-2], dim=-2)


def finish(y, x, D, z):
    """y + D x, then the silu(z) gate; D is [H] or [H, P]."""
    if D is not None:
        y = y + (D[:, None] if D.dim() == 1 else D) * x
    if z is not None:
        y = y * F.silu(z)
    return y


def ssd_scan_naive(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
                   initial_states=None, seq_idx=None, return_final_states=False, dt_limit=None, dtype=torch.float64):
    """x [B, L, H, P], dt [B, L, H], A [H], B, C [B, L, G, N] -> y [B, L, H, P] (, final [B, H, P, N]).
    ssd_scan's signature (chunk_size is taken and not used: one token at a time), computed in `dtype`."""
    f = lambda t: None if t is None else t.to(dtype)
    x, dt, A, B, C, D, z, dt_bias = map(f, (x, dt, A, B, C, D, z, dt_bias))
    batch, L, H, P = x.shape
    dt = effective_dt(dt, dt_bias, DtRule.of(dt_softplus, dt_limit))
    Bh, Ch = heads_of_groups(B, H), heads_of_groups(C, H)
    h = x.new_zeros(batch, H, P, B.shape[-1]) if initial_states is None else f(initial_states).clone()
    prev = torch.zeros(batch, dtype=torch.long, device=x.device)
    ys = []
    for t in range(L):
        decay = torch.exp(dt[:, t] * A)
        if seq_idx is not None:
            decay = decay * (seq_idx[:, t].long() == prev).to(dtype)[:, None]
            prev = seq_idx[:, t].long()
        h = h * decay[..., None, None] + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", h, Ch[:, t]))
    y = finish(torch.stack(ys, 1) if ys else x[:, :0].clone(), x, D, z)  # L = 0: empty, as the op's
    return (y, h) if return_final_states else y


def ssd_step_naive(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=None):
    """One token: state [B, H, P, N], x [B, H, P], dt [B, H], B, C [B, G, N] -> (y [B, H, P], new state)."""
    H = x.shape[1]
    dt = effective_dt(dt, dt_bias, DtRule.of(dt_softplus, dt_limit))
    Bh, Ch = heads_of_groups(B, H), heads_of_groups(C, H)
    decay = torch.exp(dt * A)[..., None, None]
    state = state * decay + (dt[..., None] * x)[..., None] * Bh[:, :, None, :]
    y = finish(torch.einsum("bhpn,bhn->bhp", state, Ch), x, D, z)
    return y, state
