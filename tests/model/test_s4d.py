"""S4D: FFT convolution == recurrence, parallel == step, prefill + decode, gradients, the S4D-LegS
initialisation against the HiPPO-LegS matrix written out from its definition, and the whole block against
the formulas of state-spaces/s4's standalone s4d.py (S4DKernel + S4D.forward), recomputed here in float64."""
import math

import numpy as np
import pytest
import torch

from blockcheck import build, check_block, check_reference, rel_err
from archdsl.model.modules.s4d import hippo_legs, s4d_legs, s4d_lin


@pytest.mark.parametrize("args", [{"d_state": 4}, {"d_state": 8, "glu": False}, {"d_state": 2, "dt_min": 0.01, "dt_max": 0.5}])
@pytest.mark.parametrize("length,split", [(1, 1), (7, 3), (23, 10)])
def test_parallel_equals_recurrent(args, length, split):
    check_block(build("s4d", args), length=length, split=split)


def test_kernel_is_the_impulse_response():
    """K from the Vandermonde product == the recurrence driven by a unit impulse."""
    m = build("s4d", {"d_state": 8}, d_model=6)
    L = 37
    with torch.no_grad():
        K = m.kernel(L, torch.float64)
        dtA, Bbar, C = m._discrete(torch.float64)
        s = torch.zeros_like(C)
        resp = []
        for t in range(L):
            s = torch.exp(dtA) * s + Bbar * (1.0 if t == 0 else 0.0)
            resp.append(2 * (C * s).sum(-1).real)
        assert rel_err(K, torch.stack(resp, dim=-1)) < 1e-12


def test_fft_convolution_equals_direct_sum():
    m = build("s4d", {"d_state": 4}, d_model=5)
    x = torch.randn(2, 29, 5, dtype=torch.float64)
    with torch.no_grad():
        K = m.kernel(29, torch.float64)
        u = x.transpose(1, 2)
        y = torch.stack([(K[:, :t + 1].flip(-1) * u[:, :, :t + 1]).sum(-1) for t in range(29)], dim=-1)
        y = torch.nn.functional.gelu(y + u * m.D[:, None])
        ref = torch.nn.functional.glu(m.output_linear(y), dim=-2).transpose(1, 2)
        assert rel_err(m(x), ref) < 1e-12


def test_prefill_leaves_the_stepped_state():
    m = build("s4d", {"d_state": 6}, d_model=4)
    x = torch.randn(3, 11, 4, dtype=torch.float64)
    with torch.no_grad():
        a, b = m.init_state(3, x.device, x.dtype), m.init_state(3, x.device, x.dtype)
        m(x[:, :4], a)
        m(x[:, 4:], a)  # a prefill continued from a non-zero state
        for t in range(11):
            m.step(x[:, t], b)
        assert a["s"].dtype == torch.complex128
        assert torch.allclose(a["s"], b["s"], rtol=1e-10, atol=1e-13)


def _legs_by_definition(N):
    """HiPPO-LegS (Gu et al. 2020, eq. for LegS): A_nk = -√(2n+1)√(2k+1) if n > k, -(n+1) if n = k,
    0 if n < k; B_n = √(2n+1); rank-1 correction P_n = √(n + 1/2)."""
    A = np.zeros((N, N))
    for n in range(N):
        for k in range(N):
            A[n, k] = -math.sqrt(2 * n + 1) * math.sqrt(2 * k + 1) if n > k else (-(n + 1) if n == k else 0.0)
    B = np.array([math.sqrt(2 * n + 1) for n in range(N)])
    P = np.array([math.sqrt(n + 0.5) for n in range(N)])
    return A, B, P


