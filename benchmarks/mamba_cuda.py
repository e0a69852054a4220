"""mamba_ssm's CUDA selective-scan forward and backward, and causal-conv1d's CUDA kernels, built from their
sdists on the GPU machine, as peers.

The sdist's csrc/selective_scan holds the CUDA kernels behind mamba_ssm's `selective_scan_fn`. Built
whole, for every dtype and every compile-time flag of its kernels, it takes far longer than a timing run
can spare; this builds two extensions from its C++ binding, for this card only: the bf16 forward (`load`)
and the bf16 backward with only the flags the benchmark's case takes (`load_bwd`). Both load with lazy
binding, so that the symbols left out are only missed if called (they never are here). The builds are
cached by torch (TORCH_EXTENSIONS_DIR).

    python3 benchmarks/mamba_cuda.py          # build now (the benchmark then only loads it)
    python3 benchmarks/mamba_cuda.py bwd      # the backward (`load_bwd`: bf16, the benchmark's flags only)
    python3 benchmarks/mamba_cuda.py conv     # causal-conv1d (`load_conv`: bf16 inputs and weights only)
    python3 benchmarks/mamba_cuda.py peers    # all three, then install them where mamba_ssm imports them

MAMBA_SSM_CSRC names the sdist's csrc/selective_scan folder and CAUSAL_CONV1D_CSRC causal-conv1d's csrc
folder (benchmarks/device_env.sh sets both).
"""
from __future__ import annotations

import os
import sys

FLAGS = ["-O3", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
         "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
         "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
         "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math"]  # as mamba_ssm's setup.py


def load(verbose: bool = False):
    """The built module (its `fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)` takes B, C as
    [batch, groups, N, L]), or None with the reason printed: no sdist, no compiler, a failed build."""
    src = os.environ.get("MAMBA_SSM_CSRC")
    if not src or not os.path.isdir(src):
        print("# mamba_ssm CUDA selective scan: MAMBA_SSM_CSRC names no folder", flush=True)
        return None
    return _build("selective_scan_cuda_fwd_bf16", src, "selective_scan_fwd_bf16.cu", verbose)


def _build(name, src, cu, verbose, cpp="selective_scan.cpp"):
    """The extension `name` from src's C++ binding `cpp` and the .cu file(s) `cu`, for this card only,
    loaded with lazy binding (the symbols of the kernels left out are only missed if called); None, the
    reason printed, if the build fails."""
    import torch
    from torch.utils.cpp_extension import load as build
    major, minor = torch.cuda.get_device_capability()
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
    os.environ.setdefault("MAX_JOBS", "4")
    flags = sys.getdlopenflags()
    sys.setdlopenflags(os.RTLD_LAZY)
    try:
        cus = [cu] if isinstance(cu, str) else list(cu)
        return build(name, [os.path.join(src, f) for f in [cpp, *cus]], extra_cflags=["-O3"],
                     extra_cuda_cflags=FLAGS, extra_include_paths=[src], extra_ldflags=["-Wl,-z,lazy"],
                     verbose=verbose)
    except Exception as e:  # a peer that does not build must not stop the run
        print(f"# mamba_ssm CUDA {name} did not build: {type(e).__name__}: {str(e)[-600:]}", flush=True)
        return None
    finally:
        sys.setdlopenflags(flags)


def _source_copy(env: str, what: str, folder: str) -> str | None:
    """A copy of the sources the environment variable `env` names, in `folder` under the extensions'
    build folder, to trim before building; None (reason printed) if `env` names no folder."""
    src = os.environ.get(env)
    if not src or not os.path.isdir(src):
        print(f"# {what}: {env} names no folder", flush=True)
        return None
    import shutil
    import tempfile

    copy = os.path.join(os.environ.get("TORCH_EXTENSIONS_DIR", tempfile.gettempdir()), folder)
    shutil.copytree(src, copy, dirs_exist_ok=True)
    return copy


# BOOL_SWITCH for the trimmed backward build: only the `true` branch is compiled, and a call that needs the
# other one fails with a clear error rather than running a kernel that was not built.
_TRUE_ONLY_SWITCH = """#pragma once
#include <stdexcept>
#define BOOL_SWITCH(COND, CONST_NAME, ...)                                                        \\
    [&] {                                                                                         \\
        if (!(COND)) throw std::runtime_error("this build compiled only " #CONST_NAME " = true"); \\
        constexpr bool CONST_NAME = true;                                                         \\
        return __VA_ARGS__();                                                                     \\
    }()
"""


