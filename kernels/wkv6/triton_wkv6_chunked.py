"""RWKV-6's WKV in parallel segments: a light serial pass over segment boundaries, then every
segment at once.

The serial layout walks the whole sequence in B·H (× V blocks) programs: the in-sub-chunk work
runs on only as many programs as there are heads. Here the sequence is cut into segments of
CHUNK tokens and only the [K, V] state crosses them:

    forward   _states_fwd  (serial over segments)  hs[n] = state entering segment n, n = 0..N
              segments_fwd (parallel)              o of every segment from its hs[n]
    backward  _states_fwd again, then
              _states_bwd  (serial, reverse)       gs[n] = d loss / d(state leaving segment n); dh0
              segments_bwd (parallel)              dr, dk, dv, dw, du of every segment

A boundary pass handles a whole segment per step: its contribution is one [C, K]ᵀ·[C, V] dot
with exponents ≤ 0 (the decay from each token to the segment's end, or from its start), and its
blocks of K and V are independent (the decay is diagonal in K), so it runs on B·H·(K/BK)·(V/BV)
programs. The segment kernels are triton_wkv6.py's; with packed sequences (seq, the runs) the boundary
passes mask a segment as `_runs` masks a sub-chunk: reads before, writes after, the decay through a
sequence's start. No state crosses a segment a sequence starts in, so there the serial chain breaks; where the
chains alone would leave SMs idle its pieces run side by side (a program for each batch·head and segment), so
that a row packing many sequences walks only its longest piece, as fla's varlen kernels walk each sequence alone.

fla's varlen form with a state each (cu_seqlens with initial or final states, `wkv6_varlen_chunked`) cuts each
sequence into pieces of CHUNK tokens from its own start, so that no piece holds two sequences and nothing is
masked: a boundary pass a sequence (`_varlen_states_fwd` / `_bwd`, the longest sequences first) walks its pieces
from its initial state (back from its final state's gradient), and the segment kernels run every piece at once as
triton_wkv6.py's VARLEN segments.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._host import cdiv, on_device, sm_count
from .triton_wkv6 import (_dot, _log2_decay, _pow2, _prec, _prec_bwd, _rows, _run_before, _runs, _tile, run_function,
                          segments_bwd, segments_fwd)

CHUNK = 64
# Blocks of the boundary passes: at K = V = 64, 2 programs per (batch, head). H200, B4 H32 bf16
# (benchmarks/wkv6_configs.py, 2026-11-29): the forward pass took 0.302 ms at 64×32, 0.396 at 32×32
# and 0.370 at 64×64 (T 4096); 1.162, 1.559, 1.447 ms at T 16384.
BLOCK_K, BLOCK_V = 64, 32
# Packed sequences: the boundary passes run the pieces of their chains side by side (a program for each
# batch·head, block and segment) where one chain a (batch·head, block) would leave SMs idle. H200, bf16, H32
# K=V=64: one row of 16384 tokens packing 16 sequences (64 chains) went 1.429 → 0.964 ms forward, 5.535 → 4.025
# forward+backward; B4 T4096 with 8 sequences a row (256 chains, the card full) lost 7% forward (0.782 → 0.834),
# so it stays serial there. None: split below the SM count; True / False force it (tests).
SPLIT_CHAINS: bool | None = None


@triton.jit
def _restarts_in(seq, i_b, n, T, C: tl.constexpr):
    """Whether a packed sequence starts in segment n (tokens n·C .. n·C + C - 1), so that the state entering
    the segment does not leave it: the runs never fall, so its last token's run differs from the one before."""
    last = tl.load(seq + i_b * T + tl.minimum(n * C + C, T) - 1)
    return last != _run_before(seq, i_b, n * C, T)


