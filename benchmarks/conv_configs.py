"""Launch choices of the causal conv1d Triton kernels, checked and timed on the card, beside torch.

    python benchmarks/conv_configs.py [--json FILE]

x [B, D, L] in bf16, width 4, bias and SiLU, in three layouts:
- steps contiguous, B4 D5120 L4096 (Mamba-1 convolves a contiguous copy): the tile kernels;
- channels contiguous as Mamba-2 passes in_proj's slice: B1, 5376 of 10576 channels, L4096
  (mamba2-2.7b's), read in place: the step walks;
- channels contiguous and dense, B4 D5120 L4096: the step walks.

For each: the bytes floor (forward: x read and y written once; backward: x and dy read, dx written, at the card's
bandwidth: benchmarks/_bench.py, the H200's 4.2 TB/s, an H100's 2.93), torch's grouped F.conv1d + SiLU (the CPU
path, here on the card) forward and backward, then every (BLOCK_D, BLOCK_L or STEPS, num_warps) of that layout's
kernels: the largest relative error of y and of each gradient against F.conv1d in fp32, and the medians of the
forward and backward launches (no autograd). Each row is the median of triton.testing.do_bench; nothing is
changed on disk.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench import bench_or_nan, floor_ms, floor_rates, needs_cuda, rates_line, save_json  # noqa: E402

try:
    import archdsl  # noqa: F401
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from archdsl.kernels.conv1d import triton_conv1d as tc  # noqa: E402
from archdsl.kernels.conv1d.chunked import causal_conv1d_torch  # noqa: E402

TILES = [(16, 256, 4), (16, 128, 4), (32, 64, 4), (8, 256, 4), (16, 64, 4), (8, 128, 4), (4, 256, 4), (16, 128, 8),
         (8, 512, 4), (8, 64, 4), (4, 128, 4), (8, 32, 2)]
WALKS = [(256, 64, 4), (128, 64, 4), (512, 64, 4), (256, 32, 4), (128, 32, 4), (256, 128, 8), (256, 64, 8),
         (64, 64, 2)]


def _layouts():
    """(name, x [B, D, L], kernel attribute, its configs): each layout's x in bf16."""
    bf16 = dict(device="cuda", dtype=torch.bfloat16)
    wide = torch.randn(1, 4096, 10576, **bf16)
    return [("steps contiguous B4 D5120 L4096", torch.randn(4, 5120, 4096, **bf16), "TILE", TILES),
            ("mamba2-2.7b slice B1 D5376 L4096", wide[:, :, 5120:5120 + 5376].transpose(1, 2), "WALK", WALKS),
            ("channels contiguous B4 D5120 L4096", torch.randn(4, 4096, 5120, **bf16).transpose(1, 2), "WALK", WALKS)]


def _relerr(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def rows_for(name, x, attr, configs):
    D = x.shape[1]
    w, b = torch.randn(D, 4, device="cuda") / 2, torch.randn(D, device="cuda")
    dy = tc._empty_as(x).normal_()  # laid out as y, as autograd hands it back (empty_like copies a slice's
    # layout only when it is dense: Mamba-2's slice would get a steps-contiguous dy, read across the walk)
    leaves = [x.detach().float().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()]
    want = causal_conv1d_torch(*leaves, "silu")
    want = [want.detach()] + list(torch.autograd.grad(want, leaves, dy.float()))
    floor = floor_ms(2 * x.numel() * x.element_size())
    rows = []

    def row(what, fwd_ms, bwd_ms, err=float("nan")):
        rows.append(dict(layout=name, what=what, fwd_ms=fwd_ms, bwd_ms=bwd_ms, err=err,
                         fwd_floor_pct=100 * floor / fwd_ms, bwd_floor_pct=100 * 1.5 * floor / bwd_ms))
        print(f"  {what:24} fwd {fwd_ms:.4f} ms ({rows[-1]['fwd_floor_pct']:3.0f}% of floor)  bwd {bwd_ms:.4f} ms "
              f"({rows[-1]['bwd_floor_pct']:3.0f}%)  err {err:.1e}", flush=True)

    print(f"{name}: floor fwd {floor:.4f} ms, bwd {1.5 * floor:.4f} ms", flush=True)
    xt = x.detach().requires_grad_()
    wt, bt = w.to(x.dtype).requires_grad_(), b.to(x.dtype).requires_grad_()
    yt = causal_conv1d_torch(xt, wt, bt, "silu")
    row("torch F.conv1d + silu", bench_or_nan(lambda: causal_conv1d_torch(x, wt, bt, "silu")),
        bench_or_nan(lambda: torch.autograd.grad(yt, (xt, wt, bt), dy, retain_graph=True)))
    start = {a: getattr(tc, a) for a in ("TILE_FWD", "TILE_BWD", "WALK")}
    try:
        for config in configs:
            for a in (("TILE_FWD", "TILE_BWD") if attr == "TILE" else ("WALK",)):
                setattr(tc, a, config)
            got = [tc.conv_fwd(x, w, b, None, None, True)] + list(tc.conv_bwd(x, w, b, None, None, dy, True)[:3])
            row(str(config), bench_or_nan(lambda: tc.conv_fwd(x, w, b, None, None, True)),
                bench_or_nan(lambda: tc.conv_bwd(x, w, b, None, None, dy, True)),
                max(_relerr(g, r) for g, r in zip(got, want)))
    finally:
        for a, v in start.items():
            setattr(tc, a, v)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json")
    args = ap.parse_args()
    needs_cuda()
    torch.manual_seed(0)
    print(rates_line(), flush=True)
    out = {"card": torch.cuda.get_device_name(), "floor_rates": floor_rates()._asdict(), "rows": []}
    for layout in _layouts():
        out["rows"] += rows_for(*layout)
        if args.json:
            save_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
