"""Host time of one call of each op on its Triton path: our Python alone, every Triton launch stubbed.

At short sequences a forward is bound by the host's launching as much as by the GPU (see
docs/benchmarks.md: the plain 4K SSD rows), so the Python around the kernels is measured too. This runs
anywhere (no GPU: the Triton path is taken under TRITON_INTERPRET=1 and each kernel launch does nothing),
and times what the ops do around their launches: checks, dispatch, autograd, buffers, launch arguments.
Triton's own launcher and the CUDA driver are not in it. Inference calls (no input needs a gradient).

    python benchmarks/host.py [ROUNDS] [OP ...]     # min and median over ROUNDS rounds of 300 calls
"""
import argparse
import importlib
import os
import pkgutil
import sys
import timeit

os.environ["TRITON_INTERPRET"] = "1"
os.environ["ARCHDSL_KERNELS"] = "triton"

import torch  # noqa: E402

import archdsl.kernels as K  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench import fail  # noqa: E402


class _NoLaunch:
    """A Triton kernel whose launch `kernel[grid](...)` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def _stub_launches():
    for info in pkgutil.walk_packages(K.__path__, "archdsl.kernels."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).copy().items():
            if type(value).__name__ in ("JITFunction", "InterpretedFunction"):
                setattr(module, name, _NoLaunch())
    from archdsl.kernels.ssd import triton_ssd_chunked
    triton_ssd_chunked.pick_chunk = lambda x, L, chunk: chunk or triton_ssd_chunked.CHUNK  # the GPU's chunk


def cases():
    """op -> a zero-argument call, bf16, B1 L256 (SSD: H8 P64 N128; selective scan: D512 N16, its step's
    inputs rows of wider projections, as a layer's are; WKV6: H8 K64)."""
    bf = dict(dtype=torch.bfloat16)
    b, L, H, P, N, D = 1, 256, 8, 64, 128, 512
    x, dt = torch.randn(b, L, H, P, **bf), torch.rand(b, L, H, **bf)
    B, C = torch.randn(b, L, 1, N, **bf), torch.randn(b, L, 1, N, **bf)
    A, Dh, bias = -torch.rand(H), torch.randn(H), torch.randn(H)
    state, x1, dt1, B1, C1 = torch.zeros(b, H, P, N), x[:, 0], dt[:, 0], B[:, 0], C[:, 0]
    u, delta, A1 = torch.randn(b, D, L, **bf), torch.rand(b, D, L, **bf), -torch.rand(D, 16)
    Bs, Dd, dbias = torch.randn(b, 16, L, **bf), torch.randn(D), torch.randn(D)
    r, w, bonus = torch.randn(b, L, H, 64, **bf), -torch.rand(b, L, H, 64, **bf), torch.randn(H, 64)
    weight, cbias = torch.randn(D, 4), torch.randn(D)
    sstate, xz, dt_s, x_dbl = torch.zeros(b, D, 16), torch.randn(b, 2 * D, **bf), torch.rand(b, D, **bf), torch.randn(
        b, 5 + 2 * 16, **bf)  # the step's inputs as a layer slices them from its projections
    return {
        "ssd_scan": lambda: K.ssd_scan(x, dt, A, B, C, D=Dh, dt_bias=bias, dt_softplus=True),
        "ssd_step": lambda: K.ssd_step(state, x1, dt1, A, B1, C1, D=Dh, dt_bias=bias, dt_softplus=True),
        "selective_scan": lambda: K.selective_scan(u, delta, A1, Bs, Bs, D=Dd, z=u, delta_bias=dbias,
                                                   delta_softplus=True),
        "selective_state_update": lambda: K.selective_state_update(sstate, xz[:, :D], dt_s, A1, x_dbl[:, 5:21],
                                                                   x_dbl[:, 21:], D=Dd, z=xz[:, D:], dt_bias=dbias,
                                                                   dt_softplus=True),
        "wkv6": lambda: K.wkv6(r, r, r, w, bonus, scale=1.0),
        "causal_conv1d": lambda: K.causal_conv1d(u, weight, cbias, activation="silu"),
    }


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("args", nargs="*", metavar="ROUNDS | OP",
                    help="the rounds (a number, 5 by default) and the ops to time (all by default)")
    argv = ap.parse_args(argv).args
    rounds = int(next((a for a in argv if a.isdigit()), 5))
    only = [a for a in argv if not a.isdigit()]
    calls = cases()
    if rounds < 1:
        fail(f"ROUNDS {rounds}: expected at least 1")
    for op in only:
        if op not in calls:
            fail(f"unknown op {op!r} (ops: {', '.join(calls)})")
    _stub_launches()
    calls = {op: fn for op, fn in calls.items() if not only or op in only}
    times = {op: [] for op in calls}
    for _ in range(rounds):  # the ops alternate, so a slow spell of the machine hits them all
        for op, fn in calls.items():
            times[op].append(min(timeit.repeat(fn, number=300, repeat=3)) / 300 * 1e6)
    print(f"{'op':24s} {'min µs':>8s} {'median µs':>10s}")
    for op, ts in times.items():
        ts.sort()
        print(f"{op:24s} {ts[0]:8.1f} {ts[len(ts) // 2]:10.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