def load_bwd(verbose: bool = False):
    """mamba_ssm's CUDA selective-scan backward for bf16 inputs and float32 A, built with every compile-time
    flag of its kernel set (even length, B and C varying in time, softplus, z): the very kernel its
    `selective_scan_fn` runs for the benchmark's case, without the 31 other flag combinations that make the
    full build take far longer. Its `bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, softplus,
    recompute_out_z)` takes `x` and `out` from `load().fwd`. None (reason printed) if it cannot be built, or
    when MAMBA_SSM_BWD=0 (a run that cannot wait for the build)."""
    if os.environ.get("MAMBA_SSM_BWD") == "0":
        print("# mamba_ssm CUDA selective-scan backward: skipped (MAMBA_SSM_BWD=0)", flush=True)
        return None
    trimmed = _source_copy("MAMBA_SSM_CSRC", "mamba_ssm CUDA selective scan", "mamba_ssm_bwd_src")
    if trimmed is None:
        return None
    with open(os.path.join(trimmed, "static_switch.h"), "w") as f:
        f.write(_TRUE_ONLY_SWITCH)
    return _build("selective_scan_cuda_bwd_bf16", trimmed, "selective_scan_bwd_bf16_real.cu", verbose)


CONV_SOURCES = ("causal_conv1d_fwd.cu", "causal_conv1d_bwd.cu", "causal_conv1d_update.cu")


def load_conv(verbose: bool = False):
    """causal-conv1d's CUDA extension (`causal_conv1d_fwd`, `_bwd`, `_update`, as its package's
    `causal_conv1d_cuda`) with only the bf16-input, bf16-weight instantiations of its kernels: what a
    bf16 model runs, without the 8 other dtype pairs of the full build. None (reason printed) if it
    cannot be built."""
    trimmed = _source_copy("CAUSAL_CONV1D_CSRC", "causal-conv1d CUDA", "causal_conv1d_src")
    if trimmed is None:
        return None
    for cu in CONV_SOURCES:  # drop every explicit instantiation but the bf16 / bf16 one
        path = os.path.join(trimmed, cu)
        with open(path) as f:
            lines = f.read().splitlines()
        keep = [ln for ln in lines if not ln.startswith("template void ") or "<at::BFloat16, at::BFloat16>" in ln]
        with open(path, "w") as f:
            f.write("\n".join(keep) + "\n")
    return _build("causal_conv1d_cuda_bf16", trimmed, CONV_SOURCES, verbose, cpp="causal_conv1d.cpp")


def install_peers(verbose: bool = False) -> list[str]:
    """Build the three extensions and register them under the module names mamba_ssm and causal_conv1d
    import (`selective_scan_cuda`, `causal_conv1d_cuda`), so that their Python packages run the CUDA
    kernels: mamba_ssm's Mamba takes its fused path (`mamba_inner_fn`) and Mamba-2 its memory-efficient
    one. Call before importing them. → what is missing (empty when every peer built)."""
    import types
    missing = []
    fwd, bwd, conv = load(verbose), load_bwd(verbose), load_conv(verbose)
    if fwd is not None and bwd is not None:
        sys.modules["selective_scan_cuda"] = types.SimpleNamespace(fwd=fwd.fwd, bwd=bwd.bwd)
    else:
        missing.append("mamba_ssm's CUDA selective scan")
    if conv is not None:
        sys.modules["causal_conv1d_cuda"] = conv
    else:
        missing.append("causal-conv1d's CUDA kernels")
    return missing


if __name__ == "__main__":
    import argparse
    import time

    from _bench import needs_cuda

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("which", nargs="?", default="fwd", choices=["fwd", "bwd", "conv", "peers"],
                    help="fwd: the forward (the default); bwd: the backward; conv: causal-conv1d; "
                         "peers: all three, installed where mamba_ssm imports them")
    which = ap.parse_args().which
    needs_cuda("its extensions are built for the card")
    t = time.perf_counter()
    if which == "peers":
        missing = install_peers(verbose=True)
        print(f"built peers in {time.perf_counter() - t:.0f} s; missing: {missing or 'none'}", flush=True)
        sys.exit(1 if missing else 0)
    ok = {"bwd": load_bwd, "conv": load_conv}.get(which, load)(verbose=True) is not None
    print(f"built {which}: {ok} in {time.perf_counter() - t:.0f} s", flush=True)
    sys.exit(0 if ok else 1)
