"""S4D: FFT convolution == recurrence, parallel == step, prefill + decode, gradients, and the
S4D-LegS initialisation against the HiPPO-LegS matrix written out from its definition."""
import math

import numpy as np
import pytest
import torch

from blockcheck import build, check_block, rel_err
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
    # B̃ = V*·B over the kept half of an orthonormal eigenbasis; the conjugate half carries the rest
    assert math.isclose(float((Bt.abs() ** 2).sum()), float((B ** 2).sum()) / 2, rel_tol=1e-9)


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
