"""Test-wide settings.

- Under CI (CI=true) hypothesis draws the same examples every run, so a red build is reproducible;
  locally it explores new ones each time.
- Without a GPU the Triton kernels run in Triton's interpreter (set before anything imports triton:
  its standard library is built interpreted or compiled at import).
- Triton's interpreter multiplies bfloat16 dot operands as their raw uint16 bits and truncates float32 to
  bfloat16 (triton 3.9); archdsl.kernels corrects both when it is imported interpreted
  (kernels/_interpreter.py), so bfloat16 kernels are checked on the CPU too.
- Triton's interpreter patches triton.language anew at every call of a device function inside a launch
  (`_patch_lang`, ~2 ms a call: a third of an interpreted Mamba decode step), though the launch has patched
  the same modules already (or an earlier device function did: those patches stay); here a device
  function call inside a launch skips it when its modules are patched (what it would set is what is set).
- Every interpreted launch fails if it passes one tensor twice (tests/kernels/sm90.py, shared_tensors);
  with ARCHDSL_RECORD_LAUNCHES=FILE (make test) each is also recorded, for tests/kernels/sm90.py to
  compile for sm_90 afterwards.
- With ARCHDSL_FAIL_LOG=FILE each failing test's id and error are appended to FILE as it fails, not at the end:
  a GPU run cut by its time limit still says what failed and why (pytest prints the errors in its summary only).
- On a CUDA machine, after each `gpu` test the caching allocator's free blocks are given back to the card: each
  xdist worker would otherwise keep its own peak, and three workers' float64 references fill an 80-GB card.
  Tests marked `big_memory` (a million tokens or more) also take a lock file shared by the workers, so two of them
  never run at once (`pytest -m gpu -n 4` on an 80-GB card ran out of memory with two together).
- The repository's top-level kernels/ folder (archdsl.kernels) has the name of the hub package `kernels`,
  which transformers (>= 5.25, which installs it) imports at once where it finds it. `python -m pytest` puts
  the repository root first on sys.path, so transformers would import our folder instead and fail ("cannot
  import name 'CUDAProperties' from 'kernels'"), in every later test of that worker too. The hub package,
  where installed, is imported here first, with the root left off sys.path, and hub kernels are switched off
  (USE_HUB_KERNELS=0): the tests compare against transformers' own PyTorch code.
"""
import gc
import os
import sys


def _hub_kernels_first():
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("kernels")
    except PackageNotFoundError:
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != root]
    try:
        import kernels  # noqa: F401  (the hub package)
    except ImportError:
        pass
    finally:
        sys.path[:] = saved


os.environ.setdefault("USE_HUB_KERNELS", "0")
if "kernels" not in sys.modules:
    _hub_kernels_first()

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _device_calls_patch_once() -> None:
    import inspect

    import triton.language as tl
    from triton.runtime import interpreter

    plain = getattr(interpreter, "_patch_lang", None)
    if plain is None or not hasattr(interpreter, "_LangPatchScope"):
        return  # another Triton: leave it as it is
    patched = []  # the language modules the running launch patched (one launch at a time)

    def langs(fn):
        return frozenset(id(v) for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core))

    def patch_lang(fn):
        mine = langs(fn)
        if patched:  # a device function called inside a launch (Triton never restores what it patches)
            if mine <= patched[-1]:
                return interpreter._LangPatchScope()
            patched[-1] |= mine
            return plain(fn)
        scope = plain(fn)  # a launch: patched until it restores
        patched.append(mine)
        restore = scope.restore

        def restore_and_forget():
            patched.pop()
            restore()
        scope.restore = restore_and_forget
        return scope

    interpreter._patch_lang = patch_lang


from archdsl.kernels._dispatch import interpreting  # noqa: E402 (after TRITON_INTERPRET is set)

if interpreting():
    _device_calls_patch_once()

if interpreting():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "kernels"))
    from sm90 import watch_launches

    watch_launches(os.environ.get("ARCHDSL_RECORD_LAUNCHES"))


def pytest_runtest_logreport(report):
    """ARCHDSL_FAIL_LOG: a failure written down as it happens (by the controller only, under xdist)."""
    path = os.environ.get("ARCHDSL_FAIL_LOG")
    if not path or not report.failed or os.environ.get("PYTEST_XDIST_WORKER"):  # a worker: its controller writes
        return
    with open(path, "a") as f:
        f.write(f"FAILED {report.nodeid} ({report.when})\n{report.longreprtext[-3000:]}\n\n")


if torch.cuda.is_available():
    @pytest.fixture(autouse=True)
    def _give_the_card_back(request, tmp_path_factory):
        lock = None
        if request.node.get_closest_marker("big_memory") is not None:
            import fcntl

            base = tmp_path_factory.getbasetemp()  # an xdist worker's lies in the run's
            lock = open((base.parent if hasattr(request.config, "workerinput") else base) / "big_memory.lock", "w")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield
        if request.node.get_closest_marker("gpu") is not None:
            gc.collect()  # a test's reference cycles (autograd graphs) first
            torch.cuda.empty_cache()
        if lock is not None:
            lock.close()  # releases it
