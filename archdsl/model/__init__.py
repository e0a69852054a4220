"""Lowering: a spec's layer graph → ArchModel (nn.Module), and saved models back.

    model = compile(spec, device="cuda", dtype=torch.bfloat16, seed=0, cuda_graph=None, fuse=True)
    model.save("out/"); model = load("out/")

`fuse` takes True (every fusion), False (none) or a set of names from FUSIONS (fusions.py).
"""
from __future__ import annotations

import contextlib
import os
import sys

import torch

from ..analysis import ALIASES, MODEL_DTYPES
from ..errors import ArchDSLError, check_flag, check_path, warn
from .decoding import check_seed
from .fusions import FUSIONS, Fuse, resolve_fuse
from .companions import read_companions
from .model import ArchModel, Cache, resolve_ssm_dtype

__all__ = ["compile", "load", "ArchModel", "Cache", "FUSIONS", "resolve_dtype", "check_device", "check_kernels_env"]

# the dtypes a model computes in, by name and by the aliases analyze reads too (analysis.ALIASES: one table)
DTYPES = {name: getattr(torch, canonical) for name, canonical in
          [(c, c) for c in MODEL_DTYPES] + [(a, c) for a, c in ALIASES.items() if c in MODEL_DTYPES]}


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ArchDSLError(f"a model computes in float32, float64, bfloat16 or float16, not {dtype}")
        return dtype
    key = str(dtype).replace("torch.", "").lower()
    if key not in DTYPES:
        from ..errors import did_you_mean

        raise ArchDSLError(f"unknown dtype {dtype!r}", hint=did_you_mean(key, DTYPES))
    return DTYPES[key]


