"""Odd inputs to every op: each argument alone in another dtype, strided, or garbage; a size of zero.

The Triton path (interpreted on the CPU) must give what the torch path gives for the same
inputs -- the same output shapes, dtypes and values -- or raise the ValueError both raise. On a
machine with a GPU the inputs live there, so the compiled kernels meet the same odd inputs
(`pytest tests/kernels/test_odd_inputs.py`, as benchmarks/gpu_sweep.sh runs it).
A kernel's products need their operands in one dtype, so the ops convert mixed ones before
launching; work with no elements never reaches a launch."""
import importlib
import re
from types import SimpleNamespace

import pytest
import torch

from archdsl.kernels import (add_rmsnorm, causal_conv1d, causal_conv1d_update, gated_rmsnorm, gated_rmsnorm_linear,
                             gemv, rms_linear, selective_scan, selective_state_update, ssd_scan, ssd_step, wkv4,
                             wkv4_step, wkv6, wkv6_step)
from archdsl.kernels.fused_step.op import mamba2_step_fused, mamba_conv_step, mamba_ssm_step_fused

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _r(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def _pos(*shape):
    return torch.rand(*shape, dtype=torch.float64) * 0.5 + 0.05


ARGS = {  # op: (function, sizes -> its arguments: float64 tensors, which a call rounds to its dtypes, and flags)
    "ssd_scan": (ssd_scan, lambda s: dict(
        x=_r(s.b, s.L, s.H, s.P), dt=_pos(s.b, s.L, s.H), A=-_pos(s.H), B=_r(s.b, s.L, 1, s.N), C=_r(s.b, s.L, 1, s.N),
        D=_r(s.H), z=_r(s.b, s.L, s.H, s.P), dt_bias=_r(s.H) * 0.3, initial_states=_r(s.b, s.H, s.P, s.N),
        dt_softplus=True, return_final_states=True)),
    "ssd_step": (ssd_step, lambda s: dict(
        state=_r(s.b, s.H, s.P, s.N), x=_r(s.b, s.H, s.P), dt=_pos(s.b, s.H), A=-_pos(s.H), B=_r(s.b, 1, s.N),
        C=_r(s.b, 1, s.N), D=_r(s.H), z=_r(s.b, s.H, s.P), dt_bias=_r(s.H), dt_softplus=True)),
    "selective_scan": (selective_scan, lambda s: dict(
        u=_r(s.b, s.D, s.L), delta=_pos(s.b, s.D, s.L), A=-_pos(s.D, s.N), B=_r(s.b, s.N, s.L), C=_r(s.b, s.N, s.L),
        D=_r(s.D), z=_r(s.b, s.D, s.L), delta_bias=_r(s.D), initial_state=_r(s.b, s.D, s.N), delta_softplus=True,
        return_last_state=True)),
    "selective_state_update": (selective_state_update, lambda s: dict(
        state=_r(s.b, s.D, s.N), x=_r(s.b, s.D), dt=_pos(s.b, s.D), A=-_pos(s.D, s.N), B=_r(s.b, s.N), C=_r(s.b, s.N),
        D=_r(s.D), z=_r(s.b, s.D), dt_bias=_r(s.D), dt_softplus=True)),
    "wkv6": (wkv6, lambda s: dict(
        r=_r(s.b, s.L, s.H, s.P), k=_r(s.b, s.L, s.H, s.P), v=_r(s.b, s.L, s.H, s.P), w=-_pos(s.b, s.L, s.H, s.P),
        u=_r(s.H, s.P), initial_state=_r(s.b, s.H, s.P, s.P), output_final_state=True)),
    "wkv6_step": (wkv6_step, lambda s: dict(
        state=_r(s.b, s.H, s.P, s.P), r=_r(s.b, s.H, s.P), k=_r(s.b, s.H, s.P), v=_r(s.b, s.H, s.P),
        w=-_pos(s.b, s.H, s.P), u=_r(s.H, s.P))),
    "wkv4": (wkv4, lambda s: dict(w=-_pos(s.D), u=_r(s.D), k=_r(s.b, s.L, s.D), v=_r(s.b, s.L, s.D))),
    "wkv4_step": (wkv4_step, lambda s: dict(w=-_pos(s.D), u=_r(s.D), k=_r(s.b, s.D), v=_r(s.b, s.D),
                                            state=(_r(s.b, s.D), _pos(s.b, s.D), _r(s.b, s.D)))),
    "causal_conv1d": (causal_conv1d, lambda s: dict(x=_r(s.b, s.D, s.L), weight=_r(s.D, 4), bias=_r(s.D),
                                                    initial_states=_r(s.b, s.D, 3), return_final_states=True)),
    "causal_conv1d_update": (causal_conv1d_update, lambda s: dict(x=_r(s.b, s.D), conv_state=_r(s.b, s.D, 3),
                                                                  weight=_r(s.D, 4), bias=_r(s.D))),
    "add_rmsnorm": (add_rmsnorm, lambda s: dict(x=_r(s.b, s.L, s.D), residual=_r(s.b, s.L, s.D), weight=_r(s.D))),
    "gated_rmsnorm": (gated_rmsnorm, lambda s: dict(x=_r(s.b, s.L, s.D), z=_r(s.b, s.L, s.D), weight=_r(s.D),
                                                    groups=2)),
    "gated_rmsnorm_linear": (gated_rmsnorm_linear, lambda s: dict(
        x=_r(s.b, s.L, s.D), z=_r(s.b, s.L, s.D), norm_weight=_r(s.D), weight=_r(5, s.D), bias=_r(5), groups=2)),
    "rms_linear": (rms_linear, lambda s: dict(x=_r(s.b, s.D), weight=_r(5, s.D), norm_weight=_r(s.D),
                                              residual=_r(s.b, s.D), bias=_r(5))),
    "gemv": (gemv, lambda s: dict(x=_r(s.b, s.D), weight=_r(5, s.D), bias=_r(5))),
    "mamba2_step_fused": (mamba2_step_fused, lambda s: dict(
        zxbcdt=_r(s.b, 2 * s.H * s.P + 2 * s.N + s.H), conv_state=_r(s.b, s.H * s.P + 2 * s.N, 3),
        conv_weight=_r(s.H * s.P + 2 * s.N, 4), conv_bias=_r(s.H * s.P + 2 * s.N), ssm_state=_r(s.b, s.H, s.P, s.N),
        A_log=_r(s.H), D=_r(s.H), dt_bias=_r(s.H), norm_weight=_r(s.H * s.P))),
    "mamba_conv_step": (mamba_conv_step, lambda s: dict(x=_r(s.b, s.D), conv_state=_r(s.b, s.D, 3),
                                                        weight=_r(s.D, 4), bias=_r(s.D))),
    "mamba_ssm_step_fused": (mamba_ssm_step_fused, lambda s: dict(
        state=_r(s.b, s.D, s.N), u=_r(s.b, s.D), x_dbl=_r(s.b, 3 + 2 * s.N), dt_proj_weight=_r(s.D, 3),
        A_log=_r(s.D, s.N), dt_bias=_r(s.D), D=_r(s.D), z=_r(s.b, s.D), inner_norms="weighted",
        dt_norm_weight=_r(3), b_norm_weight=_r(s.N), c_norm_weight=_r(s.N))),
}
SIZES = dict(b=1, L=12, H=2, P=4, N=6, D=8)
CASES = [(op, arg) for op, (_, make) in ARGS.items()
         for arg, v in make(SimpleNamespace(**SIZES)).items() if isinstance(v, (torch.Tensor, tuple))]


def _cast(v, dtype):
    if not isinstance(v, (torch.Tensor, tuple)):  # a flag
        return v
    return tuple(t.to(DEVICE, dtype) for t in v) if isinstance(v, tuple) else v.to(DEVICE, dtype)


def _flat(out):
    """The tensors of an op's result, nested tuples (wkv4's state) unpacked, None left out."""
    items = out if isinstance(out, tuple) else (out,)
    return [t for x in items for t in (_flat(x) if isinstance(x, tuple) else (x,)) if t is not None]


def _results(out, inputs):
    """An op's outputs and the states a step op updates in place, as one list of tensors."""
    return _flat(out) + _flat(tuple(inputs[k] for k in ("state", "conv_state", "ssm_state") if k in inputs))


def _call(op, backend, monkeypatch, dtypes=None, **sizes):
    """The op on float32 inputs (an argument in `dtypes` in its dtype there) at SIZES changed by `sizes`:
    its outputs and the step ops' states as a list, or the message of the ValueError it raised."""
    monkeypatch.setenv("ARCHDSL_KERNELS", backend)
    fn, make = ARGS[op]
    torch.manual_seed(0)
    inputs = {k: _cast(v, (dtypes or {}).get(k, torch.float32))
              for k, v in make(SimpleNamespace(**{**SIZES, **sizes})).items()}
    try:
        out = fn(**inputs)
    except ValueError as e:
        return str(e)
    return _results(out, inputs)


def _same(ours, ref, what):
    if isinstance(ref, str) or isinstance(ours, str):
        assert ours == ref, f"{what}: one path raised, the other did not (or with another message)"
        return
    assert [(t.shape, t.dtype) for t in ours] == [(t.shape, t.dtype) for t in ref], what
    for a, r in zip(ours, ref):
        if r.numel():
            scale = r.double().abs().max().clamp_min(1.0)
            assert ((a.double() - r.double()).abs().max() / scale) < 2e-2, what


COMPILE_SIZES = dict(b=2, L=300, H=4, P=16, N=16, D=64)  # several chunks, tiles and channel blocks
DIFFERENTIABLE = ("ssd_scan", "selective_scan", "wkv6", "wkv4", "causal_conv1d", "add_rmsnorm")


def _run_wrapped(op, wrap, **sizes):
    """wrap(the op) at COMPILE_SIZES changed by `sizes` on float32 CUDA tensors: its outputs, the states a step
    op updates in place and, for a differentiable op, the gradients of every tensor input under fixed
    cotangents."""
    fn, make = ARGS[op]
    torch.manual_seed(0)
    inputs = {k: _cast(v, torch.float32) for k, v in make(SimpleNamespace(**{**COMPILE_SIZES, **sizes})).items()}
    leaves = [v for v in inputs.values() if isinstance(v, torch.Tensor)] if op in DIFFERENTIABLE else []
    for t in leaves:
        t.requires_grad_(True)
    out = wrap(fn)(**inputs)
    if not leaves:
        return _results(out, inputs)
    out = _flat(out)
    gen = torch.Generator(device="cuda").manual_seed(1)
    loss = sum((t * torch.randn(t.shape, device="cuda", generator=gen)).sum() for t in out)
    return [t.detach() for t in out] + list(torch.autograd.grad(loss, leaves))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("op", [*ARGS, "ssd_scan:fused"])
def test_gpu_torch_compile_gives_what_eager_gives(op, monkeypatch):
    """Under torch.compile (AOT autograd, which Inductor runs too; one graph, fullgraph=True) every op gives its eager
    outputs, updated states and gradients. It once gave garbage for the chunked SSD: torch.compile could not read
    which arguments its kernels write (inline PTX), took all as written, and wrote back a stale copy of y passed
    twice (tests/kernels/sm90.py, shared_tensors)."""
    name, _, impl = op.partition(":")
    if impl:
        monkeypatch.setenv("ARCHDSL_SSD_IMPL", impl)
    want = _run_wrapped(name, lambda f: f)
    torch._dynamo.reset()
    got = _run_wrapped(name, lambda f: torch.compile(f, backend="aot_eager", fullgraph=True))
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5, msg=lambda m: f"{op}, result {i}: {m}")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("op", DIFFERENTIABLE)
def test_gpu_torch_compile_dynamic_lengths_share_one_graph(op):
    """torch.compile(dynamic=True, fullgraph=True): 300, 400 and 500 tokens (between the same powers of two,
    which the launchers' block sizes follow) run one graph, forward and backward, with eager's results."""
    import torch._dynamo.utils

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    traced = {}
    wrap = lambda f: traced.setdefault(op, torch.compile(f, backend="aot_eager", dynamic=True, fullgraph=True))
    for L in (300, 400, 500):
        want, got = _run_wrapped(op, lambda f: f, L=L), _run_wrapped(op, wrap, L=L)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5, msg=lambda m: f"{op} L {L}, result {i}: {m}")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("odd", [torch.bfloat16, torch.float64])
