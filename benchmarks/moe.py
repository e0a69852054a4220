"""The MoE FFN on the card: its experts one at a time against two grouped GEMMs (torch._grouped_mm), bf16.

    python benchmarks/moe.py [--json FILE] [--quick]

Jamba-v0.1's MoE layer (d 4096, 16 experts of SwiGLU width 14336, top-2), built from archdsl's block registry.
Rows: the forward and forward+backward over T tokens (do_bench median, called plainly as a model's forward
calls it), and one decode step of 1, 4 and 16 tokens eager and replayed from a CUDA graph. With the loop, a
graph captures the gathered form (each token's k expert matrices copied, then two batched products); with the
grouped GEMMs, the same code as eager wherever that copy would pass moe.GATHER_BYTES (every row here). Each row gives the floor: the FLOPs of T·k assignments
(3 · 2 · d · width each; 3× for forward+backward) at ~680 TFLOP/s, or for decode the bytes of the chosen experts'
weights at the card's bandwidth (benchmarks/_bench.py: the H200's 4.2 TB/s, an H100's 2.93) where that is larger,
and how far the two paths' outputs lie apart (|a - b| / |b| over the whole output).
"""
from __future__ import annotations

import argparse
import sys
from unittest.mock import patch

import torch
from _bench import bench_ms, floor_ms, graphed, needs_cuda, rates_line, save_json

from archdsl.blocks import make_config
from archdsl.model.modules import MODULES, moe

D, JAMBA = 4096, dict(experts=16, top_k=2, hidden=14336)


def build():
    torch.manual_seed(0)
    with torch.device("cuda"):  # 2.8B parameters: made and initialised on the card
        return MODULES["moe"](make_config("moe", JAMBA, D)).to(torch.bfloat16)


GROUPED_OK = moe.grouped_ok
PATHS = {"loop": False, "grouped": True}


def path(grouped: bool):
    """The experts one at a time (grouped False) or by grouped GEMMs where they apply."""
    return patch.object(moe, "grouped_ok", lambda *a: grouped and GROUPED_OK(*a))


def layer_ms(m, x, grouped: bool, bwd: bool) -> float:
    def call():
        if bwd:
            x.grad = None
            m.zero_grad(set_to_none=True)
            m(x).float().square().mean().backward()
        else:
            with torch.no_grad():
                m(x)
    with path(grouped):
        return bench_ms(call)


def step_ms(m, xs, grouped: bool, graph: bool) -> float:
    call = lambda: m.step(xs)
    with path(grouped), torch.no_grad():
        return bench_ms(graphed(call) if graph else call)


def rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def rows(quick=False):
    m = build()
    d, width, k = D, JAMBA["hidden"], JAMBA["top_k"]
    per = 3 * 2 * d * width  # FLOPs of one token-expert assignment
    expert_bytes = 3 * d * width * 2
    for T in ([4096] if quick else [4096, 16384]):
        x = torch.randn(1, T, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        with torch.no_grad():
            outs = {}
            for name, grouped in PATHS.items():
                with path(grouped):
                    outs[name] = m(x)
        for bwd in (False, True):
            times = {name: layer_ms(m, x, grouped, bwd) for name, grouped in PATHS.items()}
            flops = T * k * per * (3 if bwd else 1)
            yield dict(case=f"T={T}", mode="fwd+bwd" if bwd else "fwd", loop_ms=times["loop"],
                       grouped_ms=times["grouped"], floor_ms=floor_ms(0, flops),
                       rel_diff=rel(outs["grouped"], outs["loop"]))
    for T in (1, 4, 16):
        xs = torch.randn(T, d, device="cuda", dtype=torch.bfloat16)
        with torch.no_grad():
            chosen = len(set(m.route(xs)[2].flatten().tolist()))
        for graph in (False, True):
            yield dict(case=f"step T={T}" + (" graph" if graph else ""), mode="decode",
                       loop_ms=step_ms(m, xs, False, graph), grouped_ms=step_ms(m, xs, True, graph),
                       floor_ms=floor_ms(chosen * expert_bytes, T * k * per),
                       rel_diff=float("nan"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    needs_cuda()
    out = []
    print(rates_line())
    print(f"{'case':18} {'mode':8} {'loop ms':>9} {'grouped ms':>11} {'ratio':>6} {'floor ms':>9} {'% floor':>8} "
          f"{'rel diff':>9}")
    for r in rows(args.quick):
        out.append(r)
        print(f"{r['case']:18} {r['mode']:8} {r['loop_ms']:9.3f} {r['grouped_ms']:11.3f} "
              f"{r['grouped_ms'] / r['loop_ms']:6.2f} {r['floor_ms']:9.3f} {100 * r['floor_ms'] / r['grouped_ms']:7.1f}% "
              f"{r['rel_diff']:9.2e}", flush=True)
        if args.json:
            save_json(args.json, out)


if __name__ == "__main__":
    sys.exit(main())