@triton.jit
def _states_fwd(k, v, w, h0, hs, ht, seq, T, C: tl.constexpr, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                BK: tl.constexpr, BV: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
                HAS_SEQ: tl.constexpr, SPLIT: tl.constexpr, PREC: tl.constexpr):
    """hs[bh·(N+1) + n] = the state entering segment n (n = N: the final state), one [BK, BV] block.

    With packed sequences the chain of states breaks at every segment a sequence starts in; SPLIT runs the pieces
    side by side: a program for each (batch·head, segment), those at segment 0 or at a break walk on from it
    up to the next break (whose entering state they leave), the others return at once."""
    i_x, i_k, i_v = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    N = tl.cdiv(T, C)
    if SPLIT:
        i_bh, first = i_x // N, i_x % N
    else:
        i_bh, first = i_x, i_x * 0
    i_b, i_h = i_bh // H, i_bh % H
    active = first == 0
    if SPLIT:
        active = active | _restarts_in(seq, i_b, first, T, C)
    ok, ov = i_k * BK + tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    mk, mv = ok < K, ov < V
    p_s, m_s = ok[:, None] * V + ov[None, :], mk[:, None] & mv[None, :]
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        S += tl.load(h0 + i_bh * K * V + p_s, mask=tl.where(first == 0, m_s, False), other=0.0).to(tl.float32)
    # each segment's tiles are loaded one step ahead, so their latency hides behind the step before
    rows, mt = _rows(i_b, i_h, first * C, T, T, H, C)
    mt = tl.where(active, mt, False)  # (a scalar & a block: Triton's interpreter cannot mask by it)
    n_k, n_v, n_w = _tile(k, rows, mt, ok, mk, K), _tile(v, rows, mt, ov, mv, V), _tile(w, rows, mt, ok, mk, K)
    n, stop, go = first, first < 0, active
    while go:
        if SPLIT:
            stop = (n > first) & _restarts_in(seq, i_b, n, T, C)  # the next piece starts here
        tl.store(hs + (i_bh * (N + 1) + n) * K * V + p_s, S, mask=tl.where((n > first) | (first == 0), m_s, False))
        b_k, b_v, w2 = n_k.to(tl.float32), n_v.to(tl.float32), _log2_decay(n_w)
        rows, mt = _rows(i_b, i_h, (n + 1) * C, T, T, H, C)
        mt = tl.where(stop, False, mt)
        n_k, n_v, n_w = _tile(k, rows, mt, ok, mk, K), _tile(v, rows, mt, ov, mv, V), _tile(w, rows, mt, ok, mk, K)
        after = tl.cumsum(w2, axis=0, reverse=True) - w2  # Σ_{m>j} w2_m: same-sign terms, exact to rounding
        k_out, decay = b_k * tl.exp2(after), tl.exp2(tl.sum(w2, axis=0))
        if HAS_SEQ:
            _, _, write, keep = _runs(seq, i_b, n * C, T, T, C)
            k_out, decay = tl.where(write[:, None], k_out, 0.0), tl.where(keep, decay, 0.0)
        S = S * decay[:, None] + _dot(tl.trans(k_out), b_v, PREC)
        n += 1
        go = (n < N) & (stop == 0)
    ended = active & (stop == 0)  # this piece reached the last segment
    tl.store(hs + (i_bh * (N + 1) + N) * K * V + p_s, S, mask=tl.where(ended, m_s, False))
    if STORE_HT:
        tl.store(ht + i_bh * K * V + p_s, S, mask=tl.where(ended, m_s, False))


