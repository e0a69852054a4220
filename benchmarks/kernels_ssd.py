"""Mamba-2 SSD: ours against mamba_ssm's mamba_chunk_scan_combined, bf16 on one GPU.

Both Triton implementations get rows, each forced with ARCHDSL_SSD_IMPL: `ssd_scan fused` (one
program walks all chunks of a (batch, head)) and `ssd_scan chunked` (mamba_ssm's layout). Each forward
is timed twice: called from Python, as do_bench runs it, and replayed from a CUDA graph (the `graph`
rows), both sides alike. At L 4K the GPU's work is ~0.2 ms, near what the host takes to launch it, so
the plain figure moves with the host; the graph figure is the GPU's time.

Floor at the card's rates (benchmarks/_bench.py: the H200's 4.2 TB/s and ~680 TFLOP/s bf16, an H100 SXM's
2.93 TB/s and the same FLOP/s), each tensor moved once: the inputs and the output, and for fwd+bwd the output's
gradient and the inputs' gradients (a backward that re-reads its inputs is beyond the floor).
Shape B=4, H=32, P=64, N=128, G=1, per L tokens:
  forward bytes  = x + y (2·B·L·H·P·2) + dt (B·L·H·2) + B, C (2·B·L·G·N·2)        ≈ 35 KB/token
  forward FLOPs  ≈ B·L·H·(2·Q·P + 4·P·N) with Q = 64 (intra-chunk + state in/out) ≈ 5.2 MFLOP/token
  fwd+bwd bytes  = 2 × forward: the forward's, dy read, dx, ddt, dB, dC written      ≈ 70 KB/token
  fwd+bwd FLOPs  = 3 × forward: each forward product takes two of its size backward ≈ 15.7 MFLOP/token
Q = 64 is the smallest chunk whose products fill the tensor cores, so the FLOPs term is a lower bound: the peer runs
chunk 256 (an intra-chunk term 4× the floor's), ours chunks of 128 in its chunked layout (2×) and of 32 in its fused
one (whatever chunk_size says: the Triton path picks its own).
At L=4096: on the H200 34 µs forward (bytes-bound; FLOPs 32 µs) and 95 µs fwd+bwd (FLOPs-bound; bytes 68 µs); on an
H100 49 µs and 98 µs (both bytes-bound). At L=16384 four times those.
The decode step reads and writes the [B, H, P, N] fp32 state: 2·4·B·H·P·N bytes.
"""
from __future__ import annotations

import torch
from _bench import bench_ms, bench_or_nan, floor_ms, floor_rates, graph_ms, graphed, needs_cuda, rates_line, with_env


def _inputs(batch, L, H=32, P=64, N=128, G=1, grad=False, z=False, dtype=torch.bfloat16):
    dev, bf = "cuda", dtype
    t = dict(x=torch.randn(batch, L, H, P, device=dev, dtype=bf),
             dt=torch.randn(batch, L, H, device=dev, dtype=bf) * 0.5 - 1.0,
             A=-torch.rand(H, device=dev) * 4 - 0.5,
             B=torch.randn(batch, L, G, N, device=dev, dtype=bf),
             C=torch.randn(batch, L, G, N, device=dev, dtype=bf),
             D=torch.randn(H, device=dev), dt_bias=torch.randn(H, device=dev) * 0.1)
    if z:
        t["z"] = torch.randn(batch, L, H, P, device=dev, dtype=bf)
    if grad:
        t = {k: v.requires_grad_() for k, v in t.items()}
    return t


def _floor(batch, L, H=32, P=64, N=128, G=1, Q=64, bwd=False, z=False, size=2, tf32=0):
    """(floor ms, note) of ssd_scan with elements of `size` bytes; tf32 > 0: the products run as that many TF32
    products each, at TF32's rate."""
    nbytes = ((3 if z else 2) * batch * L * H * P + batch * L * H + 2 * batch * L * G * N) * size
    flops = batch * L * H * (2 * Q * P + 4 * P * N) * (tf32 or 1)
    if bwd:
        nbytes, flops = 2 * nbytes, 3 * flops
    ms = floor_ms(nbytes, flops, floor_rates().tf32 if tf32 else None)
    return ms, f"{nbytes / 1e6:.0f} MB, {flops / 1e9:.1f} GFLOP"


def _peer():
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
        return mamba_chunk_scan_combined
    except Exception:  # the peer is optional: its rows then carry no figure
        return None


def _scan_fn(fn, t, bwd):
    def call():
        if bwd:  # inputs are activations in a model: their gradients are not summed into .grad across calls
            for v in t.values():
                v.grad = None
        y = fn(t["x"], t["dt"], t["A"], t["B"], t["C"], 256, D=t["D"], z=t.get("z"), dt_bias=t["dt_bias"],
               dt_softplus=True)
        if bwd:
            y.backward(dy)
    dy = torch.randn_like(t["x"])
    return call


def _y(fn, t):
    with torch.no_grad():
        return fn(t["x"], t["dt"], t["A"], t["B"], t["C"], 256, D=t["D"], z=t.get("z"), dt_bias=t["dt_bias"],
                  dt_softplus=True).float()


