"""RWKV-6's WKV in chunks of PyTorch ops: the CPU path, differentiable by autograd.

Within a chunk of C tokens the decay between token j and a later token i is
exp(E_i - B_j), with B the inclusive and E the exclusive cumulative log-decay from the
chunk start. We never split that into exp(E_i) * exp(-B_j): exp(-B_j) overflows as
soon as a chunk's decay passes e^-88. Instead every exponent we take is ≤ 0 — the
pairwise (i, j) differences inside a chunk (masked to j < i before the exp), E_i
for reading the carried state, and B_last - B_j for writing it.
"""
from __future__ import annotations

import torch

CHUNK = 16
_SEGMENT_ELEMENTS = 1 << 26  # bounds the [.., C, C, K] pairwise-decay tensor


def wkv6_chunked(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, chunk=CHUNK):
    """Same contract as `wkv6_naive`; float64 inputs compute in float64."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    ct = torch.float64 if r.dtype == torch.float64 else torch.float32
    scale = K ** -0.5 if scale is None else scale
    S = torch.zeros(B, H, K, V, dtype=ct, device=r.device)
    if initial_state is not None:
        S = S + initial_state.to(ct)
    seg = max(chunk, (_SEGMENT_ELEMENTS // max(1, B * H * chunk * K)) // chunk * chunk)
    outs = []
    for t0 in range(0, T, seg):
        sl = slice(t0, min(T, t0 + seg))
        o, S = _segment(*(x[:, sl].to(ct) for x in (r, k, v, w)), u.to(ct), S, chunk)
        outs.append(o)
    o = torch.cat(outs, dim=1) if outs else torch.empty(B, 0, H, V, dtype=ct, device=r.device)
    return (scale * o).to(r.dtype), (S if output_final_state else None)


def _to_chunks(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """[B, T, H, D] -> [B, H, N, C, D], zero-padded; zero w/k/r padding is inert."""
    B, T, H, D = x.shape
    pad = (-T) % chunk
    x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad))
    return x.reshape(B, (T + pad) // chunk, chunk, H, D).permute(0, 3, 1, 2, 4)


def _segment(r, k, v, w, u, S, chunk):
    B, T, H, _ = r.shape
    r, k, v, w = (_to_chunks(x, chunk) for x in (r, k, v, w))
    Bc = w.cumsum(-2)
    E = Bc - w
    last = Bc[..., -1:, :]
    strict = torch.ones(chunk, chunk, dtype=torch.bool, device=r.device).tril(-1)
    diff = (E[..., :, None, :] - Bc[..., None, :, :]).masked_fill(~strict[..., None], float("-inf"))
    A = torch.einsum("bhnik,bhnjk,bhnijk->bhnij", r, k, diff.exp())
    bonus = (r * k * u[None, :, None, None, :]).sum(-1)
    o = A @ v + bonus[..., None] * v
    r_in = r * E.exp()
    dS = (k * (last - Bc).exp()).transpose(-1, -2) @ v
    decay = last.squeeze(-2).exp()[..., None]
    o_inter = []
    for n in range(r.shape[2]):
        o_inter.append(r_in[:, :, n] @ S)
        S = decay[:, :, n] * S + dS[:, :, n]
    o = o + torch.stack(o_inter, dim=2)
    o = o.permute(0, 2, 3, 1, 4).flatten(1, 2)[:, :T]
    return o, S
