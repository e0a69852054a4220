"""What packed sequences and dt_limit cost on the GPU (bf16, one process), printed as a table.

    python benchmarks/packing.py

- causal_conv1d, B4 D5120 L4096 width 4, 8 sequences a row, both layouts: the forward and backward kernels
  (conv_fwd / conv_bwd) without and with seq_idx's runs, and the op's forward, which adds seq_runs.
- ssd_scan, B4 L4096 H32 P64 N128 G1 (softplus, dt_bias, D): dt_limit None, (0, inf), (1e-3, inf); three rounds
  alternated, each figure the minimum of its rounds (the forward at 4K is host-bound and moves with the host),
  and whether y with (0, inf) is bit-identical to None (softplus(dt + dt_bias) > 0: it must be).
- A Mamba-2 layer (d 2560, B4 L2048), dt_floor 0 against 1e-3 (dt_limit inside the kernels), same weights.
Median of triton.testing.do_bench for each figure.
"""
from __future__ import annotations

import torch
from triton.testing import do_bench

from archdsl.kernels import causal_conv1d, ssd_scan
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


if __name__ == "__main__":
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    torch.manual_seed(0)
    conv_rows()
    ssd_rows()
    layer_rows()
