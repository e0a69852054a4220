"""A/B of one module constant of the chunked SSD kernels on the card, against mamba_ssm in the same process.

    python benchmarks/ssd_ab.py CHAIN=True,False [--L 4096,16384] [--rounds 3] [--json FILE]

Shape B=4, L, H=32, P=64, N=128, G=1, bf16, D and dt_bias with softplus (benchmarks/kernels_ssd.py's).
Each value of the constant (a Python literal) is set on archdsl.kernels.ssd.triton_ssd_chunked in turn
and the forward replayed from a CUDA graph (the GPU's time alone), the values alternated over rounds and
mamba_ssm timed once a round; each value's best round is printed with its ratio to the peer's best, and
its y against the first value's (max |difference| / max |y|) and against the peer's.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench import bench_ms  # noqa: E402
from kernels_ssd import _graphed, _inputs, _peer, _rel_diff, _scan_fn, _y  # noqa: E402

from archdsl.kernels.ssd import ssd_scan  # noqa: E402
from archdsl.kernels.ssd import triton_ssd_chunked as chunked  # noqa: E402


def ab(name: str, values: list, L: int, rounds: int) -> dict:
    t = _inputs(4, L)
    peer = _peer()
    ours = lambda *a, **k: ssd_scan(*a[:5], chunk_size=a[5], **k)  # noqa: E731
    old = getattr(chunked, name)
    times = {repr(v): [] for v in values}
    peer_ms, ys = [], {}
    try:
        for _ in range(rounds):
            peer_ms.append(bench_ms(_graphed(_scan_fn(peer, t, False))) if peer else float("nan"))
            for v in values:
                setattr(chunked, name, v)
                times[repr(v)].append(bench_ms(_graphed(_scan_fn(ours, t, False))))
                ys.setdefault(repr(v), _y(ours, t))
    finally:
        setattr(chunked, name, old)
    y_peer = _y(peer, t) if peer else None
    first = ys[repr(values[0])]
    return {k: dict(ms=min(v), rounds=v, ratio=min(v) / min(peer_ms), vs_first=_rel_diff(ys[k], first),
                    vs_peer=_rel_diff(ys[k], y_peer) if peer else None)
            for k, v in times.items()} | {"peer": dict(ms=min(peer_ms), rounds=peer_ms)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("setting", help="NAME=V1,V2,...: a module constant of triton_ssd_chunked and its values")
    ap.add_argument("--L", default="4096,16384")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    name, _, vals = args.setting.partition("=")
    if not hasattr(chunked, name):
        ap.error(f"{name}: triton_ssd_chunked has no such constant")
    values = [ast.literal_eval(v) for v in vals.split(",")]
    out = {}
    for L in map(int, args.L.split(",")):
        out[L] = r = ab(name, values, L, args.rounds)
        print(f"L {L}: mamba_ssm {r['peer']['ms']:.4f} ms (rounds {[round(v, 4) for v in r['peer']['rounds']]})",
              flush=True)
        for k, v in r.items():
            if k != "peer":
                print(f"  {name}={k:10} {v['ms']:.4f} ms  ratio {v['ratio']:.3f}  rounds "
                      f"{[round(x, 4) for x in v['rounds']]}  y vs first {v['vs_first']:.1e}  vs peer "
                      f"{v['vs_peer']:.1e}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
