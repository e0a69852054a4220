"""Time every archdsl kernel against its peer in one run (bf16, one GPU) and print one table.

    python benchmarks/kernels.py [--quick] [--json out.json]
    python benchmarks/kernels.py --only kernels_ssd_float32   # float32 SSD under each matmul precision (not in the default run)

Each op's script (benchmarks/kernels_<op>.py) measures ours and the peer with
triton.testing.do_bench (median) in the same process and gives rows
{op, shape, mode, ours_ms, peer, peer_ms, floor_ms, floor_note}. Ratios are ours/peer:
below 1 is faster than the peer. The floor is max(bytes / bandwidth, FLOPs / tensor-core rate) at the card's rates
(benchmarks/_bench.py: the H200's 4.2 TB/s and ~680 TFLOP/s bf16, an H100 SXM's 2.93 TB/s and the same FLOP/s,
the H200's on any other card), each tensor moved once; the line above the table names the card and the rates.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench import fail, needs_cuda, rates_line, save_json  # noqa: E402

OPS = ["kernels_ssd", "kernels_wkv6", "kernels_selective_scan", "kernels_norm_gemv"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the smaller shapes only")
    ap.add_argument("--only", help="comma-separated op scripts, e.g. kernels_ssd")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else OPS
    for name in names:
        if not (name.startswith("kernels_") and os.path.isfile(os.path.join(os.path.dirname(__file__), name + ".py"))):
            fail(f"--only {name!r}: not an op script (benchmarks/kernels_*.py, e.g. {', '.join(OPS)})")
    needs_cuda()
    import torch

    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(rates_line())
    head = f"{'op':<22} {'shape':<34} {'mode':<8} {'ours ms':>9} {'peer':<22} {'peer ms':>9} {'ratio':>6} {'floor ms':>9} {'%floor':>7}"
    print(head + "\n" + "-" * len(head), flush=True)
    rows = []
    for name in names:
        try:
            for r in importlib.import_module(name).rows(quick=args.quick):  # rows print as they are measured
                print(_line(r), flush=True)
                rows.append(r)
                _dump(args.json, rows)
        except Exception:  # one op's failure must not hide the others' figures
            traceback.print_exc()
            rows.append({"op": name, "shape": "-", "mode": "FAILED", "ours_ms": float("nan")})
            _dump(args.json, rows)


def main_of(op: str, doc: str, quick: str) -> None:
    """The entry point of one op's script: `kernels.py --only OP [--quick] [--json FILE]`, its --help taken from
    the script's docstring and what its --quick keeps."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                 epilog=f"The same as kernels.py --only {op} [--quick] [--json FILE].")
    ap.add_argument("--quick", action="store_true", help=quick)
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    main(["--only", op] + (["--quick"] if args.quick else []) + (["--json", args.json] if args.json else []))


def _dump(path, rows):
    """After every row, so a run cut short keeps what it measured."""
    if path:
        save_json(path, rows)


def _line(r: dict) -> str:
    ours, peer, floor = r.get("ours_ms"), r.get("peer_ms"), r.get("floor_ms")
    ratio = f"{ours / peer:.2f}" if ours and peer else "-"
    pct = f"{100 * floor / ours:.0f}%" if ours and floor else "-"
    return (f"{r['op']:<22} {str(r['shape']):<34} {r['mode']:<8} {_ms(ours)} {str(r.get('peer') or '-'):<22} "
            f"{_ms(peer)} {ratio:>6} {_ms(floor)} {pct:>7}"
            + (f"  Δ vs peer {r['rel_diff']:.1e} ({r.get('rel_diff_of', '‖Δ‖/‖peer‖')})" if "rel_diff" in r else ""))


def _ms(x) -> str:
    return f"{x:9.3f}" if isinstance(x, (int, float)) and x == x else f"{'-':>9}"


if __name__ == "__main__":
    main()
