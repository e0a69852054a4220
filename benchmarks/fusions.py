"""Each fusion of the compiler on against off (archdsl.model.fusions), bf16 on one GPU.

    python benchmarks/fusions.py [--only epilogue,qkv] [--json out.json] [--device cpu]

Table: fusion | what is timed | shape | off ms | on ms | gain (= off / on). A row switches its one
fusion and leaves the others on; "cuda_graph" times the eager decode step (off) against the one
replayed from a CUDA graph (on), "torch.compile" the eager forward against torch.compile(model)
(compile time printed apart, not in the figure). Single passes are timed with
triton.testing.do_bench (median); decode steps (many small kernels, launch-bound when eager) as
the median of CUDA-event times with the GPU synchronised around each call, so launches count.
Every row fails soft: an error is printed and the next row runs.

Rows, shapes and floors (bytes at the card's rate, benchmarks/_bench.py: the µs below are at the H200's 4.2 TB/s,
1.43× those at an H100's 2.93). Forward+backward rows clear the .grad of their inputs and weights before each call,
as a model's activations and a training step's zeroed gradients (nothing summed across calls):
  epilogue       a Mamba-1 mixer layer as mamba-2.8b (d 2560, E 5120, N 16, dt_rank 160) and a
                 Mamba-2 layer without gated norm (d 2560, E 5120, H 80, P 64, N 128), B=4, L=2048,
                 forward and forward+backward. Off, D and the gate run after the scan: at least one
                 more pass reading y, x, z and writing y, 4·B·L·E·2 bytes = 336 MB ≈ 80 µs per forward
                 (the torch epilogue computes in float32, so it moves more).
                 From the 2026-11-28 run (Mamba-2 fwd+bwd 11.4 ms on vs 10.0 off) to the 2026-11-29
                 one (6.12 on vs 8.11 off, once the scan's backward took the gate first) the Mamba-2
                 epilogue ran at inference only; it runs with autograd again.
  add_norm       h + Δ and RMSNorm of [B·L, d] = [8192, 2048] bf16, forward (and forward+backward);
                 the kernel reads h, Δ and writes h, out: 4·8192·2048·2 = 134 MB ≈ 32 µs floor.
                 Its backward is a kernel too since 2026-12-01 (it was torch ops, slower than the
                 unfused ops: fwd+bwd 1.13 ms on vs 0.87 off); the forward+backward row reports the
                 kernels' GPU time, since the fused pass alone waits on its host side.
  qkv            attention of a llama-1.3b layer (d 2048, 16 heads of 64, RoPE): the decode step at
                 batch 1 over a 2048-token static KV cache, and the prefill forward at B=1, L=2048.
                 One GEMM reads the same 3·2048²·2 = 25 MB of weights (≈ 6 µs) as three: it saves
                 two launches, not bytes.
  step           one decode step (batch 1) of 48×mamba2 at d 2048 (mamba2-1.3b, vocab 50288) replayed
                 from a CUDA graph, the fused step kernels on / off. Floor: the weights read once,
                 about 1.35 G params · 2 bytes ≈ 0.64 ms, plus the fp32 SSM states read and written.
  norm_gemv      the same step, the RMSNorms inside the in_proj / out_proj GEMVs on / off (off:
                 add+RMSNorm kernel, cuBLAS GEMV, the gated norm in the step kernel's last program).
  pdl            the same step, the Mamba-2 kernels launched with programmatic dependent launch on / off
                 (on: each reads its weights, and the step its states, while the kernel before ends).
  cuda_graph     the same step, eager against graphed (every fusion on).
  torch.compile  the forward of a 4-layer hybrid (mamba2, attn, mamba2, an MLP layer; d 2048, 16
                 heads, SwiGLU 5504, vocab 4096) at B=4, L=2048, eager against Inductor as one graph
                 (fullgraph=True); the same for Mamba-1 (mamba, mlp, mamba, mlp: d_inner 4096, N 16).

--device cpu runs every row at toy sizes with time.perf_counter medians: a smoke test of this
script. On a CPU "add_norm" and "step" have no kernel of their own (both columns time the torch
path), "cuda_graph" has no "on", and torch.compile uses the aot_eager backend (Inductor's C++ build
takes minutes); those figures say nothing about the fusions.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import time
import traceback
from collections.abc import Callable

import torch
from _bench import bench_ms, floor_ms, floor_rates, kernel_ms, needs_cuda, rates_line, save_json, wall_ms

import archdsl
from archdsl.model.fusions import FUSIONS
from archdsl.model.layer import Norm

ALL = frozenset(FUSIONS)
DEVICE = "cuda"
GPU_SIZES = dict(d_mamba=2560, batch=4, seq=2048, headdim=64, d_state2=128, tokens=8192, d_norm=2048, d_attn=2048,
                 heads=16, ctx=2048, layers=48, d_step=2048, vocab=50288, d_hybrid=2048, hidden=5504,
                 vocab_hybrid=4096)
CPU_SIZES = dict(d_mamba=64, batch=2, seq=32, headdim=16, d_state2=16, tokens=256, d_norm=128, d_attn=64,
                 heads=4, ctx=64, layers=4, d_step=64, vocab=512, d_hybrid=64, hidden=176, vocab_hybrid=256)
S = GPU_SIZES


# --- timing ---------------------------------------------------------------------------------
def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def time_pass(fn: Callable[[], object]) -> float:
    """Median ms of one call of fn: do_bench on the GPU, wall time on the CPU."""
    return bench_ms(fn) if DEVICE == "cuda" else wall_ms(fn, 5, warmup=1)


def time_step(fn: Callable[[], object], iters: int = 100) -> float:
    """Median ms of a decode step: CUDA events around each call, the GPU idle before it (so the
    launch overhead of an eager step counts); wall time on the CPU."""
    if DEVICE != "cuda":
        return wall_ms(fn, 10, warmup=1)
    for _ in range(5):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


# --- models ---------------------------------------------------------------------------------
def _compile(layout: str, d: int, vocab: int = 256, **kw) -> archdsl.model.ArchModel:
    blocks = {"mamba2": {"headdim": S["headdim"], "d_state": S["d_state2"]},
              "attn": {"heads": S["heads"]}, "mlp": {"act": "swiglu", "hidden": S["hidden"]}}
    spec = archdsl.parse(layout, d_model=d, vocab_size=vocab, blocks=blocks)
    return archdsl.compile(spec, device=DEVICE, dtype=_dtype(), seed=0, **kw)


@functools.lru_cache(maxsize=None)
def _decode_model(layers: int | None = None) -> archdsl.model.ArchModel:
    return _compile(f"{layers or S['layers']}×mamba2", S["d_step"], S["vocab"], cuda_graph=DEVICE == "cuda")


def _dtype() -> torch.dtype:
    return torch.bfloat16 if DEVICE == "cuda" else torch.float32


def _x(*shape: int, grad: bool = False) -> torch.Tensor:
    return torch.randn(*shape, device=DEVICE, dtype=_dtype(), requires_grad=grad)


def _on_off(model, fusion, run) -> tuple[float, float]:
    """(off ms, on ms) of run() with `fusion` off (the others on), then every fusion on."""
    off = run(model.set_fuse(ALL - {fusion}))
    on = run(model.set_fuse(ALL))
    return off, on


# --- rows -----------------------------------------------------------------------------------
def epilogue(kind: str, bwd: bool) -> dict:
    layout = "mamba" if kind == "mamba" else "mamba2(gated_norm=false)"
    model = _compile(layout, S["d_mamba"])
    mixer = model.layers[0].mixer
    B, L, d = S["batch"], S["seq"], S["d_mamba"]
    x, dy = _x(B, L, d, grad=bwd), _x(B, L, d)

    def train():
        x.grad = None
        mixer.zero_grad(set_to_none=True)
        mixer(x).backward(dy)

    def run(_):
        if bwd:
            return time_pass(train)
        with torch.no_grad():
            return time_pass(lambda: mixer(x))

    off, on = _on_off(model, "epilogue", run)
    E = mixer.E
    nbytes = 4 * B * L * E * 2
    name = "Mamba-1" if kind == "mamba" else "Mamba-2 (no gated norm)"
    return dict(timed=f"{name} layer {'fwd+bwd' if bwd else 'fwd'}", shape=f"B={B} L={L} d={d} E={E}",
                off_ms=off, on_ms=on, saved_floor_ms=None if bwd else floor_ms(nbytes))


def add_norm(bwd: bool) -> dict:
    T, d = S["tokens"], S["d_norm"]
    norm = Norm("rmsnorm", d, 1e-5).to(device=DEVICE, dtype=_dtype())
    h, delta = _x(T, d, grad=bwd), _x(T, d, grad=bwd)
    gh, gout = _x(T, d), _x(T, d)

    def train():
        h.grad = delta.grad = None
        norm.zero_grad(set_to_none=True)
        torch.autograd.backward(norm.add_norm(h, delta), (gh, gout))

    def run(fuse, timer=time_pass):
        norm.fuse = fuse
        if bwd:
            return timer(train)
        with torch.no_grad():
            return timer(lambda: norm.add_norm(h, delta))

    off, on = run(False), run(True)
    note = "" if DEVICE == "cuda" else "no kernel on cpu: torch both ways"
    if bwd and DEVICE == "cuda":  # the fused pass alone is bound by its host side: a model's queue hides it
        wall = (off, on)
        off, on = run(False, kernel_ms), run(True, kernel_ms)
        note = f"kernel time (torch.profiler); do_bench's wall time {wall[0]:.3f} / {wall[1]:.3f} ms"
    return dict(timed=f"residual add + RMSNorm {'fwd+bwd' if bwd else 'fwd'}", shape=f"[{T}, {d}]", off_ms=off,
                on_ms=on, floor_ms=None if bwd else floor_ms(4 * T * d * 2), note=note)


@torch.no_grad()
def qkv_step() -> dict:
    d, ctx = S["d_attn"], S["ctx"]
    model = _compile("attn", d)
    attn = model.layers[0].mixer
    state = attn.init_state(1, DEVICE, _dtype(), max_len=ctx, static=True)
    attn(_x(1, ctx, d), state)
    x = _x(1, d)
    off, on = _on_off(model, "qkv", lambda _: time_step(lambda: attn.step(x, state)))
    nbytes = 4 * d * d * 2 + 2 * ctx * d * 2
    return dict(timed="attention decode step (eager)", shape=f"batch 1, cache {ctx}, d={d} H={S['heads']}",
                off_ms=off, on_ms=on, floor_ms=floor_ms(nbytes))


@torch.no_grad()
def qkv_prefill() -> dict:
    d, L = S["d_attn"], S["seq"]
    model = _compile("attn", d)
    attn, x = model.layers[0].mixer, _x(1, L, d)
    off, on = _on_off(model, "qkv", lambda _: time_pass(lambda: attn(x)))
    return dict(timed="attention prefill fwd", shape=f"B=1 L={L} d={d} H={S['heads']}", off_ms=off, on_ms=on)


@torch.no_grad()
def step(fusion: str = "step", layers: int | None = None) -> dict:
    model = _decode_model(layers)
    tok = torch.zeros(1, dtype=torch.long, device=DEVICE)

    def run(m):
        if DEVICE != "cuda":
            cache = m.init_cache(1)
            return time_step(lambda: m.step(tok, cache))
        runner = m._graph_runner(1, 64)  # set_fuse dropped the graph of the last setting
        runner.cache.reset()
        return time_step(lambda: runner(tok))

    off, on = _on_off(model, fusion, run)
    return dict(timed="decode step, CUDA graph" if DEVICE == "cuda" else "decode step, eager",
                shape=_step_shape(layers), off_ms=off, on_ms=on, floor_ms=_step_floor(model),
                note="" if DEVICE == "cuda" else "no fused step on cpu: unfused both ways")


@torch.no_grad()
def cuda_graph() -> dict:
    model = _decode_model().set_fuse(True)
    tok = torch.zeros(1, dtype=torch.long, device=DEVICE)
    cache = model.init_cache(1)
    eager = time_step(lambda: model.step(tok, cache))
    graphed = None
    if DEVICE == "cuda":
        runner = model._graph_runner(1, 64)
        runner.cache.reset()
        graphed = time_step(lambda: runner(tok))
    return dict(timed="decode step, eager → graph", shape=_step_shape(), off_ms=eager, on_ms=graphed,
                floor_ms=_step_floor(model), note="" if DEVICE == "cuda" else "no CUDA graph on cpu")


def _step_shape(layers: int | None = None):
    return f"{layers or S['layers']}×mamba2 d={S['d_step']} batch 1"


def _step_floor(model) -> float:
    state = sum(t.numel() * t.element_size() for t in model.init_cache(1).tensors())
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return floor_ms(weights + 2 * state)


@torch.no_grad()
def compiled(layout: str = "mamba2, attn, mamba2, mlp") -> dict:
    model = _compile(layout, S["d_hybrid"], S["vocab_hybrid"])
    B, L = S["batch"], S["seq"]
    ids = torch.randint(0, S["vocab_hybrid"], (B, L), device=DEVICE)
    eager = time_pass(lambda: model(ids))
    torch._dynamo.reset()
    backend = "inductor" if DEVICE == "cuda" else "aot_eager"
    fast = torch.compile(model, backend=backend, fullgraph=True)  # one graph: a break fails the row
    t = time.perf_counter()
    out = fast(ids)
    _sync()
    compile_s = time.perf_counter() - t
    err = (out.float() - model(ids).float()).abs().max().item()
    on = time_pass(lambda: fast(ids))
    print(f"  torch.compile ({backend}): first call (compile) {compile_s:.1f} s; max |logits - eager| {err:.3g}",
          flush=True)
    kinds = "hybrid" if "attn" in layout else "Mamba-1"
    return dict(timed=f"{kinds} forward, eager → {backend}", shape=f"4 layers d={S['d_hybrid']} B={B} L={L}",
                off_ms=eager, on_ms=on, compile_s=compile_s, max_abs_err=err)


ROWS: list[tuple[str, Callable[[], dict]]] = [
    ("epilogue", lambda: epilogue("mamba", False)),
    ("epilogue", lambda: epilogue("mamba", True)),
    ("epilogue", lambda: epilogue("mamba2", False)),
    ("epilogue", lambda: epilogue("mamba2", True)),
    ("add_norm", lambda: add_norm(False)),
    ("add_norm", lambda: add_norm(True)),
    ("qkv", qkv_step),
    ("qkv", qkv_prefill),
    ("step", step),
    ("norm_gemv", lambda: step("norm_gemv")),
    ("pdl", lambda: step("pdl")),
    ("step", lambda: step("step", layers=64)),  # issue #3's figure: a 64-layer stack under 2 ms
    ("cuda_graph", cuda_graph),
    ("torch.compile", compiled),
    ("torch.compile", lambda: compiled("mamba, mlp, mamba, mlp")),  # the Gluon selective scan in the graph
]


# --- table ----------------------------------------------------------------------------------
def _ms(x) -> str:
    return f"{x:9.3f}" if isinstance(x, (int, float)) and x == x else f"{'-':>9}"


def line(r: dict) -> str:
    off, on = r.get("off_ms"), r.get("on_ms")
    gain = f"{off / on:.2f}×" if off and on else "-"
    note = f"  ({r['note']})" if r.get("note") else ""
    return f"{r['fusion']:<13} {r['timed']:<40} {r['shape']:<34} {_ms(off)} {_ms(on)} {gain:>7}{note}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help=f"comma-separated fusions: {', '.join(dict.fromkeys(n for n, _ in ROWS))}")
    ap.add_argument("--json", help="also write the rows here (after every row)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a smoke test at toy sizes")
    args = ap.parse_args()
    global DEVICE, S
    DEVICE = args.device
    if DEVICE == "cuda":
        needs_cuda("give --device cpu for the smoke test")
    S = GPU_SIZES if DEVICE == "cuda" else CPU_SIZES
    only = set(args.only.split(",")) if args.only else None
    out = {"device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu", "torch": torch.__version__,
           "floor_rates": floor_rates()._asdict(), "rows": []}
    head = f"{'fusion':<13} {'what is timed':<40} {'shape':<34} {'off ms':>9} {'on ms':>9} {'gain':>7}"
    print(f"{out['device']}, torch {torch.__version__}\n{rates_line()}\n{head}\n{'-' * len(head)}", flush=True)
    for name, row in ROWS:
        if only is not None and name not in only:
            continue
        try:
            r = {"fusion": name, **row()}
        except Exception:  # one row's failure must not hide the others' figures
            traceback.print_exc()
            r = {"fusion": name, "timed": "FAILED", "shape": "-", "off_ms": None, "on_ms": None}
        print(line(r), flush=True)
        out["rows"].append(r)
        if args.json:
            save_json(args.json, out)
        if DEVICE == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
