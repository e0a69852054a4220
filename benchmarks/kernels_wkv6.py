"""Benchmark: wkv6 (ours, Triton) vs fla's chunk_rwkv6, wkv6_step vs the torch step and fla's fused_recurrent_rwkv6
over one token, and wkv4 (ours, Triton) vs the torch time loop.

Floor at the card's rates (benchmarks/_bench.py: the H200's 4.2 TB/s and ~680 TFLOP/s bf16, an H100 SXM's
2.93 TB/s), each tensor moved once: the inputs and the output, and for fwd+bwd the output's gradient and the inputs'
gradients (a backward that re-reads its inputs is beyond the floor). Per (batch, head, token), K = V = 64, bf16:
  wkv6 fwd      bytes: read r, k, w (3K) + v (V), write o (V)                = (3K + 2V) · 2 B = 640 B
                FLOPs: state read r·S and write k⊗v (2·2·K·V) + the 16-token
                       in-chunk pairs (2·16·(K + V))                          ≈ 20.5 kFLOP
  wkv6 fwd+bwd  bytes: forward's + read do (V), write dr, dk, dw (3K), dv (V) = (6K + 4V) · 2 B = 1280 B
                FLOPs: ≈ 3× forward
  B=4, T=4096, H=32 → 524k (b, h, t): H200 fwd ≥ 80 µs, fwd+bwd ≥ 160 µs (bytes; FLOPs ≤ 47 µs);
  H100 114 µs and 229 µs.
  wkv4 (bf16 k, v; fp32 w, u per channel), per (b, t, c): fwd reads k, v and writes y, 6 B; fwd+bwd adds gy read
  and gk, gv written, 12 B (our backward's fp32 y and log-denominator between its sweeps are beyond the floor).
"""
from __future__ import annotations

import torch
from _bench import bench_ms, bench_or_nan, floor_ms, needs_cuda, rates_line, with_env


def _wkv6_floor(n, K, V, bwd):
    """Floor ms of wkv6 over n (batch, head, token) in bf16 (the docstring's counts)."""
    nbytes = (6 * K + 4 * V if bwd else 3 * K + 2 * V) * 2
    flops = (2 * 2 * K * V + 2 * 16 * (K + V)) * (3 if bwd else 1)
    return floor_ms(n * nbytes, n * flops)


def _wkv4_floor(n, bwd):
    """Floor ms of wkv4 over n (batch, token, channel) with bf16 k, v: 6 bytes each forward, 12 forward+backward."""
    return floor_ms((12 if bwd else 6) * n)


def _wkv6_inputs(B, T, H, K, dtype=torch.bfloat16):
    g = lambda: torch.randn(B, T, H, K, device="cuda", dtype=dtype)
    w = torch.nn.functional.logsigmoid(g().float()).to(dtype)
    return [g(), g(), g(), w, torch.randn(H, K, device="cuda", dtype=dtype)]


def _fwd_bwd(fn, xs):
    xs = [x.detach().requires_grad_() for x in xs]
    do = []  # the output's gradient, made at the first call (outside the timings: do_bench's first call is not timed)

    def go():
        for x in xs:  # activations in a model: their gradients are not summed into .grad across calls
            x.grad = None
        o = fn(*xs)[0]
        if not do:
            do.append(torch.ones_like(o))
        o.backward(do[0])
    return go


def _against_fla(wkv6, chunk_rwkv6, xs, bwd):
    """(‖ours − fla‖ / ‖fla‖ at its worst: the output, or with bwd every input's gradient too; what it is of)."""
    def run(fn):
        ins = [x.detach().requires_grad_(bwd) for x in xs]
        o = fn(*ins)[0]
        if not bwd:
            return {"o": o.detach().float()}
        grads = torch.autograd.grad(o, ins, torch.ones_like(o))
        return dict(o=o.detach().float(), **{f"d{n}": g.float() for n, g in zip("rkvwu", grads)})

    ours, theirs = run(wkv6), run(chunk_rwkv6)
    diffs = {n: ((ours[n] - theirs[n]).norm() / theirs[n].norm()).item() for n in theirs}
    name = max(diffs, key=diffs.get)
    return diffs[name], f"worst ‖Δ‖/‖fla‖ of {', '.join(diffs)}: {name}" if bwd else "‖Δo‖/‖o‖"


