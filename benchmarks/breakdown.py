"""Where the time goes: torch.profiler tables for the two open performance questions.

    python benchmarks/breakdown.py decode [--model llama-1.3b] [--ctx 16384]   # eager decode, fused vs unfused
    python benchmarks/breakdown.py ssd [--L 16384]                             # ssd_scan fwd+bwd, each kernel
    python benchmarks/breakdown.py wkv6 [--L 4096]                             # wkv6 and fla's, each kernel
    python benchmarks/breakdown.py decode --device cpu                         # a smoke test at toy sizes

decode: the eager (ungraphed) decode step of a benchmarks/model.py model, fusions on then off,
8 profiled steps each after 8 warm-up steps. Prints the ops by self CPU time and by self CUDA time
and the number of launches per step. Each setting decodes at key lengths the other has not seen,
as real decoding does: a per-shape cache (cuDNN attention's execution plans) must not favour the
second. (This found why eager decode of attention models looked 2–5× slower with fusions on: the
fused run went first and paid cuDNN's plan for every new length, 2.1 ms per call.)
ssd: one ssd_scan forward+backward at B4 L H32 P64 N128 G1 bf16 per implementation; prints each
Triton kernel's CUDA time, to show which of the backward's kernels lose to mamba_ssm at 16K.
wkv6: the forward, then the forward+backward, of wkv6 at B4 T H32 K=V=64 bf16 per implementation
(serial, chunked) and of fla's chunk_rwkv6 (when installed), in one process: each kernel's CUDA time.
--json writes the tables' rows.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import archdsl
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import archdsl
from _bench import positive, save_json  # noqa: E402


def _profile(fn, device, steps: int):
    """Profile `steps` calls of fn; returns (key_averages, profiled launches per call)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
    ev = prof.key_averages()
    launches = sum(e.count for e in ev if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx",
                                                     "cudaGraphLaunch"))
    return ev, launches / steps


def _rows(ev, key: str, n: int):
    rows = sorted(ev, key=lambda e: getattr(e, key, 0) or 0, reverse=True)[:n]
    return [{"op": e.key, "calls": e.count, "self_cpu_us": e.self_cpu_time_total,
             "self_device_us": getattr(e, "self_device_time_total", 0)} for e in rows]


def _print(title, rows, steps):
    print(f"\n{title} (per step: µs over {steps} steps / {steps})")
    print(f"{'op':60} {'calls':>6} {'self CPU µs':>12} {'self GPU µs':>12}")
    for r in rows:
        print(f"{r['op'][:60]:60} {r['calls'] / steps:6.1f} {r['self_cpu_us'] / steps:12.1f} "
              f"{r['self_device_us'] / steps:12.1f}")


@torch.no_grad()
def decode(args) -> dict:
    import model as bench_model  # benchmarks/model.py: the specs

    if args.device != "cuda":
        bench_model.shrink_for_cpu()
    spec = bench_model.build_spec(args.model)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    m = archdsl.compile(spec, device=args.device, dtype=dtype, seed=0)
    ctx = args.ctx if args.device == "cuda" else 64
    prompt = torch.randint(0, spec.vocab_size, (1, ctx + 32), device=args.device)
    out = {}
    for i, fuse in enumerate((True, False)):
        m.set_fuse(fuse)
        n = ctx + 32 * i  # lengths n+1 .. n+16 differ between the settings
        cache = m.init_cache(1, max_len=n + 64)
        tok = m(prompt[:, :n], cache)[:, -1].argmax(-1)
        for _ in range(8):
            m.step(tok, cache)
        ev, launches = _profile(lambda: m.step(tok, cache), args.device, 8)
        name = "fused" if fuse else "unfused"
        cpu, gpu = _rows(ev, "self_cpu_time_total", args.top), _rows(ev, "self_device_time_total", args.top)
        print(f"\n=== {args.model} eager decode step, ctx {ctx}, {name}: {launches:.0f} kernel launches per step")
        _print(f"{name}: by self CPU time", cpu, 8)
        if args.device == "cuda":
            _print(f"{name}: by self GPU time", gpu, 8)
        out[name] = {"launches_per_step": launches, "by_cpu": cpu, "by_gpu": gpu}
    return out


