"""A wrapped, hooked or replaced nn.Linear sublayer is honoured on every path: the fast paths that read a Linear's
weight (Mamba's steps_linear projections, attention's one q/k/v GEMM, Mamba-2's gated_rmsnorm_linear in training,
the fused Triton decode steps, the norm folded into in_proj's GEMV) are taken for a plain nn.Linear only; another
is called as a module. PEFT's LoRA (a module holding the base Linear, whose `weight` it forwards) was ignored by
the parallel Mamba forward and by attention at inference, and had no gradient in Mamba-2's training forward;
quantize_dynamic's Linears (whose `weight` is a method) crashed. A LoRA-like wrapper here stands for PEFT's: a model
wrapped so computes what the same model with the low-rank term merged into its weights does (float64)."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn

import archdsl
from archdsl.model.modules.mamba import fused_step_ok
from archdsl.model.plain import plain

BLOCKS = {
    "mamba": {"d_state": 4, "inner_norms": "weighted", "bias": True},
    "mamba2": {"d_state": 6, "headdim": 8, "chunk_size": 4},
    "ungated": {"kind": "mamba2", "d_state": 5, "headdim": 4, "gated_norm": False, "chunk_size": 4},
    "attn": {"heads": 4, "kv_heads": 2, "bias": True},
    "mlp": {"hidden": 24},
}
LAYOUT = "mamba, mamba2+mlp, ungated, attn+mlp"
TARGETS = {"Mamba": ("in_proj", "x_proj", "dt_proj", "out_proj"), "Mamba2": ("in_proj", "out_proj"),
           "Attention": ("q_proj", "k_proj", "v_proj", "o_proj")}


class LoRA(nn.Module):
    """PEFT's LoraLayer in miniature: the base Linear kept (its weight and bias reachable through the wrapper, as
    PEFT's are), its output plus B·A·x."""

    def __init__(self, base: nn.Linear, rank: int, seed: int):
        super().__init__()
        self.base_layer = base
        g = torch.Generator().manual_seed(seed)
        self.lora_A = nn.Linear(base.in_features, rank, bias=False).to(base.weight)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False).to(base.weight)
        with torch.no_grad():
            for lin in (self.lora_A, self.lora_B):
                lin.weight.copy_(0.3 * torch.randn(lin.weight.shape, generator=g, dtype=torch.float64))

    @property
    def weight(self):
        return self.base_layer.weight

    @property
    def bias(self):
        return self.base_layer.bias

    def forward(self, x):
        return self.base_layer(x) + self.lora_B(self.lora_A(x))

    def delta(self) -> torch.Tensor:
        return self.lora_B.weight @ self.lora_A.weight


def _model(dtype=torch.float64, layout=LAYOUT):
    spec = archdsl.parse(layout, d_model=16, vocab_size=37, blocks=BLOCKS)
    model = archdsl.compile(spec, dtype=dtype, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # away from the inits (D = 1, zero biases), so that every term matters
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p))
    return model


def _projections(model, targets=TARGETS):
    """(mixer, name) of every projection of `targets` in the model's mixers."""
    return [(layer.mixer, name) for layer in model.layers
            for name in targets.get(type(layer.mixer).__name__, ())]


def wrapped_and_merged(model, targets=TARGETS):
    """The model with LoRA wrappers on `targets`, and a copy with each wrapper's B·A added to the base weight."""
    merged = copy.deepcopy(model)
    for i, (mixer, name) in enumerate(_projections(model, targets)):
        setattr(mixer, name, LoRA(getattr(mixer, name), rank=2, seed=i))
    with torch.no_grad():
        for (mixer, name), (twin, _) in zip(_projections(model, targets), _projections(merged, targets)):
            getattr(twin, name).weight.add_(getattr(mixer, name).delta())
    return model, merged


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def _steps(model, ids, cache=None):
    cache = model.init_cache(ids.shape[0]) if cache is None else cache
    return torch.stack([model.step(ids[:, t], cache) for t in range(ids.shape[1])], dim=1)


