"""What packed sequences and dt_limit cost on the GPU (bf16, one process), printed as a table.

    python benchmarks/packing.py [conv ssd layer wkv6 wkv4 attn scan rows varlen]     (the parts to run; all by default)

- causal_conv1d, B4 D5120 L4096 width 4, 8 sequences a row, both layouts: the forward and backward kernels
  (conv_fwd / conv_bwd) without and with seq_idx's runs, and the op's forward, which adds seq_runs.
- ssd_scan, B4 L4096 H32 P64 N128 G1 (softplus, dt_bias, D): dt_limit None, (0, inf), (1e-3, inf); three rounds
  alternated, each figure the minimum of its rounds (the forward at 4K is host-bound and moves with the host),
  and whether y with (0, inf) is bit-identical to None (softplus(dt + dt_bias) > 0: it must be).
- A Mamba-2 layer (d 2560, B4 L2048), dt_floor 0 against 1e-3 (dt_limit inside the kernels), same weights.
- wkv6, H32 K=V=64 bf16, each Triton layout forced: B4 T4096 without and with seq_idx (8 sequences a row), with
  fla's chunk_rwkv6 at that shape; and one row of 16384 tokens packing 16 sequences (cut at 15 random points),
  against fla's chunk_rwkv6 with the same cu_seqlens (its varlen form takes one row); forward, forward+backward;
  and that row with a state each (cu_seqlens with initial and final states [16, H, K, V]: one program walks each
  sequence (serial), or pieces of 64 tokens after a boundary pass a sequence (chunked)), against fla's; and a row of
  63 sequences of 128 tokens then one of 8320 with a state each: serial with the longest sequence's programs started
  first (the default) and last, and chunked.
- wkv4, B4 T4096 C2048 bf16 on its Triton kernels: without seq_idx and with 8 sequences a row.
- attention of packed rows, B1 L16384 (16 sequences, as wkv6's), 32 query heads on 8 key heads of 128, bf16:
  SDPA with the dense mask against `packed_sdpa`'s varlen flash attention, and plain causal flash attention over
  the whole row (no packing) for scale; forward, forward+backward.
- selective_scan (Mamba-1), B4 D5120 N16 L4096 (softplus, delta_bias, D, z), 8 sequences a row: without seq_idx
  (the Gluon kernels), and with it (the default kernels: the Gluon ones, which read the starts as bits); and
  without seq_idx with those Triton kernels forced, to tell the restarts' cost from the kernels'.
- S4D, whose kernel cannot restart and so runs each packed sequence in a row of its own (Packed.in_rows, rows of
  power-of-two widths), and RWKV-4, whose WKV restarts at each sequence (wkv4's seq_idx; in_rows before): a
  4-layer model of each (d 2048, B4 L4096, bf16), without seq_idx, with 8 equal sequences a row and with one long
  sequence and 8 short ones a row (3584 + 8 x 64: rows as long as the longest would take 7.9 times B·L steps,
  in_rows' the same B·L); forward, forward+backward of the summed logits.
- ssd_scan's return_varlen_states, one row of 16384 tokens packing 16 sequences, H32 P64 N128 bf16: the scan with
  seq_idx alone, and with cu_seqlens and return_varlen_states (each sequence's last state, in torch after the scan).
Median of triton.testing.do_bench for each figure.
"""
from __future__ import annotations

import argparse
import os

import torch
from _bench import fail, needs_cuda
from triton.testing import do_bench

from archdsl.kernels import causal_conv1d, ssd_scan, wkv6
from archdsl.kernels._host import seq_runs
from archdsl.kernels.conv1d import triton_conv1d as tc


def ms(fn) -> float:
    return do_bench(fn, warmup=25, rep=150, return_mode="median")


