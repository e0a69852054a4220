"""Which implementation of an op runs: Triton on CUDA, chunked torch on the CPU (and on CUDA for a parallel
scan's float64 inputs, which the Triton scans would compute in float32: choose_backend).

`ARCHDSL_KERNELS=triton|torch|naive` overrides the choice for every op; with
`TRITON_INTERPRET=1` set, `triton` also runs on CPU tensors (through Triton's interpreter),
which is how CI exercises the Triton code.
"""
from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("triton", "torch", "naive")


class KernelsEnvError(ValueError):
    """ARCHDSL_KERNELS set to a value no op can run with: not a backend's name, or triton for a tensor off CUDA
    without TRITON_INTERPRET. A ValueError, as the ops' other refusals; the CLI says it as an error (exit 2)."""


def forced_backend(device_type: str | None = None) -> str:
    """The backend ARCHDSL_KERNELS forces ('' where it is unset or blank), else KernelsEnvError: a value that names
    no backend, or (for a tensor on `device_type`; None: not asked) triton off CUDA without the interpreter."""
    forced = os.environ.get("ARCHDSL_KERNELS", "").strip().lower()
    if forced:
        if forced not in BACKENDS:
            raise KernelsEnvError(f"ARCHDSL_KERNELS={forced!r}: expected one of {', '.join(BACKENDS)}")
        if forced == "triton" and device_type not in (None, "cuda", "meta") and not interpreting():
            where = "CPU" if device_type == "cpu" else device_type
            raise KernelsEnvError(f"ARCHDSL_KERNELS=triton on a {where} tensor needs TRITON_INTERPRET=1")
    return forced


def backend_for(x: torch.Tensor, *sized: torch.Tensor | None, exact: tuple = ()) -> str:
    """The backend an op should use for tensor `x`. Work with no elements (x or any of `sized`
    empty: a zero batch, head, state or channel count) never goes to Triton: it takes the torch path,
    whose result is then the op's. `exact`: the op's floating inputs (None skipped), where the op computes
    in float32 on Triton (the parallel scans pass theirs): where one is float64 the automatic choice is the torch
    path, float64-exact on CUDA as on the CPU. A bad ARCHDSL_KERNELS is KernelsEnvError (forced_backend).
    The choice itself is choose_backend's."""
    empty = x.numel() == 0 or any(t is not None and t.numel() == 0 for t in sized)
    float64 = any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in exact)
    return choose_backend(x.device.type, forced_backend(x.device.type), empty=empty, float64=float64)


def choose_backend(device_type: str, forced: str = "", *, empty: bool = False, float64: bool = False) -> str:
    """backend_for's choice, from what it reads: the device type of the op's tensors, `forced` (forced_backend's
    answer: a backend's name, '' where ARCHDSL_KERNELS is unset), whether the work is `empty` (no elements) and
    whether it is `float64` work of an op whose Triton kernels compute in float32 (the parallel scans).

    Unforced: Triton on CUDA, torch elsewhere; float64 work takes torch on CUDA too (the Triton scans would
    return float64 computed in float32, ~1e-7 off, where the torch path is float64-exact, as the decode steps
    are on every backend). Forced: the backend named, float64 work included (ARCHDSL_KERNELS=triton runs the
    Triton kernels on float64 inputs, in float32 arithmetic, the result returned in float64: the interpreted
    tests hold the kernels to the float64 reference that way). Empty work and meta tensors (shapes without data,
    which no kernel can read) never take Triton: torch instead."""
    if not forced:
        forced = "triton" if device_type == "cuda" and not float64 else "torch"
    if forced == "triton" and (empty or device_type == "meta"):
        return "torch"
    return forced


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype torch.autocast runs in on `device_type`, or None where it is off (or, as on the meta device,
    does not exist). torch.compile traces it (torch.amp.is_autocast_available it cannot: a graph break)."""
    if device_type == "meta" or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def on_input_device(op):
    """`op` run with its inputs' CUDA device current: the public ops' wrapper.

    Triton launches a kernel on the current CUDA device and its current stream, wherever the pointers it
    is given live. A model placed on cuda:1 while cuda:0 is current (layers spread over cards, as device
    maps do) would otherwise launch every kernel on cuda:0. The device is taken from the first tensor
    argument (the ops check that all their tensors share one) and switched only where it is not current;
    not where the process sees one CUDA device (the check then costs about 0.5 µs a call), nor while
    torch.compile traces (Inductor's generated code sets its graph's device)."""

    @functools.wraps(op)
    def run(*args, **kwargs):
        x = _first_tensor(args, kwargs)
        if (x is not None and x.is_cuda and not torch.compiler.is_compiling() and _several_devices()
                and x.get_device() != torch.cuda.current_device()):
            with torch.cuda.device(x.device):
                return op(*args, **kwargs)
        return op(*args, **kwargs)
    return run


def _first_tensor(args, kwargs) -> torch.Tensor | None:
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor):
        x = next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)), None)
    return x


def without_autocast(op):
    """`op` run with torch.autocast off on its inputs' device: a scan computes in its own precision (float32, or
    float64 for float64 inputs) on every path. The Triton kernels never see autocast; under it the torch paths'
    einsums and F.conv1d had run in its 16-bit dtype (about 3e-3 off, where the kernels are 1e-7), and conv's y
    had come back in that dtype. Autograd runs the backward in the forward's dtypes, so it is exact too."""

    @functools.wraps(op)
    def run(*args, **kwargs):
        x = _first_tensor(args, kwargs)
        if x is None or autocast_dtype(x.device.type) is None:
            return op(*args, **kwargs)
        with torch.autocast(x.device.type, enabled=False):
            return op(*args, **kwargs)
    return run