def test_lora_wrappers_are_honoured_forward_step_and_training():
    model, merged = wrapped_and_merged(_model())
    assert not any(plain(getattr(m, n)) for m, n in _projections(model))
    ids = torch.randint(0, 37, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = merged(ids)
        assert rel(model(ids), want) < 1e-9  # eval, no autograd: the qkv fusion's and Mamba's fast paths
        assert rel(_steps(model, ids), want) < 1e-9  # forward == step
        cache = model.init_cache(2)
        pre = model(ids[:, :3], cache)
        assert rel(torch.cat([pre, _steps(model, ids[:, 3:], cache)], dim=1), want) < 1e-9
    for m in (model, merged):  # training: Mamba's and Mamba-2's recompute fusion (on by default) take part
        m.train().zero_grad(set_to_none=True)
        logits = m(ids)
        logits.square().mean().backward()
        if m is model:
            assert rel(logits, want) < 1e-9
    for (mixer, name), (twin, _) in zip(_projections(model), _projections(merged)):
        lora, base = getattr(mixer, name), getattr(twin, name)
        where = f"{type(mixer).__name__}.{name}"
        assert rel(lora.base_layer.weight.grad, base.weight.grad) < 1e-9, where
        assert lora.lora_B.weight.grad is not None and lora.lora_B.weight.grad.abs().max() > 0, where


def test_hooks_are_honoured_forward_and_step():
    """A forward hook (×2 on the output) and a forward pre-hook (×0.5 on the input) act as a scaled weight would,
    under no_grad: the fast paths are left for the module's call."""
    model = _model()
    merged = copy.deepcopy(model)
    mamba, mamba2, attn = model.layers[0].mixer, model.layers[1].mixer, model.layers[3].mixer
    hooks = [mamba.in_proj.register_forward_hook(lambda m, i, o: 2 * o),
             mamba.dt_proj.register_forward_pre_hook(lambda m, i: (0.5 * i[0],)),
             mamba2.out_proj.register_forward_hook(lambda m, i, o: 2 * o),
             attn.k_proj.register_forward_pre_hook(lambda m, i: (0.5 * i[0],))]
    with torch.no_grad():
        m0, m1, m3 = merged.layers[0].mixer, merged.layers[1].mixer, merged.layers[3].mixer
        for lin in (m0.in_proj, m1.out_proj):
            lin.weight.mul_(2)
            lin.bias is None or lin.bias.mul_(2)
        m0.dt_proj.weight.mul_(0.5)
        m3.k_proj.weight.mul_(0.5)
    ids = torch.randint(0, 37, (2, 6), generator=torch.Generator().manual_seed(2))
    try:
        with torch.no_grad():
            want = merged(ids)
            assert rel(model(ids), want) < 1e-9
            assert rel(_steps(model, ids), want) < 1e-9
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        assert rel(model(ids), want) > 1e-3  # the hooks made the difference


def test_global_module_hooks_see_every_projection():
    """torch's global module hooks run for every module called: with one registered, no projection is bypassed."""
    model = _model()
    called = []
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: called.append(m))
    ids = torch.randint(0, 37, (1, 4), generator=torch.Generator().manual_seed(3))
    try:
        with torch.no_grad():
            model(ids)
            seen_forward = {id(m) for m in called}
            called.clear()
            _steps(model, ids)
            seen_step = {id(m) for m in called}
    finally:
        handle.remove()
    for mixer, name in _projections(model):
        assert id(getattr(mixer, name)) in seen_forward and id(getattr(mixer, name)) in seen_step, name
    assert plain(model.layers[0].mixer.in_proj)  # and plain again once it is removed