def conv_rows(B=4, D=5120, L=4096):
    seq = torch.repeat_interleave(torch.arange(8, device="cuda"), L // 8)[None].expand(B, L).contiguous()
    runs = seq_runs(seq)
    print(f"seq_runs (the op's host-side preparation): {ms(lambda: seq_runs(seq)):.3f} ms")
    w, b = torch.randn(D, 4, device="cuda") * 0.5, torch.randn(D, device="cuda")
    for channels_last in (True, False):
        x = (torch.randn(B, L, D + 8, device="cuda", dtype=torch.bfloat16)[:, :, :D].transpose(1, 2) if channels_last
             else torch.randn(B, D, L, device="cuda", dtype=torch.bfloat16))
        dy = torch.randn_like(x)
        for r in (None, runs):
            with torch.no_grad():
                op = ms(lambda: causal_conv1d(x, w, b, "silu", seq_idx=None if r is None else seq))
            print(f"conv {'channels-last' if channels_last else 'steps-contiguous':17} "
                  f"{'seq_idx' if r is not None else 'no seq_idx':10}  kernel fwd {ms(lambda: tc.conv_fwd(x, w, b, None, r, True)):.3f}"
                  f"  bwd {ms(lambda: tc.conv_bwd(x, w, b, None, r, dy, True)):.3f}  op fwd {op:.3f} ms")


def ssd_rows(B=4, L=4096, H=32, P=64, N=128, rounds=3):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(B, L, H, P, device="cuda", dtype=torch.bfloat16, generator=g)
    dt = (torch.rand(B, L, H, device="cuda", generator=g) - 4).to(torch.bfloat16)
    A = -torch.rand(H, device="cuda", generator=g) - 0.5
    Bm = torch.randn(B, L, 1, N, device="cuda", dtype=torch.bfloat16, generator=g) / N ** 0.5
    Cm = torch.randn_like(Bm)
    D, bias = torch.ones(H, device="cuda"), torch.rand(H, device="cuda", generator=g) - 2
    leaves = [t.requires_grad_() for t in (x, dt, Bm, Cm)]
    dy = torch.randn_like(x)
    scan = lambda lim: ssd_scan(x, dt, A, Bm, Cm, D=D, dt_bias=bias, dt_softplus=True, dt_limit=lim)  # noqa: E731
    with torch.no_grad():
        same = torch.equal(scan(None), scan((0.0, float("inf"))))
    print(f"ssd_scan y with dt_limit=(0, inf) bit-identical to None: {same}")
    times = {lim: [] for lim in (None, (0.0, float("inf")), (1e-3, float("inf")))}
    for _ in range(rounds):
        for lim, got in times.items():
            with torch.no_grad():
                fwd = ms(lambda: scan(lim))
            got.append((fwd, ms(lambda: torch.autograd.grad(scan(lim), leaves, dy))))
    for lim, got in times.items():
        print(f"ssd_scan B{B} L{L} H{H} P{P} N{N} dt_limit={str(lim):14} fwd {min(f for f, _ in got):.3f} "
              f"({', '.join(f'{f:.3f}' for f, _ in got)})  fwd+bwd {min(b for _, b in got):.3f} "
              f"({', '.join(f'{b:.3f}' for _, b in got)}) ms")


def layer_rows(d=2560, B=4, L=2048, rounds=3):
    from archdsl.blocks.mamba2 import Mamba2Config
    from archdsl.model.modules.mamba2 import Mamba2

    mods = {floor: Mamba2(Mamba2Config(d_model=d, dt_floor=floor)).cuda().to(torch.bfloat16) for floor in (0.0, 1e-3)}
    mods[1e-3].load_state_dict(mods[0.0].state_dict())
    x = torch.randn(B, L, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn_like(x)
    times = {floor: [] for floor in mods}
    for _ in range(rounds):
        for floor, m in mods.items():
            params = [x] + list(m.parameters())
            with torch.no_grad():
                fwd = ms(lambda: m(x))
            times[floor].append((fwd, ms(lambda: torch.autograd.grad(m(x), params, dy))))
    for floor, got in times.items():
        print(f"mamba2 layer d{d} B{B} L{L} dt_floor={floor}: fwd {min(f for f, _ in got):.3f} "
              f"({', '.join(f'{f:.3f}' for f, _ in got)})  fwd+bwd {min(b for _, b in got):.3f} "
              f"({', '.join(f'{b:.3f}' for _, b in got)}) ms")


def wkv6_rows(H=32, K=64):
    try:
        from fla.ops.rwkv6 import chunk_rwkv6
    except ImportError:
        chunk_rwkv6 = None

    def inputs(B, T):
        xs = [torch.randn(B, T, H, K, device="cuda", dtype=torch.bfloat16) for _ in range(4)]
        xs[3] = torch.nn.functional.logsigmoid(xs[3].float()).to(torch.bfloat16)
        return [x.requires_grad_() for x in xs] + [torch.randn(H, K, device="cuda", dtype=torch.bfloat16)]

    def show(name, fn, xs):
        with torch.no_grad():
            fwd = ms(lambda: fn(*xs))

        def both():
            o = fn(*xs)[0]
            torch.autograd.grad(o, xs[:4], torch.ones_like(o))
        print(f"{name:52} fwd {fwd:.3f}  fwd+bwd {ms(both):.3f} ms")

    B, T = 4, 4096
    xs = inputs(B, T)
    seq = torch.repeat_interleave(torch.arange(8, device="cuda"), T // 8)[None].expand(B, T).contiguous()
    for impl in ("serial", "chunked"):
        os.environ["ARCHDSL_WKV6_IMPL"] = impl
        for s in (None, seq):
            show(f"wkv6 {impl:7} B{B} T{T} H{H} K=V={K} {'seq_idx, 8 a row' if s is not None else 'no seq_idx'}",
                 lambda *a, s=s: wkv6(*a, seq_idx=s), xs)
    T = 16384
    cuts = torch.randperm(T - 1, generator=torch.Generator().manual_seed(0))[:15].sort().values + 1
    cu = torch.cat([torch.zeros(1, dtype=torch.long), cuts, torch.full((1,), T)])
    lengths = cu.diff()
    cu = cu.cuda()
    seq = torch.repeat_interleave(torch.arange(16), lengths)[None].cuda()
    xs = inputs(1, T)
    print(f"one row of {T} tokens: 16 sequences of {lengths.min().item()} to {lengths.max().item()} tokens")
    for impl in ("serial", "chunked"):
        os.environ["ARCHDSL_WKV6_IMPL"] = impl
        show(f"wkv6 {impl:7} B1 T{T} H{H} K=V={K} seq_idx", lambda *a: wkv6(*a, seq_idx=seq), xs)
    h0 = torch.randn(16, H, K, K, device="cuda")
    for impl in ("serial", "chunked"):
        os.environ["ARCHDSL_WKV6_IMPL"] = impl
        show(f"wkv6 {impl:7} B1 T{T} H{H} K=V={K} cu_seqlens, a state each", lambda *a: wkv6(*a, None, h0, True, cu),
             xs)
    # the programs of the longest sequences first (varlen_plan) against the sequences' own order, where one long
    # sequence comes last among many short ones
    from archdsl.kernels.wkv6 import triton_wkv6
    last = torch.tensor([*range(0, 63 * 128 + 1, 128), T], device="cuda")  # 63 x 128 tokens, then 8320
    h64 = torch.randn(64, H, K, K, device="cuda")
    plan = triton_wkv6.varlen_plan
    os.environ["ARCHDSL_WKV6_IMPL"] = "serial"
    for name, order in (("longest first", plan), ("in order", lambda c: torch.cat([c.int(), torch.arange(
            c.numel() - 1, dtype=torch.int32, device=c.device)]))):
        triton_wkv6.varlen_plan = order
        show(f"wkv6 serial  B1 T{T} 63 x 128 + 8320, states, {name}", lambda *a: wkv6(*a, None, h64, True, last), xs)
    triton_wkv6.varlen_plan = plan
    os.environ["ARCHDSL_WKV6_IMPL"] = "chunked"
    show(f"wkv6 chunked B1 T{T} 63 x 128 + 8320, states", lambda *a: wkv6(*a, None, h64, True, last), xs)
    if chunk_rwkv6 is not None:  # last: its autotuning takes minutes the first time
        show(f"fla chunk_rwkv6 B1 T{T} H{H} K=V={K} cu_seqlens", lambda *a: chunk_rwkv6(*a, cu_seqlens=cu), xs)
        show(f"fla chunk_rwkv6 B1 T{T} H{H} K=V={K} cu_seqlens, a state each",
             lambda *a: chunk_rwkv6(*a, None, h0, True, cu_seqlens=cu), xs)
        show(f"fla chunk_rwkv6 B1 T{T} 63 x 128 + 8320, states",
             lambda *a: chunk_rwkv6(*a, None, h64, True, cu_seqlens=last), xs)
        xs = inputs(B, 4096)
        show(f"fla chunk_rwkv6 B{B} T4096 H{H} K=V={K}", chunk_rwkv6, xs)


def scan_rows(B=4, D=5120, N=16, L=4096):
    from archdsl.kernels import selective_scan

    g = torch.Generator(device="cuda").manual_seed(0)
    u, z = (torch.randn(B, D, L, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
    delta = (torch.rand(B, D, L, device="cuda", generator=g) - 4).to(torch.bfloat16)
    A = -torch.rand(D, N, device="cuda", generator=g) - 0.5
    Bm, Cm = (torch.randn(B, N, L, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
    Dv, bias = torch.ones(D, device="cuda"), torch.rand(D, device="cuda", generator=g) - 2
    seq = torch.repeat_interleave(torch.arange(8, device="cuda"), L // 8)[None].expand(B, L).contiguous()
    leaves = [t.requires_grad_() for t in (u, delta, Bm, Cm, z)]
    dy = torch.randn_like(u)
    scan = lambda s: selective_scan(u, delta, A, Bm, Cm, D=Dv, z=z, delta_bias=bias, delta_softplus=True,  # noqa: E731
                                    seq_idx=s)
    cases = [("no seq_idx (Gluon)", None, {}), ("seq_idx, 8 sequences (default kernels)", seq, {}),
             ("no seq_idx, Triton forced", None, {"ARCHDSL_SCAN_FWD": "serial", "ARCHDSL_SCAN_BWD": "groups"})]
    for name, s, env in cases:
        os.environ.update(env)
        with torch.no_grad():
            fwd = ms(lambda: scan(s))
        both = ms(lambda: torch.autograd.grad(scan(s), leaves, dy))
        for k in env:
            del os.environ[k]
        print(f"selective_scan B{B} D{D} N{N} L{L} {name:32} fwd {fwd:.3f}  fwd+bwd {both:.3f} ms")


def attn_rows(T=16384, H=32, Hkv=8, hd=128):
    from archdsl.model.modules.attn import _varlen_attn, packed_sdpa, sdpa
    from archdsl.model.packed import Packed

    cuts = torch.randperm(T - 1, generator=torch.Generator().manual_seed(0))[:15].sort().values + 1
    lengths = torch.cat([torch.zeros(1, dtype=torch.long), cuts, torch.full((1,), T)]).diff()
    packed = Packed.of(torch.repeat_interleave(torch.arange(16), lengths)[None].cuda())
    q = torch.randn(1, H, T, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(1, Hkv, T, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    print(f"attention, one row of {T} tokens (16 sequences), H{H} Hkv{Hkv} hd{hd} bf16; varlen_attn: "
          f"{'yes' if _varlen_attn() else 'no'}; the dense mask {T * T / 2**20:.0f} MiB")
    cases = {"dense mask (SDPA)": lambda: sdpa(q, k, v, mask=packed.attn_mask(), gqa=True),
             "packed_sdpa": lambda: packed_sdpa(q, k, v, packed),
             "causal, not packed (flash)": lambda: sdpa(q, k, v, causal=True, gqa=True)}
    for name, fn in cases.items():
        with torch.no_grad():
            fwd = ms(fn)

        def both(fn=fn):
            torch.autograd.grad(fn(), (q, k, v), torch.ones_like(q))
        print(f"{name:52} fwd {fwd:.3f}  fwd+bwd {ms(both):.3f} ms")


def wkv4_rows(B=4, T=4096, C=2048):
    """wkv4 on its Triton kernels, bf16 k and v: without seq_idx and with 8 sequences a row (the restart flag a
    token in the forward and both backward sweeps)."""
    from archdsl.kernels import wkv4
    w, u = torch.randn(C, device="cuda"), torch.randn(C, device="cuda")
    k, v = (torch.randn(B, T, C, device="cuda", dtype=torch.bfloat16).requires_grad_() for _ in range(2))
    seq = torch.repeat_interleave(torch.arange(8, device="cuda"), T // 8)[None].expand(B, T).contiguous()
    for name, s in (("no seq_idx", None), ("seq_idx, 8 a row", seq)):
        with torch.no_grad():
            fwd = ms(lambda: wkv4(w, u, k, v, seq_idx=s))
        both = ms(lambda: torch.autograd.grad(wkv4(w, u, k, v, seq_idx=s)[0].float().sum(), [k, v]))
        print(f"wkv4 B{B} T{T} C{C} {name:20} fwd {fwd:.3f}  fwd+bwd {both:.3f} ms")


def restart_free_rows(B=4, L=4096, d=2048):
    import archdsl

    def seq(lengths):
        return torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))[None].expand(B, L).cuda()
    cases = {"no seq_idx": None, "8 equal sequences a row": seq([L // 8] * 8),
             "3584 + 8 x 64 a row": seq([L - 512] + [64] * 8)}
    ids = torch.randint(0, 1000, (B, L), device="cuda")
    for layout, blocks in (("4 x s4d", {"s4d": {"d_state": 64}}),
                           ("4 x (rwkv4+cmix4)", {"rwkv4": {}, "cmix4": {"kind": "cmix", "version": 4}})):
        model = archdsl.compile(archdsl.parse(layout, d_model=d, vocab_size=1000, blocks=blocks),
                                dtype=torch.bfloat16, seed=0, device="cuda")
        params = [p for p in model.parameters() if p.requires_grad]
        for name, s in cases.items():
            with torch.no_grad():
                fwd = ms(lambda: model(ids, seq_idx=s))
            both = ms(lambda: torch.autograd.grad(model(ids, seq_idx=s).float().sum(), params))
            print(f"{layout:18} d{d} B{B} L{L} {name:24} fwd {fwd:.3f}  fwd+bwd {both:.3f} ms")


def varlen_rows(T=16384, H=32, P=64, N=128):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1, T, H, P, device="cuda", dtype=torch.bfloat16, generator=g)
    dt = (torch.rand(1, T, H, device="cuda", generator=g) - 4).to(torch.bfloat16)
    A = -torch.rand(H, device="cuda", generator=g) - 0.5
    Bm, Cm = (torch.randn(1, T, 1, N, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
    bias = torch.rand(H, device="cuda", generator=g) - 2
    cuts = torch.randperm(T - 1, generator=torch.Generator().manual_seed(0))[:15].sort().values + 1
    cu = torch.cat([torch.zeros(1, dtype=torch.long), cuts, torch.full((1,), T)]).cuda()
    seq = torch.repeat_interleave(torch.arange(16, device="cuda"), cu.diff())[None]
    leaves = [t.requires_grad_() for t in (x, dt, Bm, Cm)]
    kw = dict(dt_bias=bias, dt_softplus=True, seq_idx=seq)
    cases = {"seq_idx": lambda: (ssd_scan(x, dt, A, Bm, Cm, **kw),),
             "+ cu_seqlens, return_varlen_states": lambda: ssd_scan(x, dt, A, Bm, Cm, cu_seqlens=cu,
                                                                     return_varlen_states=True, **kw)}
    for name, fn in cases.items():
        with torch.no_grad():
            fwd = ms(fn)
        both = ms(lambda: torch.autograd.grad([o.float().sum() for o in fn()], leaves))
        print(f"ssd_scan one row of {T} (16 sequences) H{H} P{P} N{N} {name:36} fwd {fwd:.3f}  fwd+bwd {both:.3f} ms")


if __name__ == "__main__":
    parts = {"conv": conv_rows, "ssd": ssd_rows, "layer": layer_rows, "wkv6": wkv6_rows, "wkv4": wkv4_rows,
             "attn": attn_rows, "scan": scan_rows, "rows": restart_free_rows, "varlen": varlen_rows}
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("parts", nargs="*", metavar="PART", help=f"the parts to run (all by default): {', '.join(parts)}")
    names = ap.parse_args().parts
    unknown = [a for a in names if a not in parts]
    if unknown:
        fail(f"unknown part {unknown[0]!r} (parts: {', '.join(parts)})")
    needs_cuda()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    torch.manual_seed(0)
    for name in names or parts:
        parts[name]()