def _rel_diff(a, b) -> float:
    """max |a - b| / max |b|."""
    return float((a - b).abs().max() / b.abs().max())


def rows(quick: bool = False):
    """Both Triton implementations (ARCHDSL_SSD_IMPL=fused, chunked) against the peer, yielded as measured;
    then the chunked one with the gate z at the longest L."""
    from archdsl.kernels.ssd import ssd_scan
    peer = _peer()
    lengths = [4096] if quick else [4096, 16384]
    cases = [(L, bwd, False, ("fused", "chunked")) for L in lengths for bwd in (False, True)]
    cases += [] if quick else [(16384, bwd, True, ("chunked",)) for bwd in (False, True)]
    for L, bwd, z, impls in cases:
        t = _inputs(4, L, grad=bwd, z=z)
        theirs = bench_or_nan(_scan_fn(peer, t, bwd)) if peer else None
        theirs_graph = graph_ms(_scan_fn(peer, t, bwd)) if peer and not bwd else None
        floor, note = _floor(4, L, bwd=bwd, z=z)
        scan = _scan_fn(lambda *a, **k: ssd_scan(*a[:5], chunk_size=a[5], **k), t, bwd)
        for impl in impls:
            ours = bench_or_nan(with_env("ARCHDSL_SSD_IMPL", impl, scan))
            row = dict(op=f"ssd_scan {impl}" + (" +z" if z else ""), shape=f"B=4 L={L} H=32 P=64 N=128 G=1",
                       mode="fwd+bwd" if bwd else "fwd", ours_ms=ours, peer="mamba_ssm", peer_ms=theirs,
                       floor_ms=floor, floor_note=note)
            if peer and not bwd:  # the timed outputs agree with the peer's (bf16 rounding apart)
                row["rel_diff"] = _rel_diff(with_env("ARCHDSL_SSD_IMPL", impl, lambda: _y(ssd_scan, t))(),
                                            _y(peer, t))
                row["rel_diff_of"] = "max|Δy|/max|y|"
            yield row
            if not bwd:  # the GPU's time alone: at 4K the plain call also times the host's launching
                yield dict(row, op=row["op"] + " graph", ours_ms=graph_ms(with_env("ARCHDSL_SSD_IMPL", impl, scan)),
                           peer_ms=theirs_graph)
    yield from _step_rows()


def _step_rows():
    """ssd_step against mamba_ssm's selective_state_update, called from Python (launch-bound: the
    kernel is a few µs) and replayed from a CUDA graph."""
    from archdsl.kernels.ssd import ssd_step
    batch, H, P, N = 4, 32, 64, 128
    dev, bf = "cuda", torch.bfloat16
    state = torch.zeros(batch, H, P, N, device=dev)
    x, z = torch.randn(batch, H, P, device=dev, dtype=bf), torch.randn(batch, H, P, device=dev, dtype=bf)
    dt = torch.randn(batch, H, device=dev, dtype=bf)
    A, D, bias = -torch.rand(H, device=dev), torch.randn(H, device=dev), torch.randn(H, device=dev)
    B, C = torch.randn(batch, 1, N, device=dev, dtype=bf), torch.randn(batch, 1, N, device=dev, dtype=bf)
    ours = lambda: ssd_step(state, x, dt, A, B, C, D=D, z=z, dt_bias=bias, dt_softplus=True)
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
        rep = lambda v, *s: v[..., None].expand(*s)
        args = (state, x, rep(dt, batch, H, P), rep(rep(A, H, P), H, P, N), B, C)
        theirs = lambda: selective_state_update(*args, D=rep(D, H, P), z=z, dt_bias=rep(bias, H, P),
                                                dt_softplus=True)
    except Exception:
        theirs = None
    nbytes = 2 * 4 * batch * H * P * N
    for how, wrap in (("", lambda f: f), (" graph", graphed)):
        yield dict(op="ssd_step" + how, shape=f"B={batch} H={H} P={P} N={N}", mode="fwd",
                   ours_ms=bench_ms(wrap(ours)), peer="mamba_ssm selective_state_update",
                   peer_ms=bench_or_nan(wrap(theirs)) if theirs else None, floor_ms=floor_ms(nbytes),
                   floor_note=f"{nbytes / 1e6:.1f} MB state read+write")


if __name__ == "__main__":
    import argparse
    import sys

    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    needs_cuda()
    sys.stdout.reconfigure(line_buffering=True)
    print(rates_line())
    print(f"{'op':16} {'mode':8} {'shape':34} {'ours ms':>9} {'peer ms':>9} {'ratio':>6} {'floor ms':>9} "
          f"{'% floor':>8}")
    for r in rows():
        peer = r["peer_ms"]
        ratio = f"{r['ours_ms'] / peer:.2f}" if peer else "-"
        print(f"{r['op']:16} {r['mode']:8} {r['shape']:34} {r['ours_ms']:9.4f} "
              f"{peer if peer is None else round(peer, 4)!s:>9} {ratio:>6} {r['floor_ms']:9.4f} "
              f"{100 * r['floor_ms'] / r['ours_ms']:7.1f}%")