@pytest.mark.parametrize("op, arg", CASES)
def test_one_argument_in_another_dtype(op, arg, odd, monkeypatch):
    _same(*(_call(op, backend, monkeypatch, {arg: odd}) for backend in ("triton", "torch")), f"{op}: {arg} in {odd}")


@pytest.mark.parametrize("size", ["b", "L", "H", "P", "N", "D"])
@pytest.mark.parametrize("op", list(ARGS))
def test_a_size_of_zero(op, size, monkeypatch):
    """An empty batch, sequence, head, state or channel count: both paths agree (no launch fails)."""
    _same(*(_call(op, backend, monkeypatch, **{size: 0}) for backend in ("triton", "torch")), f"{op}: {size} = 0")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("op", list(ARGS))
def test_the_naive_backend_gives_what_the_torch_one_gives(op, dtype, monkeypatch):
    """ARCHDSL_KERNELS=naive through the public op: the torch path's outputs, in their documented shapes and dtypes
    (ssd_scan's final state came back float64 for float32 x; wkv4's wkv float32 for bf16 k, and NaN everywhere in
    float32 without a state: the fresh state's den was clamped to 1e-300, which is 0 in float32)."""
    names = ARGS[op][1](SimpleNamespace(**SIZES))
    dtypes = {k: dtype for k in names}
    _same(_call(op, "naive", monkeypatch, dtypes), _call(op, "torch", monkeypatch, dtypes), f"{op} in {dtype}, naive")


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("op", list(ARGS))
def test_meta_tensors_give_the_shapes_and_dtypes(op, backend, monkeypatch):
    """Every input on the meta device (shapes without data, as a model is traced or sized there): the outputs'
    shapes and dtypes that real inputs give, on either backend (forced Triton took them to its kernels, which
    cannot read them: torch's "Cannot copy out of meta tensor" from the interpreter)."""
    want = _call(op, "torch", monkeypatch)
    fn, make = ARGS[op]
    monkeypatch.setenv("ARCHDSL_KERNELS", backend)
    inputs = {k: tuple(t.to("meta", torch.float32) for t in v) if isinstance(v, tuple) else
              v.to("meta", torch.float32) if isinstance(v, torch.Tensor) else v
              for k, v in make(SimpleNamespace(**SIZES)).items()}
    got = _results(fn(**inputs), inputs)
    assert [(t.shape, t.dtype) for t in got] == [(t.shape, t.dtype) for t in want]
    assert all(t.is_meta for t in got)


