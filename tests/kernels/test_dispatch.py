"""Which backend an op takes (kernels/_dispatch.py): choose_backend's decision from the device, ARCHDSL_KERNELS, empty
work and float64 work, and a float64 model under the choice made for CUDA tensors, float64-exact end to end."""
import pytest
import torch

import archdsl
from archdsl.kernels import _dispatch
from archdsl.kernels._dispatch import KernelsEnvError, backend_for, choose_backend


@pytest.mark.parametrize("device_type, forced, empty, float64, want", [
    ("cuda", "", False, False, "triton"),   # the default on CUDA
    ("cuda", "", False, True, "torch"),     # float64 work of a scan: the torch path, float64-exact
    ("cuda", "", True, False, "torch"),     # empty work never launches
    ("cuda", "", True, True, "torch"),
    ("cpu", "", False, False, "torch"),     # the CPU's path
    ("cpu", "", False, True, "torch"),
    ("meta", "", False, False, "torch"),
    ("cuda", "triton", False, True, "triton"),  # forced: the Triton kernels on float64 (in float32 arithmetic)
    ("cpu", "triton", False, True, "triton"),   # (the interpreter: how the tests hold the kernels to float64)
    ("cuda", "triton", True, False, "torch"),   # forced, but empty
    ("cuda", "torch", False, False, "torch"),
    ("cuda", "naive", False, True, "naive"),
    ("cuda", "naive", True, False, "naive"),
])
def test_choose_backend(device_type, forced, empty, float64, want):
    assert choose_backend(device_type, forced, empty=empty, float64=float64) == want


def test_backend_for_reads_float64_from_exact_only(monkeypatch):
    """backend_for passes choose_backend float64 where a tensor of `exact` (None skipped) is float64; the other
    arguments' dtypes do not count (the steps, the norms and the model's fusion checks pass none)."""
    seen = []
    monkeypatch.delenv("ARCHDSL_KERNELS", raising=False)
    monkeypatch.setattr(_dispatch, "choose_backend", lambda d, f="", **kw: seen.append((d, f, kw)) or "torch")
    x32, x64 = torch.zeros(2), torch.zeros(2, dtype=torch.float64)
    backend_for(x64, x64)
    backend_for(x32, exact=(x32, None, x64))
    backend_for(x32, torch.zeros(0), exact=(x32, None))
    assert seen == [("cpu", "", dict(empty=False, float64=False)), ("cpu", "", dict(empty=False, float64=True)),
                    ("cpu", "", dict(empty=True, float64=False))]
    monkeypatch.setenv("ARCHDSL_KERNELS", "cuda")
    with pytest.raises(KernelsEnvError, match="ARCHDSL_KERNELS='cuda'"):
        backend_for(x32, exact=(x64,))


def test_a_float64_model_is_exact_under_the_choice_made_for_cuda(monkeypatch):
    """A float64 hybrid of every scan (mamba, mamba2, rwkv6, rwkv4) with ARCHDSL_KERNELS unset, dispatched as on CUDA
    (the Triton kernels interpreted where chosen): its parallel forward equals the torch backend's and its own
    token-by-token decode to float64 rounding. The Triton scans made the forward float32-accurate, 1.5e-7 off."""
    if not _dispatch.interpreting():
        pytest.skip("needs TRITON_INTERPRET=1 (tests/conftest.py sets it)")
    spec = archdsl.parse("mamba(d_state=4), mamba2(d_state=8, headdim=16), rwkv6(head_size=16, mix_lora=4, "
                         "decay_lora=4), rwkv4", d_model=32, vocab_size=64)
    model = archdsl.compile(spec, dtype=torch.float64, seed=0)
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(0))

    def run():
        with torch.no_grad():
            cache = model.init_cache(batch=1)
            return model(ids), torch.stack([model.step(ids[:, t], cache) for t in range(ids.shape[1])], 1)

    monkeypatch.setenv("ARCHDSL_KERNELS", "torch")
    want, _ = run()
    real, chosen = _dispatch.choose_backend, []
    monkeypatch.delenv("ARCHDSL_KERNELS")
    monkeypatch.setattr(_dispatch, "choose_backend",
                        lambda d, f="", **kw: chosen.append(real("cuda", f, **kw)) or chosen[-1])
    forward, decode = run()
    assert forward.dtype == torch.float64
    scale = want.abs().max()
    assert (forward - want).abs().max() / scale < 1e-13
    assert (forward - decode).abs().max() / scale < 1e-12
    assert "triton" in chosen and "torch" in chosen  # the steps' and fusions' checks, and the scans
