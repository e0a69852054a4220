"""The Gluon selective-scan forward with one program a chain and with persistent programs, over channel counts.

    python benchmarks/scan_balance.py [--L 4096] [--dims 1024,2560,3168,4608,5120,6336,7168] [--json FILE]

A chain is (channel block, batch row) over all L steps; the forward runs one one-warp program a chain, or,
where that loads the GPU's schedulers unevenly (`gluon_selective_scan._persist`), persistent programs that
take segments of chains from a counter. For each channel count D (B=4, N=16, bf16, D, z, delta_bias,
softplus, as benchmarks/kernels_selective_scan.py): programs a scheduler, both versions' times (median of
triton.testing.do_bench), which one the rule picks, and whether their outputs are bit for bit the same.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from triton.testing import do_bench

try:
    import archdsl  # noqa: F401
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from archdsl.kernels.selective_scan import gluon_selective_scan as gss  # noqa: E402
from archdsl.kernels.selective_scan.triton_selective_scan import CK  # noqa: E402

BATCH, N = 4, 16


def row_for(L: int, dim: int) -> dict:
    dev, bf = "cuda", torch.bfloat16
    torch.manual_seed(0)
    args = (torch.randn(BATCH, dim, L, device=dev, dtype=bf), torch.randn(BATCH, dim, L, device=dev, dtype=bf) * 0.5 - 2,
            -torch.rand(dim, N, device=dev) * 8 - 0.5, torch.randn(BATCH, 1, N, L, device=dev, dtype=bf),
            torch.randn(BATCH, 1, N, L, device=dev, dtype=bf), torch.randn(dim, device=dev),
            torch.randn(BATCH, dim, L, device=dev, dtype=bf), torch.randn(dim, device=dev) * 0.1, None, True, False)
    _, _, _, block_d = gss._tile_for(N)
    chains = BATCH * -(-dim // block_d)
    sms = gss._sms(torch.device(dev))
    rule, row = gss._persist, dict(L=L, D=dim, programs_a_scheduler=round(chains / (4 * sms), 2))
    outs = {}
    try:
        for name, persist in (("one_a_chain", False), ("persistent", True)):
            gss._persist = lambda nchain, sms, _p=persist: _p
            outs[name] = gss.ss_fwd_gluon(*args, CK=CK)
            row[f"{name}_ms"] = do_bench(lambda: gss.ss_fwd_gluon(*args, CK=CK), warmup=25, rep=200,
                                         return_mode="median")
    finally:
        gss._persist = rule
    row["rule_picks"] = "persistent" if rule(chains, sms) else "one_a_chain"
    row["identical"] = all(torch.equal(a, b) for a, b in zip(outs["one_a_chain"], outs["persistent"]))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--L", type=int, default=4096)
    ap.add_argument("--dims", default="1024,2560,3168,4608,5120,6336,7168")
    ap.add_argument("--json", help="also write the rows to this file")
    a = ap.parse_args()
    if not torch.cuda.is_available() or not gss.HAVE_GLUON:
        sys.exit("scan_balance.py times the Gluon forward: it needs a CUDA GPU and a Triton with Gluon")
    print(f"{'L':>6} {'D':>6} {'a sched':>8} {'one a chain ms':>15} {'persistent ms':>14} {'rule picks':>12} identical")
    rows = []
    for dim in (int(d) for d in a.dims.split(",")):
        r = row_for(a.L, dim)
        rows.append(r)
        print(f"{r['L']:>6} {r['D']:>6} {r['programs_a_scheduler']:>8} {r['one_a_chain_ms']:>15.4f} "
              f"{r['persistent_ms']:>14.4f} {r['rule_picks']:>12} {r['identical']}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
