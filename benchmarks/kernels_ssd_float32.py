"""Mamba-2 SSD in float32: ours against mamba_ssm's mamba_chunk_scan_combined, one GPU.

    python benchmarks/kernels.py --only kernels_ssd_float32

Float32 inputs, the chunked layout. mamba_ssm's tl.dot products are one TF32 product whatever torch's
precision says. Ours follow torch.get_float32_matmul_precision(): "highest" (the default) takes three
TF32 products for float32's digits, "high" one, as mamba_ssm does. So each case is timed under both, and
the "high" rows are the like-for-like comparison. Shapes as kernels_ssd.py's (B=4, H=32, P=64, N=128, G=1),
float32 bytes in the floor.
"""
from __future__ import annotations

import torch
from _bench import bench_or_nan, with_env
from kernels_ssd import FLOPS, BW, _inputs, _peer, _rel_diff, _scan_fn, _y


def _floor(batch, L, H=32, P=64, N=128, G=1, Q=64, bwd=False):
    nbytes = 2 * batch * L * H * P * 4 + batch * L * H * 4 + 2 * batch * L * G * N * 4
    flops = batch * L * H * (2 * Q * P + 4 * P * N)
    if bwd:
        nbytes, flops = 2 * nbytes, 3.5 * flops
    return max(nbytes / BW, flops / FLOPS) * 1e3, f"{nbytes / 1e6:.0f} MB, {flops / 1e9:.1f} GFLOP"


def rows(quick: bool = False):
    """ssd_scan chunked (float32) under each matmul precision, against the peer, fwd and fwd+bwd."""
    from archdsl.kernels.ssd import ssd_scan
    peer = _peer()
    ours_fn = lambda *a, **k: ssd_scan(*a[:5], chunk_size=a[5], **k)
    before = torch.get_float32_matmul_precision()
    try:
        for L in [4096] if quick else [4096, 16384]:
            for bwd in (False, True):
                t = _inputs(4, L, grad=bwd, dtype=torch.float32)
                floor, note = _floor(4, L, bwd=bwd)
                theirs = bench_or_nan(_scan_fn(peer, t, bwd)) if peer else None
                for precision in ("highest", "high"):
                    torch.set_float32_matmul_precision(precision)
                    row = dict(op=f"ssd_scan f32 {precision}", shape=f"B=4 L={L} H=32 P=64 N=128 G=1",
                               mode="fwd+bwd" if bwd else "fwd",
                               ours_ms=bench_or_nan(with_env("ARCHDSL_SSD_IMPL", "chunked", _scan_fn(ours_fn, t, bwd))),
                               peer="mamba_ssm (TF32)", peer_ms=theirs, floor_ms=floor, floor_note=note)
                    if peer and not bwd:
                        row["rel_diff"] = _rel_diff(with_env("ARCHDSL_SSD_IMPL", "chunked", lambda: _y(ours_fn, t))(), _y(peer, t))
                    yield row
    finally:
        torch.set_float32_matmul_precision(before)


if __name__ == "__main__":
    import kernels

    kernels.main_of("kernels_ssd_float32", __doc__, "L 4096 only")
