"""Mamba-1 selective SSM mixer (Gu & Dao 2023), as HF `MambaMixer` / `FalconMambaMixer` /
Jamba's mamba mixer lay out their parameters.

    x [B, L, d] ─in_proj─▶ (u, z) [B, L, 2E] ─conv1d(u)─silu─▶ x_proj ─▶ (dt [R], B [N], C [N])
    dt ─dt_proj─▶ [E] (softplus) ; y = selective_scan(u, dt, A=-exp(A_log) [E, N], B, C, D) · silu(z)
    y ─out_proj─▶ [B, L, d]

`inner_norms` RMS-normalises dt, B and C after x_proj: "weighted" (Jamba: RMSNorms with
weights of sizes R, N, N), "unweighted" (Falcon Mamba: no weights), "none" (Mamba).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ..errors import shown
from .base import BlockConfig, ConfigError, MIXER, check_steps


@dataclass(frozen=True, kw_only=True)
class MambaConfig(BlockConfig):
    kind: ClassVar[str] = "mamba"
    role: ClassVar[str] = MIXER
    derived: ClassVar[dict[str, str]] = {"dt_rank": "rank"}
    choices: ClassVar[dict] = {"inner_norms": ("none", "weighted", "unweighted")}

    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"  # "auto" = ceil(d_model / 16)
    conv_bias: bool = True
    bias: bool = False  # in_proj / out_proj bias
    inner_norms: str = "none"
    inner_norm_eps: float = 1e-6
    dt_min: float = 0.001
    dt_max: float = 0.1

    def check(self) -> None:
        if self.dt_rank != "auto" and not (isinstance(self.dt_rank, int) and not isinstance(self.dt_rank, bool) and self.dt_rank > 0):
            raise ConfigError("dt_rank", f"mamba: dt_rank must be 'auto' or a positive int, got {shown(self.dt_rank)}")
        if not 2 <= self.d_conv <= 4:
            raise ConfigError("d_conv", f"mamba: d_conv must be in 2..4, got {self.d_conv}")
        if self.inner_norms not in self.choices["inner_norms"]:
            raise ConfigError("inner_norms", f"mamba: inner_norms must be one of none, weighted, unweighted; got {self.inner_norms!r}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ConfigError("dt_min", f"mamba: need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        check_steps(self, "dt_min", "dt_max")

    @property
    def inner(self) -> int:
        return self.expand * self.d_model

    @property
    def rank(self) -> int:
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else int(self.dt_rank)

    def params(self) -> int:
        d, E, N, R, K = self.d_model, self.inner, self.d_state, self.rank, self.d_conv
        p = d * 2 * E + E * K + E * (R + 2 * N) + R * E + E + E * N + E + E * d
        if self.conv_bias:
            p += E
        if self.bias:
            p += 2 * E + d
        if self.inner_norms == "weighted":
            p += R + 2 * N
        return p

    def flops_per_token(self, n: int) -> int:
        """2·(in_proj + x_proj + dt_proj + out_proj MACs) + 2·E·d_conv (conv) + 6·E·N, the scan per token:
        over the state [E, N], Δ·A, (Δ·u)·B, exp(Δ·A)·h + … (a multiply and an add) and y = C·h (a
        multiply-add), Δ·u once per channel; the exp, the D skip and the gate (per channel) not counted."""
        d, E, N, R = self.d_model, self.inner, self.d_state, self.rank
        return 2 * (d * 2 * E + E * (R + 2 * N) + R * E + E * d) + 2 * E * self.d_conv + 6 * E * N

    def cache_bytes(self, batch: int, n: int, dtype_bytes: int, ssm_bytes: int | None = None) -> int:
        """Conv window: the last d_conv-1 inputs [B, E, d_conv-1] in the model dtype; SSM state
        [B, E, N] in fp32 by default (4 bytes; float64 in a float64 model; mamba_ssm keeps the model's
        dtype), else `ssm_bytes` an element. Independent of n."""
        state = ssm_bytes or max(4, dtype_bytes)
        return batch * self.inner * (self.d_conv - 1) * dtype_bytes + batch * self.inner * self.d_state * state
