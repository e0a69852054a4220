"""Mamba-1 selective scan and causal conv1d: ours against mamba_ssm's CUDA kernels (where they build on the card),
the chunked torch path and F.conv1d, bf16, one GPU.

Floor at the card's rates (benchmarks/_bench.py: the H200's 4.2 TB/s and ~680 TFLOP/s bf16, an H100 SXM's
2.93 TB/s), each tensor moved once: the inputs and the output, and for fwd+bwd the output's gradient and the inputs'
gradients (a backward that re-reads its inputs is beyond the floor). Selective scan, a Mamba-1 layer of mamba-2.8b:
B=4, D=5120, N=16, G=1, per L tokens:
  forward bytes  = u, delta, z read + y written (4·B·D·L·2) + B, C (2·B·N·L·2)       ≈ 164 KB/token
  forward FLOPs  ≈ 8·B·D·N·L (scan, output contraction)                              ≈ 2.6 MFLOP/token (≪ bytes)
  fwd+bwd bytes  = forward + dy read, du, ddelta, dz, dB, dC written (8·B·D·L·2 + 4·B·N·L·2) ≈ 328 KB/token
At L=4096: forward floor 0.16 ms, fwd+bwd 0.32 ms on the H200 (0.23 and 0.46 ms on an H100). The forward rows are
timed once per forward (ARCHDSL_SCAN_FWD=serial|segments|gluon|auto; `shape … fwd=…`): the segmented one reads u,
delta and B twice and moves its fp32 segment states ([B, S, D, N], S ≈ 13 at L=4096: ≈ 3×17 MB) besides the
floor's bytes, ≈ 1.1 GB in all, and computes the scan twice (two exps per element). The fwd+bwd rows are timed once per backward
variant (ARCHDSL_SCAN_BWD=gluon|groups|threads), the default one against mamba_ssm's CUDA forward+backward
where both build (benchmarks/mamba_cuda.py); beyond the floor's bytes ours read the fp32 checkpoints
(4·B·D·N·L/64 ≈ 84 MB at L=4096) and add dB/dC into fp32 buffers through atomics (D/BLOCK_D adds per
element), and the groups and gluon ones keep a per-program scratch of sub-tile states that stays near L2.
Not in the floor, but binding in practice:
one exp per (b, d, n, t) element (two in the backward), B·D·N·L = 1.34e9 at L=4096; the H200's
special-function units do ~4.2e12 exp/s, so 0.32 ms forward is an exp-throughput bound (the H200's forward floor is
50% of it).
Causal conv1d (B=4, D=5120, W=4, silu): forward bytes = x read + y written (2·B·D·L·2);
fwd+bwd = forward + dy read, dx written (4·B·D·L·2). FLOPs negligible.
Decode step: the [B, D, N] fp32 state read and written, 2·4·B·D·N bytes.
"""
from __future__ import annotations

import functools
import os
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from _bench import bench_or_nan, floor_ms, graph_ms, needs_cuda, rates_line, with_env

BATCH, DIM, N = 4, 5120, 16


def _time(fn):
    from triton.testing import do_bench
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def _scan_inputs(L, grad):
    dev, bf = "cuda", torch.bfloat16
    t = dict(u=torch.randn(BATCH, DIM, L, device=dev, dtype=bf),
             delta=torch.randn(BATCH, DIM, L, device=dev, dtype=bf) * 0.5 - 2.0,
             A=-torch.rand(DIM, N, device=dev) * 8 - 0.5,
             B=torch.randn(BATCH, N, L, device=dev, dtype=bf), C=torch.randn(BATCH, N, L, device=dev, dtype=bf),
             D=torch.randn(DIM, device=dev), z=torch.randn(BATCH, DIM, L, device=dev, dtype=bf),
             delta_bias=torch.randn(DIM, device=dev) * 0.1)
    return {k: v.requires_grad_() for k, v in t.items()} if grad else t


