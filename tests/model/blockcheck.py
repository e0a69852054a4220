"""Checks every block module must pass (float64, CPU): the parallel form and the recurrent form
compute the same function, a prefill can be continued, and every parameter gets a gradient.

    from blockcheck import build, check_block
    check_block(build("mamba", {"d_state": 4}, d_model=16), batch=2, length=7, split=3)
"""
from __future__ import annotations

import torch

from archdsl.blocks import make_config
from archdsl.model.modules import MODULES

RTOL = 1e-9


def build(kind, args=None, d_model=16, seed=0):
    torch.manual_seed(seed)
    cfg = make_config(kind, dict(args or {}), d_model)
    return MODULES[kind](cfg).double()


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def check_reference(mod, x, ref, tol):
    """The block's parallel form and its steps from a fresh state both equal `ref` [B, L, d] on x [B, L, d]."""
    with torch.no_grad():
        assert rel_err(mod(x), ref) < tol
        st = mod.init_state(x.shape[0], x.device, x.dtype)
        assert rel_err(torch.stack([mod.step(x[:, t], st) for t in range(x.shape[1])], dim=1), ref) < tol


def _ctx(ctx, t=None):
    return {k: (v if t is None else v[:, t]) for k, v in ctx.items()}


def check_block(mod, batch=2, length=7, split=3, seed=1, ctx_fn=None):
    """Parallel == token-by-token step; prefill `split` tokens then step == parallel; the state the
    parallel pass leaves equals the state after stepping; gradients reach every parameter."""
    g = torch.Generator().manual_seed(seed)
    d = mod.cfg.d_model
    x = torch.randn(batch, length, d, generator=g, dtype=torch.float64)
    ctx = ctx_fn(batch, length) if ctx_fn else {}
    with torch.no_grad():
        full = mod(x, None, **ctx)
        assert full.shape == x.shape
        state = mod.init_state(batch, x.device, x.dtype)
        steps = torch.stack([mod.step(x[:, t], state, **_ctx(ctx, t)) for t in range(length)], dim=1)
        assert rel_err(steps, full) < RTOL, f"step vs parallel: {rel_err(steps, full):.3g}"
        state2 = mod.init_state(batch, x.device, x.dtype)
        pre = mod(x[:, :split], state2, **{k: v[:, :split] for k, v in ctx.items()})
        rest = [mod.step(x[:, t], state2, **_ctx(ctx, t)) for t in range(split, length)]
        both = torch.cat([pre] + [r[:, None] for r in rest], dim=1)
        assert rel_err(both, full) < RTOL, f"prefill + step vs parallel: {rel_err(both, full):.3g}"
        if state is not None:
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and v.is_floating_point():
                    w = state2[k]
                    n = min(v.shape[2], w.shape[2]) if k in ("k", "v") else None
                    if n is not None:
                        v, w = v[:, :, :n], w[:, :, :n]
                    assert torch.allclose(v, w, rtol=1e-9, atol=1e-12), f"state {k!r} differs"
    # gradients on at least 5 tokens (with one token, attention's q and k do not matter)
    xg = torch.randn(batch, max(length, 5), d, generator=g, dtype=torch.float64).requires_grad_(True)
    ctx = ctx_fn(batch, xg.shape[1]) if ctx_fn else {}
    out = mod(xg, None, **ctx)
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum()
    if getattr(mod, "aux_loss", None) is not None:
        loss = loss + mod.aux_loss
    loss.backward()
    for name, p in mod.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    assert xg.grad.abs().sum() > 0
    return full
