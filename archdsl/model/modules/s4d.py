"""S4D: a diagonal linear time-invariant SSM per channel, the standalone block of state-spaces/s4
(`models/s4/s4d.py`; Gu, Gupta, Goel, Ré 2022, "On the Parameterization and Initialization of
Diagonal State Space Models").

Per channel h and complex mode n (N/2 modes; their conjugates make the real state size N):
    A = -exp(log_A_real) + i·A_imag,  dt = exp(log_dt),  Ā = exp(dt·A),  B̄ = (Ā - 1)/A  (ZOH, B = 1)
    recurrence (decoding):  s_t = Ā·s_{t-1} + B̄·u_t,   y_t = 2·Re(Σ_n C_n s_t,n) + D·u_t
    convolution (training): y = K * u + D·u,  K_l = 2·Re(Σ_n C_n B̄_n Ā_n^l), by FFT of length 2L
    then GELU and the output layer: Conv1d(d, 2d, 1) + GLU (glu=True), else Conv1d(d, d, 1).

Initialisation — S4D-LegS (the paper's §4 / Table 4; state-spaces `hippo.nplr("legs")`): A is the
diagonal of the normal part of HiPPO-LegS. HiPPO-LegS (Gu et al. 2020) has
    A_nk = -√(2n+1)·√(2k+1) (n > k),  -(n+1) (n = k),  0 (n < k);   B_n = √(2n+1)
and A + PPᵀ with P_n = √(n + 1/2) is -½·I + S, S skew-symmetric. So its eigenvalues are
-½ + iλ; we keep the N/2 with λ > 0 (the others are their conjugates) and project the halved B onto
the eigenvectors, B̃ = V*·(B/2), as state-spaces' S4D-LegS does (`dplr(B_init="legs")`: nplr's V*·B, then
`B *= 0.5`; its `legsd` transition halves B the same way). This block has no separate B (s4d.py fixes
B = 1), so B̃ is folded into C's init: C = 𝒩_ℂ(0, 1)·B̃.
S4D-Lin (A_n = -½ + iπn, C = 𝒩_ℂ(0, 1), the s4d.py default) is `init="lin"`; S4D-Inv
(A_n = -½ + i·(N/π)(N/(2n+1) - 1), the approximation of S4D-LegS's eigenvalues) `init="inv"` and S4D-Real (A_n = -(n+1))
`init="real"`, as state-spaces' dplr init, with C = 𝒩_ℂ(0, 1).
Decode state: "s" [B, d, N/2] complex64 (complex128 for float64 models).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .precision import keep_float32
from .state import writable


def _blocks(dtA, start: int, L: int):
    """Powers Ā^l for l = start + J·k + j (0 <= j < J, 0 <= k < K, J·K >= L) as two factors:
    base [d, N/2, J] = Ā^j and stride [d, N/2, K] = Ā^(start + J·k), each an exp of its own
    exponent. J ≈ √L: J + K complex exps per mode rather than L (a complex exp costs several
    multiplies), and the sums over l or n become batched matrix products."""
    J = 1 << max(0, round(math.log2(math.sqrt(max(1, L)))))
    K = -(-L // J)
    real = dtA.real.dtype
    base = torch.exp(dtA[..., None] * torch.arange(J, device=dtA.device, dtype=real))
    stride = torch.exp(dtA[..., None] * (start + J * torch.arange(K, device=dtA.device, dtype=real)))
    return base, stride, J, K


def vandermonde(coef, dtA, L: int, start: int = 0) -> torch.Tensor:
    """2·Re(Σ_n coef_n · Ā_n^l) for l in [start, start + L): coef [..., d, N/2] complex, dtA [d, N/2]
    → [..., d, L] real. Ā^(start + Jk + j) = stride_k · base_j, so out[.., k, j] = (coef ∘ stride)ᵀ_k · base_j."""
    base, stride, J, K = _blocks(dtA, start, L)
    lhs = coef[..., :, None, :] * stride.transpose(-1, -2)                    # [..., d, K, N/2]
    out = torch.matmul(lhs, base)                                              # [..., d, K, J]
    return 2 * out.real.flatten(-2)[..., :L]


def vandermonde_t(u, dtA) -> torch.Tensor:
    """Σ_l u_l · Ā_n^l for u [B, d, L] real, dtA [d, N/2] → [B, d, N/2] complex (the transpose of
    vandermonde's sum, over l): Σ_k stride_k · (Σ_j u_{Jk+j} base_j)."""
    L = u.shape[-1]
    base, stride, J, K = _blocks(dtA, 0, L)
    U = F.pad(u, (0, J * K - L)).unflatten(-1, (K, J)).to(dtA.dtype)             # [B, d, K, J]
    inner = torch.matmul(U, base.transpose(-1, -2))                            # [B, d, K, N/2]
    return (inner * stride.transpose(-1, -2)).sum(-2)


def hippo_legs(N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HiPPO-LegS transition A [N, N] and input B [N], float64."""
    r = torch.sqrt(2 * torch.arange(N, dtype=torch.float64) + 1)
    A = -torch.tril(r[:, None] * r[None, :], diagonal=-1) - torch.diag(torch.arange(1, N + 1, dtype=torch.float64))
    return A, r.clone()


def s4d_legs(N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """S4D-LegS: the N/2 eigenvalues -½ + iλ (λ > 0, ascending) of the normal part of HiPPO-LegS
    and B/2 projected on their eigenvectors, both complex128 [N/2]."""
    A, B = hippo_legs(N)
    P = torch.sqrt(torch.arange(N, dtype=torch.float64) + 0.5)
    S = A + P[:, None] * P[None, :] + 0.5 * torch.eye(N, dtype=torch.float64)  # skew-symmetric
    lam, V = torch.linalg.eigh(-1j * S.to(torch.complex128))  # -iS is Hermitian: S = V·diag(iλ)·V*
    keep = lam > 0
    lam, V = lam[keep], V[:, keep]
    Bt = V.conj().T @ (B / 2).to(torch.complex128)
    return torch.complex(torch.full_like(lam, -0.5), lam), Bt


def s4d_lin(N: int) -> torch.Tensor:
    """S4D-Lin: A_n = -½ + iπn, n < N/2, complex128."""
    n = torch.arange(N // 2, dtype=torch.float64)
    return torch.complex(torch.full_like(n, -0.5), math.pi * n)


def s4d_inv(N: int) -> torch.Tensor:
    """S4D-Inv: A_n = -½ + i·(N/π)·(N/(2n+1) - 1), n < N/2 (the asymptotics of S4D-LegS's eigenvalues)."""
    n = torch.arange(N // 2, dtype=torch.float64)
    return torch.complex(torch.full_like(n, -0.5), N / math.pi * (N / (2 * n + 1) - 1))


def s4d_real(N: int) -> torch.Tensor:
    """S4D-Real: A_n = -(n+1), n < N/2 (HiPPO-LegS's diagonal; real, each mode with its conjugate twin)."""
    n = torch.arange(N // 2, dtype=torch.float64)
    return torch.complex(-(n + 1), torch.zeros_like(n))


INITS = {"lin": s4d_lin, "inv": s4d_inv, "real": s4d_real}  # legs: s4d_legs, which also shapes C


def _complex_dtype(dtype: torch.dtype) -> tuple[torch.dtype, torch.dtype]:
    real = torch.float64 if dtype == torch.float64 else torch.float32
    return real, (torch.complex128 if real == torch.float64 else torch.complex64)


class S4D(nn.Module):
    PACKS = True  # packed sequences (model/packed.py): each sequence convolved in a row of its own
    PADS = True  # left padding: u zero at the pads, so the convolution and the state skip them

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        d, N = cfg.d_model, cfg.d_state
        self.init = cfg.init
        self.log_dt = nn.Parameter(torch.empty(d))
        self.C = nn.Parameter(torch.empty(d, N // 2, 2))  # view_as_real of the complex C
        self.log_A_real = nn.Parameter(torch.empty(d, N // 2))
        self.A_imag = nn.Parameter(torch.empty(d, N // 2))
        self.D = nn.Parameter(torch.empty(d))
        self.output_linear = nn.Sequential(nn.Conv1d(d, 2 * d if cfg.glu else d, kernel_size=1))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        if self.D.is_meta:
            return
        d, N, cfg = self.cfg.d_model, self.cfg.d_state, self.cfg
        lo, hi = math.log(cfg.dt_min), math.log(cfg.dt_max)
        self.log_dt.copy_(torch.rand(d, dtype=torch.float64) * (hi - lo) + lo)
        C = torch.randn(d, N // 2, dtype=torch.complex128)
        if self.init == "legs":
            A, Bt = s4d_legs(N)
            C = C * Bt
        else:
            A = INITS[self.init](N)
        self.log_A_real.copy_(torch.log(-A.real).expand(d, -1))
        self.A_imag.copy_(A.imag.expand(d, -1))
        self.C.copy_(torch.view_as_real(C))
        self.D.copy_(torch.randn(d, dtype=torch.float64))
        self.output_linear[0].reset_parameters()

    FLOAT32 = ("log_dt", "C", "log_A_real", "A_imag", "D")  # the SSM's own parameters

    def _apply(self, fn, recurse=True):
        """.to() / .half() cast every floating tensor; the SSM's own parameters (FLOAT32) stay float32 in a 16-bit
        model, with their values, as state-spaces' S4 keeps them under AMP: bf16 rounds dt and the frequencies
        A_imag (S4D-LegS's reach ~N²/π, off by up to 4 at 1283) enough that the kernel's phases drift with l
        (the logits of specs/demo-s4d.yaml and s4d-lm.yaml, at init, 300 tokens: 56-60% off a float64 model in
        relative L2, against 1.1% with these kept float32 and the rest bf16)."""
        was = {k: self._parameters[k].data for k in self.FLOAT32}
        super()._apply(fn, recurse)
        keep_float32(self, was)
        return self

    # --- discretisation ------------------------------------------------------------------
    def _discrete(self, dtype):
        """Ā, B̄·C folded, C [d, N/2] complex (dt·A too), in the working precision for `dtype`."""
        real, cplx = _complex_dtype(dtype)
        dt = torch.exp(self.log_dt.to(real))
        A = torch.complex(-torch.exp(self.log_A_real.to(real)), self.A_imag.to(real))
        dtA = A * dt[:, None]
        C = torch.view_as_complex(self.C.to(real).contiguous())
        Bbar = (torch.exp(dtA) - 1.0) / A
        return dtA, Bbar, C

    def kernel(self, L: int, dtype=torch.float32) -> torch.Tensor:
        """K [d, L]: K_l = 2·Re(Σ_n C_n B̄_n Ā_n^l)."""
        dtA, Bbar, C = self._discrete(dtype)
        return vandermonde(C * Bbar, dtA, L)

    # --- parallel ------------------------------------------------------------------------
    def forward(self, x, state=None, **ctx):
        """x [B, L, d] → [B, L, d]; with `state`, continues from state["s"] and leaves the final one. ctx
        "packed" (model/packed.py): packed sequences are convolved each in a row of its own; left padding zeroes
        u at the pads instead (from a zero state that is exact, and keeps the batch's rows)."""
        packed = ctx.get("packed")
        if packed is not None:
            x = packed.zero_pads(x, dim=1)
        Bsz, L, d = x.shape
        real, _ = _complex_dtype(x.dtype)
        u = x.transpose(1, 2).to(real)  # [B, d, L]
        if packed is not None and packed.keep is None:  # each sequence in a row of its own
            K = self.kernel(packed.widest, x.dtype)      # a row of W steps reads its first W
            y = packed.in_rows(lambda rows: self._convolve(rows.mT, x.dtype, K).mT, u.mT).mT  # rows [n, W, d]
        else:
            y = self._convolve(u, x.dtype)
        if state is not None:
            y = y + self._carry(u, state)
        y = y + u * self.D.to(real)[:, None]
        return self._output(F.gelu(y).to(x.dtype)).transpose(1, 2)

    def _convolve(self, u, dtype, K=None):
        """The convolution K * u of rows u [B, d, L] from a zero state, by FFT → [B, d, L]; K [d, ≥ L] (its first
        L steps are used) or None for self.kernel(L). The FFT's length is the power of two ≥ 2L - 1: cuFFT takes
        [4, 2048] rows of 3584 steps at n = 8192 in 0.42 ms, at n = 7168 = 2L in 0.53 (H200)."""
        L = u.shape[-1]
        n = max(2, 1 << (2 * L - 2).bit_length())
        K = self.kernel(L, dtype) if K is None else K[:, :L]
        return torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(K, n=n), n=n)[..., :L]

    def _carry(self, u, state):
        """Output contribution of the incoming state, 2·Re(C·Ā^{t+1}·s₀) [B, d, L]; leaves the state
        after the last token, Ā^L·s₀ + B̄·Σ_j Ā^j·u_{L-1-j}, in state["s"]."""
        dtA, Bbar, C = self._discrete(u.dtype)
        L = u.shape[-1]
        s0 = state["s"].to(dtA.dtype)
        carried = vandermonde(C * s0, dtA, L, start=1)                         # [B, d, L]
        acc = vandermonde_t(u.flip(-1), dtA)                                   # Σ_j Ā^j u_{L-1-j}
        writable(state, self, u, "s")
        state["s"].copy_(s0 * torch.exp(dtA * L) + acc * Bbar)
        return carried

    def _output(self, y):
        """y [B, d, L] → the output layer (1×1 conv, GLU over channels when cfg.glu)."""
        y = self.output_linear(y)
        return F.glu(y, dim=-2) if self.cfg.glu else y

    # --- recurrent -----------------------------------------------------------------------
    def step(self, x, state, **ctx):
        """x [B, d] → [B, d]; updates state["s"] in place."""
        real, _ = _complex_dtype(x.dtype)
        dtA, Bbar, C = self._discrete(x.dtype)
        u = x.to(real)
        s = torch.exp(dtA) * state["s"] + Bbar * u[..., None]
        writable(state, self, u, "s")
        state["s"].copy_(s)
        y = 2 * torch.einsum("dn,bdn->bd", C, s).real + self.D.to(real) * u
        return self._output(F.gelu(y).to(x.dtype)[..., None])[..., 0]

    def init_state(self, batch, device, dtype, max_len=None, static=False, ssm_dtype=None):
        _, cplx = _complex_dtype(dtype)
        return {"s": torch.zeros(batch, self.cfg.d_model, self.cfg.d_state // 2, device=device, dtype=cplx)}