def wkv6_rows(quick=False):
    return _wkv6_rows(quick)


def _wkv6_rows(quick):
    """Both Triton implementations, each forced, against fla; rows come out as they are measured."""
    from archdsl.kernels.wkv6 import wkv6
    try:
        from fla.ops.rwkv6 import chunk_rwkv6
    except ImportError:
        chunk_rwkv6 = None
    B, H, K = 4, 32, 64
    for T in ([4096] if quick else [4096, 16384]):
        xs = _wkv6_inputs(B, T, H, K)
        n = B * T * H
        for mode in ("fwd", "fwd+bwd"):
            peer_ms = None
            if chunk_rwkv6 is not None:
                peer_ms = bench_or_nan((lambda: chunk_rwkv6(*xs)) if mode == "fwd" else _fwd_bwd(chunk_rwkv6, xs))
            for impl in ("serial", "chunked"):
                ours = with_env("ARCHDSL_WKV6_IMPL", impl, (lambda: wkv6(*xs)) if mode == "fwd" else _fwd_bwd(wkv6, xs))
                row = dict(op=f"wkv6 {impl}", shape=f"B={B} T={T} H={H} K=V={K}", mode=mode,
                           ours_ms=bench_or_nan(ours), peer="fla chunk_rwkv6", peer_ms=peer_ms,
                           floor_ms=_wkv6_floor(n, K, K, mode == "fwd+bwd"), floor_note="HBM bytes")
                if chunk_rwkv6 is not None:  # the same values, checked once (outside the timings)
                    diff, of = with_env("ARCHDSL_WKV6_IMPL", impl,
                                        lambda: _against_fla(wkv6, chunk_rwkv6, xs, mode == "fwd+bwd"))()
                    row.update(rel_diff=diff, rel_diff_of=of)
                yield row


