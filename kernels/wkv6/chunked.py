"""RWKV-6's WKV in chunks of PyTorch ops: the CPU path, differentiable by autograd.

Within a chunk of C tokens the decay between token j and a later token i is
exp(E_i - B_j), with B the inclusive and E the exclusive cumulative log-decay from the
chunk start. We never split that into exp(E_i) * exp(-B_j): exp(-B_j) overflows as
soon as a chunk's decay passes e^-88. Instead every exponent we take is ≤ 0 — the
pairwise (i, j) differences inside a chunk (masked to j < i before the exp), E_i
for reading the carried state, and B_last - B_j for writing it. A log-decay of -inf (exp(w) = 0: forget
everything) would make -inf - -inf = NaN of those differences: w is clamped first where its exp underflows to 0
(-110 in float32, -750 in float64), which changes no decay, and the clamp's gradient, 0, is e^w's there.

Packed sequences (seq_idx: the runs of kernels._host.seq_runs) mask the same three places: a pair (i, j) of
two sequences, a token reading a state written before its sequence began, a token writing into a state that
leaves the chunk in a later sequence (and the state's decay across the chunk, where one begins inside it).
"""
from __future__ import annotations

import torch

CHUNK = 16
_SEGMENT_ELEMENTS = 1 << 26  # bounds the [.., C, C, K] pairwise-decay tensor


def wkv6_chunked(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, seq_idx=None,
                 chunk=CHUNK):
    """Same contract as `wkv6_naive`, seq_idx the runs `[B, T]` (`seq_runs`); float64 inputs compute in float64."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    ct = torch.float64 if r.dtype == torch.float64 else torch.float32
    scale = K ** -0.5 if scale is None else scale
    S = torch.zeros(B, H, K, V, dtype=ct, device=r.device)
    if initial_state is not None:
        S = S + initial_state.to(ct)
    floor = -750.0 if ct == torch.float64 else -110.0  # a log-decay's floor: below, exp underflows to 0 anyway
    seg = max(chunk, (_SEGMENT_ELEMENTS // max(1, B * H * chunk * K)) // chunk * chunk)
    # each token's run and the run of the token before it (0 before the first: the initial state's)
    runs = None if seq_idx is None else seq_idx.long()
    before = None if seq_idx is None else torch.cat([runs.new_zeros(B, 1), runs[:, :-1]], dim=1)
    outs = []
    for t0 in range(0, T, seg):
        sl = slice(t0, min(T, t0 + seg))
        seq = None if runs is None else (runs[:, sl], before[:, sl])
        o, S = _segment(*(x[:, sl].to(ct) for x in (r, k, v)), w[:, sl].to(ct).clamp_min(floor), u.to(ct), S, chunk,
                        seq)
        outs.append(o)
    o = torch.cat(outs, dim=1) if outs else torch.empty(B, 0, H, V, dtype=ct, device=r.device)
    return (scale * o).to(r.dtype), (S if output_final_state else None)


def _to_chunks(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """[B, T, H, D] -> [B, H, N, C, D], zero-padded; zero w/k/r padding is inert."""
    B, T, H, D = x.shape
    pad = (-T) % chunk
    x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad))
    return x.reshape(B, (T + pad) // chunk, chunk, H, D).permute(0, 3, 1, 2, 4)


def _seq_masks(runs, before, chunk):
    """runs, before [B, T] → masks of [B, 1, N, ...] (broadcast over heads): same [C, C] (a pair of one
    sequence), read [C, 1] (reads the state entering the chunk), write [C, 1] (writes into the state leaving
    it), keep [1, 1] (the entering state lives through the chunk). Padding repeats the last token's run."""
    B, T = runs.shape
    pad = (-T) % chunk
    n = (T + pad) // chunk  # not -1, which a view of zero rows (B = 0) cannot infer
    runs = torch.cat([runs, runs[:, -1:].expand(B, pad)], dim=1).view(B, 1, n, chunk)
    entering = before[:, ::chunk].view(B, 1, n, 1)
    leaving = runs[..., -1:]
    return (runs[..., :, None] == runs[..., None, :], (runs == entering)[..., None], (runs == leaving)[..., None],
            (leaving == entering)[..., None])


def _segment(r, k, v, w, u, S, chunk, seq=None):
    B, T, H, _ = r.shape
    r, k, v, w = (_to_chunks(x, chunk) for x in (r, k, v, w))
    Bc = w.cumsum(-2)
    E = Bc - w
    last = Bc[..., -1:, :]
    pairs = torch.ones(chunk, chunk, dtype=torch.bool, device=r.device).tril(-1)
    read = write = keep = True
    if seq is not None:
        same, read, write, keep = _seq_masks(*seq, chunk)
        pairs = pairs & same
    diff = (E[..., :, None, :] - Bc[..., None, :, :]).masked_fill(~pairs[..., None], float("-inf"))
    A = torch.einsum("bhnik,bhnjk,bhnijk->bhnij", r, k, diff.exp())
    bonus = (r * k * u[None, :, None, None, :]).sum(-1)
    o = A @ v + bonus[..., None] * v
    r_in = r * E.exp() * read
    dS = (k * (last - Bc).exp() * write).transpose(-1, -2) @ v
    decay = last.squeeze(-2).exp()[..., None] * keep
    o_inter = []
    for n in range(r.shape[2]):
        o_inter.append(r_in[:, :, n] @ S)
        S = decay[:, :, n] * S + dS[:, :, n]
    o = o + torch.stack(o_inter, dim=2)
    o = o.permute(0, 2, 3, 1, 4).flatten(1, 2)[:, :T]
    return o, S
