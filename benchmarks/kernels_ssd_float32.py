"""Mamba-2 SSD in float32: ours against mamba_ssm's mamba_chunk_scan_combined, one GPU.

    python benchmarks/kernels.py --only kernels_ssd_float32

Float32 inputs, the chunked layout. mamba_ssm's tl.dot products are one TF32 product whatever torch's
precision says. Ours follow torch.get_float32_matmul_precision(): "highest" (the default) takes three
TF32 products for float32's digits, "high" one, as mamba_ssm does. So each case is timed under both, and
the "high" rows are the like-for-like comparison. Shapes as kernels_ssd.py's (B=4, H=32, P=64, N=128, G=1).

The floor is kernels_ssd.py's with float32 bytes (4 an element) and the FLOPs at the dense TF32 rate (half of
bf16's: 340 TFLOP/s on the H200 and an H100), counted three times under "highest" (three TF32 products a product).
At L=4096, forward / fwd+bwd: under "high" 0.068 / 0.189 ms on the H200 and 0.098 / 0.196 ms on an H100; under
"highest" 0.189 / 0.568 ms on both (FLOPs-bound).
"""
from __future__ import annotations

import torch
from _bench import bench_or_nan, with_env
from kernels_ssd import _floor, _inputs, _peer, _rel_diff, _scan_fn, _y

PRODUCTS = {"highest": 3, "high": 1}  # TF32 products a float32 product takes under each matmul precision


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
                theirs = bench_or_nan(_scan_fn(peer, t, bwd)) if peer else None
                for precision in ("highest", "high"):
                    torch.set_float32_matmul_precision(precision)
                    floor, note = _floor(4, L, bwd=bwd, size=4, tf32=PRODUCTS[precision])
                    row = dict(op=f"ssd_scan f32 {precision}", shape=f"B=4 L={L} H=32 P=64 N=128 G=1",
                               mode="fwd+bwd" if bwd else "fwd",
                               ours_ms=bench_or_nan(with_env("ARCHDSL_SSD_IMPL", "chunked", _scan_fn(ours_fn, t, bwd))),
                               peer="mamba_ssm (TF32)", peer_ms=theirs, floor_ms=floor, floor_note=note)
                    if peer and not bwd:
                        row["rel_diff"] = _rel_diff(with_env("ARCHDSL_SSD_IMPL", "chunked", lambda: _y(ours_fn, t))(), _y(peer, t))
                        row["rel_diff_of"] = "max|Δy|/max|y|"
                    yield row
    finally:
        torch.set_float32_matmul_precision(before)


if __name__ == "__main__":
    import kernels

    kernels.main_of("kernels_ssd_float32", __doc__, "L 4096 only")
