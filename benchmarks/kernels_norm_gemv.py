"""Decode GEMV with the RMSNorm folded in (rms_linear) against the separate ops, bf16, batch 1.

Shapes of mamba2-1.3b's decode step: in_proj after the layer's add + RMSNorm (K 2048 → R 8512,
residual) and out_proj after the gated RMSNorm (K 4096 → R 2048, the gated output in float32).
The peer is what runs with the fusion off: add_rmsnorm (our kernel) or the torch gated norm, then
F.linear (cuBLAS). "F.linear alone" is cuBLAS's GEMV without any norm, for context.
Floor: the weight read once, R·K·2 bytes, at the card's rate (benchmarks/_bench.py): 34.9 MB → 8.3 µs and
16.8 MB → 4.0 µs at the H200's 4.2 TB/s, 11.9 and 5.7 µs at an H100's 2.93 TB/s; the vectors are a few KB.
First a sweep of (rows per program, K block, warps) per shape; the rows use the best for each shape.
Then the plain `gemv` at 2, 4 and 16 rows, where it runs the split-K GEMM (triton_rows.py) with its default
launch, against F.linear (cuBLAS) on Mamba's x_proj and out_proj widths, each a chain of calls on copies of
the weight replayed from one CUDA graph (`chain_ms`), so the weight comes from memory and each launch follows
another, as in a decode step.
    python benchmarks/kernels.py --only kernels_norm_gemv
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from _bench import bench_ms, chain_ms, floor_ms
SHAPES = [("in_proj", 2048, 8512, True), ("out_proj", 4096, 2048, False)]
CHOICES = list(itertools.product((1, 2, 4, 8, 16), (512, 1024, 2048, 4096), (2, 4, 8)))
ROWS_SHAPES = [("mamba-2.8b out_proj", 5120, 2560), ("mamba-2.8b x_proj", 5120, 192),
               ("mamba-1.4b out_proj", 4096, 2048), ("mamba-130m out_proj", 1536, 768)]


def _inputs(K, R, residual):
    dev, bf = "cuda", torch.bfloat16
    return dict(x=torch.randn(1, K, device=dev, dtype=bf if residual else torch.float32),
                residual=torch.randn(1, K, device=dev, dtype=bf) if residual else None,
                weight=torch.randn(R, K, device=dev, dtype=bf) / K ** 0.5,
                norm_weight=torch.ones(K, device=dev, dtype=bf))


def _unfused(a):
    from archdsl.kernels import add_rmsnorm
    if a["residual"] is not None:
        n, _ = add_rmsnorm(a["x"], a["residual"], a["norm_weight"])
    else:  # Mamba-2's gated norm as GatedRMSNorm computes it, after the gate
        v = a["x"]
        n = a["norm_weight"] * (v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-5)).to(torch.bfloat16)
    return F.linear(n, a["weight"])


def rows(quick=False):
    from archdsl.kernels.norm_gemv import triton_norm_gemv as tg
    out = []
    for name, K, R, res in SHAPES:
        a = _inputs(K, R, res)
        args = (a["x"], a["weight"], a["norm_weight"], 1e-5, a["residual"], 1, None)
        timed = []
        for br, bk, w in CHOICES[: 12 if quick else None]:
            try:
                ms = bench_ms(lambda: tg.rms_linear_triton(*args, block_r=br, block_k=bk, num_warps=w))
            except Exception as e:  # a choice that does not build is skipped, not fatal
                print(f"# {name} BR={br} BK={bk} warps={w}: {type(e).__name__}", flush=True)
                continue
            timed.append((ms, br, bk, w))
        timed.sort()
        print(f"# {name}: best (ms, BR, BK, warps) {timed[:4]}; worst {timed[-1]}", flush=True)
        _, br, bk, w = timed[0]
        ours = bench_ms(lambda: tg.rms_linear_triton(*args, block_r=br, block_k=bk, num_warps=w))
        ref = _unfused(a)
        got = tg.rms_linear_triton(*args, block_r=br, block_k=bk, num_warps=w)[0]
        rel = ((got.float() - ref.float()).norm() / ref.float().norm()).item()
        floor = floor_ms(R * K * 2)
        shape = f"{name} K{K}→R{R} B1"
        out.append(dict(op="rms_linear", shape=shape, mode=f"BR{br} BK{bk} w{w}", ours_ms=ours,
                        peer="norm + F.linear", peer_ms=bench_ms(lambda: _unfused(a)), floor_ms=floor,
                        floor_note=f"{R * K * 2 / 1e6:.1f} MB of weight", rel_diff=rel))
        n = torch.randn(1, K, device="cuda", dtype=torch.bfloat16)
        out.append(dict(op="F.linear alone", shape=shape, mode="context", ours_ms=bench_ms(lambda: F.linear(n, a["weight"])),
                        floor_ms=floor))
    return out + split_k_rows(quick)


def split_k_rows(quick=False):
    """gemv at a few rows (the split-K GEMM, with PDL as the model runs it) against F.linear, bf16, each timed
    per call in a chain of calls on copies of the weight (150 MB at least, past L2) replayed from one CUDA graph,
    as a decode step runs its projections: a lone call's graph adds a launch's fixed cost to both."""
    from archdsl.kernels.norm_gemv import gemv
    out = []
    for name, K, N in ROWS_SHAPES[: 2 if quick else None]:
        copies = max(4, min(64, -(-150_000_000 // (N * K * 2))))
        ws = [torch.randn(N, K, device="cuda", dtype=torch.bfloat16) / K ** 0.5 for _ in range(copies)]
        for M in (2, 4, 16):
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            ours, peer = gemv(x, ws[0]).float(), F.linear(x, ws[0]).float()
            out.append(dict(op="gemv (split-K)", shape=f"{name} K{K}→N{N} B{M}", mode="chain",
                            ours_ms=chain_ms([lambda w=w: gemv(x, w, pdl=True) for w in ws]),
                            peer="F.linear (cuBLAS)", peer_ms=chain_ms([lambda w=w: F.linear(x, w) for w in ws]),
                            floor_ms=floor_ms(N * K * 2), floor_note=f"{N * K * 2 / 1e6:.1f} MB of weight",
                            rel_diff=((ours - peer).norm() / peer.norm()).item()))
        del ws
    return out


if __name__ == "__main__":
    import kernels

    kernels.main_of("kernels_norm_gemv", __doc__, "12 tile choices a shape and two split-K shapes only")