@pytest.mark.parametrize("size", ["b", "L"])
@pytest.mark.parametrize("op", ["ssd_scan", "selective_scan", "wkv6", "causal_conv1d"])
def test_packed_sequences_of_a_size_of_zero(op, size, monkeypatch):
    """seq_idx of an empty batch or sequence: every path gives what the naive twin gives, or the same ValueError
    (wkv6's torch path, which the Triton path takes for no work, could not view zero rows of seq_idx in chunks:
    a RuntimeError)."""
    sizes = {**SIZES, size: 0}

    def run(backend):
        monkeypatch.setenv("ARCHDSL_KERNELS", backend)
        fn, make = ARGS[op]
        torch.manual_seed(0)
        inputs = {k: _cast(v, torch.float32) for k, v in make(SimpleNamespace(**sizes)).items()}
        seq_idx = torch.zeros(sizes["b"], sizes["L"], dtype=torch.int32, device=DEVICE)
        try:
            return _results(fn(**inputs, seq_idx=seq_idx), inputs)
        except ValueError as e:
            return str(e)
    ref = run("naive")
    for backend in ("triton", "torch"):
        _same(run(backend), ref, f"{op}: {size} = 0 with seq_idx, {backend}")


def test_gated_rmsnorm_linear_names_a_bad_norm_weight():
    """gated_rmsnorm_linear's norm weight is norm_weight: a bad one was reported as `weight`, the name of its
    other, [R, N], weight."""
    fn, make = ARGS["gated_rmsnorm_linear"]
    inputs = {k: _cast(v, torch.float32) for k, v in make(SimpleNamespace(**SIZES)).items()}
    norm_weight = inputs["norm_weight"]
    for bad in (None, norm_weight[:-1], norm_weight.long(), norm_weight.to("meta")):
        with pytest.raises(ValueError, match=r"^(norm_weight: |inputs must be on one device: x on \S+, z on \S+, "
                                             r"norm_weight on meta)"):
            fn(**{**inputs, "norm_weight": bad})


