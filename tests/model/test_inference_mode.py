"""A decode cache filled under torch.inference_mode() and then used outside it (prefill under inference_mode, steps
under no_grad, as transformers' caches allow): its inference tensors are copied once, and every block continues
as if the mode had never changed (it was torch's raw "Inplace update to inference tensor outside InferenceMode")."""
from __future__ import annotations

import pytest
import torch

import archdsl

SMALL = {
    "mamba2": {"d_state": 8, "headdim": 8, "chunk_size": 4},
    "mamba": {"d_state": 4},
    "s4d": {"d_state": 8},
    "attn": {"heads": 4, "kv_heads": 2},
    "swa": {"kind": "attn", "heads": 2, "window": 3},
    "mlp": {"hidden": 24},
    "moe": {"experts": 3, "top_k": 2, "hidden": 8},
    "zamba": {"heads": 4, "lora": 4, "hidden": 24},
    "rwkv6": {"head_size": 8, "mix_lora": 4, "decay_lora": 4},
    "cmix": {"hidden": 24, "version": 6},
    "rwkv4": {},
    "cmix4": {"kind": "cmix", "hidden": 24, "version": 4},
}
LAYOUTS = ["attn+mlp", "swa", "mamba", "mamba2", "s4d", "rwkv6+cmix", "rwkv4+cmix4", "mamba+moe",
           "mamba2, attn, zamba(shared) at 0 1"]


def model_of(layout):
    spec = archdsl.parse(layout, d_model=16, vocab_size=37, blocks=SMALL)
    return archdsl.compile(spec, dtype=torch.float64, seed=0)


def run(model, ids, cache, modes):
    """Prefill 4 tokens, a step, a chunk of 3, two steps: each call under its mode in `modes` (a context manager
    factory each) → the logits [B, 10, V]."""
    calls = [lambda: model(ids[:, :4], cache), lambda: model.step(ids[:, 4], cache)[:, None],
             lambda: model(ids[:, 5:8], cache), lambda: model.step(ids[:, 8], cache)[:, None],
             lambda: model.step(ids[:, 9], cache)[:, None]]
    out = []
    for call, mode in zip(calls, modes):
        with mode():
            out.append(call().clone())  # a clone outside the mode is a normal tensor
    return torch.cat(out, 1)


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_cache_from_inference_mode_is_used_outside_it(layout, static):
    model = model_of(layout)
    ids = torch.randint(0, 37, (2, 10), generator=torch.Generator().manual_seed(0))
    new = lambda: model.init_cache(2, max_len=10 if static else None, static=static)  # noqa: E731
    want = run(model, ids, new(), [torch.no_grad] * 5)
    inf, ng = torch.inference_mode, torch.no_grad
    for modes in ([inf, ng, ng, ng, ng], [inf, inf, ng, inf, ng], [ng, inf, inf, ng, ng]):
        with inf():
            cache = new()  # made under the mode too
        torch.testing.assert_close(run(model, ids, cache, modes), want, rtol=1e-12, atol=1e-12)
        assert not any(t.is_inference() for t in cache.tensors())
    with inf():
        cache = new()
        model(ids[:, :4], cache)
    cache.reset()  # outside the mode: a normal cache at position 0
    torch.testing.assert_close(run(model, ids, cache, [ng] * 5), want, rtol=1e-12, atol=1e-12)


def test_a_cache_from_inference_mode_takes_gradients_outside_it():
    """Stepped with autograd on after an inference_mode prefill: the gradients of the same steps after a no_grad
    prefill."""
    model = model_of("mamba, attn+mlp, rwkv6")
    ids = torch.randint(0, 37, (2, 7), generator=torch.Generator().manual_seed(1))
    grads = []
    for mode in (torch.no_grad, torch.inference_mode):
        model.zero_grad()
        cache = model.init_cache(2)
        with mode():
            model(ids[:, :4], cache)
        logits = torch.cat([model(ids[:, 4:6], cache), model.step(ids[:, 6], cache)[:, None]], 1)
        logits.square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_generate_under_inference_mode_then_outside():
    model = model_of("mamba2, attn+mlp")
    ids = torch.randint(0, 37, (2, 5), generator=torch.Generator().manual_seed(2))
    want = model.generate(ids, 6)
    with torch.inference_mode():
        assert torch.equal(model.generate(ids, 6), want)
    assert torch.equal(model.generate(ids, 6), want)