def _kernels(run, device, title, label, top) -> dict:
    """run() 3 times untimed, then profiled 5 times: its ops by self device time (CPU time on a CPU)."""
    for _ in range(3):
        run()
    ev, launches = _profile(run, device, 5)
    rows = _rows(ev, "self_device_time_total" if device == "cuda" else "self_cpu_time_total", top)
    print(f"\n=== {title}: {launches:.0f} launches per pass")
    _print(f"{label}: kernels", rows, 5)
    return {"launches": launches, "rows": rows}


def ssd(args) -> dict:
    from archdsl.kernels.ssd import ssd_scan

    dev = args.device
    L, H, P, N = (args.L, 32, 64, 128) if dev == "cuda" else (64, 2, 8, 8)
    dt_ = torch.bfloat16 if dev == "cuda" else torch.float32
    t = dict(x=torch.randn(4, L, H, P, device=dev, dtype=dt_), dt=torch.randn(4, L, H, device=dev, dtype=dt_) - 1,
             A=-torch.rand(H, device=dev) - 0.5, B=torch.randn(4, L, 1, N, device=dev, dtype=dt_),
             C=torch.randn(4, L, 1, N, device=dev, dtype=dt_), D=torch.randn(H, device=dev),
             dt_bias=torch.randn(H, device=dev) * 0.1)
    t = {k: v.requires_grad_() for k, v in t.items()}
    dy = torch.randn_like(t["x"])

    def fwd_bwd():
        for v in t.values():  # as kernels_ssd.py: no .grad summed across calls
            v.grad = None
        y = ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], D=t["D"], dt_bias=t["dt_bias"], dt_softplus=True)
        y.backward(dy)

    out = {}
    for impl in args.impl.split(","):
        os.environ["ARCHDSL_SSD_IMPL"] = impl
        out[impl] = _kernels(fwd_bwd, dev, f"ssd_scan fwd+bwd {impl}, B4 L{L} H{H} P{P} N{N}", impl, args.top)
    os.environ.pop("ARCHDSL_SSD_IMPL", None)
    return out


def wkv6(args) -> dict:
    from archdsl.kernels.wkv6 import wkv6 as ours

    dev = args.device
    T, H, K = (args.L, 32, 64) if dev == "cuda" else (64, 2, 8)
    dt_ = torch.bfloat16 if dev == "cuda" else torch.float32
    g = lambda: torch.randn(4, T, H, K, device=dev, dtype=dt_)  # noqa: E731
    xs = [g(), g(), g(), torch.nn.functional.logsigmoid(g().float()).to(dt_), torch.randn(H, K, device=dev, dtype=dt_)]
    xs = [x.requires_grad_() for x in xs]
    fns = {"serial": ours, "chunked": ours}
    try:
        from fla.ops.rwkv6 import chunk_rwkv6
        fns["fla"] = chunk_rwkv6
    except ImportError:
        pass
    out = {}
    for name, fn in fns.items():
        if name != "fla":
            os.environ["ARCHDSL_WKV6_IMPL"] = name
        for mode in ("fwd", "fwd+bwd"):
            def run():
                with torch.set_grad_enabled(mode != "fwd"):
                    o = fn(*xs)[0]
                    if mode != "fwd":
                        o.backward(torch.ones_like(o))
            out[f"{name} {mode}"] = _kernels(run, dev, f"wkv6 {mode} {name}, B4 T{T} H{H} K=V={K}", f"{name} {mode}",
                                             args.top)
    os.environ.pop("ARCHDSL_WKV6_IMPL", None)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["decode", "ssd", "wkv6"])
    ap.add_argument("--model", default="llama-1.3b", help="a model of benchmarks/model.py")
    ap.add_argument("--ctx", type=positive, default=16384)
    ap.add_argument("--L", type=positive, default=None, help="sequence length (ssd: 16384, wkv6: 4096)")
    ap.add_argument("--top", type=positive, default=15)
    ap.add_argument("--impl", default="fused,chunked", help="ssd: the implementations to profile (ARCHDSL_SSD_IMPL)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.L is None:
        args.L = 4096 if args.what == "wkv6" else 16384
    result = {"decode": decode, "ssd": ssd, "wkv6": wkv6}[args.what](args)
    if args.json:
        save_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
