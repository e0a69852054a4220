"""S4D: diagonal linear time-invariant SSM with HiPPO-LegS-derived initialisation
(Gu et al. 2022, "On the Parameterization and Initialization of Diagonal State Space
Models"; the standalone `s4d.py` of state-spaces/s4), one independent SSM per channel.

Per channel h (d_model of them), N/2 complex modes (conjugate pairs give the real N):
    log_dt [d]                        step size, log-uniform in [dt_min, dt_max]
    log_A_real, A_imag [d, N/2]       A = -exp(log_A_real) + i·A_imag; `init: legs` (default,
                                      S4D-LegS): the eigenvalues -1/2 + iλ of the normal part of
                                      HiPPO-LegS; `init: lin` (S4D-Lin): A_n = -1/2 + iπn;
                                      `inv` (S4D-Inv) and `real` (S4D-Real, A_n = -(n+1))
    C [d, N/2] complex = [d, N] real  (B is fixed to 1; with LegS, B's projection onto the
                                      eigenvectors is folded into C's init)
    D [d]                             skip
    output: Conv1d(d, 2d, 1) + GLU (glu=True, as s4d.py) or Linear(d, d) (glu=False)
Training: y = K * u + D·u with K_l = 2·Re(Σ_n C_n·(exp(dt·A_n) - 1)/A_n · exp(dt·A_n·l)) (zero-order hold,
an FFT convolution), then GELU and the output layer; decoding: the same ZOH recurrence, O(1) per token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import BlockConfig, ConfigError, MIXER, check_steps


@dataclass(frozen=True, kw_only=True)
class S4dConfig(BlockConfig):
    kind: ClassVar[str] = "s4d"
    role: ClassVar[str] = MIXER
    choices: ClassVar[dict] = {"init": ("legs", "lin", "inv", "real")}

    d_state: int = 64  # real state size N: N/2 complex modes
    dt_min: float = 0.001
    dt_max: float = 0.1
    glu: bool = True
    init: str = "legs"

    def check(self) -> None:
        if self.init not in self.choices["init"]:
            raise ConfigError("init", f"s4d: init must be legs, lin, inv or real, got {self.init!r}")
        if self.d_state % 2:
            raise ConfigError("d_state", f"s4d: d_state must be even (N/2 complex modes), got {self.d_state}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ConfigError("dt_min", f"s4d: need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        check_steps(self, "dt_min", "dt_max")

    def params(self) -> int:
        d, N = self.d_model, self.d_state
        ssm = d + N * d + d * N // 2 * 2 + d  # log_dt, C (complex), log_A_real + A_imag, D
        out = 2 * d * d + 2 * d if self.glu else d * d + d
        return ssm + out

    def flops_per_token(self, n: int) -> int:
        """Recurrent form, per complex mode: s = Ā·s + B̄·u, a complex product (6 FLOPs), B̄ times the real u
        (2) and a complex add (2); y = 2·Re(Σ C·s), the real part of a complex product (3) and the sum (1):
        14 a mode (B̄·u is per mode: B̄ [d, N/2]) → 7·d·N, + 2·d for D·u, + 2·(output MACs). Training
        runs the convolution instead: an FFT of length 2L and the kernel K [d, L], not counted here."""
        d, N = self.d_model, self.d_state
        return 7 * d * N + 2 * d + 2 * (2 * d * d if self.glu else d * d)

    def cache_bytes(self, batch: int, n: int, dtype_bytes: int, ssm_bytes: int | None = None) -> int:
        """Complex state [B, d, N/2]: complex64 (8 bytes a mode), complex128 (16) for float64 models."""
        return batch * self.d_model * self.d_state // 2 * 2 * max(4, dtype_bytes)
