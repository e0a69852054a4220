"""The chunked SSD forward with its chunk scan beside the state pass (triton_ssd_chunked.OVERLAP) or after
it, on the card: time, identical outputs, and races looked for.

    python benchmarks/ssd_overlap.py [--rounds 3] [--repeats 200] [--json FILE]

Shape B=4, L in {4096, 16384}, H=32, P=64, N=128, G=1, bf16 (benchmarks/kernels_ssd.py's), against
mamba_ssm in the same process (replayed from a graph each round; ratios to its best round). Each variant (OVERLAP off / on, and the chunk scan's register cap, which
decides whether one of its blocks fits on an SM beside a state-pass block) is replayed from a CUDA graph
and called from Python, the variants alternated over rounds. Then, overlapped: `repeats` forwards in a
row must each give the very outputs of the forward without overlap (y and the final state, bit for bit),
at 4K in bf16, with seq_idx, and in float32 (whose state pass runs two programs per head).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench import bench_ms  # noqa: E402
from kernels_ssd import _graphed, _inputs, _peer, _scan_fn  # noqa: E402

from archdsl.kernels.ssd import ssd_scan  # noqa: E402
from archdsl.kernels.ssd import triton_ssd_chunked as chunked  # noqa: E402

VARIANTS = {  # name: (OVERLAP, the chunk scan's register cap)
    "after": (False, 168),
    "beside, cap 168": (True, 168),
    "beside, cap 160": (True, 160),
    "beside, cap 152": (True, 152),
}


def _set(overlap: bool, cap: int) -> None:
    chunked.OVERLAP = overlap
    chunked.CONFIG["scan"] = chunked.CONFIG["scan"][:4] + (cap,)


def _call(t, **kw):
    return ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], D=t["D"], dt_bias=t["dt_bias"], dt_softplus=True,
                    return_final_states=True, **kw)


def timings(L: int, rounds: int):
    t = _inputs(4, L)
    peer = _peer()
    scan = _scan_fn(lambda *a, **k: ssd_scan(*a[:5], chunk_size=a[5], **k), t, False)
    rows = {name: {"graph": [], "plain": []} for name in VARIANTS}
    peer_graph = []
    for _ in range(rounds):
        peer_graph.append(bench_ms(_graphed(_scan_fn(peer, t, False))))
        for name, (overlap, cap) in VARIANTS.items():
            _set(overlap, cap)
            rows[name]["graph"].append(bench_ms(_graphed(scan)))
            rows[name]["plain"].append(bench_ms(scan))
    _set(*VARIANTS["after"])
    return peer_graph, rows


def races(repeats: int) -> list[str]:
    """Overlapped forwards, one after the other, against the forward without overlap: what differed."""
    bad = []
    for what in ("bf16", "seq_idx", "float32"):
        t = _inputs(4, 4096)
        kw = {}
        if what == "float32":
            t = {k: v.float() if v.dtype == torch.bfloat16 else v for k, v in t.items()}
        if what == "seq_idx":
            kw["seq_idx"] = torch.sort(torch.randint(0, 5, (4, 4096), device="cuda"), dim=1).values.int()
        _set(False, 168)
        y0, h0 = _call(t, **kw)
        _set(True, 160)
        differ = sum(not (torch.equal(y, y0) and torch.equal(h, h0)) for y, h in (_call(t, **kw) for _ in range(repeats)))
        print(f"{what}: {differ} of {repeats} overlapped forwards differ from the forward without overlap", flush=True)
        if differ:
            bad.append(what)
    _set(*VARIANTS["after"])
    return bad


def resources() -> dict:
    """Registers, spills, shared memory and warps of each compiled state pass and chunk scan."""
    out = {}
    for fn in (chunked._state_pass, chunked._chunk_scan):
        for caches in getattr(fn, "device_caches", {}).values():
            for key, k in caches[0].items():
                out.setdefault(fn.__name__, []).append(dict(regs=k.n_regs, spills=k.n_spills, shared=k.metadata.shared,
                                                            warps=k.metadata.num_warps))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--json")
    args = ap.parse_args()
    result = {"races": races(args.repeats)}
    for L in (4096, 16384):
        peer_graph, rows = timings(L, args.rounds)
        peer = min(peer_graph)
        print(f"L {L}: mamba_ssm graph {peer:.4f} ms, rounds {[round(v, 4) for v in peer_graph]}", flush=True)
        for name, r in rows.items():
            g, p = min(r["graph"]), min(r["plain"])
            print(f"  {name:18} graph {g:.4f} ms ({g / peer:.3f} of the peer's best)  plain {p:.4f}  "
                  f"rounds {[round(v, 4) for v in r['graph']]}", flush=True)
        result[L] = dict(peer_graph=peer_graph, rows=rows)
    result["resources"] = resources()
    for name, ks in result["resources"].items():
        print(name, ks)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 1 if result["races"] else 0


if __name__ == "__main__":
    sys.exit(main())