@triton.jit
def _states_bwd(r, w, do, dht, gs, dh0, seq, scale, T, C: tl.constexpr, H: tl.constexpr, K: tl.constexpr,
                V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_DHT: tl.constexpr,
                STORE_DH0: tl.constexpr, HAS_SEQ: tl.constexpr, SPLIT: tl.constexpr, PREC: tl.constexpr):
    """gs[bh·N + n] = d loss / d(state leaving segment n), from the last segment back; dh0 = the gradient
    entering segment 0. One [BK, BV] block. With SPLIT the pieces run side by side, as the forward's:
    a program for each (batch·head, segment), those at the last segment or at a break walk back from it down to
    the segment after the previous break (the gradient leaving that break they leave), the others return."""
    scale = tl.cast(scale, tl.float32)  # torch.compile's Inductor passes a float as float64
    i_x, i_k, i_v = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    N = tl.cdiv(T, C)
    if SPLIT:
        i_bh, top = i_x // N, i_x % N
    else:
        i_bh, top = i_x, i_x * 0 + N - 1
    i_b, i_h = i_bh // H, i_bh % H
    active = top == N - 1
    if SPLIT:
        active = active | _restarts_in(seq, i_b, top, T, C)
    ok, ov = i_k * BK + tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    mk, mv = ok < K, ov < V
    p_s, m_s = ok[:, None] * V + ov[None, :], mk[:, None] & mv[None, :]
    G = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        G += tl.load(dht + i_bh * K * V + p_s, mask=tl.where(top == N - 1, m_s, False), other=0.0).to(tl.float32)
    rows, mt = _rows(i_b, i_h, top * C, T, T, H, C)
    mt = tl.where(active, mt, False)  # (a scalar & a block: Triton's interpreter cannot mask by it)
    n_r, n_do, n_w = _tile(r, rows, mt, ok, mk, K), _tile(do, rows, mt, ov, mv, V), _tile(w, rows, mt, ok, mk, K)
    n, stop, go = top, top < 0, active
    while go:
        if SPLIT:
            stop = (n < top) & _restarts_in(seq, i_b, n, T, C)  # the piece below starts here
        tl.store(gs + (i_bh * N + n) * K * V + p_s, G, mask=tl.where((n < top) | (top == N - 1), m_s, False))
        b_r, b_do, w2 = n_r.to(tl.float32), n_do.to(tl.float32), _log2_decay(n_w)
        rows, mt = _rows(i_b, i_h, (n - 1) * C, T, T, H, C)
        mt = tl.where(stop, False, mt & ((n - 1) * C + tl.arange(0, C) >= 0))  # none before the first segment
        n_r, n_do, n_w = _tile(r, rows, mt, ok, mk, K), _tile(do, rows, mt, ov, mv, V), _tile(w, rows, mt, ok, mk, K)
        rq, decay = b_r * tl.exp2(tl.cumsum(w2, axis=0) - w2), tl.exp2(tl.sum(w2, axis=0))
        if HAS_SEQ:
            _, read, _, keep = _runs(seq, i_b, n * C, T, T, C)
            rq, decay = tl.where(read[:, None], rq, 0.0), tl.where(keep, decay, 0.0)
        G = G * decay[:, None] + scale * _dot(tl.trans(rq), b_do, PREC)
        n -= 1
        go = (n >= 0) & (stop == 0)
    if STORE_DH0:
        tl.store(dh0 + i_bh * K * V + p_s, G, mask=tl.where(active & (stop == 0), m_s, False))


