"""Compile every Triton kernel the interpreted tests launch for a Hopper GPU (sm_90), without one.

The interpreter runs kernels as Python: it accepts code that Triton's compiler rejects (a loop
variable whose type changes between iterations, say). This closes that gap on the CPU:

  1. record: with ARCHDSL_RECORD_LAUNCHES=FILE set, tests/conftest.py makes every interpreted
     launch append one JSON line to FILE: the kernel (module, name), each argument's Triton type or
     constexpr value, num_warps, num_stages and maxnreg (a Gluon launch also the arguments divisible by 16);
  2. compile: `python tests/kernels/sm90.py FILE` compiles each distinct launch to a cubin for
     GPUTarget("cuda", 90, 32) (Triton ships ptxas) and lists the ones that fail, with the error.
     A launch is compiled as the GPU runs it (compiled_form): with PDL on, and with the inline-PTX fast paths
     (FAST, FAST_LOG) that the interpreter cannot run. One compile stands for both forms (CI's time): PDL adds
     two instructions, and a fast path is the other form's arithmetic in fewer instructions.
     Gluon kernels are never interpreted: tests capture their launchers' launches with `launch_entry`
     (test_selective_scan.py's Gluon forward and backward) and compile them the same way.

  make test          # the whole suite, then step 2 with --regs over what it launched (CI does this)
  python tests/kernels/sm90.py FILE --regs   # also each kernel's registers and spill (stack) bytes, and
                                             # the count of launches that spill, by kernel
  make sm90-check    # the same over the kernel tests alone
"""
from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import sys

_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float64": "fp64", "int64": "i64",
           "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "i1"}
_OPTIONS = ("num_warps", "num_stages", "maxnreg")


def _type(value):
    """Triton's type of one runtime argument, or None for a value it would fold as a constant."""
    import torch
    if isinstance(value, torch.Tensor):
        return "*" + _DTYPES[str(value.dtype).removeprefix("torch.")]
    if type(value).__name__ == "TensorDescriptor" and hasattr(value, "layout"):  # Gluon's: with its shared layout
        from triton.runtime.jit import mangle_type
        return mangle_type(value)
    if type(value).__name__ == "TensorDescriptor":  # a host descriptor: its dtype and block shape
        dtype = _DTYPES[str(value.base.dtype).removeprefix("torch.")]
        return f"tensordesc<{dtype}[{','.join(map(str, value.block_shape))}]>"
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i64" if not -2**31 <= value < 2**31 else "i32"
    if isinstance(value, float):
        return "fp32"
    return None


def _divisible(value) -> bool:
    """Whether Triton's launcher marks this runtime argument divisible by 16, as it specializes kernels: a
    tensor whose address is, or an integer that is (a kernel compiled for the GPU knows it)."""
    import torch
    if isinstance(value, torch.Tensor):
        return value.data_ptr() % 16 == 0
    return isinstance(value, int) and not isinstance(value, bool) and value % 16 == 0


def _is_gluon(kernel) -> bool:
    """Whether a kernel is Gluon's (compiled only, never interpreted)."""
    return type(kernel).__name__ == "GluonJITFunction"


def launch_entry(kernel, args, kwargs) -> str:
    """One launch of a Triton or Gluon kernel as the JSON line the compile step reads: the kernel (module,
    name), each argument's Triton type or constexpr value, num_warps, num_stages and a register cap (maxnreg);
    for a Gluon kernel also the arguments divisible by 16, which it is compiled knowing, as on the GPU (its
    16-byte copies need it). Interpreted Triton launches are compiled without that specialization: it would
    add ~170 distinct compiles to CI's ~850 (~2 minutes on two cores, cold), and the GPU tests compile them
    specialized."""
    names = kernel.arg_names
    bound = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k in names}
    constexprs = {p.name for p in _constexpr_params(kernel.fn)}
    arguments = {}
    for name in names:
        value = bound.get(name, _default(kernel.fn, name))
        if name in constexprs or value is None or _type(value) is None:
            arguments[name] = {"constexpr": value if isinstance(value, (int, float, str, bool)) else None}
        else:
            arguments[name] = {"type": _type(value)}
    entry = {"module": kernel.fn.__module__, "name": kernel.fn.__name__, "args": arguments,
             "div16": sorted(n for n in arguments if "type" in arguments[n] and _divisible(bound.get(n)))
             if _is_gluon(kernel) else [],
             "options": {k: kwargs[k] for k in _OPTIONS if k in kwargs}}
    return json.dumps(entry, sort_keys=True)


