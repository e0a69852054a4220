"""Chunked SSD in PyTorch (the CPU path; autograd gives the backward).

Within a chunk the scan is a masked matrix product (C Bᵀ ∘ decay) x; across chunks one
[B, H, P, N] state is carried by a short Python loop over chunks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .naive import effective_dt, finish


def ssd_scan_chunked(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
                     initial_states=None, seq_idx=None, return_final_states=False):
    """Same contract as ssd_scan; computes in float32 (float64 for float64 x), returns x's dtype."""
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    f = lambda t: None if t is None else t.to(ct)
    out_dtype = x.dtype
    x, dt, A, B, C, D, z, dt_bias = map(f, (x, dt, A, B, C, D, z, dt_bias))
    batch, L, H, P = x.shape
    G, N = B.shape[2:]
    Q = chunk_size
    pad = (-L) % Q
    nc = (L + pad) // Q
    dt = effective_dt(dt, dt_bias, dt_softplus)
    seq = torch.zeros(batch, L, dtype=torch.long, device=x.device) if seq_idx is None else seq_idx.long()
    # Padded steps have dt = 0: decay 1 and no input, so the final state is untouched.
    xc = F.pad(x, (0, 0, 0, 0, 0, pad)).view(batch, nc, Q, H, P)
    dtc = F.pad(dt, (0, 0, 0, pad)).view(batch, nc, Q, H).transpose(2, 3)           # [b c h q]
    Bc = F.pad(B, (0, 0, 0, 0, 0, pad)).view(batch, nc, Q, G, N)
    Cc = F.pad(C, (0, 0, 0, 0, 0, pad)).view(batch, nc, Q, G, N)
    seqc = torch.cat([seq, seq[:, -1:].expand(batch, pad)], 1).view(batch, nc, Q)
    s = torch.cumsum(dtc * A[:, None], dim=-1)                                          # [b c h q]
    seq_prev = torch.cat([seq.new_zeros(batch, 1), seqc[:, :-1, -1]], dim=1)            # [b c]

    rep = H // G
    CB = torch.einsum("bctgn,bcugn->bcgtu", Cc, Bc).repeat_interleave(rep, dim=2)      # [b c h t u]
    diff = s[..., :, None] - s[..., None, :]
    same = (seqc[..., :, None] == seqc[..., None, :])[:, :, None]
    mask = torch.tril(torch.ones(Q, Q, dtype=torch.bool, device=x.device)) & same
    decay = torch.where(mask, torch.exp(torch.where(mask, diff, torch.zeros_like(diff))), torch.zeros_like(diff))
    y = torch.einsum("bchtu,bchu,bcuhp->bcthp", CB * decay, dtc, xc)

    Bh = Bc.repeat_interleave(rep, dim=3)
    Ch = Cc.repeat_interleave(rep, dim=3)
    sT = s[..., -1]
    out_mask = (seqc == seqc[..., -1:])[:, :, None]
    wdec = torch.where(out_mask, torch.exp(sT[..., None] - s), torch.zeros_like(s))
    local = torch.einsum("bchu,bcuhp,bcuhn->bchpn", wdec * dtc, xc, Bh)
    carry = (seqc[..., -1] == seq_prev).to(ct)[..., None] * torch.exp(sT)              # [b c h]

    h = x.new_zeros(batch, H, P, N) if initial_states is None else f(initial_states)
    h_in = []
    for c in range(nc):
        h_in.append(h)
        h = h * carry[:, c, :, None, None] + local[:, c]
    h_in = torch.stack(h_in, 1)                                                         # [b c h p n]
    in_mask = (seqc == seq_prev[..., None])[:, :, None]
    scale = torch.where(in_mask, torch.exp(s), torch.zeros_like(s))                    # [b c h t]
    y = y + torch.einsum("bcthn,bchpn,bcht->bcthp", Ch, h_in, scale)
    y = finish(y.reshape(batch, nc * Q, H, P)[:, :L], x, D, z).to(out_dtype)
    if return_final_states:
        fdt = torch.promote_types(out_dtype, torch.float32)
        return y, h.to(fdt)
    return y
