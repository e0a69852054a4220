"""`model.generate` end to end on the GPU: prefill, then each token sampled and stepped, from the CUDA graph and
eagerly, with the sampling's finite check read every CHECK_EVERY steps (what generate does on a card) against
once a token (a wait for the device each step, as before it was deferred).

    python benchmarks/generate.py [--specs specs/mamba-130m.yaml,specs/demo-jamba.yaml] [--batch 1,8]
                                  [--prompt 128] [--gen 256] [--iters 5] [--json out.json]

bf16 weights, random prompts, temperature 1 with top_k 50, no eos (every step runs). Reported: the wall ms of a
whole generate call (torch.cuda.synchronize around it; the smaller of two medians of --iters calls, the two
checks alternating in one process) and the new tokens a second; the ratio is the each-step check's time over the
deferred one's.
"""
from __future__ import annotations

import argparse
import os

import torch
from _bench import fail, needs_cuda, positive, positive_list, save_json, wall_ms

import archdsl
from archdsl.model import decoding

SPECS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "specs")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--specs", default=",".join(os.path.join(SPECS, n) for n in ("mamba-130m.yaml", "demo-jamba.yaml")),
                   help="comma-separated spec files (default: the repository's mamba-130m and demo-jamba)")
    p.add_argument("--batch", type=positive_list, default=[1, 8], help="comma-separated batch sizes")
    p.add_argument("--prompt", type=positive, default=128, help="prompt tokens")
    p.add_argument("--gen", type=positive, default=256, help="new tokens")
    p.add_argument("--iters", type=positive, default=5, help="calls a median is taken over")
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args()
    specs = args.specs.split(",")
    for path in specs:
        if not os.path.isfile(path):
            fail(f"--specs: {path}: no such spec file")
    needs_cuda()
    print(f"{torch.cuda.get_device_name()}, bf16, prompt {args.prompt}, {args.gen} new tokens, temperature 1, "
          f"top_k 50")
    print(f"{'spec':<24}{'graph':>6}{'batch':>6}{'each step ms':>14}{'deferred ms':>13}{'tok/s':>10}{'ratio':>7}")
    rows = []
    for path in specs:
        rows += bench_spec(path, args)
        torch.cuda.empty_cache()
    if args.json:
        save_json(args.json, rows)


def bench_spec(path: str, args) -> list[dict]:
    """One spec's rows: each graph mode and batch, the two checks alternated."""
    deferred = decoding.defers
    model = archdsl.compile(path, device="cuda", dtype=torch.bfloat16, seed=0)
    rows = []
    for graph in (True, False):
        model.cuda_graph = graph
        for batch in args.batch:
            ids = torch.randint(0, model.spec.vocab_size, (batch, args.prompt), device="cuda",
                                generator=torch.Generator("cuda").manual_seed(0))
            run = lambda: model.generate(ids, args.gen, temperature=1.0, top_k=50, seed=0)  # noqa: E731
            ms = {}
            for name, rule in (("each", lambda *a: False), ("deferred", deferred)) * 2:  # alternated
                decoding.defers = rule
                ms.setdefault(name, []).append(wall_ms(run, args.iters, torch.cuda.synchronize, warmup=1))
            decoding.defers = deferred
            each, late = min(ms["each"]), min(ms["deferred"])
            rows.append(dict(spec=path, graph=graph, batch=batch, each_ms=each, deferred_ms=late,
                             tokens_per_s=batch * args.gen / late * 1e3, ratio=each / late))
            print(f"{model.spec.name:<24}{'yes' if graph else 'no':>6}{batch:>6}{each:>14.1f}{late:>13.1f}"
                  f"{batch * args.gen / late * 1e3:>10.0f}{each / late:>7.2f}")
    return rows


if __name__ == "__main__":
    main()