def wkv6_chunked_breakdown_rows():
    """Where the chunked forward's time goes (B4 T4096): its serial pass over segment boundaries
    alone; the rest of the forward is the parallel segment kernel."""
    from archdsl.kernels.wkv6.triton_wkv6_chunked import CHUNK, segment_states
    B, T, H, K = 4, 4096, 32, 64
    r, k, v, w, u = _wkv6_inputs(B, T, H, K)
    n = B * T * H
    state_bytes = B * H * (T // CHUNK + 1) * K * K * 4  # fp32 boundary states written
    ms = bench_or_nan(lambda: segment_states(k, v, w, None, False, CHUNK))
    yield dict(op="wkv6 chunked: states", shape=f"B={B} T={T} H={H} K=V={K}", mode="fwd part",
               ours_ms=ms, peer=None, peer_ms=None, floor_ms=floor_ms(n * 3 * K * 2 + state_bytes, 0),
               floor_note="k, v, w read + fp32 boundary states written")


def wkv6_step_rows(quick=False):
    """The decode step, H32 K=V=64, bf16 inputs and a float32 state, B1 and B64: ours (the Triton kernel) against the
    torch step it replaced and fla's fused_recurrent_rwkv6 over one token."""
    from archdsl.kernels.wkv6 import wkv6_step
    from archdsl.kernels.wkv6.naive import wkv6_step_naive
    try:
        from fla.ops.rwkv6 import fused_recurrent_rwkv6
    except ImportError:
        fused_recurrent_rwkv6 = None
    H, K = 32, 64
    for B in (1, 64):
        r, k, v = (torch.randn(B, H, K, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        w = torch.nn.functional.logsigmoid(torch.randn(B, H, K, device="cuda")).to(torch.bfloat16)
        u = torch.randn(H, K, device="cuda", dtype=torch.bfloat16)
        state = torch.zeros(B, H, K, K, device="cuda")
        row = dict(op="wkv6_step", shape=f"B={B} H={H} K=V={K}", mode="step",
                   ours_ms=bench_ms(lambda: wkv6_step(state, r, k, v, w, u, 1.0)),
                   floor_ms=floor_ms(B * H * K * K * 4 * 2, 0), floor_note="fp32 state read and written")
        yield dict(row, peer="torch step", peer_ms=bench_ms(lambda: wkv6_step_naive(state, r, k, v, w, u, 1.0)))
        if fused_recurrent_rwkv6 is not None:
            xs = [t[:, None] for t in (r, k, v, w)]  # [B, 1, H, K]: one token
            yield dict(row, peer="fla fused_recurrent_rwkv6",
                       peer_ms=bench_or_nan(lambda: fused_recurrent_rwkv6(*xs, u, 1.0, state, True)))


def wkv4_rows(quick=False):
    from archdsl.kernels.wkv4 import wkv4
    from archdsl.kernels.wkv4.chunked import wkv4_torch
    B, T, C = 4, 1024, 2048  # the torch loop launches ~12 kernels a token
    w, u = (torch.randn(C, device="cuda") for _ in range(2))
    k, v = (torch.randn(B, T, C, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    n = B * T * C
    rows = [dict(op="wkv4", shape=f"B={B} T={T} C={C}", mode="fwd", ours_ms=bench_ms(lambda: wkv4(w, u, k, v)),
                 peer="torch time loop", peer_ms=bench_ms(lambda: wkv4_torch(w, u, k, v)),
                 floor_ms=_wkv4_floor(n, False), floor_note="HBM bytes")]
    rows.append(dict(op="wkv4", shape=rows[0]["shape"], mode="fwd+bwd",
                     ours_ms=bench_ms(_fwd_bwd(lambda *a: wkv4(*a), [w, u, k, v])), peer="torch time loop",
                     peer_ms=None, floor_ms=_wkv4_floor(n, True), floor_note="HBM bytes"))
    from archdsl.kernels.wkv4 import wkv4_step
    from archdsl.kernels.wkv4.naive import wkv4_step_naive
    for B in (1, 64):  # the decode step: its Triton kernel against the torch step
        kt, vt = k[:1, 0].expand(B, C).contiguous(), v[:1, 0].expand(B, C).contiguous()
        state = (torch.zeros(B, C, device="cuda"), torch.zeros(B, C, device="cuda"),
                 torch.full((B, C), -1e38, device="cuda"))
        rows.append(dict(op="wkv4_step", shape=f"B={B} C={C}", mode="step",
                         ours_ms=bench_ms(lambda: wkv4_step(w, u, kt, vt, state)), peer="torch step",
                         peer_ms=bench_ms(lambda: wkv4_step_naive(w, u, kt, vt, state)),
                         floor_ms=floor_ms(B * C * (2 * 2 + 3 * 4 * 2 + 2) + 2 * 4 * C, 0), floor_note="HBM bytes"))
    return rows


def rows(quick: bool = False):
    """Rows as they are measured (a generator): the peer's autotuning is slow, a cut run keeps the rest."""
    yield from wkv6_rows(quick)
    yield from wkv6_chunked_breakdown_rows()
    yield from wkv6_step_rows(quick)
    yield from wkv4_rows(quick)


if __name__ == "__main__":
    import argparse
    import itertools
    import sys

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the smaller shapes only")
    quick = ap.parse_args().quick
    needs_cuda()
    sys.stdout.reconfigure(line_buffering=True)
    print(rates_line())
    print(f"{'op':13} {'shape':28} {'mode':8} {'ours ms':>9} {'peer ms':>9} {'ours/peer':>9} {'floor ms':>9} {'%floor':>7}  peer")
    for r in itertools.chain(_wkv6_rows(quick), wkv6_step_rows(quick), wkv4_rows(quick)):
        ratio = f"{r['ours_ms'] / r['peer_ms']:.2f}" if r["peer_ms"] else "-"
        peer_ms = f"{r['peer_ms']:.3f}" if r["peer_ms"] else "-"
        print(f"{r['op']:13} {r['shape']:28} {r['mode']:8} {r['ours_ms']:9.3f} {peer_ms:>9} {ratio:>9} "
              f"{r['floor_ms']:9.3f} {100 * r['floor_ms'] / r['ours_ms']:6.1f}%  {r['peer']}")
