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


def _scan_calls():
    """Each scan op on small float32 CPU inputs: name → a call returning its outputs (states copied, as the steps
    write them in place)."""
    from archdsl import kernels as K

    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)
    b, L, H, P, N, D, W = 2, 11, 2, 4, 8, 6, 4
    A = -torch.rand(H, generator=g) - 0.5
    x, dt, Bm, Cm = r(b, L, H, P), torch.rand(b, L, H, generator=g), r(b, L, 1, N), r(b, L, 1, N)
    rk, kk, vk, wk, uk = r(b, L, H, P), r(b, L, H, P), r(b, L, H, P), -torch.rand(b, L, H, P, generator=g), r(H, P)
    u1, d1, A1, B1, C1 = r(b, D, L), torch.rand(b, D, L, generator=g), -torch.rand(D, N, generator=g), r(b, N, L), \
        r(b, N, L)
    w4, uu4, k4, v4 = r(D), r(D), r(b, L, D), r(b, L, D)
    xc, wc, sc = r(b, D, L), r(D, W), r(b, D, W - 1)
    s0, s6, s1 = r(b, H, P, N), r(b, H, P, P), r(b, D, N)
    state4 = (r(b, D), torch.rand(b, D, generator=g) + 0.5, r(b, D))
    return {
        "ssd_scan": lambda: K.ssd_scan(x, dt, A, Bm, Cm, 4, return_final_states=True),
        "ssd_step": lambda: (K.ssd_step(s := s0.clone(), x[:, 0], dt[:, 0], A, Bm[:, 0], Cm[:, 0]), s),
        "wkv6": lambda: K.wkv6(rk, kk, vk, wk, uk, output_final_state=True),
        "wkv6_step": lambda: (K.wkv6_step(s := s6.clone(), rk[:, 0], kk[:, 0], vk[:, 0], wk[:, 0], uk), s),
        "selective_scan": lambda: K.selective_scan(u1, d1, A1, B1, C1, return_last_state=True),
        "selective_state_update": lambda: (K.selective_state_update(s := s1.clone(), u1[..., 0], d1[..., 0], A1,
                                                                    B1[..., 0], C1[..., 0]), s),
        "wkv4": lambda: K.wkv4(w4, uu4, k4, v4, state4),
        "wkv4_step": lambda: K.wkv4_step(w4, uu4, k4[:, 0], v4[:, 0], state4),
        "causal_conv1d": lambda: K.causal_conv1d(xc, wc, None, "silu", sc, return_final_states=True),
        "causal_conv1d_update": lambda: (K.causal_conv1d_update(xc[..., 0], s := sc.clone(), wc, None, "silu"), s),
    }


@pytest.mark.parametrize("name", list(_scan_calls()))
def test_a_scan_under_autocast_computes_as_without_it(name):
    """torch.autocast does not reach into a scan (kernels/_dispatch.without_autocast): float32 inputs under a bf16
    autocast give what they give without it, in the same dtypes. The torch paths' einsums and F.conv1d had run in
    bf16 (about 3e-3 off) and causal_conv1d had returned bf16."""
    def flat(out):
        return [out] if isinstance(out, torch.Tensor) else [t for o in out for t in flat(o)]

    want = flat(_scan_calls()[name]())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = flat(_scan_calls()[name]())
    assert [t.dtype for t in got] == [t.dtype for t in want]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