def _scan_call(fn, t, bwd, keep=False):
    dy = torch.randn_like(t["u"])

    def call():
        if bwd:  # activations in a model: their gradients are not summed into .grad across calls
            for v in t.values():
                v.grad = None
        y = fn(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"], delta_bias=t["delta_bias"],
               delta_softplus=True)
        if bwd:
            y.backward(dy)
        return y if keep else None
    return call


@functools.lru_cache(maxsize=None)
def _mamba_cuda():
    """mamba_ssm's CUDA selective-scan forward, built from its sdist (benchmarks/mamba_cuda.py), or None;
    built or loaded once a run."""
    from mamba_cuda import load
    return load()


@functools.lru_cache(maxsize=None)
def _mamba_cuda_bwd():
    """mamba_ssm's CUDA selective-scan backward (benchmarks/mamba_cuda.py `load_bwd`: the benchmark's compile-time
    flags only), or None; built or loaded once a run."""
    from mamba_cuda import load_bwd
    return load_bwd()


def _mamba_fwd_bwd(fwd, bwd, t):
    """mamba_ssm's forward then backward on t's values, as its selective_scan_fn runs them (no autograd around
    them): the call (it returns du) and the dy it takes."""
    v = {k: x.detach() for k, x in t.items()}
    dy = torch.randn_like(v["u"])

    def call():
        out, x, _ = fwd.fwd(v["u"], v["delta"], v["A"], v["B"][:, None], v["C"][:, None], v["D"], v["z"],
                            v["delta_bias"], True)
        return bwd.bwd(v["u"], v["delta"], v["A"], v["B"][:, None], v["C"][:, None], v["D"], v["z"], v["delta_bias"],
                       dy, x, out, None, True, False)
    return call, dy


# the gradients mamba_ssm's backward returns, in its order (its dB and dC with their group axis of 1)
PEER_GRADS = ("u", "delta", "A", "B", "C", "D", "delta_bias", "z")


def _worst_grad(ours: dict, theirs) -> tuple[float, str]:
    """(the largest ‖ours − theirs‖ / ‖theirs‖ over every input's gradient, that input's name)."""
    diffs = {}
    for name, g in zip(PEER_GRADS, theirs):
        g = g.float().squeeze(1) if name in ("B", "C") else g.float()
        diffs[name] = ((ours[name].float() - g).norm() / g.norm()).item()
    name = max(diffs, key=diffs.get)
    return diffs[name], name


def _scan_floor(L, bwd):
    big, small = BATCH * DIM * L * 2, BATCH * N * L * 2
    nbytes = 8 * big + 4 * small if bwd else 4 * big + 2 * small
    flops = 8 * BATCH * DIM * N * L * (3 if bwd else 1)
    return floor_ms(nbytes, flops), f"{nbytes / 1e6:.0f} MB, {flops / 1e9:.0f} GFLOP"


def _conv_floor(L, bwd):
    """Causal conv1d at B=BATCH, D=DIM, bf16: x read and y written; forward+backward adds dy read and dx written."""
    nbytes = (4 if bwd else 2) * BATCH * DIM * L * 2
    return floor_ms(nbytes), f"{nbytes / 1e6:.0f} MB"


@contextmanager
def _scan_bwd(variant):
    old = os.environ.get("ARCHDSL_SCAN_BWD")
    os.environ["ARCHDSL_SCAN_BWD"] = variant
    try:
        yield
    finally:
        os.environ.pop("ARCHDSL_SCAN_BWD") if old is None else os.environ.__setitem__("ARCHDSL_SCAN_BWD", old)


FWD_VARIANTS = ("serial", "segments", "gluon", "auto")


