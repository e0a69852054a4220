"""Each forward tile of the Mamba-1 selective scan, timed on the card.

    python benchmarks/scan_configs.py [--L 4096] [--json FILE]

Shape and inputs of benchmarks/kernels_selective_scan.py (B=4, D=5120, N=16, bf16, D, z,
delta_bias, softplus). For each tile of triton_selective_scan._FWD_CONFIGS: the forward without
checkpoints (inference) and with them (what training runs), the largest difference of its
output from the first tile's, and % of the bytes floor (kernels_selective_scan.py's, at the card's
rates). Each row is the median of triton.testing.do_bench; nothing is changed on disk.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench import bench_or_nan, floor_rates, needs_cuda, positive_list, rates_line, save_json  # noqa: E402
from kernels_selective_scan import _scan_floor, _scan_inputs  # noqa: E402

try:
    import archdsl  # noqa: F401
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from archdsl.kernels.selective_scan import triton_selective_scan as tss  # noqa: E402


def rows_for(L: int):
    t = _scan_inputs(L, False)
    bias = t["delta_bias"]
    args = (t["u"], t["delta"], t["A"], t["B"][:, None], t["C"][:, None], t["D"], t["z"], bias, None, True)
    floor, _ = _scan_floor(L, False)
    ref, out = None, []
    for cfg in tss._FWD_CONFIGS:
        tss.FWD_OVERRIDE = cfg
        try:
            y = tss.ss_fwd(*args, False)[0]
            diff = float("nan") if ref is None else (y.float() - ref).abs().max().item()
            ref = y.float() if ref is None else ref
            ms = bench_or_nan(lambda: tss.ss_fwd(*args, False))
            ms_ck = bench_or_nan(lambda: tss.ss_fwd(*args, True))
        except Exception as e:  # a tile that does not compile for this card
            print(f"  {cfg}: {type(e).__name__}: {str(e)[:160]}")
            continue
        finally:
            tss.FWD_OVERRIDE = None
        out.append(dict(L=L, tile=list(cfg), ms=ms, ms_checkpoints=ms_ck, max_diff=diff,
                        pct_floor=100 * floor / ms))
        print(f"  L{L} {str(cfg):28} {ms:7.3f} ms  with checkpoints {ms_ck:7.3f} ms  "
              f"{100 * floor / ms:5.1f}% of floor  max|Δ| vs first {diff:.2e}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--L", type=positive_list, default=[4096], help="comma-separated sequence lengths")
    ap.add_argument("--json")
    args = ap.parse_args()
    needs_cuda()
    print(rates_line(), flush=True)
    result = {"card": torch.cuda.get_device_name(), "floor_rates": floor_rates()._asdict(), "rows": []}
    for L in args.L:
        result["rows"] += rows_for(L)
        if args.json:
            save_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