@pytest.mark.parametrize("N", [2, 8, 64])
def test_legs_init_matches_its_definition(N):
    A, B, P = _legs_by_definition(N)
    A_t, B_t = hippo_legs(N)
    assert np.allclose(A_t.numpy(), A) and np.allclose(B_t.numpy(), B)
    normal = A + np.outer(P, P)
    assert np.allclose(normal + normal.T, -np.eye(N))  # -½·I + skew-symmetric
    eig = np.linalg.eigvals(normal)
    want = np.sort(eig[eig.imag > 0].imag)
    lam, Bt = s4d_legs(N)
    assert lam.shape == (N // 2,)
    assert np.allclose(lam.real.numpy(), -0.5)
    assert np.allclose(lam.imag.numpy(), want, rtol=1e-10, atol=1e-10)
    # B̃ = V*·(B/2) over the kept half of an orthonormal eigenbasis; the conjugate half carries the rest
    assert math.isclose(float((Bt.abs() ** 2).sum()), float(((B / 2) ** 2).sum()) / 2, rel_tol=1e-9)


def test_module_uses_legs_init():
    m = build("s4d", {"d_state": 16, "dt_min": 0.002, "dt_max": 0.05}, d_model=8)
    lam, _ = s4d_legs(16)
    assert torch.allclose(-torch.exp(m.log_A_real), lam.real.expand(8, -1))
    assert torch.allclose(m.A_imag, lam.imag.expand(8, -1))
    dt = torch.exp(m.log_dt)
    assert (dt >= 0.002 - 1e-12).all() and (dt <= 0.05 + 1e-12).all()
    assert m.C.shape == (8, 8, 2) and sum(p.numel() for p in m.parameters()) == m.cfg.params()
    assert m.output_linear[0].weight.shape == (16, 8, 1)


def test_lin_init_formula():
    a = s4d_lin(8)
    assert torch.allclose(a, torch.complex(torch.full((4,), -0.5, dtype=torch.float64),
                                           math.pi * torch.arange(4, dtype=torch.float64)))


def _s4d_reference(m, x):
    """state-spaces/s4 `models/s4/s4d.py`, from the raw parameters: dt = exp(log_dt), A = -exp(log_A_real) + i·A_imag,
    K_l = 2·Re(Σ_n C_n (exp(dt A_n) - 1)/A_n · exp(dt A_n l)) (every power its own exp), y = irfft(rfft(u, 2L)·rfft(K, 2L))
    [:L] + D·u, GELU, then Conv1d(d, 2d, 1) + GLU over channels (Conv1d(d, d, 1) without glu)."""
    u = x.transpose(1, 2)                                             # [B, d, L]
    L = u.shape[-1]
    dt = torch.exp(m.log_dt)
    A = -torch.exp(m.log_A_real) + 1j * m.A_imag
    C = torch.complex(m.C[..., 0], m.C[..., 1])
    dtA = A * dt[:, None]
    powers = torch.exp(dtA[..., None] * torch.arange(L, dtype=torch.float64))      # [d, N/2, L]
    K = 2 * torch.einsum("hn,hnl->hl", C * (torch.exp(dtA) - 1) / A, powers).real
    y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(K, n=2 * L), n=2 * L)[..., :L]
    y = torch.nn.functional.gelu(y + u * m.D[:, None])
    conv = m.output_linear[0]
    z = torch.einsum("oi,bil->bol", conv.weight[..., 0], y) + conv.bias[:, None]
    if m.cfg.glu:
        a, g = z.chunk(2, dim=1)
        z = a * torch.sigmoid(g)
    return z.transpose(1, 2)


@pytest.mark.parametrize("args", [{"d_state": 8}, {"d_state": 6, "init": "lin"}, {"d_state": 4, "glu": False},
                                  {"d_state": 10, "dt_min": 0.01, "dt_max": 0.5}])
