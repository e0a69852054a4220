"""The final state of every packed sequence of an SSD scan (mamba_ssm's `return_varlen_states`).

A sequence k of a packed row, its tokens s..e, ends in the state

    h_k = Σ_{j=s..e} exp(A·(c_e - c_j)) dt'_j x_j ⊗ B_j  (+ exp(A·c_e) h0 for a row's first sequence when it is
          seq_idx 0's, as the scan reads initial_states),   c_t = Σ_{i<=t} dt'_i (the row's running sum)

computed after the scan, from x, dt and B: here in torch (the CPU path, and the differentiable twin of
triton_varlen.py's kernel, whose backward runs it again):

1. the running sums A·c in float64 (the differences c_e - c_j of long rows keep their digits) and the weighted x;
2. each sequence cut into chunks of Q tokens, its last chunk padded with zeros, x and B laid chunk after chunk
   ([chunks·Q, H·P] and [chunks·Q, G·N], rows copied whole);
3. one product a chunk and group, X^T B, then the chunks of each sequence summed.

Q is the power of two that moves the fewest bytes: the padding (under Q a sequence) against the chunks' states
(H·P·N each). Costs a few passes over x, B and dt.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .._host import seq_starts
from .naive import DtRule, effective_dt


class Packing(NamedTuple):
    """Where the sequences of seq_idx [Bt, L] lie in its T = Bt·L tokens, row after row (each row's first token
    starts one): restart [Bt, L] bool (seq_starts), seq [T] each token's sequence, pos [T] its place in it,
    starts, lengths, ends [n] each sequence's first token, length and last token."""
    restart: torch.Tensor
    seq: torch.Tensor
    pos: torch.Tensor
    starts: torch.Tensor
    lengths: torch.Tensor
    ends: torch.Tensor


def beginnings(seq_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(restart [Bt, L] bool: the state restarts here (seq_starts), begins [T] bool: a sequence's first token,
    row after row, each row's first token among them)."""
    restart = seq_starts(seq_idx)
    begins = restart.clone()
    begins[:, 0] = True
    return restart, begins.view(-1)


def packing(seq_idx: torch.Tensor) -> Packing:
    restart, begins = beginnings(seq_idx)
    starts = begins.nonzero().view(-1)                               # [n]; waits for the device
    T = begins.numel()
    lengths = torch.diff(starts, append=starts.new_full((1,), T))
    seq = begins.cumsum(0) - 1
    return Packing(restart, seq, torch.arange(T, device=seq.device) - starts[seq], starts, lengths,
                   starts + lengths - 1)


def running(dt, A, dt_bias, rule: DtRule, wd) -> tuple[torch.Tensor, torch.Tensor]:
    """dt [Bt, L, H] → (dt' [T, H] in wd, A·c [T, H] float64: A times the running sum of dt' along each row),
    summed along the innermost dimension (torch's scan along an outer one runs a thread a column)."""
    batch, L, H = dt.shape
    dtp = effective_dt(dt.to(wd), None if dt_bias is None else dt_bias.to(wd), rule).view(batch * L, H)
    c = (dtp.double() * A.double()).view(batch, L, H).mT.cumsum(-1).mT.reshape(batch * L, H)
    return dtp, c


def add_initial(h, initial_states, pk: Packing, c):
    """h [n, H, P, N] with each row's initial state decayed to its first sequence's end added, where that
    sequence is seq_idx 0's (it continues initial_states unless it restarts at the row's first token)."""
    batch, L = pk.restart.shape
    row_first = pk.seq.view(batch, L)[:, 0]                          # [Bt]: each row's first sequence
    carry = (~pk.restart[:, 0]).to(h.dtype)[:, None, None, None]
    decay = torch.exp(c.index_select(0, pk.ends[row_first])).to(h.dtype)[:, :, None, None]
    return h.index_add(0, row_first, initial_states.to(h.dtype) * decay * carry)


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
    pk = packing(seq_idx)
    n = pk.starts.numel()

    # 1. the weight of x_j in its sequence's last state. Gathers by index_select: their backward adds with
    # atomics, where indexing's sorts first.
    dtp, c = running(dt, A, dt_bias, rule, wd)
    decay = torch.exp(c.index_select(0, pk.ends[pk.seq]) - c).to(wd)  # [T, H]: exp(A·(c_e - c_j)) ≤ 1
    xw = x.reshape(T, H, P) * (decay * dtp)[..., None]               # [T, H, P] in wd

    # 2. chunks of Q tokens, sequence after sequence, rows copied whole
    host = pk.lengths.cpu()                                          # the second and last wait for the device
    Q = chunk or chunk_size(host, N)
    chunks = int(((host + Q - 1) // Q).sum())
    per_seq = (pk.lengths + Q - 1) // Q                              # [n] chunks a sequence
    row = (per_seq.cumsum(0) - per_seq)[pk.seq] * Q + pk.pos         # [T] each token's padded place
    X = xw.new_zeros(chunks * Q, H * P).index_copy_(0, row, xw.view(T, H * P))
    Bs = xw.new_zeros(chunks * Q, G * N).index_copy_(0, row, B.reshape(T, G * N).to(wd))

    # 3. each chunk's share, X^T B [chunks, G, H/G·P, N], summed over each sequence's chunks
    S = torch.einsum("cqgp,cqgn->cgpn", X.view(chunks, Q, G, H // G * P), Bs.view(chunks, Q, G, N))
    owner = torch.repeat_interleave(torch.arange(n, device=x.device), per_seq, output_size=chunks)
    h = S.new_zeros(n, G, H // G * P, N).index_add(0, owner, S).view(n, H, P, N)
    return h if initial_states is None else add_initial(h, initial_states, pk, c)
