"""A decode cache's SSM states in a 16-bit dtype (ArchModel.set_ssm_state_dtype, compile(ssm_state_dtype=)).

The steps compute in float32 whatever the state's dtype and round only what they store. So a step from
a bfloat16 state gives the logits, bit for bit, of the same step from a float32 state holding the same
values, and leaves the float32 result rounded: checked on the CPU, through the torch ops and through the
Triton kernels (interpreted; the fused step kernels among them). Compiled for a GPU, a kernel that loads
bf16 rather than float32 is another compilation (its own layouts and FMA contractions), so there the two
agree to float32 rounding, which the model's bf16 activations then round on: checked as logits within 1%
of the norm, and each kernel's bf16 state as its float32 reference rounded
(tests/model/test_fused_step.py); a graphed bf16-state decode equals the eager one bit for bit.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import archdsl  # noqa: E402
from archdsl.errors import ArchDSLError  # noqa: E402

SMALL = {"mamba": {"d_state": 4}, "mamba2": {"d_state": 8, "headdim": 8, "chunk_size": 4},
         "attn": {"heads": 4, "kv_heads": 2}, "rwkv6": {"head_size": 8, "mix_lora": 4, "decay_lora": 4}}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _ssm(cache, key="ssm"):
    """The Mamba / Mamba-2 layers' state tensors under `key` ("ssm" or "conv"), layer by layer."""
    return [s[key] for layer in cache.states for s in layer.values() if s and "ssm" in s]


def _same_step_from_both(model, ids, steps, batch, exact=True):
    """Prefill `ids` into a bf16-state cache and a float32-state one; then `steps` greedy steps, the float32
    cache first set to the bf16 one's values each time. Asserts the logits are equal and the bf16 states
    are the float32 ones rounded (`exact`), or the logits within 1% of the norm."""
    model.set_ssm_state_dtype(torch.bfloat16)
    low = model.init_cache(batch, max_len=ids.shape[1] + steps)
    model.set_ssm_state_dtype(None)
    high = model.init_cache(batch, max_len=ids.shape[1] + steps)
    assert all(t.dtype == torch.bfloat16 for t in _ssm(low)) and all(t.dtype == torch.float32 for t in _ssm(high))
    with torch.no_grad():
        a, b = model(ids, low)[:, -1], model(ids, high)[:, -1]
        assert torch.equal(a, b)  # prefill starts from zeros either way
        for _ in range(steps):
            for lo, hi in zip(_ssm(low), _ssm(high)):
                assert not exact or torch.equal(lo, hi.to(lo.dtype))
                hi.copy_(lo)
            for lo, hi in zip(_ssm(low, "conv"), _ssm(high, "conv")):
                hi.copy_(lo)
            tok = a.argmax(-1)
            a, b = model.step(tok, low), model.step(tok, high)
            if exact:
                assert torch.equal(a, b)
            else:
                assert ((a.float() - b.float()).norm() / b.float().norm()).item() < 1e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_a_bf16_state_only_rounds_what_it_stores(dtype, backend, monkeypatch):
    monkeypatch.setenv("ARCHDSL_KERNELS", backend)
    spec = archdsl.parse("mamba, mamba2, attn", d_model=16, vocab_size=37, blocks=SMALL)
    model = archdsl.compile(spec, dtype=dtype, seed=1)
    ids = torch.randint(0, 37, (2, 6), generator=torch.Generator().manual_seed(0))
    _same_step_from_both(model, ids, steps=3, batch=2)


def test_the_cache_and_the_analyzer_agree():
    spec = archdsl.parse("mamba, mamba2, rwkv6, attn", d_model=16, vocab_size=37, blocks=SMALL)
    for dtype, state in ((torch.bfloat16, "bfloat16"), (torch.float32, "float16"), (torch.bfloat16, None)):
        model = archdsl.compile(spec, dtype=dtype, ssm_state_dtype=state)
        assert model.ssm_state_dtype == (getattr(torch, state) if state else torch.float32)
        cache = model.init_cache(2, max_len=20)
        with torch.no_grad():
            model(torch.randint(0, 37, (2, 20)), cache)
        rep = archdsl.analyze(spec, seq_len=20, batch=2, dtype=str(dtype)[6:], ssm_state_dtype=state)
        assert cache.nbytes() == rep.cache_bytes and rep.ssm_state_dtype == state
    # RWKV-6's state keeps float32: the setting is the Mamba / Mamba-2 SSM states'
    rwkv = [s["wkv"] for layer in cache.states for s in layer.values() if s and "wkv" in s]
    assert rwkv and all(t.dtype == torch.float32 for t in rwkv)


