"""The final state of every packed sequence of an SSD scan (mamba_ssm's `return_varlen_states`).

A sequence k of a packed row, its tokens s..e, ends in the state

    h_k = Σ_{j=s..e} exp(A·(c_e - c_j)) dt'_j x_j ⊗ B_j  (+ exp(A·c_e) h0 for a row's first sequence when it is
          seq_idx 0's, as the scan reads initial_states),   c_t = Σ_{i<=t} dt'_i (the row's running sum)

computed after the scan, from x, dt and B: here in torch (the CPU path, and the differentiable twin of
triton_varlen.py's kernels, which give way to it where an input needs a gradient):

1. the running sums A·c in float64 (the differences c_e - c_j of long rows keep their digits) and the weighted x;
2. each sequence cut into chunks of Q tokens, its last chunk padded with zeros, x and B laid chunk after chunk
   ([chunks·Q, H·P] and [chunks·Q, G·N], rows copied whole);
3. one product a chunk and group, X^T B, then the chunks of each sequence summed.

Q is the power of two that moves the fewest bytes: the padding (under Q a sequence) against the chunks' states
(H·P·N each). Costs a few passes over x, B and dt.
"""
from __future__ import annotations

import torch

from .._host import seq_starts
from .naive import DtRule, effective_dt


def beginnings(seq_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(restart [Bt, L] bool: the state restarts here (seq_starts), begins [T] bool: a sequence's first token,
    row after row, each row's first token among them)."""
    restart = seq_starts(seq_idx)
    begins = restart.clone()
    begins[:, 0] = True
    return restart, begins.view(-1)


def chunk_size(lengths: torch.Tensor, N: int) -> int:
    """lengths [sequences] (CPU) → the Q in 16..1024 that minimises the bytes moved a head channel: three passes
    over the padded tokens (zeros, copy, product) and two over the chunks' N-wide states."""
    def cost(q):
        chunks = int(((lengths + q - 1) // q).sum())
        return 3 * chunks * q + 2 * chunks * N
    return min((16 << i for i in range(7)), key=cost)


def varlen_states(x, dt, A, B, seq_idx, dt_bias=None, rule: DtRule = DtRule(), initial_states=None,
                  chunk: int | None = None):
    """x [Bt, L, H, P], dt [Bt, L, H], A [H], B [Bt, L, G, N], seq_idx [Bt, L] integers, dt_bias [H],
    initial_states [Bt, H, P, N] → [sequences, H, P, N]: each sequence's last state, the sequences numbered row
    after row (each row's first token starts one). float32, float64 for float64 x. chunk: Q, chosen by
    `chunk_size` when None."""
    wd = torch.float64 if x.dtype == torch.float64 else torch.float32
    batch, L, H, P = x.shape
    G, N = B.shape[-2:]                                              # head h reads group h // (H // G)
    T = batch * L
    restart, begins = beginnings(seq_idx)
    starts = begins.nonzero().view(-1)                               # [n]
    n = starts.numel()
    lengths = torch.diff(starts, append=starts.new_full((1,), T))
    seq = begins.cumsum(0) - 1                                       # [T] each token's sequence
    pos = torch.arange(T, device=x.device) - starts[seq]             # and its place in it
    ends = starts + lengths - 1                                      # [n] each sequence's last token

    # 1. A·c_t, float64, summed along the innermost dimension (torch's scan along an outer one runs a thread a
    # column); the weight of x_j in its sequence's last state. Gathers by index_select: their backward adds
    # with atomics, where indexing's sorts first.
    dtp = effective_dt(dt.to(wd), None if dt_bias is None else dt_bias.to(wd), rule).view(T, H)
    c = (dtp.double() * A.double()).view(batch, L, H).mT.cumsum(-1).mT.reshape(T, H)
    decay = torch.exp(c.index_select(0, ends[seq]) - c).to(wd)      # [T, H]: exp(A·(c_e - c_j)) ≤ 1
    xw = x.reshape(T, H, P) * (decay * dtp)[..., None]               # [T, H, P] in wd

    # 2. chunks of Q tokens, sequence after sequence, rows copied whole
    host = lengths.cpu()                                             # the second and last wait for the device
    Q = chunk or chunk_size(host, N)
    chunks = int(((host + Q - 1) // Q).sum())
    per_seq = (lengths + Q - 1) // Q                                 # [n] chunks a sequence
    row = (per_seq.cumsum(0) - per_seq)[seq] * Q + pos               # [T] each token's padded place
    X = xw.new_zeros(chunks * Q, H * P).index_copy_(0, row, xw.view(T, H * P))
    Bs = xw.new_zeros(chunks * Q, G * N).index_copy_(0, row, B.reshape(T, G * N).to(wd))

    # 3. each chunk's share, X^T B [chunks, G, H/G·P, N], summed over each sequence's chunks
    S = torch.einsum("cqgp,cqgn->cgpn", X.view(chunks, Q, G, H // G * P), Bs.view(chunks, Q, G, N))
    owner = torch.repeat_interleave(torch.arange(n, device=x.device), per_seq, output_size=chunks)
    h = S.new_zeros(n, G, H // G * P, N).index_add(0, owner, S).view(n, H, P, N)
    if initial_states is not None:  # a row's first sequence continues initial_states unless it restarts
        row_first = seq.view(batch, L)[:, 0]                         # [Bt]: each row's first sequence
        carry = (~restart[:, 0]).to(wd)[:, None, None, None]         # seq_idx 0 at the row's first token
        h0 = initial_states.to(wd) * torch.exp(c.index_select(0, ends[row_first])).to(wd)[:, :, None, None] * carry
        h = h.index_add(0, row_first, h0)
    return h