@triton.jit
def _varlen_program(plan, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """What a boundary-pass program of grid (K·V blocks, H, n) walks: its sequence n (in plan's order, longest
    first) and head, the sequence's first token and end, its first piece and the next sequence's (`varlen_pieces`),
    and its [BK, BV] block of the state (columns, masks, offsets)."""
    i_kv, i_h, n = tl.program_id(0), tl.program_id(1), tl.num_programs(2)
    i_n = tl.load(plan + n + 1 + tl.program_id(2))
    t_start, t_end = tl.load(plan + i_n), tl.load(plan + i_n + 1)
    p_first, p_end = tl.load(plan + 2 * n + 1 + i_n), tl.load(plan + 2 * n + 2 + i_n)
    i_k, i_v = i_kv // tl.cdiv(V, BV), i_kv % tl.cdiv(V, BV)
    ok, ov = i_k * BK + tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    mk, mv = ok < K, ov < V
    p_s, m_s = ok[:, None] * V + ov[None, :], mk[:, None] & mv[None, :]
    return i_n, i_h, t_start, t_end, p_first, p_end, ok, ov, mk, mv, p_s, m_s


@triton.jit
def _varlen_states_fwd(k, v, w, h0, hs, hx, ht, plan, T, C: tl.constexpr, H: tl.constexpr, K: tl.constexpr,
                       V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_H0: tl.constexpr,
                       STORE_HX: tl.constexpr, STORE_HT: tl.constexpr, PREC: tl.constexpr):
    """hs[p·H + h] and (STORE_HX, for the backward) hx[p·H + h] = the states entering and leaving piece p (one
    [BK, BV] block), walking one sequence's pieces from its initial state h0[n·H + h]; ht[n·H + h] its final state.
    Grid (K·V blocks, H, n), the sequences in plan's order (longest first)."""
    i_n, i_h, t_start, t_end, p_first, p_end, ok, ov, mk, mv, p_s, m_s = _varlen_program(plan, K, V, BK, BV)
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        S += tl.load(h0 + (i_n * H + i_h).to(tl.int64) * K * V + p_s, mask=m_s, other=0.0).to(tl.float32)
    # each piece's tiles are loaded one step ahead, so their latency hides behind the step before
    rows, mt = _rows(0, i_h, t_start, t_end, T, H, C)
    n_k, n_v, n_w = _tile(k, rows, mt, ok, mk, K), _tile(v, rows, mt, ov, mv, V), _tile(w, rows, mt, ok, mk, K)
    for p in range(p_first, p_end):
        tl.store(hs + (p * H + i_h).to(tl.int64) * K * V + p_s, S, mask=m_s)
        b_k, b_v, w2 = n_k.to(tl.float32), n_v.to(tl.float32), _log2_decay(n_w)
        rows, mt = _rows(0, i_h, t_start + (p + 1 - p_first) * C, t_end, T, H, C)
        n_k, n_v, n_w = _tile(k, rows, mt, ok, mk, K), _tile(v, rows, mt, ov, mv, V), _tile(w, rows, mt, ok, mk, K)
        after = tl.cumsum(w2, axis=0, reverse=True) - w2  # Σ_{m>j} w2_m (0 on the rows past the end)
        S = S * tl.exp2(tl.sum(w2, axis=0))[:, None] + _dot(tl.trans(b_k * tl.exp2(after)), b_v, PREC)
        if STORE_HX:
            tl.store(hx + (p * H + i_h).to(tl.int64) * K * V + p_s, S, mask=m_s)
    if STORE_HT:
        tl.store(ht + (i_n * H + i_h).to(tl.int64) * K * V + p_s, S, mask=m_s)


@triton.jit
def _varlen_states_bwd(r, w, do, dht, gs, dh0, plan, scale, T, C: tl.constexpr, H: tl.constexpr, K: tl.constexpr,
                       V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_DHT: tl.constexpr,
                       STORE_DH0: tl.constexpr, PREC: tl.constexpr):
    """gs[p·H + h] = d loss / d(state leaving piece p), walking one sequence's pieces back from the gradient of its
    final state dht[n·H + h]; dh0[n·H + h] the gradient of its initial state. Grid as `_varlen_states_fwd`'s."""
    scale = tl.cast(scale, tl.float32)  # torch.compile's Inductor passes a float as float64
    i_n, i_h, t_start, t_end, p_first, p_end, ok, ov, mk, mv, p_s, m_s = _varlen_program(plan, K, V, BK, BV)
    G = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        G += tl.load(dht + (i_n * H + i_h).to(tl.int64) * K * V + p_s, mask=m_s, other=0.0).to(tl.float32)
    rows, mt = _rows(0, i_h, t_start + (p_end - 1 - p_first) * C, t_end, T, H, C)
    n_r, n_do, n_w = _tile(r, rows, mt, ok, mk, K), _tile(do, rows, mt, ov, mv, V), _tile(w, rows, mt, ok, mk, K)
    for i in range(p_end - p_first):
        p = p_end - 1 - i
        tl.store(gs + (p * H + i_h).to(tl.int64) * K * V + p_s, G, mask=m_s)
        b_r, b_do, w2 = n_r.to(tl.float32), n_do.to(tl.float32), _log2_decay(n_w)
        t_prev = t_start + (p - 1 - p_first) * C  # the piece before (none before the first: masked off)
        rows, mt = _rows(0, i_h, t_prev, t_end, T, H, C)
        mt = mt & (t_prev + tl.arange(0, C) >= t_start)
        n_r, n_do, n_w = _tile(r, rows, mt, ok, mk, K), _tile(do, rows, mt, ov, mv, V), _tile(w, rows, mt, ok, mk, K)
        rq = b_r * tl.exp2(tl.cumsum(w2, axis=0) - w2)  # r times the decay from the piece's start to its token
        G = G * tl.exp2(tl.sum(w2, axis=0))[:, None] + scale * _dot(tl.trans(rq), b_do, PREC)
    if STORE_DH0:
        tl.store(dh0 + (i_n * H + i_h).to(tl.int64) * K * V + p_s, G, mask=m_s)


def varlen_pieces(cu_seqlens: torch.Tensor, T: int, chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """The plans of `wkv6_varlen_chunked`, on cu_seqlens' device without waiting for it:

    seqs int32 [3n + 2]: the offsets [n + 1], the sequences longest first [n], each one's first piece [n + 1];
    pieces int32 [2P + 1]: the pieces' offsets [P + 1] (each sequence cut every `chunk` tokens from its start), then
    their order [P] (triton_wkv6's VARLEN plan). P = n + ceil(T / chunk) bounds Σ ceil(length / chunk) from above
    without reading the offsets; the pieces past the real ones are empty (at T)."""
    cu = cu_seqlens.to(torch.int32)
    n, lengths = cu.numel() - 1, cu.diff()
    first = torch.cat([cu.new_zeros(1), ((lengths + chunk - 1) // chunk).cumsum(0, dtype=torch.int32)])
    P = n + cdiv(T, chunk)
    p = torch.arange(P, device=cu.device, dtype=torch.int32)
    seq = torch.searchsorted(first[1:], p, right=True).clamp_max(n - 1)
    starts = torch.where(p < first[-1], cu[seq] + (p - first[seq]) * chunk, T).to(torch.int32)
    order = torch.argsort(lengths, descending=True, stable=True).to(torch.int32)
    return torch.cat([cu, order, first]), torch.cat([starts, cu.new_full((1,), T), p])


def _varlen_states(k, v, w, h0, store_ht, seqs, P, chunk, store_hx=False):
    """(hs `[P·H, K, V]` float32: the states entering each piece; hx, the states leaving them (store_hx, else
    None); ht `[n, H, K, V]` or None)."""
    _, T, H, K = k.shape
    V, n = v.shape[-1], (seqs.numel() - 2) // 3
    hs = torch.empty(P * H, K, V, dtype=torch.float32, device=k.device)
    hx = torch.empty_like(hs) if store_hx else None
    ht = torch.empty(n, H, K, V, dtype=torch.float32, device=k.device) if store_ht else None
    BK, BV = min(_pow2(K), BLOCK_K), min(_pow2(V), BLOCK_V)
    _varlen_states_fwd[(cdiv(K, BK) * cdiv(V, BV), H, n)](k, v, w, h0, hs, hx, ht, seqs, T, chunk, H, K, V, BK, BV,
                                                          h0 is not None, store_hx, store_ht, _prec(k), num_warps=4)
    return hs, hx, ht


class WKV6VarlenChunkedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, k, v, w, u, scale, h0, output_final_state, seqs, pieces):
        r, k, v, w, u = (x.contiguous() for x in (r, k, v, w, u))
        h0 = h0.contiguous() if h0 is not None else None
        T, P = r.shape[1], (pieces.numel() - 1) // 2
        hs, _, ht = _varlen_states(k, v, w, h0, output_final_state, seqs, P, CHUNK)
        o = segments_fwd(r, k, v, w, u, scale, hs, 1, max(T, 1), num_warps=4, cu=pieces)
        ctx.save_for_backward(r, k, v, w, u, h0, seqs, pieces)
        ctx.scale = scale
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        r, k, v, w, u, h0, seqs, pieces = ctx.saved_tensors
        _, T, H, K = r.shape
        V, n, P = v.shape[-1], (seqs.numel() - 2) // 3, (pieces.numel() - 1) // 2
        do = do.contiguous()
        dht = dht.contiguous() if dht is not None else None
        # recomputed, as the chunked layout's, with the states leaving each piece too
        hs, hx, _ = _varlen_states(k, v, w, h0, False, seqs, P, CHUNK, store_hx=True)
        gs = torch.empty(P * H, K, V, dtype=torch.float32, device=r.device)
        dh0 = torch.empty(n, H, K, V, dtype=torch.float32, device=r.device) if h0 is not None else None
        BK, BV = min(_pow2(K), BLOCK_K), min(_pow2(V), BLOCK_V)
        _varlen_states_bwd[(cdiv(K, BK) * cdiv(V, BV), H, n)](r, w, do, dht, gs, dh0, seqs, ctx.scale, T, CHUNK, H,
                                                              K, V, BK, BV, dht is not None, h0 is not None,
                                                              _prec_bwd(r), num_warps=4)
        dr, dk, dv, dw, du, _ = segments_bwd(r, k, v, w, u, ctx.scale, do, hs, 1, hx, gs, (1, 1), max(T, 1), False,
                                             rev_warps=4, cu=pieces, restarts=False)  # pieces of ≤ CHUNK tokens
        if dh0 is not None:
            dh0 = dh0.to(h0.dtype)
        return dr, dk, dv, dw, du, None, dh0, None, None, None


def wkv6_varlen_chunked(r, k, v, w, u, scale, initial_state=None, output_final_state=False, cu_seqlens=None):
    """triton_wkv6.wkv6_triton's varlen form (cu_seqlens `[n + 1]`, a batch of 1, a state each `[n, H, K, V]`) in
    this layout: a boundary pass a sequence over its pieces of CHUNK tokens, then every piece at once."""
    T = r.shape[1]
    P = cu_seqlens.numel() - 1 + cdiv(T, CHUNK)
    if P > 65535:  # the grid's z (triton_wkv6's VARLEN segments)
        raise ValueError(f"cu_seqlens: at most 65535 pieces of {CHUNK} tokens in the chunked layout, got up to {P} "
                         f"({cu_seqlens.numel() - 1} sequences in {T} tokens); the serial layout takes 65535 sequences")
    seqs, pieces = on_device(list(varlen_pieces(cu_seqlens, T)), r.device)  # made on the host where cu is there
    return run_function(WKV6VarlenChunkedFunction, r, k, v, w, u, scale, initial_state, output_final_state, seqs,
                        pieces)


def _grid(K, V, BH, N, seq):
    """(batch·head (× segment, where the chains split) programs, K blocks, V blocks), BK, BV, whether split."""
    BK, BV = min(_pow2(K), BLOCK_K), min(_pow2(V), BLOCK_V)
    blocks = cdiv(K, BK) * cdiv(V, BV)
    split = seq is not None and (SPLIT_CHAINS if SPLIT_CHAINS is not None else BH * blocks < sm_count(seq.device))
    return (BH * (N if split else 1), cdiv(K, BK), cdiv(V, BV)), BK, BV, split


def segment_states(k, v, w, h0, store_ht, chunk=CHUNK, seq=None):
    """([B·H·(N+1), K, V] float32 states entering each segment, then the final one; ht or None)."""
    B, T, H, K = k.shape
    V, N = v.shape[-1], max(1, cdiv(T, chunk))
    hs = torch.empty(B * H * (N + 1), K, V, dtype=torch.float32, device=k.device)
    ht = torch.empty(B, H, K, V, dtype=torch.float32, device=k.device) if store_ht else None
    grid, BK, BV, split = _grid(K, V, B * H, N, seq)
    _states_fwd[grid](k, v, w, h0, hs, ht, seq, T, chunk, H, K, V, BK, BV, h0 is not None, store_ht,
                      seq is not None, split, _prec(k), num_warps=4)
    return hs, ht


def wkv6_fwd(r, k, v, w, u, scale, h0, store_ht, chunk=CHUNK, seq=None):
    """Forward; returns (o `[B, T, H, V]` in r's dtype, ht `[B, H, K, V]` float32 or None)."""
    B, T, H, K = r.shape
    N = max(1, cdiv(T, chunk))
    hs, ht = segment_states(k, v, w, h0, store_ht, chunk, seq)
    return segments_fwd(r, k, v, w, u, scale, hs, N + 1, chunk, num_warps=4, seq=seq), ht


def wkv6_bwd(r, k, v, w, u, scale, h0, do, dht, chunk=CHUNK, seq=None):
    """Backward, recomputing the boundary states; returns (dr, dk, dv, dw, du, dh0 or None)."""
    B, T, H, K = r.shape
    V, N = v.shape[-1], max(1, cdiv(T, chunk))
    hs, _ = segment_states(k, v, w, h0, False, chunk, seq)
    gs = torch.empty(B * H * N, K, V, dtype=torch.float32, device=r.device)
    dh0 = torch.empty(B, H, K, V, dtype=torch.float32, device=r.device) if h0 is not None else None
    grid, BK, BV, split = _grid(K, V, B * H, N, seq)
    _states_bwd[grid](r, w, do, dht, gs, dh0, seq, scale, T, chunk, H, K, V, BK, BV, dht is not None,
                      h0 is not None, seq is not None, split, _prec_bwd(r), num_warps=4)
    dr, dk, dv, dw, du, _ = segments_bwd(r, k, v, w, u, scale, do, hs, N + 1, hs[1:], gs, (N + 1, N), chunk,
                                         False, rev_warps=4, seq=seq)
    return dr, dk, dv, dw, du, dh0


class WKV6ChunkedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, k, v, w, u, scale, h0, output_final_state, seq):
        r, k, v, w, u = (x.contiguous() for x in (r, k, v, w, u))
        h0 = h0.contiguous() if h0 is not None else None
        seq = seq.contiguous() if seq is not None else None
        o, ht = wkv6_fwd(r, k, v, w, u, scale, h0, output_final_state, seq=seq)
        ctx.save_for_backward(r, k, v, w, u, h0, seq)
        ctx.scale = scale
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        r, k, v, w, u, h0, seq = ctx.saved_tensors
        dht = dht.contiguous() if dht is not None else None
        dr, dk, dv, dw, du, dh0 = wkv6_bwd(r, k, v, w, u, ctx.scale, h0, do.contiguous(), dht, seq=seq)
        if dh0 is not None:
            dh0 = dh0.to(h0.dtype)
        return dr, dk, dv, dw, du, None, dh0, None, None


def wkv6_triton_chunked(r, k, v, w, u, scale, initial_state=None, output_final_state=False, seq_idx=None):
    """Same contract as triton_wkv6.wkv6_triton."""
    seq = None if seq_idx is None else seq_idx.to(torch.int32)
    return run_function(WKV6ChunkedFunction, r, k, v, w, u, scale, initial_state, output_final_state, seq)