def test_a_replaced_linear_keeps_forward_equal_to_step():
    """A Linear replaced by a module of another class (its weight a method, as torch.ao's quantized Linear's):
    the model runs, forward == step."""

    class Replaced(nn.Module):
        def __init__(self, lin):
            super().__init__()
            self.w, self.b = nn.Parameter(lin.weight.detach().clone()), lin.bias
            self.in_features, self.out_features = lin.in_features, lin.out_features

        def weight(self):  # no tensor to read
            return self.w

        def forward(self, x):
            return nn.functional.linear(x, self.w, self.b)

    model = _model()
    want_model = copy.deepcopy(model)
    for mixer, name in _projections(model):
        setattr(mixer, name, Replaced(getattr(mixer, name)))
    ids = torch.randint(0, 37, (2, 5), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = want_model(ids)
        assert rel(model(ids), want) < 1e-9
        assert rel(_steps(model, ids), want) < 1e-9


def test_quantize_dynamic_runs():
    """torch.ao's quantize_dynamic swaps every nn.Linear: forward and step run ('function' object has no attribute
    'shape' in Mamba, no attribute 'data' in attention's packing before), near the float32 model (to int8's
    rounding)."""
    quantize = getattr(getattr(getattr(torch, "ao", None), "quantization", None), "quantize_dynamic", None)
    if quantize is None:
        pytest.skip("torch without torch.ao.quantization.quantize_dynamic")
    model = _model(torch.float32, "mamba, mamba2, attn+mlp")
    ids = torch.randint(0, 37, (1, 5), generator=torch.Generator().manual_seed(5))
    with warnings.catch_warnings():  # its deprecation
        warnings.simplefilter("ignore")
        q = quantize(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    with torch.no_grad():
        want, got, steps = model(ids), q(ids), _steps(q, ids)
    assert rel(got, want) < 0.5 and rel(steps, want) < 0.5  # int8 activations, scaled a call (a token, or all)


def test_triton_steps_fall_back_for_a_wrapped_linear(monkeypatch):
    """The fused Triton decode steps (the interpreter on a CPU) read x_proj's, dt_proj's and out_proj's weights:
    with a wrapper there, the unfused step runs and honours it; the norm folded into in_proj's GEMV too, where in_proj
    or the layer's norm is hooked. The fused steps ignored LoRA entirely (the same logits with and without)."""
    monkeypatch.setenv("ARCHDSL_KERNELS", "triton")
    targets = {"Mamba": ("x_proj",), "Mamba2": ("out_proj",)}
    model, merged = wrapped_and_merged(_model(torch.float32, "mamba, mamba2"), targets)
    ids = torch.randint(0, 37, (1, 3), generator=torch.Generator().manual_seed(6))
    x = torch.zeros(1, 16)
    with torch.no_grad():
        assert all(fused_step_ok(layer.mixer, x) for layer in merged.layers)
        assert not any(fused_step_ok(layer.mixer, x) for layer in model.layers)
        want = _steps(merged, ids)
        assert rel(_steps(model, ids), want) < 1e-4
        calls = []
        merged.layers[0].norm.register_forward_hook(lambda m, i, o: calls.append(m))
        merged.layers[1].mixer.in_proj.register_forward_hook(lambda m, i, o: calls.append(m))
        assert rel(_steps(merged, ids), want) < 1e-4
    assert len(calls) == 2 * ids.shape[1]  # each hook ran at each step: nothing folded past them


def test_torch_compile_traces_the_check():
    """The plain-Linear check traces into one graph (fullgraph), with a wrapper and without."""
    import torch._dynamo

    model, _ = wrapped_and_merged(_model(torch.float32, "mamba, attn"))
    ids = torch.randint(0, 37, (1, 5), generator=torch.Generator().manual_seed(7))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        assert rel(compiled(ids), model(ids)) < 1e-5


def _refused(fn, *words):
    """fn() raises an ArchDSLError whose text holds each of `words`."""
    with pytest.raises(archdsl.ArchDSLError) as e:
        fn()
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_save_and_export_refuse_a_lora_model_before_writing(tmp_path):
    """A LoRA-wrapped model: save wrote a directory load refused (layers.N.mixer.q_proj.base_layer.weight is not in
    the model), export_hf raised a bare KeyError. Both now refuse before writing, naming the module and the merge."""
    from archdsl.convert.hf_io import export_hf

    model = _model(torch.float32, "mamba, attn+mlp")
    model.layers[1].mixer.q_proj = LoRA(model.layers[1].mixer.q_proj, 2, 0)
    _refused(lambda: model.save(tmp_path / "w"), "save:", "layers.1.mixer.q_proj", "LoRA", "merge_and_unload")
    _refused(lambda: export_hf(model, tmp_path / "h"), "export:", "layers.1.mixer.q_proj", "merge_and_unload")
    assert not any(tmp_path.iterdir())  # nothing written, not even a temporary directory


def test_save_after_merge_and_hooked_model_load_back(tmp_path):
    """What the refusal says to do works: the merged model (the base Linear put back) saves and loads with its merged
    weights; a forward hook changes no tensor, so a hooked model saves as it is."""
    model = _model(torch.float32, "mamba, attn+mlp")
    lora = LoRA(model.layers[1].mixer.q_proj, 2, 0)
    model.layers[1].mixer.q_proj = lora
    with torch.no_grad():  # the merge, as PEFT's merge_and_unload does it
        lora.base_layer.weight += lora.delta()
    model.layers[1].mixer.q_proj = lora.base_layer
    model.layers[0].mixer.in_proj.register_forward_hook(lambda mod, args, out: None)
    model.save(tmp_path / "m")
    back = archdsl.load(tmp_path / "m")
    assert torch.equal(back.layers[1].mixer.q_proj.weight, lora.base_layer.weight)


def test_save_and_export_refuse_a_quantized_model(tmp_path):
    """After quantize_dynamic both raised AttributeError ('torch.dtype' object has no attribute 'is_meta') in
    check_has_weights; now an ArchDSLError naming the first quantized Linear and saying to dequantize."""
    from archdsl.convert.hf_io import export_hf
    from archdsl.model.model import check_has_weights

    quantize = getattr(getattr(getattr(torch, "ao", None), "quantization", None), "quantize_dynamic", None)
    if quantize is None:
        pytest.skip("torch without torch.ao.quantization.quantize_dynamic")
    with warnings.catch_warnings():  # its deprecation
        warnings.simplefilter("ignore")
        q = quantize(_model(torch.float32, "mamba, attn+mlp"), {nn.Linear}, dtype=torch.qint8)
    check_has_weights(q, "save")  # its dtype and packed-params entries passed over: no AttributeError
    _refused(lambda: q.save(tmp_path / "w"), "save:", "layers.0.mixer.in_proj", "quantized", "dequantize")
    _refused(lambda: export_hf(q, tmp_path / "h"), "export:", "layers.0.mixer.in_proj", "dequantize")
    assert not any(tmp_path.iterdir())
