"""Launch choices of the Mamba-2 decode kernels, timed where they run: inside the graphed decode
step of 48×mamba2 at d 2048 (mamba2-1.3b), batch 1, every fusion on.

    python benchmarks/step_configs.py [--json FILE]

Rows: the step with "pdl" on and off (twice each: the spread of two passes is the noise floor of
the rest), then the Mamba-2 step kernel's head-dim block × warps (triton_fused_step.BLOCK_P, WARPS)
and the norm GEMV's rows per program × warps (triton_norm_gemv.BLOCK_R, WARPS), one swept with
the other at its default. A kernel timed alone (do_bench) is launch-bound at these sizes (8 µs of
work under ~20 µs of launch), so the figure is the graphed step's: the median of CUDA-event times
over 200 replays (fusions.time_step). Nothing is changed on disk; the best is printed.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fusions as F  # noqa: E402
from _bench import needs_cuda, save_json  # noqa: E402

from archdsl.kernels.fused_step import triton_fused_step as step_kernel  # noqa: E402
from archdsl.kernels.norm_gemv import triton_norm_gemv as gemv_kernel  # noqa: E402
from archdsl.model.fusions import FUSIONS  # noqa: E402

SWEEPS = {  # (module, its constants): candidates
    (step_kernel, ("BLOCK_P", "WARPS")): list(itertools.product((8, 16, 32), (1, 2, 4))),
    (gemv_kernel, ("BLOCK_R", "WARPS")): list(itertools.product((1, 2, 4, 8), (2, 4, 8))),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json")
    args = ap.parse_args()
    needs_cuda()
    model = F._decode_model(None)
    tok = torch.zeros(1, dtype=torch.long, device="cuda")
    every = set(FUSIONS)

    def step_ms(fuse=every):
        model.set_fuse(fuse)  # drops the captured graph: each row captures its own
        runner = model._graph_runner(1, 64)
        runner.cache.reset()
        return F.time_step(lambda: runner(tok), iters=200)

    rows = []

    def add(**row):
        print(row, flush=True)
        rows.append(row)
        if args.json:
            save_json(args.json, rows)

    for fuse in (every, every - {"pdl"}) * 2:
        add(kernel="default", pdl="pdl" in fuse, ms=step_ms(fuse))
    for (module, names), choices in SWEEPS.items():
        start = tuple(getattr(module, n) for n in names)
        for choice in choices:
            for n, v in zip(names, choice):
                setattr(module, n, v)
            try:
                add(kernel=module.__name__.rsplit(".", 1)[1], choice=dict(zip(names, choice)), ms=step_ms())
            except Exception as err:  # a choice that does not build is a row, not the end
                add(kernel=module.__name__.rsplit(".", 1)[1], choice=dict(zip(names, choice)), error=str(err)[:200])
        for n, v in zip(names, start):
            setattr(module, n, v)
        ok = [r for r in rows if "choice" in r and "ms" in r and set(r["choice"]) == set(names)
              and r["kernel"] == module.__name__.rsplit(".", 1)[1]]
        if ok:
            best = min(ok, key=lambda r: r["ms"])
            print(f"== {best['kernel']}: best {best['choice']} {best['ms']:.3f} ms (now {dict(zip(names, start))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
