"""Inputs of mixed float dtypes: every op, each floating argument alone in another dtype.

The Triton path (interpreted on the CPU) must give what the torch path gives for the same
inputs -- the same output dtypes and the same values -- or raise the ValueError both raise.
A kernel's products need their operands in one dtype; the ops convert before launching."""
import pytest
import torch

from archdsl.kernels import (add_rmsnorm, causal_conv1d, causal_conv1d_update, rms_linear, selective_scan,
                             selective_state_update, ssd_scan, ssd_step, wkv4, wkv4_step, wkv6, wkv6_step)

b, L, H, P, N, D = 1, 12, 2, 4, 6, 3


def _r(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def _pos(*shape):
    return torch.rand(*shape, dtype=torch.float64) * 0.5 + 0.05


ARGS = {  # op: (function, its arguments: float64 tensors, which a call rounds to its dtypes, and flags)
    "ssd_scan": (ssd_scan, lambda: dict(x=_r(b, L, H, P), dt=_pos(b, L, H), A=-_pos(H), B=_r(b, L, 1, N),
                                        C=_r(b, L, 1, N), D=_r(H), z=_r(b, L, H, P), dt_bias=_r(H) * 0.3,
                                        initial_states=_r(b, H, P, N), dt_softplus=True)),
    "ssd_step": (ssd_step, lambda: dict(state=_r(b, H, P, N), x=_r(b, H, P), dt=_pos(b, H), A=-_pos(H),
                                        B=_r(b, 1, N), C=_r(b, 1, N), D=_r(H), z=_r(b, H, P), dt_bias=_r(H),
                                        dt_softplus=True)),
    "selective_scan": (selective_scan, lambda: dict(u=_r(b, D, L), delta=_pos(b, D, L), A=-_pos(D, N),
                                                    B=_r(b, N, L), C=_r(b, N, L), D=_r(D), z=_r(b, D, L),
                                                    delta_bias=_r(D), delta_softplus=True)),
    "selective_state_update": (selective_state_update, lambda: dict(
        state=_r(b, D, N), x=_r(b, D), dt=_pos(b, D), A=-_pos(D, N), B=_r(b, N), C=_r(b, N), D=_r(D),
        z=_r(b, D), dt_bias=_r(D), dt_softplus=True)),
    "wkv6": (wkv6, lambda: dict(r=_r(b, L, H, P), k=_r(b, L, H, P), v=_r(b, L, H, P), w=-_pos(b, L, H, P),
                                u=_r(H, P), initial_state=_r(b, H, P, P))),
    "wkv6_step": (wkv6_step, lambda: dict(state=_r(b, H, P, P), r=_r(b, H, P), k=_r(b, H, P), v=_r(b, H, P),
                                          w=-_pos(b, H, P), u=_r(H, P))),
    "wkv4": (wkv4, lambda: dict(w=-_pos(D), u=_r(D), k=_r(b, L, D), v=_r(b, L, D))),
    "wkv4_step": (wkv4_step, lambda: dict(w=-_pos(D), u=_r(D), k=_r(b, D), v=_r(b, D),
                                          state=(_r(b, D), _pos(b, D), _r(b, D)))),
    "causal_conv1d": (causal_conv1d, lambda: dict(x=_r(b, D, L), weight=_r(D, 4), bias=_r(D))),
    "causal_conv1d_update": (causal_conv1d_update, lambda: dict(x=_r(b, D), conv_state=_r(b, D, 3),
                                                                weight=_r(D, 4), bias=_r(D))),
    "add_rmsnorm": (add_rmsnorm, lambda: dict(x=_r(b, L, D), residual=_r(b, L, D), weight=_r(D))),
    "rms_linear": (rms_linear, lambda: dict(x=_r(2, 8), weight=_r(5, 8), norm_weight=_r(8), residual=_r(2, 8),
                                            bias=_r(5))),
}
CASES = [(op, arg) for op, (_, make) in ARGS.items() for arg, v in make().items() if not isinstance(v, bool)]


def _cast(v, dtype):
    if isinstance(v, bool):
        return v
    return tuple(t.to(dtype) for t in v) if isinstance(v, tuple) else v.to(dtype)


def _call(op, arg, odd, backend, monkeypatch):
    """The op on float32 inputs but `arg` in `odd`; its outputs and the step ops' states as a list."""
    monkeypatch.setenv("ARCHDSL_KERNELS", backend)
    fn, make = ARGS[op]
    torch.manual_seed(0)
    inputs = {k: _cast(v, odd if k == arg else torch.float32) for k, v in make().items()}
    try:
        out = fn(**inputs)
    except ValueError as e:
        return str(e)
    flat = list(out) if isinstance(out, tuple) else [out]
    states = [inputs[k] for k in ("state", "conv_state") if k in inputs]
    return [t for s in flat + states for t in (s if isinstance(s, tuple) else (s,)) if t is not None]


@pytest.mark.parametrize("odd", [torch.bfloat16, torch.float64])
@pytest.mark.parametrize("op, arg", CASES)
def test_one_argument_in_another_dtype(op, arg, odd, monkeypatch):
    ours = _call(op, arg, odd, "triton", monkeypatch)
    ref = _call(op, arg, odd, "torch", monkeypatch)
    if isinstance(ref, str) or isinstance(ours, str):
        assert ours == ref, "one path raised, the other did not (or with another message)"
        return
    assert [t.dtype for t in ours] == [t.dtype for t in ref]
    for a, r in zip(ours, ref):
        scale = r.double().abs().max().clamp_min(1.0)
        assert ((a.double() - r.double()).abs().max() / scale) < 2e-2, f"{op}: {arg} in {odd}"
