"""Each fusion (archdsl.model.fusions.FUSIONS), alone or with any others, computes the same function
as none: the parallel forward and the token-by-token decode, over a model holding every fusable
module (mamba, mamba2 with and without the gated norm, attention, an MLP). float64 on the torch
path; one float32 case through the Triton kernels (the interpreter on a CPU), where "add_norm"
and "step" run their own kernels too.
"""
from __future__ import annotations

import itertools
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import archdsl  # noqa: E402
from archdsl.errors import ArchDSLError  # noqa: E402
from archdsl.model.fusions import FUSIONS, resolve_fuse  # noqa: E402
from archdsl.model.modules.mamba import fused_step_ok  # noqa: E402

BLOCKS = {
    "mamba": {"d_state": 4},
    "mamba2": {"d_state": 6, "headdim": 8, "ngroups": 2, "chunk_size": 4},
    "ungated": {"kind": "mamba2", "d_state": 5, "headdim": 4, "gated_norm": False, "chunk_size": 4},
    "attn": {"heads": 4, "kv_heads": 2},
    "mlp": {"hidden": 24},
}
LAYOUT = "mamba, mamba2+mlp, ungated, attn+mlp"
SUBSETS = [frozenset(c) for r in range(len(FUSIONS) + 1) for c in itertools.combinations(FUSIONS, r)]
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _model(dtype, device="cpu"):
    """The model, its parameters moved off their initial values (D = 1, zero biases) so that
    every term of every epilogue matters."""
    spec = archdsl.parse(LAYOUT, d_model=16, vocab_size=37, blocks=BLOCKS)
    model = archdsl.compile(spec, dtype=dtype, device=device, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p))
    return model


def _run(model, fuse, ids):
    """logits of the parallel pass [B, L, V] and of decoding token by token [B, L, V]."""
    model.set_fuse(fuse)
    with torch.no_grad():
        full = model(ids)
        cache = model.init_cache(ids.shape[0])
        steps = torch.stack([model.step(ids[:, t], cache) for t in range(ids.shape[1])], dim=1)
    return full, steps


def test_every_subset_is_the_same_function():
    model = _model(torch.float64)
    ids = torch.randint(0, 37, (2, 7), generator=torch.Generator().manual_seed(0))
    ref_full, ref_steps = _run(model, False, ids)
    assert torch.allclose(ref_steps, ref_full, rtol=1e-9, atol=1e-12)
    for names in SUBSETS:
        full, steps = _run(model, names, ids)
        assert model.fusions == names, f"{sorted(names)}: model reports {sorted(model.fusions)}"
        assert torch.allclose(full, ref_full, rtol=1e-10, atol=1e-12), f"parallel, fuse={sorted(names)}"
        assert torch.allclose(steps, ref_steps, rtol=1e-10, atol=1e-12), f"step, fuse={sorted(names)}"


@pytest.mark.parametrize("triton", [False, True], ids=["torch", "triton"])
def test_epilogue_gradients_match(triton, monkeypatch):
    """Training goes through the epilogue too: with or without it, the same gradients (float64 on
    the torch path; float32 through the Triton scans' backward kernels)."""
    if triton:
        monkeypatch.setenv("ARCHDSL_KERNELS", "triton")
    model = _model(torch.float32 if triton else torch.float64, DEV if triton else "cpu").train()
    ids = torch.randint(0, 37, (2, 5), generator=torch.Generator().manual_seed(2)).to(model.device)
    grads = []
    for fuse in ({"epilogue"}, set()):
        model.set_fuse(fuse).zero_grad()
        model(ids).pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    tol = dict(rtol=1e-4, atol=1e-6) if triton else dict(rtol=1e-9, atol=1e-12)
    for n, g in grads[0].items():
        assert torch.allclose(g, grads[1][n], **tol), n


@pytest.mark.parametrize("triton", [False, True], ids=["torch", "triton"])
def test_recompute_gives_the_same_gradients(triton, monkeypatch):
    """"recompute" saves the Mamba layer's conv output and delta as recipes where ops save them (both
    through the Triton kernels; u alone on the torch path, whose scan saves delta's softplus), and each
    Mamba-2 layer's conv output through the Triton kernels (whose chunked scan saves x, B and C as slices
    of it; the torch path's chunks are copies), each rebuilt once in the backward however many nodes read
    it, and the gradients are those of keeping the tensors: bit for bit in float64 on the torch path and
    in float32 through the interpreted Triton kernels; on a GPU, whose scan backward sums dB and dC with
    atomics, to float32 rounding."""
    from archdsl.model.modules import recompute

    if triton:
        monkeypatch.setenv("ARCHDSL_KERNELS", "triton")
    model = _model(torch.float32 if triton else torch.float64, DEV if triton else "cpu").train()
    ids = torch.randint(0, 37, (2, 5), generator=torch.Generator().manual_seed(4)).to(model.device)
    packed, built, reads = set(), [], []
    real_pack, real_get = recompute.Recompute._pack, recompute._Lazy.get

    def pack(self, t):
        out = real_pack(self, t)
        if isinstance(out, (recompute._Lazy, recompute._View)):
            packed.add(id(getattr(out, "lazy", out)))
        return out

    monkeypatch.setattr(recompute.Recompute, "_pack", pack)
    monkeypatch.setattr(recompute._Lazy, "get", lambda self: (reads.append(1), built.append(self.value is None),
                                                              real_get(self))[2])
    grads = []
    for fuse in (set(FUSIONS), set(FUSIONS) - {"recompute"}):
        model.set_fuse(fuse).zero_grad()
        model(ids).pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert len(packed) == (2 + 2 if triton else 1) and sum(built) == len(packed) and len(reads) > len(packed)
    for n, g in grads[0].items():
        if model.device.type == "cuda":
            torch.testing.assert_close(g, grads[1][n], rtol=1e-4, atol=1e-6, msg=n)
        else:
            assert torch.equal(g, grads[1][n]), n
    with torch.no_grad():  # nothing saved, no recipes
        model.set_fuse(True)(ids)
    assert len(packed) == (2 + 2 if triton else 1)