def test_generate_and_a_saved_model_take_it(tmp_path):
    spec = archdsl.parse("mamba2, attn", d_model=16, vocab_size=37, blocks=SMALL)
    model = archdsl.compile(spec, ssm_state_dtype="bf16")
    ids = torch.randint(0, 37, (1, 5), generator=torch.Generator().manual_seed(0))
    assert model.generate(ids, 4, temperature=0).shape == (1, 9)
    model.save(tmp_path / "m")
    loaded = archdsl.load(tmp_path / "m", ssm_state_dtype="float16")
    assert loaded.ssm_state_dtype == torch.float16 and archdsl.load(tmp_path / "m").ssm_state_dtype == torch.float32
    assert model.set_ssm_state_dtype(None).ssm_state_dtype == torch.float32
    assert archdsl.compile(spec, dtype="float64").ssm_state_dtype == torch.float64


@pytest.mark.parametrize("bad", ["int8", "bf61", torch.int32, 3, "complex64"])
def test_bad_state_dtypes_are_refused(bad):
    spec = archdsl.parse("mamba2", d_model=16, vocab_size=37, blocks=SMALL)
    with pytest.raises(ArchDSLError, match="ssm_state_dtype must be float32, bfloat16, float16 or float64"):
        archdsl.compile(spec, ssm_state_dtype=bad)
    model = archdsl.compile(spec)
    with pytest.raises(ArchDSLError, match="ssm_state_dtype"):
        model.set_ssm_state_dtype(bad)
    assert model.ssm_state_dtype == torch.float32  # left as it was
    if isinstance(bad, str):
        with pytest.raises(ArchDSLError, match=f"unknown ssm_state_dtype '{bad}'"):
            archdsl.analyze(spec, ssm_state_dtype=bad)


def test_the_cli_takes_it():
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "archdsl", *args], capture_output=True, text=True, cwd=ROOT)
    spec = os.path.join(ROOT, "specs", "mamba2-2.7b.yaml")
    full = json.loads(cli("show", spec, "--batch", "8", "--json").stdout)
    half = json.loads(cli("show", spec, "--batch", "8", "--json", "--ssm-state-dtype", "bf16").stdout)
    assert half["ssm_state_dtype"] == "bfloat16" and full["ssm_state_dtype"] is None
    # 64 layers of [8, 80, 64, 128] states, 2 bytes an element fewer
    assert full["cache_bytes"] - half["cache_bytes"] == 64 * 8 * 80 * 64 * 128 * 2
    run = cli("run", "mamba2", "--prompt-len", "4", "--gen", "2", "--ssm-state-dtype", "bfloat16", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["ssm_state_dtype"] == "bfloat16"
    run = cli("run", "2×attn", "--prompt-len", "4", "--gen", "2", "--ssm-state-dtype", "bfloat16", "--json")
    assert json.loads(run.stdout)["ssm_state_dtype"] is None  # no SSM states: it had said bfloat16
    bad = cli("run", "mamba2", "--gen", "1", "--ssm-state-dtype", "int8")
    assert bad.returncode == 2 and "--ssm-state-dtype: must be float32" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("layout", ["2×mamba2", "2×mamba"])
@pytest.mark.parametrize("batch", [1, 16])
def test_gpu_a_bf16_state_steps_as_float32_does(layout, batch):
    """mamba2-1.3b / mamba-1.4b width (d_model 2048), bf16, with every fusion: one row decodes through the
    fused step kernels with the norm folded into the GEMVs, 16 rows through the wide-program kernels. Seen
    on the H200: equal, or 2.3e-3 / 3.9e-4 of the norm apart at 1 / 16 rows (Mamba-2)."""
    spec = archdsl.parse(layout, d_model=2048, vocab_size=1024)
    model = archdsl.compile(spec, device="cuda", dtype=torch.bfloat16, seed=0)
    ids = torch.randint(0, 1024, (batch, 32), generator=torch.Generator().manual_seed(0)).cuda()
    _same_step_from_both(model, ids, steps=8, batch=batch, exact=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("layout", ["4×mamba2", "4×mamba"])
def test_gpu_bf16_state_graphed_equals_eager(layout):
    """200 greedy tokens with bf16 states, replayed from a CUDA graph and eagerly: the same, bit for bit."""
    spec = archdsl.parse(layout, d_model=2048, vocab_size=1024)
    ids = torch.randint(0, 1024, (2, 32), generator=torch.Generator().manual_seed(0)).cuda()
    runs = [archdsl.compile(spec, device="cuda", dtype=torch.bfloat16, seed=0, cuda_graph=graph,
                            ssm_state_dtype="bf16").generate(ids, 200, temperature=0) for graph in (True, False)]
    assert torch.equal(runs[0], runs[1])
