"""wkv4 A/B in one process: the kernels of an earlier commit (`triton_wkv4_base.py`, laid beside) against the
checkout's, with and without restarts, forward and forward+backward, and the decode step. Checks that the two
agree (outputs, states, grads) before timing; two alternated rounds. `fwd` and `fwdbwd` are do_bench's medians,
which the host's launches bind at small shapes (B1 T4096 forward+backward: ~0.39 ms of host a call against 0.26 of
kernels, H100); `gpu` is the kernels' own time a forward+backward (torch.profiler's sum), the figure to compare
there. On the card:

    git show REV:kernels/wkv4/triton_wkv4.py > kernels/wkv4/triton_wkv4_base.py
    git show REV:kernels/wkv4/triton_wkv4_step.py | sed 's/from .triton_wkv4 import/from .triton_wkv4_base import/' \\
        > kernels/wkv4/triton_wkv4_step_base.py
    python benchmarks/wkv4_ab.py
"""
import argparse
import importlib.util
import sys

import torch
from triton.testing import do_bench
from _bench import kernel_ms, needs_cuda
from archdsl.kernels.wkv4 import triton_wkv4 as new, triton_wkv4_step as new_step

BASE = ("triton_wkv4_base", "triton_wkv4_step_base")
SETUP = __doc__.split("\n\n")[-1].rstrip()  # the docstring's commands that lay the base kernels beside


def ms(fn) -> float:
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=SETUP,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    needs_cuda()
    missing = [f"kernels/wkv4/{m}.py" for m in BASE if importlib.util.find_spec(f"archdsl.kernels.wkv4.{m}") is None]
    if missing:
        sys.exit(f"wkv4_ab.py: no {' or '.join(missing)}: lay the kernels of an earlier commit REV beside the "
                 f"checkout's first, from the repository's root:\n{SETUP}")
    from archdsl.kernels.wkv4 import triton_wkv4_base as base, triton_wkv4_step_base as base_step

    print(f"{'shape':28} {'kernels':10} {'fwd':>8} {'fwdbwd':>8} {'gpu':>8}")
    for B, T, C, packed in ((1, 4096, 2048, 0), (4, 4096, 2048, 0), (4, 16384, 2048, 0), (16, 4096, 2048, 0),
                            (32, 2048, 2048, 0), (64, 1024, 2048, 0), (4, 4096, 768, 0), (4, 4096, 2048, 1),
                            (16, 4096, 2048, 1)):
        w, u = torch.randn(C, device="cuda") - 1, torch.randn(C, device="cuda")
        k, v, gy = (torch.randn(B, T, C, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        seq = (torch.arange(T, device="cuda") // 300).expand(B, T).contiguous() if packed else None
        ws, us, ks, vs = (x.clone().requires_grad_() for x in (w, u, k, v))
        outs = {}
        for name, mod in (("base", base), ("new", new)):
            y, s = mod.wkv4_triton(ws, us, ks, vs, seq_idx=seq)
            outs[name] = (y.float(), *s, *torch.autograd.grad(y, (ws, us, ks, vs), gy))
        err = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() for a, b in zip(outs["new"], outs["base"]))
        tag = f"B{B} T{T} C{C}" + (" packed" if packed else "")
        print(f"{tag:28} max rel diff new vs base {err:.2e}", flush=True)
        for rnd in range(2):
            for name, mod in (("base", base), ("new", new)):
                tf = ms(lambda: mod.wkv4_triton(w, u, k, v, seq_idx=seq))
                def fb():
                    y, _ = mod.wkv4_triton(ws, us, ks, vs, seq_idx=seq)
                    torch.autograd.grad(y, (ws, us, ks, vs), gy)
                print(f"{tag:28} {name:10} {tf:8.3f} {ms(fb):8.3f} {kernel_ms(fb):8.3f}", flush=True)
    C = 2048
    w, u = torch.randn(C, device="cuda") - 1, torch.randn(C, device="cuda")
    for B in (1, 64):
        k, v = (torch.randn(B, C, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        state = (torch.randn(B, C, device="cuda"), torch.rand(B, C, device="cuda") + 1, torch.randn(B, C, device="cuda"))
        a, b = base_step.wkv4_step_triton(w, u, k, v, state), new_step.wkv4_step_triton(w, u, k, v, state)
        err = max(((x.float() - y.float()).abs().max() / y.float().abs().max()).item()
                  for x, y in zip((a[0], *a[1]), (b[0], *b[1])))
        for rnd in range(2):
            steps = {name: lambda mod=mod: mod.wkv4_step_triton(w, u, k, v, state)
                     for name, mod in (("base", base_step), ("new", new_step))}
            print(f"step B{B} C{C}{'':15} " + "  ".join(f"{name} {ms(fn):8.4f} (gpu {kernel_ms(fn, 200):.4f})"
                                                         for name, fn in steps.items()) + f"  max rel diff {err:.2e}",
                  flush=True)


if __name__ == "__main__":
    main()