def iter_scan_rows(Ls, peer_Ls):
    """Rows one at a time (the forward with each ARCHDSL_SCAN_FWD value, then fwd+bwd with each
    backward variant after the default forward), so a caller can print them."""
    from archdsl.kernels.selective_scan import selective_scan
    from archdsl.kernels.selective_scan.chunked import selective_scan_chunked
    for L in Ls:
        t = _scan_inputs(L, False)
        # the torch path (the CPU path: a step-by-step loop per chunk, since 2026-11-28; before, a
        # [B, D, N, T, T] form per chunk, 1044 ms here) as a reference point for the forward
        theirs = _time(_scan_call(selective_scan_chunked, t, False)) if L in peer_Ls else None
        floor, note = _scan_floor(L, False)
        for fwd in FWD_VARIANTS:
            ours = bench_or_nan(with_env("ARCHDSL_SCAN_FWD", fwd, _scan_call(selective_scan, t, False)))
            yield dict(op="selective_scan", shape=f"B={BATCH} L={L} D={DIM} N={N} fwd={fwd}", mode="fwd",
                       ours_ms=ours, peer="chunked torch (GPU)", peer_ms=theirs, floor_ms=floor, floor_note=note)
        cuda = _mamba_cuda()
        if cuda is not None:  # the same forward against mamba_ssm's CUDA kernel, outputs compared
            def theirs_call():
                return cuda.fwd(t["u"], t["delta"], t["A"], t["B"][:, None], t["C"][:, None], t["D"], t["z"],
                                t["delta_bias"], True)[2]
            y_ours, y_theirs = _scan_call(selective_scan, t, False, keep=True)(), theirs_call()
            diff = ((y_ours.float() - y_theirs.float()).norm() / y_theirs.float().norm()).item()
            yield dict(op="selective_scan", shape=f"B={BATCH} L={L} D={DIM} N={N} fwd=default", mode="fwd",
                       ours_ms=bench_or_nan(_scan_call(selective_scan, t, False)), peer="mamba_ssm CUDA",
                       peer_ms=bench_or_nan(theirs_call), floor_ms=floor, floor_note=note, rel_diff=diff,
                       rel_diff_of="‖Δy‖/‖y‖")
        t = None  # freed before the next length
        torch.cuda.empty_cache()
        cuda_bwd = _mamba_cuda_bwd() if cuda is not None else None
        for variant in ("gluon", "groups", "threads"):
            t = _scan_inputs(L, True)
            with _scan_bwd(variant):
                ours = bench_or_nan(_scan_call(selective_scan, t, True))
            floor, note = _scan_floor(L, True)
            row = dict(op="selective_scan", shape=f"B={BATCH} L={L} D={DIM} N={N} bwd={variant}", mode="fwd+bwd",
                       ours_ms=ours, peer="chunked torch (GPU)", peer_ms=None, floor_ms=floor, floor_note=note)
            if variant == "gluon" and cuda_bwd is not None:  # against mamba_ssm's CUDA fwd+bwd, every gradient
                theirs_call, dy = _mamba_fwd_bwd(cuda, cuda_bwd, t)
                theirs = theirs_call()
                with _scan_bwd(variant):
                    y = selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"],
                                       delta_bias=t["delta_bias"], delta_softplus=True)
                    ours = dict(zip(PEER_GRADS, torch.autograd.grad(y, [t[k] for k in PEER_GRADS], dy)))
                worst, name = _worst_grad(ours, theirs)
                theirs = ours = y = None
                row.update(peer="mamba_ssm CUDA", peer_ms=bench_or_nan(theirs_call), rel_diff=worst,
                           rel_diff_of=f"worst ‖Δg‖/‖g‖ of the 8 gradients: d{name}")
            t = None
            torch.cuda.empty_cache()
            yield row


def scan_rows(Ls, peer_Ls):
    return list(iter_scan_rows(Ls, peer_Ls))


def conv_rows(Ls):
    from archdsl.kernels.conv1d import causal_conv1d
    out = []
    for L in Ls:
        for bwd in (False, True):
            dev, bf = "cuda", torch.bfloat16
            x = torch.randn(BATCH, DIM, L, device=dev, dtype=bf, requires_grad=bwd)
            w = torch.randn(DIM, 4, device=dev, dtype=bf, requires_grad=bwd)
            b = torch.randn(DIM, device=dev, dtype=bf, requires_grad=bwd)
            dy = torch.randn_like(x)
            ref = lambda x, w, b, activation: F.silu(F.conv1d(x, w[:, None], b, padding=3, groups=DIM)[..., :L])

            def call(fn):
                def go():
                    for v in (x, w, b) if bwd else ():  # no .grad summed across calls
                        v.grad = None
                    y = fn(x, w, b, activation="silu")
                    if bwd:
                        y.backward(dy)
                return go
            floor, note = _conv_floor(L, bwd)
            out.append(dict(op="causal_conv1d", shape=f"B={BATCH} L={L} D={DIM} W=4", mode="fwd+bwd" if bwd else "fwd",
                            ours_ms=_time(call(causal_conv1d)), peer="torch F.conv1d", peer_ms=_time(call(ref)),
                            floor_ms=floor, floor_note=note))
    return out


