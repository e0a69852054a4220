"""A/B of module constants of the chunked SSD kernels on the card, against mamba_ssm in the same process.

    python benchmarks/ssd_ab.py VARIANT [VARIANT ...] [--L 4096,16384] [--head H,P,N,G] [--rounds 3] [--bwd] [--plain]
                                [--json FILE]
    e.g.  ssd_ab.py CHAIN=False CHAIN=True
          ssd_ab.py "CHAIN=True" "CONFIG['scan']=(64, 64, 4, 2, 128)" "STATE_PASS=(64, 128, 8, 2); CHAIN=False"
          ssd_ab.py GLUON_SCAN=False GLUON_SCAN=True --L 4096 --head 16,128,64,2

A variant is one or more assignments NAME=LITERAL or NAME[KEY]=LITERAL (a dict entry), separated by ';',
to constants of archdsl.kernels.ssd.triton_ssd_chunked, set for that variant only. Shape B=4, L, H=32,
P=64, N=128, G=1 (--head sets H, P, N, G), bf16, D and dt_bias with softplus (benchmarks/kernels_ssd.py's).
Each variant's forward (with --bwd also its forward+backward) is replayed from a CUDA graph (the GPU's time
alone; --plain adds the forward called plainly and the host's time a call at a small shape), the variants
alternated over rounds and mamba_ssm timed once a round; each variant's best round is printed with its
ratio to the peer's best, and its y against the first variant's (max |difference| / max |y|) and the peer's.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import os
import re
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench import bench_ms, fail, graphed, needs_cuda, positive, positive_list, save_json  # noqa: E402
from kernels_ssd import _inputs, _peer, _rel_diff, _scan_fn, _y  # noqa: E402

from archdsl.kernels.ssd import ssd_scan  # noqa: E402
from archdsl.kernels.ssd import triton_ssd_chunked as chunked  # noqa: E402

_ASSIGN = re.compile(r"\s*(\w+)\s*(?:\[(.+)\])?\s*=(.+)")


def parse(variant: str) -> list[tuple[str, object, object]]:
    """'A=1; B[k]=(2, 3)' -> [(A, None, 1), (B, k, (2, 3))], each name checked to be a module constant; else
    exit 2."""
    out = []
    for part in filter(str.strip, variant.split(";")):
        m = _ASSIGN.fullmatch(part)
        try:
            if not m or not hasattr(chunked, m[1]):
                raise ValueError
            out.append((m[1], ast.literal_eval(m[2]) if m[2] else None, ast.literal_eval(m[3].strip())))
        except (ValueError, TypeError, SyntaxError):
            fail(f"{part!r}: expected NAME=LITERAL or NAME[KEY]=LITERAL, NAME a constant of triton_ssd_chunked")
    return out


@contextlib.contextmanager
def applied(assignments):
    """The module's constants set as assignments say, restored afterwards."""
    saved = []
    try:
        for name, key, value in assignments:
            target = getattr(chunked, name)
            if key is None:
                saved.append((name, None, target))
                setattr(chunked, name, value)
            else:
                saved.append((name, key, target.get(key, KeyError)))
                target[key] = value
        yield
    finally:
        for name, key, old in reversed(saved):
            if key is None:
                setattr(chunked, name, old)
            elif old is KeyError:
                del getattr(chunked, name)[key]
            else:
                getattr(chunked, name)[key] = old


def host_ms(fn, calls: int = 200) -> float:
    """Mean ms a call of fn over `calls` calls in a row, synchronized once at the end: at a small shape, the
    time the host takes to launch the forward."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / calls * 1e3


def ab(variants: list[str], L: int, rounds: int, bwd: bool, plain: bool, head: dict) -> dict:
    t, tg = _inputs(4, L, **head), (_inputs(4, L, grad=True, **head) if bwd else None)
    small = _inputs(1, 256, H=8)
    peer = _peer()
    ours = lambda *a, **k: ssd_scan(*a[:5], chunk_size=a[5], **k)  # noqa: E731
    timed = [("fwd", lambda f: bench_ms(graphed(_scan_fn(f, t, False))))]
    timed += [("fwd+bwd", lambda f: bench_ms(graphed(_scan_fn(f, tg, True))))] if bwd else []
    timed += [("fwd plain", lambda f: bench_ms(_scan_fn(f, t, False))),
              ("host B1 L256 H8", lambda f: host_ms(_scan_fn(f, small, False)))] if plain else []
    times = {(v, p): [] for v in variants for p, _ in timed}
    peer_ms = {p: [] for p, _ in timed}
    ys = {}
    for _ in range(rounds):
        for p, run in timed:
            peer_ms[p].append(run(peer) if peer else float("nan"))
        for v in variants:
            with applied(parse(v)):
                for p, run in timed:
                    times[v, p].append(run(ours))
                ys.setdefault(v, _y(ours, t))
    y_peer = _y(peer, t) if peer else None
    first = ys[variants[0]]
    out = {p: dict(ms=min(v), rounds=v) for p, v in peer_ms.items()}
    return {"peer": out, "variants": [
        dict(variant=v, vs_first=_rel_diff(ys[v], first), vs_peer=_rel_diff(ys[v], y_peer) if peer else None,
             **{p: dict(ms=min(times[v, p]), rounds=times[v, p], ratio=min(times[v, p]) / out[p]["ms"])
                for p, _ in timed})
        for v in variants]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", help="NAME=LITERAL[; NAME[KEY]=LITERAL ...], one argument a variant")
    ap.add_argument("--L", type=positive_list, default=[4096, 16384], help="comma-separated sequence lengths")
    ap.add_argument("--head", default="32,64,128,1", help="H,P,N,G")
    ap.add_argument("--rounds", type=positive, default=3)
    ap.add_argument("--bwd", action="store_true", help="also time forward+backward")
    ap.add_argument("--plain", action="store_true", help="also time the forward called plainly (with its launches) "
                    "and the host's time a call at B1 L256 H8")
    ap.add_argument("--json")
    args = ap.parse_args()
    for v in args.variants:
        parse(v)
    try:
        H, P, N, G = map(positive, args.head.split(","))
    except (ValueError, argparse.ArgumentTypeError):
        fail(f"--head {args.head!r}: expected four integers ≥ 1, H,P,N,G")
    needs_cuda()
    head = dict(H=H, P=P, N=N, G=G)
    out = {}
    for L in args.L:
        out[L] = r = ab(args.variants, L, args.rounds, args.bwd, args.plain, head)
        for p, pr in r["peer"].items():
            print(f"L {L} {p}: mamba_ssm {pr['ms']:.4f} ms (rounds {[round(x, 4) for x in pr['rounds']]})", flush=True)
            for v in r["variants"]:
                print(f"  {v['variant']:40} {v[p]['ms']:.4f} ms  ratio {v[p]['ratio']:.3f}  rounds "
                      f"{[round(x, 4) for x in v[p]['rounds']]}  y vs first {v['vs_first']:.1e}  vs peer "
                      f"{v['vs_peer'] if v['vs_peer'] is None else format(v['vs_peer'], '.1e')}", flush=True)
    if args.json:
        save_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
