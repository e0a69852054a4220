"""Sequential reference for the Mamba-1 selective scan and its decode step.

Plain loops over time in float64 (or float32 for lower-precision inputs); the other
implementations are tested against these.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._dispatch import needs_grad
from .._host import seq_starts


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def expand_bc(M: torch.Tensor, batch: int, dim: int, seqlen: int) -> torch.Tensor:
    """B or C as `[B, D, N, L]`: from `[D, N]` (time-invariant), `[B, N, L]` or `[B, G, N, L]`."""
    if M.dim() == 2:
        return M[None, :, :, None].expand(batch, dim, M.shape[1], seqlen)
    if M.dim() == 3:
        M = M[:, None]
    return M.repeat_interleave(dim // M.shape[1], dim=1)


def selective_scan_naive(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False, initial_state=None, seq_idx=None):
    """Same contract as `archdsl.kernels.selective_scan`; one time step per loop iteration."""
    wd, dtype_in = _work_dtype(u), u.dtype
    batch, dim, seqlen = u.shape
    u, delta, A = u.to(wd), delta.to(wd), A.to(wd)
    if delta_bias is not None:
        delta = delta + delta_bias.to(wd)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    Bf = expand_bc(B.to(wd), batch, dim, seqlen)
    Cf = expand_bc(C.to(wd), batch, dim, seqlen)
    h = u.new_zeros(batch, dim, A.shape[1]) if initial_state is None else initial_state.to(wd).clone()
    keep = None if seq_idx is None else ~seq_starts(seq_idx)  # [B, L]: False where the state restarts
    ys = []
    for t in range(seqlen):
        decay = torch.exp(delta[:, :, t, None] * A)
        if keep is not None:
            decay = torch.where(keep[:, t, None, None], decay, 0.0)
        h = decay * h + (delta[:, :, t] * u[:, :, t])[..., None] * Bf[..., t]
        ys.append((h * Cf[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + u * D.to(wd)[:, None]
    if z is not None:
        y = y * F.silu(z.to(wd))
    y = y.to(dtype_in)
    return (y, h) if return_last_state else y


def selective_state_update_naive(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One decode step: `state [B, D, N]` updated in place, returns y `[B, D]` in x's dtype; computed in float64
    where the state or x is float64."""
    wd = torch.promote_types(_work_dtype(state), _work_dtype(x))
    dim = x.shape[1]
    dt = dt.to(wd)
    if dt_bias is not None:
        dt = dt + dt_bias.to(wd)
    if dt_softplus:
        dt = F.softplus(dt)
    # one group ([B, N] or [B, 1, N]) broadcasts over the channels: no [B, D, N] copy of B and C
    Bf, Cf = (M.to(wd) if M.dim() == 2 or M.shape[1] == 1 else M.to(wd).repeat_interleave(dim // M.shape[1], dim=1)
              for M in (B, C))
    if Bf.dim() == 2:
        Bf, Cf = Bf[:, None], Cf[:, None]
    # a copy of the state where autograd records: the product keeps it for the backward, and it is written next
    s = state.to(wd, copy=needs_grad(state, x, dt, A, B, C, D, z, dt_bias))
    h = torch.exp(dt[..., None] * A.to(wd)) * s + (dt * x.to(wd))[..., None] * Bf
    state.copy_(h)
    y = (h * Cf).sum(-1)
    if D is not None:
        y = y + x.to(wd) * D.to(wd)
    if z is not None:
        y = y * F.silu(z.to(wd))
    return y.to(x.dtype)