def _strided(v):
    """v's values in a non-contiguous view (every other element of a wider last dim)."""
    if isinstance(v, tuple):
        return tuple(_strided(t) for t in v)
    if not isinstance(v, torch.Tensor) or v.dim() == 0:
        return v
    wide = torch.zeros(*v.shape[:-1], 2 * v.shape[-1], dtype=v.dtype, device=v.device)
    wide[..., ::2] = v
    return wide[..., ::2]


@pytest.mark.parametrize("op, arg", CASES)
def test_one_argument_not_contiguous(op, arg, monkeypatch):
    """The Triton path on an argument that is a strided view gives what it gives on a contiguous copy;
    a step's state, updated in place, is updated in the caller's view."""
    monkeypatch.setenv("ARCHDSL_KERNELS", "triton")
    fn, make = ARGS[op]
    torch.manual_seed(0)
    plain = {k: _cast(v, torch.float32) for k, v in make(SimpleNamespace(**SIZES)).items()}
    odd = {k: _strided(v) if k == arg else _cast(v, torch.float32) for k, v in plain.items()}
    odd = {k: v.clone() if isinstance(v, torch.Tensor) and k != arg else v for k, v in odd.items()}
    outs = []
    for inputs in (plain, odd):
        out = fn(**inputs)
        flat = list(out) if isinstance(out, tuple) else [out]
        states = [inputs[k] for k in ("state", "conv_state") if k in inputs]
        outs.append([t for s in flat + states for t in (s if isinstance(s, tuple) else (s,)) if t is not None])
    assert len(outs[0]) == len(outs[1])
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=f"{op}: {arg} strided")


def _garbage(v):
    """(what, value): things that are not the tensor (or state tuple) v."""
    yield from (("None", None), ("a float", 1.5), ("a list", [1.0, 2.0]))
    if isinstance(v, tuple):
        yield from (("a short tuple", v[:2]), ("a tuple of wrong shapes", tuple(t[None] for t in v)))
        return
    yield from (("a numpy array", v.cpu().numpy()), ("complex", v.to(torch.complex64)), ("int64", v.long()),
                ("bool", v > 0), ("one more dim", v[None]), ("on the meta device", v.to("meta")),
                ("sparse", v.to_sparse()),  # was torch's NotImplementedError or RuntimeError from inside every op
                ("float8", v.to(torch.float8_e4m3fn)))  # was torch's or Triton's error deep inside, or a result
    if v.dim():
        yield "one dim less", v[0]
        for d in (0, -1):
            shape = list(v.shape)
            shape[d] += 1
            yield f"dim {d} one longer", torch.zeros(shape, device=v.device)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("op", list(ARGS))
def test_garbage_in_any_argument_is_a_value_error(op, backend, monkeypatch):
    """Each argument alone replaced by garbage (None, a float, a list, a numpy array, complex, int64 or float8,
    a wrong rank or size, the meta device): a ValueError that names an argument of the op, or the op runs
    where the value is usable (None for an optional argument)."""
    monkeypatch.setenv("ARCHDSL_KERNELS", backend)
    fn, make = ARGS[op]
    torch.manual_seed(0)
    base = {k: _cast(v, torch.float32) for k, v in make(SimpleNamespace(**SIZES)).items()}
    for arg, value in base.items():
        if not isinstance(value, (torch.Tensor, tuple)):
            continue
        for what, bad in _garbage(value):
            inputs = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in base.items()}
            inputs[arg] = bad
            try:
                fn(**inputs)
            except ValueError as e:
                named = any(re.match(rf"{name}\b", str(e)) for name in base) or "one device" in str(e)
                assert named, f"{op}: {arg} as {what}: the message names no argument: {e}"


