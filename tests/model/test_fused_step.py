"""The fused Mamba decode steps (kernels/fused_step) against the unfused path, float32.

On a CPU the Triton kernels run in Triton's interpreter (TRITON_INTERPRET=1, ARCHDSL_KERNELS=triton);
with a GPU the same checks run the compiled kernels on CUDA tensors, where kernels launched with PDL
really overlap the one before.
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import archdsl  # noqa: E402
from archdsl.kernels.fused_step import mamba2_step_fused, mamba_conv_step, mamba_ssm_step_fused  # noqa: E402
from archdsl.kernels.fused_step import naive  # noqa: E402
from archdsl.kernels.fused_step.triton_fused_step import mamba2_step_triton, mamba_ssm_step_triton  # noqa: E402
from archdsl.model.modules.mamba import fused_step_ok  # noqa: E402
from blockcheck import build  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(autouse=True)
def _triton_backend(monkeypatch):
    monkeypatch.setenv("ARCHDSL_KERNELS", "triton")


def _close(a, b):
    assert torch.allclose(a, b, **TOL), f"max abs err {(a - b).abs().max().item():.3g}"


@settings(max_examples=14, deadline=None)
@given(batch=st.sampled_from([1, 2, 5]), G=st.sampled_from([1, 2, 3]), hpg=st.integers(1, 3), P=st.integers(1, 13),
       N=st.integers(1, 11), K=st.integers(2, 4), gate=st.sampled_from([None, "silu", "norm", "pre_norm"]),
       flags=st.tuples(st.booleans(), st.booleans(), st.booleans()), floor=st.sampled_from([0.0, 0.3]),
       block_p=st.sampled_from([None, 2, 4]), seed=st.integers(0, 2**16))
def test_mamba2_kernel_matches_reference(batch, G, hpg, P, N, K, gate, flags, floor, block_p, seed):
    """block_p: head-dim channels a program (None: the launcher's choice; 2 and 4 leave P's last block part-empty)."""
    g = torch.Generator().manual_seed(seed)
    H = G * hpg
    E, C = H * P, H * P + 2 * G * N
    r = lambda *s: torch.randn(*s, generator=g).to(DEV)  # noqa: E731
    has_d, has_bias, has_cb = flags
    args = dict(conv_weight=r(C, K), conv_bias=r(C) if has_cb else None, A_log=r(H) * 0.5,
                D=r(H) if has_d else None, dt_bias=r(H) if has_bias else None, norm_weight=r(E))
    conv, ssm = r(batch, C, K - 1), r(batch, H, P, N)
    conv2, ssm2 = conv.clone(), ssm.clone()
    for _ in range(2):  # twice: the second step from the states the first left
        zx = r(batch, E + C + H)
        y = mamba2_step_triton(zx, conv, args["conv_weight"], args["conv_bias"], ssm, args["A_log"], args["D"],
                               args["dt_bias"], args["norm_weight"] if gate in ("norm", "pre_norm") else None, gate, 1e-5,
                               floor, block_p=block_p)
        ref = naive.mamba2_step_naive(zx, conv2, args["conv_weight"], args["conv_bias"], ssm2, args["A_log"],
                                      args["D"], args["dt_bias"], args["norm_weight"], gate, 1e-5, floor)
        _close(y, ref)
        _close(ssm, ssm2)
        assert torch.equal(conv, conv2)


@pytest.mark.parametrize("inner,batch,rows", [("none", 2, None), ("unweighted", 2, None), ("weighted", 2, None),
                                              ("none", 5, 2), ("weighted", 5, 4), ("none", 3, 8)])
def test_mamba_kernels_match_reference(inner, batch, rows):
    """rows: batch rows a program of the SSM kernel (the last program's rows past the batch are masked)."""
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g).to(DEV)  # noqa: E731
    E, N, R, K = 37, 5, 3, 3
    xz = r(batch, 2 * E)
    conv = r(batch, E, K - 1)
    conv2 = conv.clone()
    w, b = r(E, K), r(E)
    u = mamba_conv_step(xz[:, :E], conv, w, b)  # a strided view, as in the module
    _close(u, naive.conv_step_naive(xz[:, :E], conv2, w, b))
    assert torch.equal(conv, conv2)
    state = r(batch, E, N)
    state2 = state.clone()
    norms = (r(R), r(N), r(N)) if inner == "weighted" else (None, None, None)
    a = (r(batch, R + 2 * N), r(E, R), r(E, N) * 0.5, r(E), r(E), xz[:, E:], inner, *norms, 1e-6)
    y = mamba_ssm_step_fused(state, u, *a) if rows is None else mamba_ssm_step_triton(state, u, *a, rows=rows)
    _close(y, naive.mamba_ssm_step_naive(state2, u, *a))
    _close(state, state2)



