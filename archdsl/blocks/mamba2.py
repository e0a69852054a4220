"""Mamba-2 (SSD) mixer (Dao & Gu 2024), as HF `Mamba2Mixer` (and Bamba's, Zamba2's, NemotronH's)
lay out their parameters.

    x [B, L, d] ─in_proj─▶ z [E], xBC [E + 2·G·N], dt [H]
    xBC ─conv1d─silu─▶ x [B, L, H, P], B, C [B, L, G, N]
    y = ssd_scan(x, dt + dt_bias, A=-exp(A_log) [H], B, C, D [H]) ─RMSNormGated(·, z)─▶ out_proj

E, the inner width, is heads·headdim where heads is given (Megatron's mamba_num_heads, transformers' NemotronH:
NVIDIA's Nemotron-H-4B and Nano-9B-v2 have E = 96·80 = 7680 at d_model 3136 and 128·80 = 10240 at 4480), else
expand·d_model (2 by default), heads then E / headdim; where both are given, E = expand·d_model = heads·headdim. The
gated RMSNorm normalises per group of E / ngroups channels (mamba_ssm, HF) and has E weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import BlockConfig, ConfigError, MIXER, check_steps


@dataclass(frozen=True, kw_only=True)
class Mamba2Config(BlockConfig):
    kind: ClassVar[str] = "mamba2"
    role: ClassVar[str] = MIXER
    derived: ClassVar[dict[str, str]] = {"heads": "nheads", "expand": "expansion"}
    zero_ok: ClassVar[tuple[str, ...]] = ("heads",)

    d_state: int = 128
    d_conv: int = 4
    expand: int | None = None  # None: 2, or E / d_model where heads is given (E = heads·headdim)
    headdim: int = 64
    heads: int = 0  # 0 = E / headdim
    ngroups: int = 1
    conv_bias: bool = True
    bias: bool = False  # in_proj / out_proj bias
    gated_norm: bool = True
    norm_eps: float = 1e-5
    chunk_size: int = 256
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_floor: float = 0.0  # dt = max(softplus(dt + dt_bias), dt_floor) (HF time_step_limit[0]; Zamba2: time_step_min)

    def check(self) -> None:
        if not 2 <= self.d_conv <= 4:
            raise ConfigError("d_conv", f"mamba2: d_conv must be in 2..4, got {self.d_conv}")
        E = self.inner
        if self.heads == 0 and E % self.headdim:
            raise ConfigError("headdim", f"mamba2: headdim {self.headdim} must divide expand·d_model = {E}")
        if self.heads and self.expand is not None and self.heads * self.headdim != self.expand * self.d_model:
            raise ConfigError("heads", f"mamba2: heads·headdim = {self.heads}·{self.headdim} must equal "
                                       f"expand·d_model = {self.expand * self.d_model} (leave expand out for an "
                                       f"inner width of heads·headdim = {E})")
        if self.nheads % self.ngroups:
            raise ConfigError("ngroups", f"mamba2: ngroups {self.ngroups} must divide heads {self.nheads}")
        if self.dt_floor < 0:
            raise ConfigError("dt_floor", f"mamba2: dt_floor must be >= 0, got {self.dt_floor}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ConfigError("dt_min", f"mamba2: need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        check_steps(self, "dt_min", "dt_max", "dt_floor")

    @property
    def inner(self) -> int:
        """E: heads·headdim where heads is given, else expand·d_model."""
        return self.heads * self.headdim if self.heads else (2 if self.expand is None else self.expand) * self.d_model

    @property
    def expansion(self) -> int | float:
        """E / d_model, the expand the block uses: an int where d_model divides E (always where expand is given)."""
        return self.inner // self.d_model if self.inner % self.d_model == 0 else self.inner / self.d_model

    @property
    def nheads(self) -> int:
        return self.heads or self.inner // self.headdim

    @property
    def conv_dim(self) -> int:
        return self.inner + 2 * self.ngroups * self.d_state

    @property
    def proj_dim(self) -> int:
        return self.inner + self.conv_dim + self.nheads

    def params(self) -> int:
        d, E, H, K, C = self.d_model, self.inner, self.nheads, self.d_conv, self.conv_dim
        p = d * self.proj_dim + C * K + 3 * H + E * d
        if self.conv_bias:
            p += C
        if self.bias:
            p += self.proj_dim + d
        if self.gated_norm:
            p += E
        return p

    def flops_per_token(self, n: int) -> int:
        """2·(in_proj + out_proj MACs) + 2·conv_dim·d_conv + 5·E·N, the recurrence per token: over the state
        [H, P, N], h = exp(dt·A)·h + (dt·x)⊗B is two multiplies and an add per element and y = C·h a
        multiply-add. A is one scalar a head, so exp(dt·A) is per head, not per element: Mamba-1's 6·E·N
        (its A is [E, N], dt·A a sixth FLOP per element) overcounts here. The chunked SSD form that
        trains computes more: about 2·chunk·E (the intra-chunk [chunk, chunk] products, full blocks)
        + 4·E·N a token."""
        d, E, N = self.d_model, self.inner, self.d_state
        return 2 * (d * self.proj_dim + E * d) + 2 * self.conv_dim * self.d_conv + 5 * E * N

    def cache_bytes(self, batch: int, n: int, dtype_bytes: int, ssm_bytes: int | None = None) -> int:
        """Conv window [B, conv_dim, d_conv-1] in the model dtype + SSM state [B, H, P, N] in
        fp32 by default (4 bytes; float64 in a float64 model), else `ssm_bytes` an element. Independent of n."""
        state = ssm_bytes or max(4, dtype_bytes)
        return batch * self.conv_dim * (self.d_conv - 1) * dtype_bytes + batch * self.inner * self.d_state * state