INF, NAN = float("inf"), float("nan")
BAD_OPTIONS = [("ssd_scan", "chunk_size", v) for v in (0, -1, 2.5, "8", None, True)] + [
    (op, "scale", v) for op in ("wkv6", "wkv6_step") for v in (
        "0.5", torch.ones(2), float("nan"), True, torch.tensor(0.5, device="meta"))] + [  # meta: was .item()'s error
    (op, "activation", v) for op in ("causal_conv1d", "causal_conv1d_update") for v in ("relu", 3)] + [
    (op, "eps", v) for op in ("add_rmsnorm", "rms_linear") for v in (0, -1e-5, "1e-5", None, float("inf"))] + [
    ("rms_linear", "groups", v) for v in (0, 3, 2.0, True)] + [
    # lo = inf or hi = -inf clamps every dt' to an infinity: y all NaN
    (op, "dt_limit", v) for op in ("ssd_scan", "ssd_step") for v in (
        (INF, INF), (-INF, -INF), (1.0, 0.0), (NAN, 1.0), 0.5, (0.0,), "0,1")] + [
    ("mamba2_step_fused", "norm_eps", v) for v in (NAN, 0.0, -1e-5, "1e-5", None)] + [
    ("mamba2_step_fused", "dt_floor", v) for v in (NAN, INF, "0", None)] + [
    ("mamba_ssm_step_fused", "inner_norm_eps", v) for v in (NAN, 0.0, -1e-6, "1e-6", None)] + [
    (op, flag, v) for op, flag in (("ssd_scan", "dt_softplus"), ("ssd_scan", "return_final_states"),
                                   ("ssd_scan", "return_varlen_states"), ("ssd_scan", "keep_states"),
                                   ("ssd_step", "dt_softplus"), ("selective_scan", "delta_softplus"),
                                   ("selective_scan", "return_last_state"), ("selective_state_update", "dt_softplus"),
                                   ("wkv6", "output_final_state"), ("causal_conv1d", "return_final_states"),
                                   # pdl is the caller's promise about the kernel before: never read from "no"
                                   ("rms_linear", "pdl"), ("gemv", "pdl"), ("mamba2_step_fused", "pdl"),
                                   ("mamba_conv_step", "pdl"), ("mamba_ssm_step_fused", "pdl"))
    for v in ("no", 1, None)]  # a flag that is not a bool ("no" reads as True)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("op, option, value", BAD_OPTIONS)
def test_a_bad_option_is_a_value_error(op, option, value, backend, monkeypatch):
    monkeypatch.setenv("ARCHDSL_KERNELS", backend)
    fn, make = ARGS[op]
    inputs = {k: _cast(v, torch.float32) for k, v in make(SimpleNamespace(**SIZES)).items()}
    with pytest.raises(ValueError, match=f"^{option}: "):
        fn(**{**inputs, option: value})


IN_PLACE = [("ssd_step", "state"), ("selective_state_update", "state"), ("wkv6_step", "state"),
            ("causal_conv1d_update", "conv_state"), ("mamba2_step_fused", "conv_state"),
            ("mamba2_step_fused", "ssm_state"), ("mamba_conv_step", "conv_state"), ("mamba_ssm_step_fused", "state")]


