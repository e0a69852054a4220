"""Chunked PyTorch selective scan: the CPU path, differentiable by autograd.

Inside a chunk of T steps the state is a weighted sum of the inputs with weights
exp(sum of delta*A between two steps); those sums are built by a masked cumulative
sum (never as a difference of two long cumulative sums), so every exponent is <= 0
for A <= 0 and nothing overflows. Chunks are chained through the carried state.
Memory per chunk is [B, D, N, T, T].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _segsum(x: torch.Tensor) -> torch.Tensor:
    """[..., T] -> [..., T, T] with out[t, s] = sum_{s < r <= t} x[r], -inf above the diagonal."""
    T = x.shape[-1]
    strict = torch.ones(T, T, dtype=torch.bool, device=x.device).tril(-1)
    acc = torch.cumsum(x[..., :, None].expand(*x.shape, T).masked_fill(~strict, 0), dim=-2)
    return acc.masked_fill(~strict.logical_or(torch.eye(T, dtype=torch.bool, device=x.device)), float("-inf"))


def _grouped_bc(M: torch.Tensor, dim: int) -> torch.Tensor:
    """B or C as `[B|1, G, N, L|1]` so that channel d uses group d // (D // G)."""
    if M.dim() == 2:
        return M[None, :, :, None]
    return M[:, None] if M.dim() == 3 else M


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           return_last_state=False, initial_state=None, chunk_size=32):
    """Same contract as `archdsl.kernels.selective_scan`; works in float32 (float64 for float64 input)."""
    wd = torch.float64 if u.dtype == torch.float64 else torch.float32
    batch, dim, seqlen = u.shape
    Bg, Cg = _grouped_bc(B.to(wd), dim), _grouped_bc(C.to(wd), dim)
    G, N = Bg.shape[1], A.shape[1]
    H = dim // G
    uf = u.to(wd)
    dt = delta.to(wd)
    if delta_bias is not None:
        dt = dt + delta_bias.to(wd)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    dtu = (dt * uf).view(batch, G, H, seqlen)
    dt4 = dt.view(batch, G, H, seqlen)
    Ag = A.to(wd).view(G, H, N)
    h = uf.new_zeros(batch, G, H, N) if initial_state is None else initial_state.to(wd).view(batch, G, H, N)
    ys = []
    for t0 in range(0, seqlen, chunk_size):
        sl = slice(t0, min(t0 + chunk_size, seqlen))
        x = dt4[..., None, sl] * Ag[..., None]                              # [B, G, H, N, T]
        Bc = Bg[..., sl] if Bg.shape[-1] > 1 else Bg
        Cc = Cg[..., sl] if Cg.shape[-1] > 1 else Cg
        dBu = dtu[..., None, sl] * Bc[:, :, None]                           # [B, G, H, N, T]
        hs = torch.einsum("bghnts,bghns->bghnt", torch.exp(_segsum(x)), dBu)
        hs = hs + torch.exp(torch.cumsum(x, dim=-1)) * h[..., None]
        ys.append((hs * Cc[:, :, None]).sum(3))                             # [B, G, H, T]
        h = hs[..., -1]
    y = torch.cat(ys, dim=-1).reshape(batch, dim, seqlen) if ys else uf.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + uf * D.to(wd)[:, None]
    if z is not None:
        y = y * F.silu(z.to(wd))
    y = y.to(u.dtype)
    return (y, h.reshape(batch, dim, N)) if return_last_state else y
