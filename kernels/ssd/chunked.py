"""Chunked SSD in PyTorch (the CPU path; autograd gives the backward).

Within a chunk the scan is a masked matrix product (C Bᵀ ∘ decay) x, each decay the exp of a difference of the
chunk's cumulative log-decays, taken in float64 (in float32 the sums, thousands under strong decay, lose the
digits of their differences); across chunks the states are
one more: the state entering chunk c is Σ_{j<c} (Π_{j<k<c} carry_k) local_j + (Π_{k<c} carry_k) h0, a
lower-triangular [nc+1, nc+1] matrix of decays (exp of segment sums of the chunks' log-decays, -inf
where a packed sequence ends) times [h0; local]. No loop over time or chunks: torch.compile traces it
once for every length (a Python loop over chunks is unrolled, and recompiled for each chunk count).
It costs nc²·H·P·N multiply-adds, below the chunks' own 2·L·H·P·N while nc < 2·chunk_size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._host import next_pow2
from .naive import DtRule, effective_dt, finish


def ssd_scan_chunked(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, dt_softplus=False,
                     initial_states=None, seq_idx=None, return_final_states=False, dt_limit=None):
    """Same contract as ssd_scan; computes in float32 (float64 for float64 x), returns x's dtype."""
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    f = lambda t: None if t is None else t.to(ct)
    out_dtype = x.dtype
    x, dt, A, B, C, D, z, dt_bias = map(f, (x, dt, A, B, C, D, z, dt_bias))
    batch, L, H, P = x.shape
    G, N = B.shape[2:]
    Q = chunk_size if L >= chunk_size else max(next_pow2(L), 1)  # a short sequence: one chunk its size, rounded
    nc = (L + Q - 1) // Q
    pad = nc * Q - L
    dt = effective_dt(dt, dt_bias, DtRule.of(dt_softplus, dt_limit))
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
    s64 = s if ct == torch.float64 else torch.cumsum(dtc.double() * A.double()[:, None], dim=-1)
    diff = (s64[..., :, None] - s64[..., None, :]).to(ct)  # float64: no cancellation where the sums grow large
    same = seqc[:, :, None, :, None] == seqc[:, :, None, None, :]                      # [b c 1 t u]
    mask = torch.tril(torch.ones(Q, Q, dtype=torch.bool, device=x.device)) & same
    decay = torch.where(mask, torch.exp(torch.where(mask, diff, torch.zeros_like(diff))), torch.zeros_like(diff))
    y = torch.einsum("bchtu,bchu,bcuhp->bcthp", CB * decay, dtc, xc)

    Bh = Bc.repeat_interleave(rep, dim=3)
    Ch = Cc.repeat_interleave(rep, dim=3)
    sT = s[..., -1]
    out_mask = seqc[:, :, None] == seqc[:, :, None, -1:]                               # [b c 1 q]
    wdec = torch.where(out_mask, torch.exp((s64[..., -1:] - s64).to(ct)), torch.zeros_like(s))
    local = torch.einsum("bchu,bcuhp,bcuhn->bchpn", wdec * dtc, xc, Bh)
    keeps = (seqc[..., -1] == seq_prev)[..., None]                                     # [b c 1]
    log_carry = torch.where(keeps, sT, torch.full_like(sT, -torch.inf))                 # [b c h]

    h0 = x.new_zeros(batch, H, P, N) if initial_states is None else f(initial_states)
    sources = torch.cat([h0[:, None], local], 1)                                        # [b c+1 h p n]
    passing = torch.exp(segment_sums(F.pad(log_carry, (0, 0, 1, 0)).transpose(1, 2)))  # [b h c+1 c+1]
    states = torch.einsum("bhcj,bjhpn->bchpn", passing, sources)                       # [b c+1 h p n]
    h_in, h = states[:, :-1], states[:, -1]
    in_mask = seqc[:, :, None] == seq_prev[:, :, None, None]                           # [b c 1 t]
    scale = torch.where(in_mask, torch.exp(s), torch.zeros_like(s))                    # [b c h t]
    y = y + torch.einsum("bcthn,bchpn,bcht->bcthp", Ch, h_in, scale)
    # copies, not views: a view of the padded buffers keeps them alive (and is not contiguous past batch 1)
    y = finish(y.reshape(batch, nc * Q, H, P)[:, :L], x, D, z).to(out_dtype).contiguous()
    if return_final_states:
        fdt = torch.promote_types(out_dtype, torch.float32)
        return y, h.to(fdt, copy=True, memory_format=torch.contiguous_format)
    return y


def segment_sums(a: torch.Tensor) -> torch.Tensor:
    """a [..., T] -> [..., T, T]: entry (i, j) is a[j+1] + ... + a[i] for j <= i (0 on the diagonal), -inf above
    it. Summed from the masked terms themselves, not as a difference of cumulative sums, so -inf terms
    (a state that does not carry) give -inf, never inf - inf."""
    T = a.shape[-1]
    terms = a[..., :, None].expand(*a.shape, T)                                         # [..., i, j] = a[i]
    below = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), -1)
    sums = torch.cumsum(terms.masked_fill(~below, 0), dim=-2)
    return sums.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device)), -torch.inf)