def _cloned(inputs):
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def _overlapping(state):
    """(what, view): views of state's shape (contiguous, batch 2) whose elements share memory otherwise than by
    expand, made with as_strided."""
    base, strides = torch.zeros(state.numel(), dtype=state.dtype, device=state.device), list(state.stride())
    yield "rows half over each other", base.as_strided(state.shape, [strides[0] // 2] + strides[1:])
    yield "a sliding window over the last two dims", base.as_strided(state.shape, strides[:-2] + [1, 1])


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("op, arg", IN_PLACE)
def test_a_state_updated_in_place_that_cannot_be_written_is_a_value_error(op, arg, backend, monkeypatch):
    """A step's state that is updated in place: an expanded one (a batch of rows sharing memory), which the
    Triton path wrote silently and the torch path refused with a RuntimeError, another view whose elements
    share memory (as_strided: rows over each other, a sliding window), which both paths wrote silently, and
    a leaf that requires grad (written behind autograd on the Triton path, a RuntimeError on the torch one),
    are ValueErrors; a strided one is fine (test_one_argument_not_contiguous), and so is a transposed one."""
    monkeypatch.setenv("ARCHDSL_KERNELS", backend)
    fn, make = ARGS[op]
    inputs = {k: _cast(v, torch.float32) for k, v in make(SimpleNamespace(**{**SIZES, "b": 2})).items()}
    state = inputs[arg]
    shared = "^" + re.escape(f"{arg}: updated in place, so its elements must not share memory; got shape "
                             f"{list(state.shape)}")
    with pytest.raises(ValueError, match=shared):
        fn(**{**inputs, arg: state[:1].expand_as(state)})
    for what, view in _overlapping(state):
        try:
            fn(**{**inputs, arg: view})
        except ValueError as e:
            assert re.match(shared, str(e)), f"{op}: {arg} as {what}: {e}"
        else:
            pytest.fail(f"{op}: {arg} as {what} (strides {list(view.stride())}) was written without a word")
    ref, odd = _cloned(inputs), {**_cloned(inputs), arg: state.transpose(-1, -2).contiguous().transpose(-1, -2)}
    _same(_results(fn(**odd), odd), _results(fn(**ref), ref), f"{op}: {arg} transposed (no element shared)")
    with pytest.raises(ValueError, match=rf"^{arg}: updated in place, so it cannot be a leaf"):
        fn(**{**inputs, arg: state.clone().requires_grad_()})
    with torch.no_grad():  # where autograd lets it be written
        fn(**{**inputs, arg: state.clone().requires_grad_()})


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_mamba2_step_fused_names_an_ssm_state_of_no_states(backend, monkeypatch):
    """ssm_state with N = 0 beside a conv_state with B and C columns: conv_dim = E + 2·G·N held for no G, and the
    check of G divided by 2·N, a ZeroDivisionError; the conv state is left as it was."""
    monkeypatch.setenv("ARCHDSL_KERNELS", backend)
    fn, make = ARGS["mamba2_step_fused"]
    inputs = {k: _cast(v, torch.float32) for k, v in make(SimpleNamespace(**SIZES)).items()}
    conv_state = inputs["conv_state"].clone()
    ssm_state = inputs["ssm_state"][..., :0]
    with pytest.raises(ValueError, match=re.escape(f"ssm_state: expected N >= 1 states, got {list(ssm_state.shape)}")):
        fn(**{**inputs, "ssm_state": ssm_state})
    assert torch.equal(inputs["conv_state"], conv_state)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_a_step_of_no_token_or_no_window_is_a_value_error(backend, monkeypatch):
    """causal_conv1d_update of T = 0 steps (was torch.stack's RuntimeError on both paths; a step takes a token or
    more, where causal_conv1d takes L = 0) and mamba_conv_step with a conv state of no column (width K = 1: the
    Triton kernel wrote before the state's row, a crash under the interpreter) are ValueErrors."""
    monkeypatch.setenv("ARCHDSL_KERNELS", backend)
    fn, make = ARGS["causal_conv1d_update"]
    inputs = {k: _cast(v, torch.float32) for k, v in make(SimpleNamespace(**SIZES)).items()}
    with pytest.raises(ValueError, match=r"^x: expected at least one time step, got shape \[1, 8, 0\]"):
        fn(**{**inputs, "x": inputs["x"][:, :, None][:, :, :0]})
    fn, make = ARGS["mamba_conv_step"]
    inputs = {k: _cast(v, torch.float32) for k, v in make(SimpleNamespace(**SIZES)).items()}
    with pytest.raises(ValueError, match=r"^conv_state: expected K-1 >= 1 columns, got \[1, 8, 0\]"):
        fn(**{**inputs, "conv_state": inputs["conv_state"][:, :, :0], "weight": inputs["weight"][:, :1]})


@pytest.mark.parametrize("state_dtype", [torch.bfloat16, torch.float64])
def test_wkv6_step_returns_r_dtype_whatever_the_state(state_dtype):
    """wkv6_step's o is in r's dtype, as documented, for a state of another dtype too (it was the state's)."""
    fn, make = ARGS["wkv6_step"]
    inputs = {k: _cast(v, state_dtype if k == "state" else torch.float32)
              for k, v in make(SimpleNamespace(**SIZES)).items()}
    assert fn(**inputs).dtype == torch.float32


INDEX = [("ssd_scan", "seq_idx"), ("ssd_scan", "cu_seqlens"), ("selective_scan", "seq_idx"), ("wkv6", "seq_idx"),
         ("causal_conv1d", "seq_idx")]


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("op, arg", INDEX)
def test_an_index_tensor_is_int32_or_int64(op, arg, backend, monkeypatch):
    """seq_idx and cu_seqlens (two sequences of L/2 tokens) give one result in int32 (mamba_ssm's and
    causal-conv1d's dtype) and int64; in bool (a mask, which both paths read as sequence numbers 0 and 1 without
    a word), float or another integer dtype they are a ValueError naming the argument and the dtypes it takes."""
    monkeypatch.setenv("ARCHDSL_KERNELS", backend)
    fn, make = ARGS[op]
    inputs = {k: _cast(v, torch.float32) for k, v in make(SimpleNamespace(**SIZES)).items()}
    L = SIZES["L"]
    index = torch.tensor([0, L // 2, L]) if arg == "cu_seqlens" else (torch.arange(L) >= L // 2).long()[None]
    int32, int64 = (_results(fn(**inputs, **{arg: index.to(DEVICE, dtype)}), inputs)
                    for dtype in (torch.int32, torch.int64))
    for a, b in zip(int32, int64, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{op}: {arg} in int32 and int64")
    for bad in (torch.bool, torch.float32, torch.uint8, torch.int16):
        with pytest.raises(ValueError, match=rf"^{arg}: expected an integer tensor \(int32 or int64\), got {bad}$"):
            fn(**inputs, **{arg: index.to(DEVICE, bad)})


STATES = ("state", "conv_state", "ssm_state")
TRITON_STEPS = {  # op: (its module, the Triton launcher its Triton path calls); the kernels have no backward
    "selective_state_update": ("selective_scan.triton_selective_scan", "selective_state_update_triton"),
    "ssd_step": ("ssd.triton_ssd", "ssd_step_triton"),
    "causal_conv1d_update": ("conv1d.triton_conv1d", "causal_conv1d_update_triton"),
    "wkv6_step": ("wkv6.triton_wkv6_step", "wkv6_step_triton"),
    "mamba2_step_fused": ("fused_step.triton_fused_step", "mamba2_step_triton"),
    "mamba_conv_step": ("fused_step.triton_fused_step", "conv_step_triton"),
    "mamba_ssm_step_fused": ("fused_step.triton_fused_step", "mamba_ssm_step_triton"),
    "rms_linear": ("norm_gemv.triton_norm_gemv", "rms_linear_triton"),
    "gemv": ("norm_gemv.triton_norm_gemv", "rms_linear_triton"),
}


@pytest.mark.parametrize("op", list(TRITON_STEPS))
def test_a_step_whose_inputs_require_grad_is_differentiable_on_the_triton_backend(op, monkeypatch):
    """The Triton steps and GEMVs have no backward: with an input that requires grad their outputs had no grad_fn
    (silently no gradient on CUDA), and the torch step of a float32 state kept the state for its backward and
    then wrote it (a RuntimeError in backward). Where autograd records and an input requires grad they take
    the torch step, on a copy of the state: outputs, updated states and the gradients of every input (the
    states' earlier values too) are the torch backend's. Without a gradient wanted (none required, or
    torch.no_grad) the Triton kernel runs."""
    module, name = TRITON_STEPS[op]
    mod = importlib.import_module(f"archdsl.kernels.{module}")
    real, ran = getattr(mod, name), []
    monkeypatch.setattr(mod, name, lambda *a, **k: ran.append(name) or real(*a, **k))
    fn, make = ARGS[op]

    def run(backend, grad=True):
        monkeypatch.setenv("ARCHDSL_KERNELS", backend)
        torch.manual_seed(0)
        inputs = {k: _cast(v, torch.float32) for k, v in make(SimpleNamespace(**SIZES)).items()}
        leaves = [v.requires_grad_(grad) for v in inputs.values() if isinstance(v, torch.Tensor)]
        inputs.update({k: inputs[k].clone() for k in STATES if k in inputs})  # not leaves: written in place
        ran.clear()
        out = _results(fn(**inputs), inputs)
        if not (grad and torch.is_grad_enabled()):
            return out, ran[:]
        gen = torch.Generator().manual_seed(1)
        loss = sum((t * torch.randn(t.shape, generator=gen).to(t.device)).sum() for t in out)
        return [t.detach() for t in out] + list(torch.autograd.grad(loss, leaves, allow_unused=True)), ran[:]

    want, _ = run("torch")
    got, launched = run("triton")
    assert launched == [], f"{op}: the Triton kernel ran though a gradient was wanted"
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert (g is None) == (w is None), f"{op}, result {i}: a gradient on one backend only"
        if w is not None:
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6, msg=lambda m: f"{op}, result {i}: {m}")
    assert run("triton", grad=False)[1] == [name], f"{op}: the Triton kernel did not run without gradients"
    with torch.no_grad():
        assert run("triton")[1] == [name], f"{op}: the Triton kernel did not run under torch.no_grad"


@pytest.mark.parametrize("op", ["selective_scan", "wkv6"])
def test_compiled_torch_path_with_packed_sequences_takes_gradients(op, monkeypatch):
    """Under torch.compile the torch paths of selective_scan and wkv6 run in one opaque operator
    (kernels/_opaque.py), whose backward differentiates each of its inputs by torch.func.vjp. selective_scan
    passed seq_idx to it as the integer tensor it was given: the backward raised a RuntimeError (only floating
    point tensors can require gradients). Outputs and gradients are eager's."""
    monkeypatch.setenv("ARCHDSL_KERNELS", "torch")
    fn, make = ARGS[op]
    torch.manual_seed(0)
    inputs = {k: _cast(v, torch.float32) for k, v in make(SimpleNamespace(**{**SIZES, "b": 2, "L": 7})).items()}
    leaves = {k: v.requires_grad_() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    seq_idx = torch.tensor([[0, 0, 1, 1, 1, 4, 4], [2, 2, 2, 3, 3, 3, 3]], dtype=torch.int32, device=DEVICE)
    call = lambda **kw: _flat(fn(**kw, seq_idx=seq_idx))  # noqa: E731
    torch._dynamo.reset()
    results = []
    for f in (call, torch.compile(call, backend="aot_eager", fullgraph=True)):
        out = f(**inputs)
        gen = torch.Generator().manual_seed(1)
        loss = sum((t * torch.randn(t.shape, generator=gen).to(t.device)).sum() for t in out)
        results.append([t.detach() for t in out] + list(torch.autograd.grad(loss, list(leaves.values()))))
    torch._dynamo.reset()
    for i, (got, want) in enumerate(zip(*results, strict=True)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m: f"{op}, result {i}: {m}")


@pytest.mark.parametrize("state_dtype", [torch.bfloat16, torch.float64])
@pytest.mark.parametrize("k_dtype", [torch.float32, torch.float64])
def test_wkv4_step_computes_as_the_scan_whatever_the_states_dtype(state_dtype, k_dtype):
    """wkv4_step is one token of wkv4: in float32 at least (float64 where k or the state is), its new state in that
    dtype, as the scan's. It computed in the state's dtype: with a bf16 state every exponential and sum in bf16
    (the output off by ~1e-2 from the scan's), and a float64 k with a float32 state in float32."""
    torch.manual_seed(0)
    b, C = 3, 16
    w, u, k, v = torch.randn(C), torch.randn(C), torch.randn(b, C) * 3, torch.randn(b, C)
    w, u, k, v = (t.to(k_dtype) for t in (w, u, k, v))
    state = tuple(t.to(state_dtype) for t in (torch.randn(b, C), torch.rand(b, C) + 0.1, torch.randn(b, C) * 3))
    ct = torch.promote_types(torch.promote_types(k_dtype, state_dtype), torch.float32)
    want, want_state = wkv4(w, u, k[:, None], v[:, None], tuple(s.to(ct) for s in state))
    got, got_state = wkv4_step(w, u, k, v, state)
    assert got.dtype == k_dtype and [s.dtype for s in got_state] == [ct] * 3
    torch.testing.assert_close(got, want[:, 0], rtol=1e-6, atol=1e-6)
    for g, s in zip(got_state, want_state, strict=True):
        torch.testing.assert_close(g, s.to(ct), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("op", ["ssd_scan", "wkv6"])
def test_cu_seqlens_on_the_meta_device_is_named(op):
    """Its offsets decide the work and a meta tensor has none: it was torch's NotImplementedError from .tolist()."""
    meta = dict(device="meta")
    if op == "ssd_scan":
        args = (torch.zeros(1, 8, 2, 4, **meta), torch.zeros(1, 8, 2, **meta), torch.zeros(2, **meta),
                torch.zeros(1, 8, 1, 4, **meta), torch.zeros(1, 8, 1, 4, **meta))
        call = lambda cu: ssd_scan(*args, chunk_size=4, cu_seqlens=cu)  # noqa: E731
    else:
        r, k, v, w = (torch.zeros(1, 8, 2, 4, **meta) for _ in range(4))
        call = lambda cu: wkv6(r, k, v, w, torch.zeros(2, 4, **meta), cu_seqlens=cu)  # noqa: E731
    with pytest.raises(ValueError, match="cu_seqlens: on the meta device it holds no offsets"):
        call(torch.tensor([0, 3, 8], **meta))


SCANS = ("ssd_scan", "selective_scan", "wkv6", "wkv4", "causal_conv1d")  # Triton kernels in float32, no float64 escape


def _as_if_on_cuda(monkeypatch):
    """The backend each op asks for, as _dispatch.choose_backend would choose it for CUDA tensors (ARCHDSL_KERNELS
    unset), recorded; the torch path runs (the CPU has no card), so the recorded choice is what is checked."""
    from archdsl.kernels import _dispatch

    real, chosen = _dispatch.choose_backend, []
    monkeypatch.delenv("ARCHDSL_KERNELS", raising=False)
    monkeypatch.setattr(_dispatch, "choose_backend",
                        lambda device_type, forced="", **kw: chosen.append(real("cuda", forced, **kw)) or "torch")
    return chosen


@pytest.mark.parametrize("op, arg", [(op, arg) for op, arg in CASES if op in SCANS] + [(op, None) for op in SCANS])
def test_a_float64_input_to_a_scan_takes_the_torch_path_on_cuda(op, arg, monkeypatch):
    """Unforced on CUDA, a parallel scan (or the conv) with any floating input in float64 takes the torch path,
    float64-exact as on the CPU; all float32, the Triton one. The Triton scans computed float64 in float32 and
    returned float64 results ~1e-7 off (a float64 model's parallel forward 1.5e-7 off its decode on CUDA)."""
    chosen = _as_if_on_cuda(monkeypatch)
    fn, make = ARGS[op]
    torch.manual_seed(0)
    inputs = {k: _cast(v, torch.float64 if k == arg else torch.float32)
              for k, v in make(SimpleNamespace(**SIZES)).items()}
    fn(**inputs)
    want = "triton" if arg is None else "torch"
    assert chosen and set(chosen) == {want}, f"{op} with {arg or 'nothing'} in float64: {chosen}"


@pytest.mark.parametrize("op", ["mamba_chunk_scan_combined", "selective_scan_fn", "causal_conv1d_fn", "chunk_rwkv6",
                                "fused_recurrent_rwkv6"])
def test_the_peer_entry_points_take_float64_to_the_torch_path_on_cuda(op, monkeypatch):
    """The compat wrappers dispatch through the ops: float64 inputs take the torch path unforced on CUDA, and give
    the float64 naive loop's result to float64 rounding (fused_recurrent_rwkv6 reversed too)."""
    import archdsl.kernels as K

    base = {"mamba_chunk_scan_combined": "ssd_scan", "selective_scan_fn": "selective_scan",
            "causal_conv1d_fn": "causal_conv1d"}.get(op, "wkv6")
    fn, make = getattr(K, op), ARGS[base][1]
    torch.manual_seed(0)
    inputs = {k: _cast(v, torch.float64) for k, v in make(SimpleNamespace(**SIZES)).items()}
    extra = dict(chunk_size=8) if op == "mamba_chunk_scan_combined" else {}
    for more in ([{}, dict(reverse=True)] if op == "fused_recurrent_rwkv6" else [{}]):
        monkeypatch.setenv("ARCHDSL_KERNELS", "naive")
        want = _flat(fn(**inputs, **extra, **more))
        chosen = _as_if_on_cuda(monkeypatch)
        got = _flat(fn(**inputs, **extra, **more))
        assert chosen and set(chosen) == {"torch"}, f"{op} {more}: {chosen}"
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