def test_recompute_keeps_views_of_a_kept_tensor():
    """A view of a kept tensor saved by an op (F.linear saves its 3-d input as [B·L, F]) is packed as the
    recipe and its place in the result; the gradients are those of keeping it; a tensor that is itself a
    view of something larger is saved as it is."""
    from archdsl.model.modules import recompute

    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(6, 4, dtype=torch.float64, generator=g, requires_grad=True)
    seen = []

    def run(keep: bool):
        rc = recompute.Recompute()
        real = rc._pack
        rc._pack = lambda t: (lambda out: (seen.append(type(out).__name__), out)[1])(real(t))
        rc._hooks = torch.autograd.graph.saved_tensors_hooks(rc._pack, rc._unpack)
        with rc:
            t = torch.sin(x)
            if keep:
                xd = x.detach()
                rc.keep(t, lambda: torch.sin(xd))
                rc.keep(t[:, :2], lambda: torch.sin(xd)[:, :2])  # a view of more: saved as it is
            y = torch.nn.functional.linear(t, w)
        return torch.autograd.grad(y.pow(2).sum(), [x, w])

    want = run(False)
    seen.clear()
    got = run(True)
    assert "_View" in seen  # linear saved t as [6, 4]
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_compile_takes_the_same_values():
    spec = archdsl.parse(LAYOUT, d_model=16, vocab_size=37, blocks=BLOCKS)
    assert archdsl.compile(spec).fusions == frozenset(FUSIONS)
    assert archdsl.compile(spec, fuse=False).fusions == frozenset()
    assert archdsl.compile(spec, fuse={"qkv", "epilogue"}).fusions == {"qkv", "epilogue"}
    assert archdsl.compile(spec, fuse="step, add_norm").fusions == {"step", "add_norm"}
    only_mamba = archdsl.compile(archdsl.parse("mamba", d_model=16, vocab_size=37, blocks=BLOCKS), fuse={"qkv"})
    assert only_mamba.fusions == frozenset()  # no attention: nothing to switch on
    mixer = only_mamba.layers[0].mixer
    mixer.fuse = True  # a module alone takes the same values, restricted to its own fusions
    assert mixer.fused == {"epilogue", "step", "norm_gemv", "pdl", "recompute"} and mixer.fuse  # no qkv, add_norm
    mixer.fuse = False
    assert mixer.fused == frozenset() and not mixer.fuse


@pytest.mark.parametrize("bad", [{"qvk"}, ["qkv", "gemm"], "addnorm", 1, None, [("qkv",)]])
def test_bad_fusion_names_are_refused(bad):
    spec = archdsl.parse("attn", d_model=16, vocab_size=37, blocks=BLOCKS)
    with pytest.raises(ArchDSLError) as e:
        archdsl.compile(spec, fuse=bad)
    assert "add_norm, qkv, epilogue, step, norm_gemv, pdl, recompute" in str(e.value)
    model = archdsl.compile(spec)
    with pytest.raises(ArchDSLError):
        model.set_fuse(bad)
    assert model.fusions == {"qkv", "add_norm"}  # a refused value changes nothing


def test_resolve_fuse():
    assert resolve_fuse(True) == frozenset(FUSIONS) and resolve_fuse(False) == frozenset()
    assert resolve_fuse(("qkv", "qkv")) == {"qkv"} and resolve_fuse("") == frozenset()
    assert all(isinstance(d, str) and d for d in FUSIONS.values())


def test_triton_paths_all_on_equal_all_off(monkeypatch):
    """Through the Triton kernels (the interpreter on a CPU): the add+RMSNorm kernel, the fused
    decode steps and the scan epilogues against all of them off, float32; decoding one row also folds
    each layer's add + RMSNorm into in_proj's GEMV ("norm_gemv", up to gemv_rows() rows)."""
    monkeypatch.setenv("ARCHDSL_KERNELS", "triton")
    model = _model(torch.float32, DEV)
    ids = torch.randint(0, 37, (2, 4), generator=torch.Generator().manual_seed(3)).to(DEV)
    off_full, off_steps = _run(model, False, ids)
    on_full, on_steps = _run(model, True, ids)
    _, one_steps = _run(model, True, ids[:1])
    x, x1 = torch.zeros(2, 16, device=DEV), torch.zeros(1, 16, device=DEV)
    with torch.no_grad():  # and the fused steps did run
        assert all(fused_step_ok(layer.mixer, x) for layer in model.layers[:3])
        assert all(layer.mixer.folds_norm(layer.norm, x1) for layer in model.layers[:3])  # "norm_gemv"
        assert not any(layer.mixer.folds_norm(layer.norm, x) for layer in model.layers[:3])  # past gemv_rows()
    for a, b in ((on_full, off_full), (on_steps, off_steps), (on_steps, on_full), (one_steps, off_steps[:1])):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), f"max abs err {(a - b).abs().max().item():.3g}"
