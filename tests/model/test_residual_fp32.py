"""The spec's residual_fp32 (mamba_ssm's residual_in_fp32): a 16-bit model keeps its residual stream in
float32, the sublayers still read and write the model's dtype, and the model computes the same function,
closer to its float64 twin; float32 and float64 models are unchanged. On the CPU's torch paths; the GPU
run takes the same tests through the Triton kernels (the fused add + RMSNorm with a float32 stream)."""
from __future__ import annotations

import os

import pytest
import torch

import archdsl
from archdsl.spec import with_sizes

BLOCKS = {
    "mamba": {"d_state": 4},
    "mamba2": {"d_state": 8, "headdim": 8, "ngroups": 2, "chunk_size": 4},
    "attn": {"heads": 4, "kv_heads": 2},
    "mlp": {"hidden": 48},
    "zamba": {"heads": 4, "hidden": 48},
}
LAYOUTS = {"hybrid": "2×(mamba, mamba2+mlp, attn+mlp)", "zamba": "3×mamba2, zamba(shared, lora=4) at 1 2"}
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _spec(layout: str, on: bool):
    return with_sizes(archdsl.parse(LAYOUTS[layout], d_model=32, vocab_size=61, blocks=BLOCKS), residual_fp32=on)


def _model(layout, on, dtype):
    return archdsl.compile(_spec(layout, on), dtype=dtype, device=DEV, seed=0)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_stream_in_float32_sublayers_in_the_model_dtype(layout):
    model = _model(layout, True, torch.bfloat16)
    streams, inputs = [], []
    for layer in model.layers:
        layer.register_forward_hook(lambda m, a, out: streams.append(out[0].dtype))
        layer.mixer.register_forward_pre_hook(lambda m, a: inputs.append(a[0].dtype))
    ids = torch.randint(0, 61, (2, 9), generator=torch.Generator().manual_seed(0)).to(DEV)
    logits = model(ids)
    assert set(streams) == {torch.float32} and set(inputs) == {torch.bfloat16} and logits.dtype == torch.bfloat16
    streams.clear()
    off = _model(layout, False, torch.bfloat16)
    off.layers[0].register_forward_hook(lambda m, a, out: streams.append(out[0].dtype))
    off(ids)
    assert streams == [torch.bfloat16]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_wide_models_are_unchanged(dtype):
    ids = torch.randint(0, 61, (2, 7), generator=torch.Generator().manual_seed(1)).to(DEV)
    a, b = (_model("hybrid", on, dtype)(ids) for on in (True, False))
    assert torch.equal(a, b)


def test_closer_to_float64():
    """bf16 logits against the float64 model holding the same (bf16) weights: the float32 stream is
    closer, over 4 seeds of inputs."""
    on, off = _model("hybrid", True, torch.bfloat16), _model("hybrid", False, torch.bfloat16)
    ref = _model("hybrid", False, torch.float64)
    ref.load_state_dict(on.state_dict())
    err = {True: 0.0, False: 0.0}
    for seed in range(4):
        ids = torch.randint(0, 61, (2, 33), generator=torch.Generator().manual_seed(seed)).to(DEV)
        with torch.no_grad():
            r = ref(ids)
            for flag, m in ((True, on), (False, off)):
                err[flag] += ((m(ids).double() - r).norm() / r.norm()).item()
    assert err[True] < err[False]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_decode_and_training(layout):
    """Stepping token by token gives the parallel logits (bf16 tolerance), and a training step gives
    finite bf16 gradients for every parameter."""
    model = _model(layout, True, torch.bfloat16)
    ids = torch.randint(0, 61, (2, 6), generator=torch.Generator().manual_seed(2)).to(DEV)
    with torch.no_grad():
        full = model(ids).float()
        cache = model.init_cache(2)
        steps = torch.stack([model.step(ids[:, t], cache) for t in range(6)], dim=1).float()
    assert ((steps - full).norm() / full.norm()).item() < 2e-2
    model.train()
    model(ids).float().logsumexp(-1).mean().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.bfloat16 and torch.isfinite(p.grad).all(), n


def test_spec_file_round_trip_and_hf_config(tmp_path):
    spec = archdsl.load_spec(os.path.join(os.path.dirname(__file__), "..", "..", "specs", "mamba-2.8b.yaml"))
    assert spec.residual_fp32 and "residual_fp32: true" in spec.to_yaml()
    again = archdsl.spec.spec_from_yaml(spec.to_yaml())
    assert again.residual_fp32 and again == spec
    assert not archdsl.parse("mamba").residual_fp32
    from archdsl.convert.weights.mamba import hf_config

    assert hf_config(spec)["residual_in_fp32"] is True
    assert hf_config(with_sizes(spec, residual_fp32=False))["residual_in_fp32"] is False
    from archdsl.convert.hf import hf_config_to_spec

    cfg = {"model_type": "mamba", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 100}
    assert hf_config_to_spec(cfg)["residual_fp32"] is True  # HF's default
    assert "residual_fp32" not in hf_config_to_spec({**cfg, "residual_in_fp32": False})


def test_folded_decode_norm_takes_the_float32_stream(monkeypatch):
    """Mamba-2's decode folds the add + RMSNorm into in_proj's GEMV ("norm_gemv") on a float32 stream too:
    the same logits as without the fold, float16 through the Triton kernels (the interpreter on a CPU,
    which cannot load bfloat16)."""
    monkeypatch.setenv("ARCHDSL_KERNELS", "triton")
    if DEV == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    dtype = torch.bfloat16 if DEV == "cuda" else torch.float16
    spec = with_sizes(archdsl.parse("3×mamba2", d_model=32, vocab_size=61, blocks=BLOCKS), residual_fp32=True)
    model = archdsl.compile(spec, dtype=dtype, device=DEV, seed=0)
    ids = torch.randint(0, 61, (1, 4), generator=torch.Generator().manual_seed(6)).to(DEV)  # one row, as the fold
    runs = []
    for fuse in (True, set(model.fusions) - {"norm_gemv"}):
        model.set_fuse(fuse)
        with torch.no_grad():
            cache = model.init_cache(1)
            h = torch.zeros(1, 32, device=DEV, dtype=torch.float32)
            folds = model.layers[1].mixer.folds_norm(model.layers[1].norm, h)
            runs.append((folds, torch.stack([model.step(ids[:, t], cache) for t in range(4)], 1).float()))
    assert runs[0][0] and not runs[1][0]
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=2e-2, atol=2e-2)