def check_device(device, dtype: torch.dtype) -> torch.device:
    """The device, if it exists and can compute in `dtype` (else ArchDSLError)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ArchDSLError(f"unknown device {device!r}: {e}") from None
    if dev.type == "meta":
        return dev
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ArchDSLError(f"device {device!r}: CUDA is not available on this machine")
    try:
        a = torch.ones(2, 2, device=dev, dtype=dtype)
        (a @ a).sum().item()
    except (RuntimeError, TypeError) as e:
        raise ArchDSLError(f"device {dev} cannot compute in {str(dtype).replace('torch.', '')}: "
                           f"{str(e).splitlines()[0]}") from None
    return dev


def check_kernels_env(where: str | None, device_type: str | None = None) -> None:
    """ArchDSLError "where: ..." (without "where: " for None) for an ARCHDSL_KERNELS that no op can run with: a
    value that names no backend, or (asked for a device type) triton off CUDA without TRITON_INTERPRET. The ops
    refuse it too, at their first call, with kernels' KernelsEnvError (a ValueError); this says it before anything
    is built."""
    if not os.environ.get("ARCHDSL_KERNELS", "").strip():
        return  # unset: nothing to check, and archdsl.kernels (which imports torch._dynamo) is not imported for it
    from archdsl.kernels._dispatch import KernelsEnvError, forced_backend

    try:
        forced_backend(device_type)
    except KernelsEnvError as e:
        raise ArchDSLError(f"{where}: {e}" if where else str(e)) from None


def compile(spec, device="cpu", dtype=torch.float32, seed: int = 0, cuda_graph: bool | None = None,  # noqa: A001
            fuse: Fuse = True, ssm_state_dtype=None) -> ArchModel:
    """Build the model of `spec` (a Spec, YAML file, saved-model directory or layout string; a saved
    model's directory gives its spec only, with fresh weights and an ArchDSLWarning saying so: load(path) reads
    its weights).

    Parameters are initialised on the CPU in float32 from `seed` (the same weights on every device, whatever
    torch's default device and dtype, which are left as they were), then
    moved to `device` in `dtype` (a torch dtype or its name: "bf16", "float32", ...); device="meta"
    allocates nothing. `fuse` picks the fusions: True (the default) all, False none, or a set of
    names from FUSIONS (or one string of them, "qkv,step"), exactly those —
    "add_norm" (residual add + RMSNorm in one Triton kernel), "qkv" (one q/k/v GEMM at inference),
    "epilogue" (D skip and silu gate inside the Mamba scan kernels), "step" (the fused Mamba /
    Mamba-2 decode-step kernels), "norm_gemv" (Mamba-2 decode: the RMSNorms inside the
    projections' GEMVs), "pdl" (Mamba-2 decode: its kernels under programmatic dependent launch),
    "recompute" (Mamba / Mamba-2 training: activations rebuilt in the backward, not kept);
    an unknown name raises ArchDSLError. Each is the same function
    on or off; model.set_fuse(...) switches them later. `cuda_graph`: how generate() steps on a CUDA
    device: None (the default) replays the decode step from a CUDA graph from 8 new tokens on, and steps eagerly
    under torch.autocast, with forward hooks, or where the capture fails (a warning says why); True replays it (a
    failed capture raises); False steps eagerly (docs/kernels.md, Fusions).
    `ssm_state_dtype` is the dtype of the Mamba / Mamba-2 SSM states in decode caches (None: float32; see
    ArchModel.set_ssm_state_dtype).
    Returns the ArchModel in eval mode (model.train() for training). An ARCHDSL_KERNELS that names no backend
    is ArchDSLError here, before anything is built.
    """
    from ..spec import load_spec

    fuse = resolve_fuse(fuse)  # a bad name first, before anything is built (an iterator is read once, here)
    check_kernels_env("compile")  # its value; the device's case at the first op (load builds on the CPU for any)
    resolve_ssm_dtype(ssm_state_dtype)
    check_seed("compile", seed)
    cuda_graph = check_flag("compile", "cuda_graph", cuda_graph, none_ok=True)
    given, spec = spec, load_spec(spec)
    if isinstance(given, (str, os.PathLike)) and os.path.isfile(os.path.join(given, "model.safetensors")):
        # the same name and parameter count as the trained model: told, lest the fresh one pass for it
        warn(f"compile({os.fspath(given)!r}) builds the saved model's spec with fresh weights from seed "
             f"{seed}; its saved weights are not used (archdsl.load reads them)")
    dtype = resolve_dtype(dtype)
    dev = check_device(device, dtype)
    _ = spec.graph  # spec errors first, as ArchDSLError
    if cuda_graph and dev.type != "cuda":
        raise ArchDSLError(f"cuda_graph=True needs a CUDA device, got {dev}")
    if dev.type == "meta":
        with torch.device("meta"), _float32_default():
            model = ArchModel(spec)
        model = model.to(dtype)
    else:  # on the CPU in float32, whatever torch's default device and dtype: the same weights from a seed
        with torch.random.fork_rng(devices=[]), torch.device("cpu"), _float32_default():
            torch.manual_seed(seed)
            model = ArchModel(spec)
        model = model.to(device=dev, dtype=dtype)
    model.set_fuse(fuse)
    model.set_ssm_state_dtype(ssm_state_dtype)
    model.cuda_graph = cuda_graph
    return model.eval()


@contextlib.contextmanager
def _float32_default():
    """torch's default dtype float32 inside the block (what the modules' parameters and their init draw in), the
    caller's again after it."""
    was = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(was)


def load(path, device="cpu", dtype=None, cuda_graph: bool | None = None, fuse: Fuse = True,
         ssm_state_dtype=None, seed: int = 0) -> ArchModel:
    """A model saved with ArchModel.save(path) (a str or os.PathLike): its spec, weights and (unless given)
    dtype, in eval mode, with the tokenizer and generation files saved beside them (model.companions). fuse and
    ssm_state_dtype are compile's (a seed is too, and the weights overwrite what it draws); the model is built on
    the CPU, then moved to `device`."""
    from safetensors import SafetensorError, safe_open

    cuda_graph = check_flag("load", "cuda_graph", cuda_graph, none_ok=True)
    path = check_path("load", path, "directory's path")
    weights = os.path.join(path, "model.safetensors")
    if not os.path.isfile(os.path.join(path, "spec.yaml")) or not os.path.isfile(weights):
        from ..spec import hf_dir_hint

        raise ArchDSLError(f"{path}: not a saved model (expected spec.yaml and model.safetensors)",
                           hint=hf_dir_hint(path))
    from ..convert.hf_io import check_safetensors

    check_safetensors(weights)  # a damaged file is ArchDSLError, not safetensors' own
    try:
        with safe_open(weights, framework="pt") as f:
            tensors = {n: f.get_tensor(n) for n in f.keys()}
    except SafetensorError as e:  # what check_safetensors does not foresee
        raise ArchDSLError(f"cannot read the weights: {e}", file=weights) from None
    model = compile(os.path.join(path, "spec.yaml"), device="cpu", dtype=resolve_dtype(dtype or saved_dtype(path)),
                    seed=seed, fuse=fuse, ssm_state_dtype=ssm_state_dtype)
    load_weights(model, tensors, source=weights)
    model.companions = read_companions(path)
    dev = check_device(device, model.dtype)
    if cuda_graph and dev.type != "cuda":  # checked here: compile builds on the CPU, where it would always refuse
        raise ArchDSLError(f"cuda_graph=True needs a CUDA device, got {dev}")
    if dev != model.device:
        model = model.to(dev)
    model.cuda_graph = cuda_graph
    return model


def saved_dtype(path) -> str:
    """The dtype a saved model's weights were written in, by its canonical name ("bfloat16", ...), as its
    model.safetensors records it (an alias there, "bf16", read as load reads it)."""
    from safetensors import safe_open

    weights = os.path.join(os.fspath(path), "model.safetensors")
    with safe_open(weights, framework="pt") as f:
        given = (f.metadata() or {}).get("dtype", "float32")
    try:
        return str(resolve_dtype(given)).replace("torch.", "")
    except ArchDSLError as e:
        raise ArchDSLError(f"its metadata records the weights' dtype as {given!r}: {e.message}", file=weights,
                           hint="give the dtype to load in (load(dtype=...), --dtype)") from None


def load_weights(model: ArchModel, tensors: dict, source: str = "checkpoint") -> None:
    """Copy `tensors` (name → tensor) into the model; every parameter must be given, with the model's shape and
    a floating dtype for a floating one (an integer or bool tensor is not a weight to cast), once or under
    several of its names (a shared or tied tensor's aliases) with equal values; else ArchDSLError naming the
    tensor. All is checked before anything is copied: a refused checkpoint leaves the model as it was."""
    expected = dict(model.named_parameters(remove_duplicate=False))
    expected.update(dict(model.named_buffers(remove_duplicate=False)))
    given = {}  # id of the model's tensor → (the first name it was given under, the tensor)
    for name, t in tensors.items():
        if name not in expected:
            from ..errors import did_you_mean

            raise ArchDSLError(f"{source}: tensor {name!r} is not in the model of this spec",
                               hint=did_you_mean(str(name), expected))
        p = expected[name]
        if not isinstance(t, torch.Tensor):
            raise ArchDSLError(f"{source}: {name!r} is a {type(t).__name__}, not a tensor")
        if tuple(t.shape) != tuple(p.shape):
            raise ArchDSLError(f"{source}: tensor {name!r} has shape {list(t.shape)}, the spec's model has "
                               f"{list(p.shape)}")
        if p.is_floating_point() != t.is_floating_point() or t.is_complex():
            dt = lambda x: str(x.dtype).replace("torch.", "")
            raise ArchDSLError(f"{source}: tensor {name!r} is {dt(t)}, the model's is {dt(p)}")
        first = given.setdefault(id(p), (name, t))
        if first[0] != name and not _same_values(first[1], t):
            raise ArchDSLError(f"{source}: tensors {first[0]!r} and {name!r} are one tensor of the model (shared or "
                               f"tied) but hold different values")
    missing = [n for n, p in expected.items() if id(p) not in given]
    if missing:
        raise ArchDSLError(f"{source}: missing tensor {missing[0]!r} (shape {list(expected[missing[0]].shape)})"
                           + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    with torch.no_grad():
        for name, t in tensors.items():
            expected[name].copy_(t.to(expected[name].dtype))


def warn_not_finite(model: ArchModel, path: str) -> None:
    """A warning on stderr when the weights loaded from `path` hold NaN or inf: so would the outputs, shown as
    tokens (argmax of NaN logits is 0) or as a loss of nan, with nothing else amiss (run, bench, generate, train)."""
    from ..units import plural

    bad = [name for name, t in [*model.named_parameters(), *model.named_buffers()]
           if (t.is_floating_point() or t.is_complex()) and not bool(t.isfinite().all())]
    if bad:
        verb = "holds" if len(bad) == 1 else "hold"
        print(f"warning: {path}: {plural(len(bad), 'weight tensor')} {verb} NaN or inf (the first: {bad[0]}); so "
              f"will what the model computes", file=sys.stderr)


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a and b hold the same numbers (NaN equal to NaN), whatever their dtypes and devices."""
    if a.dtype == b.dtype and a.device == b.device and torch.equal(a, b):  # the usual case, without copies
        return True
    dtype = torch.float64 if a.is_floating_point() else torch.int64
    a, b = (x.to("cpu", dtype) for x in (a, b))
    return bool(torch.isclose(a, b, rtol=0, atol=0, equal_nan=True).all())
