"""The public ops launch on their inputs' CUDA device, not on whichever device is current.

Triton launches on the current device; every public op is wrapped (`_dispatch.on_input_device`) to make its
inputs' device current for the call. On the CPU the wrapper is checked against a stand-in for a tensor on
cuda:1; with two GPUs each op and a graphed model run on cuda:1 while cuda:0 is current, and must give what
they give on cuda:0.
"""
import contextlib

import pytest
import torch

import archdsl.kernels as K
from archdsl.kernels import _dispatch, fused_step
from archdsl.kernels._dispatch import on_input_device

PUBLIC = [getattr(K, n) for n in K.__all__] + [getattr(fused_step, n) for n in fused_step.__all__]


@pytest.mark.parametrize("op", PUBLIC, ids=lambda f: f.__name__)
def test_every_public_op_takes_its_inputs_device(op):
    assert op.__code__ is on_input_device(lambda: None).__code__, f"{op.__name__} is not wrapped"


class _OnCuda1(torch.Tensor):
    """A CPU tensor that reports itself on cuda:1."""

    @property
    def is_cuda(self):
        return True

    def get_device(self):
        return 1

    @property
    def device(self):
        return torch.device("cuda", 1)


def test_the_wrapper_switches_only_where_needed(monkeypatch):
    current, entered = [0], []

    @contextlib.contextmanager
    def device(d):
        entered.append(d)
        before, current[0] = current[0], d.index
        yield
        current[0] = before

    monkeypatch.setitem(_dispatch._DEVICES, "count", 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    monkeypatch.setattr(torch.cuda, "device", device)
    seen = on_input_device(lambda *a, **k: current[0])
    x = torch.zeros(2).as_subclass(_OnCuda1)
    assert seen(x) == 1 and seen(None, 3, x=x) == 1  # the first tensor, positional or keyword
    assert current[0] == 0 and len(entered) == 2  # restored afterwards
    current[0] = 1
    assert seen(x) == 1 and len(entered) == 2  # already current: no switch
    assert seen(torch.zeros(2)) == 1 and len(entered) == 2  # a CPU tensor: none
    current[0] = 0
    monkeypatch.setitem(_dispatch._DEVICES, "count", 1)
    assert seen(x) == 0 and len(entered) == 2  # one CUDA device: nothing to switch


two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")


def _cases(dev):
    """(name, thunk) for one call of each recurrent op on `dev`, the same inputs on any device."""
    g = torch.Generator().manual_seed(0)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dev)
    b, d, L, n, h, p = 2, 64, 40, 16, 4, 16
    u, delta, z = r(b, d, L), r(b, d, L, scale=0.5), r(b, d, L)
    A, Bm, Cm = -r(d, n).abs(), r(b, n, L), r(b, n, L)
    x, dt, A2 = r(b, L, h, p), r(b, L, h, scale=0.5), -r(h).abs()
    B2, C2 = r(b, L, 1, n), r(b, L, 1, n)
    rr, kk, vv, ww, uu = r(b, L, h, p), r(b, L, h, p), r(b, L, h, p), -r(b, L, h, p).exp(), r(h, p)
    xc, wc = r(b, d, L), r(d, 4)
    return [
        ("selective_scan", lambda: K.selective_scan(u, delta, A, Bm, Cm, z=z, delta_softplus=True,
                                                    return_last_state=True)),
        ("ssd_scan", lambda: K.ssd_scan(x, dt, A2, B2, C2, chunk_size=16, dt_softplus=True,
                                        return_final_states=True)),
        ("wkv6", lambda: K.wkv6(rr, kk, vv, ww, uu, output_final_state=True)),
        ("causal_conv1d", lambda: K.causal_conv1d(xc, wc, activation="silu")),
        ("gemv", lambda: K.gemv(r(4, 256).bfloat16(), r(128, 256).bfloat16())),
    ]


@pytest.mark.gpu
@two_gpus
def test_ops_run_on_their_inputs_device():
    with torch.cuda.device(0):
        want = {name: go() for name, go in _cases("cuda:0")}
        got = {name: go() for name, go in _cases("cuda:1")}
    for name in want:
        for w, o in zip(*(t if isinstance(t, tuple) else (t,) for t in (want[name], got[name]))):
            assert o.device == torch.device("cuda", 1), name
            torch.testing.assert_close(o.cpu(), w.cpu(), rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.gpu
@two_gpus
def test_graphed_generation_on_a_second_device():
    """The decode step captured and replayed on cuda:1, and bench timing it there."""
    import archdsl
    from archdsl.bench import bench

    spec = archdsl.parse("2×(mamba2, mamba, attn)", d_model=128, vocab_size=256)
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    outs = []
    with torch.cuda.device(0):
        for dev in ("cuda:0", "cuda:1"):
            model = archdsl.compile(spec, device=dev, dtype=torch.bfloat16, seed=0, cuda_graph=True)
            outs.append(model.generate(ids.to(dev), 16, temperature=0).cpu())
        rows = bench(model, batch=2, seq_len=32, gen=4, cuda_graph=True)
    assert torch.equal(outs[0], outs[1])
    assert all(r.ms > 0 for r in rows)