def test_matches_s4d_reference(args):
    m = build("s4d", args, d_model=5)
    x = torch.randn(2, 41, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ref = _s4d_reference(m, x)
    check_reference(m, x, ref, 1e-10)


def test_lin_module_init_is_s4d_py():
    """init=lin is S4DKernel's init: log_A_real = log ½, A_imag = π·n on every channel, C ~ 𝒩_ℂ(0, 1) (E|C|² = 1),
    log_dt uniform in [log dt_min, log dt_max], D ~ 𝒩(0, 1)."""
    d, N = 64, 64
    m = build("s4d", {"d_state": N, "init": "lin", "dt_min": 0.002, "dt_max": 0.2}, d_model=d)
    n = torch.arange(N // 2, dtype=torch.float64)
    assert torch.allclose(m.log_A_real, torch.full((d, N // 2), math.log(0.5), dtype=torch.float64))
    assert torch.allclose(m.A_imag, (math.pi * n).expand(d, -1))
    power = (m.C ** 2).sum(-1)                                        # |C|², 2048 draws of mean 1
    assert abs(power.mean().item() - 1) < 0.1
    assert abs(m.C[..., 0].var().item() - 0.5) < 0.06 and abs(m.C[..., 1].var().item() - 0.5) < 0.06
    lo, hi = math.log(0.002), math.log(0.2)
    assert (m.log_dt >= lo - 1e-12).all() and (m.log_dt <= hi + 1e-12).all()
    assert m.log_dt.max() - m.log_dt.min() > 0.8 * (hi - lo)          # spread over the range, not a point
    assert abs(m.D.mean().item()) < 0.5 and 0.5 < m.D.var().item() < 1.6


@pytest.mark.parametrize("init", ["inv", "real"])
def test_inv_and_real_inits_are_state_spaces_dplr(init):
    """S4D-Inv: A_n = -½ + i·(N/π)(N/(2n+1) - 1); S4D-Real: A_n = -(n+1); n < N/2 on every channel (state-spaces'
    dplr init), and the block runs: its parallel form equals its steps."""
    d, N = 8, 16
    m = build("s4d", {"d_state": N, "init": init}, d_model=d)
    n = torch.arange(N // 2, dtype=torch.float64)
    real, imag = (0.5 + 0 * n, N / math.pi * (N / (2 * n + 1) - 1)) if init == "inv" else (n + 1, 0 * n)
    assert torch.allclose(torch.exp(m.log_A_real), real.expand(d, -1))
    assert torch.allclose(m.A_imag, imag.expand(d, -1))
    check_block(m, length=7, split=3, batch=2)


def test_legs_module_c_is_normal_times_b():
    """init=legs: C = 𝒩_ℂ(0, 1)·B̃ with B̃ = V*·(B/2), unclipped, since this block's B is fixed to 1:
    E|C_n|²/|B̃_n|² = 1 (an earlier init clipped B̃'s imaginary part to ±2, a rescaling of 0.1-2× a mode that
    depended on the phases eigh happened to give the eigenvectors)."""
    d, N = 64, 64
    m = build("s4d", {"d_state": N}, d_model=d)
    _, Bt = s4d_legs(N)
    ratio = (m.C ** 2).sum(-1) / Bt.abs() ** 2
    assert abs(ratio.mean().item() - 1) < 0.1


@pytest.mark.parametrize("N", [8, 64])
def test_legs_matches_state_spaces_nplr(N):
    """state-spaces' hippo.nplr("legs") diagonalises A + PPᵀ with eigh(-i·(A + PPᵀ)), keeps the N/2 eigenvalues of
    negative imaginary part and B̃ = V*B over their eigenvectors; its S4D-LegS (dplr, B_init="legs") then halves
    B̃. We keep the conjugate half (+iλ; the kernel 2·Re(·) is the same), so: the same λ up to sign, and the same
    |B̃| per mode; C being circular 𝒩_ℂ(0, 1), |B̃| is all the kernel's distribution depends on."""
    A, B, P = _legs_by_definition(N)
    AP = torch.tensor(A + np.outer(P, P))
    w_im, V = torch.linalg.eigh(AP * -1j)
    order = torch.argsort(w_im)
    w_im, V = w_im[order][:N // 2], V[:, order][:, :N // 2]
    B_ref = V.conj().T @ torch.tensor(B).to(V.dtype)
    lam, Bt = s4d_legs(N)
    assert torch.allclose(lam.imag, -w_im.flip(0), rtol=1e-10, atol=1e-10)
    assert torch.allclose(Bt.abs(), (B_ref.flip(0) / 2).abs(), rtol=1e-9, atol=1e-12)


def test_ssm_parameters_stay_float32_in_a_16_bit_model():
    """A bf16 model kept log_dt, C, A_imag in bf16: the frequencies and dt rounded, its logits were 7% off the
    float64 model's at L 300 (0.7% with the same weights in float32). They stay float32, with their values, under
    .to(bf16) and .half(); float64 casts them; a move keeps them; their gradients follow; the output layer casts."""
    import archdsl
    from archdsl.model.modules.s4d import S4D

    spec = archdsl.parse("s4d, s4d", d_model=16, vocab_size=37)
    full = archdsl.compile(spec, dtype=torch.float64, seed=1)
    ids = torch.randint(0, 37, (2, 300), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = full(ids)
    f32 = archdsl.compile(spec, seed=1)
    f32(ids[:, :8]).sum().backward()
    for dtype in (torch.bfloat16, torch.float16):
        model = archdsl.compile(spec, seed=1)
        model(ids[:, :8]).sum().backward()
        model = model.to(dtype)
        for name, p in model.named_parameters():
            kept = name.rsplit(".", 1)[-1] in S4D.FLOAT32
            assert p.dtype == (torch.float32 if kept else dtype), name
            assert p.grad.dtype == p.dtype, name
            if kept:
                assert torch.equal(p, f32.get_parameter(name)), name
        with torch.no_grad():
            assert rel_err(model(ids).double(), want) < (2e-2 if dtype == torch.bfloat16 else 3e-3)
    assert {p.dtype for p in model.double().parameters()} == {torch.float64}
