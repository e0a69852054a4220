"""The Gluon selective-scan forward or backward with one program a chain and with persistent programs, over
channel counts.

    python benchmarks/scan_balance.py [--pass fwd|bwd] [--L 4096] [--N 16] [--dims 1024,2560,...] [--json FILE]

A chain is (channel block, batch row) over all L steps; each kernel runs one one-warp program a chain, or, where
that loads the GPU unevenly, persistent programs that take segments of chains from a counter: the forward where the
schedulers would get uneven numbers of programs (`gluon_selective_scan._persist`; as many programs a scheduler as
the chains fill, `_programs`), the backward where the last wave of programs would be short or, under one wave, the
schedulers uneven (`_persist_bwd`). For each channel count D (B=4, N states (16 unless --N says), bf16, D, z,
delta_bias, softplus, as benchmarks/kernels_selective_scan.py): the load (forward: programs a scheduler; backward:
waves), both versions' times (median of triton.testing.do_bench), which one the rule picks, and how their results
compare: the forward's bit for bit, the backward's as the largest difference of any gradient relative to its norm
(dB and dC are atomic sums in any order).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from _bench import needs_cuda, positive, positive_list, save_json
from triton.testing import do_bench

try:
    import archdsl  # noqa: F401
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from archdsl.kernels.selective_scan import gluon_selective_scan as gss  # noqa: E402
from archdsl.kernels.selective_scan.triton_selective_scan import CK  # noqa: E402

BATCH = 4


def row_for(L: int, dim: int, which: str, N: int = 16) -> dict:
    dev, bf = "cuda", torch.bfloat16
    torch.manual_seed(0)
    u, delta = torch.randn(BATCH, dim, L, device=dev, dtype=bf), torch.randn(BATCH, dim, L, device=dev, dtype=bf) * 0.5 - 2
    A, D, bias = -torch.rand(dim, N, device=dev) * 8 - 0.5, torch.randn(dim, device=dev), torch.randn(dim, device=dev) * 0.1
    B4, C4 = (torch.randn(BATCH, 1, N, L, device=dev, dtype=bf) for _ in range(2))
    z = torch.randn(BATCH, dim, L, device=dev, dtype=bf)
    sms = gss._sms(u.device)  # both rules take the SMs
    if which == "fwd":  # a round is a program on each of their 4 schedulers
        rule_name, block_d, per_round = "_persist", gss._tile_for(N)[3], 4 * sms
        args = (u, delta, A, B4, C4, D, z, bias, None, True, False)
        run = lambda: gss.ss_fwd_gluon(*args, CK=CK)
    else:  # a round is a wave of the programs resident at once
        rule_name, block_d, per_round = "_persist_bwd", gss._bwd_tile_for(N)[1], gss._bwd_slots(sms)
        _, _, ck = gss.ss_fwd_gluon(u, delta, A, B4, C4, D, z, bias, None, True, True, CK=CK)
        args = (u, delta, A, B4, C4, D, z, bias, ck, torch.randn_like(u), None, True)
        run = lambda: gss.ss_bwd_gluon(*args, CK=CK)
    chains = BATCH * -(-dim // block_d)
    rule = getattr(gss, rule_name)
    row = dict(L=L, D=dim, N=N, load=round(chains / per_round, 2))
    outs = {}
    try:
        for name, persist in (("one_a_chain", False), ("persistent", True)):
            setattr(gss, rule_name, lambda nchain, n, _p=persist: _p)
            outs[name] = run()
            row[f"{name}_ms"] = do_bench(run, warmup=25, rep=200, return_mode="median")
    finally:
        setattr(gss, rule_name, rule)
    row["rule_picks"] = "persistent" if rule(chains, sms) else "one_a_chain"
    pairs = [(a, b) for a, b in zip(outs["one_a_chain"], outs["persistent"]) if a is not None]
    if which == "fwd":
        row["agree"] = "identical" if all(torch.equal(a, b) for a, b in pairs) else "DIFFER"
    else:
        row["agree"] = f"{max(((a.float() - b.float()).norm() / a.float().norm()).item() for a, b in pairs):.1e}"
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pass", dest="which", choices=("fwd", "bwd"), default="fwd")
    ap.add_argument("--L", type=positive, default=4096)
    ap.add_argument("--N", type=positive, default=16, help="states a channel")
    ap.add_argument("--dims", type=positive_list, default=[1024, 2560, 3168, 4608, 5120, 6336, 7168])
    ap.add_argument("--json", help="also write the rows to this file")
    a = ap.parse_args()
    needs_cuda("it times the Gluon kernels")
    if not gss.HAVE_GLUON:
        sys.exit("scan_balance.py times the Gluon kernels: it needs a Triton with Gluon")
    load = "a sched" if a.which == "fwd" else "waves"
    print(f"{'L':>6} {'D':>6} {'N':>3} {load:>8} {'one a chain ms':>15} {'persistent ms':>14} {'rule picks':>12} agree")
    rows = []
    for dim in a.dims:
        r = row_for(a.L, dim, a.which, a.N)
        rows.append(r)
        print(f"{r['L']:>6} {r['D']:>6} {r['N']:>3} {r['load']:>8} {r['one_a_chain_ms']:>15.4f} "
              f"{r['persistent_ms']:>14.4f} {r['rule_picks']:>12} {r['agree']}", flush=True)
    if a.json:
        save_json(a.json, rows)


if __name__ == "__main__":
    main()
