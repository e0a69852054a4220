"""The final state of every packed sequence of an SSD scan (mamba_ssm's `return_varlen_states`).

A sequence k of a packed row, its tokens s..e, ends in the state

    h_k = Σ_{j=s..e} exp(A·(c_e - c_j)) dt'_j x_j ⊗ B_j  (+ exp(A·c_e) h0 for a row's first sequence when it is
          seq_idx 0's, as the scan reads initial_states),   c_t = Σ_{i<=t} dt'_i (the row's running sum)

computed in torch after the scan, not in its kernels: the running sums in float64 (the differences c_e - c_j of
long rows keep their digits), then the weighted x of each sequence laid in a row of its own ([sequences, G,
H/G·P, longest], zeros after it) and one batched product with B for each sequence and group (the heads that
share B together). Costs a few extra passes over x, B and dt, and sequences × longest × (H·P + G·N) values of
memory.
"""
from __future__ import annotations

import torch

from .._host import seq_starts
from .naive import DtRule, effective_dt


def varlen_states(x, dt, A, B, seq_idx, dt_bias=None, rule: DtRule = DtRule(), initial_states=None):
    """x [Bt, L, H, P], dt [Bt, L, H], A [H], B [Bt, L, G, N], seq_idx [Bt, L] integers, dt_bias [H],
    initial_states [Bt, H, P, N] → [sequences, H, P, N]: each sequence's last state, the sequences numbered row
    after row (each row's first token starts one). float32, float64 for float64 x."""
    wd = torch.float64 if x.dtype == torch.float64 else torch.float32
    batch, L, H, P = x.shape
    restart = seq_starts(seq_idx)                                    # [Bt, L]: the state restarts here
    first = torch.zeros_like(restart)
    first[:, 0] = True
    begins = (restart | first).view(-1)                              # a sequence's first token, row after row
    seq = begins.cumsum(0) - 1                                       # [Bt·L]
    t = torch.arange(batch * L, device=x.device)
    pos = t - torch.where(begins, t, 0).cummax(0).values             # each token's place in its sequence
    n, longest = int(begins.sum()), int(pos.max()) + 1
    ends = torch.cat([begins[1:], begins.new_ones(1)]).nonzero().view(-1)  # [n] each sequence's last token

    dtp = effective_dt(dt.to(wd), None if dt_bias is None else dt_bias.to(wd), rule)   # [Bt, L, H]
    # A·c_t, float64, summed along the innermost dimension (torch's scan along an outer one runs a thread a column)
    c = (dtp.double() * A.double()).mT.cumsum(-1).mT.reshape(batch * L, H)
    decay = torch.exp(c[ends][seq] - c).to(wd)                       # [Bt·L, H]: exp(A·(c_e - c_j)) ≤ 1
    xw = x.reshape(batch * L, H, P).to(wd) * (decay * dtp.reshape(batch * L, H))[..., None]
    G, N = B.shape[-2:]                                              # head h reads group h // (H // G)
    at = (seq, pos)
    X = xw.new_zeros(n, G, H // G * P, longest)                      # each sequence's tokens in a row, per group
    X.permute(0, 3, 1, 2).index_put_(at, xw.view(batch * L, G, H // G * P))
    Bs = xw.new_zeros(n, G, longest, N)
    Bs.permute(0, 2, 1, 3).index_put_(at, B.reshape(batch * L, G, N).to(wd))
    h = (X @ Bs).view(n, H, P, N)                                    # one product per sequence and group
    if initial_states is not None:  # a row's first sequence continues initial_states unless it restarts
        counts = begins.view(batch, L).sum(1)
        row_first = counts.cumsum(0) - counts                        # [Bt]: each row's first sequence
        carry = (~restart[:, 0]).to(wd)[:, None, None, None]         # seq_idx 0 at the row's first token
        h0 = initial_states.to(wd) * torch.exp(c[ends[row_first]]).to(wd)[:, :, None, None] * carry
        h = h.index_add(0, row_first, h0)
    return h
