"""Helpers shared by the benchmark scripts: timing, the check for a CUDA GPU, the floor's rates, the checks of
argument values, and the JSON of results."""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from typing import NamedTuple, NoReturn

# The floor's rates (the project's benchmark method): bytes at 87.5% of the card's HBM peak and FLOPs at ~680 TFLOP/s of dense bf16
# on the tensor cores. The H200: 0.875 × 4.8 TB/s = 4.2 TB/s. An H100 SXM: the same fractions of its own peaks,
# 0.875 × 3.35 TB/s = 2.93 TB/s, and 680 TFLOP/s (its bf16 peak is the H200's).
H200_RATES = (0.875 * 4.8e12, 680e12)
H100_SXM_RATES = (0.875 * 3.35e12, 680e12)


class Rates(NamedTuple):
    """The rates a floor is counted at: card (what torch calls it), basis (whose rates they are), bytes/s, and
    dense bf16 FLOP/s; TF32's dense rate is half of bf16's."""
    card: str
    basis: str
    bw: float
    flops: float

    @property
    def tf32(self) -> float:
        return self.flops / 2


def rates_for(card: str | None) -> Rates:
    """The floor's rates for a card named `card` (torch.cuda.get_device_name(); None where there is no CUDA GPU):
    an H100 SXM's own (a name with "H100" and neither "PCIe" nor "NVL"), else the H200's (a GH200, whose memory
    differs by model, is said to have none of its own)."""
    if card and "H100" in card and not any(s in card for s in ("PCIe", "NVL")):
        return Rates(card, "the H100 SXM's rates", *H100_SXM_RATES)
    if card and "H200" in card and "GH200" not in card:
        return Rates(card, "the H200's rates", *H200_RATES)
    return Rates(card or "no CUDA GPU", "the H200's rates, none for this card", *H200_RATES)


@functools.lru_cache(maxsize=None)
def floor_rates() -> Rates:
    """rates_for the card torch sees; asked at the first floor, never at import (the scripts are imported where
    there is no GPU)."""
    import torch
    return rates_for(torch.cuda.get_device_name() if torch.cuda.is_available() else None)


def floor_ms(nbytes: float, flops: float = 0.0, flop_rate: float | None = None) -> float:
    """The floor in ms: max(nbytes / bandwidth, flops / flop_rate) at floor_rates() (flop_rate: bf16's unless
    given)."""
    r = floor_rates()
    return max(nbytes / r.bw, flops / (flop_rate or r.flops)) * 1e3


def rates_line() -> str:
    """One line naming the card and the rates its floors are counted at, printed above a table with a floor."""
    r = floor_rates()
    return (f"floor: {r.bw / 1e12:.3g} TB/s, {r.flops / 1e12:.0f} TFLOP/s bf16 ({r.tf32 / 1e12:.0f} TF32): "
            f"{r.basis}; card {r.card}")


def fail(message: str) -> NoReturn:
    """Exit 2 with one line on stderr naming the script: a bad argument value, found before any work."""
    print(f"{os.path.basename(sys.argv[0])}: {message}", file=sys.stderr)
    sys.exit(2)


def at_least(low: int):
    """An argparse type: an integer ≥ low, else argparse's error (exit 2) before any work."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = None
        if n is None or n < low:
            raise argparse.ArgumentTypeError(f"expected an integer ≥ {low}, got {text!r}")
        return n
    return parse


positive = at_least(1)


def positive_list(text: str) -> list[int]:
    """An argparse type: comma-separated integers ≥ 1 ("4096,16384")."""
    try:
        return [positive(t.strip()) for t in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers ≥ 1, got {text!r}") from None


def needs_cuda(why: str = "torch sees none, and this script has no CPU mode") -> None:
    """Exit 2 with one line on stderr where torch sees no CUDA GPU: for a script that has no CPU mode, called
    after its arguments are parsed and before any work."""
    import torch
    if not torch.cuda.is_available():
        print(f"{os.path.basename(sys.argv[0])}: needs a CUDA GPU ({why})", file=sys.stderr)
        sys.exit(2)


def save_json(path: str, obj, indent: int = 1) -> None:
    """Write obj as JSON to path, whole or not at all (a run killed mid-write leaves the last rows written):
    the scripts call it after every row."""
    from archdsl.atomic import write_atomic
    write_atomic(path, json.dumps(obj, indent=indent))


def bench_ms(fn) -> float:
    """Median ms of fn() by triton.testing.do_bench (warmup 25 ms, rep 100 ms)."""
    from triton.testing import do_bench
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def kernel_ms(fn, iters: int = 20) -> float:
    """GPU time of fn() in ms: the sum of its kernels' durations (torch.profiler), a mean over `iters` calls
    after 3 warm ones. For work whose host side outlasts its kernels in isolation (an autograd pass of
    small kernels): inside a model the queue stays full and only the kernels count."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    return sum(e.self_device_time_total for e in prof.key_averages()) / iters / 1e3


def bench_or_nan(fn) -> float:
    """bench_ms, or nan after printing why: one implementation failing to build must not hide the
    other figures of the run."""
    try:
        return bench_ms(fn)
    except Exception as e:
        print(f"# failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
        return float("nan")


def graphed(fn):
    """fn captured once in a CUDA graph, as a decode loop runs it: its replay times the kernels without
    Python's launch cost."""
    import torch
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # compile and warm up off the capturing stream
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def graph_ms(fn) -> float:
    """bench_ms of fn replayed from a CUDA graph, or nan after printing why (a peer that cannot be
    captured must not stop the run)."""
    try:
        return bench_ms(graphed(fn))
    except Exception as e:
        print(f"# graph failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
        return float("nan")


def chain_ms(fns) -> float:
    """Per-call ms of the calls fns, one after another, replayed from one CUDA graph: a decode step's chain of
    small kernels, each launch following the one before (and overlapping it where PDL lets it)."""
    def chain():
        for f in fns:
            f()
    return bench_ms(graphed(chain)) / len(fns)


def with_env(var: str, value: str, fn):
    """fn wrapped to run with the environment variable var=value (the ops read their
    implementation switches at every call), restoring it after."""
    def go():
        old = os.environ.get(var)
        os.environ[var] = value
        try:
            return fn()
        finally:
            if old is None:
                del os.environ[var]
            else:
                os.environ[var] = old
    return go


def wall_ms(fn, iters: int, sync=lambda: None, warmup: int = 0) -> float:
    """Median wall time of fn() in ms over `iters` calls, `sync()` (e.g. torch.cuda.synchronize)
    around each, after `warmup` untimed calls: for work do_bench cannot time (a CPU run, or a
    decode step whose launch overhead must count)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)