_DEVICES: dict = {}  # "count" → the CUDA devices this process sees; a dict, which torch.compile traces quietly


def _several_devices() -> bool:
    if "count" not in _DEVICES:
        _DEVICES["count"] = torch.cuda.device_count()
    return _DEVICES["count"] > 1


# the values for which Triton reads a boolean variable as on (its getenv_bool, case-insensitive): TRITON_INTERPRET=true
# runs the interpreter as =1 does, and the kernels must know it (the bf16 corrections, the float64 escape hatches)
_ON = ("1", "true", "on", "yes", "y")


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").lower() in _ON


_CHOICE: dict[tuple, str] = {}  # (variable, case) → the implementation auto picked


def pick_impl(var: str, impls, default: str, x: torch.Tensor, case, timed) -> str:
    """Which of an op's Triton implementations runs: `var=NAME` forces one of `impls`, unset is
    `default`, `auto` times each once per case on CUDA (`case()` → a hashable key, `timed(name)` → ms,
    inf if it fails to build) and keeps the fastest. Off CUDA, or while a CUDA graph is being
    captured, auto is the default. `case` is called only for auto: every op call goes through here."""
    forced = os.environ.get(var, default).strip().lower()
    if forced != "auto":
        if forced not in impls:
            raise ValueError(f"{var}={forced!r}: expected one of {', '.join(impls)}, auto")
        return forced
    if x.device.type != "cuda" or torch.cuda.is_current_stream_capturing():
        return default
    key = (var, case())
    if key not in _CHOICE:
        _CHOICE[key] = min(impls, key=timed)
    return _CHOICE[key]


class _Inference:
    """The context a Function's forward gets when `apply` calls it directly: nothing needs a gradient."""

    def __init__(self, n: int):
        self.needs_input_grad = (False,) * n

    def save_for_backward(self, *tensors):
        pass


def needs_grad(*args) -> bool:
    """Whether autograd records and a tensor among args (others, None included, are skipped) needs a gradient."""
    return torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)


def apply(fn, *args):
    """fn.apply(*args) for an autograd.Function of ours -- or, when no tensor input needs a gradient
    (inference, torch.no_grad), fn.forward called directly: the same kernels without autograd's
    bookkeeping, ~10-25 µs of host time a call."""
    if needs_grad(*args):
        return fn.apply(*args)
    return fn.forward(_Inference(len(args)), *args)


def time_or_inf(go) -> float:
    """Median ms of go() (triton.testing.do_bench, autograd on), or inf when it fails: a kernel that
    does not build on this Triton must not break the op while the other implementation runs."""
    from triton.testing import do_bench

    try:
        with torch.enable_grad():
            return do_bench(go, warmup=5, rep=20, return_mode="median")
    except Exception:
        return float("inf")
