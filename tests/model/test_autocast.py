"""torch.autocast: a model of every block kind trains under CPU autocast (bf16 and fp16), forward and backward,
its gradients finite, in each parameter's dtype and near those of the float32 run. Mamba-1's steps_linear (a
custom autograd.Function) failed in its backward: a bf16 gradient against the saved float32 weight."""
from __future__ import annotations

import pytest
import torch

import archdsl

BLOCKS = {
    "mamba2": {"d_state": 8, "headdim": 8, "chunk_size": 4},
    "mamba": {"d_state": 4},
    "s4d": {"d_state": 8},
    "attn": {"heads": 4, "kv_heads": 2},
    "mlp": {"hidden": 48},
    "moe": {"experts": 3, "top_k": 2, "hidden": 16},
    "zamba": {"heads": 4, "lora": 4, "hidden": 48},
    "rwkv6": {"head_size": 8, "mix_lora": 4, "decay_lora": 4},
    "cmix": {"hidden": 48, "version": 6},
    "cmix4": {"kind": "cmix", "hidden": 48, "version": 4},
}
LAYOUTS = ["2×mamba", "2×mamba2", "2×attn", "2×(rwkv4+cmix4)", "2×(rwkv6+cmix)", "2×s4d", "2×mlp",
           "mamba+moe, attn+moe", "4×mamba2, zamba(shared) at 1 3"]
TOL = {torch.bfloat16: 0.1, torch.float16: 0.02}  # the relative error of each whole gradient against float32's


def grads(model, ids, dtype=None, scale=1.0):
    """Every parameter's gradient of a loss on the logits, under autocast to dtype (None: float32); the loss
    taken × scale and the gradients ÷ scale, as GradScaler does (fp16's small gradients underflow without)."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        logits = model(ids)
    (logits.float().logsumexp(-1).mean() * scale).backward()
    return {n: p.grad / scale for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_autocast_trains_every_block(layout, dtype):
    model = archdsl.compile(archdsl.parse(layout, d_model=32, vocab_size=64, blocks=BLOCKS), seed=0).train()
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    want = grads(model, ids)
    got = grads(model, ids, dtype, scale=1024.0 if dtype == torch.float16 else 1.0)
    assert got.keys() == want.keys()
    for name, g in got.items():
        assert g is not None and g.dtype == want[name].dtype, name
        assert torch.isfinite(g).all(), name
        err = (g - want[name]).norm() / want[name].norm().clamp_min(1e-6)
        assert err < TOL[dtype], f"{name}: relative error {err:.2e}"


def test_steps_linear_under_autocast():
    """steps_linear itself, every form (tokens, parts, bias; t steps-contiguous and token-major): the outputs
    in autocast's dtype as F.linear's, the gradients in each input's dtype and near float32's."""
    from archdsl.model.modules.steps_linear import steps_linear

    g = torch.Generator().manual_seed(0)
    for tokens, parts, bias, major in [(False, 1, True, False), (True, 1, False, True), (False, 2, True, True),
                                       (True, 2, False, False)]:
        x = torch.randn(3, 5, 8, generator=g)                       # [B, L, K]
        t = (x.mT if major else x.mT.contiguous()).requires_grad_()
        W = torch.randn(6, 8, generator=g, requires_grad=True)
        b = torch.randn(6, generator=g, requires_grad=True) if bias else None
        inputs = [t, W] + ([b] if bias else [])
        outs = {}
        for dt in (None, torch.bfloat16):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dt is not None):
                y = steps_linear(t, W, b, tokens=tokens, parts=parts)
            ys = y if parts > 1 else (y,)
            assert all(o.dtype == (dt or torch.float32) for o in ys)
            outs[dt] = torch.autograd.grad(sum(o.float().square().sum() for o in ys), inputs)
        for i, (a, w) in enumerate(zip(outs[torch.bfloat16], outs[None])):
            assert a.dtype == w.dtype == torch.float32, i
            assert (a - w).norm() / w.norm() < 0.05, (tokens, parts, bias, major, i)


def test_recipes_run_under_the_forwards_autocast():
    """A tensor kept as a recipe (Mamba's delta, the conv's output) and saved as it is by a later op: the recipe,
    run in the backward, runs under the forward's autocast, so it gives the bf16 tensor the forward kept (it
    gave float32 and failed recompute's check)."""
    from archdsl.model.modules.recompute import Recompute
    from archdsl.model.modules.steps_linear import steps_linear

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 5, generator=g, requires_grad=True)
    W = torch.randn(6, 8, generator=g, requires_grad=True)
    xd, Wd = x.detach(), W.detach()
    outs = {}
    for on in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=on), Recompute() as rc:
            y = rc.keep(steps_linear(x, W), lambda: steps_linear(xd, Wd))
            loss = (y * y).float().sum()  # mul saves y itself: its recipe runs in the backward
        outs[on] = torch.autograd.grad(loss, (x, W))
    for a, w in zip(outs[True], outs[False]):
        assert a.dtype == torch.float32 and (a - w).norm() / w.norm() < 0.05


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["attn(window=3)", "attn", "mamba2, zamba(shared) at 0", "mamba, rwkv6+cmix, s4d"])
def test_caches_fill_under_autocast(layout, dtype):
    """Decoding under autocast: autocast's k, v go into a float32 KV cache (index_copy_ does not cast: the window's
    ring, and every static cache, attention's and zamba's, raised "expected the same dtype"), and the SSM states
    are written in theirs. generate, and a static cache's prefill then steps, give the dynamic cache's logits to
    autocast's rounding; the caches keep the model's dtype."""
    model = archdsl.compile(archdsl.parse(layout, d_model=32, vocab_size=64, blocks=BLOCKS), seed=0)
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        assert model.generate(ids, 3).shape == (2, 9)
        logits = {}
        for static in (False, True):
            cache = model.init_cache(2, max_len=8, static=static)
            pre = model(ids[:, :4], cache)
            steps = [model.step(ids[:, t], cache)[:, None] for t in range(4, 6)]
            logits[static] = torch.cat([pre] + steps, dim=1).float()
            made = model.init_cache(2, max_len=8, static=static)
            assert [t.dtype for t in cache.tensors()] == [t.dtype for t in made.tensors()]
    with torch.no_grad():
        want = model(ids)
    for got in logits.values():
        assert torch.isfinite(got).all()
        assert (got - want).norm() / want.norm() < 0.05
