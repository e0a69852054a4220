"""Front-end speed: parse + build the graph + analyse (no model is built).

    python benchmarks/language.py

Targets: jamba-v0.1 under 50 ms; a 1000-layer layout under 0.5 s. Each figure is the
median of several cold runs (a new Spec each time, so nothing is cached but the parser).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import archdsl
from archdsl.spec import spec_from_yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def median_ms(fn, repeat: int = 15) -> float:
    fn()  # the first call builds the (cached) lark parser
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    with open(os.path.join(ROOT, "specs/jamba-v0.1.yaml"), encoding="utf-8") as f:
        jamba = f.read()
    big = "100×(4×mamba2, attn(shared=a), 4×mamba2, attn(shared=b)), moe every 2, mlp every 2 offset 0"
    cases = [
        ("jamba-v0.1: parse + graph + analyze", lambda: archdsl.analyze(spec_from_yaml(jamba, "jamba.yaml"), seq_len=65536), 50),
        ("1000 layers: parse + graph + analyze", lambda: archdsl.analyze(archdsl.parse(big)), 500),
        ("1000 layers: parse only", lambda: archdsl.parse(big), None),
    ]
    print(f"{'case':<40} {'median ms':>10} {'target ms':>10}")
    for name, fn, target in cases:
        ms = median_ms(fn)
        print(f"{name:<40} {ms:>10.2f} {target if target else '-':>10}")


if __name__ == "__main__":
    main()