def step_rows():
    """selective_state_update against mamba_ssm's, called from Python (launch-bound: the kernel is a few µs,
    so that figure moves with the host) and replayed from a CUDA graph, as a decode loop runs it (the GPU's
    time)."""
    from archdsl.kernels.selective_scan import selective_state_update
    dev, bf = "cuda", torch.bfloat16
    state = torch.zeros(BATCH, DIM, N, device=dev)
    x, z, dt = (torch.randn(BATCH, DIM, device=dev, dtype=bf) for _ in range(3))
    A, D, bias = -torch.rand(DIM, N, device=dev), torch.randn(DIM, device=dev), torch.randn(DIM, device=dev)
    B, C = torch.randn(BATCH, N, device=dev, dtype=bf), torch.randn(BATCH, N, device=dev, dtype=bf)
    args = (state, x, dt, A, B, C)
    kw = dict(D=D, z=z, dt_bias=bias, dt_softplus=True)
    ours = lambda: selective_state_update(*args, **kw)
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update as theirs_fn
        theirs = lambda: theirs_fn(*args, **kw)
    except Exception:  # the peer is optional
        theirs = None
    # the float32 state read and written, A [D, N], D and dt_bias in float32; x, z, dt in and y out, B and C, bf16
    nbytes = 2 * 4 * BATCH * DIM * N + 4 * DIM * (N + 2) + 2 * (4 * BATCH * DIM + 2 * BATCH * N)
    for how, time in (("", _time), (" graph", graph_ms)):
        yield dict(op="selective_state_update" + how, shape=f"B={BATCH} D={DIM} N={N}", mode="fwd",
                   ours_ms=time(ours), peer="mamba_ssm selective_state_update",
                   peer_ms=time(theirs) if theirs else None, floor_ms=floor_ms(nbytes),
                   floor_note=f"{nbytes / 1e6:.2f} MB: the state read+write, A, the vectors")


def rows(quick: bool = False):
    """All rows, yielded as measured."""
    Ls = [4096] if quick else [4096, 16384]
    yield from iter_scan_rows(Ls, peer_Ls=[4096])
    yield from conv_rows(Ls)
    yield from step_rows()


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    needs_cuda()
    print(rates_line())
    print(f"{'op':22} {'mode':8} {'shape':36} {'ours ms':>9} {'peer ms':>9} {'ratio':>6} {'floor ms':>9} {'% floor':>8}")
    # printed stage by stage so that a run cut short still reports what it measured
    stages = [lambda: iter_scan_rows([4096], [4096]), lambda: conv_rows([4096]), step_rows,
              lambda: iter_scan_rows([16384], []), lambda: conv_rows([16384])]
    for r in (r for stage in stages for r in stage()):
        peer = r["peer_ms"]
        ratio = f"{r['ours_ms'] / peer:.2f}" if peer else "-"
        print(f"{r['op']:22} {r['mode']:8} {r['shape']:36} {r['ours_ms']:9.4f} "
              f"{peer if peer is None else round(peer, 4)!s:>9} {ratio:>6} {r['floor_ms']:9.4f} "
              f"{100 * r['floor_ms'] / r['ours_ms']:7.1f}%", flush=True)
    from archdsl.kernels.selective_scan import triton_selective_scan
    print("tiles chosen (forward, groups backward (BLOCK_D, NS, T, warps, cap), threads backward (BLOCK_D, warps),"
          " segments):",
          triton_selective_scan._best)
