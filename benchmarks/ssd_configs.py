"""Launch choices of the SSD Triton kernels, timed on the card: which sub-block, P block, warps,
stages and register cap each kernel should run with.

    python benchmarks/ssd_configs.py [--L 16384] [--only chunked|fused] [--kernels grads,group,...] [--json FILE]
    python benchmarks/ssd_configs.py --chunks 64,128,256 [--L 16384]   # the chunk length alone
    python benchmarks/ssd_configs.py --float32 [--only chunked] ...    # float32 inputs: the _32 choices
    python benchmarks/ssd_configs.py --float32 --tf32 ...              # the same under one TF32 product ("high")

Shape B=4, L, H=32, P=64, N=128, G=1, bf16, D and dt_bias with softplus (benchmarks/kernels_ssd.py's).
With --float32 the inputs are float32 and the chunked layout's float32 choices are swept (CONFIG_32,
STATE_PASS_32, DSTATE_PASS_32) over a shorter list, their tiles under the products' three TF32 ones;
with --tf32 too, under torch.set_float32_matmul_precision("high") (one TF32 product), the list joined by the
16-bit choices.
Chunked layout: the serial passes (STATE_PASS timed forward, DSTATE_PASS forward+backward), then
each kernel of triton_ssd_chunked.CONFIG, is swept alone with the others at their current choice,
forward (no autograd) for the forward kernels, forward+backward for the backward ones; then every
CONFIG kernel's best together. Fused layout: the forward and the backward kernel's P block, warps
and stages. Each row is the median of triton.testing.do_bench; ptxas register use is not
shown (python tests/kernels/sm90.py --regs prints it without a GPU). The best is printed as the
CONFIG to paste; nothing is changed on disk.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench import bench_ms, needs_cuda, positive, positive_list, save_json  # noqa: E402
from kernels_ssd import _inputs  # noqa: E402

try:
    import archdsl  # noqa: F401
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from archdsl.kernels.ssd import ssd_scan  # noqa: E402
from archdsl.kernels.ssd import triton_ssd as fused  # noqa: E402
from archdsl.kernels.ssd import triton_ssd_chunked as chunked  # noqa: E402

CHUNKED_CHOICES = {  # kernel: candidate (BT, BP, num_warps, num_stages, maxnreg)
    "scan": list(itertools.product((32, 64), (64,), (4, 8), (1, 2, 3), (None,)))
    + list(itertools.product((64,), (64,), (4,), (1, 2), (128, 168))),
    "grads": list(itertools.product((32, 64), (32, 64), (4, 8), (1, 2), (None,))),
    "group": list(itertools.product((32, 64), (64,), (4, 8), (1, 2), (None,))),
}
PASS_CHOICES = list(itertools.product((32, 64), (64, 128), (4, 8), (2, 3, 4)))  # the serial passes: BP, BN, warps, stages
CHUNKED_CHOICES_32 = {  # float32 tiles: twice the registers, so smaller or uncapped
    "scan": [(64, 64, 4, 2, 168), (64, 64, 4, 2, None), (64, 32, 4, 2, None), (32, 64, 4, 2, None),
             (64, 64, 8, 2, None), (32, 32, 4, 2, None)],
    "grads": [(32, 64, 4, 1, 128), (32, 64, 4, 1, None), (32, 64, 8, 1, None), (32, 32, 4, 1, None),
              (16, 64, 4, 1, None), (32, 32, 8, 1, None)],
    "group": [(64, 64, 8, 2, None), (32, 64, 8, 2, None), (64, 32, 8, 2, None), (32, 32, 4, 2, None)],
}
PASS_CHOICES_32 = [(64, 64, 8, 2), (64, 32, 8, 2), (32, 64, 8, 2), (32, 64, 4, 2), (32, 32, 4, 2), (64, 64, 4, 2)]
WIDE = False  # --float32: float32 inputs, the _32 constants and choices
FUSED_CHOICES = {  # module constants: candidates
    ("FWD_BLOCK_P", "FWD_WARPS", "FWD_STAGES"): list(itertools.product((16, 32, 64), (4, 8), (1, 2))),
    ("BWD_BLOCK_P", "BWD_WARPS", "BWD_STAGES"): list(itertools.product((16, 32, 64), (4, 8), (1, 2))),
}


def _suffix() -> str:
    """The constants swept: the 16-bit ones, float32's (_32) or float32's under one TF32 product (_TF32)."""
    if not WIDE:
        return ""
    return "_TF32" if torch.get_float32_matmul_precision() != "highest" else "_32"


def _timer(L, grad):
    t = _inputs(4, L, grad=grad, dtype=torch.float32 if WIDE else torch.bfloat16)
    dy = torch.randn_like(t["x"])

    def call():
        for v in t.values() if grad else ():  # as kernels_ssd.py: no .grad summed across calls
            v.grad = None
        y = ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], D=t["D"], dt_bias=t["dt_bias"], dt_softplus=True)
        if grad:
            y.backward(dy)

    def ms():
        try:
            with torch.set_grad_enabled(grad):
                return bench_ms(call)
        except Exception as err:  # a choice that does not compile (shared memory) is a row, not the end
            print(f"    failed: {' '.join(str(err).split())[:160]}")
            return float("nan")
    return ms


def _best(rows):
    ok = [r for r in rows if r["ms"] == r["ms"]]
    return min(ok, key=lambda r: r["ms"]) if ok else None


def sweep_chunked(L, kernels=None):
    os.environ["ARCHDSL_SSD_IMPL"] = "chunked"
    timers = {False: _timer(L, False), True: _timer(L, True)}
    config = "CONFIG" + _suffix()
    start = dict(getattr(chunked, config))
    rows, best = [], dict(start)
    for name in ("state_pass", "dstate_pass"):
        if not kernels or name in kernels:
            rows += _sweep_pass(L, name, timers[name == "dstate_pass"])
    for kernel, choices in (CHUNKED_CHOICES_32 if WIDE else CHUNKED_CHOICES).items():
        if kernels and kernel not in kernels:
            continue
        grad = kernel in ("grads", "group")
        print(f"== chunked {kernel} ({'fwd+bwd' if grad else 'fwd'}, L{L}); now {start[kernel]}", flush=True)
        mine = []
        for choice in choices:
            setattr(chunked, config, dict(start, **{kernel: choice}))
            ms = timers[grad]()
            mine.append(dict(layout="chunked", kernel=kernel, choice=list(choice), grad=grad, ms=ms))
            print(f"  {kernel} BT,BP,warps,stages,maxnreg={choice}: {ms:.3f} ms", flush=True)
        rows += mine
        b = _best(mine)
        best[kernel] = tuple(b["choice"]) if b else start[kernel]
    setattr(chunked, config, best)
    together = {g: timers[g]() for g in (False, True)}
    setattr(chunked, config, start)
    before = {g: timers[g]() for g in (False, True)}
    print(f"== chunked: now fwd {before[False]:.3f} fwd+bwd {before[True]:.3f} ms; "
          f"best together fwd {together[False]:.3f} fwd+bwd {together[True]:.3f} ms")
    print(f"{config} = {best}")
    return rows, dict(best={k: list(v) for k, v in best.items()}, now_ms=before, best_ms=together)


def _sweep_pass(L, name, timer):
    """chunked.STATE_PASS or DSTATE_PASS (BP, BN, warps, stages of a serial pass), timed forward for the
    state pass and forward+backward for the dstate pass; the best is printed, the constant is left as
    it was."""
    const = name.upper() + _suffix()
    start, mine = getattr(chunked, const), []
    print(f"== chunked {name} (L{L}); now {start}", flush=True)
    for choice in PASS_CHOICES_32 if WIDE else PASS_CHOICES:
        setattr(chunked, const, choice)
        ms = timer()
        mine.append(dict(layout="chunked", kernel=name, choice=list(choice), grad=name == "dstate_pass", ms=ms))
        print(f"  {name} BP,BN,warps,stages={choice}: {ms:.3f} ms", flush=True)
    setattr(chunked, const, start)
    b = _best(mine)
    print(f"{const} = {tuple(b['choice']) if b else start}")
    return mine


def sweep_chunk_length(L, chunks):
    """The chunked layout forward and forward+backward at each chunk length (CHUNK), CONFIG as it is:
    a longer chunk halves the per-chunk states (the largest traffic) and doubles the work within."""
    os.environ["ARCHDSL_SSD_IMPL"] = "chunked"
    timers = {False: _timer(L, False), True: _timer(L, True)}
    start, rows = chunked.CHUNK, []
    for q in chunks:
        chunked.CHUNK = q
        row = dict(layout="chunked", kernel="CHUNK", choice=q, fwd_ms=timers[False](), fwd_bwd_ms=timers[True]())
        print(f"  CHUNK {q}: fwd {row['fwd_ms']:.3f} ms, fwd+bwd {row['fwd_bwd_ms']:.3f} ms", flush=True)
        rows.append(row)
    chunked.CHUNK = start
    return rows


def sweep_fused(L):
    os.environ["ARCHDSL_SSD_IMPL"] = "fused"
    timers = {False: _timer(L, False), True: _timer(L, True)}
    rows, best = [], {}
    for names, choices in FUSED_CHOICES.items():
        grad = names[0].startswith("BWD")
        start = tuple(getattr(fused, n) for n in names)
        print(f"== fused {names} ({'fwd+bwd' if grad else 'fwd'}, L{L}); now {start}", flush=True)
        mine = []
        for choice in choices:
            for n, v in zip(names, choice):
                setattr(fused, n, v)
            ms = timers[grad]()
            mine.append(dict(layout="fused", kernel="+".join(names), choice=list(choice), grad=grad, ms=ms))
            print(f"  {choice}: {ms:.3f} ms", flush=True)
        for n, v in zip(names, start):
            setattr(fused, n, v)
        rows += mine
        b = _best(mine)
        best.update(zip(names, b["choice"] if b else start))
    print(f"== fused best: {best}")
    return rows, best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--L", type=positive, default=16384)
    ap.add_argument("--only", choices=["chunked", "fused"])
    ap.add_argument("--kernels", help=f"comma-separated chunk kernels to sweep (state_pass, dstate_pass, {', '.join(CHUNKED_CHOICES)}); "
                    "default all")
    ap.add_argument("--chunks", type=positive_list,
                    help="comma-separated chunk lengths: time only those (chunked layout)")
    ap.add_argument("--float32", action="store_true", help="float32 inputs: sweep the chunked layout's _32 choices")
    ap.add_argument("--tf32", action="store_true", help="with --float32: under one TF32 product (precision \"high\")")
    ap.add_argument("--json")
    args = ap.parse_args()
    global WIDE
    WIDE = args.float32
    if args.tf32:
        if not WIDE:
            ap.error("--tf32 goes with --float32")
        torch.set_float32_matmul_precision("high")
        for kernel, choice in chunked.CONFIG.items():
            if kernel in CHUNKED_CHOICES_32 and choice not in CHUNKED_CHOICES_32[kernel]:
                CHUNKED_CHOICES_32[kernel].append(choice)
        PASS_CHOICES_32.extend(c for c in {chunked.STATE_PASS, chunked.DSTATE_PASS} if c not in PASS_CHOICES_32)
    needs_cuda()
    out = {"L": args.L, "card": torch.cuda.get_device_name(), "dtype": "float32" if WIDE else "bfloat16",
           "float32_matmul_precision": torch.get_float32_matmul_precision()}
    if args.chunks:
        out["chunk_rows"] = sweep_chunk_length(args.L, args.chunks)
    else:
        if args.only in (None, "chunked"):
            out["chunked_rows"], out["chunked"] = sweep_chunked(args.L, args.kernels.split(",") if args.kernels else None)
        if args.only in (None, "fused"):
            out["fused_rows"], out["fused"] = sweep_fused(args.L)
    if args.json:
        save_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