@settings(max_examples=8, deadline=None)
@given(batch=st.integers(1, 9), rows=st.sampled_from([None, 1, 2, 4, 8]), E=st.integers(1, 40), N=st.sampled_from([3, 5]),
       R=st.sampled_from([3, 4]), inner=st.sampled_from(["none", "unweighted", "weighted"]), opts=st.booleans(),
       seed=st.integers(0, 2**16))
def test_mamba_ssm_kernel_any_shape(batch, rows, E, N, R, inner, opts, seed):
    """The SSM step kernel against the reference over random sizes (channel blocks and dt_proj's columns
    part-empty, rows a program past the batch), with and without dt_bias, D and z. N and R from few values:
    each compile-time variant is one more kernel that CI compiles for sm_90 (in its PDL form)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(DEV)  # noqa: E731
    has_dtb = has_d = has_z = opts
    state = r(batch, E, N)
    state2 = state.clone()
    norms = (r(R), r(N), r(N)) if inner == "weighted" else (None, None, None)
    a = (r(batch, E), r(batch, R + 2 * N), r(E, R), r(E, N) * 0.5, r(E) if has_dtb else None, r(E) if has_d else None,
         r(batch, E) if has_z else None, inner, *norms, 1e-6)
    y = mamba_ssm_step_triton(state, *a, rows=rows)
    _close(y, naive.mamba_ssm_step_naive(state2, *a))
    _close(state, state2)

MAMBA2 = {"d_state": 8, "headdim": 8, "chunk_size": 4}


@pytest.mark.parametrize("kind,args", [
    ("mamba2", {"d_state": 5, "headdim": 6}),  # d_model 15: 5 heads of 6, nothing a power of two
    ("mamba2", {"d_state": 8, "headdim": 10, "ngroups": 3, "bias": True}),
    ("mamba2", {"d_state": 7, "headdim": 3, "ngroups": 5, "conv_bias": False, "d_conv": 2}),
    ("mamba2", {"d_state": 8, "headdim": 5, "ngroups": 2, "gated_norm": False, "dt_floor": 0.05}),
    ("mamba", {"d_state": 5}),
    ("mamba", {"d_state": 4, "inner_norms": "weighted", "conv_bias": False, "d_conv": 2}),
    ("mamba", {"d_state": 6, "inner_norms": "unweighted", "bias": True, "dt_rank": 3}),
])
def test_module_fused_step_equals_unfused(kind, args):
    m = build(kind, args, d_model=15).float().to(DEV)
    with torch.no_grad():  # parameters away from their inits, so every term matters
        for p in m.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())).to(DEV))
    batch = 1 if kind == "mamba" else 2  # Mamba at one row: x_proj and out_proj by the Triton GEMV
    x = torch.randn(batch, 4, 15, generator=torch.Generator().manual_seed(1)).to(DEV)
    states = [m.init_state(batch, DEV, torch.float32) for _ in range(2)]
    with torch.no_grad():
        assert fused_step_ok(m, x[:, 0])
        for t in range(x.shape[1]):
            outs = []
            for fuse, s in zip((True, False), states):
                m.fuse = fuse
                outs.append(m.step(x[:, t], s))
            _close(*outs)
            for k in states[0]:
                _close(states[0][k], states[1][k])


def test_mamba2_fused_step_takes_a_decay_of_zero_as_the_scan():
    """A_log = inf (A = -inf) with dt' = 0: the scan and ssd_step floor A at -1e30, and so do the fused step's kernel
    and its twin (0 · inf had made the state NaN for good)."""
    m = build("mamba2", {"d_state": 8, "headdim": 6, "dt_floor": 0.0}, d_model=12).float().to(DEV)
    with torch.no_grad():
        m.A_log[0] = float("inf")
        m.dt_bias[0] = -1e4  # softplus: dt' = 0
    x = torch.randn(2, 3, 12, generator=torch.Generator().manual_seed(1)).to(DEV)
    with torch.no_grad():
        assert fused_step_ok(m, x[:, 0])
        want = m(x)
        for fuse in (True, False):
            m.fuse = fuse
            state = m.init_state(2, DEV, torch.float32)
            got = torch.stack([m.step(x[:, t], state) for t in range(3)], 1)
            assert torch.isfinite(got).all() and torch.isfinite(state["ssm"]).all()
            _close(got, want)


@pytest.mark.parametrize("kind,args", [("mamba", {"d_state": 5}), ("mamba2", {"d_state": 8, "headdim": 6})])
def test_module_bf16_rows_fused_equals_unfused(kind, args):
    """bf16 at 3 rows: x_proj (Mamba) and out_proj by the split-K GEMM; the same as the unfused step up to
    bf16 rounding."""
    m = build(kind, args, d_model=24).to(DEV, torch.bfloat16)
    x = torch.randn(3, 3, 24, generator=torch.Generator().manual_seed(1)).to(DEV, torch.bfloat16)
    states = [m.init_state(3, DEV, torch.bfloat16) for _ in range(2)]
    with torch.no_grad():
        for t in range(x.shape[1]):
            outs = []
            for fuse, s in zip((True, False), states):
                m.fuse = fuse
                outs.append(m.step(x[:, t], s).float())
            assert ((outs[0] - outs[1]).norm() / outs[1].norm()).item() < 2e-2


def test_model_decodes_same_tokens_fused_or_not():
    blocks = {"mamba2": {"d_state": 6, "headdim": 6, "ngroups": 2, "chunk_size": 4}, "mamba": {"d_state": 4}}
    spec = archdsl.parse("2×mamba2, mamba", d_model=24, vocab_size=41, blocks=blocks)
    model = archdsl.compile(spec, device=DEV, seed=0)
    ids = torch.randint(0, 41, (2, 3), generator=torch.Generator().manual_seed(0)).to(DEV)
    fused = model.set_fuse(True).generate(ids, 5, temperature=0)
    plain = model.set_fuse(False).generate(ids, 5, temperature=0)
    assert torch.equal(fused, plain)
    cache_a, cache_b = model.init_cache(2), model.init_cache(2)
    with torch.no_grad():
        model(ids, cache_a), model(ids, cache_b)
        a = model.set_fuse(True).step(fused[:, 3], cache_a)
        b = model.set_fuse(False).step(fused[:, 3], cache_b)
    _close(a, b)


def test_fused_step_waits_for_no_grad():
    """With autograd on, the step keeps the differentiable unfused path."""
    m = build("mamba2", MAMBA2).float().to(DEV)
    x = torch.randn(1, 16, device=DEV, requires_grad=True)
    m.step(x, m.init_state(1, DEV, torch.float32)).sum().backward()
    assert x.grad is not None


def test_bad_input_names_the_argument():
    ssm, conv = torch.zeros(1, 4, 3, 5), torch.zeros(1, 12 + 10, 3)
    with pytest.raises(ValueError, match="zxbcdt"):
        mamba2_step_fused(torch.zeros(1, 7), conv, torch.zeros(22, 4), None, ssm, torch.zeros(4))
    with pytest.raises(ValueError, match="conv_state"):
        mamba2_step_fused(torch.zeros(1, 40), torch.zeros(1, 13, 3), torch.zeros(13, 4), None, ssm, torch.zeros(4))
    with pytest.raises(ValueError, match="gate"):
        mamba2_step_fused(torch.zeros(1, 38), conv, torch.zeros(22, 4), None, ssm, torch.zeros(4), gate="relu")
    with pytest.raises(ValueError, match="x_dbl"):
        mamba_ssm_step_fused(torch.zeros(1, 4, 2), torch.zeros(1, 4), torch.zeros(1, 3), torch.zeros(4, 2),
                             torch.zeros(4, 2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("layout", ["2×mamba2", "2×mamba"])
def test_gpu_full_width_bf16_fused_equals_unfused(layout):
    """mamba2-1.3b / mamba-1.4b widths (d_model 2048), bf16: 256 decoded tokens, fused and unfused
    steps give the same logits up to bf16 rounding (both fed the unfused path's greedy tokens)."""
    spec = archdsl.parse(layout, d_model=2048, vocab_size=1024)
    model = archdsl.compile(spec, device="cuda", dtype=torch.bfloat16, seed=0)
    ids = torch.randint(0, 1024, (2, 64), generator=torch.Generator().manual_seed(0)).cuda()
    caches = [model.init_cache(2), model.init_cache(2)]
    with torch.no_grad():
        tok = model(ids, caches[0])[:, -1].argmax(-1)
        model(ids, caches[1])
        worst = 0.0
        for _ in range(256):
            a = model.set_fuse(True).step(tok, caches[0]).float()
            b = model.set_fuse(False).step(tok, caches[1]).float()
            worst = max(worst, ((a - b).norm() / b.norm()).item())
            tok = b.argmax(-1)
    assert worst < 2e-2, f"relative logit difference {worst:.2e}"


def _state_close(state, ref):
    """A float32 state within float32 rounding of the float32 reference `ref`; a bf16 one is `ref` rounded
    (round to nearest: 99% of the elements exactly, the rest where the two float32 values round apart)."""
    if state.dtype == torch.float32:
        err = ((state - ref).norm() / ref.norm()).item()
        assert err < 1e-5, f"state {err:.2e} of the norm off"
    else:
        same = (state == ref.to(state.dtype)).float().mean().item()
        assert same > 0.99, f"the bf16 state is the reference rounded at {same:.2%} of the elements"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("gate", ["norm", "pre_norm", "silu"])
@pytest.mark.parametrize("pdl", [False, True])
@pytest.mark.parametrize("batch", [2, 16])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_gpu_mamba2_kernel_full_size(gate, pdl, batch, state_dtype):
    """mamba2-1.3b's step (H 64, P 64, N 128) against the float32
    reference from the same bf16 inputs, several launches in a row, with PDL and without: the states must
    agree to float32 rounding (a race between the kernels shows as a state error of 1e-3 and more).
    A bf16 state is the reference's float32 state rounded, and the reference continues from it."""
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, device="cuda")  # noqa: E731
    H, P, N, G, K = 64, 64, 128, 1, 4
    E, C = H * P, H * P + 2 * G * N
    w = dict(conv_weight=(r(C, K) * 0.5).bfloat16(), conv_bias=r(C).bfloat16(), A_log=r(H) * 0.5, D=r(H),
             dt_bias=r(H) * 0.1, norm_weight=r(E).bfloat16())
    conv, ssm = r(batch, C, K - 1).bfloat16(), r(batch, H, P, N).to(state_dtype)
    conv_ref, ssm_ref = conv.float(), ssm.float().clone()  # clone: float() of float32 is the tensor itself
    f = {k: v.float() for k, v in w.items()}
    for _ in range(4):
        zx = r(batch, E + C + H).bfloat16()
        y = mamba2_step_triton(zx, conv, w["conv_weight"], w["conv_bias"], ssm, w["A_log"], w["D"], w["dt_bias"],
                               w["norm_weight"] if gate != "silu" else None, gate, 1e-5, 0.0, pdl=pdl)
        ref = naive.mamba2_step_naive(zx.float(), conv_ref, f["conv_weight"], f["conv_bias"], ssm_ref, f["A_log"],
                                      f["D"], f["dt_bias"], f["norm_weight"], gate, 1e-5, 0.0)
        _state_close(ssm, ssm_ref)
        assert torch.equal(conv.float(), conv_ref.bfloat16().float())
        tol = 1e-5 if gate == "pre_norm" else 1e-2  # bf16 outputs for the others
        assert ((y.float() - ref).norm() / ref.norm()).item() < tol
        conv_ref = conv.float()  # the reference continues from the kernel's bf16 conv state (and bf16 SSM state)
        if state_dtype != torch.float32:
            ssm_ref = ssm.float()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("batch,rows", [(1, None), (17, None), (17, 1), (17, 16)])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_gpu_mamba_ssm_kernel_full_size(batch, rows, state_dtype):
    """mamba-2.8b's SSM step (E 5120, N 16, dt_rank 160), bf16 inputs, several launches in a row, against
    the float32 reference; 17 rows leave the last program of every row count part-empty. A bf16 state is
    the reference's float32 state rounded, and the reference continues from it."""
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, device="cuda")  # noqa: E731
    E, N, R = 5120, 16, 160
    W, A_log, dt_bias, D = (r(E, R) * 0.05).bfloat16(), r(E, N) * 0.5, r(E), r(E)
    state = (r(batch, E, N) * 0.1).to(state_dtype)
    state_ref = state.float().clone()
    for _ in range(4):
        u, x_dbl, z = r(batch, E).bfloat16(), r(batch, R + 2 * N).bfloat16(), r(batch, E).bfloat16()
        y = mamba_ssm_step_triton(state, u, x_dbl, W, A_log, dt_bias, D, z, "none", None, None, None, 1e-6,
                                  rows=rows)
        ref = naive.mamba_ssm_step_naive(state_ref, u.float(), x_dbl.float(), W.float(), A_log, dt_bias, D,
                                         z.float(), "none", None, None, None, 1e-6)
        _state_close(state, state_ref)
        assert ((y.float() - ref).norm() / ref.norm()).item() < 1e-2
        if state_dtype != torch.float32:
            state_ref = state.float()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("layout", ["4×mamba2", "4×mamba"])
def test_gpu_pdl_decode_is_bitwise_the_same(layout):
    """mamba2-1.3b / mamba-1.4b width, bf16, 4 layers, one row: greedy decoding replayed from CUDA graphs
    with the kernels launched under programmatic dependent launch ("pdl") and without, and eagerly with
    it, give the same tokens and logits bit for bit (PDL changes when a kernel starts, never what it
    computes)."""
    from archdsl.model.fusions import FUSIONS

    spec = archdsl.parse(layout, d_model=2048, vocab_size=1024)
    ids = torch.randint(0, 1024, (1, 32), generator=torch.Generator().manual_seed(0)).cuda()
    runs = []
    for graph, fuse in ((True, True), (True, set(FUSIONS) - {"pdl"}), (False, True)):
        model = archdsl.compile(spec, device="cuda", dtype=torch.bfloat16, seed=0, cuda_graph=graph, fuse=fuse)
        runs.append(model.generate(ids, 200, temperature=0))
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
