"""Launch choices of the WKV6 Triton kernels, timed on the card, and where each layout's time goes.

    python benchmarks/wkv6_configs.py [--T 4096,16384] [--no-peer] [--json FILE]
    python benchmarks/wkv6_configs.py --layouts [--T 1024,2048,4096,16384] [--json FILE]

Shape B=4, T, H=32, K=V=64, bf16, w = logsigmoid(randn) (benchmarks/kernels_wkv6.py's). For each T:
fla's chunk_rwkv6 forward (unless --no-peer), the serial layout's forward, the chunked layout's
boundary-state pass at each (BLOCK_K, BLOCK_V), its segment kernel at 4 and 8 warps, its whole
forward; then the backward of each layout (no autograd: the launches alone, the chunked one at
both warp counts of its reverse sweep) and forward+backward through autograd, with fla's. Each row
is the median of triton.testing.do_bench; nothing is changed on disk.

--layouts times the serial and the chunked layout forward and forward+backward at B 1, 2, 4 and
T 1024, 2048, 4096, 16384 (H32 K=V=64 bf16, no seq_idx) beside the layout `op._default_impl` picks there
unset, so that its rule (chunked where B·H·V blocks ≤ half the multiprocessors, T ≥ 1024) is checked
against the faster one.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench import bench_or_nan, needs_cuda, positive_list, save_json, with_env  # noqa: E402
from kernels_wkv6 import _fwd_bwd, _wkv6_inputs  # noqa: E402

try:
    import archdsl  # noqa: F401
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from archdsl.kernels.wkv6 import triton_wkv6 as serial  # noqa: E402
from archdsl.kernels.wkv6 import triton_wkv6_chunked as chunked  # noqa: E402
from archdsl.kernels.wkv6 import op as wkv6_op  # noqa: E402
from archdsl.kernels.wkv6 import wkv6  # noqa: E402

BOUNDARY_BLOCKS = [(32, 32), (64, 32), (64, 64)]  # chunked.BLOCK_K, BLOCK_V


def rows_for(T: int, peer):
    B, H, K = 4, 32, 64
    r, k, v, w, u = xs = _wkv6_inputs(B, T, H, K)
    do, sc, C = torch.randn_like(v), K ** -0.5, chunked.CHUNK
    N = -(-T // C)
    timed = []

    def row(what, fn):
        timed.append(dict(T=T, what=what, ms=bench_or_nan(fn)))
        print(f"  T{T} {what:44} {timed[-1]['ms']:.3f} ms", flush=True)

    if peer:
        row("fla chunk_rwkv6 fwd", lambda: peer(*xs))
    row("serial fwd", lambda: serial.wkv6_fwd(r, k, v, w, u, sc, None, False))
    start = chunked.BLOCK_K, chunked.BLOCK_V
    for bk, bv in BOUNDARY_BLOCKS:
        chunked.BLOCK_K, chunked.BLOCK_V = bk, bv
        row(f"chunked boundary states BK{bk} BV{bv}", lambda: chunked.segment_states(k, v, w, None, False, C))
    chunked.BLOCK_K, chunked.BLOCK_V = start
    hs, _ = chunked.segment_states(k, v, w, None, False, C)
    for warps in (4, 8):
        row(f"chunked segments fwd, {warps} warps",
            lambda: serial.segments_fwd(r, k, v, w, u, sc, hs, N + 1, C, num_warps=warps))
    row("chunked fwd", lambda: chunked.wkv6_fwd(r, k, v, w, u, sc, None, False))
    row("serial bwd", lambda: serial.wkv6_bwd(r, k, v, w, u, sc, None, None, do, None))
    gs = torch.empty_like(hs[:-1])
    for warps in (4, 8):
        row(f"chunked segments bwd, reverse sweep {warps} warps",
            lambda: serial.segments_bwd(r, k, v, w, u, sc, do, hs, N + 1, hs[1:], gs, (N + 1, N), C, False,
                                        rev_warps=warps))
    row("chunked bwd", lambda: chunked.wkv6_bwd(r, k, v, w, u, sc, None, do, None))
    for impl in ("serial", "chunked"):
        row(f"{impl} fwd+bwd (autograd)", with_env("ARCHDSL_WKV6_IMPL", impl, _fwd_bwd(wkv6, xs)))
    if peer:
        row("fla chunk_rwkv6 fwd+bwd", _fwd_bwd(peer, xs))
    return timed


def layout_rows(Ts):
    """Both layouts where the default rule decides; each row says which one it picks."""
    timed = []
    for B in (1, 2, 4):
        for T in Ts:
            xs = _wkv6_inputs(B, T, 32, 64)
            pick = wkv6_op._default_impl(xs[0].shape, xs[2].shape[-1], xs[0].device)
            row = dict(B=B, T=T, default=pick)
            for impl in ("serial", "chunked"):
                with torch.no_grad():
                    row[f"{impl} fwd"] = bench_or_nan(with_env("ARCHDSL_WKV6_IMPL", impl, lambda: wkv6(*xs)))
                row[f"{impl} fwd+bwd"] = bench_or_nan(with_env("ARCHDSL_WKV6_IMPL", impl, _fwd_bwd(wkv6, xs)))
            best = min(("serial", "chunked"), key=lambda i: row[f"{i} fwd+bwd"])
            print(f"  B{B} T{T:5} default {pick:7} | serial fwd {row['serial fwd']:.3f} fwd+bwd "
                  f"{row['serial fwd+bwd']:.3f} | chunked fwd {row['chunked fwd']:.3f} fwd+bwd "
                  f"{row['chunked fwd+bwd']:.3f} ms | faster fwd+bwd: {best}", flush=True)
            timed.append(row)
    return timed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--T", type=positive_list,
                    help="comma-separated sequence lengths (4096,16384; --layouts: 1024,2048,4096,16384)")
    ap.add_argument("--no-peer", action="store_true", help="leave fla out (its autotuning takes minutes)")
    ap.add_argument("--layouts", action="store_true", help="check the default layout rule (see above)")
    ap.add_argument("--json")
    args = ap.parse_args()
    needs_cuda()
    if args.layouts:
        Ts = args.T or [1024, 2048, 4096, 16384]
        out = {"card": torch.cuda.get_device_name(), "layouts": layout_rows(Ts)}
        if args.json:
            save_json(args.json, out)
        return 0
    peer = None
    if not args.no_peer:
        try:
            from fla.ops.rwkv6 import chunk_rwkv6 as peer
        except ImportError:
            print("fla is not installed: its rows are left out")
    out = {"card": torch.cuda.get_device_name(), "rows": []}
    for T in args.T or [4096, 16384]:
        out["rows"] += rows_for(T, peer)
        if args.json:
            save_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