def compile_captured(module, name: str, call, tmp_path) -> None:
    """Run call() with the launches of module.<name> (a Gluon kernel, which never runs interpreted) captured
    rather than run; there must be one, and it must compile for sm_90 (this script, in a process without
    TRITON_INTERPRET). Launchers so run on CPU tensors in CI."""
    import subprocess
    kernel, launches = getattr(module, name), []

    class Capture:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append(launch_entry(kernel, args, kwargs))
    setattr(module, name, Capture())
    try:
        call()
    finally:
        setattr(module, name, kernel)
    assert len(launches) == 1, launches
    log = tmp_path / "gluon.jsonl"
    log.write_text("\n".join(launches) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, os.path.abspath(__file__), str(log), "--jobs", "1"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0 and "1 distinct launches, 0 failed" in done.stdout, done.stdout + done.stderr


def shared_tensors(kernel, args) -> list[str]:
    """The tensor arguments of a launch that are one and the same memory as an earlier argument ("b is a").
    A launch must have none: torch.compile traces our launches, and where it cannot read which arguments a
    kernel writes (inline PTX, Gluon) it takes every one as written, copies each and writes the copies back,
    so an output passed twice (say y, and again as an unused ypre) came back as the stale copy: garbage from
    the chunked SSD under torch.compile on the H200. An unused pointer is None."""
    import torch
    seen, shared = {}, []
    for name, value in zip(kernel.arg_names, args):
        if isinstance(value, torch.Tensor) and value.numel():
            key = (value.data_ptr(), value.dtype, tuple(value.shape), value.stride())
            if key in seen:
                shared.append(f"{name} is {seen[key]}")
            seen.setdefault(key, name)
    return shared


def watch_launches(path: str | None = None) -> None:
    """Make every interpreted kernel launch fail if it passes one tensor twice (shared_tensors) and, with a
    path, append its description to that file (JSON lines)."""
    from triton.runtime.interpreter import InterpretedFunction

    # a second call replaces the first watcher rather than stacking on it
    run = InterpretedFunction._unwatched_run = getattr(InterpretedFunction, "_unwatched_run",
                                                       InterpretedFunction.run)

    def watched_run(self, *args, grid, warmup, **kwargs):
        shared = shared_tensors(self, args)
        if shared:
            raise AssertionError(f"{self.fn.__name__}: one tensor passed twice ({', '.join(shared)})")
        if path:
            with open(path, "a") as f:
                f.write(launch_entry(self, args, kwargs) + "\n")
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = watched_run


def _constexpr_params(fn):
    import inspect
    return [p for p in inspect.signature(fn).parameters.values() if "constexpr" in str(p.annotation)]


def _default(fn, name):
    import inspect
    default = inspect.signature(fn).parameters[name].default
    return None if default is inspect.Parameter.empty else default


def _resources(cubin: bytes, ptxas_log: str) -> str:
    """Registers per thread and stack bytes (spills live there): from ptxas's own report (-v, which Triton
    prints when knobs.nvidia.dump_ptxas_log is set), else from the cubin by Triton's cuobjdump (a process a
    launch: ~13% more for the whole check)."""
    import re
    import subprocess
    import tempfile

    import triton
    regs, stack = re.search(r"Used (\d+) registers", ptxas_log), re.search(r"(\d+) bytes stack frame", ptxas_log)
    if regs and stack:
        return f"{regs.group(1)} registers, {stack.group(1)} bytes of stack"
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", out)
    return f"{m.group(1)} registers, {m.group(2)} bytes of stack" if m else "resources unknown"


@contextlib.contextmanager
def _ptxas_log(on: bool):
    """Within it, Triton prints ptxas's -v report of each compile (where its knobs have the switch)."""
    from triton import knobs
    nvidia = getattr(knobs, "nvidia", None)
    if not on or not hasattr(nvidia, "dump_ptxas_log"):
        yield
        return
    old = nvidia.dump_ptxas_log
    nvidia.dump_ptxas_log = True
    try:
        yield
    finally:
        nvidia.dump_ptxas_log = old


def compile_one(line: str, regs: bool = False) -> str:
    """Compile one recorded launch for sm_90: "ok" (with regs: and its registers and stack bytes,
    which ptxas fills with spills past 255 registers) or "FAILED: <the compiler's message>"."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    e = json.loads(line)
    kernel = getattr(importlib.import_module(e["module"]), e["name"])
    names = kernel.arg_names  # the recorded arguments are sorted by name
    signature = {n: e["args"][n].get("type", "constexpr") for n in names}
    constants = {(i,): e["args"][n]["constexpr"] for i, n in enumerate(names) if "type" not in e["args"][n]}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n in e.get("div16", ())}
    source = ASTSource
    if _is_gluon(kernel):
        from triton.experimental.gluon._runtime import GluonASTSource as source
    log = io.StringIO()
    try:
        with _ptxas_log(regs), contextlib.redirect_stdout(log):
            compiled = triton.compile(source(kernel, signature, constants, attrs), target=GPUTarget("cuda", 90, 32),
                                      options=e["options"])
        return "ok" + (f" ({_resources(compiled.asm['cubin'], log.getvalue())})" if regs else "")
    except Exception as err:  # every failing launch is reported
        return "FAILED: " + " ".join(str(err).split())[:2000]


# constexprs that launchers set True on the GPU only: PDL (kernels/_pdl.py) and the inline-PTX fast paths
COMPILED_ONLY = ("PDL", "FAST", "FAST_LOG")


def compiled_form(line: str) -> str | None:
    """The recorded launch as the GPU runs it, with each COMPILED_ONLY constexpr it passes False set True, or None
    where it passes none: the interpreter runs every such kernel with them off."""
    e = json.loads(line)
    flips = [name for name in COMPILED_ONLY if e["args"].get(name) == {"constexpr": False}]
    if not flips:
        return None
    for name in flips:
        e["args"][name] = {"constexpr": True}
    return json.dumps(e, sort_keys=True)


def compile_launches(path: str, jobs: int = 1, regs: bool = False) -> int:
    """Compile each distinct launch recorded in `path` for sm_90 in the form the GPU runs (compiled_form), in `jobs` processes; print each result (with regs: registers and stack bytes too); return
    the number that failed."""
    import collections
    import concurrent.futures
    import multiprocessing
    import re

    if not os.path.exists(path):  # on a GPU machine the kernels run compiled: nothing was interpreted
        print(f"{path}: no interpreted launches were recorded; nothing to compile")
        return 0
    recorded = {line.strip() for line in open(path) if line.strip()}
    entries = sorted({compiled_form(line) or line for line in recorded})
    pool = concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))
    failures, spills = 0, collections.Counter()
    with pool:
        for i, (line, status) in enumerate(zip(entries, pool.map(compile_one, entries, [regs] * len(entries))), 1):
            e = json.loads(line)
            failures += not status.startswith("ok")
            stack = re.search(r"(\d+) bytes of stack", status)
            if stack and int(stack.group(1)):
                spills[e["name"]] += 1
            consts = {n: a["constexpr"] for n, a in e["args"].items()
                      if "type" not in a and a["constexpr"] is not None}
            print(f"[{i}/{len(entries)}] {e['module']}.{e['name']} {consts} {e['options']}: {status}", flush=True)
    print(f"{len(entries)} distinct launches, {failures} failed to compile for sm_90")
    if regs:  # a spill is not an error (some tiles are fastest spilling a little), but it is worth seeing
        print(f"{sum(spills.values())} of {len(entries) - failures} compiled launches spill registers to the stack"
              + "".join(f"\n  {name}: {n}" for name, n in spills.most_common()))
    return failures


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="compile recorded Triton launches for sm_90")
    ap.add_argument("launches", help="the JSON-lines file written under ARCHDSL_RECORD_LAUNCHES")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--regs", action="store_true", help="print each kernel's registers and stack (spill) bytes")
    args = ap.parse_args()
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's own default; set to quiet its warning
    sys.exit(1 if compile_launches(args.launches, args.jobs, args.regs) else 0)
